"""The ``opa`` engine: decisions from a real OPA server (e.g. the Helm chart's sidecar).

Uses OPA's REST Data API through ``opa-python-client`` (``POST /v1/data/switchboard/routing/
decision`` with ``{"input": ...}``). No retries: a decision that cannot be had within
``timeout_ms`` is a fail-closed deny, never a stall. OPA owns reloading. The revision is the
bundle revision OPA reports with ``?provenance=true``; when OPA serves plain files (the Helm
chart's default sidecar: no bundle, so no revision) it is a hash of the policy sources from
``GET /v1/policies``, refreshed in the background.

OPA with no policy, or with one whose ``decision`` is missing or needs data that is gone,
answers ``{}`` (undefined): a deny, like a 404 or anything else that is not a decision. The
engine probes the decision (at ``start()`` and with every revision refresh) on the same input
as the embedded engine's load probe; while that gives no well-formed decision, ``unavailable``
says why (readiness: NOT_SERVING) and fail-closed denies carry :data:`POLICY_UNAVAILABLE`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import structlog

from gateway.audit.outcome import audited
from gateway.errors import ConfigError, PolicyError
from gateway.models import Decision

from .base import (
    ADVERTISE,
    ADVERTISE_RULE,
    ENTRYPOINT,
    ENTRYPOINT_PACKAGE,
    ENTRYPOINT_RULE,
    POLICY_UNAVAILABLE,
    PROBE_INPUT,
    Discovery,
    PolicySettings,
    parse_advertise,
    parse_decision,
)
from .decisionlog import fail_closed, finish, finish_discovery, tracer

if TYPE_CHECKING:  # aiohttp and opa_client are imported when an OPA engine is made
    import aiohttp

__all__ = ["OpaPolicyEngine"]


def _revision_from(provenance: Any, fallback: str | None) -> str | None:
    if not isinstance(provenance, dict):
        return fallback
    bundles = provenance.get("bundles")
    if isinstance(bundles, dict) and bundles:
        revs = [
            f"{name}@{b['revision']}" if len(bundles) > 1 else str(b["revision"])
            for name, b in sorted(bundles.items())
            if isinstance(b, dict) and b.get("revision")
        ]
        joined = ",".join(r for r in revs if r)
        if joined:
            return f"opa:{joined}"
    rev = provenance.get("revision")
    return f"opa:{rev}" if isinstance(rev, str) and rev else fallback


class OpaPolicyEngine:
    """:class:`PolicyEngine` over an OPA server's REST API."""

    engine_name = "opa"

    def __init__(self, settings: PolicySettings) -> None:
        parts = urlsplit(settings.opa_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"invalid OPA URL {settings.opa_url!r}", field="policy.opa_url")
        self.settings = settings
        self._timeout_s = max(settings.timeout_ms, 1) / 1000
        from opa_client import AsyncOpaClient

        self._client = AsyncOpaClient(
            host=parts.hostname,
            port=parts.port or (443 if parts.scheme == "https" else 80),
            ssl=parts.scheme == "https",
            retries=0,
            timeout=self._timeout_s,
        )
        self._policies_url = f"{settings.opa_url.rstrip('/')}/v1/policies"
        self._address_revision = f"opa:{parts.hostname}:{parts.port or ''}"
        self._bundle_revision: str | None = None  # from provenance, when OPA serves bundles
        self._content_revision: str | None = None  # hash of GET /v1/policies otherwise
        self._session: aiohttp.ClientSession | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False
        self._started = False
        self._probe_problem: str | None = "OPA has not been probed yet"

    @property
    def revision(self) -> str:
        return self._bundle_revision or self._content_revision or self._address_revision

    @property
    def unavailable(self) -> str | None:
        """None while OPA's last probe gave a well-formed decision; else why not."""
        return self._probe_problem if self._started else "policy engine is not started"

    async def probe(self) -> str | None:
        """Ask OPA for the decision on the probe input; record and return what is wrong."""
        try:
            result = await self._query(PROBE_INPUT)
            if result is None:
                problem: str | None = (
                    f"OPA: {ENTRYPOINT} is undefined for the probe input (OPA holds no policy "
                    "defining it, or the data it needs is missing)"
                )
            else:
                parse_decision(result)
                problem = None
        except PolicyError as exc:
            problem = f"OPA: {exc.message}"
        if problem != self._probe_problem:
            log = structlog.get_logger("switchboard.policy")
            (log.info if problem is None else log.error)(
                "policy.opa_probe", unavailable=problem, revision=self.revision)
        self._probe_problem = problem
        return problem

    async def start(self) -> None:
        """Open the HTTP sessions (in the running loop). OPA being down is not fatal here:
        every decision fails closed until it answers."""
        if self._started:
            return
        await self._client.__aenter__()
        import aiohttp

        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=max(self._timeout_s, 1.0))
        )
        self._started = True
        await self.refresh_revision()
        await self.probe()
        if self.settings.reload:
            self._closing = False
            self._watcher = asyncio.create_task(self._watch(), name="opa-revision")

    async def close(self) -> None:
        if self._watcher is not None:
            # Python 3.11's wait_for can swallow a cancel that lands as the awaited request
            # completes: stop the loop by flag as well, and cancel until the task is done.
            self._closing = True
            while not self._watcher.done():
                self._watcher.cancel()
                await asyncio.wait({self._watcher}, timeout=1.0)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                self._watcher.result()
            self._watcher = None
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._started:
            await self._client.__aexit__(None, None, None)
            self._started = False

    async def refresh_revision(self) -> None:
        """Hash the policy sources OPA serves (id + raw text); keep the last hash on failure."""
        import aiohttp

        if self._session is None:
            return
        try:
            async with self._session.get(self._policies_url) as response:
                response.raise_for_status()
                body = await response.json()
            modules = sorted(
                (str(m.get("id", "")), str(m.get("raw", "")))
                for m in body.get("result", [])
                if isinstance(m, dict)
            )
        except (aiohttp.ClientError, OSError, ValueError, TimeoutError, AttributeError):
            return
        digest = hashlib.sha256()
        for module_id, raw in modules:
            digest.update(module_id.encode() + b"\0" + raw.encode() + b"\0")
        self._content_revision = "opa:sha256:" + digest.hexdigest()[:16]

    async def _watch(self) -> None:
        while not self._closing:
            await asyncio.sleep(max(self.settings.reload_interval_s, 1.0))
            await self.refresh_revision()
            await self.probe()

    async def _query(self, input: dict[str, Any], rule: str = ENTRYPOINT_RULE) -> Any:
        import aiohttp

        try:
            response = await asyncio.wait_for(
                self._client.query_rule(
                    input, ENTRYPOINT_PACKAGE, rule, query_params={"provenance": True}
                ),
                self._timeout_s,
            )
        except TimeoutError as exc:
            raise PolicyError(f"OPA did not answer within {self.settings.timeout_ms} ms") from exc
        except aiohttp.ClientResponseError as exc:
            raise PolicyError(f"OPA answered HTTP {exc.status}: {exc.message}") from exc
        except (aiohttp.ClientError, OSError, ValueError, TypeError) as exc:
            raise PolicyError(f"OPA unreachable: {type(exc).__name__}: {exc}") from exc
        if not isinstance(response, dict):
            raise PolicyError("OPA answered with a non-object body")
        self._bundle_revision = _revision_from(response.get("provenance"), None)
        # OPA omits "result" when the rule is undefined: parse_decision turns None into a deny.
        return response.get("result")

    async def decide(self, input: dict[str, Any]) -> Decision:
        with tracer.start_as_current_span(
                "policy.decide", record_exception=False,
                set_status_on_exception=False) as span, audited(span):
            start = time.perf_counter()
            if not self._started:
                decision = fail_closed("policy engine is not started")
            elif not isinstance(input, dict):
                decision = fail_closed("policy input must be a JSON object")
            else:
                try:
                    action = input.get("action")
                    kind = str(action.get("kind", "")) if isinstance(action, dict) else ""
                    decision = parse_decision(await self._query(input), kind=kind)
                except PolicyError as exc:
                    decision = fail_closed(exc.message)
                    if self._probe_problem is not None:
                        decision = replace(decision, reasons=(*decision.reasons,
                                                              POLICY_UNAVAILABLE))
            return finish(
                decision,
                input=input,
                revision=self.revision,
                engine=self.engine_name,
                latency_ms=(time.perf_counter() - start) * 1000,
                span=span,
            )

    async def advertise(self, input: dict[str, Any]) -> Discovery:
        """``POST /v1/data/switchboard/routing/advertise``; undefined, an error or a malformed
        answer advertises nothing."""
        with tracer.start_as_current_span(
                "policy.advertise", record_exception=False,
                set_status_on_exception=False) as span, audited(span):
            start = time.perf_counter()
            if not self._started:
                result = Discovery(policy_revision=self.revision,
                                   error="policy engine is not started")
            else:
                try:
                    tools, code = parse_advertise(await self._query(input, ADVERTISE_RULE))
                    result = Discovery(tools, code, self.revision)
                except PolicyError as exc:
                    result = Discovery(policy_revision=self.revision,
                                       error=f"{ADVERTISE}: {exc.message}")
            return finish_discovery(result, engine=self.engine_name, span=span,
                                    latency_ms=(time.perf_counter() - start) * 1000)
