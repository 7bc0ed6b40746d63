"""Findings of the fourth security review round (front doors, policy, tools, approvals, audit),
against the real in-process gateway over real gRPC/MCP and the real demo backends.

Each test failed before its fix: a masked value quoted elsewhere in the arguments reached the
decision log and the approval listing, and one spelt as a field name reached the error's
`field`; a decision with a misspelt `require_approval` (or an unknown obligation, or a limit
past uint32, or a mask path that masks nothing) was acted on instead of failing closed; MCP made
up the request id of a compliance tool call; an unknown protobuf field was silently dropped."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import policy_support as ps
import pytest
import structlog
from gateway_support import (
    RunningGateway,
    code_request,
    error_of,
    gateway_settings,
    mcp_endpoint,
    md,
    tool_request,
)
from google.protobuf import json_format
from waiting import scaled

import gateway.audit.logs
from gateway._proto.switchboard.v1 import approvals_pb2 as apb
from gateway._proto.switchboard.v1 import approvals_pb2_grpc as apb_grpc
from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway.audit.logs import add_trace_context, scrub_event
from gateway.errors import PolicyError
from gateway.frontdoor import MCP
from gateway.mcp_server import REQUEST_ID_META_KEY
from gateway.policy import PolicySettings
from gateway.policy.base import parse_decision

pytestmark = pytest.mark.timeout(900)


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """The gateway's log events as rendered (its processors), `policy.decision` included
    (debug by default: an operator may turn it on)."""
    monkeypatch.setattr(gateway.audit.logs, "_decision_level", logging.INFO)
    with structlog.testing.capture_logs(processors=[
            structlog.contextvars.merge_contextvars, add_trace_context, scrub_event]) as events:
        yield events


def _held(gateway: Any, args: dict[str, Any], rid: str) -> dict[str, Any]:
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.Execute(tool_request("ledger.create_transfer", args, rid),
                             metadata=md("dev-finance"), timeout=scaled(120))
    err = error_of(info.value)
    assert err["code"] == "approval_required", err
    return err


def test_a_masked_account_quoted_elsewhere_in_the_arguments_stays_out_of_the_approval(
        gateway: Any, logs: list[dict[str, Any]]) -> None:
    """from_account is masked for payments; the same value in the memo, and as a key of a
    nested object, must not show in the approval the approver lists or gets."""
    secret = f"ACCT-{uuid.uuid4().hex[:12]}"
    rid = f"r4-{uuid.uuid4().hex}"
    args = {"from_account": secret, "to_account": "A2", "amount": 1500, "currency": "USD",
            "memo": f"move from {secret} today"}
    err = _held(gateway, args, rid)
    assert secret not in json.dumps(err)
    decided = [e for e in logs if e["event"] == "policy.decision"
               and e.get("request_id") == rid]
    assert decided, "no policy.decision line for the call"
    text = json.dumps(decided, default=str)
    assert secret not in text, f"the decision log quotes the masked account: {text}"
    approvals = apb_grpc.ApprovalsServiceStub(gateway.channel)  # type: ignore[no-untyped-call]
    got = approvals.GetApproval(apb.GetApprovalRequest(approval_id=err["details"]["approval_id"]),
                                metadata=md("dev-approver"), timeout=scaled(60))
    shown = json_format.MessageToJson(got)
    assert secret not in shown, shown
    listed = approvals.ListApprovals(apb.ListApprovalsRequest(state="all"),
                                     metadata=md("dev-approver"), timeout=scaled(60))
    assert secret not in json_format.MessageToJson(listed)


def test_a_masked_value_spelled_as_a_key_stays_out_of_the_decision_log(
        gateway: Any, logs: list[dict[str, Any]]) -> None:
    """`iban` is masked by path (always); the same value as a key of another argument object
    is a masked value too: the decision log (an object, not text) must not carry it."""
    secret = f"DE{uuid.uuid4().int % 10**20:020d}"
    rid = f"r4-{uuid.uuid4().hex}"
    args = {"account": "A1", "iban": secret, "lookup": {secret: "balance"}}
    try:  # whatever the backend makes of the extra arguments
        gateway.stub.Execute(tool_request("ledger.get_balance", args, rid),
                             metadata=md("dev-agent"), timeout=scaled(120))
    except grpc.RpcError as err:
        assert secret not in json.dumps(error_of(err))
    decided = [e for e in logs if e["event"] == "policy.decision"
               and e.get("request_id") == rid]
    assert decided, "no policy.decision line for the call"
    text = json.dumps(logs, default=str)
    assert secret not in text, f"a log line carries the masked value as a key: {text}"


# -- a decision the gateway does not fully understand fails closed ----------------------------

def _gateway_with_policy(backends: dict[str, Any], state: Path,
                         edit: Callable[[Path], None]) -> RunningGateway:
    policies = ps.copy_policies(state)
    edit(policies / "switchboard")
    return RunningGateway(gateway_settings(
        state, backends, policy=PolicySettings(path=policies, reload=False)))


def _misspell_require_approval(folder: Path) -> None:
    rego = folder / "routing.rego"
    text = rego.read_text()
    assert '"require_approval": require_approval,' in text
    rego.write_text(text.replace('"require_approval": require_approval,',
                                 '"require_aproval": require_approval,'))


def _huge_approver_timeout(folder: Path) -> None:
    data_file = folder / "data.json"
    data = json.loads(data_file.read_text())
    data["limits"]["roles"]["approver"] = {"timeout_ms": 2**40}
    data_file.write_text(json.dumps(data))


def _serving(gw: RunningGateway) -> Iterator[RunningGateway]:
    """A module fixture's body: the gateway until the module is done, then stopped."""
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def typo_gateway(backends: dict[str, Any],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """The shipped policy with the decision's `require_approval` key misspelt."""
    yield from _serving(_gateway_with_policy(backends, tmp_path_factory.mktemp("typo"),
                                             _misspell_require_approval))


@pytest.fixture(scope="module")
def huge_limit_gateway(backends: dict[str, Any],
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """The shipped policy giving role `approver` a 2**40 ms timeout (the wire has uint32)."""
    yield from _serving(_gateway_with_policy(backends, tmp_path_factory.mktemp("huge"),
                                             _huge_approver_timeout))


def _ledger_memos(backends: dict[str, Any], memo: str) -> int:
    with httpx.Client(base_url=backends["ledger"].url, timeout=scaled(30)) as client:
        answer = client.get("/transfers").json()
    items = answer.get("items", answer) if isinstance(answer, dict) else answer
    return sum(1 for t in items if isinstance(t, dict) and t.get("memo") == memo)


def test_a_misspelt_require_approval_fails_closed_instead_of_dropping_the_approval(
        typo_gateway: RunningGateway, backends: dict[str, Any]) -> None:
    """A transfer above the approval threshold under a decision whose `require_approval` key
    is misspelt: the gateway must not read that as "no approval needed" and move the money."""
    memo = f"r4-typo-{uuid.uuid4().hex[:8]}"
    args = {"from_account": "A1", "to_account": "A2", "amount": 1500, "currency": "USD",
            "memo": memo}
    with pytest.raises(grpc.RpcError) as info:
        typo_gateway.stub.Execute(
            tool_request("ledger.create_transfer", args, f"r4-{uuid.uuid4().hex}"),
            metadata=md("dev-finance"), timeout=scaled(120))
    err = error_of(info.value)
    assert err["code"] == "policy_error", err
    assert "require_aproval" in err["message"]
    assert _ledger_memos(backends, memo) == 0


def test_a_limit_past_the_wire_type_fails_closed_not_internal(
        huge_limit_gateway: RunningGateway) -> None:
    """Explain for a principal whose decision carries a 2**40 ms timeout: a policy_error
    deny, not an internal error while rendering the decision."""
    d = huge_limit_gateway.stub.Explain(code_request("print(1)"), metadata=md("dev-approver"),
                                        timeout=scaled(120))
    assert d.route == "deny"
    assert any("limits.timeout_ms" in r for r in d.reasons), list(d.reasons)


@pytest.mark.parametrize(("decision", "field"), [
    ({"route": "tool", "obligations": ["require_approval"]}, "require_approval"),
    ({"route": "tool", "require_aproval": {"roles": ["approver"]}}, "require_aproval"),
    ({"route": "tool", "Route": "deny"}, "Route"),
    ({"route": "tool", "require_approval": {"roles": ["approver"], "expire_s": 5}},
     "require_approval.expire_s"),
    ({"route": "code", "limits": {"timout_ms": 1}}, "limits.timout_ms"),
    ({"route": "code", "limits": {"max_host_calls": 2**32}}, "limits.max_host_calls"),
    ({"route": "code", "limits": {"memory_mb": 1e300}}, "limits.memory_mb"),
    ({"route": "tool", "obligations": ["encrypt.at_rest"]}, "obligations"),
    ({"route": "code", "obligations": ["idempotency.required"]}, "obligations"),
])
def test_a_decision_the_gateway_cannot_keep_in_full_is_a_policy_error(
        decision: dict[str, Any], field: str) -> None:
    with pytest.raises(PolicyError) as info:
        parse_decision(decision)
    assert info.value.field == field


@pytest.mark.parametrize("decision", [
    {"route": "tool", "obligations": ["audit.full", "idempotency.required", "schema.strict"],
     "validation": "strict"},
    {"route": "deny", "obligations": ["require_approval"]},
    {"route": "code", "limits": {"timeout_ms": 2**32 - 1}},
])
def test_decisions_the_gateway_keeps_still_parse(decision: dict[str, Any]) -> None:
    assert parse_decision(decision).route == decision["route"]


@pytest.mark.parametrize("path", ["", " ", ".", "action.arguments.x]y", "action.arguments. .x",
                                  "action.arguments..card_number", "action.arguments.x[",
                                  "action.arguments[card_number"])
def test_a_malformed_mask_path_is_a_policy_error(path: str) -> None:
    """"", "." and "x]y" masked nothing at all (the value stayed in clear in the trail): a
    mask the gateway cannot read as the policy meant it fails closed."""
    with pytest.raises(PolicyError) as info:
        parse_decision({"route": "tool", "mask": ["action.arguments.cvv", path]})
    assert info.value.field == "mask"


@pytest.mark.parametrize("path", ["action.arguments.**.card_number", "arguments.lines[1].qty",
                                  "action.arguments.*token", "action.arguments.card number"])
def test_well_formed_mask_paths_still_parse(path: str) -> None:
    assert parse_decision({"route": "tool", "mask": [path]}).mask == (path,)


# -- the two doors answer a compliance tool call without a request id alike -------------------

@pytest.fixture(scope="module")
def mcp_url(gateway: Any) -> Iterator[str]:
    yield from mcp_endpoint(gateway)


def _mcp_call(url: str, token: str, tool: str, arguments: dict[str, Any],
              request_id: str | None = None) -> dict[str, Any]:
    params: dict[str, Any] = {"name": tool, "arguments": arguments}
    if request_id is not None:
        params["_meta"] = {REQUEST_ID_META_KEY: request_id}
    resp = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                                 "params": params},
                      headers={"Accept": "application/json", "Authorization": f"Bearer {token}"},
                      timeout=scaled(120))
    assert resp.status_code == 200, resp.text
    result: dict[str, Any] = resp.json()["result"]
    return result


def test_a_compliance_tool_call_without_a_request_id_is_refused_on_both_doors(
        gateway: Any, mcp_url: str, backends: dict[str, Any]) -> None:
    """Its decision carries `idempotency.required`; gRPC refuses the call without a request id,
    MCP made one up, so a client resending the call after a lost reply moved the money twice.
    Both doors now refuse it (each naming its own field) and nothing reaches the ledger."""
    memo = f"r4-noid-{uuid.uuid4().hex[:8]}"
    args = {"from_account": "A1", "to_account": "A2", "amount": 5, "currency": "USD",
            "memo": memo}
    req = tool_request("ledger.create_transfer", args)
    req.request_id = ""
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.Execute(req, metadata=md("dev-finance"), timeout=scaled(120))
    assert error_of(info.value)["code"] == "invalid_request"
    for _ in range(2):  # the model resends the same call
        result = _mcp_call(mcp_url, "dev-finance", "ledger__create_transfer", args)
        assert result.get("isError"), result
        err = result["structuredContent"]["error"]
        assert (err["code"], err["field"]) == ("invalid_request", MCP.request_id), err
    assert _ledger_memos(backends, memo) == 0
    # With one, the call runs once however often it is sent.
    rid = f"r4-{uuid.uuid4().hex}"
    for _ in range(2):
        ok = _mcp_call(mcp_url, "dev-finance", "ledger__create_transfer", args, rid)
        assert not ok.get("isError"), ok
    assert _ledger_memos(backends, memo) == 1


def test_an_ordinary_tool_call_over_mcp_still_needs_no_request_id(mcp_url: str) -> None:
    result = _mcp_call(mcp_url, "dev-agent", "ledger__get_balance", {"account": "A1"})
    assert not result.get("isError"), result


def test_a_masked_value_used_as_an_unknown_field_name_is_not_echoed(gateway: Any) -> None:
    """A strict compliance tool: an undeclared field whose *name* is the masked account. The
    schema error names the field — the client's trailer (`field`, message, details) and the
    audit file must not carry the masked value."""
    secret = f"ACCT-{uuid.uuid4().hex[:12]}"
    args = {"from_account": secret, "to_account": "A2", "amount": 5, "currency": "USD",
            secret: 1}
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.Execute(tool_request("ledger.create_transfer", args),
                             metadata=md("dev-finance"), timeout=scaled(120))
    err = error_of(info.value)
    assert err["code"] == "schema_invalid", err
    client = json.dumps([err, info.value.details()])  # type: ignore[attr-defined]
    assert secret not in client, client
    assert err["field"].startswith("arguments."), err
    gateway.server.telemetry.force_flush()
    assert secret not in gateway.settings.audit.file.read_text()


# -- a field the server does not know is refused, not dropped --------------------------------

def _with_unknown_field(message_bytes: bytes, number: int = 99) -> bytes:
    """``message_bytes`` plus a varint field ``number`` = 1 (what a newer client's extra
    flag, e.g. a dry run, looks like on the wire to this server)."""
    key = (number << 3) | 0
    varint = bytearray()
    while True:
        byte, key = key & 0x7F, key >> 7
        varint.append(byte | (0x80 if key else 0))
        if not key:
            break
    return message_bytes + bytes(varint) + b"\x01"


def test_an_execute_request_with_an_unknown_field_runs_nothing(
        gateway: Any, backends: dict[str, Any]) -> None:
    """An unknown field in ExecuteRequest or inside its tool_call is invalid_request (field
    naming where) and the transfer does not happen; the same request without it runs."""
    memo = f"r4-unknown-{uuid.uuid4().hex[:8]}"
    args = {"from_account": "A1", "to_account": "A2", "amount": 5, "currency": "USD",
            "memo": memo}
    req = tool_request("ledger.create_transfer", args, f"r4-{uuid.uuid4().hex}")
    call = gateway.channel.unary_unary("/switchboard.v1.Gateway/Execute",
                                       request_serializer=None, response_deserializer=None)
    inner = _with_unknown_field(req.tool_call.SerializeToString())
    nested = pb.ExecuteRequest(request_id=req.request_id).SerializeToString()
    nested += b"\x12" + _varint(len(inner)) + inner  # field 2 (tool_call), length-delimited
    for raw, field in ((_with_unknown_field(req.SerializeToString()), ""),
                       (nested, "tool_call")):
        with pytest.raises(grpc.RpcError) as info:
            call(raw, metadata=md("dev-finance"), timeout=scaled(120))
        err = error_of(info.value)
        assert (err["code"], err.get("field", "")) == ("invalid_request", field), err
    assert _ledger_memos(backends, memo) == 0
    gateway.stub.Execute(req, metadata=md("dev-finance"), timeout=scaled(120))
    assert _ledger_memos(backends, memo) == 1


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
