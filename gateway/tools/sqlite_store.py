"""The embedded idempotency store: one SQLite file in WAL mode, safe across processes.

Claims run in ``BEGIN IMMEDIATE`` transactions, so two gateway processes sharing the file
serialise on the claim; ``synchronous=FULL`` makes a recorded intent durable before the backend
is called. Calls run in a worker thread so the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

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
        with self._lock:
            self._db.executescript(_SCHEMA)  # idempotent; concurrent openers wait on the lock

    # -- synchronous core (runs in a worker thread, one statement batch per transaction) --

    def _tx(self, fn: Any, *args: Any) -> Any:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(*args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return out

    def _select(self, key: str) -> IdempotencyRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM idempotency WHERE key = ?",
                               (key,)).fetchone()
        return _record(row) if row else None

    def _begin(self, key: str, fingerprint: str, operation: str, owner: str, lease_s: float,
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
            fresh = self._select(key)
            assert fresh is not None
            return BeginResult(True, fresh)
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

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.to_thread(self._tx, fn, *args)

    async def begin(self, key: str, fingerprint: str, operation: str, *, owner: str,
                    lease_s: float, ttl_s: float) -> BeginResult:
        out: BeginResult = await self._run(self._begin, key, fingerprint, operation, owner,
                                           lease_s, ttl_s)
        return out

    async def mark_sent(self, key: str, owner: str) -> bool:
        now = time.time()
        ok: bool = await self._run(
            self._owned_update,
            "UPDATE idempotency SET attempts = attempts + 1, last_sent_at = ?, updated_at = ?"
            " WHERE key = ? AND owner = ? AND state = 'pending'", (now, now, key, owner))
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
            (json.dumps(outcome, separators=(",", ":")), now, now + ttl_s, key, owner))
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
        def read() -> IdempotencyRecord | None:
            with self._lock:
                return self._select(key)
        return await asyncio.to_thread(read)

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
        with self._lock:
            self._db.close()
