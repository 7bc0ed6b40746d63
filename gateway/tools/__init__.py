"""The dedicated-tool channel: validated, idempotent, retried, audited backend calls."""

from __future__ import annotations

from gateway.tools.breaker import BreakerPolicy, CircuitBreaker
from gateway.tools.channel import (
    Reconciler,
    ToolChannel,
    ToolOutcome,
    discover_reconcilers,
    idempotency_key,
)
from gateway.tools.client import BackendClient, RetryPolicy
from gateway.tools.idempotency import (
    BeginResult,
    IdempotencyRecord,
    IdempotencySettings,
    IdempotencyStore,
)
from gateway.tools.stores import open_idempotency_store
from gateway.tools.validation import check_output, validate_arguments

__all__ = [
    "BackendClient",
    "BeginResult",
    "BreakerPolicy",
    "CircuitBreaker",
    "IdempotencyRecord",
    "IdempotencySettings",
    "IdempotencyStore",
    "Reconciler",
    "RetryPolicy",
    "ToolChannel",
    "ToolOutcome",
    "check_output",
    "discover_reconcilers",
    "idempotency_key",
    "open_idempotency_store",
    "validate_arguments",
]
