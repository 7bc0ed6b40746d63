"""Readiness: the ``switchboard.v1.Gateway`` health status says whether calls can succeed.

Liveness (service ``""``) stays SERVING while the process runs; readiness turns NOT_SERVING
when no valid policy is loaded (the policy files are gone or empty, the ``decision`` rule is
missing or undefined: every call is denied), the policy cannot be reached (an OPA sidecar
down), no sandbox process is alive, or the audit file cannot be written — so a load balancer sends
traffic elsewhere instead of to a gateway that can only fail closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import httpx
import structlog
from grpc_health.v1 import health, health_pb2

from gateway.audit import Telemetry
from gateway.policy import PolicyEngine, PolicySettings
from gateway.sandbox import SandboxPool

__all__ = ["Check", "Readiness", "readiness_checks"]

Check = Callable[[], Awaitable[str | None]]  # None when healthy, else the reason
log = structlog.get_logger("switchboard.readiness")


def readiness_checks(policy: PolicyEngine, policy_settings: PolicySettings,
                     sandbox: SandboxPool, telemetry: Telemetry) -> list[Check]:
    async def policy_loaded() -> str | None:
        problem = policy.unavailable
        return None if problem is None else f"no valid policy is loaded: {problem}"

    async def opa_reachable() -> str | None:
        url = policy_settings.opa_url.rstrip("/") + "/health"
        try:
            async with httpx.AsyncClient(timeout=policy_settings.timeout_ms / 1000) as client:
                response = await client.get(url)
        except httpx.HTTPError as exc:
            return f"OPA unreachable at {policy_settings.opa_url}: {type(exc).__name__}"
        return None if response.status_code == 200 else f"OPA health {response.status_code}"

    # A process counts once it has restored its first interpreter (SandboxPool.start returns
    # after the first one; the rest join in the background): alive > 0 means a run can be served.
    async def sandbox_alive() -> str | None:
        return None if sandbox.stats().get("alive", 0) > 0 else "no sandbox process alive"

    async def audit_writable() -> str | None:
        error = telemetry.audit_error
        return f"audit file not writable: {error}" if error else None

    checks: list[Check] = [policy_loaded, sandbox_alive, audit_writable]
    if policy_settings.engine == "opa":
        checks.append(opa_reachable)
    return checks


class Readiness:
    """Publishes ``service``'s health status from the checks; ``refresh`` once, then ``run``."""

    def __init__(self, servicer: health.aio.HealthServicer, service: str,
                 checks: Sequence[Check]) -> None:
        self.servicer = servicer
        self.service = service
        self.checks = list(checks)
        self.ready: bool | None = None
        self.reasons: list[str] = []

    async def refresh(self) -> bool:
        self.reasons = [r for r in await asyncio.gather(*(c() for c in self.checks)) if r]
        now_ready = not self.reasons
        if now_ready != self.ready:
            status = (health_pb2.HealthCheckResponse.SERVING if now_ready
                      else health_pb2.HealthCheckResponse.NOT_SERVING)
            await self.servicer.set(self.service, status)
            if self.ready is not None or not now_ready:
                log.warning("readiness", ready=now_ready, reasons=self.reasons)
            self.ready = now_ready
        return now_ready

    async def run(self, interval_s: float = 2.0) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.refresh()
