"""The audit trail: OpenTelemetry traces, a hash-chained local file, OTLP export, structlog.

The only package that imports ``opentelemetry.sdk``; the rest of the gateway uses the
``opentelemetry.trace`` API with the tracer of the :class:`Telemetry` it is handed.
"""

from __future__ import annotations

from gateway.audit.chain import GENESIS, AuditLog, ChainReport, verify_chain
from gateway.audit.cli import cli_audit_show, cli_audit_verify, read_trace, render_trace
from gateway.audit.logs import configure_logging
from gateway.audit.outcome import audited, outcome_of, record_outcome
from gateway.audit.redact import (
    REDACTED,
    digest,
    json_attr,
    redact,
    register_secret,
    safe_url,
    scrub_text,
)
from gateway.audit.telemetry import (
    AuditSettings,
    Telemetry,
    extract_trace_context,
    inject_trace_context,
    setup_telemetry,
)
from gateway.audit.tracing import contextual_tracer

__all__ = [
    "GENESIS",
    "REDACTED",
    "AuditLog",
    "AuditSettings",
    "ChainReport",
    "Telemetry",
    "audited",
    "cli_audit_show",
    "cli_audit_verify",
    "configure_logging",
    "contextual_tracer",
    "digest",
    "extract_trace_context",
    "inject_trace_context",
    "json_attr",
    "outcome_of",
    "read_trace",
    "record_outcome",
    "redact",
    "register_secret",
    "render_trace",
    "safe_url",
    "scrub_text",
    "setup_telemetry",
    "verify_chain",
]
