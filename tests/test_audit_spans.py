"""gateway.audit.spans: the gateway's own spans behave like the OpenTelemetry SDK's.

The same script of API calls runs against the SDK (``TracerProvider`` + an in-memory
exporter) and against :func:`setup_telemetry`'s tracer; what each records must agree —
attributes (cleaning, limits, after end), status rules, events, exceptions, links, ids and
flags — and the audit record is written before ``end()`` returns.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from gateway.audit import AuditSettings, Telemetry, extract_trace_context, setup_telemetry
from gateway.audit.chain import iter_records
from gateway.audit.spans import MAX_ATTRIBUTES

Script = Callable[[trace.Tracer], None]


def _attributes(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("a", kind=SpanKind.CLIENT,
                                      attributes={"k0": "v", "list": ["x", "y"]}) as span:
        span.set_attribute("int", 3)
        span.set_attribute("float", 1.5)
        span.set_attribute("bool", True)
        span.set_attribute("tuple", (1, 2))
        span.set_attribute("k0", "again")  # an overwrite
        span.set_attribute("", "no key")
        span.set_attributes({"m1": "one", "m2": [True, False]})
    span.set_attribute("late", "after end")


def _too_many(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("many") as span:
        for i in range(MAX_ATTRIBUTES + 5):
            span.set_attribute(f"k{i}", i)


def _status(tracer: trace.Tracer) -> None:
    with tracer.start_as_current_span("ok-sticks") as span:
        span.set_status(Status(StatusCode.OK))
        span.set_status(Status(StatusCode.ERROR, "too late"))
    with tracer.start_as_current_span("unset-ignored") as span:
        span.set_status(StatusCode.ERROR, "first")
        span.set_status(StatusCode.UNSET)
        span.set_status("ERROR", "a string is not a status")  # type: ignore[arg-type]
    with tracer.start_as_current_span("after-end") as span:
        pass
    span.set_status(StatusCode.ERROR, "ended")


def _errors(tracer: trace.Tracer) -> None:
    with pytest.raises(ValueError), tracer.start_as_current_span("raises"):
        raise ValueError("boom")
    with pytest.raises(KeyError), tracer.start_as_current_span(
            "quiet", record_exception=False, set_status_on_exception=False):
        raise KeyError("k")
    with tracer.start_as_current_span("recorded") as span:
        try:
            raise RuntimeError("caught")
        except RuntimeError as exc:
            span.record_exception(exc, {"extra": 1})
        span.add_event("note", {"n": 1, "xs": ["a"]})
    span.add_event("late")


def _tree(tracer: trace.Tracer) -> None:
    parent = extract_trace_context(
        [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
         ("tracestate", "vendor=1")])
    with (tracer.start_as_current_span("root", context=parent, kind=SpanKind.SERVER) as root,
          tracer.start_as_current_span("child") as child):
        child.add_link(root.get_span_context(), {"why": "test"})
        child.update_name("renamed")
    held = tracer.start_span("manual", links=[Link(root.get_span_context())])
    with held:
        pass


SCRIPTS: dict[str, Script] = {"attributes": _attributes, "too_many": _too_many,
                              "status": _status, "errors": _errors, "tree": _tree}


def _shape(span: ReadableSpan, ids: dict[int, str]) -> dict[str, Any]:
    def name_of(span_id: int) -> str:
        return ids.get(span_id, "remote")

    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "parent": None if span.parent is None else name_of(span.parent.span_id),
        "parent_remote": None if span.parent is None else span.parent.is_remote,
        "sampled": ctx.trace_flags.sampled,
        "flags": int(ctx.trace_flags),
        "tracestate": ctx.trace_state.to_header(),
        "attributes": dict(span.attributes or {}),
        "status": (span.status.status_code.name, span.status.description),
        "events": [(e.name, {k: v for k, v in (e.attributes or {}).items()
                             if k != "exception.stacktrace"}) for e in span.events],
        "stacktraces": [bool((e.attributes or {}).get("exception.stacktrace"))
                        for e in span.events],
        "links": [(name_of(link.context.span_id), dict(link.attributes or {}))
                  for link in span.links],
        "timed": span.start_time is not None and span.end_time is not None
        and span.end_time >= span.start_time,
    }


def _shapes(spans: list[ReadableSpan]) -> list[dict[str, Any]]:
    ids = {s.get_span_context().span_id: s.name for s in spans}  # type: ignore[union-attr]
    return [_shape(s, ids) for s in spans]


@pytest.fixture
def tel(tmp_path: Path) -> Iterator[Telemetry]:
    tel = setup_telemetry(AuditSettings(file=tmp_path / "audit.jsonl", fsync="never"))
    yield tel
    tel.shutdown()


@pytest.mark.parametrize("script", SCRIPTS, ids=list(SCRIPTS))
def test_audit_spans_record_what_the_sdk_records(script: str, tel: Telemetry,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    SCRIPTS[script](provider.get_tracer("test"))
    expected = _shapes(list(memory.get_finished_spans()))

    ours: list[ReadableSpan] = []
    sink = tel._sink
    end = sink.on_end

    def capture(span: Any) -> None:
        end(span)
        ours.append(span.readable())

    monkeypatch.setattr(sink, "on_end", capture)
    SCRIPTS[script](tel.tracer)
    assert _shapes(ours) == expected


def test_unsampled_traceparent_is_still_recorded_and_sampled(tel: Telemetry) -> None:
    ctx = extract_trace_context(
        [("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")])
    with tel.tracer.start_as_current_span("root", context=ctx) as root:
        inner = trace.get_current_span()
        assert inner is root and root.is_recording()
        assert root.get_span_context().trace_flags.sampled
        assert format(root.get_span_context().trace_id, "032x") == \
            "4bf92f3577b34da6a3ce929d0e0e4736"


def test_the_record_is_written_before_end_returns(tel: Telemetry) -> None:
    file = tel.audit_file
    assert file is not None
    span = tel.tracer.start_span("one", attributes={"switchboard.outcome": "ok"})
    assert not file.read_text()
    span.end()
    (rec,) = [r for _n, r, _raw in iter_records(file)]
    assert rec is not None and rec["name"] == "one"
    assert rec["attributes"] == {"switchboard.outcome": "ok"}
    assert rec["span_id"] == format(span.get_span_context().span_id, "016x")
    span.end()  # a second end writes nothing
    assert len(file.read_text().splitlines()) == 1
    json.loads(file.read_text())
