"""The MCP transport's own mapping of gateway errors, beside :mod:`gateway.grpc_status` for
gRPC: the error hierarchy (:mod:`gateway.errors`) knows no transport.

MCP has two ways to fail a ``tools/call``: a JSON-RPC error (the request itself is wrong at
the protocol level: an unknown tool is ``-32602``, as the spec has it) and a tool result with
``isError: true`` (everything the model should read and act on: denials, bad arguments,
approvals, backend failures). The HTTP layer answers an unauthenticated request ``401`` with
a JSON-RPC error ``-32001`` before MCP sees it, and an authenticated request with any method
but ``POST`` ``405`` (``Allow: POST``) with ``-32600`` / ``method_not_allowed``; a body not
complete within the body deadline is ``408`` / ``request_timeout``, one over the size limit
``413`` / ``resource_exhausted`` (:data:`HTTP_REFUSAL_STATUS`); a connection over the
listener's connection caps is ``503`` / ``resource_exhausted`` before any request is read
(:mod:`gateway.mcp_limits`). Every other
request (listing, reading, completion) fails as a JSON-RPC error only: :func:`request_error`.
"""

from __future__ import annotations

import json
from typing import Any

import mcp_types as types
from mcp.shared.exceptions import MCPError

from gateway.errors import (
    GatewayError,
    InvalidRequest,
    MethodNotAllowed,
    RequestTimeout,
    ResourceExhausted,
    SchemaInvalid,
    Unauthenticated,
    UnknownOperation,
)
from gateway.frontdoor import error_payload

__all__ = [
    "HTTP_REFUSAL_STATUS",
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "RESOURCE_NOT_FOUND",
    "UNAUTHENTICATED",
    "UnknownTool",
    "internal_error_result",
    "request_error",
    "tool_error_result",
    "tool_result",
    "unknown_tool_error",
]

# JSON-RPC codes of the MCP spec: invalid params (unknown tool/prompt), resource not found.
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RESOURCE_NOT_FOUND = -32002
# The JSON-RPC "invalid request" code: the body of every HTTP-level refusal of an
# authenticated request (the request never reached MCP; ``data.code`` says why).
INVALID_REQUEST = -32600
# Stable code of an HTTP-level refusal -> its HTTP status (each answered with
# ``Connection: close`` and audited by the guard in :mod:`gateway.mcp_http`).
HTTP_REFUSAL_STATUS: dict[str, int] = {
    MethodNotAllowed.code: 405,
    RequestTimeout.code: 408,
    ResourceExhausted.code: 413,
}
# The server-defined code of the 401 answer (before any MCP processing).
UNAUTHENTICATED = -32001


class UnknownTool(UnknownOperation):
    """A tool name that is neither a meta-tool nor any operation's: a JSON-RPC error, not a
    tool result (it is still ``unknown_operation`` in the audit)."""

    def __init__(self, recorded: str) -> None:
        super().__init__(f"Unknown tool: {recorded}", field="name")
        self.recorded = recorded


def tool_result(payload: dict[str, Any], *, is_error: bool) -> types.CallToolResult:
    """A payload as a tool result: the JSON text every client reads, and the same object as
    structured content."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str,
                      allow_nan=False)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content=payload,
        is_error=is_error,
    )


def tool_error_result(exc: GatewayError, trace_id: str) -> types.CallToolResult:
    """A gateway error as the tool result the model reads (the shared error payload)."""
    return tool_result(error_payload(exc, trace_id), is_error=True)


def internal_error_result(trace_id: str) -> types.CallToolResult:
    """An unexpected failure: never hand internals to the model (the log and span keep
    them)."""
    return tool_error_result(GatewayError("internal error"), trace_id)


def unknown_tool_error(exc: UnknownTool, trace_id: str) -> MCPError:
    return MCPError(INVALID_PARAMS, exc.message,
                    {"code": exc.code, "field": exc.field, "trace_id": trace_id})


def request_error(exc: Exception, trace_id: str) -> MCPError:
    """A failed request other than ``tools/call`` as a JSON-RPC error: the gateway's message
    and stable code for its own errors, only "internal error" for anything else (the SDK
    would otherwise send ``str(exc)`` to the client; the log and span keep it)."""
    if isinstance(exc, MCPError):
        return exc
    if not isinstance(exc, GatewayError):
        return MCPError(INTERNAL_ERROR, "internal error",
                        {"code": "internal", "trace_id": trace_id})
    if isinstance(exc, Unauthenticated):
        code = UNAUTHENTICATED
    elif isinstance(exc, InvalidRequest | SchemaInvalid | UnknownOperation):
        code = INVALID_PARAMS
    else:
        code = INTERNAL_ERROR
    data = {"code": exc.code, "trace_id": trace_id}
    if exc.field:
        data["field"] = exc.field
    return MCPError(code, exc.message, data)
