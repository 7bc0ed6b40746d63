"""Loading a policy revision is bounded, against the real ``switchboard serve``: a revision
that takes hours to compile, dropped into the watched policy directory, is refused by the
policy worker that checks it, and the gateway serves tool calls and health checks all along
with the old revision (before the check moved into a worker, the gateway compiled it on its
event loop and answered nothing until it was done)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import grpc
import pytest
from gateway_support import md, serve_demo_gateway, tool_request
from grpc_health.v1 import health_pb2, health_pb2_grpc
from waiting import scaled, wait_until_sync

from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(900)

POLICIES = Path(__file__).resolve().parents[2] / "policies"
# regorus's parser is exponential in nested brackets (18 levels: 17 s): 26 is hours.
COMPILE_SLOW = ("package switchboard.slow\nimport rego.v1\n\ny := "
                + "[" * 26 + "1" + "]" * 26 + "\n")


def test_a_reload_that_never_compiles_is_refused_while_the_gateway_serves(
        backends: dict[str, Any], tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    proc = serve_demo_gateway(backends, tmp_path, policy={
        "path": str(policies), "reload": True, "reload_interval_s": 0.2, "timeout_ms": 300})
    channel = grpc.insecure_channel(proc.url.removeprefix("grpc://"))
    log = tmp_path / "gw.log"
    try:
        stub = pb_grpc.GatewayStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        def serves() -> None:
            resp = stub.Execute(tool_request("ledger.get_balance", {"account": "A1"}),
                                metadata=md("dev-finance"), timeout=scaled(60))
            assert resp.HasField("result"), resp
            status = health.Check(health_pb2.HealthCheckRequest(service=""),
                                  timeout=scaled(60)).status
            assert status == health_pb2.HealthCheckResponse.SERVING

        serves()
        (policies / "switchboard" / "slow.rego").write_text(COMPILE_SLOW)
        calls = 0

        def refused() -> bool:
            nonlocal calls
            serves()  # every call is answered while the revision is being checked
            calls += 1
            return "policy.reload_rejected" in log.read_text(errors="replace")

        wait_until_sync(refused, scaled(300), interval=0.1,
                        what="the slow revision refused")
        text = log.read_text(errors="replace")
        assert "did not compile and probe within 3000 ms" in text, text[-3000:]
        assert calls >= 2
        serves()  # still the old revision, still serving
        assert proc.proc.poll() is None
    finally:
        channel.close()
        proc.stop()
