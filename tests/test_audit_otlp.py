"""Spans reach a real OTLP receiver (gRPC and HTTP) with the right tree, and the local file."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from audit_support import simulate_code_run, simulate_denial, simulate_tool_call
from otlp_receiver import OtlpReceiver, ReceivedSpan

from gateway.audit import AuditSettings, read_trace, setup_telemetry, verify_chain
from gateway.audit import attributes as A
from gateway.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


def _names(spans: list[ReceivedSpan]) -> list[str]:
    return [s.name for s in spans]


@pytest.fixture(params=["grpc", "http/protobuf"])
def exported(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[OtlpReceiver, Path, dict[str, str]]]:
    """Three calls exported to a receiver of each protocol; yields (rx, audit file, trace ids)."""
    with OtlpReceiver(request.param) as rx:
        endpoint = rx.endpoint.removesuffix("/v1/traces")  # base URL: /v1/traces is added
        settings = AuditSettings(
            file=tmp_path / "audit.jsonl",
            otlp_endpoint=endpoint,
            otlp_protocol=request.param,
            otlp_headers={"X-Collector-Key": "k-123"},  # mixed case: fine for both protocols
            service_name="switchboard-test",
            otlp_schedule_delay_ms=50,
        )
        tel = setup_telemetry(settings)
        ids = {
            "tool": simulate_tool_call(tel.tracer),
            "code": simulate_code_run(tel.tracer),
            "deny": simulate_denial(tel.tracer),
        }
        assert tel.force_flush(5000)
        rx.wait_for_spans_sync(4 + 9 + 2, timeout=10)
        tel.shutdown()
        yield rx, settings.file or Path(), ids


def test_tool_call_tree_and_attributes(exported: tuple[OtlpReceiver, Path, dict[str, str]]) -> None:
    rx, _file, ids = exported
    spans = rx.trace(ids["tool"])
    roots = [s for s in spans if s.parent_span_id is None]
    assert _names(roots) == [A.SPAN_EXECUTE]
    root = roots[0]
    assert root.kind == "SERVER" and root.status_code == "OK"
    assert _names(rx.children(root)) == [
        "policy.decide",
        "idempotency",
        "backend.call ledger.create_transfer",
    ], rx.render(ids["tool"])
    backend = rx.children(root)[-1]
    assert backend.kind == "CLIENT"
    assert backend.attributes[A.HTTP_REQUEST_METHOD] == "POST"
    assert backend.attributes[A.HTTP_RESPONSE_STATUS_CODE] == 201
    assert "pw" not in backend.attributes[A.URL_FULL]
    assert "t0k" not in backend.attributes[A.URL_FULL]
    attrs = root.attributes
    assert attrs[A.PRINCIPAL_ID] == "finance-1"
    assert attrs[A.TENANT] == "demo"
    assert attrs[A.ROLES] == ["agent", "finance"]
    assert attrs[A.GEN_AI_OPERATION_NAME] == "execute_tool"
    assert attrs[A.GEN_AI_TOOL_NAME] == "ledger.create_transfer"
    assert attrs[A.GEN_AI_TOOL_CALL_ID] == "req-tool-1"
    assert attrs[A.OUTCOME] == "ok"
    assert attrs[A.ARGUMENTS_HMAC].startswith("hmac-sha256:")  # keyed, never a plain hash
    assert len(attrs[A.DIGEST_KEY_ID]) == 16
    assert '"card_number":"[REDACTED]"' in attrs[A.ARGUMENTS]
    assert "4111" not in attrs[A.ARGUMENTS]
    assert root.resource["service.name"] == "switchboard-test"
    decide = rx.children(root)[0]
    assert decide.attributes[A.ROUTE] == "tool"
    assert decide.attributes[A.DECISION_ID] == "dec-tool-1"


def test_code_run_tree_shows_each_host_call(
    exported: tuple[OtlpReceiver, Path, dict[str, str]],
) -> None:
    rx, _file, ids = exported
    spans = rx.trace(ids["code"])
    root = next(s for s in spans if s.parent_span_id is None)
    assert _names(rx.children(root)) == ["policy.decide", "sandbox.run"]
    run = rx.children(root)[1]
    assert run.attributes[A.HOST_CALLS] == 2
    calls = rx.children(run)
    assert _names(calls) == ["host_call ledger.get_balance", "host_call workspace.list_files"]
    for call in calls:
        kids = rx.children(call)
        assert _names(kids)[0] == "policy.decide"
        assert kids[0].attributes[A.ACTION_KIND] == "host_call"
        assert kids[0].attributes[A.PARENT_DECISION_ID] == "dec-code-1"
        assert kids[1].kind == "CLIENT"
    assert root.attributes[A.CODE_HMAC].startswith("hmac-sha256:")


def test_denial_records_reasons_and_error_status(
    exported: tuple[OtlpReceiver, Path, dict[str, str]],
) -> None:
    rx, _file, ids = exported
    spans = rx.trace(ids["deny"])
    root = next(s for s in spans if s.parent_span_id is None)
    assert root.status_code == "ERROR"
    assert root.attributes[A.OUTCOME] == "policy_denied"
    assert root.attributes[A.ROUTE] == "deny"
    assert root.attributes[A.REASONS] == ["ledger.create_transfer requires role finance"]
    assert root.attributes[A.RPC_GRPC_STATUS_CODE] == 7
    assert _names(rx.children(root)) == ["policy.decide"]  # nothing ran


def test_exports_carry_headers_and_match_the_file(
    exported: tuple[OtlpReceiver, Path, dict[str, str]],
) -> None:
    rx, file, ids = exported
    assert all(h.get("x-collector-key") == "k-123" for h in rx.headers)
    report = verify_chain(file)
    assert report.ok and report.records == len(rx.spans) == 15
    for trace_id in ids.values():
        in_file = {r["span_id"] for r in read_trace(file, trace_id)}
        assert in_file == {s.span_id for s in rx.trace(trace_id)}


@pytest.fixture
def blackhole() -> Iterator[str]:
    """A TCP port that accepts connections (kernel backlog) but never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def _refused_port() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize("kind", ["blackhole", "refused"])
def test_unreachable_collector_never_blocks_calls(
    tmp_path: Path, blackhole: str, protocol: str, kind: str
) -> None:
    endpoint = blackhole if kind == "blackhole" else _refused_port()
    settings = AuditSettings(
        file=tmp_path / "audit.jsonl",
        otlp_endpoint=endpoint,
        otlp_protocol=protocol,  # type: ignore[arg-type]
        otlp_timeout_s=30.0,
        otlp_schedule_delay_ms=10,
    )
    tel = setup_telemetry(settings)
    started = time.perf_counter()
    for i in range(50):
        simulate_tool_call(tel.tracer, request_id=f"r{i}")
    calls = time.perf_counter() - started
    # Calls that waited on the exporter would take at least one 30 s export attempt: the bound
    # is that configured limit, not a speed.
    assert calls < settings.otlp_timeout_s, f"50 calls took {calls:.2f}s with the collector down"
    started = time.perf_counter()
    tel.shutdown(timeout_ms=500)
    took = time.perf_counter() - started
    assert took < settings.otlp_timeout_s, f"shutdown waited on the export ({took:.2f}s)"
    report = verify_chain(tmp_path / "audit.jsonl")
    assert report.ok and report.records == 50 * 4


def test_bad_otlp_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        setup_telemetry(AuditSettings(file=tmp_path / "a.jsonl", otlp_endpoint="collector:4317"))
    assert err.value.field == "audit.otlp_endpoint"
    # the file writer was released: the same file opens again
    setup_telemetry(AuditSettings(file=tmp_path / "a.jsonl")).shutdown()


def test_otlp_only_without_file(tmp_path: Path) -> None:
    with OtlpReceiver() as rx:
        tel = setup_telemetry(AuditSettings(file=None, otlp_endpoint=rx.endpoint))
        assert tel.audit_file is None
        simulate_denial(tel.tracer)
        tel.shutdown()
        assert _names(rx.wait_for_spans_sync(2)) == [
            "policy.decide",
            "switchboard.v1.Gateway/Execute",
        ]


_FORGETFUL = """
import sys
from pathlib import Path
from gateway.audit import AuditSettings, setup_telemetry
tel = setup_telemetry(AuditSettings(
    file=Path(sys.argv[1]), otlp_endpoint=sys.argv[2], otlp_schedule_delay_ms=60_000))
with tel.tracer.start_as_current_span("switchboard.v1.Gateway/Execute"):
    pass
# no tel.shutdown(): the interpreter exits with the span still queued for OTLP
"""


def test_queued_spans_are_flushed_at_interpreter_exit(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    with OtlpReceiver() as rx:
        subprocess.run(
            [sys.executable, "-c", _FORGETFUL, str(tmp_path / "a.jsonl"), rx.endpoint],
            cwd=repo,
            check=True,
            timeout=30,
        )
        assert _names(rx.wait_for_spans_sync(1, timeout=5)) == [A.SPAN_EXECUTE]
    assert verify_chain(tmp_path / "a.jsonl").records == 1


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
async def test_receiver_async_api(tmp_path: Path, protocol: str) -> None:
    async with OtlpReceiver(protocol) as rx:  # type: ignore[arg-type]
        tel = setup_telemetry(
            AuditSettings(
                file=None,
                otlp_endpoint=rx.endpoint,
                otlp_protocol=protocol,  # type: ignore[arg-type]
                otlp_schedule_delay_ms=20,
            )
        )
        trace_id = simulate_denial(tel.tracer)
        spans = await rx.wait_for_spans(2, timeout=10)
        tel.shutdown()
    assert {s.trace_id for s in spans} == {trace_id}
    assert rx.render(trace_id).splitlines() == [
        "switchboard.v1.Gateway/Execute [SERVER] ERROR",
        "  policy.decide [INTERNAL] UNSET",
    ]
    with pytest.raises(AssertionError, match="expected 3 spans"):
        rx.wait_for_spans_sync(3, timeout=0.05)
