"""Findings of the second 2026-12-01 security review round, against the real server.

Each ``xfail(strict=True)`` test reproduces a confirmed break of a documented promise; it fails
today and flips to XPASS (a failure under ``strict``) once the root cause is fixed, so the
marker must then be removed. The plain tests pin down attacks that held where no other test
covers the promise.
"""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from gateway_support import (
    code_request,
    error_of,
    md,
    serve_demo_gateway,
    serve_with_second_tenant,
    tool_request,
)
from google.protobuf import json_format
from waiting import scaled, wait_until_sync

from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(900)

POLICIES = Path(__file__).resolve().parents[2] / "policies"




# -- finding 1: the embedded policy engine has no evaluation bound ---------------------------

# Only list_accounts takes the slow branch, so the load probe (and every other operation)
# passes; the branch never holds, so it would decide "allow" -- after ~10^10 steps.
SLOW_RULE = """

deny contains "never" if {
    requested == "ledger.list_accounts"
    some x in numbers.range(1, 100000)
    some y in numbers.range(1, 100000)
    x * y == -1
}
"""


@pytest.fixture
def slow_policy_gateway(backends: dict[str, Any], tmp_path: Path,
                        ) -> Iterator[pb_grpc.GatewayStub]:
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    rego = policies / "switchboard" / "routing.rego"
    rego.write_text(rego.read_text() + SLOW_RULE)
    proc = serve_demo_gateway(backends, tmp_path,
                              policy={"path": str(policies), "reload": False})
    channel = grpc.insecure_channel(proc.url.removeprefix("grpc://"))
    try:
        yield pb_grpc.GatewayStub(channel)
    finally:
        channel.close()
        proc.stop()


def test_a_slow_policy_decision_fails_closed_and_others_keep_being_served(
        slow_policy_gateway: pb_grpc.GatewayStub) -> None:
    stub = slow_policy_gateway
    # the gateway serves before the slow call
    stub.Execute(tool_request("ledger.get_balance", {"account": "A1"}),
                 metadata=md("dev-agent"), timeout=scaled(120))
    slow: dict[str, Any] = {}

    def call_slow() -> None:
        try:
            slow["resp"] = stub.Execute(tool_request("ledger.list_accounts", {}),
                                        metadata=md("dev-agent"), timeout=scaled(90))
        except grpc.RpcError as err:
            slow["err"] = err

    t = threading.Thread(target=call_slow, daemon=True)
    t.start()
    # another principal's unrelated call must still be decided while the slow one runs
    try:
        other = stub.Execute(tool_request("ledger.get_balance", {"account": "A1"}),
                             metadata=md("dev-finance"), timeout=scaled(60))
        other_ok = other is not None
    except grpc.RpcError as err:
        pytest.fail(f"an unrelated call was stalled by a slow policy decision: {err.code()}")
    assert other_ok
    t.join(scaled(200))
    # and the slow decision itself failed closed (a policy problem), not an allow or a hang
    assert "err" in slow, "the slow decision was not bounded"
    assert error_of(slow["err"])["code"] in {"policy_denied", "policy_unavailable",
                                             "policy_error", "policy_timeout"}


# -- finding 2: a host call racing the end of its run is cancelled mid-flight --------------

# Sandboxed code reaches the runner's JS ``hostCall`` (docs/sandbox.md: nothing inside an
# isolate is trusted) and fires a host call without waiting for it, then returns at once.
FIRE_AND_FORGET = r"""
import sys, json
f = sys._getframe()
while f and not (f.f_code.co_name == "run" and "host" in f.f_locals):
    f = f.f_back
f.f_locals["host"]("workspace.send_email",
                   json.dumps({"to": ["race@example.com"], "subject": SUBJECT, "body": "b"}))
result = "returned"
"""


def _audit(gw: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in gw.settings.audit.file.read_text().splitlines()
            if line.strip()]


def _outbox_subjects(stub: pb_grpc.GatewayStub) -> set[str]:
    resp = stub.Execute(code_request(
        "from sdk import workspace\nresult = workspace.list_outbox()"),
        metadata=md("dev-agent"), timeout=scaled(120))
    assert resp.HasField("result"), json_format.MessageToJson(resp)
    found = json_format.MessageToDict(resp.result)
    text = json.dumps(found)
    return {w for w in text.replace('"', " ").split() if w.startswith("race-")}


def test_an_effect_of_a_host_call_racing_the_end_of_its_run_is_audited_as_applied(
        gateway: Any) -> None:
    stub = gateway.stub
    traces: dict[str, str] = {}
    applied: set[str] = set()
    for _ in range(10):
        subject = f"race-{uuid.uuid4().hex[:10]}"
        resp = stub.Execute(code_request(FIRE_AND_FORGET.replace("SUBJECT", repr(subject))),
                            metadata=md("dev-agent"), timeout=scaled(120))
        traces[subject] = resp.trace_id
        applied = _outbox_subjects(stub) & set(traces)
        if applied:
            break
    assert applied, "no fire-and-forget send_email landed in 10 runs"

    def records_of(trace: str) -> list[dict[str, Any]]:
        return [r for r in _audit(gateway) if r.get("trace_id") == trace
                and str(r.get("name")).split(" ")[0] in {"host_call", "backend.call"}]

    for subject in applied:
        trace = traces[subject]
        wait_until_sync(lambda t=trace: len(records_of(t)) >= 2, 60, what="the call's records")
        outcomes = {r["name"].split(" ")[0]: r.get("attributes", {}).get("switchboard.outcome")
                    for r in records_of(trace)}
        # the email was queued: the trail must not say the call was cancelled / has no outcome
        assert outcomes.get("backend.call") not in {None, "cancelled"}, (subject, outcomes)
        assert outcomes.get("host_call") not in {None, "cancelled"}, (subject, outcomes)


# -- attacks that held -------------------------------------------------------------------------


def test_a_retry_with_changed_arguments_under_the_same_request_id_is_a_conflict(
        gateway: Any) -> None:
    """Exactly-once: a retry under request_id R with another amount (or another tool) is
    ``idempotency_conflict`` on field ``request_id``; it neither replays R's outcome as if it
    were its own nor applies a second transfer. (A read such as list_accounts under R is not a
    recorded effect and is simply served.) Float spellings of the same integer (3 vs 3.0,
    which gRPC's Struct cannot tell apart anyway) are the same request."""
    stub = gateway.stub
    rid = f"changed-{uuid.uuid4().hex}"
    args = {"from_account": "A1", "to_account": "A2", "amount": 3, "currency": "USD",
            "memo": rid}
    first = stub.Execute(tool_request("ledger.create_transfer", args, rid),
                         metadata=md("dev-finance"), timeout=scaled(120))
    assert not first.replayed
    same = stub.Execute(tool_request("ledger.create_transfer", {**args, "amount": 3.0}, rid),
                        metadata=md("dev-finance"), timeout=scaled(120))
    assert same.replayed
    for changed in ({**args, "amount": 3000}, {**args, "to_account": "A3"},
                    {**args, "memo": rid + " "}):
        with pytest.raises(grpc.RpcError) as info:
            stub.Execute(tool_request("ledger.create_transfer", changed, rid),
                         metadata=md("dev-finance"), timeout=scaled(120))
        err = error_of(info.value)
        assert err["code"] == "idempotency_conflict", err
        assert err.get("field") == "request_id", err


def test_explain_leaves_an_audit_record_without_masked_values(gateway: Any) -> None:
    """Explain executes nothing but is a call: it is chained into the audit file under the
    trace id the caller is given, with principal and outcome, and the masked account never
    reaches the file."""
    secret = f"ACCT-{uuid.uuid4().hex[:16]}"
    req = tool_request("ledger.create_transfer", {
        "from_account": secret, "to_account": "ACCT-2222333344", "amount": 5,
        "currency": "USD", "memo": "m"})
    _, call = gateway.stub.Explain.with_call(req, metadata=md("dev-agent"), timeout=scaled(60))
    trace = dict(call.trailing_metadata() or ())["switchboard-trace-id"]

    def mine() -> list[dict[str, Any]]:
        return [r for r in _audit(gateway) if r.get("trace_id") == trace
                and r.get("name") == "switchboard.v1.Gateway/Explain"]

    (rec,) = wait_until_sync(mine, 60, what="the Explain record")
    assert rec["attributes"]["switchboard.principal.id"] == "agent-1"
    assert rec["attributes"]["switchboard.outcome"] == "ok"
    assert secret not in gateway.settings.audit.file.read_text()


@pytest.fixture
def two_tenant_gateway(backends: dict[str, Any], tmp_path: Path,
                       ) -> Iterator[pb_grpc.GatewayStub]:
    # the same principal id and roles as dev-finance, in another tenant
    proc = serve_with_second_tenant(backends, tmp_path, POLICIES, {
        "acme-finance": {"id": "finance-1", "tenant": "acme", "roles": ["agent", "finance"]}})
    channel = grpc.insecure_channel(proc.url.removeprefix("grpc://"))
    try:
        yield pb_grpc.GatewayStub(channel)
    finally:
        channel.close()
        proc.stop()


def test_the_same_principal_id_and_request_id_in_two_tenants_never_collide(
        two_tenant_gateway: pb_grpc.GatewayStub) -> None:
    """Idempotency records are scoped to tenant + principal: finance-1 of tenant acme reusing
    demo's finance-1 request_id with the very same arguments gets its own transfer, not a
    replay of the other tenant's recorded outcome (and not a conflict)."""
    stub = two_tenant_gateway
    rid = f"tenants-{uuid.uuid4().hex}"
    args = {"from_account": "A1", "to_account": "A2", "amount": 4, "currency": "USD",
            "memo": rid}
    demo = stub.Execute(tool_request("ledger.create_transfer", args, rid),
                        metadata=md("dev-finance"), timeout=scaled(120))
    assert not demo.replayed
    acme = stub.Execute(tool_request("ledger.create_transfer", args, rid),
                        metadata=md("acme-finance"), timeout=scaled(120))
    assert not acme.replayed
    assert json_format.MessageToDict(acme.result) != json_format.MessageToDict(demo.result)
    again = stub.Execute(tool_request("ledger.create_transfer", args, rid),
                         metadata=md("acme-finance"), timeout=scaled(120))
    assert again.replayed
    assert json_format.MessageToDict(again.result) == json_format.MessageToDict(acme.result)
