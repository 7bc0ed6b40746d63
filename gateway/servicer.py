"""The gRPC servicer: translate protobuf to pipeline actions and back, nothing more.

Identity, tracing, logging and error mapping happen in :mod:`gateway.interceptors`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc
from gateway.errors import InvalidRequest
from gateway.interceptors import current_principal
from gateway.manifest import format_tools
from gateway.models import Decision
from gateway.pipeline import Action, CodeAction, Outcome, Pipeline, ToolAction
from gateway.sandbox import SandboxEvent

__all__ = ["GatewayServicer"]

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
MAX_SOURCE_BYTES = 256 * 1024
_STREAM_END = object()


def _struct(value: dict[str, Any] | None) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    if value:
        s.update(value)
    return s


def _value(value: Any) -> struct_pb2.Value:
    v = struct_pb2.Value()
    json_format.ParseDict(value, v)
    return v


def decision_pb(d: Decision) -> pb.Decision:
    return pb.Decision(
        route=d.route, reasons=list(d.reasons), decision_id=d.decision_id,
        policy_revision=d.policy_revision, obligations=list(d.obligations),
        limits=pb.Limits(timeout_ms=d.limits.timeout_ms, memory_mb=d.limits.memory_mb,
                         max_host_calls=d.limits.max_host_calls,
                         max_output_bytes=d.limits.max_output_bytes))


def to_action(request: pb.ExecuteRequest, *, explain: bool = False) -> Action:
    """Validate the request envelope; the arguments themselves are checked by the schema.
    ``Explain`` executes nothing, so it needs no idempotency key."""
    which = request.WhichOneof("action")
    if which is None:
        raise InvalidRequest("exactly one of tool_call or code_run is required", field="action")
    if request.request_id and not REQUEST_ID.match(request.request_id):
        raise InvalidRequest("request_id must be 1-128 characters of [A-Za-z0-9._:-]",
                             field="request_id")
    labels = dict(request.labels)
    if which == "tool_call":
        call = request.tool_call
        if not call.name:
            raise InvalidRequest("tool_call.name is required", field="tool_call.name")
        if not request.request_id and not explain:
            raise InvalidRequest("request_id is required for tool calls (it is the idempotency "
                                 "key)", field="request_id")
        return ToolAction(request_id=request.request_id, name=call.name,
                          arguments=json_format.MessageToDict(call.arguments), labels=labels)
    run = request.code_run
    if not run.source.strip():
        raise InvalidRequest("code_run.source is empty", field="code_run.source")
    if len(run.source.encode()) > MAX_SOURCE_BYTES:
        raise InvalidRequest(f"code_run.source exceeds {MAX_SOURCE_BYTES} bytes",
                             field="code_run.source")
    if run.HasField("session_id") and run.session_id and not REQUEST_ID.match(run.session_id):
        raise InvalidRequest("session_id must be 1-128 characters of [A-Za-z0-9._:-]",
                             field="code_run.session_id")
    schema = json_format.MessageToDict(run.output_schema) if run.HasField("output_schema") else None
    return CodeAction(
        request_id=request.request_id, source=run.source,
        inputs=json_format.MessageToDict(run.inputs), timeout_ms=run.timeout_ms,
        session_id=run.session_id if run.HasField("session_id") and run.session_id else None,
        output_schema=schema or None, labels=labels)


def outcome_pb(request_id: str, o: Outcome) -> pb.ExecuteResponse:
    resp = pb.ExecuteResponse(
        request_id=request_id, decision=decision_pb(o.decision), stdout=o.stdout,
        stderr=o.stderr, trace_id=o.trace_id, replayed=o.replayed, host_calls=o.host_calls,
        output_truncated=o.output_truncated)
    if o.result is not None:
        resp.result.CopyFrom(_value(o.result))
    if o.error:
        resp.error.CopyFrom(pb.Error(
            code=str(o.error.get("code", "")), message=str(o.error.get("message", "")),
            field=str(o.error.get("field", "")),
            details=_struct({k: v for k, v in o.error.items()
                             if k not in {"code", "message", "field"}})))
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
        if not request.query.strip():
            raise InvalidRequest("query is empty", field="query")
        limit = min(request.limit or 10, 50)
        hits = await self.pipeline.search(current_principal(), request.query, limit)
        return pb.SearchOperationsResponse(operations=[
            pb.OperationSummary(name=h.name, summary=h.summary, tags=list(h.tags),
                                score=h.score, route=h.route) for h in hits])

    async def DescribeOperation(self, request: pb.DescribeOperationRequest,
                                context: grpc.aio.ServicerContext[Any, Any],
                                ) -> pb.OperationDescription:
        d = await self.pipeline.describe(current_principal(), request.name)
        return pb.OperationDescription(
            name=d["name"], backend=d["backend"], summary=d["summary"],
            description=d["description"], tags=d["tags"], method=d["method"], path=d["path"],
            input_schema=_struct(d["input_schema"]), output_schema=_struct(d["output_schema"]),
            python_signature=d["python_signature"], route=d["route"])

    async def Execute(self, request: pb.ExecuteRequest,
                      context: grpc.aio.ServicerContext[Any, Any]) -> pb.ExecuteResponse:
        action = to_action(request)
        outcome = await self.pipeline.execute(current_principal(), action)
        return outcome_pb(action.request_id, outcome)

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
        yield pb.ExecuteEvent(response=outcome_pb(action.request_id, outcome))

    async def Explain(self, request: pb.ExecuteRequest,
                      context: grpc.aio.ServicerContext[Any, Any]) -> pb.Decision:
        action = to_action(request, explain=True)
        return decision_pb(await self.pipeline.explain(current_principal(), action))


def _event_pb(event: SandboxEvent) -> pb.ExecuteEvent:
    if event.kind == "stdout":
        return pb.ExecuteEvent(stdout_line=str(event.data.get("line", "")))
    if event.kind == "stderr":
        return pb.ExecuteEvent(stderr_line=str(event.data.get("line", "")))
    return pb.ExecuteEvent(host_call=pb.HostCallEvent(
        operation=str(event.data.get("operation", "")),
        outcome=str(event.data.get("outcome", "")),
        duration_ms=float(event.data.get("duration_ms", 0.0))))
