"""The one envelope validator of both doors: what a request must look like before the
pipeline sees it.

Each door parses its wire format (a protobuf ``ExecuteRequest``, an MCP ``tools/call``) into
plain values and hands them here; the same checks run in the same order and raise the same
stable codes. Only the ``field`` paths differ, because ``field`` names the place in the
caller's *own* request: each door has one :class:`Fields` table (:data:`GRPC`, :data:`MCP`)
saying where each envelope field sits on its wire. Argument and input paths
(``arguments.amount``, ``inputs.rows[3]``) are the same on both doors.

The bounds themselves live in :mod:`gateway.values`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from gateway.errors import InvalidRequest
from gateway.models import CodeAction, ToolAction
from gateway.values import (
    MAX_SOURCE_BYTES,
    check_id,
    check_input,
    check_name,
    check_query,
    loggable_id,
)

__all__ = [
    "GRPC",
    "MCP",
    "Fields",
    "check_operation_name",
    "check_search_query",
    "check_source",
    "code_action",
    "recorded_request_id",
    "request_id",
    "require_request_id",
    "tool_action",
]


@dataclass(frozen=True)
class Fields:
    """Where each envelope field sits in one door's request (the ``field`` of its errors)."""

    door: str
    request_id: str
    name: str
    source: str
    session_id: str
    query: str
    describe_name: str
    arguments: str = "arguments"
    inputs: str = "inputs"
    output_schema: str = "output_schema"


GRPC = Fields(door="grpc", request_id="request_id", name="tool_call.name",
              source="code_run.source", session_id="code_run.session_id", query="query",
              describe_name="name", output_schema="code_run.output_schema")
MCP = Fields(door="mcp", request_id="_meta.switchboard/request_id", name="name",
             source="arguments.code", session_id="arguments.session_id",
             query="arguments.query", describe_name="arguments.name")


def recorded_request_id(raw: object) -> str:
    """The request id as the audit records it *before* it is checked: a well-formed id as
    itself, anything else as a bounded, escaped stand-in, nothing as a fresh UUID."""
    if raw is None or raw == "":
        return str(uuid.uuid4())
    return loggable_id(raw if isinstance(raw, str) else str(raw))


def request_id(value: object, fields: Fields, *, generate: bool = False) -> str:
    """The caller's request id (the idempotency key), checked: 1-128 characters of
    ``[A-Za-z0-9._:-]``. An absent one is replaced by a fresh UUID when ``generate`` (MCP,
    whose clients rarely send one), else ``""``."""
    if value is None or value == "":
        return str(uuid.uuid4()) if generate else ""
    if not isinstance(value, str):
        raise InvalidRequest(f"{fields.request_id} must be a string", field=fields.request_id)
    return check_id(value, fields.request_id)


def require_request_id(value: str, fields: Fields) -> str:
    """A tool call without a request id is refused (it is the idempotency key)."""
    if not value:
        raise InvalidRequest("request_id is required for tool calls (it is the "
                             "idempotency key)", field=fields.request_id)
    return value


def check_operation_name(name: str, fields: Fields, *, describe: bool = False) -> str:
    """An operation or tool name: non-empty, bounded, printable."""
    return check_name(name, fields.describe_name if describe else fields.name)


def check_search_query(query: str, fields: Fields) -> str:
    return check_query(query, fields.query)


def tool_action(fields: Fields, *, request_id: str, name: str, arguments: dict[str, Any],
                labels: dict[str, str] | None = None, generated_id: bool = False) -> ToolAction:
    """A dedicated-tool call: a bounded name and plain, finite, bounded JSON arguments (the
    operation's schema is checked later, by the tool channel). ``generated_id``: the door
    made ``request_id`` up (the pipeline refuses that where the decision requires
    idempotency)."""
    check_operation_name(name, fields)
    check_input(arguments, fields.arguments)
    return ToolAction(request_id=request_id, name=name, arguments=arguments,
                      labels=dict(labels or {}),
                      generated_id_field=fields.request_id if generated_id else "")


def check_source(source: str, fields: Fields) -> str:
    """Code for the sandbox: at most :data:`MAX_SOURCE_BYTES` (UTF-8), not blank. The
    character count is checked first, so a hostile value is never encoded in full."""
    if len(source) > MAX_SOURCE_BYTES or len(source.encode("utf-8", "surrogatepass")) > \
            MAX_SOURCE_BYTES:
        raise InvalidRequest(f"{fields.source} exceeds {MAX_SOURCE_BYTES} bytes",
                             field=fields.source, details={"max_bytes": MAX_SOURCE_BYTES})
    if not source.strip():
        raise InvalidRequest(f"{fields.source} is empty", field=fields.source)
    return source


def code_action(fields: Fields, *, request_id: str, source: str,
                inputs: dict[str, Any] | None = None, timeout_ms: int = 0,
                session_id: str | None = None, output_schema: dict[str, Any] | None = None,
                labels: dict[str, str] | None = None) -> CodeAction:
    """A code run: bounded source, a well-formed session id, plain JSON inputs."""
    check_source(source, fields)
    if session_id:
        check_id(session_id, fields.session_id, "session_id")
    check_input(inputs, fields.inputs)
    if output_schema is not None:
        check_input(output_schema, fields.output_schema)
    return CodeAction(request_id=request_id, source=source, inputs=dict(inputs or {}),
                      timeout_ms=timeout_ms, session_id=session_id or None,
                      output_schema=output_schema or None, labels=dict(labels or {}))
