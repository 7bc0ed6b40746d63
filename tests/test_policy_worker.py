"""The embedded engine's policy workers, as real subprocesses: a decision over its deadline or
a worker that dies is a fail-closed deny and the worker is replaced; a reload reaches every
worker; a burst of cache misses is answered; no worker outlives its engine or its gateway."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from waiting import bound, scaled, wait_until, wait_until_sync

from gateway.policy import EmbeddedPolicyEngine, PolicySettings

# Only operation "slow" takes the slow branch (the load probe has no operation): ~10^10 steps.
POLICY = """package switchboard.routing
import rego.v1

slow if {
    input.action.operation == "slow"
    some x in numbers.range(1, 100000)
    some y in numbers.range(1, 100000)
    x * y == -1
}

decision := {"route": "deny", "reasons": ["slow"]} if {
    slow
} else := {"route": "code", "reasons": [data.t.tag]} if {
    input.action.operation
} else := {"route": "deny", "reasons": ["no operation"]}
"""


def _policies(tmp_path: Path, tag: str = "one") -> Path:
    root = tmp_path / "policies"
    (root / "switchboard").mkdir(parents=True, exist_ok=True)
    (root / "t").mkdir(exist_ok=True)
    (root / "switchboard" / "routing.rego").write_text(POLICY)
    (root / "t" / "data.json").write_text(json.dumps({"tag": tag}))
    return root


def _input(operation: str, principal: str = "p") -> dict[str, Any]:
    return {"principal": {"id": principal}, "action": {"kind": "code", "operation": operation},
            "operation": {}, "context": {}}


def running(pid: int) -> bool:
    """The process exists and is not a zombie (a container's init may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
async def engine_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Started engines over :data:`POLICY`, closed after the test."""
    engines: list[EmbeddedPolicyEngine] = []

    async def make(**settings: Any) -> EmbeddedPolicyEngine:
        eng = EmbeddedPolicyEngine(PolicySettings(path=_policies(tmp_path), reload=False,
                                                  **settings))
        await eng.start()
        engines.append(eng)
        return eng

    yield make
    for eng in engines:
        await eng.close()


async def test_a_decision_over_its_deadline_is_denied_and_its_worker_replaced(
        engine_factory: Callable[..., Any]) -> None:
    eng: EmbeddedPolicyEngine = await engine_factory(timeout_ms=1000, workers=1)
    assert eng.workers is not None
    (first,) = eng.workers.pids
    slow = await eng.decide(_input("slow"))
    assert slow.route == "deny" and slow.error_code == "policy_error"
    assert "did not decide within 1000 ms" in slow.reasons[0]
    await wait_until(lambda: not running(first), scaled(60), what="the slow worker killed")
    await wait_until(lambda: eng.workers is not None and eng.workers.pids
                     and first not in eng.workers.pids, scaled(60), what="a replacement")
    served = await eng.decide(_input("fast"))
    assert served.route == "code" and served.reasons == ("one",) and not served.error_code
    assert eng.workers.replaced == 1
    assert eng.unavailable is None


async def test_other_decisions_are_served_while_a_slow_one_runs(
        engine_factory: Callable[..., Any]) -> None:
    eng: EmbeddedPolicyEngine = await engine_factory(timeout_ms=int(scaled(60) * 1000), workers=2)
    slow = asyncio.create_task(eng.decide(_input("slow")))
    try:
        for i in range(5):  # each a cache miss, on the other worker
            served = await eng.decide(_input(f"op{i}"))
            assert served.route == "code" and not served.error_code
        assert not slow.done()
    finally:
        slow.cancel()  # its worker is killed at the deadline or by close(), not left behind


async def test_a_worker_killed_mid_decision_fails_closed_then_recovers(
        engine_factory: Callable[..., Any]) -> None:
    eng: EmbeddedPolicyEngine = await engine_factory(timeout_ms=int(scaled(120) * 1000), workers=1)
    assert eng.workers is not None
    (pid,) = eng.workers.pids
    slow = asyncio.create_task(eng.decide(_input("slow")))
    await asyncio.sleep(0.2)  # let it reach the worker (if not, the kill still fails it)
    os.kill(pid, signal.SIGKILL)
    denied = await asyncio.wait_for(slow, scaled(60))
    assert denied.route == "deny" and denied.error_code == "policy_error"
    assert "policy worker exited during the decision" in denied.reasons[0]
    served = await asyncio.wait_for(eng.decide(_input("fast")), scaled(60))
    assert served.route == "code" and served.reasons == ("one",)
    assert pid not in eng.workers.pids and eng.workers.replaced == 1


async def test_the_deadline_counts_cpu_time_not_time_spent_waiting_for_a_core(
        engine_factory: Callable[..., Any]) -> None:
    """A stopped worker (as if starved of CPU on a busy machine) is not killed when the
    deadline's wall time passes, only at the wall cap (10x); resumed in time, it answers."""
    eng: EmbeddedPolicyEngine = await engine_factory(timeout_ms=1000, workers=1)
    assert eng.workers is not None
    (pid,) = eng.workers.pids
    os.kill(pid, signal.SIGSTOP)
    try:
        waiting = asyncio.create_task(eng.decide(_input("fast")))
        await asyncio.sleep(1.5)  # past 1000 ms of wall time, well before the 10 s cap
    finally:
        os.kill(pid, signal.SIGCONT)
    served = await asyncio.wait_for(waiting, scaled(60))
    assert served.route == "code" and not served.error_code
    assert eng.workers.pids == [pid] and eng.workers.replaced == 0
    os.kill(pid, signal.SIGSTOP)  # never resumed: the wall cap ends it (SIGKILL still works)
    capped = await asyncio.wait_for(eng.decide(_input("other")), scaled(120))
    assert capped.route == "deny" and "did not decide within 1000 ms" in capped.reasons[0]
    await wait_until(lambda: not running(pid), scaled(60), what="the stopped worker killed")


async def test_a_reload_reaches_every_worker_and_no_old_decision_is_served(
        engine_factory: Callable[..., Any], tmp_path: Path) -> None:
    eng: EmbeddedPolicyEngine = await engine_factory(workers=2)
    before = await eng.decide(_input("fast"))
    assert before.reasons == ("one",)
    old = eng.revision
    _policies(tmp_path, tag="two")
    assert await eng.reload_now()
    assert eng.revision != old
    assert eng.workers is not None
    assert {w.revision for w in eng.workers._workers} == {eng.revision}
    answers = await asyncio.gather(*(eng.decide(_input("fast", f"p{i}")) for i in range(20)),
                                   eng.decide(_input("fast")))
    assert {a.reasons for a in answers} == {("two",)}
    assert {a.policy_revision for a in answers} == {eng.revision}


async def test_a_reload_that_does_not_compile_is_rejected(
        engine_factory: Callable[..., Any], tmp_path: Path) -> None:
    eng: EmbeddedPolicyEngine = await engine_factory(workers=1)
    old = eng.revision
    (tmp_path / "policies" / "switchboard" / "broken.rego").write_text(
        "package switchboard.routing\nimport rego.v1\nbroken if { undefined_fn(1) }\n")
    assert not await eng.reload_now()
    assert eng.revision == old and eng.last_reload_error
    served = await eng.decide(_input("fast"))
    assert served.route == "code" and served.policy_revision == old


async def test_a_burst_of_cache_misses_is_all_answered(
        engine_factory: Callable[..., Any]) -> None:
    eng: EmbeddedPolicyEngine = await engine_factory(workers=2, timeout_ms=10000)
    answers = await asyncio.gather(*(eng.decide(_input(f"op{i}", f"p{i}")) for i in range(300)))
    assert all(a.route == "code" and a.reasons == ("one",) and not a.error_code
               for a in answers)
    found = await eng.advertise({"principal": {}, "operations": []})
    assert found.error is not None and "advertise is undefined" in found.error


async def test_without_a_worker_every_decision_is_denied_and_readiness_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.policy import workerpool

    monkeypatch.setattr(workerpool, "worker_command",
                        lambda: [sys.executable, "-c", "raise SystemExit(1)"])
    eng = EmbeddedPolicyEngine(PolicySettings(path=_policies(tmp_path), reload=False))
    await eng.start()
    try:
        assert eng.unavailable and "no policy worker is running" in eng.unavailable
        denied = await eng.decide(_input("fast"))
        assert denied.route == "deny" and denied.error_code == "policy_error"
        assert "no policy worker is running" in denied.reasons[0]
    finally:
        await eng.close()


async def test_close_stops_every_worker(engine_factory: Callable[..., Any]) -> None:
    eng: EmbeddedPolicyEngine = await engine_factory(workers=2)
    assert eng.workers is not None
    pids = eng.workers.pids
    assert len(pids) == 2 and all(running(p) for p in pids)
    await eng.close()
    await wait_until(lambda: not any(running(p) for p in pids), scaled(60),
                     what="workers gone after close()")


HOLDER = """
import asyncio, sys
from pathlib import Path
from gateway.policy import EmbeddedPolicyEngine, PolicySettings

async def main():
    eng = EmbeddedPolicyEngine(PolicySettings(path=Path(sys.argv[1]), reload=False,
                                              timeout_ms=600000))
    await eng.start()
    print("PIDS", *eng.workers.pids, flush=True)
    await eng.decide({"principal": {}, "action": {"kind": "code", "operation": "slow"},
                      "operation": {}, "context": {}})

asyncio.run(main())
"""


def test_a_killed_gateway_leaves_no_worker_behind(tmp_path: Path) -> None:
    """SIGKILL the process holding the engine while a worker is busy with a slow rule (it
    never reads its stdin again) and while another idles on stdin: both end."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(_policies(tmp_path))],
                            stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stdout is not None
        line = ""
        while not line.startswith("PIDS"):  # structlog writes to stdout too
            line = proc.stdout.readline()
            assert line, "the engine did not start"
        pids = [int(p) for p in line.split()[1:]]
        assert len(pids) == 2 and all(running(p) for p in pids)
    finally:
        proc.kill()
        proc.wait(scaled(60))
    wait_until_sync(lambda: not any(running(p) for p in pids), scaled(60),
                    what="workers gone after their gateway was SIGKILLed")


# A rule that is slow only on the load probe's input (it carries no operation): ~10^10 steps.
PROBE_SLOW = """package switchboard.routing
import rego.v1

probe_slow if {
    not input.action.operation
    some x in numbers.range(1, 100000)
    some y in numbers.range(1, 100000)
    x * y == -1
}
"""
# regorus's parser is exponential in nested brackets (measured: 14 levels 0.7 s, 18 levels
# 17 s): 26 levels is hours of compiling, before any rule is evaluated.
COMPILE_SLOW = ("package switchboard.slow\nimport rego.v1\n\ny := "
                + "[" * 26 + "1" + "]" * 26 + "\n")
_SLOW_REVISIONS = {"probe": ("switchboard/probe_slow.rego", PROBE_SLOW),
                   "compile": ("switchboard/slow.rego", COMPILE_SLOW)}


async def _reload_while_serving(eng: EmbeddedPolicyEngine) -> tuple[bool, int]:
    """Reload, answering cache misses meanwhile; (what reload_now said, how many decisions of
    the old revision were answered while the reload was still being checked)."""
    reload = asyncio.create_task(eng.reload_now())
    during = 0
    i = 0
    while not reload.done():
        i += 1
        served = await asyncio.wait_for(eng.decide(_input(f"op{i}", f"during{i}")), scaled(60))
        assert served.route == "code" and served.reasons == ("one",), served
        if not reload.done():
            during += 1
        await asyncio.sleep(0.01)
    return await reload, during


async def _reaches_every_worker(eng: EmbeddedPolicyEngine, tmp_path: Path, size: int) -> None:
    """Once the refused revision's files are fixed, a reload reaches every worker (the
    replacement of the one that was killed included) and only the new revision answers."""
    assert eng.workers is not None
    await wait_until(lambda: eng.workers is not None and len(eng.workers.pids) == size,
                     scaled(60), what="every worker running again")
    for rel in _SLOW_REVISIONS.values():
        (tmp_path / "policies" / rel[0]).unlink(missing_ok=True)
    _policies(tmp_path, tag="two")
    old = eng.revision
    assert await asyncio.wait_for(eng.reload_now(), scaled(120))
    assert eng.revision != old and eng.unavailable is None
    assert len(eng.workers._workers) == size
    assert {w.revision for w in eng.workers._workers} == {eng.revision}
    answers = await asyncio.gather(*(eng.decide(_input("fast", f"p{i}")) for i in range(20)))
    assert {a.reasons for a in answers} == {("two",)}
    assert {a.policy_revision for a in answers} == {eng.revision}


@pytest.mark.parametrize("slow", ["probe", "compile"])
async def test_a_reload_slow_to_check_is_refused_in_bounded_time_and_the_old_one_serves(
        engine_factory: Callable[..., Any], tmp_path: Path, slow: str) -> None:
    """A revision whose probe never ends (a rule slow on the probe input) or whose compile
    never ends (nested brackets) is refused once its check has spent 10 x timeout_ms of CPU
    in a worker; the gateway's loop answered decisions of the old revision all along (before
    the check moved into a worker, it compiled and probed on the loop: nothing was answered
    until it ended, hours later)."""
    from gateway.policy.workerpool import LOAD_FACTOR, WALL_FACTOR

    eng: EmbeddedPolicyEngine = await engine_factory(timeout_ms=500, workers=2)
    assert eng.workers is not None
    old, pids = eng.revision, eng.workers.pids
    rel, source = _SLOW_REVISIONS[slow]
    (tmp_path / "policies" / rel).write_text(source)
    start = asyncio.get_running_loop().time()
    changed, during = await asyncio.wait_for(_reload_while_serving(eng), scaled(300))
    elapsed = asyncio.get_running_loop().time() - start
    assert not changed and eng.revision == old
    assert elapsed < bound(LOAD_FACTOR * WALL_FACTOR * 0.5)
    assert during > 0  # the loop was never stalled by the check
    assert eng.last_reload_error and (
        f"did not compile and probe within {LOAD_FACTOR * 500} ms" in eng.last_reload_error)
    served = await eng.decide(_input("fast"))
    assert served.route == "code" and served.reasons == ("one",)
    assert served.policy_revision == old and eng.unavailable is None
    await wait_until(lambda: eng.workers is not None and eng.workers.replaced >= 1
                     and not set(pids) <= set(eng.workers.pids), scaled(60),
                     what="the checking worker killed and replaced")
    await _reaches_every_worker(eng, tmp_path, 2)


async def test_a_worker_crash_while_compiling_a_reload_is_refused(
        engine_factory: Callable[..., Any], tmp_path: Path) -> None:
    """An engine crash while compiling, simulated: the worker checking a revision that takes
    hours to compile is sent SIGSEGV (what a segfault in regorus delivers) mid-compile. The
    revision is refused, the old one keeps answering, and the worker is replaced."""
    eng: EmbeddedPolicyEngine = await engine_factory(timeout_ms=int(scaled(60) * 1000),
                                                     workers=2)
    assert eng.workers is not None
    workers = eng.workers
    old = eng.revision
    (tmp_path / "policies" / _SLOW_REVISIONS["compile"][0]).write_text(COMPILE_SLOW)
    reload = asyncio.create_task(eng.reload_now())
    busy = await wait_until(lambda: [w.pid for w in workers._workers if w.request is not None],
                            scaled(60), what="a worker checking the revision")
    await asyncio.sleep(0.2)  # well inside the compile (it takes hours)
    os.kill(busy[0], signal.SIGSEGV)
    assert not await asyncio.wait_for(reload, scaled(60))
    assert eng.revision == old and eng.last_reload_error
    assert "exited while compiling and probing" in eng.last_reload_error
    assert "SIGSEGV" in eng.last_reload_error
    served = await eng.decide(_input("fast"))
    assert served.route == "code" and served.reasons == ("one",) and served.policy_revision == old
    await wait_until(lambda: busy[0] not in workers.pids and len(workers.pids) == 2,
                     scaled(60), what="the crashed worker replaced")
    await _reaches_every_worker(eng, tmp_path, 2)


async def test_at_start_a_revision_whose_check_overruns_serves_nothing_and_denies(
        tmp_path: Path) -> None:
    """The same refusal at start: the engine starts (bounded), nothing serves, readiness says
    why and every decision is denied; a fixed policy is picked up by the next reload."""
    root = _policies(tmp_path)
    (root / _SLOW_REVISIONS["probe"][0]).write_text(PROBE_SLOW)
    eng = EmbeddedPolicyEngine(PolicySettings(path=root, reload=False, timeout_ms=500,
                                              workers=1))
    try:
        await asyncio.wait_for(eng.start(), scaled(120))
        assert eng.revision == ""
        assert eng.unavailable and "did not compile and probe within 5000 ms" in eng.unavailable
        denied = await eng.decide(_input("fast"))
        assert denied.route == "deny" and denied.error_code == "policy_error"
        assert "did not compile and probe" in denied.reasons[0]
        found = await eng.advertise({"principal": {}, "operations": []})
        assert found.error and "did not compile and probe" in found.error
        (root / _SLOW_REVISIONS["probe"][0]).unlink()  # the replacement worker may be starting
        assert await asyncio.wait_for(eng.reload_now(), scaled(120))
        assert eng.unavailable is None
        served = await eng.decide(_input("fast"))
        assert served.route == "code" and served.reasons == ("one",)
    finally:
        await eng.close()


async def test_at_start_a_policy_that_does_not_compile_still_refuses_to_start(
        tmp_path: Path) -> None:
    """The worker's verdict on a bad policy is the engine's: start raises, no worker left."""
    from gateway.errors import PolicyError

    root = _policies(tmp_path)
    (root / "switchboard" / "broken.rego").write_text(
        "package switchboard.routing\nimport rego.v1\nbroken if { undefined_fn(1) }\n")
    eng = EmbeddedPolicyEngine(PolicySettings(path=root, reload=False, workers=1))
    with pytest.raises(PolicyError, match="undefined_fn"):
        await eng.start()
    assert eng.workers is None


def test_every_frame_is_documented_with_its_fields() -> None:
    """worker_protocol.py declares the frames; PROTOCOL.md's table must say the same."""
    from gateway.policy.worker_protocol import GATEWAY_FRAMES, WORKER_FRAMES

    doc = (Path(__file__).resolve().parents[1] / "gateway" / "policy" / "PROTOCOL.md"
           ).read_text()
    rows = {}
    for line in doc.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    for direction, frames in (("gateway → worker", GATEWAY_FRAMES),
                              ("worker → gateway", WORKER_FRAMES)):
        for name, fields in frames.items():
            assert name in rows, f"PROTOCOL.md lacks frame {name!r}"
            assert rows[name][0] == direction, name
            documented = [f.strip().strip("`") for f in rows[name][1].split(",")]
            assert documented == list(fields), (name, documented, fields)
    assert set(rows) == set(GATEWAY_FRAMES) | set(WORKER_FRAMES)
