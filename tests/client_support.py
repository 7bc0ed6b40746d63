"""A scripted Gateway gRPC server for client tests: pins down the wire contract the client
relies on (bearer metadata, request ids, ``switchboard-error`` trailing metadata, streams)."""

from __future__ import annotations

import json
import threading
from concurrent import futures
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2

from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc
from gateway.manifest import dedicated_tool, format_tools, meta_tools
from gateway.models import Operation

__all__ = ["TRANSFER", "ScriptedGateway", "start_scripted"]

TRANSFER = Operation(
    name="ledger.create_transfer",
    backend="ledger",
    operation_id="createTransfer",
    summary="Move money",
    tags=("compliance",),
    method="POST",
    path="/transfers",
    input_schema={
        "type": "object",
        "properties": {"amount_cents": {"type": "integer"}},
        "required": ["amount_cents"],
    },
)


def _struct(d: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(d)
    return s


class ScriptedGateway(pb_grpc.GatewayServicer):  # type: ignore[misc]
    """Behaves like the gateway for a handful of scripted names."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[str, str, str]] = []  # (method, request_id, authorization)
        self.flaky_failures: dict[str, int] = {}

    def _auth(self, context: grpc.ServicerContext) -> str:
        auth = dict(context.invocation_metadata()).get("authorization", "")
        if auth not in ("Bearer dev-agent", "Bearer dev-finance"):
            body = {"code": "unauthenticated", "message": "no valid bearer token"}
            context.set_trailing_metadata((("switchboard-error", json.dumps(body)),))
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "no valid bearer token")
        return str(auth)

    def _record(self, method: str, request_id: str, auth: str) -> None:
        with self.lock:
            self.seen.append((method, request_id, auth))

    def Execute(self, request: pb.ExecuteRequest, context: grpc.ServicerContext) -> Any:
        auth = self._auth(context)
        self._record("Execute", request.request_id, auth)
        decision = pb.Decision(route="code", decision_id="d-1", policy_revision="r1")
        if request.WhichOneof("action") == "code_run":
            inputs = json_format.MessageToDict(request.code_run.inputs)
            resp = pb.ExecuteResponse(
                request_id=request.request_id,
                decision=decision,
                stdout="hi\n",
                trace_id="t" * 32,
                host_calls=2,
            )
            if request.code_run.source == "boom":
                resp.error.CopyFrom(
                    pb.Error(
                        code="user_code_error",
                        message="ZeroDivisionError",
                        details=_struct({"line": 1}),
                    )
                )
            else:
                json_format.ParseDict({"echo": inputs, "n": 3, "f": 1.5}, resp.result)
            return resp
        name = request.tool_call.name
        if name == "flaky.op":
            with self.lock:
                left = self.flaky_failures.get(request.request_id, 2)
                self.flaky_failures[request.request_id] = left - 1
            if left > 0:
                context.abort(grpc.StatusCode.UNAVAILABLE, "backend connection reset")
        if name == "ledger.create_transfer" and auth != "Bearer dev-finance":
            body = {
                "code": "policy_denied",
                "message": "needs role finance",
                "details": {
                    "reasons": ["ledger.create_transfer requires role finance"],
                    "decision_id": "d-9",
                },
            }
            context.set_trailing_metadata((("switchboard-error", json.dumps(body)),))
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "needs role finance")
        if name == "ledger.bad_args":
            body = {
                "code": "schema_invalid",
                "message": "amount_cents: -1 < 1",
                "field": "arguments.amount_cents",
            }
            context.set_trailing_metadata((("switchboard-error", json.dumps(body)),))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "amount_cents: -1 < 1")
        resp = pb.ExecuteResponse(
            request_id=request.request_id, decision=pb.Decision(route="tool", decision_id="d-2")
        )
        json_format.ParseDict(
            {"called": name, "args": json_format.MessageToDict(request.tool_call.arguments)},
            resp.result,
        )
        return resp

    def ExecuteStream(self, request: pb.ExecuteRequest, context: grpc.ServicerContext) -> Any:
        self._auth(context)
        yield pb.ExecuteEvent(stdout_line="line 1")
        yield pb.ExecuteEvent(
            host_call=pb.HostCallEvent(
                operation="workspace.list_events", outcome="ok", duration_ms=0.4
            )
        )
        yield pb.ExecuteEvent(stderr_line="warn")
        resp = pb.ExecuteResponse(request_id=request.request_id, decision=pb.Decision(route="code"))
        resp.result.string_value = "Done"
        yield pb.ExecuteEvent(response=resp)

    def GetManifest(self, request: pb.GetManifestRequest, context: grpc.ServicerContext) -> Any:
        self._auth(context)
        tools = [*meta_tools(), dedicated_tool(TRANSFER)]
        out = pb.Manifest(
            tools=[
                pb.ToolDefinition(
                    name=t.name,
                    description=t.description,
                    input_schema=_struct(t.input_schema),
                    kind=t.kind,
                )
                for t in tools
            ],
            policy_revision="r1",
            catalog_revision="c1",
        )
        if request.format:
            out.formatted.extend(format_tools(tools, request.format))
        return out

    def SearchOperations(
        self, request: pb.SearchOperationsRequest, context: grpc.ServicerContext
    ) -> Any:
        self._auth(context)
        hits = [
            pb.OperationSummary(
                name=f"svc.op{i}",
                summary=request.query,
                score=1.0 / (i + 1),
                tags=["t"],
                route="code",
            )
            for i in range(request.limit)
        ]
        return pb.SearchOperationsResponse(operations=hits)

    def DescribeOperation(
        self, request: pb.DescribeOperationRequest, context: grpc.ServicerContext
    ) -> Any:
        self._auth(context)
        if request.name != TRANSFER.name:
            body = {
                "code": "unknown_operation",
                "message": f"no operation {request.name!r}",
                "field": "name",
            }
            context.set_trailing_metadata((("switchboard-error", json.dumps(body)),))
            context.abort(grpc.StatusCode.NOT_FOUND, "unknown")
        return pb.OperationDescription(
            name=TRANSFER.name,
            backend="ledger",
            summary=TRANSFER.summary,
            tags=list(TRANSFER.tags),
            method="POST",
            path="/transfers",
            input_schema=_struct(TRANSFER.input_schema),
            python_signature="ledger.create_transfer(*, amount_cents: int) -> dict",
            route="tool",
        )

    def Explain(self, request: pb.ExecuteRequest, context: grpc.ServicerContext) -> Any:
        self._auth(context)
        kind = request.WhichOneof("action")
        return pb.Decision(
            route="tool" if kind == "tool_call" else "code",
            reasons=[kind],
            decision_id="d-3",
            limits=pb.Limits(timeout_ms=1000, memory_mb=64, max_host_calls=5, max_output_bytes=100),
        )


def start_scripted(
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[grpc.Server, int, ScriptedGateway]:
    """Serve a :class:`ScriptedGateway` on 127.0.0.1, port 0 (TLS when given credentials)."""
    servicer = ScriptedGateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_GatewayServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    return server, port, servicer
