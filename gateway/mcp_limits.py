"""Connection caps of the MCP listener: per peer address and in total.

The head and body deadlines (:mod:`gateway.mcp_http`) bound how long one connection is held,
not how many one client holds: without a cap, a single address could open thousands of
connections and keep each inside its deadlines (a 4 MiB body at the minimum rate is ~2 min),
exhausting file descriptors and tasks for everyone. :class:`ConnectionLimits` counts the open
connections of each peer IP and of the listener; a connection over either cap is never given
to the HTTP parser or the app. Once its first bytes arrive (the request head, normally one
segment) it is answered ``503`` ``resource_exhausted`` with ``Connection: close`` and closed;
one that sends nothing within :data:`REFUSED_WAIT_S` is closed without an answer. It is not
counted against the cap, so it cannot keep the cap full either.

Refusals are audited (root span ``mcp resource_exhausted``, ``client.address``, the count),
coalesced so the trail cannot become the denial of service: at most one record per address
per :data:`AUDIT_INTERVAL_S`, carrying how many connections were refused since the last one,
and at most :data:`MAX_AUDITED_ADDRESSES` addresses per interval (the rest in one record for
address ``*``). Pending counts are flushed when the listener stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import math
from collections import Counter
from typing import Any

import structlog
from opentelemetry import trace

from gateway.audit import attributes as attr
from gateway.errors import ResourceExhausted, Unauthenticated
from gateway.frontdoor.scope import call_scope
from gateway.identity import Authenticator
from gateway.mcp_errors import INVALID_REQUEST

__all__ = [
    "AUDIT_INTERVAL_S",
    "IPV6_PREFIX",
    "MAX_AUDITED_ADDRESSES",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_ADDRESS",
    "REFUSED_WAIT_S",
    "ConnectionLimits",
    "RefusalAudit",
    "client_key",
    "peer_address",
    "refusal_response",
]

log = structlog.get_logger("switchboard.mcp")

# Defaults of mcp.max_connections_per_address / mcp.max_connections. An MCP client uses one
# connection per request in flight (the door is stateless), so 64 leaves room for an agent
# host running dozens of agents behind one NAT address; 1024 keeps the listener well inside a
# container's descriptor limit beside the gRPC door, the sandbox pipes and the files.
MAX_CONNECTIONS_PER_ADDRESS = 64
MAX_CONNECTIONS = 1024
# How long a connection over a cap may take to send its first bytes (to be answered 503)
# before it is closed without an answer.
REFUSED_WAIT_S = 1.0
AUDIT_INTERVAL_S = 1.0
MAX_AUDITED_ADDRESSES = 64
# IPv6 clients are counted per /64: one subscriber, host or VM is routinely given a whole /64
# and can pick any of its 2**64 addresses for each connection.
IPV6_PREFIX = 64


def refusal_response(limit: str, maximum: int) -> bytes:
    """The whole ``503`` answer to a connection over a cap (one write, then close)."""
    where = "this client address" if limit == "per_address" else "the MCP listener"
    exc = ResourceExhausted(
        f"too many open connections from {where} (at most {maximum}); retry later",
        details={"limit": limit, "max_connections": maximum})
    body = json.dumps({"jsonrpc": "2.0", "id": None,
                       "error": {"code": INVALID_REQUEST, "message": exc.message,
                                 "data": exc.to_dict()}}).encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n")
    return head.encode("latin-1") + body


class RefusalAudit:
    """Coalesces connection refusals into few audit records (see the module docstring)."""

    def __init__(self, tracer: trace.Tracer | None, authenticator: Authenticator | None, *,
                 interval_s: float | None = None) -> None:
        self.tracer = tracer
        self.authenticator = authenticator
        self.interval_s = AUDIT_INTERVAL_S if interval_s is None else interval_s
        self.pending: Counter[tuple[str, str]] = Counter()  # (address, limit) -> refused
        self.records = 0  # records emitted (for tests and the log)
        self._last_flush = -math.inf
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def refused(self, address: str, limit: str) -> None:
        """Count one refused connection; schedule the next flush if none is."""
        key = (address, limit)
        if key not in self.pending and len(self.pending) >= MAX_AUDITED_ADDRESSES:
            key = ("*", limit)
        self.pending[key] += 1
        if self._timer is None:
            loop = asyncio.get_running_loop()
            at = max(loop.time(), self._last_flush + self.interval_s)
            self._timer = loop.call_at(at, self.flush)

    def flush(self) -> None:
        """Emit one record per pending (address, limit) and start a new interval."""
        self._timer = None
        if not self.pending:
            return
        self._last_flush = asyncio.get_running_loop().time()
        pending, self.pending = self.pending, Counter()
        for (address, limit), count in pending.items():
            self.records += 1
            task = asyncio.get_running_loop().create_task(self._record(address, limit, count))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Flush what is pending and wait for the records to be written."""
        if self._timer is not None:
            self._timer.cancel()
        self.flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _record(self, address: str, limit: str, count: int) -> None:
        log.warning("mcp.connections.refused", client_address=address, limit=limit,
                    refused=count)
        if self.tracer is None or self.authenticator is None:
            return
        exc = ResourceExhausted(f"{count} connection(s) refused over the {limit} cap",
                                details={"limit": limit, "refused": count})
        with contextlib.suppress(ResourceExhausted, Unauthenticated):
            async with call_scope(
                    self.tracer, self.authenticator, transport="mcp",
                    span_name=f"mcp {exc.code}", token=None, raw_request_id="",
                    attributes={attr.CLIENT_ADDRESS: address, attr.CONNECTIONS_LIMIT: limit,
                                attr.CONNECTIONS_REFUSED: count},
                    log_fields={"mcp_method": "connection"}, refused=exc):
                pass  # pragma: no cover - ``refused`` always raises


class ConnectionLimits:
    """Open MCP connections per peer address and in total; ``per_address`` 0 turns the
    per-address cap off (behind a proxy every client has the proxy's address)."""

    def __init__(self, *, per_address: int = MAX_CONNECTIONS_PER_ADDRESS,
                 total: int = MAX_CONNECTIONS, audit: RefusalAudit | None = None) -> None:
        self.per_address = per_address
        self.total = total
        self.audit = audit
        self.open: Counter[str] = Counter()
        self.open_total = 0

    def admit(self, address: str) -> str | None:
        """Take a slot for a new connection from ``address``: ``None`` if admitted (release
        it with :meth:`release`), else which cap refused it (``per_address`` / ``total``),
        counted for the audit."""
        refused = None
        if self.open_total >= self.total:
            refused = "total"
        elif self.per_address and self.open[address] >= self.per_address:
            refused = "per_address"
        if refused is not None:
            if self.audit is not None:
                self.audit.refused(address, refused)
            return refused
        self.open[address] += 1
        self.open_total += 1
        return None

    def release(self, address: str) -> None:
        self.open_total -= 1
        self.open[address] -= 1
        if self.open[address] <= 0:
            del self.open[address]

    def maximum(self, limit: str) -> int:
        return self.per_address if limit == "per_address" else self.total

    def open_for(self, address: str) -> int:
        return self.open.get(address, 0)

    def __repr__(self) -> str:
        return (f"ConnectionLimits(per_address={self.per_address}, total={self.total}, "
                f"open_total={self.open_total})")


def client_key(address: str) -> str:
    """What the per-address cap counts a peer IP as: an IPv4 address itself (also when it
    arrives IPv4-mapped, ``::ffff:a.b.c.d``, on a dual-stack listener), an IPv6 address as its
    /64 network (``2001:db8:1:2::/64``), anything else (no address: "") as it is."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop a zone id (fe80::1%eth0)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, IPV6_PREFIX), strict=False))
    return str(ip)


def peer_address(transport: Any) -> str:
    """The peer IP of a connection ("" when the transport has none, e.g. a Unix socket)."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return ""
