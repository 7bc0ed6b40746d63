"""structlog: one JSON line per event, bound to the trace, credentials scrubbed."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

import gateway.audit.logs
from gateway.audit import (
    AuditSettings,
    Telemetry,
    configure_logging,
    register_secret,
    setup_telemetry,
)
from gateway.audit.logs import add_trace_context
from gateway.models import Decision
from gateway.policy.decisionlog import fail_closed, finish


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_switchboard_handler", False)]:
        root.removeHandler(h)
    gateway.audit.logs._decision_level = logging.DEBUG


@pytest.fixture
def tel(tmp_path: Path) -> Iterator[Telemetry]:
    t = setup_telemetry(AuditSettings(file=tmp_path / "audit.jsonl", fsync="never"))
    yield t
    t.shutdown()


def _json_lines(buf: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_json_line_carries_trace_and_bound_context(tel: Telemetry) -> None:
    buf = io.StringIO()
    configure_logging("json", "INFO", stream=buf)
    log = structlog.get_logger("switchboard.pipeline")
    structlog.contextvars.bind_contextvars(request_id="req-1", principal="agent-1")
    with tel.tracer.start_as_current_span("switchboard.v1.Gateway/Execute") as span:
        log.info("call_done", outcome="ok", duration_ms=1.5)
        log.debug("filtered out at INFO")
    [line] = _json_lines(buf)
    sc = span.get_span_context()
    assert line["event"] == "call_done"
    assert line["level"] == "info"
    assert line["trace_id"] == f"{sc.trace_id:032x}"
    assert line["span_id"] == f"{sc.span_id:016x}"
    assert line["request_id"] == "req-1" and line["principal"] == "agent-1"
    assert str(line["timestamp"]).endswith("Z")


def test_bound_trace_id_wins_and_no_span_means_no_id() -> None:
    buf = io.StringIO()
    configure_logging("json", stream=buf)
    log = structlog.get_logger()
    log.info("outside")
    structlog.contextvars.bind_contextvars(trace_id="abc")
    log.info("bound")
    first, second = _json_lines(buf)
    assert "trace_id" not in first
    assert second["trace_id"] == "abc"


def test_stdlib_logging_is_rendered_as_json_too(tel: Telemetry) -> None:
    buf = io.StringIO()
    configure_logging("json", "WARNING", stream=buf)
    with tel.tracer.start_as_current_span("x"):
        logging.getLogger("grpc._server").warning("stdlib says %s", "hi")
        logging.getLogger("grpc._server").info("below level")
    [line] = _json_lines(buf)
    assert line["event"] == "stdlib says hi"
    assert line["logger"] == "grpc._server"
    assert len(str(line["trace_id"])) == 32


def test_credentials_are_scrubbed_from_logs() -> None:
    register_secret("tok-log-77aa99bb")
    buf = io.StringIO()
    configure_logging("json", stream=buf)
    log = structlog.get_logger()
    log.info(
        "auth failed for tok-log-77aa99bb",
        authorization="Bearer tok-log-77aa99bb",
        headers={"X-Api-Key": "k-secret-1", "accept": "json"},
        detail="upstream said: Bearer abcdefgh12345",
    )
    text = buf.getvalue()
    assert "tok-log-77aa99bb" not in text and "k-secret-1" not in text
    assert "abcdefgh12345" not in text
    [line] = _json_lines(buf)
    assert line["headers"] == {"X-Api-Key": "[REDACTED]", "accept": "json"}


def test_exceptions_become_structured() -> None:
    buf = io.StringIO()
    configure_logging("json", stream=buf)
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger().exception("failed")
    [line] = _json_lines(buf)
    assert line["exception"][0]["exc_type"] == "ValueError"  # type: ignore[index]


def test_console_and_auto_formats() -> None:
    buf = io.StringIO()  # not a TTY: auto means JSON
    configure_logging("auto", stream=buf)
    structlog.get_logger().info("hello", n=1)
    assert json.loads(buf.getvalue())["n"] == 1
    buf = io.StringIO()
    configure_logging("console", stream=buf)
    structlog.get_logger().info("hello", n=1)
    assert "hello" in buf.getvalue() and "n=1" in buf.getvalue()
    with pytest.raises(ValueError):
        configure_logging("xml")
    with pytest.raises(ValueError):
        configure_logging("json", "LOUD")


def test_capture_logs_sees_trace_id(tel: Telemetry) -> None:
    configure_logging("json", stream=io.StringIO())
    with (
        capture_logs(
            processors=[structlog.contextvars.merge_contextvars, add_trace_context]
        ) as logs,
        tel.tracer.start_as_current_span("x") as span,
    ):
        structlog.get_logger().info("call", outcome="ok")
    assert logs == [
        {
            "event": "call",
            "outcome": "ok",
            "log_level": "info",
            "trace_id": f"{span.get_span_context().trace_id:032x}",
            "span_id": f"{span.get_span_context().span_id:016x}",
        }
    ]


def _decide(decision: Decision) -> None:
    finish(decision, input={"action": {"kind": "tool", "arguments": {"card": "4111"}}},
           revision="r1", engine="embedded", latency_ms=0.1)


def test_one_line_per_call_by_default_the_decision_line_is_debug() -> None:
    buf = io.StringIO()
    configure_logging("json", "INFO", stream=buf)
    _decide(Decision(route="tool", reasons=("ok",), mask=("action.arguments.card",)))
    assert _json_lines(buf) == []  # nothing of it is rendered or written at info
    _decide(fail_closed("policy_error: boom"))  # a fail-closed deny is always a warning
    [line] = _json_lines(buf)
    assert line["event"] == "policy.decision" and line["level"] == "warning"
    assert line["error_code"] == "policy_error"


@pytest.mark.parametrize(("level", "decisions"), [("INFO", "info"), ("DEBUG", "debug")])
def test_the_decision_line_at_the_configured_level(level: str, decisions: str) -> None:
    buf = io.StringIO()
    configure_logging("json", level, stream=buf, decisions=decisions)
    _decide(Decision(route="tool", reasons=("ok",), mask=("action.arguments.card",)))
    [line] = _json_lines(buf)
    assert line["event"] == "policy.decision" and line["level"] == decisions
    assert line["route"] == "tool" and line["policy_revision"] == "r1"
    assert "4111" not in json.dumps(line)
    with pytest.raises(ValueError):
        configure_logging("json", stream=buf, decisions="warning")


def test_stack_info_names_the_callers_frame() -> None:
    buf = io.StringIO()
    configure_logging("json", stream=buf)
    structlog.get_logger().info("where", stack_info=True)
    [line] = _json_lines(buf)
    stack = str(line["stack"])
    assert "test_stack_info_names_the_callers_frame" in stack.splitlines()[-2]
    assert "gateway/audit/logs.py" not in stack


def test_a_host_applications_logger_without_levels_still_gets_the_decision_line() -> None:
    """Embedded in an application whose structlog wrapper has no `is_enabled_for` (the
    generic BoundLogger), a decision is still logged, never an error."""
    structlog.configure(wrapper_class=structlog.BoundLogger,
                        processors=[structlog.processors.JSONRenderer()])
    with capture_logs() as logs:
        _decide(Decision(route="tool", reasons=("ok",)))
    assert [e["event"] for e in logs] == ["policy.decision"]
