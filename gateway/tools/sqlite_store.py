"""The embedded idempotency store: one SQLite file in WAL mode, safe across processes.

Claims run in ``BEGIN IMMEDIATE`` transactions, so two gateway processes sharing the file
serialise on the claim. Every transaction is committed before its caller hears back, so each
step is safe against a killed process; against power loss, the steps that must survive it —
``mark_sent`` (the intent, before any byte goes to the backend; or a claim that counts the
attempt itself, ``begin(send=True)``) and ``complete`` (the recorded outcome) — commit with
``synchronous=FULL`` (the WAL is fsynced, and with it every earlier
transaction), the others (claim, heartbeat, abandon, forget, purge) with ``synchronous=NORMAL``:
losing them to a power cut leaves an older state from which a retry is still at most once (a
claim without a sent attempt, a lease of a dead owner, an attempt kept as "maybe applied").

All statements run on one writer thread that takes every queued call into one transaction
(each in its own savepoint): concurrent calls share a commit and its fsync (group commit), and
the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from gateway.tools.idempotency import BeginResult, IdempotencyRecord, owner_alive

__all__ = ["SQLiteIdempotencyStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    key          TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    operation    TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    owner        TEXT NOT NULL DEFAULT '',
    lease_until  REAL NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_sent_at REAL,
    outcome      TEXT,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    expires_at   REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_expires ON idempotency (state, expires_at);
"""
_COLUMNS = ("key, fingerprint, operation, state, owner, lease_until, attempts, last_sent_at, "
            "outcome, created_at, expires_at")


_BATCH = 64  # calls per group commit at most


class _Job(NamedTuple):
    fn: Any
    args: tuple[Any, ...]
    durable: bool  # commit with synchronous=FULL (survives power loss)
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]


def _deliver(future: asyncio.Future[Any], out: Any, exc: BaseException | None) -> None:
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(out)


def _record(row: tuple[Any, ...]) -> IdempotencyRecord:
    return IdempotencyRecord(
        key=row[0], fingerprint=row[1], operation=row[2], state=row[3], owner=row[4],
        lease_until=row[5], attempts=row[6], last_sent_at=row[7],
        outcome=json.loads(row[8]) if row[8] is not None else None,
        created_at=row[9], expires_at=row[10],
    )


class SQLiteIdempotencyStore:
    """:class:`~gateway.tools.idempotency.IdempotencyStore` over one SQLite file."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._full = True
        with self._lock:
            self._db.executescript(_SCHEMA)  # idempotent; concurrent openers wait on the lock
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._closed = False

    # -- synchronous core (runs on the writer thread, one transaction per batch of calls) --

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch = [job]
            stop = False
            while len(batch) < _BATCH:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self._run_batch(batch)
            if stop:
                return

    def _run_batch(self, batch: list[_Job]) -> None:
        results: list[tuple[Any, BaseException | None]] = []
        with self._lock:
            try:
                durable = any(job.durable for job in batch)
                if durable != self._full:
                    self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
                    self._full = durable
                self._db.execute("BEGIN IMMEDIATE")
                if len(batch) == 1:  # alone: a failure rolls the transaction back, below
                    job = batch[0]
                    results.append((job.fn(*job.args), None))
                for job in batch if len(batch) > 1 else ():
                    self._db.execute("SAVEPOINT job")
                    try:
                        out = job.fn(*job.args)
                    except Exception as exc:
                        self._db.execute("ROLLBACK TO job")
                        self._db.execute("RELEASE job")
                        results.append((None, exc))
                    else:
                        self._db.execute("RELEASE job")
                        results.append((out, None))
                self._db.execute("COMMIT")
            except Exception as exc:  # nothing of this batch is committed: all of it failed
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                results = [(None, exc)] * len(batch)
        for job, (out, err) in zip(batch, results, strict=True):
            with contextlib.suppress(RuntimeError):  # that caller's loop is closed
                job.loop.call_soon_threadsafe(_deliver, job.future, out, err)

    def _select(self, key: str) -> IdempotencyRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM idempotency WHERE key = ?",
                               (key,)).fetchone()
        return _record(row) if row else None

    def _begin(self, key: str, fingerprint: str, operation: str, owner: str, lease_s: float,
               ttl_s: float, send: bool = False) -> BeginResult:
        got = self._claim(key, fingerprint, operation, owner, lease_s, ttl_s)
        if not (send and got.claimed and got.record.attempts == 0):
            return got
        now = time.time()
        self._db.execute(
            "UPDATE idempotency SET attempts = attempts + 1, last_sent_at = ?, updated_at = ?"
            " WHERE key = ?", (now, now, key))
        return BeginResult(True, got.record, sent=True)

    def _claim(self, key: str, fingerprint: str, operation: str, owner: str, lease_s: float,
               ttl_s: float) -> BeginResult:
        now = time.time()
        rec = self._select(key)
        if rec is not None and rec.state == "done" and rec.expires_at <= now:
            self._db.execute("DELETE FROM idempotency WHERE key = ?", (key,))
            rec = None
        if rec is None:
            self._db.execute(
                "INSERT INTO idempotency (key, fingerprint, operation, state, owner, lease_until,"
                " created_at, updated_at, expires_at) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?, ?)",
                (key, fingerprint, operation, owner, now + lease_s, now, now, now + ttl_s))
            return BeginResult(True, IdempotencyRecord(
                key=key, fingerprint=fingerprint, operation=operation, state="pending",
                owner=owner, lease_until=now + lease_s, attempts=0, last_sent_at=None,
                outcome=None, created_at=now, expires_at=now + ttl_s))
        if rec.fingerprint != fingerprint or rec.state == "done":
            return BeginResult(False, rec)
        held = rec.lease_until > now and (not rec.owner or owner_alive(rec.owner) is not False)
        if held:
            return BeginResult(False, rec)
        self._db.execute(
            "UPDATE idempotency SET owner = ?, lease_until = ?, updated_at = ? WHERE key = ?",
            (owner, now + lease_s, now, key))
        taken = self._select(key)
        assert taken is not None
        return BeginResult(True, taken)

    def _owned_update(self, sql: str, params: tuple[Any, ...]) -> bool:
        return self._db.execute(sql, params).rowcount == 1

    # -- the async protocol --

    async def _run(self, fn: Any, *args: Any, durable: bool = False) -> Any:
        if self._closed:
            raise sqlite3.ProgrammingError("the idempotency store is closed")
        if self._writer is None:
            self._writer = threading.Thread(target=self._serve, name="idempotency-sqlite",
                                            daemon=True)
            self._writer.start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._jobs.put(_Job(fn, args, durable, loop, future))
        return await future

    async def begin(self, key: str, fingerprint: str, operation: str, *, owner: str,
                    lease_s: float, ttl_s: float, send: bool = False) -> BeginResult:
        # With ``send`` the claim is the intent too: committed with synchronous=FULL, as
        # mark_sent is.
        out: BeginResult = await self._run(self._begin, key, fingerprint, operation, owner,
                                           lease_s, ttl_s, send, durable=send)
        return out

    async def mark_sent(self, key: str, owner: str) -> bool:
        now = time.time()
        ok: bool = await self._run(
            self._owned_update,
            "UPDATE idempotency SET attempts = attempts + 1, last_sent_at = ?, updated_at = ?"
            " WHERE key = ? AND owner = ? AND state = 'pending'", (now, now, key, owner),
            durable=True)
        return ok

    async def heartbeat(self, key: str, owner: str, lease_s: float) -> bool:
        now = time.time()
        ok: bool = await self._run(
            self._owned_update,
            "UPDATE idempotency SET lease_until = ?, updated_at = ?"
            " WHERE key = ? AND owner = ? AND state = 'pending'", (now + lease_s, now, key, owner))
        return ok

    async def complete(self, key: str, owner: str, outcome: dict[str, Any],
                       ttl_s: float) -> bool:
        now = time.time()
        ok: bool = await self._run(
            self._owned_update,
            "UPDATE idempotency SET state = 'done', owner = '', outcome = ?, updated_at = ?,"
            " expires_at = ? WHERE key = ? AND owner = ? AND state = 'pending'",
            (json.dumps(outcome, separators=(",", ":")), now, now + ttl_s, key, owner),
            durable=True)
        return ok

    async def abandon(self, key: str, owner: str, *, retract_attempt: bool,
                      hold_s: float = 0.0) -> None:
        now = time.time()

        def abandon() -> None:
            if retract_attempt:
                self._db.execute(
                    "UPDATE idempotency SET attempts = max(attempts - 1, 0) WHERE key = ?"
                    " AND owner = ? AND state = 'pending'", (key, owner))
                self._db.execute(
                    "DELETE FROM idempotency WHERE key = ? AND owner = ? AND state = 'pending'"
                    " AND attempts = 0", (key, owner))
            self._db.execute(
                "UPDATE idempotency SET owner = '', lease_until = ?, updated_at = ?"
                " WHERE key = ? AND owner = ? AND state = 'pending'",
                (now + hold_s, now, key, owner))

        await self._run(abandon)

    async def get(self, key: str) -> IdempotencyRecord | None:
        rec: IdempotencyRecord | None = await self._run(self._select, key)
        return rec

    async def forget(self, key: str) -> bool:
        ok: bool = await self._run(self._owned_update,
                                   "DELETE FROM idempotency WHERE key = ?", (key,))
        return ok

    async def purge(self) -> int:
        now = time.time()

        def purge() -> int:
            done = self._db.execute(
                "DELETE FROM idempotency WHERE state = 'done' AND expires_at <= ?", (now,))
            stale = self._db.execute(
                "DELETE FROM idempotency WHERE state = 'pending' AND attempts = 0"
                " AND lease_until <= ? AND expires_at <= ?", (now, now))
            return int(done.rowcount + stale.rowcount)

        count: int = await self._run(purge)
        return count

    async def aclose(self) -> None:
        self._closed = True
        writer = self._writer
        if writer is not None:
            self._jobs.put(None)  # after every queued call
            await asyncio.to_thread(writer.join)
        with self._lock:
            self._db.close()
