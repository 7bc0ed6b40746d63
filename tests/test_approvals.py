"""Approvals end to end: a real in-process gateway, real demo backends, real gRPC. A transfer
above the policy's threshold is held (nothing reaches the ledger), decided by a second
principal through the Approvals API, and runs exactly once on the agent's retry."""

from __future__ import annotations

import json
import sqlite3
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from gateway_support import RunningGateway, error_of, gateway_settings, md, tool_request

from gateway._proto.switchboard.v1 import approvals_pb2 as apb
from gateway._proto.switchboard.v1 import approvals_pb2_grpc as apb_grpc
from gateway.approvals.store import SQLiteApprovalStore
from gateway.config import IdentitySettings, embedded_defaults
from gateway.models import Principal

BIG = {"from_account": "A1", "to_account": "A2", "amount": 1500.0, "currency": "USD"}
SMALL = {"from_account": "A1", "to_account": "A2", "amount": 2.0, "currency": "USD"}
TOKENS = {
    **embedded_defaults().identity.tokens,
    "dev-approver-2": Principal(id="approver-2", tenant="demo", roles=("approver",)),
    # finance *and* approver: may approve others' requests, never their own
    "dev-finance-approver": Principal(id="fa-1", tenant="demo",
                                      roles=("agent", "finance", "approver")),
    "other-tenant-approver": Principal(id="approver-x", tenant="acme", roles=("approver",)),
}


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("approvals")


@pytest.fixture(scope="module")
def gw(backends: dict[str, Any], state: Path) -> Iterator[RunningGateway]:
    settings = gateway_settings(state, backends, identity=IdentitySettings(tokens=TOKENS))
    gateway = RunningGateway(settings)
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def approvals(gw: RunningGateway) -> apb_grpc.ApprovalsServiceStub:
    return apb_grpc.ApprovalsServiceStub(gw.channel)


def ledger_transfers(backends: dict[str, Any], memo: str) -> int:
    """Transfers the ledger itself holds with this memo: what reached the backend."""
    with urllib.request.urlopen(f"{backends['ledger'].url}/transfers", timeout=30) as resp:
        items = json.load(resp)
    if isinstance(items, dict):
        items = items.get("items") or items.get("transfers") or []
    return sum(1 for t in items if t.get("memo") == memo)


def big(memo: str, amount: float = 1500.0) -> dict[str, Any]:
    return {**BIG, "amount": amount, "memo": memo}


def execute(gw: RunningGateway, args: dict[str, Any], request_id: str,
            token: str = "dev-finance") -> Any:
    return gw.stub.Execute(tool_request("ledger.create_transfer", args, request_id),
                           metadata=md(token), timeout=60)


def held(gw: RunningGateway, args: dict[str, Any], request_id: str,
         token: str = "dev-finance") -> dict[str, Any]:
    with pytest.raises(grpc.RpcError) as info:
        execute(gw, args, request_id, token)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    err = error_of(info.value)
    assert err["code"] == "approval_required", err
    return err


def test_held_transfer_has_no_effect_and_is_listed(
        gw: RunningGateway, backends: dict[str, Any],
        approvals: apb_grpc.ApprovalsServiceStub) -> None:
    memo, rid = f"m-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    err = held(gw, big(memo), rid)
    d = err["details"]
    assert d["approver_roles"] == ["approver"] and d["state"] == "pending"
    assert d["approval_id"].startswith("apr-") and d["expires_at"].endswith("Z")
    assert any("needs approval by approver" in r for r in d["reasons"])
    # The retry before any decision is held again, under the same approval.
    assert held(gw, big(memo), rid)["details"]["approval_id"] == d["approval_id"]
    assert ledger_transfers(backends, memo) == 0
    listed = approvals.ListApprovals(apb.ListApprovalsRequest(), metadata=md("dev-approver"),
                                     timeout=10)
    mine = [a for a in listed.approvals if a.approval_id == d["approval_id"]]
    assert len(mine) == 1
    a = mine[0]
    assert a.requester_id == "finance-1" and a.operation == "ledger.create_transfer"
    assert a.state == "pending" and a.trace_id == err["trace_id"]
    action = dict(a.action)
    # Masked fields stay masked for approvers; the rest is the exact action.
    assert action["arguments"]["from_account"] == "[REDACTED]"
    assert action["arguments"]["amount"] == 1500 and action["arguments"]["memo"] == memo
    # The requester sees their own; a principal who could not decide it does not.
    own = approvals.ListApprovals(apb.ListApprovalsRequest(), metadata=md("dev-finance"),
                                  timeout=10)
    assert d["approval_id"] in {x.approval_id for x in own.approvals}
    bystander = approvals.ListApprovals(apb.ListApprovalsRequest(state="all"),
                                        metadata=md("dev-agent"), timeout=10)
    assert d["approval_id"] not in {x.approval_id for x in bystander.approvals}
    with pytest.raises(grpc.RpcError) as info:
        approvals.GetApproval(apb.GetApprovalRequest(approval_id=d["approval_id"]),
                              metadata=md("dev-agent"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # Another tenant's approver does not see it.
    other = approvals.ListApprovals(apb.ListApprovalsRequest(state="all"),
                                    metadata=md("other-tenant-approver"), timeout=10)
    assert all(x.approval_id != d["approval_id"] for x in other.approvals)
    with pytest.raises(grpc.RpcError) as info:
        approvals.GetApproval(apb.GetApprovalRequest(approval_id=d["approval_id"]),
                              metadata=md("other-tenant-approver"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_small_transfer_needs_no_approval(gw: RunningGateway) -> None:
    r = execute(gw, SMALL, str(uuid.uuid4()))
    assert r.result.struct_value["amount"] == 2


def test_approve_then_retry_runs_exactly_once(gw: RunningGateway, backends: dict[str, Any],
                                              approvals: apb_grpc.ApprovalsServiceStub) -> None:
    memo, rid = f"m-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    approval_id = held(gw, big(memo), rid)["details"]["approval_id"]
    done = approvals.Approve(apb.ApproveRequest(approval_id=approval_id, comment="ok"),
                             metadata=md("dev-approver"), timeout=10).approval
    assert done.state == "approved" and done.decided_by == "approver-1"
    first = execute(gw, big(memo), rid)
    again = execute(gw, big(memo), rid)
    assert ledger_transfers(backends, memo) == 1
    assert first.result.struct_value["id"] == \
        again.result.struct_value["id"]
    assert again.replayed
    shown = approvals.GetApproval(apb.GetApprovalRequest(approval_id=approval_id),
                                  metadata=md("dev-approver"), timeout=10).approval
    assert shown.state == "consumed"
    # Deciding again is refused.
    with pytest.raises(grpc.RpcError) as info:
        approvals.Reject(apb.RejectRequest(approval_id=approval_id),
                         metadata=md("dev-approver-2"), timeout=10)
    assert error_of(info.value)["code"] == "approval_not_pending"


def test_changed_arguments_need_a_new_approval(gw: RunningGateway, backends: dict[str, Any],
                                               approvals: apb_grpc.ApprovalsServiceStub) -> None:
    memo, rid = f"m-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    approval_id = held(gw, big(memo), rid)["details"]["approval_id"]
    approvals.Approve(apb.ApproveRequest(approval_id=approval_id),
                      metadata=md("dev-approver"), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        execute(gw, big(memo, amount=2500.0), rid)
    err = error_of(info.value)
    assert err["code"] == "approval_mismatch" and approval_id in err["message"]
    assert ledger_transfers(backends, memo) == 0
    # A new request_id with the changed arguments asks for a new approval.
    other = held(gw, big(memo, amount=2500.0), str(uuid.uuid4()))["details"]["approval_id"]
    assert other != approval_id


def test_rejected_ends_the_retry(gw: RunningGateway, backends: dict[str, Any],
                                 approvals: apb_grpc.ApprovalsServiceStub) -> None:
    memo, rid = f"m-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    approval_id = held(gw, big(memo), rid)["details"]["approval_id"]
    approvals.Reject(apb.RejectRequest(approval_id=approval_id, comment="too much"),
                     metadata=md("dev-approver"), timeout=10)
    with pytest.raises(grpc.RpcError) as info:
        execute(gw, big(memo), rid)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    err = error_of(info.value)
    assert err["code"] == "approval_rejected" and "too much" in err["message"]
    assert err["details"]["decided_by"] == "approver-1"
    assert ledger_transfers(backends, memo) == 0


def test_self_approval_and_missing_role_refused(gw: RunningGateway,
                                                approvals: apb_grpc.ApprovalsServiceStub) -> None:
    memo, rid = f"m-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    approval_id = held(gw, big(memo), rid, token="dev-finance-approver")["details"][
        "approval_id"]
    for token, why in (("dev-finance-approver", "no self-approval"),
                       ("dev-finance", "needs the role approver"),
                       ("dev-agent", "needs the role approver")):
        with pytest.raises(grpc.RpcError) as info:
            approvals.Approve(apb.ApproveRequest(approval_id=approval_id),
                              metadata=md(token), timeout=10)
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        err = error_of(info.value)
        assert err["code"] == "approval_forbidden" and why in err["message"], err
    shown = approvals.GetApproval(apb.GetApprovalRequest(approval_id=approval_id),
                                  metadata=md("dev-approver"), timeout=10).approval
    assert shown.state == "pending"


def test_expired_approval(gw: RunningGateway, backends: dict[str, Any], state: Path,
                          approvals: apb_grpc.ApprovalsServiceStub) -> None:
    memo, rid = f"m-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    approval_id = held(gw, big(memo), rid)["details"]["approval_id"]
    approvals.Approve(apb.ApproveRequest(approval_id=approval_id),
                      metadata=md("dev-approver"), timeout=10)
    # Move its deadline into the past (as if an hour went by) in the store itself.
    with sqlite3.connect(state / "idempotency.db") as conn:
        conn.execute("UPDATE approvals SET expires_at = 1 WHERE id = ?", (approval_id,))
    with pytest.raises(grpc.RpcError) as info:
        execute(gw, big(memo), rid)
    err = error_of(info.value)
    assert err["code"] == "approval_expired", err
    assert ledger_transfers(backends, memo) == 0
    with pytest.raises(grpc.RpcError) as info:
        approvals.Approve(apb.ApproveRequest(approval_id=approval_id),
                          metadata=md("dev-approver-2"), timeout=10)
    assert error_of(info.value)["code"] == "approval_not_pending"


def test_concurrent_retries_take_effect_once(gw: RunningGateway, backends: dict[str, Any],
                                             approvals: apb_grpc.ApprovalsServiceStub) -> None:
    memo, rid = f"m-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    approval_id = held(gw, big(memo), rid)["details"]["approval_id"]
    approvals.Approve(apb.ApproveRequest(approval_id=approval_id),
                      metadata=md("dev-approver"), timeout=10)
    results: list[Any] = []
    start = threading.Barrier(8)

    def retry() -> None:
        start.wait()
        try:
            results.append(execute(gw, big(memo), rid).result.struct_value["id"])
        except grpc.RpcError as exc:
            results.append(error_of(exc)["code"])

    threads = [threading.Thread(target=retry) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert ledger_transfers(backends, memo) == 1
    ids = {r for r in results if r != "duplicate_in_flight"}
    assert len(ids) == 1 and len(results) == 8, results


def test_approvals_survive_reopening_the_store(state: Path) -> None:
    import asyncio

    async def read() -> int:
        store = SQLiteApprovalStore(state / "idempotency.db")
        try:
            return len(await store.list("demo", None, 500))
        finally:
            await store.aclose()

    assert asyncio.run(read()) > 0


def test_cli_lists_shows_and_approves(gw: RunningGateway, backends: dict[str, Any],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    memo, rid = f"m-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    approval_id = held(gw, big(memo), rid)["details"]["approval_id"]
    target = ["--target", f"127.0.0.1:{gw.port}", "--token", "dev-approver"]
    capsys.readouterr()
    assert main(["approvals", "list", *target]) == 0
    out = capsys.readouterr().out
    assert approval_id in out and "ledger.create_transfer" in out and memo in out
    assert "A1" not in out  # the masked accounts stay masked
    assert main(["approvals", "show", approval_id, *target]) == 0
    printed = capsys.readouterr().out  # (the in-process gateway logs to stdout too)
    shown = json.loads(printed[printed.index("{\n"):printed.index("\n}\n") + 2])
    assert shown["action"]["arguments"]["to_account"] == "[REDACTED]"
    assert shown["state"] == "pending"
    # The requester cannot approve their own request from the CLI either.
    assert main(["approvals", "approve", approval_id, "--target", f"127.0.0.1:{gw.port}",
                 "--token", "dev-finance"]) == 1
    assert "approval_forbidden" in capsys.readouterr().err
    assert main(["approvals", "approve", approval_id, "-m", "checked", *target]) == 0
    assert "approved by approver-1 (checked)" in capsys.readouterr().out
    execute(gw, big(memo), rid)
    assert ledger_transfers(backends, memo) == 1


async def test_mcp_reports_the_pending_approval(gw: RunningGateway, backends: dict[str, Any],
                                                approvals: apb_grpc.ApprovalsServiceStub) -> None:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    from gateway.mcp_server import (
        REQUEST_ID_META_KEY,
        McpHandle,
        create_mcp_app,
        start_mcp_server,
    )

    server = gw.server
    assert server is not None

    async def start() -> McpHandle:
        return await start_mcp_server(create_mcp_app(server.pipeline, server.authenticator),
                                      "127.0.0.1:0")

    handle: McpHandle = gw.call(start())
    memo, rid = f"m-{uuid.uuid4().hex[:8]}", f"mcp-{uuid.uuid4()}"
    try:
        async with (
            httpx2.AsyncClient(headers={"Authorization": "Bearer dev-finance"},
                               timeout=60) as http,
            Client(streamable_http_client(handle.url, http_client=http)) as c,  # type: ignore[arg-type]
        ):
            first = await c.call_tool("ledger__create_transfer", big(memo),
                                      meta={REQUEST_ID_META_KEY: rid})
            payload = first.structured_content
            assert isinstance(payload, dict) and first.is_error
            assert payload["status"] == "approval_required"
            approval_id = payload["approval"]["approval_id"]
            assert payload["approval"]["approver_roles"] == ["approver"]
            assert ledger_transfers(backends, memo) == 0
            approvals.Approve(apb.ApproveRequest(approval_id=approval_id),
                              metadata=md("dev-approver"), timeout=10)
            done = await c.call_tool("ledger__create_transfer", big(memo),
                                     meta={REQUEST_ID_META_KEY: rid})
            assert done.is_error is False, done.structured_content
    finally:
        gw.call(handle.stop(grace=2.0))
    assert ledger_transfers(backends, memo) == 1


def _audit(gw: RunningGateway) -> list[dict[str, Any]]:
    server = gw.server
    assert server is not None and gw.settings.audit.file is not None
    server.telemetry.force_flush()
    return [json.loads(line) for line in Path(gw.settings.audit.file).read_text().splitlines()]


def test_audit_links_request_decision_and_consumption(
        gw: RunningGateway, approvals: apb_grpc.ApprovalsServiceStub) -> None:
    memo, rid = f"m-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    err = held(gw, big(memo), rid)
    approval_id, held_trace = err["details"]["approval_id"], err["trace_id"]
    approvals.Approve(apb.ApproveRequest(approval_id=approval_id, comment="audited"),
                      metadata=md("dev-approver"), timeout=10)
    execute(gw, big(memo), rid)
    records = [r for r in _audit(gw)
               if r.get("attributes", {}).get("switchboard.approval.id") == approval_id]
    by_name: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by_name.setdefault(r["name"], []).append(r)
    checks = by_name["approval.check"]
    outcomes = [c["attributes"]["switchboard.approval.outcome"] for c in checks
                if "switchboard.approval.outcome" in c["attributes"]]
    assert "consumed" in outcomes
    (approve,) = by_name["approval.approve"]
    assert approve["attributes"]["switchboard.approval.trace_id"] == held_trace
    assert approve["attributes"]["switchboard.approval.comment"] == "audited"
    assert approve["attributes"]["switchboard.principal.id"] == "approver-1"
    assert approve["attributes"]["switchboard.approval.decided_as"] == ["approver"]
    assert any(link["trace_id"] == held_trace for link in approve.get("links", []))
    consumed = next(c for c in checks
                    if c["attributes"].get("switchboard.approval.outcome") == "consumed")
    assert any(link["trace_id"] == held_trace for link in consumed.get("links", []))
    assert consumed["trace_id"] != held_trace


def test_host_call_spans_carry_the_parent_decision(gw: RunningGateway) -> None:
    from gateway_support import code_request

    source = "from sdk import ledger\nledger.get_balance(account='A1')"
    resp = gw.stub.Execute(code_request(source), metadata=md("dev-agent"), timeout=180)
    spans = [r for r in _audit(gw) if r["trace_id"] == resp.trace_id]
    run_decision = resp.decision.decision_id
    host = [s for s in spans if s["name"].startswith("host_call ")]
    decides = [s for s in spans if s["name"] == "policy.decide"
               and s["attributes"].get("switchboard.decision_id") != run_decision]
    assert host and decides
    for s in host + decides:
        assert s["attributes"]["switchboard.parent_decision_id"] == run_decision


def test_request_id_of_another_call_is_refused_before_asking(
        gw: RunningGateway, approvals: apb_grpc.ApprovalsServiceStub) -> None:
    rid = str(uuid.uuid4())
    execute(gw, SMALL, rid)
    before = len(approvals.ListApprovals(apb.ListApprovalsRequest(state="all", limit=500),
                                         metadata=md("dev-approver"), timeout=10).approvals)
    with pytest.raises(grpc.RpcError) as info:
        execute(gw, big("reused"), rid)
    assert error_of(info.value)["code"] == "idempotency_conflict"
    after = len(approvals.ListApprovals(apb.ListApprovalsRequest(state="all", limit=500),
                                        metadata=md("dev-approver"), timeout=10).approvals)
    assert after == before
