"""The chart's output works with the real gateway: every scenario's config, Secret files and
env load through gateway.config, and the container command with the embedded engine starts
the real `switchboard serve` (a subprocess on loopback port 0), which answers the health
checks the probes and `helm test` make, authenticates with the Secret's tokens, routes with
the mounted Rego and writes its audit file to the state volume."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import helm_python
import pytest
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from waiting import scaled

from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc
from gateway.config import load_settings
from tests.helm_support import (
    CHART_DIR,
    VALID_SCENARIOS,
    load_scenario,
    materialize,
    render,
)

# The Secret an operator creates for the production scenario (secrets.existingSecret).
PROD_SECRET = {
    "switchboard-prod": {
        "tokens.yaml": "prod-token: {id: svc-1, tenant: demo, roles: [agent]}\n",
        "jwks-url": "https://idp.example.com/.well-known/jwks.json",
        "idempotency-dsn": "postgresql://sb:pw@db.example.com:5432/switchboard",
        "workspace-token": "ws-secret",
    }
}
TOKENS = {
    "tok-agent": {"id": "agent-1", "tenant": "demo", "roles": ["agent"]},
    "tok-finance": {"id": "finance-1", "tenant": "demo", "roles": ["agent", "finance"]},
}


@pytest.fixture(scope="module")
def chart() -> helm_python.Chart:
    return helm_python.Chart.load(CHART_DIR)


@pytest.mark.parametrize("scenario", VALID_SCENARIOS)
def test_rendered_config_loads_in_the_gateway(
    chart: helm_python.Chart, scenario: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered = render(chart, load_scenario(scenario))
    config, env, args = materialize(rendered, tmp_path, external_secrets=PROD_SECRET)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings(config)  # the gateway's own strict loader (unknown keys rejected)
    assert args == ["serve", "--config", str(config)]
    assert settings.listen == "0.0.0.0:50051"
    assert settings.policy.engine == load_scenario(scenario).get("policy", {}).get("engine", "opa")
    if scenario == "production-values.yaml":
        assert settings.idempotency.dsn == PROD_SECRET["switchboard-prod"]["idempotency-dsn"]
        assert settings.identity.jwks_url == PROD_SECRET["switchboard-prod"]["jwks-url"]
        assert set(settings.identity.tokens) == {"prod-token"}
        assert settings.audit.otlp_endpoint == "http://otel-collector.observability.svc:4317"
        headers = {b.name: b.headers for b in settings.backends}
        assert headers["workspace"] == {"Authorization": "Bearer ws-secret"}
    else:
        assert settings.idempotency.dsn == f"sqlite:///{tmp_path}/var/lib/switchboard/idempotency.db"
    assert str(settings.audit.file).startswith(f"{tmp_path}/var/lib/switchboard/")


SERVE_VALUES: dict[str, Any] = {
    "policy": {"engine": "embedded"},
    "secrets": {"tokens": TOKENS},
    "sandbox": {"workers": 1},
    "backends": [{"name": "ledger", "app": "gateway.demo.ledger:app"}],
}


def _start(root: Path, args: list[str], env: dict[str, str]
           ) -> tuple[str, subprocess.Popen[str]]:
    """Run the container's command; return the address it prints once listening."""
    switchboard = Path(sys.executable).parent / "switchboard"
    full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", **env}
    proc = subprocess.Popen([str(switchboard), *args], env=full_env, cwd=root, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + scaled(240)  # Deno + Pyodide start, on a busy machine
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("LISTENING grpc://"):
            return line.split("grpc://", 1)[1].strip(), proc
    proc.kill()
    proc.wait()
    pytest.fail("gateway did not start:\n" + "".join(lines[-40:]))


def _health(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)  # type: ignore[no-untyped-call]
    reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
    return int(reply.status)


@pytest.fixture
def pod_root() -> Iterator[Path]:
    """A short root for the pod's file system: the sandbox binds Unix sockets under /tmp,
    and AF_UNIX paths are limited to 108 bytes (pytest's tmp_path is too deep)."""
    root = Path(tempfile.mkdtemp(prefix="sbpod-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_container_command_serves_probes_tokens_and_policy(
    chart: helm_python.Chart, pod_root: Path
) -> None:
    """One pod's life: start, probes, authenticated calls routed by the mounted Rego, an
    audit record on the state volume, then SIGTERM (a rollout) and a clean exit."""
    tmp_path = pod_root
    _config, env, args = materialize(render(chart, SERVE_VALUES), tmp_path,
                                     listen="127.0.0.1:0")
    address, proc = _start(tmp_path, args, env)
    try:
        with grpc.insecure_channel(address) as channel:
            serving = health_pb2.HealthCheckResponse.SERVING
            assert _health(channel, "") == serving  # liveness/startup probes, helm test
            assert _health(channel, "switchboard.v1.Gateway") == serving  # readiness, helm test

            stub = pb_grpc.GatewayStub(channel)  # type: ignore[no-untyped-call]
            with pytest.raises(grpc.RpcError) as info:
                stub.SearchOperations(pb.SearchOperationsRequest(query="balance"), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED

            def auth(token: str) -> list[tuple[str, str]]:
                return [("authorization", f"Bearer {token}")]

            found = stub.SearchOperations(pb.SearchOperationsRequest(query="balance"),
                                          metadata=auth("tok-agent"), timeout=60)
            assert any(op.name == "ledger.get_balance" for op in found.operations)

            arguments = struct_pb2.Struct()
            arguments.update({"from_account": "A1", "to_account": "A2", "amount": 1.0,
                              "currency": "USD"})
            transfer = pb.ExecuteRequest(request_id="r-1", tool_call=pb.ToolCall(
                name="ledger.create_transfer", arguments=arguments))
            # data.json grants payments to the finance role only.
            denied = stub.Explain(transfer, metadata=auth("tok-agent"), timeout=60)
            assert denied.route == "deny" and denied.reasons
            allowed = stub.Explain(transfer, metadata=auth("tok-finance"), timeout=60)
            assert allowed.route == "tool"
            assert allowed.policy_revision == denied.policy_revision != ""

        audit = tmp_path / "var" / "lib" / "switchboard" / "audit.jsonl"
        deadline = time.monotonic() + scaled(60)
        while time.monotonic() < deadline and not (audit.exists() and audit.stat().st_size):
            time.sleep(0.1)
        assert audit.exists() and audit.stat().st_size > 0, "no audit record on the state volume"

        proc.send_signal(signal.SIGTERM)  # what the kubelet sends on a rollout
        assert proc.wait(timeout=scaled(60)) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
