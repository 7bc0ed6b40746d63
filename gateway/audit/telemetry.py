"""Telemetry set-up: the tracers of one gateway instance, its exporters, trace context.

Not the global provider: tests (and embedders) run several gateways in one process, and each
must write its own audit file. Spans are :class:`gateway.audit.spans.AuditSpan` (the tracing
API implemented for the audit trail, not the SDK's ``Span``): every one is sampled — a
client-supplied ``traceparent`` with the sampled flag off must not switch off the audit
trail — and written by :class:`gateway.audit.export.AuditSink` as it ends. The SDK is used
for what it is good at here: the ``Resource``, and the OTLP exporter behind its
``BatchSpanProcessor`` when a collector is configured.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.audit.chain import AuditLog, FsyncPolicy
from gateway.audit.export import AuditSink, GuardedExporter, JsonlSpanExporter
from gateway.audit.spans import AuditTracer
from gateway.audit.tracing import register_provider, unregister_provider
from gateway.errors import ConfigError

__all__ = [
    "AuditSettings",
    "Telemetry",
    "extract_trace_context",
    "inject_trace_context",
    "setup_telemetry",
]

_PROPAGATOR = TraceContextTextMapPropagator()
_SCOPE = "switchboard"


@dataclass(frozen=True)
class AuditSettings:
    """Where the audit trail goes. The local file needs no collector and is on by default."""

    file: Path | None = Path("state/audit.jsonl")
    otlp_endpoint: str | None = None
    otlp_protocol: Literal["grpc", "http/protobuf"] = "grpc"
    otlp_headers: dict[str, str] = field(default_factory=dict)
    service_name: str = "switchboard"
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # The `policy.decision` line of an ordinary decision (fail-closed denies: warning).
    decision_log_level: Literal["debug", "info"] = "debug"
    # Additions beyond the core contract (all optional):
    fsync: FsyncPolicy = "interval"  # see gateway.audit.chain
    fsync_interval_s: float = 1.0
    otlp_timeout_s: float = 10.0  # per export attempt incl. retries
    otlp_schedule_delay_ms: int = 1000
    # Signed checkpoints of the audit file (gateway/audit/checkpoint.py): an Ed25519 private
    # key (PEM) and how often to sign; also once at shutdown.
    checkpoint_key_file: Path | None = None
    checkpoint_interval_s: float = 60.0
    # Also append every checkpoint there (a file, or a directory: <file>.checkpoints in it), on
    # another volume / a WORM mount: `verify --checkpoints` checks the file against that copy.
    checkpoint_export: Path | None = None
    # The HMAC key of the argument digests (gateway.audit.redact.load_digest_key): a file
    # holding at least 32 bytes; unset, $SWITCHBOARD_AUDIT_DIGEST_KEY, else a per-process key.
    digest_key_file: Path | None = None


def _otlp_exporter(settings: AuditSettings) -> SpanExporter:
    endpoint = settings.otlp_endpoint or ""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"otlp endpoint must be an http(s) URL, got {endpoint!r}", field="audit.otlp_endpoint"
        )
    headers = dict(settings.otlp_headers)
    if settings.otlp_protocol == "grpc":
        headers = {k.lower(): v for k, v in headers.items()}  # gRPC metadata keys are lowercase
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        return GrpcExporter(
            endpoint=endpoint,
            insecure=parts.scheme == "http",
            headers=headers,
            timeout=settings.otlp_timeout_s,
        )
    if settings.otlp_protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        if parts.path in ("", "/"):
            endpoint = endpoint.rstrip("/") + "/v1/traces"
        return HttpExporter(endpoint=endpoint, headers=headers, timeout=settings.otlp_timeout_s)
    raise ConfigError(
        f"unknown otlp protocol {settings.otlp_protocol!r}", field="audit.otlp_protocol"
    )


class Telemetry:
    """Owns the provider and exporters of one gateway; hand ``tracer`` to everything else."""

    def __init__(
        self,
        sink: AuditSink,
        otlp: GuardedExporter | None,
        otlp_processor: BatchSpanProcessor | None,
    ) -> None:
        self._sink = sink
        self._file = sink.file
        self._otlp = otlp
        self._otlp_processor = otlp_processor
        self._closed = False
        self._tracers: dict[str, trace.Tracer] = {}
        self.tracer: trace.Tracer = self.tracer_for(_SCOPE)
        register_provider(sink.resource, self)
        ref = weakref.ref(self)

        def _at_exit() -> None:  # a forgotten shutdown still fsyncs and flushes (bounded)
            tel = ref()
            if tel is not None:
                tel.shutdown(timeout_ms=2000)

        self._at_exit = _at_exit
        atexit.register(_at_exit)

    def tracer_for(self, name: str) -> trace.Tracer:
        """A tracer of this gateway's provider with instrumentation scope ``name``."""
        tracer = self._tracers.get(name)
        if tracer is None:
            tracer = self._tracers.setdefault(name, AuditTracer(self._sink, name))
        return tracer

    @property
    def audit_file(self) -> Path | None:
        return self._file.log.path if self._file is not None else None

    @property
    def audit_error(self) -> str:
        """Error of the last audit-file write ("" when it succeeded): for the health check."""
        return self._file.last_error if self._file is not None else ""

    def force_flush(self, timeout_ms: int = 5000) -> bool:
        """fsync the audit file and push queued spans to the collector, within ``timeout_ms``."""
        ok = self._file.force_flush() if self._file is not None else True
        proc = self._otlp_processor
        if proc is None:
            return ok
        done: list[bool] = []
        worker = threading.Thread(
            target=lambda: done.append(proc.force_flush(timeout_ms)),
            name="otlp-flush",
            daemon=True,
        )
        worker.start()
        worker.join(timeout_ms / 1000)
        return ok and bool(done) and done[0]

    def shutdown(self, timeout_ms: int = 5000) -> None:
        """Close the audit file, then give the collector ``timeout_ms`` for queued spans.

        Bounded even when the collector hangs: after the deadline the OTLP export is aborted
        (gRPC calls are cancelled; an HTTP request in flight is left to its own timeout on a
        daemon thread) and whatever is still queued is dropped — it is in the file already.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._at_exit)
        unregister_provider(self._sink.resource)
        if self._file is not None:
            self._file.shutdown()
        proc = self._otlp_processor
        if proc is None:
            return
        worker = threading.Thread(target=proc.shutdown, name="otel-shutdown", daemon=True)
        worker.start()
        worker.join(timeout_ms / 1000)
        if worker.is_alive() and self._otlp is not None:
            self._otlp.abort()
            worker.join(0.5)


def setup_telemetry(settings: AuditSettings) -> Telemetry:
    """Build the sink: audit file (synchronous, chained) and optional OTLP (batched)."""
    resource = Resource.create({SERVICE_NAME: settings.service_name})
    file_exporter: JsonlSpanExporter | None = None
    if settings.file is not None:
        log = AuditLog(settings.file, settings.fsync, settings.fsync_interval_s)
        file_exporter = JsonlSpanExporter(log)
    guarded: GuardedExporter | None = None
    batch: BatchSpanProcessor | None = None
    if settings.otlp_endpoint:
        try:
            guarded = GuardedExporter(_otlp_exporter(settings))
        except ConfigError:
            if file_exporter is not None:
                file_exporter.shutdown()
            raise
        batch = BatchSpanProcessor(
            guarded,
            schedule_delay_millis=settings.otlp_schedule_delay_ms,
            export_timeout_millis=settings.otlp_timeout_s * 1000,
        )
    return Telemetry(AuditSink(resource, file_exporter, batch), guarded, batch)


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def extract_trace_context(metadata: Iterable[tuple[str, str | bytes]] | None) -> Context:
    """The W3C ``traceparent``/``tracestate`` from gRPC metadata as a parent context.

    Starts from an empty context (not the current one), so a malformed or missing header
    yields a new root trace rather than whatever happened to be active.
    """
    carrier: dict[str, str] = {}
    for key, value in metadata or ():
        k = key.lower()
        if k in ("traceparent", "tracestate") and k not in carrier:
            carrier[k] = _text(value)
    return _PROPAGATOR.extract(carrier, context=Context())


def inject_trace_context(headers: dict[str, str], context: Context | None = None) -> dict[str, str]:
    """Add ``traceparent``/``tracestate`` of the current (or given) span to outgoing headers."""
    _PROPAGATOR.inject(headers, context=context)
    return headers
