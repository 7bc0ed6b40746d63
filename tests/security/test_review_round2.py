"""Findings of the second 2026-12-01 security review round, against the real server.

Each ``xfail(strict=True)`` test reproduces a confirmed break of a documented promise; it fails
today and flips to XPASS (a failure under ``strict``) once the root cause is fixed, so the
marker must then be removed. The plain tests pin down attacks that held where no other test
covers the promise.
"""

from __future__ import annotations

import shutil
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from gateway_support import error_of, md, tool_request
from waiting import scaled

from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc
from gateway.demo_stack import ServiceProcess, spawn_service, write_demo_config

pytestmark = pytest.mark.timeout(900)

POLICIES = Path(__file__).resolve().parents[2] / "policies"


def _serve(backends: dict[str, Any], state: Path, **sections: Any) -> ServiceProcess:
    cfg = write_demo_config(state / "gw.yaml", ledger_url=backends["ledger"].url,
                            workspace_url=backends["workspace"].url, state=state)
    raw = yaml.safe_load(cfg.read_text())
    raw["sandbox"] = {"workers": 1}
    raw.update(sections)
    cfg.write_text(yaml.safe_dump(raw))
    return spawn_service(
        "gateway", [sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg)],
        log_file=state / "gw.log", timeout=scaled(300))


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
    proc = _serve(backends, tmp_path, policy={"path": str(policies), "reload": False})
    channel = grpc.insecure_channel(proc.url.removeprefix("grpc://"))
    try:
        yield pb_grpc.GatewayStub(channel)
    finally:
        channel.close()
        proc.stop()


@pytest.mark.xfail(strict=True, reason="finding 1: embedded policy evaluation is unbounded and "
                   "runs on the serving event loop: one slow decision stalls every caller")
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
