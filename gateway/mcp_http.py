"""The MCP door's HTTP side: the ASGI guard in front of the MCP app (401 with
``WWW-Authenticate`` before any MCP processing, 405 for every method but POST at the MCP path,
the RFC 9728 protected-resource metadata without auth), the bridge for clients that accept
only ``application/json``, the DNS-rebinding settings, and the embedded uvicorn listener.
Split out of :mod:`gateway.mcp_server`, which re-exports what callers use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

import uvicorn
from mcp.server.transport_security import TransportSecuritySettings
from opentelemetry import trace
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.errors import (
    GatewayError,
    MethodNotAllowed,
    RequestTimeout,
    ResourceExhausted,
    Unauthenticated,
)
from gateway.frontdoor.scope import CallScope, authenticate, call_scope
from gateway.identity import Authenticator, bearer_token
from gateway.mcp_errors import HTTP_REFUSAL_STATUS, INVALID_REQUEST, UNAUTHENTICATED
from gateway.mcp_limits import (
    REFUSED_WAIT_S,
    ConnectionLimits,
    RefusalAudit,
    client_key,
    peer_address,
    refusal_response,
)
from gateway.values import split_listen

__all__ = ["MCP_PATH", "PROTECTED_RESOURCE_PATH", "ASGIApp", "McpHandle", "start_mcp_server"]

MCP_PATH = "/mcp"
# RFC 9728 metadata, at the well-known root and (for clients that append the resource path)
# under it.
PROTECTED_RESOURCE_PATH = "/.well-known/oauth-protected-resource"
# The only method the MCP path serves. The door is stateless: the server never sends a
# server-initiated message (notifications ride on the POST that caused them), so a standalone
# GET SSE stream would carry nothing and only hold a connection; with no sessions there is
# nothing to DELETE either. The spec lets such a server answer GET with 405.
_ALLOW = b"POST"
# A connection must complete each request head within this long of opening (or of its last
# response): uvicorn has no such deadline (its keep-alive timer stops at the first byte), so a
# slowloris client dribbling a header would hold a connection and its socket forever.
HEADER_TIMEOUT_S = 10.0
# Once its head is in, a request's body must be complete within BODY_TIMEOUT_S, plus one
# second per BODY_MIN_RATE bytes that arrived (a steady upload at that rate or faster is never
# cut: a 4 MiB body may take ~2 min); else 408 with ``Connection: close``. Without it, a client
# that declares a large Content-Length and trickles (or withholds) the body held a task and a
# connection forever: the header deadline stops at the end of the head.
BODY_TIMEOUT_S = 10.0
BODY_MIN_RATE = 32 * 1024  # bytes/s
# The largest request body the MCP door reads (``max_message_bytes``, the gRPC door's limit,
# by default); a larger one is refused 413 while it streams, never buffered whole.
MAX_BODY_BYTES = 4 * 1024 * 1024
_HOST_HEADER = re.compile(r"[A-Za-z0-9.\-]{1,253}(:\d{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:\d{1,5})?")

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


def _header(scope: MutableMapping[str, Any], name: bytes) -> str:
    for k, v in scope["headers"]:
        if k.lower() == name:
            return str(v.decode("latin-1"))
    return ""


class _AuthGuard:
    """Answers 401 (with ``WWW-Authenticate``) before the MCP app sees an unauthenticated
    request, and serves the protected-resource metadata (no auth needed); lifespan and other
    paths pass through. A refused caller is audited through the shared call scope (outcome
    ``unauthenticated``, the trace id quoted in the 401), as the gRPC door audits its own.
    An authenticated request to the MCP path with any method but POST (a standalone GET SSE
    stream, DELETE, ...) is answered 405 ``Allow: POST`` and audited too (outcome
    ``method_not_allowed``); it never reaches the MCP app. Every other authenticated request
    has its body read here first, under :data:`BODY_TIMEOUT_S` and ``max_body_bytes`` (408
    ``request_timeout`` / 413 ``resource_exhausted``, audited the same way)."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator, *, path: str,
                 resource_url: str | None, authorization_servers: Sequence[str],
                 tracer: trace.Tracer | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.tracer = tracer
        self.authenticator = authenticator
        self.path = path
        self.resource_url = resource_url
        self.authorization_servers = list(authorization_servers)

    def resource(self, scope: MutableMapping[str, Any]) -> str:
        """The endpoint's public URL: ``mcp.resource_url``, else the one the client used (set
        it behind a proxy that rewrites Host, adds a path prefix or terminates TLS)."""
        if self.resource_url:
            return self.resource_url
        host = _header(scope, b"host")
        if not _HOST_HEADER.fullmatch(host):  # it goes into a header and JSON: only host[:port]
            server = scope.get("server") or ("127.0.0.1", 0)
            host = f"{server[0]}:{server[1]}"
        return f"{scope.get('scheme', 'http')}://{host}{self.path}"

    def metadata_url(self, scope: MutableMapping[str, Any]) -> str:
        """Where the metadata is: RFC 9728 puts the well-known segment between the origin and
        the resource's path."""
        url = urlsplit(self.resource(scope))
        return f"{url.scheme}://{url.netloc}{PROTECTED_RESOURCE_PATH}{url.path.rstrip('/')}"

    def metadata(self, scope: MutableMapping[str, Any]) -> dict[str, Any]:
        """RFC 9728 protected-resource metadata. ``authorization_servers`` is the JWT issuer
        when one is configured; ``switchboard_token_types`` says which bearer tokens this
        gateway takes (its static token table, JWTs checked against its JWKS)."""
        token_types = []
        if self.authenticator.has_static_tokens:
            token_types.append("static")
        if self.authenticator.jwks is not None:
            token_types.append("jwt")
        out: dict[str, Any] = {
            "resource": self.resource(scope),
            "resource_name": "Switchboard gateway",
            "bearer_methods_supported": ["header"],
            "switchboard_token_types": token_types,
        }
        if self.authorization_servers:
            out["authorization_servers"] = self.authorization_servers
        return out

    async def _json(self, send: Any, status: int, payload: Any,
                    extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        body = json.dumps(payload).encode()
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *extra,
            ],
        })
        await send({"type": "http.response.body", "body": body})

    async def _audit_refusal(self, scope: MutableMapping[str, Any], token: str | None,
                             exc: Unauthenticated) -> str:
        """One audit record for a refused request; returns its trace id ("" untraced)."""
        if self.tracer is None:
            return ""
        opened: list[CallScope] = []
        with contextlib.suppress(Unauthenticated):
            async with call_scope(
                    self.tracer, self.authenticator, transport="mcp",
                    span_name="mcp unauthenticated", token=token, raw_request_id="",
                    attributes={"http.request.method": str(scope.get("method", "")),
                                "url.path": str(scope.get("path", ""))[:256]},
                    log_fields={"mcp_method": "unauthenticated"},
                    on_open=opened.append, refused=exc):
                pass  # pragma: no cover - ``refused`` always raises
        return opened[0].trace_id if opened else ""

    async def _refuse(self, scope: MutableMapping[str, Any], send: Any, token: str | None,
                      exc: GatewayError, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """An HTTP-level refusal of an authenticated request (405, 408, 413): audited as the
        caller's (root span ``mcp <code>``, outcome the stable code), answered at once with
        ``Connection: close``: a refused request never holds a connection or a task."""
        trace_id = ""
        if self.tracer is not None:
            opened: list[CallScope] = []
            # The token may have expired since the guard's check: then the record says
            # ``unauthenticated``; the answer is the refusal either way.
            with contextlib.suppress(GatewayError):
                async with call_scope(
                        self.tracer, self.authenticator, transport="mcp",
                        span_name=f"mcp {exc.code}", token=token, raw_request_id="",
                        attributes={"http.request.method": str(scope.get("method", ""))[:16],
                                    "url.path": str(scope.get("path", ""))[:256]},
                        log_fields={"mcp_method": exc.code},
                        on_open=opened.append):
                    raise exc
            trace_id = opened[0].trace_id if opened else ""
        data = exc.to_dict()
        if trace_id:
            data["trace_id"] = trace_id
        await self._json(
            send, HTTP_REFUSAL_STATUS[exc.code],
            {"jsonrpc": "2.0", "id": None,
             "error": {"code": INVALID_REQUEST, "message": exc.message, "data": data}},
            [*extra, (b"connection", b"close")])

    async def _refuse_method(self, scope: MutableMapping[str, Any], send: Any,
                             token: str | None) -> None:
        """405 ``Allow: POST`` for an authenticated request with a method other than POST."""
        method = str(scope.get("method", ""))[:16]
        exc = MethodNotAllowed(
            f"{method} is not served here: the MCP endpoint takes POST only (it offers no "
            "server-initiated stream and no sessions)", details={"allow": ["POST"]})
        await self._refuse(scope, send, token, exc, [(b"allow", _ALLOW)])

    async def _read_body(self, scope: MutableMapping[str, Any], receive: Any,
                         started: float) -> bytes | GatewayError | None:
        """The whole request body, read here under the size limit and the body deadline
        (uvicorn has neither: a trickled or withheld body held a task and a connection
        forever, and any size was buffered); the refusal when one is broken, ``None`` when
        the client went away. A declared ``Content-Length`` over the limit is refused before
        a byte of the body is read, a chunked one as soon as it crosses the limit."""
        limit = self.max_body_bytes
        declared = _header(scope, b"content-length")
        too_large = ResourceExhausted(
            f"the request body exceeds {limit} bytes", details={"max_bytes": limit})
        if declared.isdigit() and int(declared) > limit:
            return too_large
        chunks: list[bytes] = []
        size = 0
        try:
            # BODY_TIMEOUT_S from the head, plus one second per BODY_MIN_RATE bytes received:
            # a steady slow upload keeps going, a trickle is cut.
            async with asyncio.timeout_at(started + BODY_TIMEOUT_S) as deadline:
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return None  # http.disconnect: nobody to answer
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        return too_large
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
                    deadline.reschedule(started + BODY_TIMEOUT_S + size / BODY_MIN_RATE)
        except TimeoutError:
            return RequestTimeout(
                f"the request body was not complete within {BODY_TIMEOUT_S:g} s (plus 1 s "
                f"per {BODY_MIN_RATE} bytes received)",
                details={"received_bytes": size, "timeout_s": BODY_TIMEOUT_S})

    def _is_mcp_path(self, path: str) -> bool:
        return path.rstrip("/") == self.path.rstrip("/")

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = asyncio.get_running_loop().time()  # uvicorn calls the app once the head is in
        path = str(scope.get("path", ""))
        if path == PROTECTED_RESOURCE_PATH or path.startswith(PROTECTED_RESOURCE_PATH + "/"):
            if scope.get("method") not in ("GET", "HEAD"):
                await self._json(send, 405, {"error": "method not allowed"},
                                 [(b"allow", b"GET, HEAD"), (b"connection", b"close")])
                return
            await self._json(send, 200, self.metadata(scope),
                             [(b"cache-control", b"public, max-age=300"),
                              (b"access-control-allow-origin", b"*")])
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        try:
            await authenticate(self.authenticator, bearer_token(headers))
        except Unauthenticated as exc:
            data = exc.to_dict()
            trace_id = await self._audit_refusal(scope, bearer_token(headers), exc)
            if trace_id:
                data["trace_id"] = trace_id
            challenge = (f'Bearer realm="switchboard", '
                         f'resource_metadata="{self.metadata_url(scope)}"')
            if bearer_token(headers) is not None:
                challenge += ', error="invalid_token"'
            await self._json(
                send, 401,
                {
                    "jsonrpc": "2.0",
                    "id": None,
                    "error": {"code": UNAUTHENTICATED, "message": exc.message,
                              "data": data},
                },
                # The body is never read: the connection is closed with the answer, so an
                # unauthenticated client cannot pin a socket until the next head deadline.
                [(b"www-authenticate", challenge.encode("latin-1", "replace")),
                 (b"connection", b"close")],
            )
            return
        if scope.get("method") != "POST" and self._is_mcp_path(path):
            await self._refuse_method(scope, send, bearer_token(headers))
            return
        body = await self._read_body(scope, receive, started)
        if body is None:
            return
        if isinstance(body, GatewayError):
            await self._refuse(scope, send, bearer_token(headers), body)
            return
        await _json_only_bridge(self.app, scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Any) -> Callable[[], Awaitable[Any]]:
    """``receive`` for the app once the guard has read the body: the body as one message,
    then the real channel (so the app still hears ``http.disconnect``)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replayed() -> Any:
        if pending:
            return pending.pop()
        return await receive()

    return replayed


def _last_jsonrpc_response(body: bytes) -> bytes | None:
    """The JSON-RPC response in an SSE body (the last event with an id and a result/error)."""
    found = None
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n")
                          if line.startswith(b"data:"))
        if not data:
            continue
        try:
            message = json.loads(data)
        except ValueError:
            continue
        if isinstance(message, dict) and "id" in message and (
                "result" in message or "error" in message):
            found = data
    return found


async def _json_only_bridge(app: ASGIApp, scope: MutableMapping[str, Any], receive: Any,
                            send: Any) -> None:
    """Keeps clients that accept only ``application/json`` working: the SDK answers
    handshake-era requests as SSE (and refuses such clients with 406), so their POSTs are
    served as if they accepted SSE and the stream is turned back into the one JSON-RPC
    response (notifications are dropped: such a client cannot receive them)."""
    accept = _header(scope, b"accept").lower()
    if scope.get("method") != "POST" or "text/event-stream" in accept or (
            "application/json" not in accept):
        await app(scope, receive, send)
        return
    headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"accept"]
    headers.append((b"accept", b"application/json, text/event-stream"))
    start: dict[str, Any] = {}
    chunks: list[bytes] = []

    async def capture(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            start.update(message)
            content_type = next((v for k, v in message.get("headers", [])
                                 if k.lower() == b"content-type"), b"")
            if not content_type.startswith(b"text/event-stream"):
                start["passthrough"] = True
                await send(message)
            return
        if start.get("passthrough"):
            await send(message)
            return
        if message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                body = _last_jsonrpc_response(b"".join(chunks))
                status = int(start.get("status", 200))
                if body is None:
                    status, body = 502, b'{"jsonrpc":"2.0","id":null,"error":{"code":-32603,' \
                        b'"message":"no response in the event stream"}}'
                await send({"type": "http.response.start", "status": status, "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
            return
        await send(message)

    await app({**scope, "headers": headers}, receive, capture)


def _security(allowed_hosts: Sequence[str] | None,
              allowed_origins: Sequence[str] | None) -> TransportSecuritySettings:
    if allowed_hosts is None and allowed_origins is None:
        # Bearer tokens already gate every request; DNS-rebinding checks are opt-in (give the
        # Host values a browser could not be tricked into sending).
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    hosts = list(allowed_hosts or ())
    if allowed_origins is None:
        origins = [f"http://{h}" for h in hosts] + [f"https://{h}" for h in hosts]
    else:
        origins = list(allowed_origins)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


class _HeaderDeadlineH11(H11Protocol):
    """uvicorn's h11 protocol with a deadline for every request head: a connection that has
    not completed one within :data:`HEADER_TIMEOUT_S` of opening or of its last response is
    closed. A request whose head arrived is never cut (a long SSE response streams on).
    With :attr:`limits` (a subclass per listener sets it), a connection over the per-address
    or total cap never reaches the parser: its first bytes are answered 503 and it is closed
    (:mod:`gateway.mcp_limits`); an admitted one releases its slot in ``connection_lost``,
    which asyncio calls on every way a connection ends (close, reset, deadline, error)."""

    limits: ClassVar[ConnectionLimits | None] = None
    _header_timer: asyncio.TimerHandle | None = None
    _slot: str | None = None  # the peer address whose slot this connection holds
    _refused: str | None = None  # the cap that refused it

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.limits is not None:
            address = client_key(peer_address(transport))  # an IPv6 client: its /64
            refused = self.limits.admit(address)
            if refused is not None:
                self._refused = refused
                self._header_timer = self.loop.call_later(REFUSED_WAIT_S, transport.close)
                return
            self._slot = address
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        if self._refused is None:
            super().data_received(data)
            return
        if not self.transport.is_closing():  # the head is read: the answer, then the close
            assert self.limits is not None
            self.transport.write(refusal_response(self._refused,
                                                  self.limits.maximum(self._refused)))
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._slot is not None and self.limits is not None:
            self.limits.release(self._slot)
            self._slot = None
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        # A new request head makes a new cycle: the same one at the deadline means none came.
        self._header_timer = self.loop.call_later(
            HEADER_TIMEOUT_S, self._header_deadline, self.cycle)

    def _header_deadline(self, armed: object) -> None:
        self._header_timer = None
        if self.cycle is armed and not self.transport.is_closing():
            self.transport.close()


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: the host process (``switchboard serve``) owns them."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class McpHandle:
    """A running MCP listener in the current event loop."""

    host: str
    port: int
    _server: _EmbeddedUvicorn
    _task: asyncio.Task[None]
    limits: ConnectionLimits | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{MCP_PATH}"

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, give in-flight requests ``grace`` seconds, then close."""
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        except TimeoutError:
            self._server.force_exit = True
            await self._task
        finally:
            if self.limits is not None and self.limits.audit is not None:
                await self.limits.audit.close()  # the refusals still pending


async def start_mcp_server(app: ASGIApp, listen: str, *,
                           limits: ConnectionLimits | None = None) -> McpHandle:
    """Serve ``app`` with uvicorn on ``listen`` (port 0 picks a free port) in this loop; returns
    once it accepts connections. ``limits`` caps connections per peer address and in total
    (default: :mod:`gateway.mcp_limits`' defaults, refusals audited through the guard's
    tracer when ``app`` is the guard)."""
    if limits is None:
        limits = ConnectionLimits(audit=RefusalAudit(
            getattr(app, "tracer", None), getattr(app, "authenticator", None)))
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it; asyncio skips proto-0 sockets, and keep-alive answers
    # would otherwise stall ~40 ms on Nagle + delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    bound = sock.getsockname()[1]
    protocol = type("_LimitedH11", (_HeaderDeadlineH11,), {"limits": limits})
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False,
                            http=protocol)
    server = _EmbeddedUvicorn(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="switchboard-mcp")
    while not server.started:
        if task.done():
            sock.close()
            task.result()  # raises the startup error
            raise OSError(f"MCP server on {listen} exited during start-up")
        await asyncio.sleep(0.005)
    return McpHandle(host=host, port=bound, _server=server, _task=task, limits=limits)
