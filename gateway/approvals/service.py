"""The approval gate and the approvers' actions (docs/approvals.md).

The gate runs after the policy allowed an action that carries ``require_approval`` and before
anything reaches the idempotency store or the backend. One approval exists per (tenant,
principal, request_id, step) and is bound to the digest of the exact action and to the
requirement it was asked under (roles, expiry); it is consumed once, by the first retry that
finds it approved, and from then on lets that same request through to the idempotency channel
(which replays its recorded outcome) for as long as the channel keeps outcomes. An approval
the *current* decision's requirement no longer accepts (another approver role, a shorter
expiry) does not count: the action is held again.

Digests: ``ApprovalRecord.digest`` is a plain SHA-256 used only to match a retry to its
approval inside the gateway and its store; approvers and the audit trail see its HMAC under
the server's digest key (docs/approvals.md, "What is approved").
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, TraceFlags

from gateway.approvals.store import ApprovalRecord, ApprovalStore, SQLiteApprovalStore
from gateway.audit import attributes as attr
from gateway.audit import audited, redact
from gateway.audit.redact import DigestKey, register_masked, scrub_data
from gateway.audit.tracing import contextual_tracer
from gateway.errors import (
    ApprovalConsumed,
    ApprovalExpired,
    ApprovalForbidden,
    ApprovalMismatch,
    ApprovalNotFound,
    ApprovalNotPending,
    ApprovalRejected,
    ApprovalRequired,
    InvalidRequest,
    PolicyDenied,
)
from gateway.models import Decision, Principal
from gateway.tools.idempotency import IdempotencySettings

__all__ = [
    "APPROVAL_ID",
    "ApprovalService",
    "action_digest",
    "approval_key",
    "open_approval_store",
]

_tracer = contextual_tracer("switchboard.approvals")

# Span attributes (docs/audit.md).
APPROVAL_ID = "switchboard.approval.id"
APPROVAL_STATE = "switchboard.approval.state"
APPROVAL_OUTCOME = "switchboard.approval.outcome"
APPROVAL_TRACE_ID = "switchboard.approval.trace_id"
APPROVAL_REQUESTER = "switchboard.approval.requester_id"
APPROVAL_DIGEST = "switchboard.approval.action_hmac"  # keyed: see the module docstring
APPROVAL_COMMENT = "switchboard.approval.comment"
# The decider's roles that the approval accepts: the trail shows in which capacity it was decided.
APPROVAL_DECIDED_AS = "switchboard.approval.decided_as"
APPROVAL_SUPERSEDED = "switchboard.approval.superseded_id"  # one the policy no longer accepts
MAX_COMMENT = 2000


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def _sha(value: Any) -> str:
    text = json.dumps(_canonical(value), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def approval_key(principal: Principal, request_id: str, step: str = "") -> str:
    return _sha([principal.tenant, principal.id, request_id, step])


def action_digest(principal: Principal, kind: str, operation: str,
                  arguments: Mapping[str, Any], source_sha256: str = "") -> str:
    """What an approval is bound to: who, which operation, the exact arguments, and for a host
    call the run's source digest."""
    return _sha({"tenant": principal.tenant, "principal": principal.id, "kind": kind,
                 "operation": operation, "arguments": arguments,
                 "source_sha256": source_sha256})


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _link(rec: ApprovalRecord) -> list[Link]:
    try:
        ctx = SpanContext(trace_id=int(rec.trace_id, 16), span_id=int(rec.span_id, 16),
                          is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    except ValueError:
        return []
    return [Link(ctx)] if ctx.is_valid else []


def _details(rec: ApprovalRecord) -> dict[str, Any]:
    return {"approval_id": rec.id, "state": rec.effective_state(), "operation": rec.operation,
            "approver_roles": list(rec.roles), "reasons": list(rec.reasons),
            "expires_at": _iso(rec.expires_at), "expires_at_unix": rec.expires_at}


def open_approval_store(settings: IdempotencySettings) -> ApprovalStore | None:
    """Approvals live beside the idempotency records: the same SQLite file, PostgreSQL
    database or Redis, under their own tables/keys. None for anything else: actions needing
    approval are then denied."""
    scheme = urlsplit(settings.dsn).scheme
    if scheme == "sqlite":
        from gateway.tools.stores import _sqlite_path

        return SQLiteApprovalStore(_sqlite_path(settings.dsn))
    if scheme in ("postgresql", "postgres"):
        from gateway.approvals.postgres_store import PostgresApprovalStore

        return PostgresApprovalStore(settings.dsn)
    if scheme in ("redis", "rediss", "unix"):
        from gateway.approvals.redis_store import RedisApprovalStore

        return RedisApprovalStore(settings.dsn)
    return None


def _requirement_step(step: str, roles: tuple[str, ...], expires_s: float) -> str:
    """The step of the approval asked for again under another requirement: each requirement a
    request meets gets its own approval, and a policy that goes back finds the old one."""
    return f"{step}#requirement:{_sha([sorted(roles), float(expires_s)])[:16]}"


def _unmet(rec: ApprovalRecord, roles: tuple[str, ...], expires_s: float,
           now: float) -> str:
    """Why ``rec`` (not yet used) does not satisfy the current requirement; "" when it does.

    Approver roles are not stored, so the check is on the roles that could approve it: only
    if all of them are still accepted is its approver (who held one) known to be acceptable.
    """
    gone = sorted(set(rec.roles) - set(roles))
    if gone:
        return (f"approval {rec.id} could be decided by {' or '.join(gone)}, which the policy "
                f"no longer accepts (now: {' or '.join(roles)})")
    deadline = rec.created_at + expires_s
    if deadline < rec.expires_at - 1e-3 and deadline <= now:
        return (f"approval {rec.id} is older than the {expires_s:g} s the policy now allows "
                f"(it was asked for on {_iso(rec.created_at)})")
    return ""


class ApprovalService:
    def __init__(self, store: ApprovalStore | None, *, replay_s: float = 86400.0,
                 digest_key: DigestKey | None = None) -> None:
        self.store = store
        self.replay_s = replay_s  # how long a consumed approval lets its request replay
        # Keys the action digest approvers and the trail see (a random one if none is given).
        self.digest_key = digest_key or DigestKey.generate()

    def shown_digest(self, rec: ApprovalRecord) -> str:
        """What people see of the action digest: its HMAC, which no one can test guesses of
        masked arguments against without the key."""
        return self.digest_key.digest(rec.digest)

    # -- the gate --------------------------------------------------------------------------

    async def gate(self, principal: Principal, decision: Decision, *, request_id: str,
                   kind: str, operation: str, arguments: Mapping[str, Any],
                   source_sha256: str = "", step: str = "") -> ApprovalRecord:
        """Return when this exact action is approved (consuming the approval the first time);
        raise ApprovalRequired (creating the pending approval), ApprovalRejected,
        ApprovalExpired or ApprovalMismatch otherwise."""
        need = decision.approval
        assert need is not None
        outer = trace.get_current_span()  # the call's span: the approval names it
        with _tracer.start_as_current_span(
                "approval.check", record_exception=False,
                set_status_on_exception=False) as span, audited(span):
            span.set_attribute("switchboard.operation", operation)
            if self.store is None:
                raise PolicyDenied(
                    f"{operation}: the policy requires approval, and approvals need the "
                    "idempotency store (idempotency.dsn)",
                    reasons=list(need.reasons) or ["approval required"])
            if not request_id:
                raise InvalidRequest("request_id: required for actions that need approval",
                                     field="request_id")
            key = approval_key(principal, request_id, step)
            digest = action_digest(principal, kind, operation, arguments, source_sha256)
            span.set_attribute(APPROVAL_DIGEST, self.digest_key.digest(digest))
            span.set_attribute(attr.DIGEST_KEY_ID, self.digest_key.key_id)
            now = time.time()
            rec = await self.store.by_key(key)
            unmet = ""
            if rec is not None and rec.digest == digest and \
                    rec.effective_state(now) in ("pending", "approved"):
                unmet = _unmet(rec, need.roles, need.expires_s, now)
            if unmet:
                # Held again: a new approval under the current requirement, same request_id.
                assert rec is not None
                span.set_attribute(APPROVAL_SUPERSEDED, rec.id)
                key = approval_key(principal, request_id,
                                   _requirement_step(step, need.roles, need.expires_s))
                rec = await self.store.by_key(key)
            if rec is None:
                current = outer.get_span_context()
                # What approvers see: the masked paths redacted, and their values scrubbed
                # from every other string and key of the action and the policy's reasons (a
                # memo may quote a masked account; docs/audit.md, "Masked values in free
                # text").
                masked = register_masked(arguments, decision.mask, "action.arguments")
                shown = scrub_data(redact({"arguments": dict(arguments)},
                                          [m.removeprefix("action.") for m in decision.mask]),
                                   masked)
                rec = await self.store.create(ApprovalRecord(
                    id="apr-" + secrets.token_hex(10), key=key, tenant=principal.tenant,
                    requester_id=principal.id, request_id=request_id, kind=kind,
                    operation=operation, digest=digest,
                    action={"kind": kind, "operation": operation,
                            **({"source_sha256": source_sha256} if source_sha256 else {}),
                            **shown},
                    reasons=tuple(scrub_data(list(need.reasons), masked)),
                    roles=tuple(need.roles), state="pending",
                    created_at=now, expires_at=now + need.expires_s,
                    trace_id=format(current.trace_id, "032x"),
                    span_id=format(current.span_id, "016x"),
                    decision_id=decision.decision_id,
                    policy_revision=decision.policy_revision))
            span.set_attribute(APPROVAL_ID, rec.id)
            if rec.trace_id:
                span.set_attribute(APPROVAL_TRACE_ID, rec.trace_id)
            for link in _link(rec):
                span.add_link(link.context, {"switchboard.link": "approval.request"})
            outer.set_attribute(APPROVAL_ID, rec.id)
            outcome = await self._settle(rec, digest, request_id, now, unmet)
            span.set_attribute(APPROVAL_STATE, rec.effective_state(now))
            span.set_attribute(APPROVAL_OUTCOME, outcome)
            return rec

    async def _settle(self, rec: ApprovalRecord, digest: str, request_id: str,
                      now: float, unmet: str = "") -> str:
        assert self.store is not None
        if rec.digest != digest:
            raise ApprovalMismatch(
                f"request_id {request_id!r} is bound to approval {rec.id} for a different "
                f"action ({rec.operation} with other arguments); changed arguments need a new "
                "approval: use a new request_id", field="request_id",
                details={"approval_id": rec.id, "operation": rec.operation})
        state = rec.effective_state(now)
        if state == "approved":
            if await self.store.consume(rec.id, now):
                return "consumed"
            fresh = await self.store.get(rec.id)
            assert fresh is not None
            rec, state = fresh, fresh.effective_state(now)
        if state == "consumed":
            if rec.consumed_at is not None and now < rec.consumed_at + self.replay_s:
                return "replayed"
            raise ApprovalConsumed(
                f"approval {rec.id} was used on {_iso(rec.consumed_at or now)} and its outcome "
                "is no longer kept; use a new request_id", field="request_id",
                details={"approval_id": rec.id})
        if state == "pending":
            roles = " or ".join(rec.roles)
            again = f" ({unmet}: asked again)" if unmet else ""
            raise ApprovalRequired(
                f"{rec.operation}: held for approval {rec.id} by {roles} until "
                f"{_iso(rec.expires_at)}{again}; nothing was executed. Once approved, retry "
                "with the same request_id and arguments",
                details={**_details(rec), **({"superseded": unmet} if unmet else {})})
        if state == "rejected":
            raise ApprovalRejected(
                f"{rec.operation}: approval {rec.id} was rejected by {rec.decided_by}"
                + (f": {rec.comment}" if rec.comment else ""),
                details={**_details(rec), "decided_by": rec.decided_by,
                         "comment": rec.comment})
        await self.store.expire(rec.id, now)
        raise ApprovalExpired(
            f"{rec.operation}: approval {rec.id} expired on {_iso(rec.expires_at)} before it "
            "was used; a new request_id asks for approval again", field="request_id",
            details=_details(rec))

    # -- the run call log (code runs that paused for approval) -----------------------------

    async def run_log(self, principal: Principal, request_id: str) -> dict[int, tuple[str, Any]]:
        """Host calls a run with this request_id recorded before it paused ({} if none)."""
        if self.store is None or not request_id:
            return {}
        return await self.store.run_calls(approval_key(principal, request_id, "run"))

    async def record_calls(self, principal: Principal, request_id: str,
                           calls: Mapping[int, tuple[str, Any]]) -> None:
        if self.store is None or not request_id:
            return
        key = approval_key(principal, request_id, "run")
        for index, (digest, result) in sorted(calls.items()):
            await self.store.record_call(key, index, digest, result)

    # -- the approvers' side ---------------------------------------------------------------

    def _store(self) -> ApprovalStore:
        if self.store is None:
            raise ApprovalNotFound("approvals are not enabled (they need an idempotency "
                                   "store: idempotency.dsn)")
        return self.store

    async def list(self, principal: Principal, state: str | None = "pending",
                   limit: int = 100) -> list[ApprovalRecord]:
        if state not in (None, "", "pending", "approved", "rejected", "consumed", "expired"):
            raise InvalidRequest(f"state: unknown approval state {state!r}", field="state")
        found = await self._store().list(principal.tenant, state or None, 10_000)
        return [r for r in found if _may_see(principal, r)][:max(1, min(limit, 500))]

    async def get(self, principal: Principal, approval_id: str) -> ApprovalRecord:
        rec = await self._store().get(approval_id)
        if rec is None or not _may_see(principal, rec):
            raise ApprovalNotFound(f"no approval {approval_id!r} in tenant "
                                   f"{principal.tenant!r}", field="approval_id")
        return rec

    async def decide(self, principal: Principal, approval_id: str, *, approve: bool,
                     comment: str = "") -> ApprovalRecord:
        verb = "approve" if approve else "reject"
        comment = comment.strip()[:MAX_COMMENT]
        rec = await self._store().get(approval_id)
        if rec is None or rec.tenant != principal.tenant:
            raise ApprovalNotFound(f"no approval {approval_id!r} in tenant "
                                   f"{principal.tenant!r}", field="approval_id")
        with _tracer.start_as_current_span(
                f"approval.{verb}", links=_link(rec), record_exception=False,
                set_status_on_exception=False) as span, audited(span):
            span.set_attribute(APPROVAL_ID, rec.id)
            span.set_attribute(APPROVAL_TRACE_ID, rec.trace_id)
            span.set_attribute(APPROVAL_REQUESTER, rec.requester_id)
            span.set_attribute(APPROVAL_DIGEST, self.shown_digest(rec))
            span.set_attribute(attr.DIGEST_KEY_ID, self.digest_key.key_id)
            span.set_attribute("switchboard.operation", rec.operation)
            span.set_attribute("switchboard.principal.id", principal.id)
            if comment:
                span.set_attribute(APPROVAL_COMMENT, comment)
            _check_approver(principal, rec, verb)
            span.set_attribute(APPROVAL_DECIDED_AS, sorted(set(principal.roles) & set(rec.roles)))
            now = time.time()
            if not await self._store().decide(rec.id, approve=approve, by=principal.id,
                                              comment=comment, now=now):
                fresh = await self.get(principal, approval_id)
                raise ApprovalNotPending(
                    f"approval {rec.id} is {fresh.effective_state(now)}, not pending",
                    field="approval_id", details={"state": fresh.effective_state(now)})
            done = await self.get(principal, approval_id)
            span.set_attribute(APPROVAL_STATE, done.state)
            return done


def _may_see(principal: Principal, rec: ApprovalRecord) -> bool:
    """The requester and the principals who could decide it (same tenant, an approver role)."""
    return rec.tenant == principal.tenant and (
        rec.requester_id == principal.id or bool(set(principal.roles) & set(rec.roles)))


def _check_approver(principal: Principal, rec: ApprovalRecord, verb: str) -> None:
    if principal.id == rec.requester_id:
        raise ApprovalForbidden(f"{principal.id} requested {rec.id} and cannot {verb} it "
                                "(no self-approval)", field="approval_id")
    if not set(principal.roles) & set(rec.roles):
        raise ApprovalForbidden(
            f"{verb} {rec.id} needs the role {' or '.join(rec.roles)}; {principal.id} lacks it",
            field="approval_id", details={"approver_roles": list(rec.roles)})


def describe(rec: ApprovalRecord, key: DigestKey) -> dict[str, Any]:
    """An approval as JSON for the CLI and MCP: the masked action, never the raw one, and the
    HMAC of its digest, never the plain digest (it would give the masked values back)."""
    return {"approval_id": rec.id, "state": rec.effective_state(), "tenant": rec.tenant,
            "requester_id": rec.requester_id, "request_id": rec.request_id, "kind": rec.kind,
            "operation": rec.operation, "action": rec.action, "reasons": list(rec.reasons),
            "approver_roles": list(rec.roles), "created_at": _iso(rec.created_at),
            "expires_at": _iso(rec.expires_at), "decided_by": rec.decided_by,
            "comment": rec.comment, "trace_id": rec.trace_id, "action_hmac": key.digest(rec.digest),
            "digest_key_id": key.key_id}
