"""The client library against a scripted gRPC Gateway on loopback (port 0).

The scripted server pins down the wire contract the client relies on (bearer metadata,
request ids, the ``switchboard-error`` trailing metadata, stream ordering); the end-to-end
behaviour against the real gateway is in ``test_client_gateway.py``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc
from gateway.client import AsyncSwitchboardClient, SwitchboardClient, SwitchboardError
from gateway.manifest import dedicated_tool, format_tools, meta_tools
from gateway.models import Operation

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


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[str, ScriptedGateway]]:
    servicer = ScriptedGateway()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_GatewayServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


@pytest.fixture
def client(scripted: tuple[str, ScriptedGateway]) -> Iterator[SwitchboardClient]:
    with SwitchboardClient(scripted[0], "dev-agent", timeout=5, backoff=0.01) as c:
        yield c


def test_run_code_returns_json_result_and_sends_bearer_token(
    client: SwitchboardClient, scripted: tuple[str, ScriptedGateway]
) -> None:
    res = client.run_code("1", inputs={"a": [1, 2]}, request_id="req-code-1")
    assert res.ok and res.route == "code"
    assert res.result == {"echo": {"a": [1, 2]}, "n": 3, "f": 1.5}
    assert isinstance(res.result["n"], int) and isinstance(res.result["echo"]["a"][0], int)
    assert res.stdout == "hi\n" and res.host_calls == 2 and res.trace_id == "t" * 32
    assert ("Execute", "req-code-1", "Bearer dev-agent") in scripted[1].seen
    assert res.to_model() == {"ok": True, "result": res.result, "stdout": "hi\n"}


def test_user_code_error_is_data_not_exception(client: SwitchboardClient) -> None:
    res = client.run_code("boom")
    assert not res.ok
    assert res.error == {
        "code": "user_code_error",
        "message": "ZeroDivisionError",
        "details": {"line": 1},
    }


def test_request_id_generated_and_reused_across_retries(
    client: SwitchboardClient, scripted: tuple[str, ScriptedGateway]
) -> None:
    before = len(scripted[1].seen)
    res = client.call_tool("flaky.op", {"x": 1})
    attempts = scripted[1].seen[before:]
    assert len(attempts) == 3  # two UNAVAILABLE, then success
    ids = {rid for _, rid, _ in attempts}
    assert len(ids) == 1 and len(ids.pop()) == 36  # one uuid4 for all attempts
    assert res.ok and res.route == "tool" and res.result == {"called": "flaky.op", "args": {"x": 1}}


def test_retries_give_up_with_the_last_error(scripted: tuple[str, ScriptedGateway]) -> None:
    with (
        SwitchboardClient(scripted[0], "dev-agent", retries=1, backoff=0.01) as c,
        pytest.raises(SwitchboardError) as info,
    ):
        c.call_tool("flaky.op", {}, request_id="give-up-1")
    assert info.value.status == grpc.StatusCode.UNAVAILABLE
    assert info.value.code == "unavailable"  # no structured error: the status name


def test_denial_is_parsed_from_trailing_metadata(client: SwitchboardClient) -> None:
    with pytest.raises(SwitchboardError) as info:
        client.call_tool("ledger.create_transfer", {"amount_cents": 5})
    err = info.value
    assert err.code == "policy_denied" and err.status == grpc.StatusCode.PERMISSION_DENIED
    assert err.reasons == ["ledger.create_transfer requires role finance"]
    assert err.details["decision_id"] == "d-9"


def test_schema_error_carries_the_field(client: SwitchboardClient) -> None:
    with pytest.raises(SwitchboardError) as info:
        client.call_tool("ledger.bad_args", {"amount_cents": -1})
    assert info.value.code == "schema_invalid" and info.value.field == "arguments.amount_cents"


def test_bad_token_is_unauthenticated(scripted: tuple[str, ScriptedGateway]) -> None:
    with SwitchboardClient(scripted[0], "nope") as c, pytest.raises(SwitchboardError) as info:
        c.search("x")
    assert info.value.code == "unauthenticated"
    assert info.value.status == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(ValueError):
        SwitchboardClient(scripted[0], "")


def test_stream_code_yields_events_in_order(client: SwitchboardClient) -> None:
    events = list(client.stream_code("print(1)"))
    assert [e.kind for e in events] == ["stdout", "host_call", "stderr", "result"]
    assert events[0].text == "line 1"
    assert events[1].host_call == {
        "operation": "workspace.list_events",
        "outcome": "ok",
        "duration_ms": 0.4,
    }
    assert events[-1].result is not None and events[-1].result.result == "Done"


def test_search_describe_explain(client: SwitchboardClient) -> None:
    hits = client.search("send mail", limit=3)
    assert [h.name for h in hits] == ["svc.op0", "svc.op1", "svc.op2"]
    assert hits[0].summary == "send mail" and hits[0].route == "code"
    info = client.describe("ledger.create_transfer")
    assert info.route == "tool" and info.input_schema == TRANSFER.input_schema
    assert info.python_signature.startswith("ledger.create_transfer(")
    with pytest.raises(SwitchboardError) as err:
        client.describe("nope.nope")
    assert err.value.code == "unknown_operation" and err.value.field == "name"
    d = client.explain("ledger.create_transfer", {"amount_cents": 1})
    assert d.route == "tool" and d.reasons == ("tool_call",) and d.limits.max_host_calls == 5
    assert client.explain(source="1").route == "code"
    with pytest.raises(ValueError):
        client.explain()


def test_manifest_formats_and_dispatch(client: SwitchboardClient) -> None:
    m = client.manifest("openai")
    assert [t.name for t in m.tools] == [
        "search_operations",
        "describe_operation",
        "execute_code",
        "ledger__create_transfer",
    ]
    assert m.tools[-1].operation == "ledger.create_transfer"
    assert m.formatted[0]["type"] == "function"
    assert m.policy_revision == "r1" and m.catalog_revision == "c1"
    assert client.manifest("anthropic").formatted[3]["name"] == "ledger__create_transfer"
    assert client.manifest().formatted == []
    # dispatch: what an agent loop does with the model's tool calls; errors become data.
    denied = client.dispatch("ledger__create_transfer", {"amount_cents": 5})
    assert denied["ok"] is False and denied["error"]["code"] == "policy_denied"
    ran = client.dispatch("execute_code", {"code": "1", "inputs": {"k": "v"}})
    assert ran["ok"] is True and ran["result"]["echo"] == {"k": "v"}
    found = client.dispatch("search_operations", {"query": "q", "limit": 2})
    assert [o["name"] for o in found["operations"]] == ["svc.op0", "svc.op1"]
    described = client.dispatch("describe_operation", {"name": "ledger.create_transfer"})
    assert described["route"] == "tool"


def test_finance_principal_may_transfer(scripted: tuple[str, ScriptedGateway]) -> None:
    with SwitchboardClient(scripted[0], "dev-finance") as c:
        res = c.call_tool("ledger.create_transfer", {"amount_cents": 5}, request_id="tr-1")
    assert res.ok and res.result == {
        "called": "ledger.create_transfer",
        "args": {"amount_cents": 5},
    }


async def test_async_client_mirrors_sync(scripted: tuple[str, ScriptedGateway]) -> None:
    async with AsyncSwitchboardClient(scripted[0], "dev-agent", backoff=0.01) as c:
        res = await c.run_code("1", inputs={"z": True})
        assert res.ok and res.result["echo"] == {"z": True}
        flaky = await c.call_tool("flaky.op", {}, request_id="async-flaky-1")
        assert flaky.ok
        assert scripted[1].flaky_failures["async-flaky-1"] == -1  # 3 attempts, same id
        with pytest.raises(SwitchboardError) as info:
            await c.call_tool("ledger.create_transfer", {"amount_cents": 1})
        assert info.value.code == "policy_denied"
        kinds = [e.kind async for e in c.stream_code("x")]
        assert kinds == ["stdout", "host_call", "stderr", "result"]
        assert [h.name for h in await c.search("q", 1)] == ["svc.op0"]
        assert (await c.describe("ledger.create_transfer")).route == "tool"
        assert (await c.explain(source="1")).route == "code"
        m = await c.manifest("anthropic")
        assert m.formatted[-1]["input_schema"] == TRANSFER.input_schema
        reply = await c.dispatch("ledger__create_transfer", {"amount_cents": 1})
        assert reply["error"]["code"] == "policy_denied"
