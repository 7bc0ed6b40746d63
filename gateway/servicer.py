"""The gRPC servicer: translate protobuf to the front door's actions and back, nothing more.

The envelope checks are the shared validator's (:mod:`gateway.frontdoor.envelope`), the
rendering of an outcome the shared renderer's (:mod:`gateway.frontdoor.render`); identity,
tracing, logging and audit happen in the shared call scope, entered by
:mod:`gateway.interceptors`, which also maps errors to gRPC status.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import struct_pb2

from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc
from gateway.catalog import python_signature
from gateway.errors import InvalidRequest
from gateway.frontdoor import GRPC, current_principal, envelope, outcome_payload, returned
from gateway.manifest import format_tools
from gateway.models import Action, Decision, Outcome
from gateway.pipeline import Pipeline
from gateway.sandbox import SandboxEvent
from gateway.values import ID_PATTERN, clean_result, clean_text, key_path

__all__ = ["GatewayServicer"]

REQUEST_ID = ID_PATTERN  # kept for importers; the checks live in gateway.values
_STREAM_END = object()


def _struct(value: dict[str, Any] | None) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if value:
        s.update(value)
    return s


def _fill(target: struct_pb2.Value, value: Any) -> None:
    """``target`` := ``value`` (already checked by :func:`clean_result`). Built by hand rather
    than with ``json_format.ParseDict``, whose recursion limit counts every Struct/Value."""
    if value is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, (int, float)):
        target.number_value = value
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, dict):
        fields = target.struct_value.fields
        target.struct_value.SetInParent()
        for k, v in value.items():
            _fill(fields[k], v)
    else:
        values = target.list_value.values
        target.list_value.SetInParent()
        for v in value:
            _fill(values.add(), v)


def _value(value: Any) -> struct_pb2.Value:
    """A result as a protobuf Value: lone surrogates become U+FFFD; NaN, infinities and
    nesting beyond ``MAX_DEPTH`` are ``ResultInvalid`` (``field`` = the path)."""
    v = struct_pb2.Value()
    _fill(v, clean_result(value))
    return v


def _from_value(v: struct_pb2.Value, path: str) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        if not math.isfinite(v.number_value):
            raise InvalidRequest(f"{path}: {v.number_value} is not a JSON number (NaN and "
                                 "infinities are not allowed)", field=path)
        return v.number_value
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "struct_value":
        return _from_struct(v.struct_value, path)
    if kind == "list_value":
        return [_from_value(item, f"{path}[{i}]") for i, item in enumerate(v.list_value.values)]
    return None  # null_value, or no kind at all (json_format reads both as null)


def _from_struct(s: struct_pb2.Struct, path: str) -> dict[str, Any]:
    """A Struct as plain JSON, with the same shapes as ``json_format.MessageToDict`` but a
    stable ``InvalidRequest`` (``field`` = the path, e.g. ``arguments.amount``) for NaN and
    infinities, which a Struct can carry and JSON cannot. The nesting is bounded by
    protobuf's decoder; the envelope validator then applies the gateway's own bounds."""
    return {k: _from_value(v, key_path(path, k)) for k, v in s.fields.items()}


def decision_pb(d: Decision) -> pb.Decision:
    return pb.Decision(
        route=d.route, reasons=list(d.reasons), decision_id=d.decision_id,
        policy_revision=d.policy_revision, obligations=list(d.obligations),
        limits=pb.Limits(timeout_ms=d.limits.timeout_ms, memory_mb=d.limits.memory_mb,
                         max_host_calls=d.limits.max_host_calls,
                         max_output_bytes=d.limits.max_output_bytes))


def to_action(request: pb.ExecuteRequest, *, explain: bool = False) -> Action:
    """Parse the protobuf envelope; the checks are the shared envelope validator's
    (:mod:`gateway.frontdoor.envelope`, field paths of :data:`~gateway.frontdoor.GRPC`).
    ``Explain`` executes nothing, so it needs no idempotency key."""
    which = request.WhichOneof("action")
    if which is None:
        raise InvalidRequest("exactly one of tool_call or code_run is required", field="action")
    labels = dict(request.labels)
    if which == "tool_call":
        call = request.tool_call
        request_id = envelope.request_id(request.request_id, GRPC)
        envelope.check_operation_name(call.name, GRPC)
        if not explain:
            envelope.require_request_id(request_id, GRPC)
        return envelope.tool_action(
            GRPC, request_id=request_id, name=call.name,
            arguments=_from_struct(call.arguments, GRPC.arguments), labels=labels)
    run = request.code_run
    request_id = envelope.request_id(request.request_id, GRPC)
    has_session = run.HasField("session_id") and bool(run.session_id)
    schema = (_from_struct(run.output_schema, GRPC.output_schema)
              if run.HasField("output_schema") else None)
    return envelope.code_action(
        GRPC, request_id=request_id, source=run.source,
        inputs=_from_struct(run.inputs, GRPC.inputs), timeout_ms=run.timeout_ms,
        session_id=run.session_id if has_session else None,
        output_schema=schema or None, labels=labels)


def outcome_pb(request_id: str, o: Outcome) -> pb.ExecuteResponse:
    """The shared rendering (:func:`gateway.frontdoor.outcome_payload`) as protobuf."""
    view = outcome_payload(o)
    resp = pb.ExecuteResponse(
        request_id=request_id, decision=decision_pb(o.decision),
        stdout=view.get("stdout", ""), stderr=view.get("stderr", ""), trace_id=o.trace_id,
        replayed=o.replayed, host_calls=o.host_calls, output_truncated=o.output_truncated)
    if "result" in view:
        _fill(resp.result, view["result"])
    if "error" in view:
        error = view["error"]
        details = struct_pb2.Struct()
        for k, v in error.items():
            if k not in {"code", "message", "field"}:
                _fill(details.fields[k], v)
        resp.error.CopyFrom(pb.Error(
            code=str(error.get("code", "")), message=str(error.get("message", "")),
            field=str(error.get("field", "")), details=details))
    return resp


class GatewayServicer(pb_grpc.GatewayServicer):
    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    async def GetManifest(self, request: pb.GetManifestRequest,
                          context: grpc.aio.ServicerContext[Any, Any]) -> pb.Manifest:
        if request.format not in ("", "openai", "anthropic"):
            raise InvalidRequest("format must be '', 'openai' or 'anthropic'", field="format")
        tools = await self.pipeline.manifest(current_principal())
        out = pb.Manifest(
            tools=[pb.ToolDefinition(name=t.name, description=t.description,
                                     input_schema=_struct(t.input_schema), kind=t.kind)
                   for t in tools],
            policy_revision=self.pipeline.policy.revision,
            catalog_revision=self.pipeline.catalog.revision)
        if request.format:
            for item in format_tools(tools, request.format):
                out.formatted.values.add().struct_value.update(item)
        return out

    async def SearchOperations(self, request: pb.SearchOperationsRequest,
                               context: grpc.aio.ServicerContext[Any, Any],
                               ) -> pb.SearchOperationsResponse:
        envelope.check_search_query(request.query, GRPC)
        limit = min(request.limit or 10, 50)
        hits = await self.pipeline.search(current_principal(), request.query, limit)
        return pb.SearchOperationsResponse(operations=[
            pb.OperationSummary(name=h.name, summary=h.summary, tags=list(h.tags),
                                score=h.score, route=h.route) for h in hits])

    async def DescribeOperation(self, request: pb.DescribeOperationRequest,
                                context: grpc.aio.ServicerContext[Any, Any],
                                ) -> pb.OperationDescription:
        envelope.check_operation_name(request.name, GRPC, describe=True)
        d = await self.pipeline.describe(current_principal(), request.name,
                                         request.path or None, request.page or None)
        op = self.pipeline.catalog.require(request.name, field="name")
        overview = not request.path
        desc = d.get("description") if overview else None
        out = pb.OperationDescription(
            name=op.name, backend=op.backend, summary=op.summary,
            description=desc if isinstance(desc, str) else "", tags=list(op.tags),
            method=op.method, path=op.path, python_signature=python_signature(op),
            route=str(d.get("route", "")) if overview else "",
            page=int(d.get("page", 1)), pages=int(d.get("pages", 1)))
        if overview:
            for key in ("input_schema", "output_schema"):
                if isinstance(d.get(key), dict):
                    getattr(out, key).CopyFrom(_struct(d[key]))
        else:
            out.route = (await self.pipeline.route_for(current_principal(), op))
        out.view.CopyFrom(_value(d))
        return out

    async def Execute(self, request: pb.ExecuteRequest,
                      context: grpc.aio.ServicerContext[Any, Any]) -> pb.ExecuteResponse:
        action = to_action(request)
        outcome = await self.pipeline.execute(current_principal(), action)
        return outcome_pb(action.request_id, returned(outcome))

    async def ExecuteStream(self, request: pb.ExecuteRequest,
                            context: grpc.aio.ServicerContext[Any, Any],
                            ) -> AsyncIterator[pb.ExecuteEvent]:
        action = to_action(request)
        queue: asyncio.Queue[Any] = asyncio.Queue()

        async def sink(event: SandboxEvent) -> None:
            await queue.put(event)

        async def run() -> Outcome:
            try:
                return await self.pipeline.execute(current_principal(), action, on_event=sink)
            finally:
                await queue.put(_STREAM_END)

        task = asyncio.create_task(run())
        try:
            while True:
                item = await queue.get()
                if item is _STREAM_END:
                    break
                yield _event_pb(item)
            outcome = await task
        finally:
            if not task.done():
                task.cancel()
        yield pb.ExecuteEvent(response=outcome_pb(action.request_id, returned(outcome)))

    async def Explain(self, request: pb.ExecuteRequest,
                      context: grpc.aio.ServicerContext[Any, Any]) -> pb.Decision:
        action = to_action(request, explain=True)
        return decision_pb(await self.pipeline.explain(current_principal(), action))


def _event_pb(event: SandboxEvent) -> pb.ExecuteEvent:
    if event.kind == "stdout":
        return pb.ExecuteEvent(stdout_line=clean_text(str(event.data.get("line", ""))))
    if event.kind == "stderr":
        return pb.ExecuteEvent(stderr_line=clean_text(str(event.data.get("line", ""))))
    return pb.ExecuteEvent(host_call=pb.HostCallEvent(
        operation=clean_text(str(event.data.get("operation", ""))),
        outcome=clean_text(str(event.data.get("outcome", ""))),
        duration_ms=float(event.data.get("duration_ms", 0.0))))
