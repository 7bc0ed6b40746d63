"""A shared idempotency store on PostgreSQL, for several gateway replicas.

Same record model as the SQLite store; the claim is ``INSERT … ON CONFLICT DO NOTHING`` then
``SELECT … FOR UPDATE`` in one transaction, so two replicas racing for a key serialise on its
row. Needs the optional ``psycopg`` (3.x) package.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from gateway.errors import ConfigError
from gateway.tools.idempotency import BeginResult, IdempotencyRecord, owner_alive

__all__ = ["PostgresIdempotencyStore"]

_TABLE = "switchboard_idempotency"
_INIT_LOCK = 0x5B1D_1DE0  # a fixed advisory-lock id: replicas creating the table serialise
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_TABLE} (
    key          TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    operation    TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    owner        TEXT NOT NULL DEFAULT '',
    lease_until  DOUBLE PRECISION NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_sent_at DOUBLE PRECISION,
    outcome      TEXT,
    created_at   DOUBLE PRECISION NOT NULL,
    updated_at   DOUBLE PRECISION NOT NULL,
    expires_at   DOUBLE PRECISION NOT NULL
)"""
_COLUMNS = ("key, fingerprint, operation, state, owner, lease_until, attempts, last_sent_at, "
            "outcome, created_at, expires_at")


def _record(row: tuple[Any, ...]) -> IdempotencyRecord:
    return IdempotencyRecord(
        key=row[0], fingerprint=row[1], operation=row[2], state=row[3], owner=row[4],
        lease_until=row[5], attempts=row[6], last_sent_at=row[7],
        outcome=json.loads(row[8]) if row[8] is not None else None,
        created_at=row[9], expires_at=row[10],
    )


class PostgresIdempotencyStore:
    """:class:`~gateway.tools.idempotency.IdempotencyStore` over PostgreSQL (a small pool)."""

    def __init__(self, dsn: str, *, pool_size: int = 4) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise ConfigError("idempotency dsn postgresql://… needs the optional 'psycopg' "
                              "package (pip install 'psycopg[binary]')",
                              field="idempotency.dsn") from exc
        self.dsn = dsn
        self._size = pool_size
        self._idle: asyncio.Queue[Any] = asyncio.Queue()
        self._opened = 0
        self._ready = False
        self._init_lock: asyncio.Lock | None = None
        self._all: list[Any] = []

    async def _conn(self) -> Any:
        import psycopg

        if self._idle.empty() and self._opened < self._size:
            self._opened += 1
            try:
                conn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=False)
            except BaseException:
                self._opened -= 1
                raise
            self._all.append(conn)
            return conn
        return await self._idle.get()

    async def _tx(self, fn: Any, *args: Any) -> Any:
        if not self._ready:
            if self._init_lock is None:
                self._init_lock = asyncio.Lock()
            async with self._init_lock:
                if not self._ready:
                    conn = await self._conn()
                    try:
                        async with conn.transaction():
                            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INIT_LOCK,))
                            await conn.execute(_SCHEMA)
                    finally:
                        self._idle.put_nowait(conn)
                    self._ready = True
        conn = await self._conn()
        try:
            async with conn.transaction():
                return await fn(conn, *args)
        except BaseException:
            if conn.closed:
                self._opened -= 1
                self._all.remove(conn)
                conn = None
            raise
        finally:
            if conn is not None:
                self._idle.put_nowait(conn)

    @staticmethod
    async def _select(conn: Any, key: str, lock: bool = False) -> IdempotencyRecord | None:
        cur = await conn.execute(
            f"SELECT {_COLUMNS} FROM {_TABLE} WHERE key = %s" + (" FOR UPDATE" if lock else ""),
            (key,))
        row = await cur.fetchone()
        return _record(row) if row else None

    async def begin(self, key: str, fingerprint: str, operation: str, *, owner: str,
                    lease_s: float, ttl_s: float, send: bool = False) -> BeginResult:
        async def claim(conn: Any) -> BeginResult:
            got = await take(conn)
            if not (send and got.claimed and got.record.attempts == 0):
                return got
            now = time.time()
            await conn.execute(f"UPDATE {_TABLE} SET attempts = attempts + 1, last_sent_at = %s,"
                               " updated_at = %s WHERE key = %s", (now, now, key))
            return BeginResult(True, got.record, sent=True)

        async def take(conn: Any) -> BeginResult:
            now = time.time()
            await conn.execute(f"DELETE FROM {_TABLE} WHERE key = %s AND state = 'done' AND "
                               "expires_at <= %s", (key, now))
            cur = await conn.execute(
                f"INSERT INTO {_TABLE} (key, fingerprint, operation, state, owner, lease_until,"
                " created_at, updated_at, expires_at) VALUES (%s, %s, %s, 'pending', %s, %s, %s,"
                " %s, %s) ON CONFLICT (key) DO NOTHING",
                (key, fingerprint, operation, owner, now + lease_s, now, now, now + ttl_s))
            rec = await self._select(conn, key, lock=True)
            assert rec is not None
            if cur.rowcount == 1:
                return BeginResult(True, rec)
            if rec.fingerprint != fingerprint or rec.state == "done":
                return BeginResult(False, rec)
            if rec.lease_until > now and (not rec.owner or owner_alive(rec.owner) is not False):
                return BeginResult(False, rec)
            await conn.execute(f"UPDATE {_TABLE} SET owner = %s, lease_until = %s, "
                               "updated_at = %s WHERE key = %s", (owner, now + lease_s, now, key))
            taken = await self._select(conn, key)
            assert taken is not None
            return BeginResult(True, taken)

        out: BeginResult = await self._tx(claim)
        return out

    async def _update(self, sql: str, params: tuple[Any, ...]) -> bool:
        async def run(conn: Any) -> bool:
            cur = await conn.execute(sql, params)
            return bool(cur.rowcount == 1)

        ok: bool = await self._tx(run)
        return ok

    async def mark_sent(self, key: str, owner: str) -> bool:
        now = time.time()
        return await self._update(
            f"UPDATE {_TABLE} SET attempts = attempts + 1, last_sent_at = %s, updated_at = %s"
            " WHERE key = %s AND owner = %s AND state = 'pending'", (now, now, key, owner))

    async def heartbeat(self, key: str, owner: str, lease_s: float) -> bool:
        now = time.time()
        return await self._update(
            f"UPDATE {_TABLE} SET lease_until = %s, updated_at = %s"
            " WHERE key = %s AND owner = %s AND state = 'pending'",
            (now + lease_s, now, key, owner))

    async def complete(self, key: str, owner: str, outcome: dict[str, Any],
                       ttl_s: float) -> bool:
        now = time.time()
        return await self._update(
            f"UPDATE {_TABLE} SET state = 'done', owner = '', outcome = %s, updated_at = %s,"
            " expires_at = %s WHERE key = %s AND owner = %s AND state = 'pending'",
            (json.dumps(outcome, separators=(",", ":")), now, now + ttl_s, key, owner))

    async def abandon(self, key: str, owner: str, *, retract_attempt: bool,
                      hold_s: float = 0.0) -> None:
        now = time.time()

        async def run(conn: Any) -> None:
            if retract_attempt:
                await conn.execute(
                    f"UPDATE {_TABLE} SET attempts = greatest(attempts - 1, 0) WHERE key = %s"
                    " AND owner = %s AND state = 'pending'", (key, owner))
                await conn.execute(
                    f"DELETE FROM {_TABLE} WHERE key = %s AND owner = %s AND state = 'pending'"
                    " AND attempts = 0", (key, owner))
            await conn.execute(
                f"UPDATE {_TABLE} SET owner = '', lease_until = %s, updated_at = %s"
                " WHERE key = %s AND owner = %s AND state = 'pending'",
                (now + hold_s, now, key, owner))

        await self._tx(run)

    async def get(self, key: str) -> IdempotencyRecord | None:
        out: IdempotencyRecord | None = await self._tx(self._select, key)
        return out

    async def forget(self, key: str) -> bool:
        return await self._update(f"DELETE FROM {_TABLE} WHERE key = %s", (key,))

    async def purge(self) -> int:
        now = time.time()

        async def run(conn: Any) -> int:
            done = await conn.execute(
                f"DELETE FROM {_TABLE} WHERE state = 'done' AND expires_at <= %s", (now,))
            stale = await conn.execute(
                f"DELETE FROM {_TABLE} WHERE state = 'pending' AND attempts = 0"
                " AND lease_until <= %s AND expires_at <= %s", (now, now))
            return int(done.rowcount + stale.rowcount)

        count: int = await self._tx(run)
        return count

    async def aclose(self) -> None:
        for conn in self._all:
            await conn.close()
        self._all.clear()
        self._opened = 0
