"""An approval counts only under the requirement that asked for it (review finding 5).

The service on its own over a SQLite store and a fake clock: every retry is decided by the
*current* decision's ``require_approval``; an approval whose possible approvers or age the
current requirement no longer accepts does not run the action, which is held again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.approvals import ApprovalService, SQLiteApprovalStore
from gateway.approvals import service as service_module
from gateway.approvals.store import ApprovalRecord
from gateway.audit.redact import DigestKey
from gateway.errors import (
    ApprovalExpired,
    ApprovalForbidden,
    ApprovalRejected,
    ApprovalRequired,
)
from gateway.models import ApprovalRequirement, Decision, Principal

AGENT = Principal(id="agent-1", tenant="t", roles=("agent",))
APPROVER = Principal(id="approver-1", tenant="t", roles=("approver",))
CFO = Principal(id="cfo-1", tenant="t", roles=("cfo",))
BOTH = Principal(id="both-1", tenant="t", roles=("approver", "cfo"))
ARGS: dict[str, Any] = {"from_account": "A1", "to_account": "A2", "amount": 1500}


class Clock:
    """The service's ``time.time``: tests move it, nothing waits."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(service_module.time, "time", c)
    return c


@pytest.fixture
def svc(tmp_path: Path) -> Iterator[ApprovalService]:
    service = ApprovalService(SQLiteApprovalStore(tmp_path / "a.db"),
                              digest_key=DigestKey(b"k" * 32))
    yield service
    assert service.store is not None
    asyncio.run(service.store.aclose())


def need(*roles: str, expires_s: int = 3600) -> Decision:
    return Decision(route="tool", approval=ApprovalRequirement(
        reasons=("big transfer",), roles=roles, expires_s=expires_s))


def gate(svc: ApprovalService, decision: Decision, rid: str = "r1") -> ApprovalRecord:
    return asyncio.run(svc.gate(AGENT, decision, request_id=rid, kind="tool",
                                operation="ledger.create_transfer", arguments=ARGS))


def held(svc: ApprovalService, decision: Decision, rid: str = "r1") -> ApprovalRequired:
    with pytest.raises(ApprovalRequired) as info:
        gate(svc, decision, rid)
    return info.value


def approve(svc: ApprovalService, who: Principal, approval_id: str) -> None:
    asyncio.run(svc.decide(who, approval_id, approve=True))


def first_approved(svc: ApprovalService, decision: Decision, who: Principal = APPROVER) -> str:
    approval_id: str = held(svc, decision).details["approval_id"]
    approve(svc, who, approval_id)
    return approval_id


def test_roles_tightened_hold_the_action_again(svc: ApprovalService, clock: Clock) -> None:
    old = first_approved(svc, need("approver"))
    again = held(svc, need("cfo"))
    new = again.details["approval_id"]
    assert new != old and again.details["approver_roles"] == ["cfo"]
    assert old in again.details["superseded"] and "no longer accepts" in str(again)
    assert held(svc, need("cfo")).details["approval_id"] == new  # stable while pending
    with pytest.raises(ApprovalForbidden):  # the old approver cannot decide the new one
        approve(svc, APPROVER, new)
    approve(svc, CFO, new)
    clock.now += 1
    assert gate(svc, need("cfo")).id == new  # consumed now ...
    assert gate(svc, need("cfo")).id == new  # ... and replays after


def test_a_role_added_keeps_the_approval(svc: ApprovalService, clock: Clock) -> None:
    old = first_approved(svc, need("approver"))
    assert gate(svc, need("approver", "cfo")).id == old


def test_an_approval_any_dropped_role_could_have_decided_does_not_count(
        svc: ApprovalService, clock: Clock) -> None:
    # Approver roles are not stored: whoever decided it held approver *or* cfo, so once
    # approver is dropped nobody can tell, and it is asked again (fail closed).
    first_approved(svc, need("approver", "cfo"), who=BOTH)
    assert held(svc, need("cfo")).details["approver_roles"] == ["cfo"]


def test_expiry_shortened_below_the_approvals_age(svc: ApprovalService, clock: Clock) -> None:
    old = first_approved(svc, need("approver", expires_s=3600))
    clock.now += 600
    again = held(svc, need("approver", expires_s=300))  # 600 s old, 300 s allowed now
    assert again.details["approval_id"] != old and "300 s" in again.details["superseded"]
    assert again.details["expires_at_unix"] == pytest.approx(clock.now + 300)


def test_expiry_shortened_but_still_within(svc: ApprovalService, clock: Clock) -> None:
    old = first_approved(svc, need("approver", expires_s=3600))
    clock.now += 100
    assert gate(svc, need("approver", expires_s=300)).id == old


def test_expiry_lengthened_does_not_extend_it(svc: ApprovalService, clock: Clock) -> None:
    first_approved(svc, need("approver", expires_s=60))
    clock.now += 120
    with pytest.raises(ApprovalExpired):  # its own deadline still stands
        gate(svc, need("approver", expires_s=3600))


def test_natural_expiry_is_still_expired_not_asked_again(
        svc: ApprovalService, clock: Clock) -> None:
    first_approved(svc, need("approver", expires_s=60))
    clock.now += 61
    with pytest.raises(ApprovalExpired):
        gate(svc, need("approver", expires_s=60))


def test_a_pending_approval_is_superseded_too(svc: ApprovalService, clock: Clock) -> None:
    old = held(svc, need("approver")).details["approval_id"]
    new = held(svc, need("cfo")).details["approval_id"]
    assert new != old
    approve(svc, APPROVER, old)  # deciding the stale one later changes nothing
    assert held(svc, need("cfo")).details["approval_id"] == new


def test_policy_going_back_finds_the_first_approval(svc: ApprovalService, clock: Clock) -> None:
    old = first_approved(svc, need("approver"))
    held(svc, need("cfo"))
    assert gate(svc, need("approver")).id == old


def test_rejected_stays_rejected_and_consumed_replays(svc: ApprovalService,
                                                      clock: Clock) -> None:
    rejected = held(svc, need("approver"), "r-rej").details["approval_id"]
    asyncio.run(svc.decide(APPROVER, rejected, approve=False, comment="no"))
    with pytest.raises(ApprovalRejected):
        gate(svc, need("cfo"), "r-rej")
    used = held(svc, need("approver"), "r-used").details["approval_id"]
    approve(svc, APPROVER, used)
    assert gate(svc, need("approver"), "r-used").id == used  # consumed: the action ran
    # It ran under the policy of its time; a retry replays its outcome, it is not asked again.
    assert gate(svc, need("cfo"), "r-used").id == used


def test_shown_digest_is_keyed_and_the_bound_one_is_not(svc: ApprovalService,
                                                        clock: Clock) -> None:
    from gateway.approvals import action_digest, describe

    rec = gate_pending(svc)
    bound = action_digest(AGENT, "tool", "ledger.create_transfer", ARGS)
    assert rec.digest == bound  # internal matching: plain, stable across keys and restarts
    shown = describe(rec, svc.digest_key)
    assert shown["action_hmac"] == DigestKey(b"k" * 32).digest(bound)
    assert shown["action_hmac"].startswith("hmac-sha256:") and bound not in str(shown)
    assert shown["digest_key_id"] == svc.digest_key.key_id
    assert describe(rec, DigestKey(b"j" * 32))["action_hmac"] != shown["action_hmac"]


def gate_pending(svc: ApprovalService) -> ApprovalRecord:
    approval_id = held(svc, need("approver"), "r-shown").details["approval_id"]
    rec = asyncio.run(svc.get(AGENT, approval_id))
    return rec
