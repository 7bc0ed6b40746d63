"""Values JSON cannot carry — NaN/±Infinity, nesting past the limit, lone surrogates — get a
stable code (never ``internal``) on both doors, and the gateway keeps serving.

Inputs: ``invalid_request`` with the field path (``arguments.amount``, ``inputs.x``).
Results: ``result_invalid`` (DATA_LOSS) with the path for NaN/infinities and nesting over
``MAX_DEPTH``; lone surrogates in results and in stdout/stderr become U+FFFD.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from gateway_support import RunningGateway, error_of, md
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway.errors import ResultInvalid
from gateway.mcp_server import McpHandle, create_mcp_app, start_mcp_server
from gateway.models import Decision
from gateway.pipeline import Outcome
from gateway.sandbox import SandboxEvent
from gateway.servicer import _event_pb, outcome_pb

pytestmark = pytest.mark.timeout(240)

DEADLINE = 30.0
TRANSFER = {"from_account": "A1", "to_account": "A2", "amount": 1.0, "currency": "USD"}
DEEP_RESULT = "d = 1\nfor _ in range(40):\n    d = {'k': d}\nd"
DEEP_LIST_RESULT = "d = 1\nfor _ in range(60):\n    d = [d]\nd"


def assert_serving(gateway: RunningGateway) -> None:
    health = health_pb2_grpc.HealthStub(gateway.channel)
    resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    ok = gateway.stub.Execute(pb.ExecuteRequest(request_id="still-ok", code_run=pb.CodeRun(
        source="6 * 7")), metadata=md("dev-agent"), timeout=DEADLINE)
    assert ok.result.number_value == 42


def execute(gateway: RunningGateway, req: pb.ExecuteRequest,
            token: str = "dev-agent") -> pb.ExecuteResponse:
    return gateway.stub.Execute(req, metadata=md(token), timeout=DEADLINE)


def refused(gateway: RunningGateway, req: pb.ExecuteRequest,
            token: str = "dev-agent") -> tuple[grpc.StatusCode, dict[str, Any]]:
    with pytest.raises(grpc.RpcError) as info:
        execute(gateway, req, token)
    return info.value.code(), error_of(info.value)


# -- gRPC: inputs ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_tool_arguments_are_invalid_request(gateway: RunningGateway,
                                                       bad: float) -> None:
    req = pb.ExecuteRequest(request_id=f"nonfinite-{bad}".replace("-inf", "minf"),
                            tool_call=pb.ToolCall(name="ledger.create_transfer"))
    req.tool_call.arguments.update(TRANSFER)
    req.tool_call.arguments["amount"] = bad
    status, err = refused(gateway, req, "dev-finance")
    assert status == grpc.StatusCode.INVALID_ARGUMENT, err
    assert (err["code"], err["field"]) == ("invalid_request", "arguments.amount"), err
    assert_serving(gateway)


def test_non_finite_code_inputs_are_invalid_request(gateway: RunningGateway) -> None:
    run = pb.CodeRun(source="inputs")
    run.inputs.update({"x": 1, "rows": [1, {"y": 2}]})
    run.inputs["x"] = math.inf
    status, err = refused(gateway, pb.ExecuteRequest(request_id="inf-in", code_run=run))
    assert (status, err["code"], err["field"]) == (
        grpc.StatusCode.INVALID_ARGUMENT, "invalid_request", "inputs.x"), err
    run.inputs["x"] = 1
    run.inputs["rows"][1]["y"] = math.nan
    status, err = refused(gateway, pb.ExecuteRequest(request_id="nan-in", code_run=run))
    assert (err["code"], err["field"]) == ("invalid_request", "inputs.rows[1].y"), err
    assert_serving(gateway)


# -- gRPC: results ---------------------------------------------------------------------------


@pytest.mark.parametrize("source", [DEEP_RESULT, DEEP_LIST_RESULT], ids=["objects", "arrays"])
def test_a_too_deep_result_is_result_invalid(gateway: RunningGateway, source: str) -> None:
    status, err = refused(gateway, pb.ExecuteRequest(request_id="deep-out", code_run=pb.CodeRun(
        source=source)))
    assert status == grpc.StatusCode.DATA_LOSS, err
    assert err["code"] == "result_invalid" and err["field"].startswith("result"), err
    assert err["details"]["max_depth"] == 32
    assert_serving(gateway)


def test_a_result_at_the_depth_limit_is_delivered(gateway: RunningGateway) -> None:
    source = "d = 1\nfor _ in range(32):\n    d = {'k': d}\nd"
    resp = execute(gateway, pb.ExecuteRequest(request_id="deep-ok", code_run=pb.CodeRun(
        source=source)))
    value, depth = resp.result, 0
    while value.WhichOneof("kind") == "struct_value":
        value, depth = value.struct_value.fields["k"], depth + 1
    assert (depth, value.number_value) == (32, 1)
    events = list(gateway.stub.ExecuteStream(pb.ExecuteRequest(
        request_id="deep-ok-stream", code_run=pb.CodeRun(source=source)),
        metadata=md("dev-agent"), timeout=DEADLINE))
    assert events[-1].WhichOneof("event") == "response"


def test_lone_surrogates_in_results_become_replacement_characters(
        gateway: RunningGateway) -> None:
    resp = execute(gateway, pb.ExecuteRequest(request_id="surrogate-out", code_run=pb.CodeRun(
        source="{'\\ud800key': ['a\\udc00b', '\\U0001F600']}")))
    value = json_format.MessageToDict(resp.result)
    assert value == {"\ufffdkey": ["a\ufffdb", "\U0001F600"]}
    assert_serving(gateway)


def _outcome(**kw: Any) -> Outcome:
    return Outcome(decision=Decision(route="code"), **kw)


def test_outcomes_are_cleaned_whatever_the_sandbox_sends() -> None:
    """The servicer does not trust the sandbox (or a backend) to send JSON-safe values."""
    resp = outcome_pb("r", _outcome(result={"a": "x\ud800"}, stdout="out\udfff\n",
                                    stderr="\ud83d err", error={"code": "user_code_error",
                                                                 "message": "bad \udc80"}))
    assert resp.stdout == "out\ufffd\n" and resp.stderr == "\ufffd err"
    assert resp.result.struct_value["a"] == "x\ufffd"
    assert resp.error.message == "bad \ufffd"
    for bad, path in ((math.nan, "result"), ({"rows": [1, math.inf]}, "result.rows[1]")):
        with pytest.raises(ResultInvalid) as info:
            outcome_pb("r", _outcome(result=bad))
        assert info.value.field == path
    event = _event_pb(SandboxEvent(kind="stdout", data={"line": "half \ud800"}))
    assert event.stdout_line == "half \ufffd"


# -- MCP: the same inputs as JSON ------------------------------------------------------------


@pytest.fixture(scope="module")
def mcp_url(gateway: RunningGateway) -> Iterator[str]:
    server = gateway.server
    assert server is not None

    async def start() -> McpHandle:
        return await start_mcp_server(create_mcp_app(server.pipeline, server.authenticator),
                                      "127.0.0.1:0")

    handle: McpHandle = gateway.call(start())
    try:
        yield handle.url
    finally:
        gateway.call(handle.stop(grace=2.0))


def mcp_call(url: str, name: str, arguments_json: str,
             token: str = "dev-agent") -> dict[str, Any]:
    """A raw JSON-RPC tools/call, so the body can carry what JSON libraries will not write
    (NaN, Infinity). Returns the tool's structured payload."""
    head = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":'
    body = head + json.dumps(name) + ',"arguments":' + arguments_json + "}}"
    resp = httpx.post(url, content=body.encode(), timeout=DEADLINE, headers={
        "authorization": f"Bearer {token}", "content-type": "application/json",
        "accept": "application/json, text/event-stream"})
    assert resp.status_code == 200, resp.text[:500]
    if resp.headers["content-type"].startswith("text/event-stream"):  # the response is an event
        data = [ln[5:] for ln in resp.text.splitlines() if ln.startswith("data:")]
        result = json.loads(data[-1])["result"]
    else:
        result = resp.json()["result"]
    payload: dict[str, Any] = result["structuredContent"]
    assert json.loads(result["content"][0]["text"]) == payload
    return payload


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_mcp_non_finite_inputs_are_invalid_request(mcp_url: str, literal: str) -> None:
    payload = mcp_call(mcp_url, "execute_code", '{"code":"inputs","inputs":{"x":' + literal + "}}")
    assert payload["ok"] is False
    assert (payload["error"]["code"], payload["error"]["field"]) == ("invalid_request",
                                                                     "inputs.x"), payload
    args = json.dumps(TRANSFER).replace("1.0", literal)
    payload = mcp_call(mcp_url, "ledger__create_transfer", args, "dev-finance")
    assert (payload["error"]["code"], payload["error"]["field"]) == ("invalid_request",
                                                                     "arguments.amount"), payload


def test_mcp_too_deep_inputs_are_invalid_request(mcp_url: str) -> None:
    deep = "[" * 60 + "1" + "]" * 60
    payload = mcp_call(mcp_url, "execute_code", '{"code":"1","inputs":{"x":' + deep + "}}")
    assert payload["error"]["code"] == "invalid_request", payload
    assert payload["error"]["field"].startswith("inputs.x["), payload


@pytest.mark.parametrize("source", [DEEP_RESULT, DEEP_LIST_RESULT], ids=["objects", "arrays"])
def test_mcp_too_deep_result_is_result_invalid(mcp_url: str, source: str) -> None:
    payload = mcp_call(mcp_url, "execute_code", json.dumps({"code": source}))
    assert payload["ok"] is False and payload["error"]["code"] == "result_invalid", payload


def test_mcp_lone_surrogates_in_results_become_replacement_characters(mcp_url: str) -> None:
    payload = mcp_call(mcp_url, "execute_code", json.dumps({"code": "'a\\udc00b'"}))
    assert payload["ok"] is True and payload["result"] == "a\ufffdb", payload


def test_mcp_huge_values_get_short_errors(mcp_url: str) -> None:
    payload = mcp_call(mcp_url, "describe_operation", json.dumps({"name": "x" * 1_000_000}))
    # The envelope's name bound, before the schema: the same code and bound as gRPC's.
    assert (payload["error"]["code"], payload["error"]["field"]) == (
        "invalid_request", "arguments.name"), payload
    assert len(json.dumps(payload)) < 4096
    payload = mcp_call(mcp_url, "execute_code", json.dumps(
        {"code": "1", "session_id": "bad id;"}))
    assert (payload["error"]["code"], payload["error"]["field"]) == (
        "invalid_request", "arguments.session_id"), payload
