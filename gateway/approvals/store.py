"""Durable approvals: one row per (tenant, principal, request_id, step), bound to the digest of
the exact action. SQLite (the embedded idempotency file, its own tables); calls run in a worker
thread. The run call log (``run_calls``) holds the recorded results of the host calls a code run
made before it paused for approval, so its retry replays them instead of calling again."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = [
    "ApprovalRecord",
    "ApprovalStore",
    "SQLiteApprovalStore",
    "State",
]

State = Literal["pending", "approved", "rejected", "consumed", "expired"]


@dataclass(frozen=True)
class ApprovalRecord:
    id: str
    key: str  # hash of (tenant, principal, request_id, step): one approval per action attempt
    tenant: str
    requester_id: str
    request_id: str
    kind: str  # "tool" | "host_call"
    operation: str
    digest: str  # sha256 of the exact action (docs/approvals.md, "What is approved")
    action: dict[str, Any]  # what approvers see: masked paths already redacted
    reasons: tuple[str, ...]
    roles: tuple[str, ...]
    state: State
    created_at: float
    expires_at: float
    decided_by: str = ""
    decided_at: float | None = None
    comment: str = ""
    consumed_at: float | None = None
    trace_id: str = ""
    span_id: str = ""
    decision_id: str = ""
    policy_revision: str = ""

    def effective_state(self, now: float | None = None) -> State:
        """``expired`` once the deadline passed unless it was used or rejected."""
        now = time.time() if now is None else now
        if self.state in ("pending", "approved") and self.expires_at <= now:
            return "expired"
        return self.state


class ApprovalStore(Protocol):
    async def create(self, record: ApprovalRecord) -> ApprovalRecord:
        """Insert ``record`` unless its key exists; returns the stored one (atomic)."""
        ...

    async def by_key(self, key: str) -> ApprovalRecord | None: ...

    async def get(self, approval_id: str) -> ApprovalRecord | None: ...

    async def list(self, tenant: str, state: str | None, limit: int) -> list[ApprovalRecord]: ...

    async def decide(self, approval_id: str, *, approve: bool, by: str, comment: str,
                     now: float) -> bool:
        """pending (and not expired) → approved/rejected; False when it was not pending."""
        ...

    async def consume(self, approval_id: str, now: float) -> bool:
        """approved (and not expired) → consumed; False for everyone but the one who did."""
        ...

    async def expire(self, approval_id: str, now: float) -> None: ...

    async def record_call(self, run_key: str, index: int, digest: str, result: Any) -> None:
        """Remember host call ``index`` of the run ``run_key`` (first write wins)."""
        ...

    async def run_calls(self, run_key: str) -> dict[int, tuple[str, Any]]: ...

    async def aclose(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS approvals (
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
    created_at      REAL NOT NULL,
    expires_at      REAL NOT NULL,
    decided_by      TEXT NOT NULL DEFAULT '',
    decided_at      REAL,
    comment         TEXT NOT NULL DEFAULT '',
    consumed_at     REAL,
    trace_id        TEXT NOT NULL DEFAULT '',
    span_id         TEXT NOT NULL DEFAULT '',
    decision_id     TEXT NOT NULL DEFAULT '',
    policy_revision TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS approvals_tenant_state ON approvals (tenant, state, created_at);
CREATE TABLE IF NOT EXISTS approval_run_calls (
    run_key TEXT NOT NULL,
    idx     INTEGER NOT NULL,
    digest  TEXT NOT NULL,
    result  TEXT NOT NULL,
    PRIMARY KEY (run_key, idx)
) WITHOUT ROWID;
"""
# One column list and row mapping for every SQL approval store (SQLite here, PostgreSQL too).
_COLUMNS = ("id, key, tenant, requester_id, request_id, kind, operation, digest, action, "
            "reasons, roles, state, created_at, expires_at, decided_by, decided_at, comment, "
            "consumed_at, trace_id, span_id, decision_id, policy_revision")


def _row(row: tuple[Any, ...]) -> ApprovalRecord:
    return ApprovalRecord(
        id=row[0], key=row[1], tenant=row[2], requester_id=row[3], request_id=row[4],
        kind=row[5], operation=row[6], digest=row[7], action=json.loads(row[8]),
        reasons=tuple(json.loads(row[9])), roles=tuple(json.loads(row[10])), state=row[11],
        created_at=row[12], expires_at=row[13], decided_by=row[14], decided_at=row[15],
        comment=row[16], consumed_at=row[17], trace_id=row[18], span_id=row[19],
        decision_id=row[20], policy_revision=row[21])


class SQLiteApprovalStore:
    """:class:`ApprovalStore` in a SQLite file (WAL, ``synchronous=FULL``), safe across
    processes: every change is one conditional statement."""

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        with self._lock:
            self._db.executescript(_SCHEMA)
        # A second connection for the run log's lookup on the event loop (below): it never
        # waits for a lock (timeout 0), so the loop is never held by another process's write.
        self._read_lock = threading.Lock()
        self._reader = sqlite3.connect(self.path, timeout=0, isolation_level=None,
                                       check_same_thread=False)

    async def _run(self, fn: Any, *args: Any) -> Any:
        def locked() -> Any:
            with self._lock:
                return fn(*args)
        return await asyncio.to_thread(locked)

    def _select(self, where: str, params: tuple[Any, ...]) -> ApprovalRecord | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM approvals WHERE {where}",
                               params).fetchone()
        return _row(row) if row else None

    async def create(self, record: ApprovalRecord) -> ApprovalRecord:
        r = record

        def insert() -> ApprovalRecord:
            self._db.execute(
                f"INSERT OR IGNORE INTO approvals ({_COLUMNS}) VALUES "
                f"({', '.join('?' * 22)})",
                (r.id, r.key, r.tenant, r.requester_id, r.request_id, r.kind, r.operation,
                 r.digest, json.dumps(r.action, separators=(",", ":")),
                 json.dumps(list(r.reasons)), json.dumps(list(r.roles)), r.state, r.created_at,
                 r.expires_at, r.decided_by, r.decided_at, r.comment, r.consumed_at,
                 r.trace_id, r.span_id, r.decision_id, r.policy_revision))
            stored = self._select("key = ?", (r.key,))
            assert stored is not None
            return stored

        out: ApprovalRecord = await self._run(insert)
        return out

    async def by_key(self, key: str) -> ApprovalRecord | None:
        out: ApprovalRecord | None = await self._run(self._select, "key = ?", (key,))
        return out

    async def get(self, approval_id: str) -> ApprovalRecord | None:
        out: ApprovalRecord | None = await self._run(self._select, "id = ?", (approval_id,))
        return out

    async def list(self, tenant: str, state: str | None, limit: int) -> list[ApprovalRecord]:
        now = time.time()

        def select() -> list[ApprovalRecord]:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM approvals WHERE tenant = ? ORDER BY created_at DESC",
                (tenant,)).fetchall()
            found = [_row(r) for r in rows]
            if state:
                found = [r for r in found if r.effective_state(now) == state]
            return found[:limit]

        out: list[ApprovalRecord] = await self._run(select)
        return out

    def _update(self, sql: str, params: tuple[Any, ...]) -> bool:
        return bool(self._db.execute(sql, params).rowcount == 1)

    async def decide(self, approval_id: str, *, approve: bool, by: str, comment: str,
                     now: float) -> bool:
        ok: bool = await self._run(
            self._update,
            "UPDATE approvals SET state = ?, decided_by = ?, decided_at = ?, comment = ?"
            " WHERE id = ? AND state = 'pending' AND expires_at > ?",
            ("approved" if approve else "rejected", by, now, comment, approval_id, now))
        return ok

    async def consume(self, approval_id: str, now: float) -> bool:
        ok: bool = await self._run(
            self._update,
            "UPDATE approvals SET state = 'consumed', consumed_at = ?"
            " WHERE id = ? AND state = 'approved' AND expires_at > ?",
            (now, approval_id, now))
        return ok

    async def expire(self, approval_id: str, now: float) -> None:
        await self._run(
            self._update,
            "UPDATE approvals SET state = 'expired'"
            " WHERE id = ? AND state IN ('pending', 'approved') AND expires_at <= ?",
            (approval_id, now))

    async def record_call(self, run_key: str, index: int, digest: str, result: Any) -> None:
        await self._run(
            self._update,
            "INSERT OR IGNORE INTO approval_run_calls (run_key, idx, digest, result)"
            " VALUES (?, ?, ?, ?)",
            (run_key, index, digest, json.dumps(result, separators=(",", ":"))))

    async def run_calls(self, run_key: str) -> dict[int, tuple[str, Any]]:
        """Every code run asks (is this a retry of a run that paused?), and almost always the
        answer is an empty primary-key range. That read is done on the calling thread — a
        WAL read of a few cached pages, ~10 µs, where the worker-thread hop cost ~0.15 ms per
        run — on its own connection that never waits: while that connection is in use or the
        file is locked (recovery, a checkpoint's truncation) the read goes to the worker
        thread as every other statement does. Each statement reads the latest commit, so
        processes sharing the file (``serve --processes N``) see each other's run logs."""
        sql = "SELECT idx, digest, result FROM approval_run_calls WHERE run_key = ?"

        def select(db: sqlite3.Connection) -> dict[int, tuple[str, Any]]:
            rows = db.execute(sql, (run_key,)).fetchall()
            return {int(i): (str(d), json.loads(r)) for i, d, r in rows}

        if self._read_lock.acquire(blocking=False):
            try:
                return select(self._reader)
            except sqlite3.OperationalError:  # busy or locked: wait in the worker thread
                pass
            finally:
                self._read_lock.release()
        out: dict[int, tuple[str, Any]] = await self._run(select, self._db)
        return out

    async def aclose(self) -> None:
        with self._lock:
            self._db.close()
        with self._read_lock:
            self._reader.close()


def with_state(record: ApprovalRecord, state: State) -> ApprovalRecord:
    return replace(record, state=state)
