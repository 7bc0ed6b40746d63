"""Plain result types of the client library and their protobuf conversions.

Kept apart from the channel code in :mod:`switchboard_client.client` so the sync and async
clients share one conversion. Nothing here imports the server package (``gateway``): the few
shapes the client shares with it (:class:`Decision`, :class:`Limits`, :class:`ToolDef`, the
meta-tool names) are the client's own plain copies of what the wire carries.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import grpc
from google.protobuf import json_format, struct_pb2

from switchboard_client._proto.switchboard.v1 import gateway_pb2 as pb

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DESCRIBE_OPERATION",
    "ERROR_METADATA_KEY",
    "EXECUTE_CODE",
    "SEARCH_OPERATIONS",
    "Decision",
    "DispatchPlan",
    "ExecutionResult",
    "Limits",
    "Manifest",
    "OperationInfo",
    "OperationMatch",
    "StreamEvent",
    "SwitchboardError",
    "ToolDef",
    "code_request",
    "decision_from_pb",
    "dispatch_plan",
    "event_from_pb",
    "from_struct",
    "from_value",
    "manifest_from_pb",
    "match_from_pb",
    "operation_from_pb",
    "result_from_pb",
    "reverse_map",
    "to_struct",
    "tool_request",
]

DEFAULT_TIMEOUT_S = 30.0
# The three meta-tools every manifest starts with (the server's gateway.manifest names them too).
SEARCH_OPERATIONS = "search_operations"
DESCRIBE_OPERATION = "describe_operation"
EXECUTE_CODE = "execute_code"
# Trailing metadata the server attaches to a failed RPC: JSON {code, message, field, details}.
ERROR_METADATA_KEY = "switchboard-error"
_OPERATION_IN_DESCRIPTION = re.compile(r"\(operation ([^\s()]+)\)\s*$")
_MAX_SAFE_INT = 2**53


def _jsonish(value: Any) -> Any:
    """protobuf Struct stores every number as a double; give integral ones back as int, as a
    JSON parser would for ``3`` (exact up to 2**53)."""
    if isinstance(value, float) and value.is_integer() and abs(value) <= _MAX_SAFE_INT:
        return int(value)
    if isinstance(value, dict):
        return {k: _jsonish(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonish(v) for v in value]
    return value


def to_struct(data: Mapping[str, Any] | None) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if data:
        # Round-trip through JSON so tuples, dataclass-free mappings etc. fail loudly here.
        s.update(json.loads(json.dumps(dict(data))))
    return s


def from_struct(s: struct_pb2.Struct) -> dict[str, Any]:
    out = json_format.MessageToDict(s)
    return dict(_jsonish(out))


def from_value(v: struct_pb2.Value) -> Any:
    if v.WhichOneof("kind") is None:
        return None
    return _jsonish(json_format.MessageToDict(v))


class SwitchboardError(Exception):
    """A gateway call failed: stable ``code`` (``policy_denied``, ``schema_invalid``, ...),
    gRPC ``status``, the offending ``field`` and ``details`` (e.g. the policy's reasons)."""

    def __init__(
        self,
        code: str,
        message: str,
        status: grpc.StatusCode | None = None,
        details: Mapping[str, Any] | None = None,
        field: str = "",
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.details: dict[str, Any] = dict(details or {})
        self.field = field

    @property
    def reasons(self) -> list[str]:
        return [str(r) for r in self.details.get("reasons", [])]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            out["field"] = self.field
        if self.details:
            out["details"] = self.details
        return out

    @classmethod
    def from_rpc(cls, err: grpc.RpcError | grpc.aio.AioRpcError) -> SwitchboardError:
        """Prefer the server's structured error; fall back to the bare gRPC status."""
        # A sync RpcError raised by a call is also a grpc.Call, but not typed as one.
        call: Any = err
        status: grpc.StatusCode | None = call.code() if hasattr(call, "code") else None
        text = (call.details() if hasattr(call, "details") else None) or ""
        trailing = call.trailing_metadata() if hasattr(call, "trailing_metadata") else None
        pairs: list[tuple[str, str | bytes]] = [(str(k), v) for k, v in (trailing or ())]
        for key, raw in pairs:
            if key not in (ERROR_METADATA_KEY, ERROR_METADATA_KEY + "-bin"):
                continue
            try:
                body = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
            except (ValueError, UnicodeDecodeError):
                break
            if isinstance(body, dict) and body.get("code"):
                details = body.get("details")
                return cls(
                    str(body["code"]),
                    str(body.get("message") or text),
                    status,
                    details if isinstance(details, dict) else None,
                    str(body.get("field") or ""),
                )
        code = status.name.lower() if status is not None else "internal"
        return cls(code, text, status)


@dataclass(frozen=True)
class Limits:
    """The sandbox limits a decision carries (``Decision.limits`` on the wire)."""

    timeout_ms: int = 5000
    memory_mb: int = 256
    max_host_calls: int = 50
    max_output_bytes: int = 65536


@dataclass(frozen=True)
class Decision:
    """The policy decision :meth:`~switchboard_client.SwitchboardClient.explain` returns."""

    route: Literal["tool", "code", "deny"]
    reasons: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    obligations: tuple[str, ...] = ()
    decision_id: str = ""
    policy_revision: str = ""

    @property
    def allowed(self) -> bool:
        return self.route != "deny"


@dataclass(frozen=True)
class ToolDef:
    """One tool of a :class:`Manifest` as a model sees it; ``operation`` names the catalog
    operation for dedicated tools (``None`` for meta-tools)."""

    name: str
    description: str
    input_schema: dict[str, Any] = field(default_factory=dict)
    kind: Literal["meta", "dedicated"] = "meta"
    operation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The native (provider-neutral) form, as ``GetManifest`` returns with format ""."""
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "input_schema": copy.deepcopy(self.input_schema),
            "kind": self.kind,
        }
        if self.operation is not None:
            out["operation"] = self.operation
        return out


def reverse_map(tools: Iterable[ToolDef]) -> dict[str, str]:
    """Tool name -> operation name, for the dedicated tools in ``tools``."""
    return {t.name: t.operation for t in tools if t.kind == "dedicated" and t.operation}


@dataclass(frozen=True)
class ExecutionResult:
    """The outcome of one Execute: the decision, the JSON result and captured output."""

    ok: bool
    route: str
    reasons: tuple[str, ...] = ()
    decision_id: str = ""
    result: Any = None
    stdout: str = ""
    stderr: str = ""
    error: dict[str, Any] | None = None
    trace_id: str = ""
    replayed: bool = False
    request_id: str = ""
    host_calls: int = 0
    output_truncated: bool = False
    policy_revision: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        return out

    def to_model(self) -> dict[str, Any]:
        """What a model should see: no ids, no empty fields."""
        out: dict[str, Any] = {"ok": self.ok}
        if self.result is not None:
            out["result"] = self.result
        if self.stdout:
            out["stdout"] = self.stdout
        if self.stderr:
            out["stderr"] = self.stderr
        if self.error:
            out["error"] = self.error
        if self.output_truncated:
            out["output_truncated"] = True
        return out


@dataclass(frozen=True)
class StreamEvent:
    """One ExecuteStream event; ``kind`` says which field is set."""

    kind: Literal["stdout", "stderr", "host_call", "result"]
    text: str = ""
    host_call: dict[str, Any] | None = None
    result: ExecutionResult | None = None


@dataclass(frozen=True)
class OperationMatch:
    name: str
    summary: str
    tags: tuple[str, ...] = ()
    score: float = 0.0
    route: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "summary": self.summary,
            "tags": list(self.tags),
            "route": self.route,
        }


@dataclass(frozen=True)
class OperationInfo:
    name: str
    backend: str = ""
    summary: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()
    method: str = ""
    path: str = ""
    input_schema: dict[str, Any] = field(default_factory=dict)
    output_schema: dict[str, Any] | None = None
    python_signature: str = ""
    route: str = ""
    # The bounded JSON the gateway rendered (<= 2,000 tokens): the overview, or the subtree a
    # ``path`` named (``{name, at, value, page?, pages?}``); what a model should read.
    view: Any = None
    page: int = 1
    pages: int = 1

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["tags"] = list(self.tags)
        return out


@dataclass(frozen=True)
class Manifest:
    tools: list[ToolDef]
    formatted: list[Any]
    policy_revision: str = ""
    catalog_revision: str = ""


@dataclass(frozen=True)
class DispatchPlan:
    kind: Literal["search", "describe", "code", "tool"]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def tool_request(
    name: str,
    arguments: Mapping[str, Any] | None,
    request_id: str,
    labels: Mapping[str, str] | None,
) -> pb.ExecuteRequest:
    return pb.ExecuteRequest(
        request_id=request_id,
        tool_call=pb.ToolCall(name=name, arguments=to_struct(arguments)),
        labels=dict(labels or {}),
    )


def code_request(
    source: str,
    inputs: Mapping[str, Any] | None,
    timeout_ms: int,
    session_id: str | None,
    request_id: str,
    output_schema: Mapping[str, Any] | None,
    labels: Mapping[str, str] | None,
) -> pb.ExecuteRequest:
    run = pb.CodeRun(source=source, inputs=to_struct(inputs), timeout_ms=max(0, timeout_ms))
    if session_id is not None:
        run.session_id = session_id
    if output_schema:
        run.output_schema.CopyFrom(to_struct(output_schema))
    return pb.ExecuteRequest(request_id=request_id, code_run=run, labels=dict(labels or {}))


def decision_from_pb(d: pb.Decision) -> Decision:
    lim = d.limits
    limits = (
        Limits(lim.timeout_ms, lim.memory_mb, lim.max_host_calls, lim.max_output_bytes)
        if d.HasField("limits")
        else Limits()
    )
    route: Literal["tool", "code", "deny"] = (
        "tool" if d.route == "tool" else "code" if d.route == "code" else "deny"
    )
    return Decision(
        route=route,
        reasons=tuple(d.reasons),
        limits=limits,
        obligations=tuple(d.obligations),
        decision_id=d.decision_id,
        policy_revision=d.policy_revision,
    )


def result_from_pb(r: pb.ExecuteResponse) -> ExecutionResult:
    error: dict[str, Any] | None = None
    if r.HasField("error") and r.error.code:
        error = {"code": r.error.code, "message": r.error.message}
        if r.error.field:
            error["field"] = r.error.field
        if r.error.HasField("details"):
            error["details"] = from_struct(r.error.details)
    route = r.decision.route
    return ExecutionResult(
        ok=error is None and route != "deny",
        route=route,
        reasons=tuple(r.decision.reasons),
        decision_id=r.decision.decision_id,
        result=from_value(r.result) if r.HasField("result") else None,
        stdout=r.stdout,
        stderr=r.stderr,
        error=error,
        trace_id=r.trace_id,
        replayed=r.replayed,
        request_id=r.request_id,
        host_calls=r.host_calls,
        output_truncated=r.output_truncated,
        policy_revision=r.decision.policy_revision,
    )


def event_from_pb(e: pb.ExecuteEvent) -> StreamEvent:
    which = e.WhichOneof("event")
    if which == "stdout_line":
        return StreamEvent("stdout", text=e.stdout_line)
    if which == "stderr_line":
        return StreamEvent("stderr", text=e.stderr_line)
    if which == "host_call":
        hc = e.host_call
        return StreamEvent(
            "host_call",
            host_call={
                "operation": hc.operation,
                "outcome": hc.outcome,
                "duration_ms": hc.duration_ms,
            },
        )
    return StreamEvent("result", result=result_from_pb(e.response))


def match_from_pb(m: pb.OperationSummary) -> OperationMatch:
    return OperationMatch(m.name, m.summary, tuple(m.tags), m.score, m.route)


def operation_from_pb(d: pb.OperationDescription) -> OperationInfo:
    return OperationInfo(
        name=d.name,
        backend=d.backend,
        summary=d.summary,
        description=d.description,
        tags=tuple(d.tags),
        method=d.method,
        path=d.path,
        input_schema=from_struct(d.input_schema),
        output_schema=from_struct(d.output_schema) if d.HasField("output_schema") else None,
        python_signature=d.python_signature,
        route=d.route,
        view=from_value(d.view) if d.HasField("view") else None,
        page=d.page or 1,
        pages=d.pages or 1,
    )


def _operation_of(t: pb.ToolDefinition) -> str | None:
    if t.kind != "dedicated":
        return None
    m = _OPERATION_IN_DESCRIPTION.search(t.description)
    return m.group(1) if m else t.name.replace("__", ".", 1)


def manifest_from_pb(m: pb.Manifest) -> Manifest:
    tools = [
        ToolDef(
            name=t.name,
            description=t.description,
            input_schema=from_struct(t.input_schema),
            kind="dedicated" if t.kind == "dedicated" else "meta",
            operation=_operation_of(t),
        )
        for t in m.tools
    ]
    formatted = _jsonish(json_format.MessageToDict(m.formatted)) if m.HasField("formatted") else []
    return Manifest(tools, list(formatted), m.policy_revision, m.catalog_revision)


def dispatch_plan(
    name: str, args: dict[str, Any], tool_map: Mapping[str, str] | None = None
) -> DispatchPlan:
    """Map a model-facing tool call onto a client method. Dedicated tools resolve through
    ``tool_map`` (tool name -> operation, from the last manifest), else by their
    ``backend__operation`` name, or by the dotted operation name itself."""
    if name == SEARCH_OPERATIONS:
        return DispatchPlan("search", (str(args.get("query", "")), int(args.get("limit", 10))))
    if name == DESCRIBE_OPERATION:
        page = args.get("page")
        return DispatchPlan("describe", (str(args.get("name", "")),
                                         args.get("path") or None,
                                         int(page) if isinstance(page, int | float) else None))
    if name == EXECUTE_CODE:
        kwargs: dict[str, Any] = {"source": str(args.get("code", ""))}
        if isinstance(args.get("inputs"), dict):
            kwargs["inputs"] = args["inputs"]
        if args.get("timeout_ms"):
            kwargs["timeout_ms"] = int(args["timeout_ms"])
        if args.get("session_id"):
            kwargs["session_id"] = str(args["session_id"])
        return DispatchPlan("code", kwargs=kwargs)
    if tool_map and name in tool_map:
        operation = tool_map[name]
    else:
        operation = name if "." in name else name.replace("__", ".", 1)
    return DispatchPlan("tool", (operation, args))
