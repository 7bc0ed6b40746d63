"""Findings of the fourth security review round (front doors, policy, tools, approvals, audit),
against the real in-process gateway over real gRPC and the real demo backends."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import structlog
from gateway_support import error_of, md, tool_request
from google.protobuf import json_format
from waiting import scaled

import gateway.audit.logs
from gateway._proto.switchboard.v1 import approvals_pb2 as apb
from gateway._proto.switchboard.v1 import approvals_pb2_grpc as apb_grpc
from gateway.audit.logs import add_trace_context, scrub_event

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
