"""The approval flow end to end on the shared stores: a gateway whose idempotency DSN is a
real PostgreSQL or Redis keeps its approvals there too."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from gateway_support import RunningGateway, error_of, gateway_settings, md, tool_request

from gateway._proto.switchboard.v1 import approvals_pb2 as apb
from gateway._proto.switchboard.v1 import approvals_pb2_grpc as apb_grpc
from gateway.tools import IdempotencySettings


@pytest.fixture(scope="module", params=["postgres", "redis"])
def dsn(request: pytest.FixtureRequest) -> Iterator[str]:
    from tools_support import postgres_server, redis_server

    with (postgres_server() if request.param == "postgres" else redis_server()) as url:
        yield url


@pytest.fixture(scope="module")
def gw(backends: dict[str, Any], dsn: str, tmp_path_factory: pytest.TempPathFactory,
       ) -> Iterator[RunningGateway]:
    state = tmp_path_factory.mktemp("gw-store")
    gateway = RunningGateway(gateway_settings(state, backends,
                                              idempotency=IdempotencySettings(dsn=dsn)))
    yield gateway
    gateway.stop()


def test_held_approved_once(gw: RunningGateway, backends: dict[str, Any]) -> None:
    memo, rid = f"s-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    args = {"from_account": "A1", "to_account": "A2", "amount": 1100.0, "currency": "USD",
            "memo": memo}
    req = tool_request("ledger.create_transfer", args, rid)
    with pytest.raises(grpc.RpcError) as info:
        gw.stub.Execute(req, metadata=md("dev-finance"), timeout=60)
    err = error_of(info.value)
    assert err["code"] == "approval_required"
    apb_grpc.ApprovalsServiceStub(gw.channel).Approve(
        apb.ApproveRequest(approval_id=err["details"]["approval_id"]),
        metadata=md("dev-approver"), timeout=10)
    first = gw.stub.Execute(req, metadata=md("dev-finance"), timeout=60)
    again = gw.stub.Execute(req, metadata=md("dev-finance"), timeout=60)
    assert again.replayed and first.result == again.result
    with urllib.request.urlopen(f"{backends['ledger'].url}/transfers", timeout=30) as resp:
        assert sum(1 for t in json.load(resp) if t.get("memo") == memo) == 1
