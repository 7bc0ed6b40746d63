"""Module-level tracers find the gateway whose call is current (several gateways, one process)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from opentelemetry import trace

from gateway.audit import AuditSettings, contextual_tracer, read_trace, setup_telemetry
from gateway.audit import attributes as A

policy_tracer = contextual_tracer("switchboard.policy")  # as a module would declare it


def _decide() -> None:
    with policy_tracer.start_as_current_span(A.SPAN_POLICY_DECIDE) as span:
        span.set_attribute(A.ROUTE, "tool")


async def test_module_tracer_records_into_the_calling_gateway(tmp_path: Path) -> None:
    a = setup_telemetry(AuditSettings(file=tmp_path / "a.jsonl", fsync="never"))
    b = setup_telemetry(AuditSettings(file=tmp_path / "b.jsonl", fsync="never"))

    async def call(tel: object, label: str) -> str:
        tracer = tel.tracer  # type: ignore[attr-defined]
        with tracer.start_as_current_span(A.SPAN_EXECUTE) as root:
            root.set_attribute(A.REQUEST_ID, label)
            await asyncio.sleep(0.01)  # interleave the two calls
            _decide()
            child = policy_tracer.start_span("manual")  # start_span path too
            child.end()
            return format(root.get_span_context().trace_id, "032x")

    ta, tb = await asyncio.gather(call(a, "a"), call(b, "b"))
    a.shutdown()
    b.shutdown()
    names_a = [r["name"] for r in read_trace(tmp_path / "a.jsonl", ta)]
    names_b = [r["name"] for r in read_trace(tmp_path / "b.jsonl", tb)]
    assert sorted(names_a) == sorted(names_b) == sorted([A.SPAN_EXECUTE, "policy.decide", "manual"])
    assert read_trace(tmp_path / "a.jsonl", tb) == [] and read_trace(tmp_path / "b.jsonl", ta) == []
    decide = next(r for r in read_trace(tmp_path / "a.jsonl", ta) if r["name"] == "policy.decide")
    root = next(r for r in read_trace(tmp_path / "a.jsonl", ta) if r["name"] == A.SPAN_EXECUTE)
    assert decide["parent_span_id"] == root["span_id"]


def test_without_a_gateway_span_it_falls_back_to_the_global_provider(tmp_path: Path) -> None:
    tel = setup_telemetry(AuditSettings(file=tmp_path / "a.jsonl", fsync="never"))
    with policy_tracer.start_as_current_span("orphan") as span:
        recording = span.is_recording()
    tel.shutdown()
    assert (tmp_path / "a.jsonl").read_text() == ""  # not claimed by a gateway that was idle
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        assert not recording
