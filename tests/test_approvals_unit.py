"""The require_approval obligation as the gateway parses it, and the store on its own."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.approvals import ApprovalStore, SQLiteApprovalStore, action_digest
from gateway.approvals.store import ApprovalRecord
from gateway.errors import PolicyError
from gateway.models import Principal
from gateway.policy.base import parse_decision

BASE: dict[str, Any] = {"route": "tool", "reasons": ["ok"], "obligations": ["audit.full"]}


def test_parsed_into_decision_approval() -> None:
    d = parse_decision({**BASE, "require_approval": {"reasons": ["big"], "roles": ["approver"],
                                                     "expires_s": 60.0}})
    assert d.approval is not None
    assert d.approval.roles == ("approver",) and d.approval.expires_s == 60
    assert d.obligations == ("audit.full", "require_approval")


@pytest.mark.parametrize("value", [None, {}])
def test_absent_or_empty_means_none(value: Any) -> None:
    d = parse_decision({**BASE, "require_approval": value})
    assert d.approval is None and "require_approval" not in d.obligations


def test_ignored_on_deny() -> None:
    d = parse_decision({"route": "deny", "reasons": ["no"],
                        "require_approval": {"roles": ["approver"]}})
    assert d.approval is None


@pytest.mark.parametrize("value", [
    "yes", {"roles": []}, {"roles": "approver"}, {"roles": ["a"], "expires_s": 0},
    {"roles": ["a"], "expires_s": True}, {"roles": ["a"], "expires_s": 1.5},
])
def test_malformed_is_a_policy_error(value: Any) -> None:
    with pytest.raises(PolicyError):
        parse_decision({**BASE, "require_approval": value})


def test_digest_binds_principal_arguments_and_source() -> None:
    p = Principal(id="a", tenant="t")
    base = action_digest(p, "tool", "ledger.create_transfer", {"amount": 100.0})
    assert base == action_digest(p, "tool", "ledger.create_transfer", {"amount": 100})
    assert base != action_digest(p, "tool", "ledger.create_transfer", {"amount": 101})
    assert base != action_digest(Principal(id="b", tenant="t"), "tool",
                                 "ledger.create_transfer", {"amount": 100})
    assert base != action_digest(p, "tool", "ledger.create_transfer", {"amount": 100}, "ab")


@pytest.fixture(scope="module")
def pg_dsn() -> Iterator[str]:
    """A real PostgreSQL, as tests/test_idempotency_store.py starts it (an error, not a skip,
    when the dev extra's server binaries are missing)."""
    from tools_support import postgres_server

    with postgres_server() as dsn:
        yield dsn


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    from tools_support import redis_server

    with redis_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres", "redis"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], ApprovalStore]:
    if request.param == "sqlite":
        return lambda: SQLiteApprovalStore(tmp_path / "a.db")
    if request.param == "redis":
        from gateway.approvals.redis_store import RedisApprovalStore

        url = request.getfixturevalue("redis_url")
        return lambda: RedisApprovalStore(url)
    from gateway.approvals.postgres_store import PostgresApprovalStore

    dsn = request.getfixturevalue("pg_dsn")
    return lambda: PostgresApprovalStore(dsn)


def test_store_transitions_are_conditional(open_store: Callable[[], ApprovalStore]) -> None:
    async def go() -> None:
        store = open_store()
        now = time.time()
        approval_id = f"apr-{uuid.uuid4().hex[:8]}"
        rec = ApprovalRecord(
            id=approval_id, key=approval_id, tenant="t", requester_id="r", request_id="q",
            kind="tool", operation="o", digest="d", action={"arguments": {"a": 1}},
            reasons=("why",), roles=("approver",), state="pending", created_at=now,
            expires_at=now + 60)
        assert (await store.create(rec)).id == approval_id
        # Same key again: the stored one, not a second approval.
        again = await store.create(ApprovalRecord(**{**rec.__dict__, "id": "apr-other"}))
        assert again.id == approval_id and again.action == {"arguments": {"a": 1}}
        assert not await store.consume(approval_id, now)  # pending: cannot be consumed
        assert await store.decide(approval_id, approve=True, by="x", comment="c", now=now)
        assert not await store.decide(approval_id, approve=False, by="y", comment="", now=now)
        # Concurrent consumers: exactly one wins.
        wins = await asyncio.gather(*(store.consume(approval_id, now) for _ in range(8)))
        assert wins.count(True) == 1
        got = await store.get(approval_id)
        assert got is not None and got.state == "consumed" and got.decided_by == "x"
        assert [r.id for r in await store.list("t", "consumed", 500)].count(approval_id) == 1
        await store.record_call(approval_id, 1, "d1", {"ok": True})
        await store.record_call(approval_id, 1, "d2", {"ok": False})  # first write wins
        assert await store.run_calls(approval_id) == {1: ("d1", {"ok": True})}
        await store.aclose()
        reopened = open_store()  # durable: a new store (a restarted gateway) sees it all
        got = await reopened.get(approval_id)
        assert got is not None and got.state == "consumed"
        await reopened.aclose()

    asyncio.run(go())


def test_sqlite_run_log_is_read_on_the_loop_and_seen_across_processes(tmp_path: Path) -> None:
    """The run log lookup of every code run reads on the calling thread (no worker hop); two
    stores on one file (two `serve --processes` children) see each other's writes, and a
    reader that is busy or locked out falls back to the worker thread with the same answer."""
    import sqlite3

    async def go() -> None:
        one, two = SQLiteApprovalStore(tmp_path / "a.db"), SQLiteApprovalStore(tmp_path / "a.db")
        assert await two.run_calls("run-1") == {}
        await one.record_call("run-1", 1, "d1", {"ok": 1})
        assert await two.run_calls("run-1") == {1: ("d1", {"ok": 1})}
        with two._read_lock:  # the loop-side reader in use: the thread answers
            assert await two.run_calls("run-1") == {1: ("d1", {"ok": 1})}
        reader, calls = two._reader, []

        class Locked:  # what SQLite answers a reader during recovery: busy, at once
            def execute(self, *args: object) -> None:
                calls.append(args)
                raise sqlite3.OperationalError("database is locked")

            def close(self) -> None:
                reader.close()

        two._reader = Locked()  # type: ignore[assignment]
        assert await two.run_calls("run-1") == {1: ("d1", {"ok": 1})}
        assert len(calls) == 1  # tried on the loop, answered by the worker thread
        await one.aclose()
        await two.aclose()

    asyncio.run(go())
