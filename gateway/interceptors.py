"""Per-call work for every gRPC method, in one place: request id, trace span (W3C context
from the caller), identity, log context, and the single mapping of gateway errors to gRPC
status (with the stable error code in trailing metadata ``switchboard-error``)."""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway.audit import attributes as attr
from gateway.audit import extract_trace_context, record_outcome
from gateway.errors import GatewayError, InvalidRequest
from gateway.grpc_status import grpc_status_for
from gateway.identity import Authenticator, bearer_token
from gateway.models import Principal
from gateway.values import loggable_id

__all__ = ["ERROR_METADATA_KEY", "TRACE_METADATA_KEY", "CallInterceptor", "current_principal"]

ERROR_METADATA_KEY = "switchboard-error"
TRACE_METADATA_KEY = "switchboard-trace-id"
# Methods that need no identity (probes, reflection).
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "switchboard_principal", default=None)
log = structlog.get_logger("switchboard.rpc")


def current_principal() -> Principal:
    """The authenticated caller of the current RPC (set by :class:`CallInterceptor`)."""
    principal = _principal.get()
    if principal is None:  # pragma: no cover - the interceptor always sets it
        raise RuntimeError("no authenticated principal in this context")
    return principal


MAX_ERROR_MESSAGE = 1024  # characters of the message echoed to the client
MAX_ERROR_METADATA = 4096  # bytes of the switchboard-error trailer (gRPC allows 16 KiB in all)


def _clip(text: str, limit: int = MAX_ERROR_MESSAGE) -> str:
    return text if len(text) <= limit else text[: limit - 15] + "… [truncated]"


def _error_metadata(exc: GatewayError, trace_id: str) -> tuple[tuple[str, str], ...]:
    """The structured error trailer, kept small: error messages may echo hostile input."""
    body = exc.to_dict()
    body["message"] = _clip(exc.message)
    if "field" in body:
        body["field"] = _clip(str(body["field"]), 256)
    payload = json.dumps(body, ensure_ascii=True, default=str)
    if len(payload) > MAX_ERROR_METADATA:
        reasons = [_clip(str(r), 256) for r in exc.details.get("reasons", [])][:8]
        body["details"] = {"truncated": True, **({"reasons": reasons} if reasons else {})}
        payload = json.dumps(body, ensure_ascii=True, default=str)
    return ((ERROR_METADATA_KEY, payload), (TRACE_METADATA_KEY, trace_id))


class _Undecodable:
    """Stands in for a request whose bytes are not a valid message (decoding happens before
    any interceptor code runs, so the failure is carried to the wrapper as a value)."""

    request_id = ""

    def __init__(self, error: Exception) -> None:
        self.error = error


def _safe_deserializer(deserialize: Any) -> Any:
    if deserialize is None:
        return None

    def run(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception as exc:  # DecodeError, invalid UTF-8, nesting too deep
            return _Undecodable(exc)

    return run


class _Call:
    """The bookkeeping of one RPC: span, identity, log line, error mapping."""

    def __init__(self, interceptor: CallInterceptor, method: str) -> None:
        self.i = interceptor
        self.method = method
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK
        self.error: BaseException | None = None

    async def begin(self, request: Any,
                    context: grpc.aio.ServicerContext[Any, Any]) -> trace.Span:
        metadata = tuple(context.invocation_metadata() or ())
        parent = extract_trace_context(metadata)
        self.span_cm = self.i.tracer.start_as_current_span(
            self.method.lstrip("/"), context=parent, kind=SpanKind.SERVER,
            record_exception=False, set_status_on_exception=False)
        span = self.span_cm.__enter__()
        service, _, name = self.method.lstrip("/").partition("/")
        span.set_attribute(attr.RPC_SYSTEM, "grpc")
        span.set_attribute(attr.RPC_SERVICE, service)
        span.set_attribute(attr.RPC_METHOD, name)
        ctx = span.get_span_context()
        self.trace_id = format(ctx.trace_id, "032x")
        # Recorded before the caller is authenticated or the request checked: only a
        # well-formed id is recorded as such, anything else as a bounded, escaped stand-in
        # (its length, digest and a short prefix). The servicer refuses it afterwards.
        raw_id = getattr(request, "request_id", "") or next(
            (str(v) for k, v in metadata if k == "x-request-id"), "")
        request_id = loggable_id(raw_id) if raw_id else str(uuid.uuid4())
        span.set_attribute(attr.REQUEST_ID, request_id)
        structlog.contextvars.bind_contextvars(
            trace_id=self.trace_id, request_id=request_id, rpc_method=name)
        with self.i.tracer.start_as_current_span("identity") as ident:
            try:
                principal = await self.i.authenticator.authenticate_async(
                    bearer_token(metadata))
            except GatewayError as exc:
                ident.set_status(Status(StatusCode.ERROR, _clip(exc.message, 256)))
                raise
            ident.set_attribute(attr.PRINCIPAL_ID, principal.id)
            ident.set_attribute(attr.TENANT, principal.tenant)
        span.set_attribute(attr.PRINCIPAL_ID, principal.id)
        span.set_attribute(attr.TENANT, principal.tenant)
        structlog.contextvars.bind_contextvars(principal=principal.id, tenant=principal.tenant)
        self.principal_token = _principal.set(principal)
        if isinstance(request, _Undecodable):
            raise InvalidRequest(
                f"the request is not a valid {self.method.lstrip('/').split('/')[0]} message: "
                f"{_clip(str(request.error), 200)}", field="")
        return span

    def fail(self, exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
        """Map an exception to the status, message and trailers the client gets."""
        if isinstance(exc, GatewayError):
            gw = exc
        else:
            log.exception("internal error", exc_info=exc)
            gw = GatewayError("internal error")
        self.error = exc
        self.code = grpc_status_for(gw)
        return (self.code, _clip(gw.message),
                _error_metadata(gw, getattr(self, "trace_id", "")))

    def end(self, context: grpc.aio.ServicerContext[Any, Any], cancelled: bool = False) -> None:
        span = trace.get_current_span()
        error = self.error
        if cancelled:
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            self.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            error = TimeoutError("client deadline exceeded") if expired else \
                asyncio.CancelledError("cancelled by the client")
        outcome = record_outcome(span, error)
        span.set_attribute(attr.RPC_GRPC_STATUS_CODE, self.code.value[0])
        duration_ms = round((time.perf_counter() - self.started) * 1000, 3)
        log.info("rpc", status=self.code.name, outcome=outcome, duration_ms=duration_ms)
        if hasattr(self, "principal_token"):
            _principal.reset(self.principal_token)
        structlog.contextvars.clear_contextvars()
        if hasattr(self, "span_cm"):
            self.span_cm.__exit__(None, None, None)


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every non-public handler with :class:`_Call` bookkeeping."""

    def __init__(self, authenticator: Authenticator, tracer: trace.Tracer) -> None:
        self.authenticator = authenticator
        self.tracer = tracer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails],
                               Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(PUBLIC_PREFIXES):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary),
                request_deserializer=_safe_deserializer(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream),
                request_deserializer=_safe_deserializer(handler.request_deserializer),
                response_serializer=handler.response_serializer)
        return handler

    def _wrap_unary(self, method: str, behavior: Any) -> Any:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            call = _Call(self, method)
            failure = None
            cancelled = False
            try:
                await call.begin(request, context)
                response = await behavior(request, context)
                context.set_trailing_metadata(((TRACE_METADATA_KEY, call.trace_id),))
                return response
            except asyncio.CancelledError:
                cancelled = True
                raise
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                failure = call.fail(exc)
            finally:
                call.end(context, cancelled=cancelled)
            assert failure is not None
            await context.abort(failure[0], failure[1], trailing_metadata=failure[2])

        return wrapper

    def _wrap_stream(self, method: str, behavior: Any) -> Any:
        async def wrapper(request: Any,
                          context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            call = _Call(self, method)
            failure = None
            cancelled = False
            try:
                await call.begin(request, context)
                async for item in behavior(request, context):
                    yield item
                context.set_trailing_metadata(((TRACE_METADATA_KEY, call.trace_id),))
            except (asyncio.CancelledError, GeneratorExit):
                cancelled = True
                raise
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    raise
                failure = call.fail(exc)
            finally:
                call.end(context, cancelled=cancelled)
            if failure is not None:
                await context.abort(failure[0], failure[1], trailing_metadata=failure[2])

        return wrapper
