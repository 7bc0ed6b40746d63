"""One call scope for both doors: the per-call bookkeeping that makes a gRPC call and an MCP
tool call look the same to an auditor.

:func:`call_scope` opens the call's root span (SERVER kind, the caller's W3C context as
parent), sets the attributes every call carries (``switchboard.transport``,
``switchboard.request_id``, the door's own ``rpc.*`` / ``mcp.*`` / ``gen_ai.*`` keys),
authenticates the caller (recorded on the root: principal, tenant, roles), binds the principal (for
:func:`current_principal`) and the structlog context, and on the way out records the
outcome (``switchboard.outcome``, ``error.type``, status, the exception event), writes one
log line and ends the span — which is the audit record (:mod:`gateway.audit`). The door only
maps the error it re-raises to its own status (``gateway.grpc_status``,
``gateway.mcp_errors``).
"""

from __future__ import annotations

import contextvars
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind
from opentelemetry.util.types import AttributeValue

from gateway.audit import attributes as attr
from gateway.audit import outcome_of, record_outcome
from gateway.errors import GatewayError, ResourceExhausted, Unauthenticated
from gateway.identity import Authenticator
from gateway.models import Outcome, Principal

__all__ = ["CallScope", "PrincipalCalls", "authenticate", "call_scope", "current_principal",
           "returned", "trace_id_of"]

_scope: contextvars.ContextVar[CallScope | None] = contextvars.ContextVar(
    "switchboard_call_scope", default=None)
log = structlog.get_logger("switchboard.call")


def current_principal() -> Principal:
    """The authenticated caller of the current call (set by :func:`call_scope`)."""
    scope = _scope.get()
    if scope is None or scope.principal is None:  # pragma: no cover - set before the handler
        raise RuntimeError("no authenticated principal in this context")
    return scope.principal


def returned(outcome: Outcome) -> Outcome:
    """Tell the current call's scope what the pipeline answered (see
    :meth:`CallScope.returned`); returns ``outcome``."""
    scope = _scope.get()
    return scope.returned(outcome) if scope is not None else outcome


def trace_id_of(span: trace.Span) -> str:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


@dataclass
class CallScope:
    """One open call. The door may set :attr:`error` (what to record instead of the exception
    that escapes, e.g. a deadline rather than a bare cancel) and :meth:`returned` (an outcome
    whose error is data, such as ``user_code_error``)."""

    span: trace.Span
    trace_id: str
    request_id: str
    principal: Principal | None = None
    error: BaseException | None = None
    data_error: str = ""
    outcome: str = ""
    fields: dict[str, Any] = field(default_factory=dict)

    def returned(self, outcome: Outcome) -> Outcome:
        """Note what the pipeline answered: an error carried as data (the code's own error)
        is the call's outcome, though the call itself succeeded."""
        if outcome.error:
            self.data_error = str(outcome.error.get("code", "")) or "error"
        return outcome


class PrincipalCalls:
    """The calls each principal has in flight on this gateway process, over both doors, and
    the most it may have (``max_calls_in_flight_per_principal``). Without it one principal
    could take every gRPC slot (``max_concurrent_rpcs``; HTTP/2 carries them all on one
    connection) with slow calls — long code runs, a slow backend — and shut everyone else
    out. A call over the cap is refused as soon as its caller is known, before any work."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open: Counter[tuple[str, str]] = Counter()

    def enter(self, principal: Principal) -> tuple[str, str]:
        key = (principal.tenant, principal.id)
        if self.open[key] >= self.limit:
            raise ResourceExhausted(
                f"this principal already has {self.limit} calls in flight, the most it may "
                "have; retry when one has ended",
                details={"max_calls_in_flight_per_principal": self.limit})
        self.open[key] += 1
        return key

    def leave(self, key: tuple[str, str]) -> None:
        self.open[key] -= 1
        if self.open[key] <= 0:
            del self.open[key]


async def authenticate(authenticator: Authenticator, token: str | None) -> Principal:
    """The caller of ``token``, or :class:`Unauthenticated`: every door's verdict ends in one of
    the two, even if the authenticator breaks its own promise (an error that escaped would be
    an INTERNAL / HTTP 500 with no refusal on record). Logged by type only: a message may
    quote the token."""
    try:
        return await authenticator.authenticate_async(token)
    except GatewayError:
        raise
    except Exception as exc:
        log.warning("authentication failed unexpectedly", error_type=type(exc).__name__)
        raise Unauthenticated("invalid token: it cannot be verified") from None


@asynccontextmanager
async def call_scope(
    tracer: trace.Tracer,
    authenticator: Authenticator,
    *,
    transport: str,
    span_name: str,
    token: str | None,
    raw_request_id: str,
    attributes: Mapping[str, AttributeValue] | None = None,
    parent: Context | None = None,
    log_fields: Mapping[str, Any] | None = None,
    on_open: Callable[[CallScope], None] | None = None,
    on_end: Callable[[trace.Span, BaseException | None], None] | None = None,
    refused: GatewayError | None = None,
    in_flight: PrincipalCalls | None = None,
) -> AsyncIterator[CallScope]:
    """The bookkeeping of one call, the same for every door (see the module docstring).

    ``raw_request_id`` is recorded as given when well formed, else as a bounded stand-in
    (:func:`gateway.frontdoor.envelope.recorded_request_id`): the envelope is checked only
    once the caller is known. ``on_open(scope)`` runs as soon as the span is open (before
    authentication: a door that quotes the trace id in a refusal takes it there);
    ``on_end(span, error)`` lets the door add its own status attribute
    (``rpc.grpc.status_code``) before the span ends. ``refused`` is a verdict the door's own
    guard already reached on this token (MCP's 401 guard): the root records it
    instead of authenticating again, so a refused caller leaves the same record on every door.
    ``in_flight`` counts the call against its principal's cap (a call over it is refused
    ``resource_exhausted``, recorded with the principal).
    """
    started = time.perf_counter()
    opening: dict[str, AttributeValue] = {attr.TRANSPORT: transport}
    if attributes:
        opening.update(attributes)
    opening[attr.REQUEST_ID] = raw_request_id
    with tracer.start_as_current_span(
        span_name, context=parent, kind=SpanKind.SERVER, attributes=opening,
        record_exception=False, set_status_on_exception=False,
    ) as span:
        scope = CallScope(span=span, trace_id=trace_id_of(span), request_id=raw_request_id)
        structlog.contextvars.bind_contextvars(
            trace_id=scope.trace_id, request_id=raw_request_id, transport=transport,
            **dict(log_fields or {}))
        scope_token: contextvars.Token[CallScope | None] | None = None
        held: tuple[str, str] | None = None
        escaped: BaseException | None = None
        try:
            if on_open is not None:
                on_open(scope)
            # Authentication is recorded on the root itself (no `identity` child span: the
            # root already carried every fact that span did — principal, tenant, and on a
            # refusal the outcome, error type and status — and a span with its audit record
            # costs ~0.15 ms of CPU per call; docs/audit.md, "Span tree").
            if refused is not None:
                raise refused
            principal = await authenticate(authenticator, token)
            scope.principal = principal
            span.set_attributes({attr.PRINCIPAL_ID: principal.id, attr.TENANT: principal.tenant,
                                 attr.ROLES: list(principal.roles)})
            structlog.contextvars.bind_contextvars(principal=principal.id,
                                                   tenant=principal.tenant)
            if in_flight is not None:
                held = in_flight.enter(principal)
            scope_token = _scope.set(scope)
            yield scope
        except BaseException as exc:
            escaped = exc
            raise
        finally:
            if held is not None and in_flight is not None:
                in_flight.leave(held)
            error = scope.error if scope.error is not None else escaped
            if error is not None and outcome_of(error) == "internal":  # not a deadline/cancel
                log.exception("internal error", exc_info=error)
            scope.outcome = record_outcome(span, error)
            if error is None and scope.data_error:
                span.set_attribute(attr.OUTCOME, scope.data_error)
                scope.outcome = scope.data_error
            if on_end is not None:
                on_end(span, error)
            log.info("call", outcome=scope.outcome,
                     duration_ms=round((time.perf_counter() - started) * 1000, 3),
                     **scope.fields)
            if scope_token is not None:
                _scope.reset(scope_token)
            structlog.contextvars.clear_contextvars()
