"""What every engine does around an evaluation: ids, fail-closed denies, span, decision log."""

from __future__ import annotations

import logging
import os
from typing import Any

import structlog
from opentelemetry import trace

from gateway.audit.logs import decision_log_level
from gateway.audit.redact import register_masked
from gateway.audit.tracing import contextual_tracer
from gateway.models import Decision, Limits

from .base import FAIL_CLOSED_MASK, POLICY_UNAVAILABLE, Discovery
from .inputs import redact

__all__ = ["fail_closed", "finish", "finish_discovery", "policy_unavailable", "tracer"]

# Spans go to the provider of the gateway whose call is current (each gateway owns one).
tracer = contextual_tracer("switchboard.policy")


def fail_closed(reason: str) -> Decision:
    """The deny returned whenever the policy could not decide."""
    return Decision(
        route="deny",
        reasons=(reason,),
        mask=FAIL_CLOSED_MASK,
        error_code="policy_error",
    )


def policy_unavailable(detail: str) -> Decision:
    """The deny returned for every action while no valid policy is loaded: the stable reason
    :data:`POLICY_UNAVAILABLE` first, then what is wrong."""
    return Decision(
        route="deny",
        reasons=(POLICY_UNAVAILABLE, detail),
        mask=FAIL_CLOSED_MASK,
        error_code="policy_error",
    )


def new_decision_id() -> str:
    """128 random bits as 32 hex digits (the shape ``uuid4().hex`` had, at a third of its
    cost: no UUID object, no version bits)."""
    return os.urandom(16).hex()


def _stamped(decision: Decision, decision_id: str, revision: str) -> Decision:
    """``replace(decision, decision_id=…, policy_revision=…)`` without re-running the frozen
    dataclass's per-field ``__init__`` (a copy of the instance dict: same fields, same types)."""
    out = object.__new__(Decision)
    fields = out.__dict__
    fields.update(decision.__dict__)
    fields["decision_id"] = decision_id
    fields["policy_revision"] = revision
    return out


def _limits_json(limits: Limits) -> dict[str, int]:
    return {"timeout_ms": limits.timeout_ms, "memory_mb": limits.memory_mb,
            "max_host_calls": limits.max_host_calls,
            "max_output_bytes": limits.max_output_bytes}


def finish(
    decision: Decision,
    *,
    input: dict[str, Any],
    revision: str,
    engine: str,
    latency_ms: float,
    span: trace.Span | None = None,
) -> Decision:
    """Stamp id + revision, record span attributes and write the ``policy.decision`` log
    line: a warning for a fail-closed deny, else at the configured decision level (debug by
    default, :func:`gateway.audit.logs.decision_log_level`); when that level is filtered out
    nothing of the line is built (its redacted input was a second walk of the arguments)."""
    decision = _stamped(decision, new_decision_id(), revision)
    if span is not None and span.is_recording():
        span.set_attribute("switchboard.decision_id", decision.decision_id)
        span.set_attribute("switchboard.route", decision.route)
        span.set_attribute("switchboard.policy_revision", revision)
        if decision.error_code:
            span.set_attribute("switchboard.error_code", decision.error_code)
        action = input.get("action")
        parent = action.get("parent_decision_id") if isinstance(action, dict) else None
        if isinstance(parent, str) and parent:
            span.set_attribute("switchboard.parent_decision_id", parent)
    # Resolved per call so logging configured after import (gateway/audit) is honoured.
    log = structlog.get_logger("switchboard.policy").bind()
    level = logging.WARNING if decision.error_code else decision_log_level()
    # The gateway's loggers filter by level (gateway/audit/logs.py); a host application's
    # own structlog configuration may not, and then the line is always built.
    # (Asked of the class: a generic BoundLogger turns any attribute into a log call.)
    if hasattr(type(log), "is_enabled_for") and not log.is_enabled_for(level):
        return decision  # the usual case: an ordinary decision at debug, the gateway at info
    mask = decision.mask if not decision.error_code else FAIL_CLOSED_MASK
    # The mask hides its paths; the same values elsewhere in the input (a memo quoting a
    # masked account, a key spelled as one) are the call's secrets, scrubbed from this line by
    # scrub_event like from every other line of the call (docs/audit.md, "Masked values in
    # free text") — registered here, as the pipeline registers them only once decide returns.
    action = input.get("action") if isinstance(input, dict) else None
    arguments = action.get("arguments") if isinstance(action, dict) else None
    if isinstance(arguments, dict):
        register_masked(arguments, mask, "action.arguments")
    getattr(log, logging.getLevelName(level).lower())(
        "policy.decision",
        decision_id=decision.decision_id,
        engine=engine,
        policy_revision=revision,
        latency_ms=round(latency_ms, 3),
        route=decision.route,
        reasons=list(decision.reasons),
        error_code=decision.error_code or None,
        input=redact(input, mask),
        result={
            "route": decision.route,
            "reasons": list(decision.reasons),
            "limits": _limits_json(decision.limits),
            "obligations": list(decision.obligations),
            "mask": list(decision.mask),
            "validation": decision.validation,
        },
    )
    return decision


def finish_discovery(result: Discovery, *, engine: str, latency_ms: float,
                     span: trace.Span | None = None) -> Discovery:
    """Span attributes and the ``policy.advertise`` log event (counts, not the names)."""
    if span is not None and span.is_recording():
        span.set_attribute("switchboard.policy_revision", result.policy_revision)
        span.set_attribute("switchboard.advertise.tools", len(result.tools))
        span.set_attribute("switchboard.advertise.code", len(result.code))
        if result.error:
            span.set_attribute("switchboard.error_code", "policy_error")
    log = structlog.get_logger("switchboard.policy")
    (log.warning if result.error else log.info)(
        "policy.advertise",
        engine=engine,
        policy_revision=result.policy_revision,
        latency_ms=round(latency_ms, 3),
        tools=len(result.tools),
        code=len(result.code),
        error=result.error,
    )
    return result
