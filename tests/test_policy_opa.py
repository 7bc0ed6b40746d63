"""The ``opa`` engine against a real HTTP server on loopback implementing OPA's REST Data API.

The OPA binary cannot be installed here (no wheel, npm or Debian package), so the server in
tests/policy_support.py evaluates the same policies/ directory with regorus behind OPA's
documented request/response shapes. These tests check the client side: the request the engine
sends, agreement with the embedded engine, and fail-closed behaviour when OPA misbehaves.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import policy_support as ps
import pytest

from gateway.errors import ConfigError
from gateway.policy import (
    EmbeddedPolicyEngine,
    OpaPolicyEngine,
    PolicySettings,
    create_policy_engine,
)

tool, host_call, code_run = ps.tool, ps.host_call, ps.code_run


# A regorus Engine dropped on a thread other than its creator's is an "unraisable" error:
# make it fail the test, so thread affinity is checked, not just hoped for.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def server() -> Iterator[ps.OpaRestServer]:
    srv = ps.OpaRestServer().start()
    yield srv
    srv.stop()


@pytest.fixture
async def opa(server: ps.OpaRestServer) -> AsyncIterator[OpaPolicyEngine]:
    server.mode = "ok"
    eng = create_policy_engine(PolicySettings(engine="opa", opa_url=server.url, timeout_ms=300))
    assert isinstance(eng, OpaPolicyEngine)
    await eng.start()
    yield eng
    await eng.close()
    server.mode = "ok"


INPUTS = [
    ("transfer tool finance", tool(ps.FINANCE, "ledger.create_transfer", amount=1)),
    ("transfer tool agent", tool(ps.AGENT, "ledger.create_transfer", amount=1)),
    ("transfer from code", host_call(ps.FINANCE, "ledger.create_transfer")),
    ("read from code", host_call(ps.AGENT, "ledger.get_balance", account="A1")),
    ("read as tool", tool(ps.AGENT, "ledger.list_accounts")),
    ("code run", code_run(ps.AGENT)),
    ("unknown op", tool(ps.AGENT, "ledger.nope")),
]


async def test_agrees_with_embedded(opa: OpaPolicyEngine, server: ps.OpaRestServer) -> None:
    embedded = EmbeddedPolicyEngine(PolicySettings(path=ps.POLICY_DIR, reload=False))
    await embedded.start()
    for label, inp in INPUTS:
        a, b = await opa.decide(inp), await embedded.decide(inp)
        assert (a.route, a.reasons, a.limits, a.obligations, a.mask) == (
            b.route,
            b.reasons,
            b.limits,
            b.obligations,
            b.mask,
        ), label
        assert not a.error_code and a.decision_id
    # The revision is the bundle revision OPA reports with ?provenance=true.
    assert opa.revision == f"opa:{server.bundle.revision}" == f"opa:{embedded.revision}"
    assert a.policy_revision == opa.revision


async def test_revision_without_bundles_hashes_policy_sources(
    server: ps.OpaRestServer, tmp_path: Path
) -> None:
    """`opa run DIR` (the Helm sidecar) reports no bundle revision: the engine hashes the
    sources from GET /v1/policies instead, and notices when they change."""
    server.serve_bundle = False
    settings = PolicySettings(
        engine="opa", opa_url=server.url, timeout_ms=500, reload_interval_s=0.05
    )
    eng = create_policy_engine(settings)
    await eng.start()
    try:
        first = eng.revision
        assert first.startswith("opa:sha256:") and len(first) == len("opa:sha256:") + 16
        d = await eng.decide(code_run(ps.AGENT))
        assert d.policy_revision == first and d.route == "code"
        root = ps.copy_policies(tmp_path)
        rego = root / "switchboard" / "routing.rego"
        rego.write_text(rego.read_text() + "\n# edited\n")
        server.load(root)
        deadline = time.monotonic() + 60.0  # refreshed every max(interval, 1 s); a busy box is slow
        while eng.revision == first and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert eng.revision != first and eng.revision.startswith("opa:sha256:")
    finally:
        await eng.close()
        server.serve_bundle = True
        server.load(ps.POLICY_DIR)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("error500", "HTTP 500"),
        ("undefined", "undefined"),
        ("garbage", "OPA"),
        ("not_object", "must be an object"),
    ],
)
async def test_fail_closed_on_bad_answers(
    opa: OpaPolicyEngine, server: ps.OpaRestServer, mode: str, reason: str
) -> None:
    server.mode = mode
    d = await opa.decide(tool(ps.FINANCE, "ledger.create_transfer"))
    assert d.route == "deny" and d.error_code == "policy_error"
    assert reason in d.reasons[0], d.reasons


async def test_slow_opa_is_bounded(opa: OpaPolicyEngine, server: ps.OpaRestServer) -> None:
    # OPA takes 30 s to answer; the 300 ms budget (no retries) denies long before that: the
    # decision is back while the server is still sitting on the request (an order, not a time).
    server.mode, server.delay_s = "slow", 30.0
    before = server.slow_answers
    d = await opa.decide(tool(ps.FINANCE, "ledger.create_transfer"))
    assert server.slow_answers == before
    assert d.route == "deny" and d.error_code == "policy_error"
    assert "within 300 ms" in d.reasons[0]
    server.mode = "ok"
    await asyncio.sleep(0)


async def test_unreachable_opa_denies() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    eng = create_policy_engine(PolicySettings(engine="opa", opa_url=f"http://127.0.0.1:{port}"))
    await eng.start()
    try:
        d = await eng.decide(code_run(ps.AGENT))
        assert d.route == "deny" and d.error_code == "policy_error"
        assert "unreachable" in d.reasons[0]
    finally:
        await eng.close()


async def test_not_started_and_bad_url() -> None:
    eng = create_policy_engine(PolicySettings(engine="opa"))
    assert eng.revision == "opa:127.0.0.1:8181"  # until OPA reports a bundle revision
    d = await eng.decide(code_run(ps.AGENT))
    assert d.route == "deny" and d.error_code == "policy_error"
    with pytest.raises(ConfigError):
        create_policy_engine(PolicySettings(engine="opa", opa_url="ftp://x"))
