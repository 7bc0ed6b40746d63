"""Code sessions across replicas: a run that lands on a replica not holding its session fails
with a stable code, never with a silently fresh interpreter.

Two real sandbox pools (two "replicas") share one real SQLite idempotency store file, the way
pods share PostgreSQL or Redis; the end-to-end gRPC mapping is checked through a real server.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from gateway.errors import SessionElsewhere, SessionLost
from gateway.grpc_status import grpc_status_for
from gateway.sandbox import RunResult, SandboxPool, SandboxSettings, principal_key
from gateway.sandbox.registry import SessionRegistry
from gateway.tools.idempotency import new_owner_id
from gateway.tools.sqlite_store import SQLiteIdempotencyStore
from tests.sandbox_support import Host, req

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]
WHO = principal_key("demo", "agent-1")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def replicas(tmp_path_factory: pytest.TempPathFactory
                   ) -> AsyncIterator[tuple[SandboxPool, SandboxPool, SQLiteIdempotencyStore]]:
    db = Path(tmp_path_factory.mktemp("sessions")) / "idempotency.db"
    store_a, store_b = SQLiteIdempotencyStore(db), SQLiteIdempotencyStore(db)
    a = SandboxPool(SandboxSettings(workers=1), SessionRegistry(store_a, new_owner_id(), 60))
    b = SandboxPool(SandboxSettings(workers=1), SessionRegistry(store_b, new_owner_id(), 60))
    await asyncio.gather(a.start(), b.start())
    yield a, b, store_b
    await asyncio.gather(a.close(), b.close())
    await store_a.aclose()
    await store_b.aclose()


async def _once_free(pool: SandboxPool, source: str, session: str) -> RunResult:
    """Run ``source`` in ``session`` on ``pool`` once the session's id is free there (its
    claim is released in the background): SessionElsewhere until then, for at most 60 s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        try:
            return await pool.run(req(source, principal=WHO, session=session), Host())
        except SessionElsewhere:
            assert loop.time() < deadline
            await asyncio.sleep(0.05)


async def test_a_misrouted_session_run_names_the_problem(
        replicas: tuple[SandboxPool, SandboxPool, SQLiteIdempotencyStore]) -> None:
    a, b, _ = replicas
    r = await a.run(req("total = 40\ntotal", principal=WHO, session="notes"), Host())
    assert r.ok and r.result == 40
    with pytest.raises(SessionElsewhere) as info:
        await b.run(req("total + 2", principal=WHO, session="notes"), Host())
    assert info.value.field == "session_id" and grpc_status_for(info.value).name == \
        "FAILED_PRECONDITION"
    assert b.stats()["sessions"] == 0  # nothing was started on the wrong replica
    # The holder keeps serving it, with its state.
    r = await a.run(req("total + 2", principal=WHO, session="notes"), Host())
    assert r.ok and r.result == 42
    # Another principal's session of the same name is a different session.
    other = principal_key("demo", "agent-2")
    r = await b.run(req("'mine'", principal=other, session="notes"), Host())
    assert r.ok and r.result == "mine"


async def test_an_ended_session_frees_its_id(
        replicas: tuple[SandboxPool, SandboxPool, SQLiteIdempotencyStore]) -> None:
    a, b, _ = replicas
    r = await a.run(req("x = 1", principal=WHO, session="short"), Host())
    assert r.ok
    sess = a._sessions[(WHO, "short")]
    a._drop_session(sess)  # what expiry and eviction do
    r = await _once_free(b, "'x' in globals()", "short")
    assert r.ok and r.result is False  # a fresh session, legitimately: the old one had ended


async def test_a_session_whose_holder_vanished_is_reported_lost_once(
        replicas: tuple[SandboxPool, SandboxPool, SQLiteIdempotencyStore]) -> None:
    _, b, store = replicas
    # A holder that is gone: a claim in use by an owner that no longer runs (its lease out).
    key = SessionRegistry.key(WHO, "orphan")
    gone = "some-other-host/1/1/deadbeef"
    got = await store.begin(key, "sandbox-session-v1", "sandbox.session", owner=gone,
                            lease_s=0.01, ttl_s=60)
    assert got.claimed and await store.mark_sent(key, gone)
    await asyncio.sleep(0.05)  # past its (tiny) lease: a condition the store checks by clock
    with pytest.raises(SessionLost):
        await b.run(req("1", principal=WHO, session="orphan"), Host())
    r = await b.run(req("'fresh'", principal=WHO, session="orphan"), Host())
    assert r.ok and r.result == "fresh"


async def test_a_session_whose_process_died_frees_its_id_after_saying_so(
        replicas: tuple[SandboxPool, SandboxPool, SQLiteIdempotencyStore]) -> None:
    """Its holder is alive but the session's process is not: the holder says session_lost
    once, and the claim is given back, so the id is free on every replica."""
    a, b, _ = replicas
    r = await a.run(req("y = 1", principal=WHO, session="killed"), Host())
    assert r.ok
    proc = a._sessions[(WHO, "killed")].proc
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    r = await _once_free(b, "'y' in globals()", "killed")  # released once the death is seen
    assert r.ok and r.result is False  # b's own fresh session
    with pytest.raises(SessionLost):  # a tells its own caller once what happened...
        await a.run(req("y", principal=WHO, session="killed"), Host())
    with pytest.raises(SessionElsewhere):  # ...and then knows b holds the id now
        await a.run(req("y", principal=WHO, session="killed"), Host())
