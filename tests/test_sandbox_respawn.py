"""A sandbox process killed at any point of its life is replaced, and the pool keeps serving.

A process can end while it is idle, starting, running code, waiting on a host call or
starting a fresh interpreter after a run, and by its own death, the host's kill or both at
once. Whichever path sees the end first, the pool must learn of it and start a new process:
a slot lost silently would shrink the code channel until it serves nobody. One process, so
a lost slot cannot hide behind another (real Deno processes, real Pyodide).
"""

# ruff: noqa: E402
from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

pytest.register_assert_rewrite("tests.sandbox_support")

import pytest_asyncio
from waiting import scaled, wait_until

from gateway.errors import SandboxError, SessionLost
from gateway.sandbox import SandboxPool, SandboxSettings
from gateway.sandbox.process import DenoProcess
from tests.sandbox_support import req

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool() -> AsyncIterator[SandboxPool]:
    p = SandboxPool(SandboxSettings(workers=1, queue_timeout_s=scaled(120)))
    await p.start()
    yield p
    await p.close()


def _current(pool: SandboxPool) -> DenoProcess:
    (proc,) = [p for p in pool._slots if p is not None]
    return proc


def _sigkill(proc: DenoProcess) -> None:
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)


def _reaped(pid: int) -> bool:
    return not os.path.exists(f"/proc/{pid}")


async def _replaced_and_serving(pool: SandboxPool, victim: DenoProcess) -> None:
    """The victim is gone for good and a new process in its slot runs code."""
    await wait_until(lambda: any(p is not None and p is not victim and p.ready and not p.dead
                                 for p in pool._slots),
                     timeout_s=scaled(120), what="the killed process replaced by a ready one")
    assert victim.dead and victim.exited.is_set()
    res = await pool.run(req("6 * 7"), _host)
    assert res.ok and res.result == 42, res.error
    assert victim.pid is not None
    await wait_until(lambda: _reaped(victim.pid or 0), timeout_s=scaled(60),
                     what="the killed process reaped")


def _pool_processes(pool: SandboxPool) -> set[int]:
    """The pids of every process running from this pool's private directory."""
    found = set()
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read()
        except OSError:
            continue
        if str(pool._tmp).encode() in argv:
            found.add(int(entry))
    return found


async def _host(operation: str, args: dict[str, Any]) -> Any:
    return {"account": args.get("account"), "balance": 1}


async def test_killed_while_idle(pool: SandboxPool) -> None:
    await pool.run(req("1"), _host)
    await wait_until(lambda: _current(pool).ready, timeout_s=scaled(120), what="idle")
    victim = _current(pool)
    _sigkill(victim)
    await _replaced_and_serving(pool, victim)


@pytest.mark.parametrize("slow_reap", [False, True])
async def test_killed_while_it_starts_a_fresh_interpreter(
        pool: SandboxPool, monkeypatch: pytest.MonkeyPatch, slow_reap: bool) -> None:
    """The case that lost a slot: the read loop saw the end first and was still waiting for
    the process to be reaped (slow on a loaded machine) when the failed recycle's own kill
    cancelled it, and nothing else told the pool. ``slow_reap`` makes that first wait long."""
    send, kill = DenoProcess.send, DenoProcess.kill
    killed: list[DenoProcess] = []
    kills: list[DenoProcess] = []

    def send_then_die(self: DenoProcess, msg: dict[str, Any]) -> None:
        send(self, msg)
        if msg.get("t") == "recycle" and not killed:  # it now waits for the interpreter
            killed.append(self)
            _sigkill(self)

    async def first_kill_slow(self: DenoProcess) -> None:
        kills.append(self)
        if slow_reap and kills.count(self) == 1:
            await asyncio.sleep(0.5)
        await kill(self)

    monkeypatch.setattr(DenoProcess, "send", send_then_die)
    monkeypatch.setattr(DenoProcess, "kill", first_kill_slow)
    await pool.run(req("1"), _host)
    await wait_until(lambda: killed, timeout_s=scaled(60), what="the recycle")
    await _replaced_and_serving(pool, killed[0])
    assert kills.count(killed[0]) >= 2  # the dying read loop's and the failed recycle's


async def test_killed_while_running_code(pool: SandboxPool) -> None:
    task = asyncio.create_task(pool.run(req("while True: pass", timeout_ms=600_000), _host))
    await wait_until(lambda: _current(pool).active, timeout_s=scaled(120), what="the run")
    victim = _current(pool)
    _sigkill(victim)
    with pytest.raises(SandboxError):
        await task
    await _replaced_and_serving(pool, victim)


async def test_killed_during_a_host_call(pool: SandboxPool) -> None:
    victims: list[DenoProcess] = []

    async def host(operation: str, args: dict[str, Any]) -> Any:
        victims.append(_current(pool))
        _sigkill(victims[0])
        await asyncio.sleep(0.2)
        return {"balance": 1}

    with pytest.raises(SandboxError):
        await pool.run(req("import sdk\nsdk.ledger.get_balance(account='A1')"), host)
    await _replaced_and_serving(pool, victims[0])


@pytest.mark.parametrize("how", ["host kill, then SIGKILL", "SIGKILL, then host kill",
                                 "host kill cancelled while it waits"])
async def test_killed_from_two_sides(pool: SandboxPool, how: str) -> None:
    await wait_until(lambda: _current(pool).ready, timeout_s=scaled(120), what="idle")
    victim = _current(pool)
    steps: dict[str, Callable[[], Awaitable[Any]]] = {
        "host kill, then SIGKILL": lambda: asyncio.gather(victim.kill(), _async(_sigkill,
                                                                                victim)),
        "SIGKILL, then host kill": lambda: asyncio.gather(_async(_sigkill, victim),
                                                          victim.kill()),
        "host kill cancelled while it waits": lambda: _cancelled_kill(victim),
    }
    await steps[how]()
    await _replaced_and_serving(pool, victim)


async def _async(fn: Callable[[DenoProcess], None], proc: DenoProcess) -> None:
    fn(proc)


async def _cancelled_kill(proc: DenoProcess) -> None:
    task = asyncio.create_task(proc.kill())
    await asyncio.sleep(0)  # the kill has sent SIGKILL and waits for the process
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_killed_while_it_starts(pool: SandboxPool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replacement that dies before it is ready is itself replaced (with a backoff)."""
    start = DenoProcess.start
    doomed: list[DenoProcess] = []

    async def start_then_die(self: DenoProcess, timeout_s: float) -> None:
        if not doomed:
            doomed.append(self)
            starting = asyncio.create_task(start(self, timeout_s))
            await wait_until(lambda: self.pid is not None, timeout_s=scaled(60), what="spawn")
            _sigkill(self)
            await starting
            return
        await start(self, timeout_s)

    monkeypatch.setattr(DenoProcess, "start", start_then_die)
    await wait_until(lambda: _current(pool).ready, timeout_s=scaled(120), what="idle")
    victim = _current(pool)
    _sigkill(victim)
    await wait_until(lambda: doomed, timeout_s=scaled(60), what="the replacement's start")
    await _replaced_and_serving(pool, victim)
    assert doomed[0] not in pool._slots and doomed[0].dead


async def test_after_many_kills_one_process_is_left_and_none_leaked(pool: SandboxPool) -> None:
    """Every process the pool started and lost is reaped: of the processes running from this
    pool's private directory, only the live one remains."""
    respawns = pool.stats()["respawns"]
    for _ in range(3):
        await wait_until(lambda: _current(pool).ready, timeout_s=scaled(120), what="idle")
        victim = _current(pool)
        _sigkill(victim)
        await _replaced_and_serving(pool, victim)
    assert pool.stats()["alive"] == 1 and pool.stats()["respawns"] == respawns + 3

    await wait_until(lambda: _pool_processes(pool) == {_current(pool).pid}, timeout_s=scaled(60),
                     what="no process of this pool but the live one")


async def test_random_kills_among_concurrent_runs_never_hang_or_lose_the_process(
        pool: SandboxPool) -> None:
    """A seeded storm: runs of every kind in flight while the process is SIGKILLed, killed by
    the host, or a run is cancelled, at random moments. Every run ends (with its result or an
    infrastructure error), and the pool ends with one live process and nothing leaked."""
    rng = random.Random(20261202)
    sources = ["6 * 7", "import sdk\nsdk.ledger.get_balance(account='A1')['balance']",
               "import time\ntime.sleep(0.3)\n'slept'", "sum(range(10**6))"]
    outcomes: dict[str, int] = {}
    for _ in range(10):
        runs = [asyncio.create_task(pool.run(req(rng.choice(sources)), _host))
                for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.5:  # now, or once a run is under way
            await asyncio.sleep(rng.uniform(0, 0.3))
        else:
            with contextlib.suppress(AssertionError):
                await wait_until(lambda: any(p is not None and p.active for p in pool._slots),
                                 timeout_s=scaled(10), interval=0.01, what="a busy process")
        live = [p for p in pool._slots if p is not None and not p.dead and p.pid]
        what = rng.choice(["sigkill", "host kill", "cancel", "nothing"])
        if what == "sigkill" and live:
            _sigkill(live[0])
        elif what == "host kill" and live:
            await live[0].kill()
        elif what == "cancel":
            rng.choice(runs).cancel()
        done, pending = await asyncio.wait(runs, timeout=scaled(240))
        assert not pending, "a run hung"
        for task in done:
            if task.cancelled():
                kind = "cancelled"
            elif task.exception() is not None:
                exc = task.exception()
                assert isinstance(exc, SandboxError), repr(exc)
                kind = type(exc).__name__
            else:
                res = task.result()
                assert res.ok, res.error
                kind = "ok"
            outcomes[kind] = outcomes.get(kind, 0) + 1
    assert outcomes.get("ok", 0) > 0 and len(outcomes) > 1, outcomes  # the storm hit runs
    await wait_until(lambda: any(p is not None and p.ready and not p.dead for p in pool._slots),
                     timeout_s=scaled(120), what="a ready process after the storm")
    res = await pool.run(req("6 * 7"), _host)
    assert res.ok and res.result == 42, res.error
    assert pool.stats()["alive"] == 1 and pool.stats()["active_runs"] == 0
    assert not pool._waiters  # every waiter was served or gave up and was forgotten
    await wait_until(lambda: _pool_processes(pool) == {_current(pool).pid},
                     timeout_s=scaled(60), what="no process of this pool but the live one")


async def test_a_session_whose_process_dies_between_runs_says_so_once(pool: SandboxPool) -> None:
    """Nobody was running when the session's process ended, so nobody was told: its next run
    fails with session_lost (not a silently fresh interpreter without the variables the
    agent built), and the one after starts a fresh session."""
    key = ("demo/agent-1", "dies-idle")
    r = await pool.run(req("state = 41\nstate", session="dies-idle"), _host)
    assert r.ok and r.result == 41
    victim = pool._sessions[key].proc
    _sigkill(victim)
    await wait_until(lambda: key not in pool._sessions, timeout_s=scaled(60),
                     what="the session dropped with its process")
    with pytest.raises(SessionLost) as lost:
        await pool.run(req("state", session="dies-idle"), _host)
    assert lost.value.field == "session_id" and "between its runs" in lost.value.message
    fresh = await pool.run(req("'state' in globals()", session="dies-idle"), _host)
    assert fresh.ok and fresh.result is False
    other = await pool.run(req("6 * 7"), _host)  # the isolated slot was never involved
    assert other.ok and other.result == 42
    await wait_until(lambda: _reaped(victim.pid or 0), timeout_s=scaled(60), what="reaped")


async def _spinning_session(pool: SandboxPool, name: str
                            ) -> tuple[tuple[str, str], asyncio.Task[Any]]:
    """A session ``name`` holding ``state = 1``, and a run of it under way that never ends."""
    key = ("demo/agent-1", name)
    await pool.run(req("state = 1", session=name), _host)
    task = asyncio.create_task(pool.run(req("while True: pass", session=name,
                                            timeout_ms=600_000), _host))
    await wait_until(lambda: key in pool._sessions and pool._sessions[key].proc.active,
                     timeout_s=scaled(60), what="the session's run")
    return key, task


async def test_a_session_whose_process_dies_during_a_run_tells_that_run(
        pool: SandboxPool) -> None:
    """The run in flight gets the crash; the session ended with it (docs/sandbox.md), so the
    next run starts afresh without a second error."""
    key, task = await _spinning_session(pool, "dies-running")
    _sigkill(pool._sessions[key].proc)
    with pytest.raises(SandboxError):
        await task
    fresh = await pool.run(req("'state' in globals()", session="dies-running"), _host)
    assert fresh.ok and fresh.result is False


async def test_a_run_that_waited_for_a_session_that_then_ended_is_told(
        pool: SandboxPool) -> None:
    """Runs in one session are serialised; if the session ends while one waits (here its
    process dies under the run before it), the waiting run fails with session_lost instead
    of running code that expects the session's state in a fresh interpreter."""
    key, first = await _spinning_session(pool, "ends-while-queued")
    sess = pool._sessions[key]
    queued = asyncio.create_task(pool.run(req("state + 1", session="ends-while-queued"), _host))
    await wait_until(lambda: bool(getattr(sess.lock, "_waiters", None)), timeout_s=scaled(30),
                     what="the second run waiting for the session")
    _sigkill(sess.proc)
    with pytest.raises(SandboxError):
        await first
    with pytest.raises(SessionLost) as lost:
        await queued
    assert "while this run waited" in lost.value.message
    fresh = await pool.run(req("'state' in globals()", session="ends-while-queued"), _host)
    assert fresh.ok and fresh.result is False
