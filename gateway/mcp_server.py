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
answers 401 before any MCP processing, and again per request inside the call's audit span:
every request a handler here answers (tools, resources, completion, logging level) runs in the
shared call scope, so discovery leaves an audit record as its gRPC twins do.
The guard also serves the OAuth protected-resource metadata (RFC 9728) without auth, and its
401s point at it (``WWW-Authenticate: Bearer resource_metadata="..."``).
The HTTP side (guard, JSON-only bridge, listener) is :mod:`gateway.mcp_http`; the error
mapping :mod:`gateway.mcp_errors`; the per-call bookkeeping, envelope checks and outcome
rendering are the shared front door's (:mod:`gateway.frontdoor`, docs/front-door.md).

Besides tools: ``execute_code`` streams its output as progress (when the request carries a
``progressToken``) and log notifications while it runs; the catalog is readable as resources
(``switchboard://operations/{name}``, the ``describe_operation`` document) with completion of
the template's ``name``; ``logging/setLevel`` is accepted (stateless: nothing is remembered).
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import mcp_types as types
import structlog
from jsonschema import Draft202012Validator
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from opentelemetry.context import Context
from opentelemetry.util.types import AttributeValue

from gateway.audit import attributes as attr
from gateway.audit import extract_trace_context
from gateway.errors import GatewayError, InvalidRequest, SchemaInvalid, Unauthenticated
from gateway.frontdoor import (
    MCP,
    CallScope,
    PrincipalCalls,
    call_scope,
    envelope,
    outcome_payload,
)
from gateway.frontdoor.envelope import recorded_request_id
from gateway.identity import Authenticator, bearer_token
from gateway.manifest import (
    DESCRIBE_OPERATION,
    EXECUTE_CODE,
    SEARCH_OPERATIONS,
    ToolDef,
    meta_tools,
    tool_name,
)
from gateway.mcp_errors import (
    INVALID_PARAMS,
    RESOURCE_NOT_FOUND,
    UnknownTool,
    internal_error_result,
    request_error,
    tool_error_result,
    tool_result,
    unknown_tool_error,
)
from gateway.mcp_http import (  # re-exported: the HTTP side of this door
    MAX_BODY_BYTES,
    MCP_PATH,
    PROTECTED_RESOURCE_PATH,
    ASGIApp,
    McpHandle,
    _AuthGuard,
    _security,
    start_mcp_server,
)
from gateway.models import CodeAction, Operation, Principal, ToolAction
from gateway.pipeline import Pipeline
from gateway.sandbox import SandboxEvent
from gateway.values import MAX_NAME_LENGTH, check_input, check_name, clean_text, loggable

__all__ = [
    "MCP_PATH",
    "OPERATION_URI_PREFIX",
    "PROTECTED_RESOURCE_PATH",
    "REQUEST_ID_META_KEY",
    "McpHandle",
    "create_mcp_app",
    "start_mcp_server",
]

log = structlog.get_logger("switchboard.mcp")

# Optional client-chosen idempotency key for a dedicated tool call, in the request ``_meta``.
REQUEST_ID_META_KEY = "switchboard/request_id"
_META_VALIDATORS = {t.name: Draft202012Validator(t.input_schema) for t in meta_tools()}
_READ_ONLY = types.ToolAnnotations(read_only_hint=True, open_world_hint=False)
# The catalog as MCP resources: one document per operation the caller may use.
OPERATION_URI_PREFIX = "switchboard://operations/"
_OPERATION_TEMPLATE = OPERATION_URI_PREFIX + "{name}"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Tags an OpenAPI document can put on an operation to say it destroys or only reads data.
_DESTRUCTIVE_TAGS = frozenset({"destructive", "delete"})
_READ_ONLY_TAGS = frozenset({"read-only", "readonly"})
_MAX_COMPLETIONS = 100  # the spec's cap on completion values per response
_MAX_URI_LENGTH = 512  # a resource URI recorded as is (longer ones as a bounded stand-in)


def _is_read_only(op: Operation) -> bool:
    return op.method.upper() in _SAFE_METHODS or bool(_READ_ONLY_TAGS & set(op.tags))


def _is_destructive(op: Operation) -> bool:
    if _is_read_only(op):
        return False
    return op.method.upper() == "DELETE" or bool(_DESTRUCTIVE_TAGS & set(op.tags))


def operation_annotations(op: Operation) -> types.ToolAnnotations:
    """A dedicated tool's hints, from its HTTP method and tags. Every dedicated call is
    exactly-once by request id, so it is idempotent whatever the method."""
    return types.ToolAnnotations(
        read_only_hint=_is_read_only(op),
        destructive_hint=_is_destructive(op),
        idempotent_hint=True,
        open_world_hint=True,
    )


def code_annotations(reachable: Sequence[Operation]) -> types.ToolAnnotations:
    """``execute_code``'s hints for one caller, from the operations the policy lets that caller
    reach (conservatively: any route but deny). Code may call them in any order, any number of
    times, so it is never idempotent."""
    return types.ToolAnnotations(
        read_only_hint=all(_is_read_only(op) for op in reachable),
        destructive_hint=any(_is_destructive(op) for op in reachable),
        idempotent_hint=False,
        open_world_hint=True,
    )


def _output_schema(op: Operation) -> dict[str, Any]:
    """A dedicated tool's ``outputSchema``: the result envelope, with the operation's own
    response schema as ``result`` when the catalog has one."""
    result: dict[str, Any] = dict(op.output_schema) if op.output_schema else {}
    return {
        "type": "object",
        "properties": {
            "ok": {"type": "boolean"},
            "route": {"type": "string"},
            "result": result,
            "error": {"type": "object"},
            "replayed": {"type": "boolean"},
            "output_truncated": {"type": "boolean"},
            "trace_id": {"type": "string"},
        },
        "required": ["ok", "trace_id"],
    }


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


def _bounded_uri(uri: str) -> str:
    """A resource URI as recorded before it is checked (the client chose it)."""
    return uri if len(uri) <= _MAX_URI_LENGTH and uri.isprintable() else loggable(uri)


def _request_headers(ctx: ServerRequestContext[Any, Any]) -> list[tuple[str, str]]:
    headers = getattr(ctx.request, "headers", None)
    return list(headers.items()) if headers is not None else []


def _trace_parent(headers: Sequence[tuple[str, str]]) -> Context | None:
    """The caller's W3C context, when it sent one (the root span's parent)."""
    if any(k.lower() == "traceparent" for k, _ in headers):
        return extract_trace_context(headers)
    return None


def _principal_of(scope: CallScope) -> Principal:
    assert scope.principal is not None  # call_scope authenticated before yielding
    return scope.principal


class _Handlers:
    """The MCP request handlers over one pipeline."""

    def __init__(self, pipeline: Pipeline, authenticator: Authenticator,
                 in_flight: PrincipalCalls | None = None) -> None:
        self.pipeline = pipeline
        self.authenticator = authenticator
        self.in_flight = in_flight
        self.tracer = pipeline.tracer
        # Every operation's tool name, not only the caller's dedicated tools: calling one the
        # policy does not route to the tool channel gets the policy's denial and reasons.
        self.tool_names = {tool_name(op.name): op.name for op in pipeline.catalog.operations}
        # execute_code's annotations per (caller, policy revision): a policy decision per
        # operation is too much work for every tools/list.
        self._code_hints: OrderedDict[tuple[Principal, str], types.ToolAnnotations] = (
            OrderedDict())

    async def _reachable(self, principal: Principal) -> list[tuple[Operation, str]]:
        """Every operation with the route the policy gives this caller, unless deny."""
        out = []
        for op in self.pipeline.catalog.operations:
            route = await self.pipeline.route_for(principal, op)
            if route != "deny":
                out.append((op, route))
        return out

    async def _code_annotations(self, principal: Principal) -> types.ToolAnnotations:
        key = (principal, str(getattr(self.pipeline.policy, "revision", "")))
        hints = self._code_hints.get(key)
        if hints is None:
            hints = code_annotations([op for op, _ in await self._reachable(principal)])
            self._code_hints[key] = hints
            while len(self._code_hints) > 1024:
                self._code_hints.popitem(last=False)
        return hints

    def _tool(self, tool: ToolDef, code_hints: types.ToolAnnotations) -> types.Tool:
        annotations: types.ToolAnnotations | None = None
        output_schema: dict[str, Any] | None = None
        if tool.name in (SEARCH_OPERATIONS, DESCRIBE_OPERATION):
            annotations = _READ_ONLY
        elif tool.name == EXECUTE_CODE:
            annotations = code_hints
        elif tool.operation is not None:
            op = self.pipeline.catalog.get(tool.operation)
            if op is not None:
                annotations = operation_annotations(op)
                output_schema = _output_schema(op)
        return types.Tool(
            name=tool.name,
            description=tool.description,
            input_schema=tool.input_schema,
            output_schema=output_schema,
            annotations=annotations,
        )

    @asynccontextmanager
    async def _scope(
        self, ctx: ServerRequestContext[Any, Any], method: str,
        attributes: Mapping[str, AttributeValue] | None = None,
        on_error: Callable[[GatewayError, str], MCPError | None] | None = None,
    ) -> AsyncIterator[CallScope]:
        """The shared call scope of one request other than ``tools/call`` (root span
        ``mcp <method>``, identity, outcome, audit record), as the gRPC door gives its
        GetManifest / DescribeOperation: no request id is sent, so a fresh one is recorded.
        The error is recorded inside the scope and answered outside it, as ``on_error`` maps
        it (the handler's own JSON-RPC errors) or else :func:`request_error`."""
        headers = _request_headers(ctx)
        opened: list[CallScope] = []
        try:
            async with call_scope(
                self.tracer, self.authenticator, transport="mcp", span_name=f"mcp {method}",
                token=bearer_token(headers), raw_request_id=recorded_request_id(None),
                attributes={"mcp.method.name": method, **(attributes or {})},
                parent=_trace_parent(headers), log_fields={"mcp_method": method},
                on_open=opened.append, in_flight=self.in_flight,
            ) as scope:
                yield scope
        except Exception as exc:
            trace_id = _opened_trace_id(opened)
            mapped = on_error(exc, trace_id) if on_error is not None and isinstance(
                exc, GatewayError) else None
            raise (mapped or request_error(exc, trace_id)) from None

    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        async with self._scope(ctx, "tools/list") as scope:
            principal = _principal_of(scope)
            tools = await self.pipeline.manifest(principal)
            code_hints = await self._code_annotations(principal)
            return types.ListToolsResult(tools=[self._tool(t, code_hints) for t in tools])

    async def set_logging_level(
        self, ctx: ServerRequestContext[Any, Any], params: types.SetLevelRequestParams
    ) -> types.EmptyResult:
        # Stateless: there is no session to remember the level in. Handshake-era clients get
        # execute_code's output at info (stdout) and warning (stderr); 2026-07-28 clients opt
        # in per request with the `_meta` log level, which the SDK applies.
        async with self._scope(ctx, "logging/setLevel"):
            return types.EmptyResult()

    async def list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        async with self._scope(ctx, "resources/list") as scope:
            return types.ListResourcesResult(
                resources=[
                    types.Resource(
                        uri=OPERATION_URI_PREFIX + op.name,
                        name=op.name,
                        title=op.summary or None,
                        description=f"{op.method} {op.path} ({route} route): " + (
                            op.description or op.summary or op.name)[:500],
                        mime_type="application/json",
                    )
                    for op, route in await self._reachable(_principal_of(scope))
                ]
            )

    async def list_resource_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        async with self._scope(ctx, "resources/templates/list"):
            return types.ListResourceTemplatesResult(
                resource_templates=[
                    types.ResourceTemplate(
                        uri_template=_OPERATION_TEMPLATE,
                        name="operation",
                        title="Catalog operation",
                        description="One catalog operation as describe_operation returns it: "
                        "schemas, Python signature and the caller's route.",
                        mime_type="application/json",
                    )
                ]
            )

    async def read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        name = uri[len(OPERATION_URI_PREFIX):] if uri.startswith(OPERATION_URI_PREFIX) else ""

        def not_found(exc: GatewayError, trace_id: str) -> MCPError | None:
            # Unknown and denied look the same to the caller, as in search_operations (the
            # audit record has the real outcome).
            if isinstance(exc, Unauthenticated):
                return None
            return MCPError(RESOURCE_NOT_FOUND, "Resource not found",
                            {"uri": loggable(uri), "trace_id": trace_id})

        async with self._scope(ctx, "resources/read", {"mcp.resource.uri": _bounded_uri(uri)},
                               not_found) as scope:
            check_name(name, "uri")
            doc = await self.pipeline.describe(_principal_of(scope), name)
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"), default=str)
        return types.ReadResourceResult(
            contents=[types.TextResourceContents(uri=uri, mime_type="application/json",
                                                 text=text)]
        )

    async def complete(
        self, ctx: ServerRequestContext[Any, Any], params: types.CompleteRequestParams
    ) -> types.CompleteResult:
        ref = params.ref

        def no_such(exc: GatewayError, trace_id: str) -> MCPError | None:
            return MCPError(INVALID_PARAMS, exc.message, {"code": exc.code, "field": "ref",
                                                          "trace_id": trace_id}) \
                if isinstance(exc, _NoSuchReference) else None

        async with self._scope(ctx, "completion/complete", on_error=no_such) as scope:
            if not (isinstance(ref, types.ResourceTemplateReference)
                    and ref.uri == _OPERATION_TEMPLATE):
                what = "prompt" if isinstance(ref, types.PromptReference) else "reference"
                raise _NoSuchReference(f"no such {what}", field="ref")
            if params.argument.name != "name":
                return types.CompleteResult(completion=types.Completion(values=[]))
            prefix = params.argument.value
            names = sorted(op.name for op, _ in await self._reachable(_principal_of(scope))
                           if op.name.startswith(prefix))
        return types.CompleteResult(
            completion=types.Completion(
                values=names[:_MAX_COMPLETIONS],
                total=len(names),
                has_more=len(names) > _MAX_COMPLETIONS,
            )
        )

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        """One ``tools/call`` in the shared call scope (span, identity, log context, outcome,
        audit); what is MCP's own is reading the request and the mapping of errors to tool
        results or JSON-RPC errors (:mod:`gateway.mcp_errors`)."""
        name = params.name
        arguments = dict(params.arguments or {})
        meta: Any = params.meta or {}
        recorded = _bounded_name(name)
        raw_id = meta.get(REQUEST_ID_META_KEY) if isinstance(meta, dict) else None
        supplied_id = raw_id is not None and raw_id != ""
        if not supplied_id:
            raw_id = str(uuid.uuid4())  # MCP clients rarely send one: a fresh key per call
        headers = _request_headers(ctx)
        parent = _trace_parent(headers)
        opened: list[CallScope] = []
        try:
            async with call_scope(
                self.tracer, self.authenticator, transport="mcp",
                span_name=f"mcp tools/call {recorded}", token=bearer_token(headers),
                raw_request_id=recorded_request_id(raw_id),
                attributes={"mcp.method.name": "tools/call",
                            attr.GEN_AI_OPERATION_NAME: "execute_tool",
                            attr.GEN_AI_TOOL_NAME: recorded},
                parent=parent, log_fields={"mcp_method": "tools/call", "tool": recorded},
                on_open=opened.append, in_flight=self.in_flight,
            ) as scope:
                request_id = envelope.request_id(raw_id, MCP, generate=True)
                scope.span.set_attribute(attr.GEN_AI_TOOL_CALL_ID, request_id)
                scope.span.set_attribute(attr.REQUEST_ID, request_id)
                assert scope.principal is not None
                payload, is_error = await self._dispatch(
                    scope, scope.principal, name, arguments, request_id, _Notifier(ctx),
                    generated_id=not supplied_id)
                return tool_result(payload, is_error=is_error)
        except UnknownTool as exc:
            # Neither a meta-tool nor any operation's name: a protocol error (-32602), as the
            # MCP spec has it, not a tool result.
            raise unknown_tool_error(exc, _opened_trace_id(opened)) from None
        except GatewayError as exc:
            # Denials and bad arguments are tool results the model should read and act on.
            return tool_error_result(exc, _opened_trace_id(opened))
        except Exception:
            # The scope logged and recorded it; never hand internals to the model.
            return internal_error_result(_opened_trace_id(opened))

    async def _dispatch(
        self, scope: CallScope, principal: Principal, name: str, arguments: dict[str, Any],
        request_id: str, notifier: _Notifier, *, generated_id: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        p = self.pipeline
        # Plain, finite, bounded JSON first: the schema validator, the audit digest and the
        # backend encoder all assume it (NaN/Infinity literals and lone surrogate escapes
        # parse as JSON; deep nesting reaches Python's recursion limit).
        if name == EXECUTE_CODE:
            check_input(arguments.get("inputs"), MCP.inputs)
            check_input({k: v for k, v in arguments.items() if k != "inputs"}, MCP.arguments)
        else:
            check_input(arguments, MCP.arguments)
        # The envelope's bounds before the schema, as gRPC has them: the same over-long name,
        # query or source is the same invalid_request on both doors (the schema's own bounds
        # are looser or equal) and a hostile value is never walked in full.
        if name == SEARCH_OPERATIONS:
            if isinstance(arguments.get("query"), str):
                envelope.check_search_query(arguments["query"], MCP)
            _check_meta_args(name, arguments)
            hits = await p.search(principal, arguments["query"], int(arguments.get("limit", 10)))
            ops = [
                {"name": h.name, "summary": h.summary, "tags": list(h.tags), "route": h.route}
                for h in hits
            ]
            return {"operations": ops}, False
        if name == DESCRIBE_OPERATION:
            if isinstance(arguments.get("name"), str):
                envelope.check_operation_name(arguments["name"], MCP, describe=True)
            _check_meta_args(name, arguments)
            return await p.describe(principal, arguments["name"], arguments.get("path"),
                                    arguments.get("page"), field_prefix="arguments."), False
        if name == EXECUTE_CODE:
            if isinstance(arguments.get("code"), str):
                envelope.check_source(arguments["code"], MCP)
            _check_meta_args(name, arguments)
            action: CodeAction | ToolAction = envelope.code_action(
                MCP, request_id=request_id, source=arguments["code"],
                inputs=dict(arguments.get("inputs") or {}),
                timeout_ms=int(arguments.get("timeout_ms") or 0),
                session_id=arguments.get("session_id") or None,
                labels={"transport": "mcp"},
            )
        else:
            envelope.check_operation_name(name, MCP)
            operation = self.tool_names.get(name)
            if operation is None:
                raise UnknownTool(_bounded_name(name))
            action = envelope.tool_action(MCP, request_id=request_id, name=operation,
                                          arguments=arguments, labels={"transport": "mcp"},
                                          generated_id=generated_id)
        on_event = notifier.on_event if isinstance(action, CodeAction) else None
        outcome = scope.returned(await p.execute(principal, action, on_event=on_event))
        return outcome_payload(outcome), outcome.error is not None


def _opened_trace_id(opened: Sequence[CallScope]) -> str:
    return opened[0].trace_id if opened else ""


class _NoSuchReference(InvalidRequest):
    """A completion for a prompt or template this server does not have: recorded as
    ``invalid_request`` inside the call scope, answered as JSON-RPC ``-32602`` outside it."""


class _Notifier:
    """Streams a code run's events to the caller while it runs: every event as a progress
    notification (when the request carries a ``progressToken``; the count so far, no total)
    and stdout/stderr lines as log notifications (``info``/``warning``, logger
    ``switchboard.stdout``/``switchboard.stderr``). The response then comes as SSE; a
    notification that cannot be delivered never fails the run."""

    def __init__(self, ctx: ServerRequestContext[Any, Any]) -> None:
        self.ctx = ctx
        self.count = 0

    async def on_event(self, event: SandboxEvent) -> None:
        self.count += 1
        line = clean_text(str(event.data.get("line", "")))
        if event.kind == "host_call":
            progress = "host call {}: {}".format(
                clean_text(str(event.data.get("operation", ""))),
                clean_text(str(event.data.get("outcome", ""))))
        else:
            progress = f"{event.kind}: {line}"
        session = self.ctx.session
        try:
            await session.report_progress(float(self.count), None, progress)
            if event.kind in ("stdout", "stderr"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", MCPDeprecationWarning)
                    await session.send_log_message(
                        "info" if event.kind == "stdout" else "warning",
                        line,
                        logger=f"switchboard.{event.kind}",
                        related_request_id=self.ctx.request_id,
                    )
        except Exception as exc:  # a gone client must not fail the run
            log.debug("MCP notification dropped", error=type(exc).__name__)


def create_mcp_app(
    pipeline: Pipeline,
    authenticator: Authenticator,
    *,
    path: str = MCP_PATH,
    allowed_hosts: Sequence[str] | None = None,
    allowed_origins: Sequence[str] | None = None,
    resource_url: str | None = None,
    authorization_servers: Sequence[str] = (),
    version: str = "",
    max_body_bytes: int = MAX_BODY_BYTES,
    in_flight: PrincipalCalls | None = None,
) -> ASGIApp:
    """The MCP streamable-HTTP ASGI app at ``path``; run its lifespan (uvicorn does).

    ``allowed_hosts`` (``host:port``, ``host:*``) turns on Host/Origin checks (DNS-rebinding
    protection); ``allowed_origins`` defaults to those hosts over http and https.
    ``resource_url`` is the public URL of the endpoint for the protected-resource metadata
    (default: from the request's Host); ``authorization_servers`` goes into it (the JWT
    issuer); ``max_body_bytes`` is the largest request body read (413 above it);
    ``in_flight`` is the per-principal cap on calls in flight, shared with the gRPC door."""
    handlers = _Handlers(pipeline, authenticator, in_flight)
    with warnings.catch_warnings():
        # logging/setLevel is deprecated from 2026-07-28 on, but handshake-era clients use it.
        warnings.simplefilter("ignore", MCPDeprecationWarning)
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
            on_list_resources=handlers.list_resources,
            on_list_resource_templates=handlers.list_resource_templates,
            on_read_resource=handlers.read_resource,
            on_completion=handlers.complete,
            on_set_logging_level=handlers.set_logging_level,
        )
    app = server.streamable_http_app(
        streamable_http_path=path,
        stateless_http=True,
        # SSE when a call streams notifications (execute_code); 2026-07-28 requests that emit
        # none are still answered application/json.
        json_response=False,
        transport_security=_security(allowed_hosts, allowed_origins),
        host="0.0.0.0",  # only consulted for the default DNS-rebinding settings we override
    )
    return _AuthGuard(app, authenticator, path=path, resource_url=resource_url,
                      authorization_servers=authorization_servers, tracer=pipeline.tracer,
                      max_body_bytes=max_body_bytes)
