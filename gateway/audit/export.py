"""Span exporters: the hash-chained audit file, and a guard around the OTLP exporter.

Both scrub credentials (see :mod:`gateway.audit.redact`) before anything leaves the process.
:class:`AuditSink` receives every span of a gateway as it ends and writes its record with the
file exporter synchronously (in end order: the record is written before ``end()`` returns);
the OTLP exporter runs under a ``BatchSpanProcessor``
behind :class:`GuardedExporter`, which can abort a slow export so shutdown stays bounded when
the collector is unreachable.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Link, Status

from gateway.audit.chain import AuditLog
from gateway.audit.redact import (
    CallSecrets,
    close_span_secrets,
    open_span_secrets,
    scrub_text,
    scrub_value,
)
from gateway.audit.spans import AuditSpan

__all__ = [
    "MAX_KEY_CHARS",
    "MAX_NAME_CHARS",
    "MAX_SPAN_CHARS",
    "MAX_STATUS_CHARS",
    "MAX_VALUE_CHARS",
    "AuditSink",
    "GuardedExporter",
    "JsonlSpanExporter",
    "scrub_span",
    "span_to_record",
]

_log = structlog.get_logger("switchboard.audit")


def _attrs(attributes: Mapping[str, Any] | None, call: CallSecrets | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in (attributes or {}).items():
        v = scrub_value(key, value, call)
        out[key] = list(v) if isinstance(v, tuple) else v
    return out


_resource_cache: tuple[Resource, dict[str, Any]] | None = None


def _resource(resource: Resource) -> dict[str, Any]:
    """Service name and instance (not the SDK's version noise); computed once per provider."""
    global _resource_cache
    cached = _resource_cache
    if cached is not None and cached[0] is resource:
        return dict(cached[1])
    attrs = {k: v for k, v in resource.attributes.items() if not k.startswith("telemetry.sdk.")}
    clean = _attrs(attrs)
    _resource_cache = (resource, clean)
    return dict(clean)


def _hex(value: int, width: int) -> str:
    return format(value, f"0{width}x")


def _iso(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="microseconds")


def span_to_record(span: ReadableSpan | AuditSpan, call: CallSecrets | None = None,
                   ) -> dict[str, Any]:
    """The audit-file record of one finished span (before chaining), credentials scrubbed —
    and the masked values of ``call`` (the span's call), in the same one pass."""
    ctx = span.get_span_context()
    assert ctx is not None
    parent = span.parent
    start = span.start_time or 0
    end = span.end_time or start
    rec: dict[str, Any] = {
        "v": 1,
        "time": _iso(start),
        "trace_id": _hex(ctx.trace_id, 32),
        "span_id": _hex(ctx.span_id, 16),
        "parent_span_id": _hex(parent.span_id, 16) if parent is not None else None,
        "name": span.name,
        "kind": span.kind.name,
        "start_ns": start,
        "end_ns": end,
        "duration_ms": round((end - start) / 1e6, 3),
        "status": {
            "code": span.status.status_code.name,
            "message": scrub_text(span.status.description or "", call),
        },
        "attributes": _attrs(span.attributes, call),
        "resource": _resource(span.resource),
    }
    if parent is not None and parent.is_remote:
        rec["parent_remote"] = True
    if span.events:
        rec["events"] = [
            {"name": e.name, "time_ns": e.timestamp, "attributes": _attrs(e.attributes, call)}
            for e in span.events
        ]
    if span.links:
        rec["links"] = [
            {
                "trace_id": _hex(link.context.trace_id, 32),
                "span_id": _hex(link.context.span_id, 16),
                "attributes": _attrs(link.attributes),
            }
            for link in span.links
        ]
    return rec


class JsonlSpanExporter(SpanExporter):
    """Writes each span to the :class:`AuditLog`; never raises into the caller."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log
        self.last_error: str = ""
        self.failures = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        ok = True
        for span in spans:
            ok = self.write(span) and ok
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def write(self, span: ReadableSpan | AuditSpan, call: CallSecrets | None = None) -> bool:
        """Write one span's record (scrubbed, with ``call``'s masked values) before returning."""
        try:
            self.log.append(span_to_record(span, call))
        except (OSError, ValueError, TypeError) as exc:
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            _log.error("audit_write_failed", error=self.last_error, span=span.name)
            return False
        self.last_error = ""
        return True

    def shutdown(self) -> None:
        self.log.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        try:
            self.log.flush()
        except OSError:
            return False
        return True


def scrub_span(span: ReadableSpan, call: CallSecrets | None = None) -> ReadableSpan:
    """The span itself if it carries no credential (nor a masked value of ``call``), else a
    scrubbed copy."""
    attrs = dict(span.attributes or {})
    clean = _attrs(attrs, call)
    events = [(e, _attrs(e.attributes, call)) for e in span.events]
    message = span.status.description or ""
    clean_message = scrub_text(message, call)
    same = (
        clean == {k: list(v) if isinstance(v, tuple) else v for k, v in attrs.items()}
        and all(c == dict(e.attributes or {}) for e, c in events)
        and clean_message == message
    )
    if same:
        return span
    return ReadableSpan(
        name=span.name,
        context=span.get_span_context(),
        parent=span.parent,
        resource=span.resource,
        attributes=clean,
        events=[Event(e.name, c, e.timestamp) for e, c in events],
        links=span.links,
        kind=span.kind,
        status=Status(span.status.status_code, clean_message or None),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


# ---- the size backstop: no span record is larger than this, whatever code made it ---------
#
# Span code clips what it knows may be big (json_attr, record_outcome), but a message, an
# argument or a stack trace can reach a span through any path; the audit sink bounds every
# span before anything is written or exported (docs/audit.md, "Record size"). Attribute counts
# are fixed by AuditSpan (128); lengths are clipped here, after scrubbing, so a credential cut
# in half is never half written; events beyond the budget are dropped.

MAX_VALUE_CHARS = 8192  # one string value (each string of a sequence counts on its own)
MAX_STATUS_CHARS = 2048  # the status description
MAX_KEY_CHARS = 128  # an attribute key
MAX_NAME_CHARS = 256  # the span's and each event's name
MAX_SPAN_CHARS = 32768  # everything above, over the whole span (attributes, events, links)
_CUT = "…[clipped]"
DROPPED = "switchboard.audit.dropped"  # how many values did not fit


def _chars(value: Any) -> int:
    kind = type(value)
    if kind is str:
        return len(value)
    if kind is tuple or kind is list:
        return sum(len(v) if type(v) is str else 24 for v in value)
    return 24


def _plain(attributes: Any) -> Mapping[str, Any]:
    """The dict under OpenTelemetry's ``BoundedAttributes`` (whose item access takes a lock:
    ~1 us an attribute, on every span) when there is one; else the mapping itself."""
    inner = getattr(attributes, "_dict", None)
    return inner if isinstance(inner, dict) else (attributes or {})


def _over(attributes: Any, budget: int) -> int:
    """What ``attributes`` spend of ``budget``; -1 if one key or value alone is too long."""
    used = 0
    for key, value in _plain(attributes).items():
        size = len(value) if type(value) is str else _chars(value)
        if size > MAX_VALUE_CHARS or len(key) > MAX_KEY_CHARS:
            return -1
        used += len(key) + size
    return used if used <= budget else -1


def _fits(span: ReadableSpan | AuditSpan) -> bool:
    left = MAX_SPAN_CHARS - len(span.name) - len(span.status.description or "")
    if len(span.name) > MAX_NAME_CHARS or len(span.status.description or "") > MAX_STATUS_CHARS:
        return False
    own = getattr(span, "_attributes", None)  # the SDK span's BoundedAttributes
    for attributes in (own if own is not None else span.attributes,
                       *(e.attributes for e in span.events),
                       *(link.attributes for link in span.links)):
        used = _over(attributes, left)
        if used < 0:
            return False
        left -= used
    return left - sum(len(e.name) for e in span.events) >= 0


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: limit - len(_CUT)] + _CUT if limit > len(_CUT) else ""


class _Budget:
    """Scrub, then clip, each value of one span against what the span has left; what no
    longer fits is dropped (and counted in ``switchboard.audit.dropped``)."""

    def __init__(self, call: CallSecrets | None) -> None:
        self.left = MAX_SPAN_CHARS
        self.call = call
        self.dropped = 0

    def text(self, text: str, limit: int) -> str:
        out = _clip(scrub_text(text, self.call), min(limit, self.left))
        self.left -= len(out)
        return out

    def value(self, key: str, value: Any) -> Any:
        clean = scrub_value(key, value, self.call)
        if type(clean) is str:
            return self.text(clean, MAX_VALUE_CHARS)
        if isinstance(clean, list | tuple):
            room = min(MAX_VALUE_CHARS, self.left)
            items: list[Any] = []
            for item in clean:
                item = _clip(item, room) if isinstance(item, str) else item
                size = len(item) if isinstance(item, str) else 24
                if size > room:
                    self.dropped += 1
                    break
                room -= size
                items.append(item)
            self.left -= min(MAX_VALUE_CHARS, self.left) - room
            return items
        self.left -= 24
        return clean

    def attributes(self, attributes: Mapping[str, Any] | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in (attributes or {}).items():
            name = _clip(key, MAX_KEY_CHARS)
            if self.left < len(name) + 24:
                self.dropped += 1
                continue
            self.left -= len(name)
            out[name] = self.value(key, value)
        return out


def bound_span(span: ReadableSpan | AuditSpan, call: CallSecrets | None = None,
               ) -> ReadableSpan | AuditSpan:
    """The span itself if it is within the size limits above, else a scrubbed, clipped copy:
    its name, status, keys and values then hold at most MAX_SPAN_CHARS characters (plus the
    ``switchboard.audit.dropped`` count of what did not fit)."""
    if _fits(span):
        return span
    budget = _Budget(call)
    name = budget.text(span.name, MAX_NAME_CHARS)
    status = budget.text(span.status.description or "", MAX_STATUS_CHARS)
    attributes = budget.attributes(span.attributes)
    events = []
    for event in span.events:
        if budget.left < 64:
            budget.dropped += 1
            continue
        events.append(Event(budget.text(event.name, MAX_NAME_CHARS),
                            budget.attributes(event.attributes), event.timestamp))
    links = [Link(link.context, budget.attributes(link.attributes)) for link in span.links]
    if budget.dropped:
        attributes[DROPPED] = budget.dropped
    return ReadableSpan(
        name=name,
        context=span.get_span_context(),
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=events,
        links=links,
        kind=span.kind,
        status=Status(span.status.status_code, status or None),
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class AuditSink:
    r"""Where a gateway's :class:`~gateway.audit.spans.AuditSpan`\ s go, synchronously.

    At start a span joins its call's set of masked values (a local root opens one); at end it
    leaves it, its record — scrubbed of credentials and of those values in one pass — is
    written to the hash-chained file before ``end()`` returns, and, only when a collector is
    configured, an SDK ``ReadableSpan`` of it (scrubbed the same way) is queued for OTLP.
    Never raises into the call: a failed write is logged and kept in ``audit_error``."""

    def __init__(self, resource: Resource, file: JsonlSpanExporter | None,
                 otlp: SpanProcessor | None) -> None:
        self.resource = resource
        self.file = file
        self.otlp = otlp

    def on_start(self, span: AuditSpan) -> None:
        ctx = span.context
        open_span_secrets(ctx.trace_id, ctx.span_id, span.parent)

    def on_end(self, span: AuditSpan) -> None:
        ctx = span.context
        call = close_span_secrets(ctx.trace_id, ctx.span_id) or None  # an empty set: None
        try:
            # Bounded before anything is written or exported (bound_span scrubs what it
            # clips; an oversized span becomes a clipped ReadableSpan copy).
            bounded = bound_span(span, call)
            if self.file is not None:
                self.file.write(bounded, call)
            if self.otlp is not None:
                readable = bounded if isinstance(bounded, ReadableSpan) else span.readable()
                self.otlp.on_end(scrub_span(readable, call) if call else readable)
        except Exception as exc:  # pragma: no cover - write() catches what it expects
            _log.error("audit_export_failed", error=repr(exc), span=span.name)


class GuardedExporter(SpanExporter):
    """Scrubs spans and lets :meth:`abort` cut a hanging export (collector unreachable)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self._aborted = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._aborted.is_set():
            return SpanExportResult.FAILURE
        return self.inner.export([scrub_span(s) for s in spans])

    def abort(self) -> None:
        """Stop retrying and close the channel; queued spans are dropped."""
        if not self._aborted.is_set():
            self._aborted.set()
            self.inner.shutdown()

    def shutdown(self) -> None:
        self.abort()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)
