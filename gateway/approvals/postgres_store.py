"""Approvals on PostgreSQL, beside the shared idempotency table (same DSN, its own tables):
for several gateway replicas. Every transition is one conditional ``UPDATE``, so replicas
racing to consume an approval serialise on its row. Needs the optional ``psycopg`` package."""

from __future__ import annotations

import json
import time
from typing import Any

from gateway.approvals.store import _COLUMNS, ApprovalRecord, _row
from gateway.tools.postgres_store import PostgresIdempotencyStore

__all__ = ["PostgresApprovalStore"]

_INIT_LOCK = 0x5B1D_A990
_SCHEMA = """
CREATE TABLE IF NOT EXISTS switchboard_approvals (
    id              TEXT PRIMARY KEY,
    key             TEXT NOT NULL UNIQUE,
    tenant          TEXT NOT NULL,
    requester_id    TEXT NOT NULL,
    request_id      TEXT NOT NULL,
    kind            TEXT NOT NULL,
    operation       TEXT NOT NULL,
    digest          TEXT NOT NULL,
    action          TEXT NOT NULL,
    reasons         TEXT NOT NULL,
    roles           TEXT NOT NULL,
    state           TEXT NOT NULL,
    created_at      DOUBLE PRECISION NOT NULL,
    expires_at      DOUBLE PRECISION NOT NULL,
    decided_by      TEXT NOT NULL DEFAULT '',
    decided_at      DOUBLE PRECISION,
    comment         TEXT NOT NULL DEFAULT '',
    consumed_at     DOUBLE PRECISION,
    trace_id        TEXT NOT NULL DEFAULT '',
    span_id         TEXT NOT NULL DEFAULT '',
    decision_id     TEXT NOT NULL DEFAULT '',
    policy_revision TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS switchboard_approvals_tenant
    ON switchboard_approvals (tenant, created_at);
CREATE TABLE IF NOT EXISTS switchboard_approval_run_calls (
    run_key TEXT NOT NULL,
    idx     INTEGER NOT NULL,
    digest  TEXT NOT NULL,
    result  TEXT NOT NULL,
    PRIMARY KEY (run_key, idx)
)"""
class PostgresApprovalStore:
    """:class:`~gateway.approvals.store.ApprovalStore` over PostgreSQL (reuses the idempotency
    store's small connection pool and transaction helper)."""

    def __init__(self, dsn: str, *, pool_size: int = 2) -> None:
        self._pg = PostgresIdempotencyStore(dsn, pool_size=pool_size)
        self._ready = False

    async def _tx(self, fn: Any, *args: Any) -> Any:
        if not self._ready:
            async def init(conn: Any) -> None:
                await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_INIT_LOCK,))
                for statement in _SCHEMA.split(";"):
                    await conn.execute(statement)
            await self._pg._tx(init)
            self._ready = True
        return await self._pg._tx(fn, *args)

    @staticmethod
    async def _select(conn: Any, where: str, params: tuple[Any, ...]) -> ApprovalRecord | None:
        cur = await conn.execute(f"SELECT {_COLUMNS} FROM switchboard_approvals WHERE {where}",
                                 params)
        row = await cur.fetchone()
        return _row(row) if row else None

    async def create(self, record: ApprovalRecord) -> ApprovalRecord:
        r = record

        async def insert(conn: Any) -> ApprovalRecord:
            await conn.execute(
                f"INSERT INTO switchboard_approvals ({_COLUMNS}) VALUES "
                f"({', '.join(['%s'] * 22)}) ON CONFLICT (key) DO NOTHING",
                (r.id, r.key, r.tenant, r.requester_id, r.request_id, r.kind, r.operation,
                 r.digest, json.dumps(r.action, separators=(",", ":")),
                 json.dumps(list(r.reasons)), json.dumps(list(r.roles)), r.state, r.created_at,
                 r.expires_at, r.decided_by, r.decided_at, r.comment, r.consumed_at,
                 r.trace_id, r.span_id, r.decision_id, r.policy_revision))
            stored = await self._select(conn, "key = %s", (r.key,))
            assert stored is not None
            return stored

        out: ApprovalRecord = await self._tx(insert)
        return out

    async def by_key(self, key: str) -> ApprovalRecord | None:
        out: ApprovalRecord | None = await self._tx(self._select, "key = %s", (key,))
        return out

    async def get(self, approval_id: str) -> ApprovalRecord | None:
        out: ApprovalRecord | None = await self._tx(self._select, "id = %s", (approval_id,))
        return out

    async def list(self, tenant: str, state: str | None, limit: int) -> list[ApprovalRecord]:
        now = time.time()

        async def select(conn: Any) -> list[ApprovalRecord]:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM switchboard_approvals WHERE tenant = %s"
                " ORDER BY created_at DESC", (tenant,))
            found = [_row(r) for r in await cur.fetchall()]
            if state:
                found = [r for r in found if r.effective_state(now) == state]
            return found[:limit]

        out: list[ApprovalRecord] = await self._tx(select)
        return out

    async def _update(self, sql: str, params: tuple[Any, ...]) -> bool:
        async def run(conn: Any) -> bool:
            cur = await conn.execute(sql, params)
            return bool(cur.rowcount == 1)

        ok: bool = await self._tx(run)
        return ok

    async def decide(self, approval_id: str, *, approve: bool, by: str, comment: str,
                     now: float) -> bool:
        return await self._update(
            "UPDATE switchboard_approvals SET state = %s, decided_by = %s, decided_at = %s,"
            " comment = %s WHERE id = %s AND state = 'pending' AND expires_at > %s",
            ("approved" if approve else "rejected", by, now, comment, approval_id, now))

    async def consume(self, approval_id: str, now: float) -> bool:
        return await self._update(
            "UPDATE switchboard_approvals SET state = 'consumed', consumed_at = %s"
            " WHERE id = %s AND state = 'approved' AND expires_at > %s",
            (now, approval_id, now))

    async def expire(self, approval_id: str, now: float) -> None:
        await self._update(
            "UPDATE switchboard_approvals SET state = 'expired'"
            " WHERE id = %s AND state IN ('pending', 'approved') AND expires_at <= %s",
            (approval_id, now))

    async def record_call(self, run_key: str, index: int, digest: str, result: Any) -> None:
        await self._update(
            "INSERT INTO switchboard_approval_run_calls (run_key, idx, digest, result)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (run_key, index, digest, json.dumps(result, separators=(",", ":"))))

    async def run_calls(self, run_key: str) -> dict[int, tuple[str, Any]]:
        async def select(conn: Any) -> dict[int, tuple[str, Any]]:
            cur = await conn.execute(
                "SELECT idx, digest, result FROM switchboard_approval_run_calls"
                " WHERE run_key = %s", (run_key,))
            return {int(i): (str(d), json.loads(r)) for i, d, r in await cur.fetchall()}

        out: dict[int, tuple[str, Any]] = await self._tx(select)
        return out

    async def aclose(self) -> None:
        await self._pg.aclose()
