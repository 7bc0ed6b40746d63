"""Approvals: actions the policy holds until a principal with an approver role approves this
exact action (docs/approvals.md)."""

from __future__ import annotations

from gateway.approvals.service import (
    ApprovalService,
    action_digest,
    approval_key,
    describe,
    open_approval_store,
)
from gateway.approvals.store import ApprovalRecord, ApprovalStore, SQLiteApprovalStore

__all__ = [
    "ApprovalRecord",
    "ApprovalService",
    "ApprovalStore",
    "SQLiteApprovalStore",
    "action_digest",
    "approval_key",
    "describe",
    "open_approval_store",
]
