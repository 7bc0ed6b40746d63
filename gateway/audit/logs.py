"""structlog set-up: one JSON object per line (console rendering on a TTY), bound to the trace.

Every event gets an ISO UTC timestamp, the level, whatever the caller bound with
``structlog.contextvars`` (the pipeline binds request_id/principal per call) and, when a span
is active, its ``trace_id``/``span_id``. Credentials are scrubbed from every value. Standard
``logging`` records (grpc, OpenTelemetry, uvicorn) are rendered the same way.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TextIO

import orjson
import structlog
from opentelemetry import trace
from structlog.typing import EventDict, Processor, WrappedLogger

from gateway.audit.redact import current_call_secrets, scrub_text, scrub_value

__all__ = ["add_trace_context", "configure_logging", "decision_log_level", "scrub_event"]

_HANDLER_FLAG = "_switchboard_handler"
_DECISION_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
# The level of the `policy.decision` line of an ordinary decision (fail-closed ones are
# warnings). Debug unless configured: each call already has its access line (`call`) at info,
# and the decision line (the redacted input, the result) was the second render + write(2).
_decision_level = logging.DEBUG


def decision_log_level() -> int:
    """The level :func:`gateway.policy.decisionlog.finish` logs an ordinary decision at."""
    return _decision_level


def add_trace_context(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    """Add the active span's ids unless the caller bound them already."""
    if "trace_id" not in event:
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            event["trace_id"] = format(ctx.trace_id, "032x")
            event.setdefault("span_id", format(ctx.span_id, "016x"))
    return event


# Written by the processors before scrub_event from the clock and the method name, never
# from data: nothing in them to scrub (the timestamp alone is long enough to run the patterns).
_OWN_KEYS = frozenset({"timestamp", "level"})


def scrub_event(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    """Replace credential values (by key, ``Bearer`` pattern, registered secret) and the
    masked values of the call whose span is current."""
    call = current_call_secrets()
    for key, value in event.items():
        if key in _OWN_KEYS and type(value) is str:
            continue
        event[key] = (
            scrub_text(value, call)
            if key == "event" and isinstance(value, str)
            else (scrub_value(key, value, call))
        )
    return event


def render_json(obj: Any, default: Callable[[Any], Any] | None = None, **kw: Any) -> str:
    """One log line's JSON: orjson (~5x faster than ``json.dumps``; the decision log and the
    ``rpc`` line are on every call's path), falling back to ``json.dumps`` — and so to the
    exact text it always gave — when a line holds non-ASCII text (kept ``\\u``-escaped) or
    something orjson refuses (an integer over 64 bits)."""
    try:
        text = orjson.dumps(obj, default=default, option=orjson.OPT_NON_STR_KEYS).decode()
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(obj, default=default, **kw)
    if not text.isascii():
        return json.dumps(obj, default=default, **kw)
    return text


def _when_asked(processor: Processor, key: str) -> Processor:
    """``processor`` only for events that carry ``key`` (``stack_info``, ``exc_info``): the
    renderers cost a few µs each on every line even with nothing to render."""
    def run(logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
        if key in event:
            out: EventDict = processor(logger, name, event)  # type: ignore[assignment]
            return out
        return event
    return run


def _shared() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        add_trace_context,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _when_asked(structlog.processors.StackInfoRenderer(additional_ignores=[__name__]),
                    "stack_info"),
    ]


def configure_logging(
    fmt: str = "auto", level: str = "INFO", *, stream: TextIO | None = None,
    decisions: str = "debug",
) -> None:
    """Configure structlog and the stdlib root logger; safe to call again (replaces).

    ``fmt``: ``"json"``, ``"console"``, or ``"auto"`` (console when ``stream`` is a TTY).
    ``stream`` defaults to stderr. ``decisions``: the level (``debug`` | ``info``) of the
    ``policy.decision`` line of a decision that is not a fail-closed deny (those are
    warnings whatever this says).
    """
    global _decision_level
    if decisions.lower() not in _DECISION_LEVELS:
        raise ValueError(f"decision log level must be debug or info, not {decisions!r}")
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    if fmt not in ("json", "console"):
        raise ValueError(f"log format must be auto, json or console, not {fmt!r}")
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    renderer: Processor
    tail: list[Processor]
    if fmt == "json":
        tail = [_when_asked(structlog.processors.dict_tracebacks, "exc_info"), scrub_event]
        renderer = structlog.processors.JSONRenderer(serializer=render_json, sort_keys=False)
    else:
        tail = [scrub_event]
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    shared = _shared()
    structlog.configure(
        processors=[*shared, *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tail,
                renderer,
            ],
        )
    )
    setattr(handler, _HANDLER_FLAG, True)
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_FLAG, False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    _decision_level = _DECISION_LEVELS[decisions.lower()]
