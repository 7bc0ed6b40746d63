"""Code runs whose host call needs approval: the run ends with approval_required, the host
calls made before the pause are recorded, and the retry (same request_id) replays them instead
of calling the backend again, so the whole run takes effect once."""

from __future__ import annotations

import json
import shutil
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from gateway_support import RunningGateway, error_of, gateway_settings, md

from gateway._proto.switchboard.v1 import approvals_pb2 as apb
from gateway._proto.switchboard.v1 import approvals_pb2_grpc as apb_grpc
from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway.policy import PolicySettings, default_policy_dir

# Emails to more than one recipient, sent from code, need an approver.
RULE = {"operation": "workspace.send_email", "kinds": ["host_call"], "argument": "to",
        "above": 1, "roles": ["approver"], "expires_s": 600}


@pytest.fixture(scope="module")
def gw(backends: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
       ) -> Iterator[RunningGateway]:
    policies = tmp_path_factory.mktemp("policies") / "policies"
    shutil.copytree(default_policy_dir(), policies)
    data_file = policies / "switchboard" / "data.json"
    data = json.loads(data_file.read_text())
    data["approvals"]["rules"].append(RULE)
    data_file.write_text(json.dumps(data))
    state = tmp_path_factory.mktemp("gw-code")
    gateway = RunningGateway(gateway_settings(
        state, backends, policy=PolicySettings(path=policies, reload=False)))
    yield gateway
    gateway.stop()


def outbox(backends: dict[str, Any], subject: str) -> int:
    url = f"{backends['workspace'].url}/emails?limit=500"
    with urllib.request.urlopen(url, timeout=30) as resp:
        return sum(1 for e in json.load(resp) if e["subject"] == subject)


def source(tag: str) -> str:
    return (
        "from sdk import workspace\n"
        f"first = workspace.send_email(to=['a@example.com'], subject='{tag}-1', body='one')\n"
        "try:\n"
        f"    workspace.send_email(to=['a@example.com', 'b@example.com'], subject='{tag}-2',\n"
        "                         body='two')\n"
        "except Exception as e:\n"
        "    print('caught', e)\n"  # catching the pause does not let the run go on
        f"workspace.send_email(to=['c@example.com'], subject='{tag}-3', body='three')\n"
        "first['id']\n"
    )


def run(gw: RunningGateway, src: str, request_id: str) -> pb.ExecuteResponse:
    req = pb.ExecuteRequest(request_id=request_id, code_run=pb.CodeRun(source=src))
    return gw.stub.Execute(req, metadata=md("dev-agent"), timeout=180)


def test_paused_run_resumes_once(gw: RunningGateway, backends: dict[str, Any]) -> None:
    tag, rid = f"t-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    with pytest.raises(grpc.RpcError) as info:
        run(gw, source(tag), rid)
    err = error_of(info.value)
    assert err["code"] == "approval_required", err
    assert err["details"]["operation"] == "workspace.send_email"
    # The call before the pause took effect; the held one and everything after did not.
    assert [outbox(backends, f"{tag}-{i}") for i in (1, 2, 3)] == [1, 0, 0]
    approvals = apb_grpc.ApprovalsServiceStub(gw.channel)
    shown = approvals.GetApproval(apb.GetApprovalRequest(approval_id=err["details"][
        "approval_id"]), metadata=md("dev-approver"), timeout=10).approval
    assert shown.kind == "host_call" and shown.requester_id == "agent-1"
    assert dict(shown.action)["source_sha256"]
    approvals.Approve(apb.ApproveRequest(approval_id=shown.approval_id),
                      metadata=md("dev-approver"), timeout=10)
    done = run(gw, source(tag), rid)
    assert not done.error.code, done.error
    assert [outbox(backends, f"{tag}-{i}") for i in (1, 2, 3)] == [1, 1, 1]
    # Retrying the finished run again: every host call replays; nothing is sent again.
    again = run(gw, source(tag), rid)
    assert again.result == done.result
    assert [outbox(backends, f"{tag}-{i}") for i in (1, 2, 3)] == [1, 1, 1]


def test_changed_code_is_refused_on_resume(gw: RunningGateway, backends: dict[str, Any]) -> None:
    tag, rid = f"t-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    with pytest.raises(grpc.RpcError) as info:
        run(gw, source(tag), rid)
    approval_id = error_of(info.value)["details"]["approval_id"]
    apb_grpc.ApprovalsServiceStub(gw.channel).Approve(
        apb.ApproveRequest(approval_id=approval_id), metadata=md("dev-approver"),
        timeout=10)
    changed = source(tag).replace("body='two'", "body='TWO'")
    with pytest.raises(grpc.RpcError) as info:
        run(gw, changed, rid)
    assert error_of(info.value)["code"] == "approval_mismatch"
    assert [outbox(backends, f"{tag}-{i}") for i in (1, 2, 3)] == [1, 0, 0]
