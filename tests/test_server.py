"""The gateway end to end: real server on port 0, real demo backends, real gRPC channel."""

from __future__ import annotations

import uuid

import grpc
import httpx
import pytest
from gateway_support import RunningGateway, code_request, error_of, md, tool_request
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway._proto.switchboard.v1 import gateway_pb2 as pb

TRANSFER = {"from_account": "A1", "to_account": "A2", "amount": 1.25, "currency": "USD"}


def ledger_rows(backends: dict[str, object]) -> int:
    """Transfers in the ledger, asked of the ledger itself (not through the gateway)."""
    url = backends["ledger"].url  # type: ignore[attr-defined]
    return len(httpx.get(f"{url}/transfers", params={"limit": 500}, timeout=10).json())


def test_health_and_reflection(gateway: RunningGateway) -> None:
    health = health_pb2_grpc.HealthStub(gateway.channel)
    for service in ("", "switchboard.v1.Gateway"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(gateway.channel)
    responses = list(refl.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    names = {s.name for s in responses[0].list_services_response.service}
    assert "switchboard.v1.Gateway" in names


def test_tool_call_transfers_money(gateway: RunningGateway, backends: dict[str, object]) -> None:
    before = ledger_rows(backends)
    resp = gateway.stub.Execute(tool_request("ledger.create_transfer", TRANSFER),
                                metadata=md("dev-finance"), timeout=30)
    assert resp.decision.route == "tool"
    assert resp.decision.policy_revision
    result = json_format.MessageToDict(resp.result)
    assert result["from_account"] == "A1" and result["to_account"] == "A2"
    assert len(resp.trace_id) == 32
    assert ledger_rows(backends) == before + 1


def test_tool_retry_with_same_request_id_has_one_effect(gateway: RunningGateway,
                                                        backends: dict[str, object]) -> None:
    before = ledger_rows(backends)
    req = tool_request("ledger.create_transfer", TRANSFER, request_id=f"retry-{uuid.uuid4()}")
    first = gateway.stub.Execute(req, metadata=md("dev-finance"), timeout=30)
    second = gateway.stub.Execute(req, metadata=md("dev-finance"), timeout=30)
    assert not first.replayed and second.replayed
    assert json_format.MessageToDict(first.result) == json_format.MessageToDict(second.result)
    assert ledger_rows(backends) == before + 1


def test_code_run_composes_backend_calls(gateway: RunningGateway) -> None:
    src = (
        "from sdk import ledger\n"
        "bal = ledger.get_balance(account='A3')\n"
        "print('checked', bal['account'])\n"
        "{'account': bal['account'], 'positive': bal['balance'] > 0}\n"
    )
    resp = gateway.stub.Execute(code_request(src), metadata=md("dev-agent"), timeout=60)
    assert resp.decision.route == "code", resp
    assert not resp.error.code, resp.error
    assert json_format.MessageToDict(resp.result) == {"account": "A3", "positive": True}
    assert "checked A3" in resp.stdout
    assert resp.host_calls == 1


def test_code_errors_come_back_as_data(gateway: RunningGateway) -> None:
    resp = gateway.stub.Execute(code_request("1/0"), metadata=md("dev-agent"), timeout=60)
    assert resp.error.code == "user_code_error"
    assert "ZeroDivisionError" in resp.error.message + str(resp.error.details)


def test_compliance_op_from_code_is_refused_with_reason(gateway: RunningGateway,
                                                        backends: dict[str, object]) -> None:
    before = ledger_rows(backends)
    src = (
        "from sdk import ledger\n"
        "try:\n"
        "    ledger.create_transfer(from_account='A1', to_account='A2', amount=5, currency='USD')\n"
        "    out = 'moved'\n"
        "except Exception as exc:\n"
        "    out = str(exc)\n"
        "out\n"
    )
    resp = gateway.stub.Execute(code_request(src), metadata=md("dev-finance"), timeout=60)
    assert resp.decision.route == "code"
    message = json_format.MessageToDict(resp.result)
    assert message != "moved"
    assert "tool" in str(message)
    assert ledger_rows(backends) == before


def test_denied_tool_call_has_reasons(gateway: RunningGateway, backends: dict[str, object]) -> None:
    before = ledger_rows(backends)
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.Execute(tool_request("ledger.create_transfer", TRANSFER),
                             metadata=md("dev-agent"), timeout=30)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    err = error_of(info.value)
    assert err["code"] == "policy_denied"
    assert err["details"]["reasons"]
    assert len(err["trace_id"]) == 32
    assert ledger_rows(backends) == before


def test_unauthenticated(gateway: RunningGateway) -> None:
    for metadata in ((), md("not-a-token"), (("authorization", "Basic abc"),)):
        with pytest.raises(grpc.RpcError) as info:
            gateway.stub.Execute(tool_request("ledger.list_accounts", {}), metadata=metadata,
                                 timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_of(info.value)["code"] == "unauthenticated"


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.ExecuteRequest(request_id="r1"), "action"),
        (pb.ExecuteRequest(tool_call=pb.ToolCall(name="ledger.list_accounts")), "request_id"),
        (pb.ExecuteRequest(request_id="bad id with spaces",
                           tool_call=pb.ToolCall(name="ledger.list_accounts")), "request_id"),
        (pb.ExecuteRequest(request_id="r2", code_run=pb.CodeRun(source="  ")), "code_run.source"),
        (pb.ExecuteRequest(request_id="r3", code_run=pb.CodeRun(source="1", session_id="s" * 129)),
         "code_run.session_id"),
    ],
)
def test_malformed_requests(gateway: RunningGateway, request_: pb.ExecuteRequest,
                            field: str) -> None:
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.Execute(request_, metadata=md("dev-agent"), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = error_of(info.value)
    assert err["code"] == "invalid_request" and err["field"] == field


def test_schema_invalid_names_the_field(gateway: RunningGateway,
                                        backends: dict[str, object]) -> None:
    before = ledger_rows(backends)
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.Execute(tool_request("ledger.create_transfer", {**TRANSFER, "amount": -5}),
                             metadata=md("dev-finance"), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = error_of(info.value)
    assert err["code"] == "schema_invalid"
    assert err["field"] == "arguments.amount"
    assert "arguments.amount" in err["message"]
    assert ledger_rows(backends) == before


def test_unknown_operation(gateway: RunningGateway) -> None:
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.Execute(tool_request("ledger.print_money", {}), metadata=md("dev-finance"),
                             timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_of(info.value)["code"] == "unknown_operation"


def test_explain_does_not_execute(gateway: RunningGateway, backends: dict[str, object]) -> None:
    before = ledger_rows(backends)
    decision = gateway.stub.Explain(tool_request("ledger.create_transfer", TRANSFER),
                                    metadata=md("dev-agent"), timeout=10)
    assert decision.route == "deny" and decision.reasons
    no_key = tool_request("ledger.create_transfer", TRANSFER)
    no_key.request_id = ""  # Explain executes nothing: no idempotency key needed
    allowed = gateway.stub.Explain(no_key, metadata=md("dev-finance"), timeout=10)
    assert allowed.route == "tool"
    assert ledger_rows(backends) == before


def test_manifest_and_search(gateway: RunningGateway) -> None:
    manifest = gateway.stub.GetManifest(pb.GetManifestRequest(format="openai"),
                                        metadata=md("dev-finance"), timeout=10)
    names = {t.name for t in manifest.tools}
    assert {"search_operations", "describe_operation", "execute_code"} <= names
    assert any(t.kind == "dedicated" and "create_transfer" in t.name for t in manifest.tools)
    assert len(manifest.formatted) == len(manifest.tools)
    agent = gateway.stub.GetManifest(pb.GetManifestRequest(), metadata=md("dev-agent"), timeout=10)
    assert not any(t.kind == "dedicated" for t in agent.tools)
    hits = gateway.stub.SearchOperations(pb.SearchOperationsRequest(query="send an email"),
                                         metadata=md("dev-agent"), timeout=10)
    assert hits.operations[0].name == "workspace.send_email"
    desc = gateway.stub.DescribeOperation(pb.DescribeOperationRequest(name="workspace.send_email"),
                                          metadata=md("dev-agent"), timeout=10)
    assert desc.python_signature.startswith("send_email(")
    # Plain operations show route "code" (callable from execute_code); only the dedicated
    # tools the policy advertises show "tool".
    assert desc.route == "code"
    assert desc.view.struct_value.fields["name"].string_value == "workspace.send_email"
    assert desc.page == desc.pages == 1
    # A named subtree, and a path naming nothing: invalid_request with the field.
    to = gateway.stub.DescribeOperation(
        pb.DescribeOperationRequest(name="workspace.send_email", path="input_schema.properties.to"),
        metadata=md("dev-agent"), timeout=10)
    assert to.view.struct_value.fields["at"].string_value == "input_schema.properties.to"
    assert to.view.struct_value.fields["value"].struct_value.fields["type"].string_value == "array"
    with pytest.raises(grpc.RpcError) as err:
        gateway.stub.DescribeOperation(
            pb.DescribeOperationRequest(name="workspace.send_email", path="input_schema.nope"),
            metadata=md("dev-agent"), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_of(err.value)["field"] == "path"
    finance = gateway.stub.SearchOperations(
        pb.SearchOperationsRequest(query="transfer money between accounts"),
        metadata=md("dev-finance"), timeout=10)
    assert finance.operations[0].name == "ledger.create_transfer"
    assert finance.operations[0].route == "tool"
    agent_hits = gateway.stub.SearchOperations(
        pb.SearchOperationsRequest(query="transfer money between accounts"),
        metadata=md("dev-agent"), timeout=10)
    assert "ledger.create_transfer" not in {o.name for o in agent_hits.operations}


def test_sdk_describe_reads_a_path_from_code(gateway: RunningGateway) -> None:
    src = ("import sdk\n"
           "part = sdk.describe('workspace.send_email', path='input_schema.properties.to')\n"
           "try:\n    sdk.describe('workspace.send_email', path='nope')\n"
           "except sdk.SdkError as e:\n    err = [e.code, e.message]\n"
           "from sdk import workspace\nhelp(workspace.send_email)\n"
           "[part['at'], part['value']['type'], err]")
    resp = gateway.stub.Execute(code_request(src), metadata=md("dev-agent"), timeout=60)
    result = json_format.MessageToDict(resp.result)
    assert result[:2] == ["input_schema.properties.to", "array"], resp
    assert result[2][0] == "invalid_request" and "nothing at 'nope'" in result[2][1]
    assert "Help on sdk.workspace.send_email" in resp.stdout and "send_email(to: " in resp.stdout


def test_execute_stream_yields_lines_then_response(gateway: RunningGateway) -> None:
    src = ("for i in range(3):\n    print('line', i)\n"
           "from sdk import ledger\nledger.list_accounts()\n'ok'")
    events = list(gateway.stub.ExecuteStream(code_request(src), metadata=md("dev-agent"),
                                             timeout=60))
    lines = [e.stdout_line for e in events if e.WhichOneof("event") == "stdout_line"]
    assert [ln.strip() for ln in lines][:3] == ["line 0", "line 1", "line 2"]
    host = [e.host_call for e in events if e.WhichOneof("event") == "host_call"]
    assert [h.operation for h in host] == ["ledger.list_accounts"]
    assert events[-1].WhichOneof("event") == "response"
    assert events[-1].response.result.string_value == "ok"
