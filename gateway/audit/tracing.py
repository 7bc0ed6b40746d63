"""Module-level tracers that record into whichever gateway's call is current.

Each gateway owns its ``TracerProvider`` (several may run in one process), so a module-level
``opentelemetry.trace.get_tracer(...)`` — which binds to the *global* provider — would record
nothing. ``contextual_tracer(name)`` is the drop-in: at each span start it looks at the current
span, finds the :class:`~gateway.audit.Telemetry` that made it, and starts the child there.
With no gateway span current it falls back to the global provider (a no-op unless set).
"""

from __future__ import annotations

import threading
import weakref
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.util import types

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["ContextualTracer", "contextual_tracer", "register_provider", "unregister_provider"]


class _Owner(Protocol):
    def tracer_for(self, name: str) -> trace.Tracer: ...


_lock = threading.Lock()
_owners: dict[int, weakref.ref[Any]] = {}  # id(resource of the provider) -> owner


def register_provider(resource: object, owner: _Owner) -> None:
    """Spans carrying ``resource`` belong to ``owner`` (called by setup_telemetry)."""
    with _lock:
        _owners[id(resource)] = weakref.ref(owner)


def unregister_provider(resource: object) -> None:
    with _lock:
        _owners.pop(id(resource), None)


def _owner_tracer(name: str, context: Context | None) -> trace.Tracer:
    span = trace.get_current_span(context)
    resource = getattr(span, "resource", None)  # SDK spans expose their provider's resource
    if resource is not None:
        ref = _owners.get(id(resource))
        owner = ref() if ref is not None else None
        if owner is not None:
            tracer: trace.Tracer = owner.tracer_for(name)
            return tracer
    return trace.get_tracer(name)


class ContextualTracer(trace.Tracer):
    """See the module docstring; behaves like any ``Tracer``."""

    def __init__(self, name: str) -> None:
        self.name = name

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
    ) -> Span:
        return _owner_tracer(self.name, context).start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )

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
    ) -> AbstractContextManager[Span]:
        # The owner's own context manager, not one wrapped in another generator: every span
        # of every call starts here, and the extra generator frame was pure overhead.
        return _owner_tracer(self.name, context).start_as_current_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
            end_on_exit,
        )


def contextual_tracer(name: str) -> trace.Tracer:
    """Use instead of ``opentelemetry.trace.get_tracer(name)`` for module-level tracers."""
    return ContextualTracer(name)
