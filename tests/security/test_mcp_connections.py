"""The MCP listener's connection caps (per peer address and in total) and prompt closes of
refusals made before the body is read: attacks over raw sockets on real listeners (port 0,
loopback; each attacker a source address of its own in 127/8), with the official MCP client
as the bystander that must keep being served."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from gateway_support import RunningGateway, serve_lifespan
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from waiting import scaled, wait_until

from gateway import mcp_http
from gateway.mcp_limits import ConnectionLimits, RefusalAudit, client_key
from gateway.mcp_server import McpHandle, create_mcp_app, start_mcp_server

PARTIAL_HEAD = b"POST /mcp HTTP/1.1\r\nHost: x\r\n"  # never completed: the holder's trick


@pytest.fixture
def long_deadlines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Head and body deadlines far beyond any wait here: whatever closes a connection in
    these tests is the code under test, not a deadline."""
    monkeypatch.setattr(mcp_http, "HEADER_TIMEOUT_S", 3600.0)
    monkeypatch.setattr(mcp_http, "BODY_TIMEOUT_S", 3600.0)


@contextlib.contextmanager
def listener(gateway: RunningGateway, *, per_address: int, total: int,
             interval_s: float = 3600.0) -> Iterator[McpHandle]:
    """An MCP listener over the gateway's pipeline with the given caps; refusal records are
    coalesced over ``interval_s`` (one hour: what the test sees is what coalescing left)."""
    server = gateway.server
    assert server is not None
    limits = ConnectionLimits(per_address=per_address, total=total, audit=RefusalAudit(
        server.pipeline.tracer, server.authenticator, interval_s=interval_s))

    async def start() -> McpHandle:
        return await start_mcp_server(create_mcp_app(server.pipeline, server.authenticator),
                                      "127.0.0.1:0", limits=limits)

    handle: McpHandle = gateway.call(start())
    try:
        yield handle
    finally:
        gateway.call(handle.stop(grace=2.0))


def _open(handle: McpHandle, address: str) -> int:
    assert handle.limits is not None
    return handle.limits.open_for(address)


async def _connect(port: int, source: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _answer(port: int, source: str, data: bytes) -> bytes:
    """Send ``data`` from ``source`` and return all the server sent until it closed (EOF,
    or a reset after it answered); fails if the server never closes."""
    reader, writer = await _connect(port, source)
    got = bytearray()
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(data)
            await writer.drain()

        async def read_all() -> None:
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(65536):
                    got.extend(chunk)

        await asyncio.wait_for(read_all(), scaled(60))
        return bytes(got)
    finally:
        writer.close()


def _post(port: int, token: str | None = None, extra: str = "") -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
            "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            f"{extra}\r\n").encode()


def _over_cap(answer: bytes, limit: str) -> dict[str, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 "), answer[:300]
    assert b"\r\nconnection: close" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == -32600 and error["data"]["code"] == "resource_exhausted", error
    assert error["data"]["details"]["limit"] == limit
    return dict(error["data"])


@asynccontextmanager
async def mcp_client(url: str) -> AsyncIterator[Client]:
    async with (
        httpx2.AsyncClient(headers={"Authorization": "Bearer dev-agent"}, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http)) as client,  # type: ignore[arg-type]
    ):
        yield client


def _refusal_records(gateway: RunningGateway, address: str) -> list[dict[str, Any]]:
    server = gateway.server
    assert server is not None and gateway.settings.audit.file is not None
    server.telemetry.force_flush()
    out = []
    for line in Path(gateway.settings.audit.file).read_text().splitlines():
        rec = json.loads(line)
        if rec["name"] == "mcp resource_exhausted" and \
                rec["attributes"].get("client.address") == address:
            out.append(rec["attributes"])
    return out


async def _hold(port: int, source: str, n: int) -> list[asyncio.StreamWriter]:
    held = []
    for _ in range(n):
        _, writer = await _connect(port, source)
        writer.write(PARTIAL_HEAD)
        await writer.drain()
        held.append(writer)
    return held


@pytest.mark.usefixtures("long_deadlines")
async def test_one_address_at_its_cap_is_refused_503_others_are_served_and_slots_come_back(
        gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """127.0.0.2 opens its cap (4) of connections and holds them with a never-finished
    head; 6 more from it are answered 503 ``resource_exhausted`` (``Connection: close``,
    then EOF) and one more that sends nothing is closed without an answer; the official
    MCP client (from 127.0.0.1) completes tool calls meanwhile. Then every way a held
    connection ends gives its slot back — the client's close, a reset, the head deadline,
    the server's close after a 401, a 400 for a malformed head — and finally the address
    gets its whole cap again. The refusals leave coalesced audit records whose counts add up
    to the refused connections."""
    attacker = "127.0.0.2"
    with listener(gateway, per_address=4, total=64) as handle:
        held = await _hold(handle.port, attacker, 4)
        await wait_until(lambda: _open(handle, attacker) == 4, 60, what="4 held")
        answers = await asyncio.gather(*(_answer(handle.port, attacker, _post(handle.port))
                                         for _ in range(6)))
        silent = await _answer(handle.port, attacker, b"")
        async with mcp_client(handle.url) as c:
            for query in ("email", "balance"):
                result = await c.call_tool("search_operations", {"query": query})
                assert result.is_error is False and result.structured_content
        for answer in answers:
            data = _over_cap(answer, "per_address")
            assert data["details"]["max_connections"] == 4
        assert silent == b""
        assert _open(handle, attacker) == 4  # refused connections never held a slot

        held[0].close()  # the client's close
        await wait_until(lambda: _open(handle, attacker) == 3, 60, what="close releases")
        sock = held[1].get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        held[1].close()  # a reset
        await wait_until(lambda: _open(handle, attacker) == 2, 60, what="reset releases")
        monkeypatch.setattr(mcp_http, "HEADER_TIMEOUT_S", 0.5)  # armed per connection
        assert await _answer(handle.port, attacker, PARTIAL_HEAD) == b""  # the deadline cut
        monkeypatch.setattr(mcp_http, "HEADER_TIMEOUT_S", 3600.0)
        unauthenticated = await _answer(handle.port, attacker, _post(handle.port))
        assert unauthenticated.startswith(b"HTTP/1.1 401 "), unauthenticated[:200]
        malformed = await _answer(handle.port, attacker, b"NOT HTTP AT ALL\r\n\r\n")
        assert malformed.startswith(b"HTTP/1.1 400 "), malformed[:200]
        await wait_until(lambda: _open(handle, attacker) == 2, 60, what="ended ones release")
        for writer in held[2:]:
            writer.close()
        await wait_until(lambda: _open(handle, attacker) == 0, 60, what="all released")
        # The whole cap again: 4 at once, each a real answer (401), none a 503.
        again = await asyncio.gather(*(_answer(handle.port, attacker, _post(handle.port))
                                       for _ in range(4)))
        assert all(a.startswith(b"HTTP/1.1 401 ") for a in again), [a[:40] for a in again]
        assert handle.limits is not None and handle.limits.audit is not None
        assert handle.limits.audit.records <= 1  # one interval: at most the first record
    records = _refusal_records(gateway, attacker)  # stop() flushed what was pending
    assert 1 <= len(records) <= 2
    assert sum(r["switchboard.connections.refused"] for r in records) == 7
    for r in records:
        assert r["switchboard.outcome"] == "resource_exhausted"
        assert r["switchboard.connections.limit"] == "per_address"
        assert r["switchboard.transport"] == "mcp"
        assert "switchboard.principal.id" not in r  # nothing of the request was read


@pytest.mark.usefixtures("long_deadlines")
async def test_the_total_cap_refuses_every_new_address_until_a_slot_is_free(
        gateway: RunningGateway) -> None:
    """Two addresses fill the listener's total cap (5) without reaching their own (3): a
    third address is refused 503 with ``limit: total``; once one held connection closes, it
    is served (401: it sent no token)."""
    with listener(gateway, per_address=3, total=5) as handle:
        held = await _hold(handle.port, "127.0.0.3", 3) + await _hold(handle.port, "127.0.0.4", 2)
        assert handle.limits is not None
        limits = handle.limits
        await wait_until(lambda: limits.open_total == 5, 60, what="5 held")
        refused = await _answer(handle.port, "127.0.0.5", _post(handle.port))
        assert _over_cap(refused, "total")["details"]["max_connections"] == 5
        held[0].close()
        await wait_until(lambda: limits.open_total == 4, 60, what="a slot free")
        served = await _answer(handle.port, "127.0.0.5", _post(handle.port))
        assert served.startswith(b"HTTP/1.1 401 "), served[:200]
        for writer in held[1:]:
            writer.close()
        await wait_until(lambda: limits.open_total == 0, 60, what="all released")
    (record,) = _refusal_records(gateway, "127.0.0.5")
    assert record["switchboard.connections.limit"] == "total"
    assert record["switchboard.connections.refused"] == 1


@pytest.mark.usefixtures("long_deadlines")
async def test_a_flood_of_refused_connections_leaves_few_audit_records(
        gateway: RunningGateway) -> None:
    """300 connections over the cap from one address, 50 at a time, all refused: the trail
    gets at most one record per coalescing interval (here one hour: two records, the first
    refusal's and the flush at stop), whose counts add up to 300."""
    attacker = "127.0.0.6"
    with listener(gateway, per_address=1, total=64) as handle:
        held = await _hold(handle.port, attacker, 1)
        await wait_until(lambda: _open(handle, attacker) == 1, 60, what="1 held")
        for _ in range(6):
            answers = await asyncio.gather(*(_answer(handle.port, attacker, _post(handle.port))
                                             for _ in range(50)))
            for answer in answers:
                _over_cap(answer, "per_address")
        held[0].close()
        await wait_until(lambda: _open(handle, attacker) == 0, 60, what="released")
    records = _refusal_records(gateway, attacker)
    assert 1 <= len(records) <= 2, len(records)
    assert sum(r["switchboard.connections.refused"] for r in records) == 300


async def test_refusals_of_many_addresses_are_bounded_per_interval() -> None:
    """Thousands of refused addresses in one interval: at most MAX_AUDITED_ADDRESSES of
    their own records, the rest counted under ``*`` (nothing is lost, nothing unbounded)."""
    from gateway import mcp_limits

    audit = RefusalAudit(None, None, interval_s=3600.0)
    for i in range(5000):  # no await: the flush the first one scheduled has not run yet
        audit.refused(f"10.0.{i // 250}.{i % 250}", "total")
    assert len(audit.pending) == mcp_limits.MAX_AUDITED_ADDRESSES + 1
    assert sum(audit.pending.values()) == 5000
    assert audit.pending[("*", "total")] == 5000 - mcp_limits.MAX_AUDITED_ADDRESSES
    await audit.close()
    assert audit.records == mcp_limits.MAX_AUDITED_ADDRESSES + 1 and not audit.pending


async def test_an_app_error_releases_the_slot(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request whose app raises (uvicorn answers 500 and closes) gives its slot back."""
    monkeypatch.setattr(mcp_http, "HEADER_TIMEOUT_S", 3600.0)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        raise RuntimeError("boom")

    limits = ConnectionLimits(per_address=1, total=4)
    handle = await start_mcp_server(app, "127.0.0.1:0", limits=limits)
    try:
        for _ in range(3):  # each admitted: the previous one's slot came back
            answer = await _answer(handle.port, "127.0.0.7", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 500 "), answer[:200]
            await wait_until(lambda: limits.open_for("127.0.0.7") == 0, 60, what="released")
    finally:
        await handle.stop(grace=2.0)


@pytest.mark.usefixtures("long_deadlines")
@pytest.mark.parametrize("token", [None, "not-a-token"])
@pytest.mark.parametrize("body", ["withheld", "complete"])
async def test_a_401_closes_the_connection_without_reading_the_body(
        gateway: RunningGateway, token: str | None, body: str) -> None:
    """An unauthenticated POST declaring a 100 MB body that never comes, or a complete small
    one (which left a keep-alive connection open until the next head deadline): 401 with
    ``Connection: close``, and the server closes the socket (EOF) — with head and body
    deadlines of an hour, nothing else could have closed it within the wait."""
    with listener(gateway, per_address=8, total=64) as handle:
        request = (_post(handle.port, token, "Content-Length: 100000000\r\n")
                   if body == "withheld" else
                   _post(handle.port, token, "Content-Length: 2\r\n") + b"{}")
        answer = await _answer(handle.port, "127.0.0.8", request)
        head = answer.partition(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 401 "), answer[:300]
        assert b"\r\nconnection: close" in head and b"\r\nwww-authenticate: bearer" in head
        # The metadata endpoint's 405 is a refusal before the body too.
        meta = await _answer(handle.port, "127.0.0.8",
                             b"POST /.well-known/oauth-protected-resource HTTP/1.1\r\n"
                             b"Host: x\r\nContent-Length: 100000000\r\n\r\n")
        assert meta.startswith(b"HTTP/1.1 405 ") and b"connection: close" in meta.lower()
        await wait_until(lambda: _open(handle, "127.0.0.8") == 0, 60, what="released")


@pytest.mark.parametrize(("address", "key"), [
    ("127.0.0.2", "127.0.0.2"),
    ("::ffff:127.0.0.2", "127.0.0.2"),  # IPv4-mapped, as on a dual-stack listener
    ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff:ffff:ffff:ffff", "2001:db8:1:2::/64"),
    ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
    ("fe80::1%eth0", "fe80::/64"),
    ("::1", "::/64"),
    ("", ""),
])
def test_what_the_per_address_cap_counts_a_peer_as(address: str, key: str) -> None:
    assert client_key(address) == key


def test_an_ipv6_client_cannot_pass_the_cap_by_rotating_addresses_in_its_64() -> None:
    """One host owns a /64: a new source address per connection is still the same client,
    while the next /64 is another one; IPv4 and IPv4-mapped are the same client too."""
    limits = ConnectionLimits(per_address=3, total=100)
    own = [f"2001:db8:1:2::{i:x}" for i in range(1, 7)]
    assert [limits.admit(client_key(a)) for a in own] == [None] * 3 + ["per_address"] * 3
    assert limits.admit(client_key("2001:db8:1:3::1")) is None
    assert limits.admit(client_key("127.0.0.9")) is None
    assert limits.admit(client_key("::ffff:127.0.0.9")) is None
    limits.admit(client_key("127.0.0.9"))
    assert limits.admit(client_key("::ffff:127.0.0.9")) == "per_address"
    limits.release(client_key(own[0]))
    assert limits.admit(client_key(own[5])) is None  # the /64 got one slot back


@pytest.mark.usefixtures("long_deadlines")
async def test_an_ipv6_listener_counts_its_clients_per_64(gateway: RunningGateway) -> None:
    """A real listener on [::1]: connections from ::1 hold the slots of ::/64, and one over
    the cap is answered 503 (only ::1 can be a source here: other addresses of the /64 would
    need the host's routes changed; the unit test above rotates them)."""
    server = gateway.server
    assert server is not None
    limits = ConnectionLimits(per_address=2, total=64)
    handle = await start_mcp_server(create_mcp_app(server.pipeline, server.authenticator),
                                    "[::1]:0", limits=limits)
    try:
        held = []
        for _ in range(2):
            _, writer = await asyncio.open_connection("::1", handle.port)
            writer.write(PARTIAL_HEAD)
            await writer.drain()
            held.append(writer)
        await wait_until(lambda: limits.open_for("::/64") == 2, 60, what="2 held")
        reader, writer = await asyncio.open_connection("::1", handle.port)
        writer.write(_post(handle.port))
        answer = await asyncio.wait_for(reader.read(65536), scaled(60))
        writer.close()
        _over_cap(answer, "per_address")
        for w in held:
            w.close()
        await wait_until(lambda: limits.open_total == 0, 60, what="all released")
    finally:
        await handle.stop(grace=2.0)
