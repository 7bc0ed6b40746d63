"""Readiness follows what calls need: with the OPA engine, the gateway's readiness (health of
``switchboard.v1.Gateway``) tracks OPA's reachability while liveness (``""``) stays SERVING.

No OPA binary can be installed here, so OPA is the loopback server implementing its REST API
(``GET /health``, ``POST /v1/data/...``) from tests/policy_support.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from gateway_support import RunningGateway, gateway_settings, md, tool_request
from grpc_health.v1 import health_pb2, health_pb2_grpc
from policy_support import OpaRestServer

from gateway.policy import PolicySettings

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _status(gw: RunningGateway, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(gw.channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def _wait_status(gw: RunningGateway, service: str, want: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while (got := _status(gw, service)) != want and time.monotonic() < deadline:
        time.sleep(0.2)
    return got


def test_readiness_tracks_opa(backends: dict[str, Any], tmp_path: Path) -> None:
    opa = OpaRestServer().start()
    url = f"http://127.0.0.1:{opa.httpd.server_address[1]}"
    gw = RunningGateway(gateway_settings(
        tmp_path, backends, policy=PolicySettings(engine="opa", opa_url=url, timeout_ms=300)))
    try:
        assert _status(gw, "") == SERVING
        assert _status(gw, "switchboard.v1.Gateway") == SERVING
        ok = gw.stub.Execute(tool_request("ledger.get_balance", {"account": "A1"}),
                             metadata=md("dev-agent"), timeout=10)
        assert ok.decision.route == "tool"
        opa.stop()
        assert _wait_status(gw, "switchboard.v1.Gateway", NOT_SERVING) == NOT_SERVING
        assert _status(gw, "") == SERVING  # alive: not a reason to restart the pod
    finally:
        gw.stop()


def test_serving_before_every_sandbox_process_is_up(backends: dict[str, Any],
                                                    tmp_path: Path) -> None:
    """SERVING waits for one ready sandbox process, not all: the others start in the
    background, one after another, and a code run issued right at SERVING is served."""
    from gateway_support import code_request
    from waiting import scaled, wait_until_sync

    from gateway.sandbox import SandboxSettings

    workers = 3
    gw = RunningGateway(gateway_settings(tmp_path, backends,
                                         sandbox=SandboxSettings(workers=workers)))
    try:
        pool = gw.server.pipeline.sandbox if gw.server else None
        assert pool is not None

        async def stats() -> dict[str, Any]:
            return pool.stats()

        # create_server has returned: the gateway reports SERVING ...
        assert _status(gw, "switchboard.v1.Gateway") == SERVING
        at_serving = gw.call(stats())
        # ... while the pool is still bringing up the rest of its processes (the second one
        # only starts once the first has restored its interpreter, which is what SERVING
        # waited for; the third after the second).
        assert at_serving["starting"] and 1 <= at_serving["alive"] < workers, at_serving
        resp = gw.stub.Execute(code_request("6 * 7"), metadata=md("dev-agent"),
                               timeout=scaled(120))
        assert not resp.error.code, resp.error
        assert resp.result.number_value == 42
        def full_size() -> dict[str, Any] | None:
            s = gw.call(stats())
            return s if s["alive"] == workers and not s["starting"] else None

        full = wait_until_sync(full_size, scaled(300), interval=0.2,
                               what="the pool reaching its full size")
        assert full["respawns"] == 0
        assert _status(gw, "switchboard.v1.Gateway") == SERVING
    finally:
        gw.stop()
