"""The require_approval obligation as the gateway parses it, and the store on its own."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.approvals import SQLiteApprovalStore, action_digest
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


def test_store_transitions_are_conditional(tmp_path: Path) -> None:
    async def go() -> None:
        store = SQLiteApprovalStore(tmp_path / "a.db")
        now = time.time()
        rec = ApprovalRecord(
            id="apr-1", key="k", tenant="t", requester_id="r", request_id="q", kind="tool",
            operation="o", digest="d", action={}, reasons=(), roles=("approver",),
            state="pending", created_at=now, expires_at=now + 60)
        assert (await store.create(rec)).id == "apr-1"
        # Same key again: the stored one, not a second approval.
        again = await store.create(ApprovalRecord(**{**rec.__dict__, "id": "apr-2"}))
        assert again.id == "apr-1"
        assert not await store.consume("apr-1", now)  # pending: cannot be consumed
        assert await store.decide("apr-1", approve=True, by="x", comment="", now=now)
        assert not await store.decide("apr-1", approve=False, by="y", comment="", now=now)
        assert await store.consume("apr-1", now)
        assert not await store.consume("apr-1", now)  # once
        got = await store.get("apr-1")
        assert got is not None and got.state == "consumed"
        await store.aclose()

    asyncio.run(go())
