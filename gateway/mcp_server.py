"""The MCP front door: the gateway's pipeline over the Model Context Protocol.

MCP clients (Claude Desktop, IDEs, agent frameworks) see the "code mode" tool shape —
``search_operations``, ``describe_operation``, ``execute_code`` — plus the dedicated tools the
policy routes the caller to, each with its JSON Schema. Every call goes through the same
:class:`~gateway.pipeline.Pipeline` as gRPC, so identity, policy, limits and audit are the
same; this module only translates.

Built on the official SDK's low-level ``Server`` (not ``MCPServer``) because the tool list is
per caller and the schemas come from the catalog, not from Python signatures. Streamable HTTP
runs stateless (each POST stands alone), so replicas behind a load balancer need no sticky
sessions; code-channel sessions are named explicitly by ``session_id``.

Identity is the HTTP ``Authorization: Bearer`` header, checked twice: by an ASGI guard that
answers 401 before any MCP processing, and again per tool call inside the call's audit span.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import mcp_types as types
import structlog
import uvicorn
from jsonschema import Draft202012Validator
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.transport_security import TransportSecuritySettings
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway.audit import attributes as attr
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    SchemaInvalid,
    Unauthenticated,
    UnknownOperation,
)
from gateway.identity import Authenticator, bearer_token
from gateway.manifest import (
    DESCRIBE_OPERATION,
    EXECUTE_CODE,
    SEARCH_OPERATIONS,
    ToolDef,
    meta_tools,
    tool_name,
)
from gateway.models import Principal
from gateway.pipeline import CodeAction, Outcome, Pipeline, ToolAction
from gateway.values import (
    MAX_NAME_LENGTH,
    MAX_SOURCE_BYTES,
    check_id,
    check_input,
    check_name,
    check_query,
    clean_result,
    clean_text,
    loggable,
    loggable_id,
)

__all__ = [
    "MCP_PATH",
    "REQUEST_ID_META_KEY",
    "McpHandle",
    "create_mcp_app",
    "start_mcp_server",
]

log = structlog.get_logger("switchboard.mcp")

MCP_PATH = "/mcp"
# Optional client-chosen idempotency key for a dedicated tool call, in the request ``_meta``.
REQUEST_ID_META_KEY = "switchboard/request_id"
_META_VALIDATORS = {t.name: Draft202012Validator(t.input_schema) for t in meta_tools()}
_READ_ONLY = types.ToolAnnotations(read_only_hint=True, open_world_hint=False)

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


def _annotations(tool: ToolDef) -> types.ToolAnnotations | None:
    if tool.name in (SEARCH_OPERATIONS, DESCRIBE_OPERATION):
        return _READ_ONLY
    if tool.kind == "dedicated":
        # Exactly-once by request id; the gateway, not the model, decides what it may change.
        return types.ToolAnnotations(idempotent_hint=True, open_world_hint=True)
    return None


def _check_meta_args(name: str, arguments: dict[str, Any]) -> None:
    validator = _META_VALIDATORS[name]
    error = next(iter(sorted(validator.iter_errors(arguments), key=lambda e: list(e.path))), None)
    if error is not None:
        path = ".".join(str(p)[:64] for p in error.absolute_path)
        message = error.message  # it quotes the instance, which may be huge: keep it short
        if len(message) > 300:
            message = message[:299] + "…"
        raise SchemaInvalid(
            f"{name}: {message}", field=f"arguments.{path}" if path else "arguments"
        )


def _bounded_name(name: str) -> str:
    """The tool name as recorded (span name, attributes, logs) before it is checked."""
    return name if len(name) <= MAX_NAME_LENGTH and name.isprintable() else loggable(name)


def _request_id(meta: Any) -> str:
    """The client's idempotency key from ``_meta`` (checked like gRPC's), or a fresh one."""
    value = meta.get(REQUEST_ID_META_KEY) if isinstance(meta, dict) else None
    if value is None or value == "":
        return str(uuid.uuid4())
    field = f"_meta.{REQUEST_ID_META_KEY}"
    if not isinstance(value, str):
        raise InvalidRequest(f"{field} must be a string", field=field)
    return check_id(value, field)


def _outcome_dict(outcome: Outcome) -> dict[str, Any]:
    """The model-facing result: the same shape as ``ExecutionResult.to_model()`` plus ids."""
    out: dict[str, Any] = {"ok": outcome.error is None, "route": outcome.decision.route}
    if outcome.result is not None:
        # The same bounds as gRPC: lone surrogates -> U+FFFD, NaN/inf/too deep -> result_invalid.
        out["result"] = clean_result(outcome.result)
    if outcome.stdout:
        out["stdout"] = clean_text(outcome.stdout)
    if outcome.stderr:
        out["stderr"] = clean_text(outcome.stderr)
    if outcome.error:
        out["error"] = clean_result(outcome.error, "error")
    if outcome.output_truncated:
        out["output_truncated"] = True
    if outcome.replayed:
        out["replayed"] = True
    out["trace_id"] = outcome.trace_id
    return out


def _result(payload: dict[str, Any], *, is_error: bool) -> types.CallToolResult:
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str,
                      allow_nan=False)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content=payload,
        is_error=is_error,
    )


def _trace_id(span: trace.Span) -> str:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


class _Handlers:
    """The MCP request handlers over one pipeline."""

    def __init__(self, pipeline: Pipeline, authenticator: Authenticator) -> None:
        self.pipeline = pipeline
        self.authenticator = authenticator
        self.tracer = pipeline.tracer
        # Every operation's tool name, not only the caller's dedicated tools: calling one the
        # policy does not route to the tool channel gets the policy's denial and reasons.
        self.tool_names = {tool_name(op.name): op.name for op in pipeline.catalog.operations}

    async def principal(self, ctx: ServerRequestContext[Any, Any]) -> Principal:
        request = ctx.request
        headers = getattr(request, "headers", None)
        token = bearer_token(headers.items()) if headers is not None else None
        return await self.authenticator.authenticate_async(token)

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        principal = await self.principal(ctx)
        tools = await self.pipeline.manifest(principal)
        return types.ListToolsResult(
            tools=[
                types.Tool(
                    name=t.name,
                    description=t.description,
                    input_schema=t.input_schema,
                    annotations=_annotations(t),
                )
                for t in tools
            ]
        )

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        name = params.name
        arguments = dict(params.arguments or {})
        meta: Any = params.meta or {}
        recorded = _bounded_name(name)
        raw_id = meta.get(REQUEST_ID_META_KEY) if isinstance(meta, dict) else None
        with self.tracer.start_as_current_span(
            f"mcp tools/call {recorded}",
            kind=SpanKind.SERVER,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            span.set_attribute(attr.TRANSPORT, "mcp")
            span.set_attribute("mcp.method.name", "tools/call")
            span.set_attribute(attr.GEN_AI_OPERATION_NAME, "execute_tool")
            span.set_attribute(attr.GEN_AI_TOOL_NAME, recorded)
            if isinstance(raw_id, str) and raw_id:
                span.set_attribute(attr.REQUEST_ID, loggable_id(raw_id))  # before it is checked
            try:
                request_id = _request_id(meta)
                span.set_attribute(attr.GEN_AI_TOOL_CALL_ID, request_id)
                span.set_attribute(attr.REQUEST_ID, request_id)
                with self.tracer.start_as_current_span(attr.SPAN_IDENTITY) as ident:
                    try:
                        principal = await self.principal(ctx)
                    except GatewayError as exc:
                        ident.set_status(Status(StatusCode.ERROR, exc.message))
                        raise
                span.set_attribute(attr.PRINCIPAL_ID, principal.id)
                span.set_attribute(attr.TENANT, principal.tenant)
                payload, is_error = await self._dispatch(principal, name, arguments, request_id)
                outcome = (payload.get("error") or {}).get("code", attr.OUTCOME_OK)
                span.set_attribute(attr.OUTCOME, str(outcome))
                return _result(payload, is_error=is_error)
            except GatewayError as exc:
                span.set_attribute(attr.OUTCOME, exc.code)
                span.set_status(Status(StatusCode.ERROR, exc.message[:1024]))
                # Denials and bad arguments are tool results the model should read and act on.
                err = {"ok": False, "error": exc.to_dict(), "trace_id": _trace_id(span)}
                if exc.code == "approval_required":  # docs/approvals.md: held, not failed
                    err["status"] = "approval_required"
                    err["approval"] = dict(exc.details)
                return _result(err, is_error=True)
            except asyncio.CancelledError:
                span.set_attribute(attr.OUTCOME, "cancelled")
                span.set_status(Status(StatusCode.ERROR, "cancelled by client"))
                raise
            except Exception as exc:
                # Never hand internals to the model; the log and the span keep the details.
                log.exception("MCP tool call failed", tool=recorded)
                span.set_attribute(attr.OUTCOME, GatewayError.code)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                err = {
                    "ok": False,
                    "error": GatewayError("internal error").to_dict(),
                    "trace_id": _trace_id(span),
                }
                return _result(err, is_error=True)

    async def _dispatch(
        self, principal: Principal, name: str, arguments: dict[str, Any], request_id: str
    ) -> tuple[dict[str, Any], bool]:
        p = self.pipeline
        # Plain, finite, bounded JSON first: the schema validator, the audit digest and the
        # backend encoder all assume it (NaN/Infinity literals and lone surrogate escapes
        # parse as JSON; deep nesting reaches Python's recursion limit).
        if name == EXECUTE_CODE:
            check_input(arguments.get("inputs"), "inputs")
            check_input({k: v for k, v in arguments.items() if k != "inputs"}, "arguments")
        else:
            check_input(arguments, "arguments")
        if name == SEARCH_OPERATIONS:
            _check_meta_args(name, arguments)
            check_query(arguments["query"], "arguments.query")
            hits = await p.search(principal, arguments["query"], int(arguments.get("limit", 10)))
            ops = [
                {"name": h.name, "summary": h.summary, "tags": list(h.tags), "route": h.route}
                for h in hits
            ]
            return {"operations": ops}, False
        if name == DESCRIBE_OPERATION:
            _check_meta_args(name, arguments)
            check_name(arguments["name"], "arguments.name")
            return await p.describe(principal, arguments["name"]), False
        if name == EXECUTE_CODE:
            _check_meta_args(name, arguments)
            code = arguments["code"]
            if len(code) > MAX_SOURCE_BYTES or len(code.encode()) > MAX_SOURCE_BYTES:
                raise InvalidRequest(f"arguments.code exceeds {MAX_SOURCE_BYTES} bytes",
                                     field="arguments.code")
            if arguments.get("session_id"):
                check_id(arguments["session_id"], "arguments.session_id", "session_id")
            action: CodeAction | ToolAction = CodeAction(
                request_id=request_id,
                source=arguments["code"],
                inputs=dict(arguments.get("inputs") or {}),
                timeout_ms=int(arguments.get("timeout_ms") or 0),
                session_id=arguments.get("session_id") or None,
                labels={"transport": "mcp"},
            )
        else:
            check_name(name, "name")
            operation = self.tool_names.get(name)
            if operation is None:
                raise UnknownOperation(f"unknown tool {name!r}", field="name")
            action = ToolAction(
                request_id=request_id,
                name=operation,
                arguments=arguments,
                labels={"transport": "mcp"},
            )
        outcome = await p.execute(principal, action)
        return _outcome_dict(outcome), outcome.error is not None


class _AuthGuard:
    """Answers 401 (with ``WWW-Authenticate``) before the MCP app sees an unauthenticated
    request; lifespan and other paths pass through."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator) -> None:
        self.app = app
        self.authenticator = authenticator

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        try:
            await self.authenticator.authenticate_async(bearer_token(headers))
        except Unauthenticated as exc:
            body = json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": None,
                    "error": {"code": -32001, "message": exc.message, "data": exc.to_dict()},
                }
            ).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"www-authenticate", b'Bearer realm="switchboard"'),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)


def _security(allowed_hosts: Sequence[str] | None) -> TransportSecuritySettings:
    if allowed_hosts is None:
        # Bearer tokens already gate every request; DNS-rebinding checks are opt-in (give the
        # Host values a browser could not be tricked into sending).
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=list(allowed_hosts),
        allowed_origins=[f"http://{h}" for h in allowed_hosts]
        + [f"https://{h}" for h in allowed_hosts],
    )


def create_mcp_app(
    pipeline: Pipeline,
    authenticator: Authenticator,
    *,
    path: str = MCP_PATH,
    allowed_hosts: Sequence[str] | None = None,
    version: str = "",
) -> ASGIApp:
    """The MCP streamable-HTTP ASGI app at ``path``; run its lifespan (uvicorn does)."""
    handlers = _Handlers(pipeline, authenticator)
    server: Server[Any] = Server(
        "switchboard",
        version=version,
        title="Switchboard gateway",
        instructions=(
            "Search the catalog with search_operations, then write Python for execute_code "
            "that calls backends through `from sdk import <backend>`. Compliance-sensitive "
            "operations are separate tools with strict schemas."
        ),
        on_list_tools=handlers.list_tools,
        on_call_tool=handlers.call_tool,
    )
    app = server.streamable_http_app(
        streamable_http_path=path,
        stateless_http=True,
        json_response=True,
        transport_security=_security(allowed_hosts),
        host="0.0.0.0",  # only consulted for the default DNS-rebinding settings we override
    )
    return _AuthGuard(app, authenticator)


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


def _split_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


async def start_mcp_server(app: ASGIApp, listen: str) -> McpHandle:
    """Serve ``app`` with uvicorn on ``listen`` (port 0 picks a free port) in this loop; returns
    once it accepts connections."""
    host, port = _split_listen(listen)
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
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = _EmbeddedUvicorn(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="switchboard-mcp")
    while not server.started:
        if task.done():
            sock.close()
            task.result()  # raises the startup error
            raise OSError(f"MCP server on {listen} exited during start-up")
        await asyncio.sleep(0.005)
    return McpHandle(host=host, port=bound, _server=server, _task=task)
