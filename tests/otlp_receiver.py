"""A real OTLP trace receiver for tests: gRPC (the collector's TraceService) or HTTP/protobuf.

Usage (async or sync; both protocols have the same API)::

    async with OtlpReceiver() as rx:                 # or OtlpReceiver("http/protobuf")
        settings = AuditSettings(otlp_endpoint=rx.endpoint, otlp_protocol=rx.protocol, ...)
        ...                                          # make calls
        spans = await rx.wait_for_spans(5, timeout=10)
        root = rx.one("switchboard.v1.Gateway/Execute")
        assert [c.name for c in rx.children(root)] == ["policy.decide", ...]
        print(rx.render(root.trace_id))              # ascii tree, handy in assert messages

    with OtlpReceiver() as rx: ...; rx.wait_for_spans_sync(5)

``rx.endpoint`` is ``http://127.0.0.1:<port>`` for grpc and ``http://127.0.0.1:<port>/v1/traces``
for http; ``rx.spans`` holds :class:`ReceivedSpan` (ids as lowercase hex, attributes flattened
to Python values); ``rx.requests`` the raw ``ExportTraceServiceRequest``s; ``rx.headers`` the
metadata/headers of each export. The server runs on its own threads on port 0, so it works
from sync tests and from any event loop.
"""

from __future__ import annotations

import asyncio
import gzip
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = ["OtlpReceiver", "ReceivedSpan", "flatten_attributes", "flatten_value"]

_KINDS = {
    trace_pb2.Span.SPAN_KIND_UNSPECIFIED: "UNSPECIFIED",
    trace_pb2.Span.SPAN_KIND_INTERNAL: "INTERNAL",
    trace_pb2.Span.SPAN_KIND_SERVER: "SERVER",
    trace_pb2.Span.SPAN_KIND_CLIENT: "CLIENT",
    trace_pb2.Span.SPAN_KIND_PRODUCER: "PRODUCER",
    trace_pb2.Span.SPAN_KIND_CONSUMER: "CONSUMER",
}
_STATUS = {
    trace_pb2.Status.STATUS_CODE_UNSET: "UNSET",
    trace_pb2.Status.STATUS_CODE_OK: "OK",
    trace_pb2.Status.STATUS_CODE_ERROR: "ERROR",
}


def flatten_value(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as a plain Python value."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [flatten_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return flatten_attributes(value.kvlist_value.values)
    return getattr(value, which)


def flatten_attributes(kvs: Any) -> dict[str, Any]:
    """Repeated ``KeyValue`` as a dict."""
    return {kv.key: flatten_value(kv.value) for kv in kvs if isinstance(kv, KeyValue)}


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    kind: str
    attributes: dict[str, Any]
    status_code: str
    status_message: str
    start_ns: int
    end_ns: int
    events: list[dict[str, Any]] = field(default_factory=list)
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""


def _spans_of(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    out = []
    for rs in request.resource_spans:
        resource = flatten_attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    ReceivedSpan(
                        name=s.name,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex() or None,
                        kind=_KINDS.get(s.kind, str(s.kind)),
                        attributes=flatten_attributes(s.attributes),
                        status_code=_STATUS.get(s.status.code, str(s.status.code)),
                        status_message=s.status.message,
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        events=[
                            {"name": e.name, "attributes": flatten_attributes(e.attributes)}
                            for e in s.events
                        ],
                        resource=resource,
                        scope=ss.scope.name,
                    )
                )
    return out


class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, rx: OtlpReceiver) -> None:
        self.rx = rx

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self.rx._record(request, {k: str(v) for k, v in context.invocation_metadata()})
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """Collects exported spans; see the module docstring."""

    def __init__(self, protocol: Literal["grpc", "http/protobuf"] = "grpc") -> None:
        self.protocol = protocol
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self.spans: list[ReceivedSpan] = []
        self.endpoint = ""
        self._cond = threading.Condition()
        self._grpc: grpc.Server | None = None
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> OtlpReceiver:
        if self.protocol == "grpc":
            server = grpc.server(ThreadPoolExecutor(max_workers=4))
            trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Servicer(self), server)
            port = server.add_insecure_port("127.0.0.1:0")
            server.start()
            self._grpc = server
            self.endpoint = f"http://127.0.0.1:{port}"
        elif self.protocol == "http/protobuf":
            self._http = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(self))
            self._http.daemon_threads = True
            self._thread = threading.Thread(
                target=self._http.serve_forever, args=(0.05,), daemon=True
            )
            self._thread.start()
            self.endpoint = f"http://127.0.0.1:{self._http.server_address[1]}/v1/traces"
        else:
            raise ValueError(f"unknown protocol {self.protocol!r}")
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None).wait()
            self._grpc = None
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> OtlpReceiver:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    # --- collection -------------------------------------------------------------------------
    def _record(
        self, request: trace_service_pb2.ExportTraceServiceRequest, headers: dict[str, str]
    ) -> None:
        with self._cond:
            self.requests.append(request)
            self.headers.append(headers)
            self.spans.extend(_spans_of(request))
            self._cond.notify_all()

    def wait_for_spans_sync(self, n: int, timeout: float = 10.0) -> list[ReceivedSpan]:
        """Block until at least ``n`` spans arrived; AssertionError with what did on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.spans) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [s.name for s in self.spans]
                    raise AssertionError(f"expected {n} spans within {timeout}s, got {got}")
                self._cond.wait(left)
            return list(self.spans)

    async def wait_for_spans(self, n: int, timeout: float = 10.0) -> list[ReceivedSpan]:
        return await asyncio.to_thread(self.wait_for_spans_sync, n, timeout)

    # --- queries ----------------------------------------------------------------------------
    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return sorted((s for s in self.spans if s.trace_id == trace_id), key=lambda s: s.start_ns)

    def named(self, name: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name]

    def one(self, name: str) -> ReceivedSpan:
        found = self.named(name)
        assert len(found) == 1, f"expected one span {name!r}, got {len(found)}"
        return found[0]

    def children(self, span: ReceivedSpan) -> list[ReceivedSpan]:
        return sorted(
            (
                s
                for s in self.spans
                if s.trace_id == span.trace_id and s.parent_span_id == span.span_id
            ),
            key=lambda s: s.start_ns,
        )

    def render(self, trace_id: str) -> str:
        """Names as an indented tree (for assertion messages and debugging)."""
        spans = self.trace(trace_id)
        ids = {s.span_id for s in spans}
        lines: list[str] = []

        def walk(s: ReceivedSpan, depth: int) -> None:
            lines.append("  " * depth + f"{s.name} [{s.kind}] {s.status_code}")
            for c in self.children(s):
                walk(c, depth + 1)

        for s in spans:
            if s.parent_span_id not in ids:
                walk(s, 0)
        return "\n".join(lines)


def _http_handler(rx: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces":
                self.send_error(404)
                return
            request = trace_service_pb2.ExportTraceServiceRequest()
            try:
                request.ParseFromString(body)
            except Exception:
                self.send_error(400, "bad protobuf")
                return
            rx._record(request, {k.lower(): v for k, v in self.headers.items()})
            payload = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler
