"""The gRPC transport's own mapping from the gateway's stable error codes to status codes.

One place, as OPA's server writer keeps its HTTP status mapping beside the HTTP server: the
error hierarchy (:mod:`gateway.errors`) knows no transport.
"""

from __future__ import annotations

import grpc

from gateway.errors import (
    ApprovalConsumed,
    ApprovalExpired,
    ApprovalForbidden,
    ApprovalMismatch,
    ApprovalNotFound,
    ApprovalNotPending,
    ApprovalRejected,
    ApprovalRequired,
    BackendError,
    BackendUnavailable,
    ConfigError,
    DuplicateInFlight,
    GatewayError,
    IdempotencyConflict,
    InvalidRequest,
    MethodNotAllowed,
    OutcomeUnknown,
    OutputInvalid,
    PolicyDenied,
    PolicyError,
    RequestTimeout,
    ResourceExhausted,
    ResultInvalid,
    SandboxCrashed,
    SandboxError,
    SandboxMemory,
    SandboxTimeout,
    SchemaInvalid,
    SessionElsewhere,
    SessionLost,
    Unauthenticated,
    UnknownOperation,
)

__all__ = ["grpc_status_for"]

_STATUS: dict[str, grpc.StatusCode] = {
    ConfigError.code: grpc.StatusCode.FAILED_PRECONDITION,
    Unauthenticated.code: grpc.StatusCode.UNAUTHENTICATED,
    InvalidRequest.code: grpc.StatusCode.INVALID_ARGUMENT,
    UnknownOperation.code: grpc.StatusCode.NOT_FOUND,
    MethodNotAllowed.code: grpc.StatusCode.UNIMPLEMENTED,
    SchemaInvalid.code: grpc.StatusCode.INVALID_ARGUMENT,
    PolicyDenied.code: grpc.StatusCode.PERMISSION_DENIED,
    PolicyError.code: grpc.StatusCode.PERMISSION_DENIED,
    DuplicateInFlight.code: grpc.StatusCode.ABORTED,
    IdempotencyConflict.code: grpc.StatusCode.ALREADY_EXISTS,
    OutcomeUnknown.code: grpc.StatusCode.FAILED_PRECONDITION,
    BackendUnavailable.code: grpc.StatusCode.UNAVAILABLE,
    BackendError.code: grpc.StatusCode.FAILED_PRECONDITION,
    OutputInvalid.code: grpc.StatusCode.DATA_LOSS,
    ResultInvalid.code: grpc.StatusCode.DATA_LOSS,
    ResourceExhausted.code: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RequestTimeout.code: grpc.StatusCode.DEADLINE_EXCEEDED,
    SandboxError.code: grpc.StatusCode.INTERNAL,
    SandboxTimeout.code: grpc.StatusCode.DEADLINE_EXCEEDED,
    SandboxMemory.code: grpc.StatusCode.RESOURCE_EXHAUSTED,
    SandboxCrashed.code: grpc.StatusCode.INTERNAL,
    SessionElsewhere.code: grpc.StatusCode.FAILED_PRECONDITION,
    SessionLost.code: grpc.StatusCode.FAILED_PRECONDITION,
    ApprovalRequired.code: grpc.StatusCode.FAILED_PRECONDITION,
    ApprovalRejected.code: grpc.StatusCode.PERMISSION_DENIED,
    ApprovalExpired.code: grpc.StatusCode.FAILED_PRECONDITION,
    ApprovalMismatch.code: grpc.StatusCode.FAILED_PRECONDITION,
    ApprovalConsumed.code: grpc.StatusCode.FAILED_PRECONDITION,
    ApprovalNotFound.code: grpc.StatusCode.NOT_FOUND,
    ApprovalForbidden.code: grpc.StatusCode.PERMISSION_DENIED,
    ApprovalNotPending.code: grpc.StatusCode.FAILED_PRECONDITION,
}


def grpc_status_for(error: BaseException) -> grpc.StatusCode:
    """The single mapping from gateway errors to gRPC status codes."""
    if isinstance(error, GatewayError):
        return _STATUS.get(error.code, grpc.StatusCode.INTERNAL)
    return grpc.StatusCode.INTERNAL
