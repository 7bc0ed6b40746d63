"""What one request can make the gateway write: a huge envelope (request_id) is recorded only
as a bounded stand-in — in the audit file and in the log — authenticated or not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from gateway_support import RunningGateway, error_of, md
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway.values import loggable_id

pytestmark = pytest.mark.timeout(240)

DEADLINE = 30.0
BOUND = 8 * 1024  # bytes one rejected request may add to the audit file, and to the log
HUGE_ID = "r" * (3 * 1024 * 1024)


def _audit_size(gateway: RunningGateway) -> int:
    assert gateway.server is not None and gateway.settings.audit.file is not None
    gateway.server.telemetry.force_flush()
    path = Path(gateway.settings.audit.file)
    return path.stat().st_size if path.exists() else 0


def _send(gateway: RunningGateway, request_id: str, token: str | None,
          metadata: tuple[tuple[str, str], ...] = ()) -> tuple[grpc.StatusCode, dict[str, Any],
                                                               list[dict[str, Any]], int]:
    """Send one Execute; returns its status, error, the log entries it produced and how many
    bytes it added to the audit file."""
    req = pb.ExecuteRequest(request_id=request_id,
                            tool_call=pb.ToolCall(name="ledger.get_balance"))
    req.tool_call.arguments.update({"account": "A1"})
    before = _audit_size(gateway)
    with structlog.testing.capture_logs(
            processors=[structlog.contextvars.merge_contextvars]) as logs:
        try:
            gateway.stub.Execute(req, metadata=(md(token) if token else ()) + metadata,
                                 timeout=DEADLINE)
            status, err = grpc.StatusCode.OK, {}
        except grpc.RpcError as exc:
            status, err = exc.code(), error_of(exc)
    return status, err, logs, _audit_size(gateway) - before


def _assert_serving(gateway: RunningGateway) -> None:
    health = health_pb2_grpc.HealthStub(gateway.channel)
    resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.parametrize("token", [None, "not-a-token", "dev-agent"],
                         ids=["no-token", "bad-token", "authenticated"])
def test_a_huge_request_id_is_recorded_bounded(gateway: RunningGateway,
                                               token: str | None) -> None:
    status, err, logs, grown = _send(gateway, HUGE_ID, token)
    if token == "dev-agent":
        assert status == grpc.StatusCode.INVALID_ARGUMENT, err
        assert (err["code"], err["field"]) == ("invalid_request", "request_id"), err
    else:
        assert status == grpc.StatusCode.UNAUTHENTICATED, err
        assert err["code"] == "unauthenticated", err
    logged = len(json.dumps(logs, default=str))
    assert grown < BOUND, f"one request added {grown} bytes to the audit file"
    assert logged < BOUND, f"one request logged {logged} bytes"
    assert grown > 0  # it was audited, bounded: not dropped
    stand_in = loggable_id(HUGE_ID)
    assert stand_in.startswith("<invalid len=3145728 ")
    assert any(e.get("request_id") == stand_in for e in logs), logs
    _assert_serving(gateway)


def test_a_hostile_x_request_id_header_is_recorded_bounded(gateway: RunningGateway) -> None:
    hostile = "a b;<script>" + "z" * 6000
    status, err, logs, grown = _send(gateway, "", None, (("x-request-id", hostile),))
    assert status == grpc.StatusCode.UNAUTHENTICATED, err
    assert grown < BOUND and len(json.dumps(logs, default=str)) < BOUND
    assert all(hostile not in json.dumps(e, default=str) for e in logs)


def test_well_formed_request_ids_are_recorded_as_given(gateway: RunningGateway) -> None:
    status, err, logs, _ = _send(gateway, "client-id-42:retry.1", "dev-agent")
    assert status == grpc.StatusCode.OK, err
    assert any(e.get("request_id") == "client-id-42:retry.1" for e in logs), logs


def test_audit_records_carry_the_stand_in_not_the_value(gateway: RunningGateway) -> None:
    status, _err, _, _ = _send(gateway, "bad id;" + "x" * 100_000, None)
    assert status == grpc.StatusCode.UNAUTHENTICATED
    assert gateway.settings.audit.file is not None
    last = Path(gateway.settings.audit.file).read_text().splitlines()[-1]
    record = json.loads(last)
    rid = record["attributes"]["switchboard.request_id"]
    assert rid.startswith("<invalid len=100007 sha256=") and len(rid) < 128, rid
