"""An approved transfer survives a gateway crash: `switchboard serve` is SIGKILLed between
the approval and the agent's retry, a new process on the same store runs it exactly once."""

from __future__ import annotations

import json
import signal
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from gateway_support import error_of, md, tool_request
from waiting import scaled

from gateway._proto.switchboard.v1 import approvals_pb2 as apb
from gateway._proto.switchboard.v1 import approvals_pb2_grpc as apb_grpc
from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc
from gateway.audit.checkpoint import generate_key, verify_checkpoints
from gateway.demo_stack import ServiceProcess, spawn_service, write_demo_config


def serve(cfg: Path, log: Path) -> ServiceProcess:
    return spawn_service("gateway", [sys.executable, "-m", "gateway.cli", "serve", "--config",
                                     str(cfg)], log_file=log, timeout=scaled(240))


def transfers_with(ledger_url: str, memo: str) -> int:
    with urllib.request.urlopen(f"{ledger_url}/transfers", timeout=30) as resp:
        items = json.load(resp)
    return sum(1 for t in items if t.get("memo") == memo)


def test_restart_between_approval_and_retry(backends: dict[str, Any], tmp_path: Path) -> None:
    cfg = write_demo_config(tmp_path / "gw.yaml", ledger_url=backends["ledger"].url,
                            workspace_url=backends["workspace"].url, state=tmp_path)
    raw = yaml.safe_load(cfg.read_text())
    raw["sandbox"] = {"workers": 1}
    # Signed audit checkpoints on (the final one is written at shutdown).
    generate_key(tmp_path / "audit.key")
    raw["audit"]["checkpoint_key_file"] = str(tmp_path / "audit.key")
    cfg.write_text(yaml.safe_dump(raw))
    memo, rid = f"restart-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    args = {"from_account": "A1", "to_account": "A3", "amount": 1200.0, "currency": "USD",
            "memo": memo}
    first = serve(cfg, tmp_path / "gw1.log")
    try:
        with grpc.insecure_channel(first.url.removeprefix("grpc://")) as ch:
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.GatewayStub(ch).Execute(
                    tool_request("ledger.create_transfer", args, rid),
                    metadata=md("dev-finance"), timeout=60)
            err = error_of(info.value)
            assert err["code"] == "approval_required"
            approval_id = err["details"]["approval_id"]
            approved = apb_grpc.ApprovalsServiceStub(ch).Approve(
                apb.ApproveRequest(approval_id=approval_id, comment="fine"),
                metadata=md("dev-approver"), timeout=30).approval
            assert approved.state == "approved"
    finally:
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait()
    assert transfers_with(backends["ledger"].url, memo) == 0

    second = serve(cfg, tmp_path / "gw2.log")
    try:
        with grpc.insecure_channel(second.url.removeprefix("grpc://")) as ch:
            stub = pb_grpc.GatewayStub(ch)
            shown = apb_grpc.ApprovalsServiceStub(ch).GetApproval(
                apb.GetApprovalRequest(approval_id=approval_id), metadata=md("dev-approver"),
                timeout=30).approval
            assert shown.state == "approved" and shown.comment == "fine"
            r1 = stub.Execute(tool_request("ledger.create_transfer", args, rid),
                              metadata=md("dev-finance"), timeout=60)
            r2 = stub.Execute(tool_request("ledger.create_transfer", args, rid),
                              metadata=md("dev-finance"), timeout=60)
            assert not r1.replayed and r2.replayed
            assert r1.result.struct_value["id"] == r2.result.struct_value["id"]
    finally:
        assert second.stop() == 0
    assert transfers_with(backends["ledger"].url, memo) == 1
    # The audit trail of both processes verifies against the checkpoint signed at shutdown.
    audit = Path(raw["audit"]["file"])
    report = verify_checkpoints(audit, tmp_path / "audit.key.pub")
    assert report.ok, report.problems
    assert report.checkpoints >= 1 and report.unsigned_after == 0
