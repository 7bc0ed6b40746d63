"""Waiting principals share the code channel in turn: a flood of runs from one principal
delays another principal's run by about one run, and it can queue only so many (real Deno
processes, real Pyodide; one process, so every run waits for the same one)."""

# ruff: noqa: E402
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.register_assert_rewrite("tests.sandbox_support")

import pytest_asyncio
from waiting import scaled, wait_until

from gateway.errors import ResourceExhausted
from gateway.sandbox import SandboxPool, SandboxSettings
from tests.sandbox_support import req

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]
FLOOD, VICTIM, THIRD = "demo/flood", "demo/victim", "demo/third"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool() -> AsyncIterator[SandboxPool]:
    p = SandboxPool(SandboxSettings(workers=1, queue_timeout_s=scaled(120),
                                    max_queued_per_principal=6))
    await p.start()
    yield p
    await p.close()


class GatedHost:
    """Records the account of each call in order; calls for ``hold`` wait for the gate."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.gate = asyncio.Event()

    async def __call__(self, operation: str, args: dict[str, Any]) -> Any:
        self.order.append(str(args["account"]))
        if args["account"] == "hold":
            await self.gate.wait()
        return {"balance": 1}


def _call(account: str, principal: str) -> Any:
    return req(f"import sdk\nsdk.ledger.get_balance(account={account!r})['balance']",
               principal=principal)


def _waiting(pool: SandboxPool, principal: str) -> int:
    return sum(not f.done() for f in pool._waiters.get(principal, ()))


async def test_a_flooding_principal_does_not_starve_the_others(pool: SandboxPool) -> None:
    host = GatedHost()
    holder = asyncio.create_task(pool.run(_call("hold", FLOOD), host))
    await wait_until(lambda: host.order == ["hold"], timeout_s=scaled(120), what="the holder")
    flood = []
    for i in range(5):
        flood.append(asyncio.create_task(pool.run(_call(f"flood{i}", FLOOD), host)))
        await wait_until(lambda n=i + 1: _waiting(pool, FLOOD) == n, timeout_s=scaled(30),
                         what="the flood queued in order")
    victim = asyncio.create_task(pool.run(_call("victim", VICTIM), host))
    await wait_until(lambda: _waiting(pool, VICTIM) == 1, timeout_s=scaled(30), what="queued")
    third = asyncio.create_task(pool.run(_call("third", THIRD), host))
    await wait_until(lambda: _waiting(pool, THIRD) == 1, timeout_s=scaled(30), what="queued")
    host.gate.set()
    results = await asyncio.wait_for(asyncio.gather(holder, *flood, victim, third), scaled(240))
    assert all(r.ok and r.result == 1 for r in results), [r.error for r in results]
    # First come first served would have put victim and third after all five: each waiting
    # principal is served in turn instead.
    assert host.order == ["hold", "flood0", "victim", "third", "flood1", "flood2", "flood3",
                          "flood4"]
    assert not pool._waiters


async def test_one_principal_can_queue_only_so_many_runs(pool: SandboxPool) -> None:
    host = GatedHost()
    holder = asyncio.create_task(pool.run(_call("hold", FLOOD), host))
    await wait_until(lambda: host.order == ["hold"], timeout_s=scaled(120), what="the holder")
    queued = [asyncio.create_task(pool.run(_call(f"q{i}", FLOOD), host)) for i in range(6)]
    await wait_until(lambda: _waiting(pool, FLOOD) == 6, timeout_s=scaled(30), what="6 queued")
    with pytest.raises(ResourceExhausted) as full:
        await pool.run(_call("one-too-many", FLOOD), host)
    assert full.value.details == {"max_queued_per_principal": 6}
    victim = asyncio.create_task(pool.run(_call("victim", VICTIM), host))  # others still may
    await wait_until(lambda: _waiting(pool, VICTIM) == 1, timeout_s=scaled(30), what="queued")
    queued[0].cancel()  # a waiter that gives up frees its place at once
    await wait_until(lambda: _waiting(pool, FLOOD) == 5, timeout_s=scaled(30), what="forgotten")
    again = asyncio.create_task(pool.run(_call("again", FLOOD), host))
    await wait_until(lambda: _waiting(pool, FLOOD) == 6, timeout_s=scaled(30), what="re-queued")
    host.gate.set()
    results = await asyncio.wait_for(asyncio.gather(holder, *queued[1:], victim, again),
                                     scaled(240))
    assert all(r.ok for r in results), [r.error for r in results]
    assert queued[0].cancelled() and "one-too-many" not in host.order and "q0" not in host.order
    assert host.order.index("victim") == 2  # right after the flood's first queued run
    assert not pool._waiters
