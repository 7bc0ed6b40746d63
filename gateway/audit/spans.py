"""The gateway's spans: the OpenTelemetry tracing *API*, implemented for the audit trail.

Every call's trace is its audit record, and every span of it is written to the hash-chained
file the moment it ends. The OpenTelemetry SDK's own ``Span`` costs ~45 µs to start, fill and
end before any processor runs (a sampler, a tracer-metrics hook, a lock and a
``BoundedAttributes`` validation per attribute, a ``ReadableSpan`` copy at ``end()``) — a
third of a span's whole cost with its audit record. :class:`AuditSpan` does what the audit
trail needs and nothing else:

* the same identity rules as the SDK with the ``ALWAYS_ON`` sampler: a random 128-bit trace id
  for a root (or the parent's), a random 64-bit span id, flags ``sampled | random-trace-id``
  (the parent's random flag for a child), the parent's ``tracestate``;
* attributes validated by the API's own ``_clean_attribute_value`` (plain ``str``/``int``/
  ``float``/``bool`` values are stored as they are — that function returns them unchanged),
  sequences stored as tuples, at most 128 per span (the oldest dropped, as the SDK does),
  nothing set after ``end()``;
* ``set_status``, ``add_event``, ``add_link``, ``record_exception`` and the context-manager
  behaviour (``use_span``: an escaping ``Exception`` is recorded unless told otherwise) as the
  SDK has them;
* at ``end()`` the span is handed to its :class:`SpanSink` synchronously — which scrubs it,
  writes its record and, only when a collector is configured, builds the SDK ``ReadableSpan``
  the OTLP exporter encodes.

Anything that reads spans through the API (``trace.get_current_span()``, ``use_span``,
``inject``, the contextual tracer) sees an ordinary recording span.
"""

from __future__ import annotations

import random
import traceback
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from time import time_ns
from types import TracebackType
from typing import Any, Protocol

from opentelemetry import trace
from opentelemetry.attributes import _clean_attribute_value
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.util import types

__all__ = ["AuditSpan", "AuditTracer", "SpanSink"]

MAX_ATTRIBUTES = 128  # the SDK's default span limit
_SIMPLE = frozenset((str, int, float, bool))
_UNSET = Status(StatusCode.UNSET)
_ROOT_FLAGS = TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_INVALID_SPAN_ID = trace.INVALID_SPAN_ID
_INVALID_TRACE_ID = trace.INVALID_TRACE_ID


class SpanSink(Protocol):
    """Where a gateway's spans go: told when each starts and when it ends."""

    resource: Resource

    def on_start(self, span: AuditSpan) -> None: ...

    def on_end(self, span: AuditSpan) -> None: ...


def _clean(value: Any) -> Any:
    return value if type(value) in _SIMPLE else _clean_attribute_value(value, None)


class AuditSpan(trace.Span):
    """A recording span of one gateway (see the module docstring). Read like a
    ``ReadableSpan``: ``name``, ``context``, ``parent``, ``kind``, ``attributes``, ``events``,
    ``links``, ``status``, ``start_time``, ``end_time``, ``resource``,
    ``instrumentation_scope``."""

    def __init__(
        self,
        sink: SpanSink,
        scope: InstrumentationScope,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: types.Attributes,
        links: Sequence[Link] | None,
        start_time: int | None,
        record_exception: bool,
        set_status_on_exception: bool,
    ) -> None:
        self._sink = sink
        self.instrumentation_scope = scope
        self.resource = sink.resource
        self._name = name
        self._context = context
        self.parent = parent
        self.kind = kind
        self.status: Status = _UNSET
        self.start_time: int = start_time if start_time is not None else time_ns()
        self.end_time: int | None = None
        self._attributes: dict[str, Any] = {}
        if attributes:
            self.set_attributes(attributes)
        self.events: list[Event] = []
        self.links: list[Link] = []
        for link in links or ():
            if link and link.context.is_valid:
                self.add_link(link.context, link.attributes)
        self._record_exception = record_exception
        self._set_status_on_exception = set_status_on_exception

    # -- read side ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def context(self) -> SpanContext:
        return self._context

    @property
    def attributes(self) -> Mapping[str, Any]:
        return self._attributes

    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self.end_time is None

    def __repr__(self) -> str:
        return f'{type(self).__name__}(name="{self._name}", context={self._context})'

    # -- write side -----------------------------------------------------------------------

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        if self.end_time is not None or not key or type(key) is not str:
            return
        attrs = self._attributes
        if key in attrs:
            del attrs[key]  # an overwrite moves to the end, as in the SDK's BoundedAttributes
        elif len(attrs) >= MAX_ATTRIBUTES:
            del attrs[next(iter(attrs))]
        attrs[key] = _clean(value)

    def set_attributes(self, attributes: Mapping[str, types.AttributeValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        if self.end_time is not None:
            return
        clean = {k: _clean(v) for k, v in (attributes or {}).items() if k and type(k) is str}
        self.events.append(Event(name, clean, timestamp if timestamp is not None else time_ns()))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self.end_time is not None or context is None or not context.is_valid:
            return
        clean = {k: _clean(v) for k, v in (attributes or {}).items() if k and type(k) is str}
        self.links.append(Link(context, clean))

    def update_name(self, name: str) -> None:
        if self.end_time is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        # As the SDK: once OK, the status stays; UNSET never overrides; a Status wins over
        # a separate description.
        if self.end_time is not None or self.status.status_code is StatusCode.OK:
            return
        if isinstance(status, Status):
            if status.status_code is not StatusCode.UNSET:
                self.status = status
        elif isinstance(status, StatusCode) and status is not StatusCode.UNSET:
            self.status = Status(status, description)  # anything else is ignored, as there

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        event: dict[str, Any] = {
            "exception.type": f"{module}.{qualname}" if module and module != "builtins"
            else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            event.update(attributes)
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is not None:
            return
        self.end_time = end_time if end_time is not None else time_ns()
        self._sink.on_end(self)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        """``with tracer.start_span(...) as span:``: as the SDK, record what escapes, end."""
        if exc_val is not None and self.is_recording():
            if self._record_exception:
                self.record_exception(exc_val, escaped=True)
            if self._set_status_on_exception:
                self.set_status(Status(StatusCode.ERROR, f"{type(exc_val).__name__}: {exc_val}"))
        self.end()

    # -- the SDK's shape, for the OTLP exporter ------------------------------------------

    def readable(self, attributes: Mapping[str, Any] | None = None,
                 events: Sequence[Event] | None = None,
                 status: Status | None = None) -> ReadableSpan:
        """This (ended) span as the SDK's ``ReadableSpan``, optionally with scrubbed parts."""
        return ReadableSpan(
            name=self._name,
            context=self._context,
            parent=self.parent,
            resource=self.resource,
            attributes=self._attributes if attributes is None else attributes,
            events=self.events if events is None else events,
            links=self.links,
            kind=self.kind,
            status=self.status if status is None else status,
            start_time=self.start_time,
            end_time=self.end_time,
            instrumentation_scope=self.instrumentation_scope,
        )


def _span_id() -> int:
    span_id = random.getrandbits(64)
    while span_id == _INVALID_SPAN_ID:
        span_id = random.getrandbits(64)
    return span_id


def _trace_id() -> int:
    trace_id = random.getrandbits(128)
    while trace_id == _INVALID_TRACE_ID:
        trace_id = random.getrandbits(128)
    return trace_id


class AuditTracer(trace.Tracer):
    """A tracer of one gateway: every span it starts is recording and sampled (the
    ``ALWAYS_ON`` rule — a caller's unsampled ``traceparent`` cannot switch auditing off)."""

    def __init__(self, sink: SpanSink, name: str) -> None:
        self._sink = sink
        self._scope = InstrumentationScope(name)

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        parent: SpanContext | None = trace.get_current_span(context).get_span_context()
        if parent is None or not parent.is_valid:
            parent = None
            span_context = SpanContext(_trace_id(), _span_id(), is_remote=False,
                                       trace_flags=_ROOT_FLAGS)
        else:
            flags = _ROOT_FLAGS if parent.trace_flags.random_trace_id else _SAMPLED
            span_context = SpanContext(parent.trace_id, _span_id(), is_remote=False,
                                       trace_flags=flags, trace_state=parent.trace_state)
        span = AuditSpan(self._sink, self._scope, name, span_context, parent, kind, attributes,
                         links, start_time, record_exception, set_status_on_exception)
        self._sink.on_start(span)
        return span

    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> AbstractContextManager[trace.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time,
                               record_exception, set_status_on_exception)
        # The API's own context manager (what the SDK's wraps in a second generator):
        # current while the block runs, an escaping Exception recorded, ended on exit.
        cm: AbstractContextManager[trace.Span] = trace.use_span(
            span, end_on_exit=end_on_exit, record_exception=record_exception,
            set_status_on_exception=set_status_on_exception)
        return cm
