"""Span names and attribute keys of the audit trail: one documented vocabulary.

Everything an auditor needs that OpenTelemetry semantic conventions do not name lives under
``switchboard.*``; the semconv names we do use are re-exported here so the whole gateway
imports attribute keys from one place (and a typo is an ImportError, not a silent new key).
See docs/audit.md for the meaning of each key.
"""

from __future__ import annotations

from typing import Final

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as _gen_ai
from opentelemetry.semconv._incubating.attributes import rpc_attributes as _rpc
from opentelemetry.semconv.attributes import (
    error_attributes as _error,
)
from opentelemetry.semconv.attributes import (
    http_attributes as _http,
)
from opentelemetry.semconv.attributes import (
    server_attributes as _server,
)
from opentelemetry.semconv.attributes import (
    url_attributes as _url,
)

__all__ = [
    "ACTION_KIND",
    "ARGUMENTS",
    "ARGUMENTS_HMAC",
    "BACKEND",
    "CLIENT_ADDRESS",
    "CODE_BYTES",
    "CODE_HMAC",
    "CONNECTIONS_LIMIT",
    "CONNECTIONS_REFUSED",
    "DECISION_ID",
    "DIGEST_KEY_ID",
    "ERROR_FIELD",
    "ERROR_TYPE",
    "GEN_AI_OPERATION_NAME",
    "GEN_AI_TOOL_CALL_ID",
    "GEN_AI_TOOL_NAME",
    "HOST_CALLS",
    "HTTP_REQUEST_METHOD",
    "HTTP_RESPONSE_STATUS_CODE",
    "IDEMPOTENCY_KEY_STATE",
    "LIMIT_MAX_HOST_CALLS",
    "LIMIT_MAX_OUTPUT_BYTES",
    "LIMIT_MEMORY_MB",
    "LIMIT_TIMEOUT_MS",
    "OBLIGATIONS",
    "OPERATION",
    "OUTCOME",
    "OUTCOME_OK",
    "OUTPUT_BYTES",
    "PARENT_DECISION_ID",
    "POLICY_REVISION",
    "PRINCIPAL_ID",
    "REASONS",
    "REPLAYED",
    "REQUEST_ID",
    "RESULT_SHA256",
    "ROLES",
    "ROUTE",
    "RPC_GRPC_STATUS_CODE",
    "RPC_METHOD",
    "RPC_SERVICE",
    "RPC_SYSTEM",
    "SANDBOX_EXIT",
    "SCHEMA_STRICT",
    "SERVER_ADDRESS",
    "SESSION_ID",
    "SPAN_BACKEND_CALL",
    "SPAN_EXECUTE",
    "SPAN_HOST_CALL",
    "SPAN_IDEMPOTENCY",
    "SPAN_POLICY_DECIDE",
    "SPAN_SANDBOX_RUN",
    "TENANT",
    "TRANSPORT",
    "URL_FULL",
    "backend_call_span_name",
    "host_call_span_name",
]

# --- span names ---------------------------------------------------------------------------
SPAN_EXECUTE: Final = "switchboard.v1.Gateway/Execute"
SPAN_POLICY_DECIDE: Final = "policy.decide"
SPAN_IDEMPOTENCY: Final = "idempotency"
SPAN_BACKEND_CALL: Final = "backend.call"
SPAN_SANDBOX_RUN: Final = "sandbox.run"
SPAN_HOST_CALL: Final = "host_call"


def backend_call_span_name(operation: str) -> str:
    """``backend.call <operation>`` (CLIENT kind)."""
    return f"{SPAN_BACKEND_CALL} {operation}"


def host_call_span_name(operation: str) -> str:
    """``host_call <operation>``: a child of ``sandbox.run``."""
    return f"{SPAN_HOST_CALL} {operation}"


# --- switchboard.* ------------------------------------------------------------------------
PRINCIPAL_ID: Final = "switchboard.principal.id"
TENANT: Final = "switchboard.tenant"
ROLES: Final = "switchboard.roles"
TRANSPORT: Final = "switchboard.transport"  # "grpc" | "mcp"
REQUEST_ID: Final = "switchboard.request_id"
SESSION_ID: Final = "switchboard.session_id"
ACTION_KIND: Final = "switchboard.action.kind"  # "tool" | "code" | "host_call"
OPERATION: Final = "switchboard.operation"
BACKEND: Final = "switchboard.backend"
ROUTE: Final = "switchboard.route"  # "tool" | "code" | "deny"
REASONS: Final = "switchboard.reasons"
OBLIGATIONS: Final = "switchboard.obligations"
DECISION_ID: Final = "switchboard.decision_id"
PARENT_DECISION_ID: Final = "switchboard.parent_decision_id"
POLICY_REVISION: Final = "switchboard.policy_revision"
LIMIT_TIMEOUT_MS: Final = "switchboard.limits.timeout_ms"
LIMIT_MEMORY_MB: Final = "switchboard.limits.memory_mb"
LIMIT_MAX_HOST_CALLS: Final = "switchboard.limits.max_host_calls"
LIMIT_MAX_OUTPUT_BYTES: Final = "switchboard.limits.max_output_bytes"
OUTCOME: Final = "switchboard.outcome"  # "ok" or a stable error code (gateway.errors)
OUTCOME_OK: Final = "ok"
ERROR_FIELD: Final = "switchboard.error.field"
# Keyed (HMAC-SHA256, gateway.audit.redact.DigestKey): a plain hash would give masked values back.
ARGUMENTS_HMAC: Final = "switchboard.arguments.hmac"
DIGEST_KEY_ID: Final = "switchboard.digest.key_id"  # which key made the HMACs of a span
ARGUMENTS: Final = "switchboard.arguments"  # redacted (decision mask), truncated JSON
# Keyed like the arguments: a plain hash of the source let anyone confirm a guessed script
# (and the low-entropy literals in it) by trying candidates. Renamed from code.sha256.
CODE_HMAC: Final = "switchboard.code.hmac"
CODE_BYTES: Final = "switchboard.code.bytes"
RESULT_SHA256: Final = "switchboard.result.sha256"
OUTPUT_BYTES: Final = "switchboard.output.bytes"
HOST_CALLS: Final = "switchboard.host_calls"
REPLAYED: Final = "switchboard.replayed"  # idempotent replay of a stored result
IDEMPOTENCY_KEY_STATE: Final = "switchboard.idempotency.state"  # new|replayed|in_flight|conflict
SANDBOX_EXIT: Final = "switchboard.sandbox.exit"  # ok|error|timeout|memory|crashed
SCHEMA_STRICT: Final = "switchboard.schema.strict"  # on the call's span: strict validation

# --- OpenTelemetry semantic conventions (re-exported) ---------------------------------------
# rpc.* are the names opentelemetry-instrumentation-grpc emits today; newer incubating semconv
# renames them (rpc.system.name, rpc.response.status_code) — see docs/audit.md.
RPC_SYSTEM: Final = _rpc.RPC_SYSTEM
RPC_SERVICE: Final = _rpc.RPC_SERVICE
RPC_METHOD: Final = _rpc.RPC_METHOD
RPC_GRPC_STATUS_CODE: Final = _rpc.RPC_GRPC_STATUS_CODE
HTTP_REQUEST_METHOD: Final = _http.HTTP_REQUEST_METHOD
HTTP_RESPONSE_STATUS_CODE: Final = _http.HTTP_RESPONSE_STATUS_CODE
URL_FULL: Final = _url.URL_FULL  # always through redact.safe_url (no credentials)
SERVER_ADDRESS: Final = _server.SERVER_ADDRESS
CLIENT_ADDRESS: Final = "client.address"  # the peer IP of a refused MCP connection
# On the coalesced record of MCP connections refused over a cap (gateway.mcp_limits).
CONNECTIONS_LIMIT: Final = "switchboard.connections.limit"  # per_address | total
CONNECTIONS_REFUSED: Final = "switchboard.connections.refused"  # how many since the last record
ERROR_TYPE: Final = _error.ERROR_TYPE
GEN_AI_OPERATION_NAME: Final = _gen_ai.GEN_AI_OPERATION_NAME  # value "execute_tool"
GEN_AI_TOOL_NAME: Final = _gen_ai.GEN_AI_TOOL_NAME
GEN_AI_TOOL_CALL_ID: Final = _gen_ai.GEN_AI_TOOL_CALL_ID
