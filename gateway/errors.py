"""One error hierarchy with stable string codes.

Every failure the gateway reports carries a ``code`` that clients and dashboards can rely on,
an optional ``field`` path naming the offending input, and ``details``. This module knows no
transport: gRPC maps codes to its status codes in :mod:`gateway.grpc_status`, MCP to JSON-RPC
errors and tool results in :mod:`gateway.mcp_errors` (docs/front-door.md).
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "ApprovalConsumed",
    "ApprovalExpired",
    "ApprovalForbidden",
    "ApprovalMismatch",
    "ApprovalNotFound",
    "ApprovalNotPending",
    "ApprovalRejected",
    "ApprovalRequired",
    "BackendError",
    "BackendUnavailable",
    "ConfigError",
    "DuplicateInFlight",
    "GatewayError",
    "IdempotencyConflict",
    "InvalidRequest",
    "MethodNotAllowed",
    "OutcomeUnknown",
    "OutputInvalid",
    "PolicyDenied",
    "PolicyError",
    "RequestTimeout",
    "ResourceExhausted",
    "ResultInvalid",
    "SandboxCrashed",
    "SandboxError",
    "SandboxMemory",
    "SandboxTimeout",
    "SchemaInvalid",
    "SessionElsewhere",
    "SessionLost",
    "Unauthenticated",
    "UnknownOperation",
]


class GatewayError(Exception):
    """Base of every error the gateway reports to a caller."""

    code: ClassVar[str] = "internal"

    def __init__(
        self, message: str, *, field: str = "", details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details: dict[str, Any] = dict(details or {})

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            out["field"] = self.field
        if self.details:
            out["details"] = self.details
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class ConfigError(GatewayError):
    """The configuration file is invalid; ``field`` names the bad key."""

    code = "config_invalid"


class Unauthenticated(GatewayError):
    code = "unauthenticated"


class InvalidRequest(GatewayError):
    """The request itself is malformed (missing action, bad request_id, oversized, ...)."""

    code = "invalid_request"


class MethodNotAllowed(GatewayError):
    """The transport does not serve this request method at this endpoint (the MCP door
    answers only POST: it offers no server-initiated stream, so a standalone ``GET`` SSE
    stream is refused, as are ``DELETE`` and the rest); ``details.allow`` lists what it
    serves."""

    code = "method_not_allowed"


class RequestTimeout(GatewayError):
    """The request did not arrive in time (the MCP door's body deadline): a client trickling
    or withholding its body would otherwise hold a connection and a task forever."""

    code = "request_timeout"


class UnknownOperation(GatewayError):
    code = "unknown_operation"


class SchemaInvalid(GatewayError):
    """Arguments violate the operation's JSON Schema; nothing reached the backend."""

    code = "schema_invalid"


class PolicyDenied(GatewayError):
    code = "policy_denied"

    def __init__(self, message: str, *, reasons: list[str] | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.reasons = list(reasons or [])
        self.details.setdefault("reasons", self.reasons)


class PolicyError(GatewayError):
    """The policy could not decide (engine error, undefined or malformed decision): deny."""

    code = "policy_error"


class DuplicateInFlight(GatewayError):
    """The same request_id is being executed right now; the duplicate is not run."""

    code = "duplicate_in_flight"


class IdempotencyConflict(GatewayError):
    """A request_id was reused with a different action or arguments."""

    code = "idempotency_conflict"


class OutcomeUnknown(GatewayError):
    """An earlier attempt with this request_id may have taken effect and its outcome cannot be
    established; the gateway will not risk a second effect. Needs reconciliation."""

    code = "outcome_unknown"


class BackendUnavailable(GatewayError):
    """The backend could not be reached (down, timed out, circuit open)."""

    code = "backend_unavailable"


class BackendError(GatewayError):
    """The backend answered with an error status; details carry its status and message."""

    code = "backend_error"


class OutputInvalid(GatewayError):
    """A result did not match the declared output schema."""

    code = "output_invalid"


class ResultInvalid(GatewayError):
    """A result cannot be carried to the client as JSON: a NaN or infinity, or nesting deeper
    than the gateway's limit; ``field`` is its path (``result.rows[2].total``). The action
    itself ran (its effects, stdout and audit record stand)."""

    code = "result_invalid"


class ResourceExhausted(GatewayError):
    """A budget ran out: host calls, request size, concurrency."""

    code = "resource_exhausted"


class SandboxError(GatewayError):
    """The sandbox infrastructure failed (not the user's code: that comes back as data)."""

    code = "sandbox_error"


class SandboxTimeout(SandboxError):
    code = "sandbox_timeout"


class SandboxMemory(SandboxError):
    code = "sandbox_memory"


class SandboxCrashed(SandboxError):
    code = "sandbox_crashed"


class SessionElsewhere(GatewayError):
    """The code session is held by another gateway replica: route the run there."""

    code = "session_elsewhere"


class SessionLost(GatewayError):
    """The code session's interpreter is gone with the replica that held it; the next run with
    the same session_id starts a fresh session."""

    code = "session_lost"


class ApprovalRequired(GatewayError):
    """The policy holds this action for approval; nothing took effect. ``details`` carry
    ``approval_id``, ``approver_roles``, ``reasons`` and ``expires_at``: once approved, retry
    with the same request_id and the same arguments (docs/approvals.md)."""

    code = "approval_required"


class ApprovalRejected(GatewayError):
    """An approver rejected this action (``details.comment``); it will never run."""

    code = "approval_rejected"


class ApprovalExpired(GatewayError):
    """The approval of this action expired before it was used; a new request_id asks again."""

    code = "approval_expired"


class ApprovalMismatch(GatewayError):
    """The request_id's approval was for a different action (other arguments or code)."""

    code = "approval_mismatch"


class ApprovalConsumed(GatewayError):
    """The approval was already used up and its outcome can no longer be replayed."""

    code = "approval_consumed"


class ApprovalNotFound(GatewayError):
    code = "approval_not_found"


class ApprovalForbidden(GatewayError):
    """The caller may not decide this approval (lacks the role, or it is their own request)."""

    code = "approval_forbidden"


class ApprovalNotPending(GatewayError):
    """The approval was already decided, or expired."""

    code = "approval_not_pending"
