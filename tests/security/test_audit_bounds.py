"""No audit record is larger than documented, whatever code made the span (round 3, finding 4).

Two layers: every span of the gateway ends through ``record_outcome`` (no OpenTelemetry
exception recording: checked on the source), and the provider's processor clips every span
before any exporter sees it (``bound_span``: checked here by spans built to be huge, through
the real provider and audit file).
"""

from __future__ import annotations

import ast
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import Status, StatusCode

from gateway.audit import AuditSettings, register_secret, setup_telemetry
from gateway.audit.export import (
    DROPPED,
    MAX_SPAN_CHARS,
    MAX_STATUS_CHARS,
    MAX_VALUE_CHARS,
)

REPO = Path(__file__).resolve().parents[2]
# ASCII record: the clipped text plus the fixed fields (ids, times, resource, hash, keys).
ASCII_RECORD_MAX = MAX_SPAN_CHARS + 8 * 1024
# Any text: the file writes \u escapes, at most 12 bytes for one character.
ANY_RECORD_MAX = 12 * MAX_SPAN_CHARS + 8 * 1024


def _span_calls() -> list[tuple[str, int, set[str]]]:
    found = []
    for path in sorted((REPO / "gateway").rglob("*.py")):
        # the tracer wrapper and the tracer implementation itself (they pass the flags on)
        if "_proto" in path.parts or path.name in ("tracing.py", "spans.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("start_as_current_span", "start_span"):
                off = {k.arg for k in node.keywords if k.arg and isinstance(k.value, ast.Constant)
                       and k.value.value is False}
                found.append((str(path.relative_to(REPO)), node.lineno, off))
    return found


def test_every_gateway_span_leaves_its_error_to_record_outcome() -> None:
    calls = _span_calls()
    assert len(calls) >= 10  # the scan sees the gateway's spans
    bad = [(f, line) for f, line, off in calls
           if not {"record_exception", "set_status_on_exception"} <= off]
    assert not bad, f"spans with OpenTelemetry's exception recording on: {bad}"


@pytest.fixture
def telemetry(tmp_path: Path) -> Any:
    tel = setup_telemetry(AuditSettings(file=tmp_path / "audit.jsonl", fsync="never"))
    yield tel
    tel.shutdown()


def _records(tel: Any) -> list[tuple[str, dict[str, Any]]]:
    tel.force_flush()
    lines = tel.audit_file.read_text().splitlines()
    return [(line, json.loads(line)) for line in lines if line.strip()]


def _hostile_span(tel: Any, text: str) -> None:
    """A span that breaks every rule: huge name, values, sequences, keys, events, status, and
    OpenTelemetry's own exception recording (stack trace, unclipped message) left on."""
    tracer = tel.tracer_for("tests.hostile")
    with pytest.raises(ValueError), tracer.start_as_current_span("x" * 100_000) as span:
        span.set_attribute("big", text * 200_000)
        span.set_attribute("seq", [text * 50_000] * 40)
        span.set_attribute("k" * 10_000, text)
        for i in range(300):
            span.set_attribute(f"a{i}", text * 9_000)
        for _ in range(100):
            span.add_event("e" * 5_000, {f"x{j}": text * 9_000 for j in range(50)})
        span.set_status(Status(StatusCode.ERROR, text * 500_000))
        raise ValueError(text * 300_000)


@pytest.mark.parametrize("text", ["Z", "\x00", "\U0001f600"], ids=["ascii", "control", "astral"])
def test_a_span_built_to_be_huge_is_clipped_in_the_file(telemetry: Any, text: str) -> None:
    _hostile_span(telemetry, text)
    ((line, rec),) = _records(telemetry)
    assert len(line.encode()) <= (ASCII_RECORD_MAX if text == "Z" else ANY_RECORD_MAX), len(line)
    assert len(rec["status"]["message"]) <= MAX_STATUS_CHARS
    for value in rec["attributes"].values():
        chars = sum(len(v) for v in value) if isinstance(value, list) else len(str(value))
        assert chars <= MAX_VALUE_CHARS
    assert rec["attributes"][DROPPED] > 0
    assert len(rec.get("events", [])) <= 32


def test_clipping_never_cuts_a_credential_in_half(telemetry: Any) -> None:
    """The processor scrubs first, then clips: a secret straddling the clip boundary is
    redacted whole, not written up to the cut."""
    secret = f"sk-live-{uuid.uuid4().hex}"
    register_secret(secret)
    tracer = telemetry.tracer_for("tests.hostile")
    with tracer.start_as_current_span("straddle") as span:
        for shift in range(0, 40, 3):
            span.set_attribute(f"v{shift}", "A" * (MAX_VALUE_CHARS - 20 + shift) + secret)
        span.set_attribute("bearer", "B" * (MAX_VALUE_CHARS - 12) + "Bearer " + secret)
        span.set_attribute("pad", "C" * 20_000)  # forces the span through the clipping path
    ((line, _),) = _records(telemetry)
    assert secret[:12] not in line and secret[-12:] not in line


def test_an_ordinary_span_is_written_as_it_is(telemetry: Any) -> None:
    tracer = telemetry.tracer_for("tests.plain")
    with tracer.start_as_current_span("plain") as span:
        span.set_attribute("switchboard.operation", "ledger.get_balance")
        span.set_attribute("text", "y" * 4096)
        span.set_attribute("roles", ["agent", "finance"])
    ((_, rec),) = _records(telemetry)
    assert rec["attributes"]["text"] == "y" * 4096
    assert rec["attributes"]["roles"] == ["agent", "finance"]
    assert DROPPED not in rec["attributes"]
