"""The outcome of a call on its span — including cancellation, which OpenTelemetry skips.

``start_as_current_span`` records only ``Exception`` subclasses; ``asyncio.CancelledError`` (a
client cancel, a server shutdown) is a ``BaseException``, so without help a cancelled call's
span ends with status UNSET and no trace of why. :func:`audited` closes that gap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry.trace import Span, Status, StatusCode

from gateway.audit import attributes as A
from gateway.errors import GatewayError

__all__ = ["CANCELLED", "DEADLINE_EXCEEDED", "audited", "outcome_of", "record_outcome"]

CANCELLED = "cancelled"
DEADLINE_EXCEEDED = "deadline_exceeded"


def outcome_of(error: BaseException | None) -> str:
    """``ok``, a gateway error code, ``cancelled``, ``deadline_exceeded`` or ``internal``."""
    if error is None:
        return A.OUTCOME_OK
    if isinstance(error, GatewayError):
        return error.code
    if isinstance(error, asyncio.CancelledError):
        return CANCELLED
    if isinstance(error, TimeoutError):
        return DEADLINE_EXCEEDED
    return "internal"


def record_outcome(span: Span, error: BaseException | None = None) -> str:
    """Set ``switchboard.outcome`` (+ ``error.type``, status, an exception event); return it.

    Expected outcomes (gateway errors, cancel, timeout) get an event without a stack trace;
    unexpected exceptions are recorded in full.
    """
    code = outcome_of(error)
    span.set_attribute(A.OUTCOME, code)
    if error is None:
        span.set_status(Status(StatusCode.OK))
        return code
    span.set_attribute(A.ERROR_TYPE, code)
    message = str(error) or type(error).__name__
    if isinstance(error, GatewayError):
        message = error.message
        if error.field:
            span.set_attribute(A.ERROR_FIELD, error.field[:256])
    if len(message) > 1024:  # messages may echo hostile input; the record stays small
        message = message[:1009] + "… [truncated]"
    if code == "internal":
        span.record_exception(error, escaped=True)
    else:
        span.add_event(
            "exception",
            {
                "exception.type": type(error).__name__,
                "exception.message": message,
                "exception.escaped": True,
            },
        )
    span.set_status(Status(StatusCode.ERROR, f"{code}: {message}"))
    return code


@contextmanager
def audited(span: Span) -> Iterator[Span]:
    """Record any exception escaping the block — ``CancelledError`` included — then re-raise.

    ``with tracer.start_as_current_span(...) as root, audited(root): ...``
    """
    try:
        yield span
    except BaseException as exc:
        record_outcome(span, exc)
        raise
