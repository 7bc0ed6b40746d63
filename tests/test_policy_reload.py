"""Hot reload of the embedded engine: edits to .rego or data files serve within 2 s, a bad
edit is rejected while the previous revision keeps serving, test files do not count."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import policy_support as ps
import pytest
import structlog

from gateway.policy import EmbeddedPolicyEngine, PolicySettings

# A regorus Engine dropped on a thread other than its creator's is an "unraisable" error:
# make it fail the test, so thread affinity is checked, not just hoped for.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedPolicyEngine, Path]]:
    root = ps.copy_policies(tmp_path)
    eng = EmbeddedPolicyEngine(PolicySettings(path=root, reload=True, reload_interval_s=0.1))
    await eng.start()
    yield eng, root
    await eng.close()


async def wait_for_revision_change(eng: EmbeddedPolicyEngine, old: str, within: float) -> float:
    start = time.monotonic()
    while eng.revision == old:
        if time.monotonic() - start > within:
            raise AssertionError(f"revision still {old} after {within}s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_data_edit_takes_effect(live: tuple[EmbeddedPolicyEngine, Path]) -> None:
    eng, root = live
    inp = ps.host_call(ps.AGENT, "ledger.get_balance")
    before = await eng.decide(inp)
    assert before.route == "code"
    data_file = root / "switchboard" / "data.json"
    data = json.loads(data_file.read_text())
    data["tenants"]["demo"]["backends"] = ["workspace"]
    data_file.write_text(json.dumps(data))
    took = await wait_for_revision_change(eng, before.policy_revision, within=2.0)
    after = await eng.decide(inp)
    assert after.route == "deny" and 'may not use backend "ledger"' in after.reasons[0]
    assert after.policy_revision == eng.revision != before.policy_revision
    assert took < 2.0


async def test_rego_edit_takes_effect(live: tuple[EmbeddedPolicyEngine, Path]) -> None:
    eng, root = live
    old = eng.revision
    rego = root / "switchboard" / "routing.rego"
    rego.write_text(rego.read_text().replace('"code run allowed"', '"code run allowed (v2)"'))
    await wait_for_revision_change(eng, old, within=2.0)
    assert (await eng.decide(ps.code_run(ps.AGENT))).reasons == ("code run allowed (v2)",)


async def test_bad_edit_rejected_previous_keeps_serving(
    live: tuple[EmbeddedPolicyEngine, Path],
) -> None:
    eng, root = live
    good = eng.revision
    rego = root / "switchboard" / "routing.rego"
    original = rego.read_text()
    with structlog.testing.capture_logs() as logs:
        rego.write_text(original + "\nbroken := {\n")
        deadline = time.monotonic() + 2.0
        while eng.last_reload_error is None and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert eng.last_reload_error is not None
        assert eng.revision == good
        d = await eng.decide(ps.tool(ps.FINANCE, "ledger.create_transfer"))
        assert d.route == "tool" and d.policy_revision == good
    assert any(e["event"] == "policy.reload_rejected" for e in logs)
    # Compiles but fails at evaluation (unsafe variable): also rejected by the load-time probe.
    rego.write_text(
        original.replace('default route := "deny"', 'default route := "deny"\n\nbad := y + 1')
    )
    await eng.reload_now()
    assert eng.revision == good and "unsafe" in (eng.last_reload_error or "")
    # A data file that does not parse is rejected too.
    rego.write_text(original)
    (root / "switchboard" / "data.json").write_text("{not json")
    await eng.reload_now()
    assert eng.revision == good and "invalid data file" in (eng.last_reload_error or "")
    # Nested deeper than the JSON parser recurses: rejected with a reason, never a crash.
    (root / "switchboard" / "data.json").write_text(
        '{"switchboard": ' + "[" * 5000 + "]" * 5000 + "}")
    await eng.reload_now()
    assert eng.revision == good and "nested too deeply" in (eng.last_reload_error or "")


async def test_fix_after_bad_edit_is_picked_up(live: tuple[EmbeddedPolicyEngine, Path]) -> None:
    eng, root = live
    good = eng.revision
    rego = root / "switchboard" / "routing.rego"
    original = rego.read_text()
    rego.write_text(original + "\nbroken := {\n")
    await eng.reload_now()
    assert eng.revision == good
    rego.write_text(original.replace('"code run allowed"', '"fixed"'))
    await wait_for_revision_change(eng, good, within=2.0)
    assert eng.last_reload_error is None
    assert (await eng.decide(ps.code_run(ps.AGENT))).reasons == ("fixed",)


async def test_in_flight_evaluator_unaffected_by_swap(
    live: tuple[EmbeddedPolicyEngine, Path],
) -> None:
    eng, root = live
    held = eng._evaluator  # what a decision in progress holds
    assert held is not None
    old = eng.revision
    data_file = root / "switchboard" / "data.json"
    data = json.loads(data_file.read_text())
    data["grants"]["payments"] = ["nobody"]
    data_file.write_text(json.dumps(data))
    assert await eng.reload_now()
    assert eng.revision != old
    inp = ps.tool(ps.FINANCE, "ledger.create_transfer")
    assert held.decide(inp).route == "tool"  # the old revision still answers consistently
    assert (await eng.decide(inp)).route == "deny"


async def test_test_file_edits_do_not_change_revision(
    live: tuple[EmbeddedPolicyEngine, Path],
) -> None:
    eng, root = live
    old = eng.revision
    t = root / "switchboard" / "routing_test.rego"
    t.write_text(t.read_text() + "\ntest_extra if true\n")
    assert not await eng.reload_now()
    assert eng.revision == old
