"""The dedicated-tool channel: validate → claim the request_id → call → record → check.

Exactly-once argument (details in docs/tools.md): the intent is durable before any byte goes
to the backend; every attempt that may have reached the backend is counted on the record; a
record with such an attempt and no outcome is never blindly re-sent — the backend either
deduplicates by the forwarded key (declared idempotency-aware), or a reconciler asks it whether
the key already took effect, or the caller gets ``outcome_unknown``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from opentelemetry import trace

from gateway import errors
from gateway.audit import attributes as A
from gateway.audit import record_outcome
from gateway.audit.redact import CallSecrets, register_masked, scrub_error
from gateway.audit.tracing import contextual_tracer
from gateway.errors import (
    BackendError,
    BackendUnavailable,
    DuplicateInFlight,
    GatewayError,
    IdempotencyConflict,
    InvalidRequest,
    OutcomeUnknown,
)
from gateway.models import Operation, Principal
from gateway.tools.client import NOT_APPLIED_STATUS, BackendClient, may_have_applied
from gateway.tools.idempotency import (
    BeginResult,
    IdempotencyRecord,
    IdempotencySettings,
    IdempotencyStore,
    new_owner_id,
)
from gateway.tools.validation import check_output, validate_arguments

__all__ = [
    "Reconciler",
    "ToolChannel",
    "ToolOutcome",
    "discover_reconcilers",
    "fingerprint",
    "idempotency_key",
    "is_read",
]

log = structlog.get_logger(__name__)
_tracer = contextual_tracer("switchboard.tools")


@dataclass(frozen=True)
class ToolOutcome:
    result: Any
    replayed: bool  # True when this is the recorded outcome of an earlier call
    error: dict[str, Any] | None = None  # a recorded failure (only from ToolChannel.recorded)


@dataclass(frozen=True)
class Reconciler:
    """How to ask a backend whether an attempt with a given ``Idempotency-Key`` took effect.

    ``operation`` is a read-only lookup (e.g. ``ledger.list_transfers``); the key is passed in
    ``key_argument`` (a server-side filter; ``None`` to list without one) and the items of the
    answer are matched on ``match_field``. The matching item becomes the recorded result.
    """

    operation: Operation
    key_argument: str | None = "idempotency_key"
    match_field: str = "idempotency_key"

    async def lookup(self, client: BackendClient, key: str) -> tuple[bool, Any]:
        args = {self.key_argument: key} if self.key_argument else {}
        answer = await client.call(self.operation, args)
        for item in _items(answer):
            if isinstance(item, Mapping) and item.get(self.match_field) == key:
                return True, item
        return False, None


KEY_FILTERS = frozenset({"idempotency_key", "idempotencyKey", "Idempotency-Key"})


def discover_reconcilers(operations: Iterable[Operation]) -> dict[str, Reconciler]:
    """Pair each unsafe operation with a lookup by idempotency key on the same resource.

    The REST convention: ``POST /transfers`` is reconciled by ``GET /transfers`` when that
    accepts an ``idempotency_key`` query filter (the demo ledger's ``list_transfers``).
    """
    ops = list(operations)
    lookups: dict[tuple[str, str], tuple[Operation, str]] = {}
    for candidate in ops:
        if candidate.method.upper() != "GET":
            continue
        for param in candidate.parameters:
            if param.location == "query" and (param.wire_name or param.name) in KEY_FILTERS:
                lookups.setdefault((candidate.backend, candidate.path), (candidate, param.name))
    found: dict[str, Reconciler] = {}
    for target in ops:
        if target.method.upper() in ("GET", "HEAD", "OPTIONS"):
            continue
        hit = lookups.get((target.backend, target.path))
        if hit is not None:
            found[target.name] = Reconciler(hit[0], key_argument=hit[1])
    return found


def _items(answer: Any) -> list[Any]:
    if isinstance(answer, list):
        return answer
    if isinstance(answer, Mapping):
        for name in ("items", "data", "results", "transfers"):
            if isinstance(answer.get(name), list):
                return list(answer[name])
        return [answer]
    return []


READ_METHODS = frozenset({"GET", "HEAD"})


def is_read(op: Operation) -> bool:
    """Does ``op`` only read (a safe HTTP method)? Reads skip the idempotency store."""
    return op.method.upper() in READ_METHODS


def _canonical(value: Any) -> Any:
    """JSON numbers arrive as doubles over gRPC (Struct): 100.0 and 100 must fingerprint alike."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def fingerprint(op: Operation, arguments: Mapping[str, Any]) -> str:
    try:
        text = json.dumps([op.name, _canonical(arguments)], sort_keys=True,
                          separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"arguments: not plain JSON ({exc})", field="arguments") from None
    return hashlib.sha256(text.encode()).hexdigest()


def idempotency_key(principal: Principal, request_id: str) -> str:
    """Store key and forwarded ``Idempotency-Key``: scoped to tenant + principal, opaque."""
    text = json.dumps([principal.tenant, principal.id, request_id], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _is_final(error: GatewayError) -> bool:
    """Is this backend failure a definitive outcome that a retry must see again?"""
    if isinstance(error, BackendError):
        status = int(error.details.get("status", 0))
        return 200 <= status < 300 or (400 <= status < 500 and status not in NOT_APPLIED_STATUS)
    return False


def _rebuild(recorded: Mapping[str, Any]) -> GatewayError:
    cls = next((c for name in errors.__all__
                if isinstance(c := getattr(errors, name), type) and issubclass(c, GatewayError)
                and c.code == recorded.get("code")), GatewayError)
    details = dict(recorded.get("details") or {})
    details["replayed"] = True
    return cls(str(recorded.get("message", "")), field=str(recorded.get("field", "")),
               details=details)


class ToolChannel:
    """Runs dedicated tool calls with at-most-once effects per (tenant, principal, request_id)."""

    def __init__(
        self,
        client: BackendClient,
        store: IdempotencyStore,
        *,
        settings: IdempotencySettings | None = None,
        reconcilers: Mapping[str, Reconciler] | None = None,
        settle_s: float | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.settings = settings or IdempotencySettings()
        self.reconcilers = dict(reconcilers or {})
        self._settle_s = settle_s
        self.owner = new_owner_id()
        self._done: dict[str, asyncio.Event] = {}

    async def execute(
        self,
        op: Operation,
        arguments: Mapping[str, Any],
        *,
        request_id: str,
        principal: Principal,
        strict: bool,
        timeout_ms: int | None = None,
        mask: Sequence[str] = (),
    ) -> ToolOutcome:
        """Validate, claim, call, record. ``mask``: the decision's mask — its values are
        registered as the call's secrets, so no error this raises (or records for replays)
        and no span or log of the call quotes them."""
        secrets = register_masked(arguments, mask, "action.arguments")
        try:
            return await self._execute(op, arguments, request_id=request_id,
                                       principal=principal, strict=strict,
                                       timeout_ms=timeout_ms, mask=mask, secrets=secrets)
        except GatewayError as exc:
            scrub_error(exc, secrets)  # in place: replays recorded before scrubbing, too
            raise

    async def _execute(
        self,
        op: Operation,
        arguments: Mapping[str, Any],
        *,
        request_id: str,
        principal: Principal,
        strict: bool,
        timeout_ms: int | None,
        mask: Sequence[str],
        secrets: CallSecrets,
    ) -> ToolOutcome:
        if not request_id:
            raise InvalidRequest("request_id: required for tool calls (it is the idempotency "
                                 "key)", field="request_id")
        # The check is recorded on the call's own span (the tool call's root, or a code run's
        # `host_call`): `switchboard.schema.strict` here, and a violation as that span's
        # outcome (`schema_invalid`, `error.field`) when the error reaches it — no
        # `schema.validate` child span (docs/audit.md, "Span tree").
        call_span = trace.get_current_span()
        call_span.set_attribute(A.SCHEMA_STRICT, strict)
        validate_arguments(op, arguments, strict=strict, mask=mask)
        args = dict(arguments)
        if is_read(op):
            # A read has no effect for exactly-once to guard: no record, no claim, no replay
            # (docs/tools.md, "Reads skip it"). A retry simply reads again.
            call_span.set_attribute(A.IDEMPOTENCY_KEY_STATE, "read")
            result = await self.client.call(op, args, timeout_ms=timeout_ms)
            check_output(op, result)
            return ToolOutcome(result, replayed=False)
        key, fp = idempotency_key(principal, request_id), fingerprint(op, args)
        deadline = asyncio.get_running_loop().time() + self.settings.wait_s
        with _tracer.start_as_current_span(
                A.SPAN_IDEMPOTENCY, record_exception=False,
                set_status_on_exception=False) as span:
            span.set_attribute(A.REQUEST_ID, request_id)
            try:
                claim = await self._claim(op, key, fp, request_id, deadline)
            except BaseException as exc:
                span.set_attribute(A.IDEMPOTENCY_KEY_STATE, "conflict" if isinstance(
                    exc, IdempotencyConflict) else "in_flight")
                record_outcome(span, exc)
                raise
            record = claim.record
            state = "replayed" if record.state == "done" else (
                "recovering" if record.attempts > 0 else "new")
            span.set_attribute(A.IDEMPOTENCY_KEY_STATE, state)
            span.set_attribute("switchboard.idempotency.attempts", record.attempts)
            record_outcome(span)
        if record.state == "done":
            return self._replay(op, record)
        done = self._done[key] = asyncio.Event()
        heartbeat = _Heartbeat(self, key)
        try:
            if record.attempts > 0:
                found = await self._resolve(op, key, record, deadline)
                if found is not None:
                    return found
            return await self._attempt(op, args, key, timeout_ms, secrets, marked=claim.sent)
        except BaseException:
            # Cancelled or failed while owning the claim: give it up, keeping any attempt
            # history (a no-op when the step already completed or abandoned it).
            await self._abandon(key, retract=False)
            raise
        finally:
            heartbeat.stop()
            done.set()
            if self._done.get(key) is done:
                del self._done[key]

    async def recorded(self, principal: Principal, request_id: str) -> ToolOutcome | None:
        """The recorded outcome of a request, if it has one (for audit and operators)."""
        rec = await self.store.get(idempotency_key(principal, request_id))
        if rec is None or rec.state != "done" or rec.outcome is None:
            return None
        return ToolOutcome(rec.outcome.get("result"), True, rec.outcome.get("error"))

    # -- steps --

    async def _claim(self, op: Operation, key: str, fp: str, request_id: str,
                     deadline: float) -> BeginResult:
        """Claim the record; a fresh one (no attempt yet) is claimed *and* marked sent in one
        durable commit (``send=True``): nothing runs between the two steps but starting the
        heartbeat, so a crash after that commit leaves exactly the state a crash after
        ``mark_sent`` left — an attempt that may have applied, never re-sent blindly."""
        loop, poll = asyncio.get_running_loop(), 0.01
        while True:
            res = await self.store.begin(key, fp, op.name, owner=self.owner,
                                         lease_s=self.settings.lease_s, ttl_s=self.settings.ttl_s,
                                         send=True)
            rec = res.record
            if rec.fingerprint != fp:
                raise IdempotencyConflict(
                    f"request_id {request_id!r} was already used for a different call "
                    f"({rec.operation} with other arguments); use a new request_id",
                    field="request_id", details={"operation": rec.operation})
            if res.claimed or rec.state == "done":
                return res
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DuplicateInFlight(
                    f"request_id {request_id!r} is being executed by another call; retry with "
                    "the same request_id to get its outcome", field="request_id",
                    details={"operation": rec.operation,
                             "retry_after_s": round(max(0.0, rec.lease_until - time.time()), 3)})
            event = self._done.get(key)
            wait = min(remaining, poll)
            if event is not None and not event.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), wait)
            else:
                await asyncio.sleep(wait)
            poll = min(poll * 2, 0.2)

    def _replay(self, op: Operation, rec: IdempotencyRecord) -> ToolOutcome:
        outcome = rec.outcome or {}
        if outcome.get("error") is not None:
            raise _rebuild(outcome["error"])
        check_output(op, outcome.get("result"))
        return ToolOutcome(outcome.get("result"), replayed=True)

    def _settle_for(self, op: Operation) -> float:
        if self._settle_s is not None:
            return self._settle_s
        settings = self.client.settings.get(op.backend)
        return (settings.timeout_ms / 1000.0 if settings else 5.0) + 1.0

    async def _resolve(self, op: Operation, key: str, rec: IdempotencyRecord,
                       deadline: float) -> ToolOutcome | None:
        """An earlier attempt may have taken effect: find out before sending again.

        Returns the earlier attempt's outcome, or None when sending (again) cannot duplicate.
        """
        if self.client.honours_idempotency_key(op.backend):
            return None  # the backend deduplicates by the same forwarded key
        reconciler = self.reconcilers.get(op.name)
        if reconciler is None:
            await self._abandon(key, retract=False)
            raise OutcomeUnknown(
                f"an earlier attempt of this request ({op.name}) may have taken effect and "
                f"{op.backend} offers no way to check; it will not be sent again",
                field="request_id", details={"operation": op.name, "attempts": rec.attempts})
        loop = asyncio.get_running_loop()
        while True:
            try:
                found, item = await reconciler.lookup(self.client, key)
            except BaseException:
                await self._abandon(key, retract=False)
                raise
            if found:
                log.info("idempotency_reconciled", operation=op.name, backend=op.backend)
                await self.store.complete(key, self.owner, {"result": item}, self.settings.ttl_s)
                check_output(op, item)
                return ToolOutcome(item, replayed=True)
            settled_in = (rec.last_sent_at or 0.0) + self._settle_for(op) - time.time()
            if settled_in <= 0:
                return None  # not applied, and the earlier attempt can no longer land
            if loop.time() + settled_in > deadline:
                await self._abandon(key, retract=False, hold_s=settled_in)
                raise DuplicateInFlight(
                    f"an earlier attempt of this request ({op.name}) may still be in progress "
                    "at the backend; retry with the same request_id", field="request_id",
                    details={"operation": op.name, "retry_after_s": round(settled_in, 3)})
            await asyncio.sleep(settled_in)

    async def _attempt(self, op: Operation, args: dict[str, Any], key: str,
                       timeout_ms: int | None, secrets: CallSecrets | None = None, *,
                       marked: bool = False) -> ToolOutcome:
        # ``marked``: the claim already counted this attempt (one commit instead of two).
        if not marked and not await self.store.mark_sent(key, self.owner):
            raise DuplicateInFlight(f"lost the claim on this request ({op.name}); retry",
                                    field="request_id", details={"operation": op.name})
        try:
            result = await self.client.call(op, args, idempotency_key=key, timeout_ms=timeout_ms)
        except (BackendError, BackendUnavailable) as exc:
            if _is_final(exc):
                # The record replays this error to retries: store it without masked values.
                await self._finish(key, {"error": scrub_error(exc, secrets).to_dict()})
                raise
            applied = may_have_applied(exc)
            await self._abandon(key, retract=not applied)
            if applied:
                exc.details["outcome"] = "unknown"
            raise
        except BaseException:
            await self._abandon(key, retract=False)  # cancelled mid-call: outcome unknown
            raise
        await self._finish(key, {"result": result})
        check_output(op, result)
        return ToolOutcome(result, replayed=False)

    async def _finish(self, key: str, outcome: dict[str, Any]) -> None:
        stored = await asyncio.shield(
            self.store.complete(key, self.owner, outcome, self.settings.ttl_s))
        if not stored:
            log.warning("idempotency_claim_lost", key=key[:12])

    async def _abandon(self, key: str, *, retract: bool, hold_s: float = 0.0) -> None:
        await asyncio.shield(
            self.store.abandon(key, self.owner, retract_attempt=retract, hold_s=hold_s))

    def _beat_interval(self) -> float:
        return max(0.05, self.settings.lease_s / 3)

    async def _heartbeat(self, key: str) -> None:
        """Extend the lease now, then every interval (started one interval into the call)."""
        interval = self._beat_interval()
        while True:
            try:
                alive = await self.store.heartbeat(key, self.owner, self.settings.lease_s)
            except Exception as exc:  # the store hiccuped: the lease may still hold; try again
                log.warning("idempotency_heartbeat_failed", key=key[:12], error=repr(exc))
            else:
                if not alive:
                    log.warning("idempotency_lease_lost", key=key[:12])
                    return
            await asyncio.sleep(interval)


class _Heartbeat:
    """Keeps a claim's lease alive while its call runs. A timer, not a task, until the first
    beat is due: most calls end long before (the lease is 30 s, a beat every 10 s), and a task
    created and cancelled per call costs more than the call's own bookkeeping."""

    __slots__ = ("_handle", "_task")

    def __init__(self, channel: ToolChannel, key: str) -> None:
        self._task: asyncio.Task[None] | None = None
        self._handle = asyncio.get_running_loop().call_later(
            channel._beat_interval(), self._start, channel, key)

    def _start(self, channel: ToolChannel, key: str) -> None:
        self._task = asyncio.ensure_future(channel._heartbeat(key))

    def stop(self) -> None:
        self._handle.cancel()
        if self._task is not None:
            self._task.cancel()
