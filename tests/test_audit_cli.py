"""``audit show`` / ``audit verify``, W3C trace context, tenant isolation, secret hygiene."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from audit_support import simulate_code_run, simulate_denial, simulate_tool_call
from opentelemetry.trace import SpanKind
from otlp_receiver import OtlpReceiver

from gateway.audit import (
    AuditSettings,
    Telemetry,
    audited,
    cli_audit_show,
    cli_audit_verify,
    extract_trace_context,
    inject_trace_context,
    read_trace,
    record_outcome,
    register_secret,
    setup_telemetry,
)
from gateway.audit import attributes as A
from gateway.errors import SchemaInvalid

pytestmark = pytest.mark.timeout(60)
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture
def tel(tmp_path: Path) -> Iterator[Telemetry]:
    t = setup_telemetry(AuditSettings(file=tmp_path / "audit.jsonl", fsync="never"))
    yield t
    t.shutdown()


def _show(trace_id: str, file: Path, tenant: str | None = None) -> tuple[int, str]:
    buf = io.StringIO()
    code = cli_audit_show(trace_id, file, tenant, out=buf)
    return code, buf.getvalue()


def test_show_renders_the_code_run_as_a_tree(tel: Telemetry, tmp_path: Path) -> None:
    trace_id = simulate_code_run(tel.tracer)
    code, text = _show(trace_id, tmp_path / "audit.jsonl")
    assert code == 0, text
    lines = text.splitlines()
    assert lines[0].startswith(f"trace {trace_id}  9 spans")
    assert lines[1].startswith("switchboard.v1.Gateway/Execute [SERVER]  +0.000 ms")
    assert lines[1].endswith("OK")
    heads = [ln for ln in lines[2:] if "  +" in ln and " ms" in ln]
    # indentation encodes the tree: host calls under sandbox.run, their decisions under them
    assert heads[0].startswith("├─ policy.decide")
    assert heads[1].startswith("└─ sandbox.run")
    assert heads[2].startswith("   ├─ host_call ledger.get_balance")
    assert heads[3].startswith("   │  ├─ policy.decide")
    assert heads[4].startswith("   │  └─ backend.call ledger.get_balance [CLIENT]")
    assert heads[5].startswith("   └─ host_call workspace.list_files")
    for needle in (
        "principal.id: finance-1",
        "tenant: demo",
        "roles: [agent, finance]",
        "route: code",
        "reasons: [default: code channel]",
        "outcome: ok",
        "host_calls: 2",
        "parent_decision_id: dec-code-1",
        "code.hmac: hmac-sha256:",
    ):
        assert needle in text, needle


def test_show_explains_a_denial(tel: Telemetry, tmp_path: Path) -> None:
    trace_id = simulate_denial(tel.tracer)
    code, text = _show(trace_id.upper(), tmp_path / "audit.jsonl")  # case-insensitive
    assert code == 0
    assert "ERROR" in text.splitlines()[1]
    assert "reasons: [ledger.create_transfer requires role finance]" in text
    assert "outcome: policy_denied" in text
    assert "status message: policy_denied: ledger.create_transfer requires role finance" in text


def test_show_unknown_and_malformed_ids(tel: Telemetry, tmp_path: Path) -> None:
    simulate_tool_call(tel.tracer)
    code, text = _show("0" * 31 + "1", tmp_path / "audit.jsonl")
    assert code == 1 and "no audit records for trace" in text
    code, text = _show("not-a-trace", tmp_path / "audit.jsonl")
    assert code == 1 and "not a trace id" in text
    code, text = _show(TRACE, tmp_path / "missing.jsonl")
    assert code == 1 and "does not exist" in text


def test_traceparent_from_metadata_becomes_the_parent(tel: Telemetry, tmp_path: Path) -> None:
    metadata = [
        ("authorization", "Bearer x"),
        ("traceparent", f"00-{TRACE}-{PARENT}-01"),
        ("tracestate", "vendor=1"),
    ]
    trace_id = simulate_tool_call(tel.tracer, context=extract_trace_context(metadata))
    assert trace_id == TRACE
    root = next(
        r for r in read_trace(tmp_path / "audit.jsonl", TRACE) if r["name"] == A.SPAN_EXECUTE
    )
    assert root["parent_span_id"] == PARENT and root["parent_remote"] is True
    # the whole traceparent is accepted by show, and the remote parent renders as a root
    code, text = _show(f"00-{TRACE}-{PARENT}-01", tmp_path / "audit.jsonl")
    assert code == 0 and text.splitlines()[1].startswith(A.SPAN_EXECUTE)


def test_unsampled_traceparent_cannot_switch_auditing_off(tel: Telemetry, tmp_path: Path) -> None:
    ctx = extract_trace_context([("traceparent", f"00-{TRACE}-{PARENT}-00".encode())])
    simulate_denial(tel.tracer)
    with tel.tracer.start_as_current_span(A.SPAN_EXECUTE, context=ctx, kind=SpanKind.SERVER):
        pass
    spans = read_trace(tmp_path / "audit.jsonl", TRACE)
    assert [s["name"] for s in spans] == [A.SPAN_EXECUTE]


@pytest.mark.parametrize(
    "header", ["", "garbage", f"00-{'0' * 32}-{PARENT}-01", f"00-{TRACE}-{'0' * 16}-01"]
)
def test_invalid_traceparent_starts_a_new_trace(tel: Telemetry, header: str) -> None:
    ctx = extract_trace_context([("traceparent", header)] if header else [])
    with tel.tracer.start_as_current_span("x", context=ctx) as span:
        sc = span.get_span_context()
        assert sc.is_valid and format(sc.trace_id, "032x") != TRACE
        assert span.parent is None  # type: ignore[attr-defined]


def test_inject_trace_context_for_backend_calls(tel: Telemetry) -> None:
    with tel.tracer.start_as_current_span("backend.call x") as span:
        headers = inject_trace_context({})
    sc = span.get_span_context()
    version, trace_id, span_id, flags = headers["traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", f"{sc.trace_id:032x}", f"{sc.span_id:016x}")
    assert int(flags, 16) & 1  # sampled


def test_tenant_filter_hides_other_tenants_calls(tel: Telemetry, tmp_path: Path) -> None:
    """Two tenants' calls in one agent-chosen trace: each operator sees only its own."""
    ctx = extract_trace_context([("traceparent", f"00-{TRACE}-{PARENT}-01")])
    other = {"id": "acme-bot", "tenant": "acme", "roles": ["agent"]}
    simulate_tool_call(tel.tracer, context=ctx, request_id="demo-req")
    simulate_tool_call(tel.tracer, context=ctx, principal=other, request_id="acme-req")
    file = tmp_path / "audit.jsonl"
    assert len(read_trace(file, TRACE)) == 8
    demo = read_trace(file, TRACE, tenant="demo")
    acme = read_trace(file, TRACE, tenant="acme")
    assert len(demo) == len(acme) == 4
    assert {s["span_id"] for s in demo}.isdisjoint({s["span_id"] for s in acme})
    code, text = _show(TRACE, file, tenant="acme")
    assert code == 0 and "acme-req" in text and "demo-req" not in text
    code, text = _show(TRACE, file, tenant="globex")
    assert code == 1 and "for tenant 'globex'" in text


def test_verify_cli(tel: Telemetry, tmp_path: Path) -> None:
    simulate_tool_call(tel.tracer)
    simulate_denial(tel.tracer)
    tel.shutdown()
    file = tmp_path / "audit.jsonl"
    buf = io.StringIO()
    assert cli_audit_verify(file, out=buf) == 0
    assert "OK:" in buf.getvalue() and "6 records" in buf.getvalue()
    lines = file.read_text().splitlines(keepends=True)
    del lines[4]
    file.write_text("".join(lines))
    buf = io.StringIO()
    assert cli_audit_verify(file, out=buf) == 1
    assert f"BROKEN: {file} line 5: record(s) seq 5 deleted" in buf.getvalue()
    buf = io.StringIO()
    assert cli_audit_verify(tmp_path / "nope.jsonl", out=buf) == 1


def test_secrets_never_reach_the_file_or_the_collector(tmp_path: Path) -> None:
    """Even when a call site slips, registered tokens and credential headers are scrubbed."""
    token = "tok-3f9a1c77e2b54d0c"
    backend_key = "backend-key-9911aa"
    register_secret(token)
    register_secret(backend_key)
    with OtlpReceiver() as rx:
        tel = setup_telemetry(
            AuditSettings(file=tmp_path / "audit.jsonl", otlp_endpoint=rx.endpoint)
        )
        with tel.tracer.start_as_current_span(A.SPAN_EXECUTE) as span:
            span.set_attribute("http.request.header.authorization", [f"Bearer {token}"])
            span.set_attribute("http.request.header.x-api-key", ["whatever-value"])
            span.set_attribute(A.ARGUMENTS, json.dumps({"note": f"use {backend_key}"}))
            span.add_event("exception", {"exception.message": f"401 for Bearer {token}"})
            span.set_status("ERROR", f"backend rejected {backend_key}")  # type: ignore[arg-type]
        simulate_tool_call(tel.tracer)
        tel.shutdown()
        spans = rx.wait_for_spans_sync(5)
    text = (tmp_path / "audit.jsonl").read_text()
    for secret in (token, backend_key, "whatever-value"):
        assert secret not in text
        assert secret not in repr([(s.attributes, s.events, s.status_message) for s in spans])
    assert text.count("[REDACTED]") >= 5
    # untouched spans go out as they were
    assert any(s.name == "idempotency" for s in spans)


async def test_cancelled_call_still_leaves_its_record(tel: Telemetry, tmp_path: Path) -> None:
    """A client cancel (task cancelled mid-call) ends the spans; ``audited`` says why.

    Plain OpenTelemetry leaves a cancelled span UNSET (it records only ``Exception``)."""
    started = asyncio.Event()

    async def call() -> None:
        with (
            tel.tracer.start_as_current_span(A.SPAN_EXECUTE, kind=SpanKind.SERVER) as root,
            audited(root),
        ):
            root.set_attribute(A.REQUEST_ID, "req-cancel")
            with tel.tracer.start_as_current_span(A.SPAN_SANDBOX_RUN):
                started.set()
                await asyncio.sleep(30)

    task = asyncio.create_task(call())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    recs = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [r["name"] for r in recs] == [A.SPAN_SANDBOX_RUN, A.SPAN_EXECUTE]
    root = recs[1]
    assert root["attributes"][A.REQUEST_ID] == "req-cancel"
    assert root["status"]["code"] == "ERROR"
    assert root["attributes"][A.OUTCOME] == "cancelled"
    assert root["events"][0]["attributes"]["exception.type"] == "CancelledError"
    assert recs[0]["status"]["code"] == "UNSET"  # what OpenTelemetry alone records
    code, text = _show(root["trace_id"], tmp_path / "audit.jsonl")
    assert code == 0 and "outcome: cancelled" in text
    assert "event exception: CancelledError" in text


@pytest.mark.parametrize(
    ("error", "code", "status"),
    [
        (None, "ok", "OK"),
        (SchemaInvalid("amount must be > 0", field="arguments.amount"), "schema_invalid", "ERROR"),
        (TimeoutError(), "deadline_exceeded", "ERROR"),
        (RuntimeError("bug"), "internal", "ERROR"),
    ],
)
def test_record_outcome(
    tel: Telemetry, tmp_path: Path, error: BaseException | None, code: str, status: str
) -> None:
    with tel.tracer.start_as_current_span(A.SPAN_EXECUTE) as span:
        assert record_outcome(span, error) == code
    [rec] = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert rec["attributes"][A.OUTCOME] == code
    assert rec["status"]["code"] == status
    if isinstance(error, SchemaInvalid):
        assert rec["attributes"][A.ERROR_FIELD] == "arguments.amount"
        assert rec["status"]["message"] == "schema_invalid: amount must be > 0"
        assert "exception.stacktrace" not in rec["events"][0]["attributes"]
    if isinstance(error, RuntimeError):
        assert "exception.stacktrace" in rec["events"][0]["attributes"]


def test_default_streams_and_one_tree_per_call(
    tel: Telemetry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ctx = extract_trace_context([("traceparent", f"00-{TRACE}-{PARENT}-01")])
    simulate_tool_call(tel.tracer, context=ctx, request_id="first")
    simulate_denial(tel.tracer, request_id="second")
    simulate_tool_call(tel.tracer, context=ctx, request_id="third")
    file = tmp_path / "audit.jsonl"
    assert cli_audit_show(TRACE, file) == 0
    out = capsys.readouterr()
    assert out.err == ""
    roots = [i for i, ln in enumerate(out.out.splitlines()) if ln.startswith(A.SPAN_EXECUTE)]
    assert len(roots) == 2 and out.out.splitlines()[roots[1] - 1] == ""
    assert "first" in out.out and "third" in out.out and "second" not in out.out
    assert cli_audit_show("f" * 32, file) == 1
    out = capsys.readouterr()
    assert out.out == "" and "no audit records" in out.err
