"""The gRPC door's per-call work: every non-public method runs in the shared
:func:`gateway.frontdoor.call_scope` (span, identity, log context, outcome, audit — the same
as MCP's); this module adds only what is gRPC's own: reading the metadata (bearer token,
W3C trace context, ``x-request-id``), undecodable messages, deadline vs. cancel, and the
mapping of gateway errors to a status (:mod:`gateway.grpc_status`) with the stable error code
in the trailing metadata ``switchboard-error``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc
from google.protobuf import unknown_fields
from opentelemetry import trace

from gateway.audit import attributes as attr
from gateway.audit import extract_trace_context
from gateway.errors import GatewayError, InvalidRequest
from gateway.frontdoor import (
    CallScope,
    PrincipalCalls,
    call_scope,
    current_principal,
    recorded_request_id,
)
from gateway.grpc_status import grpc_status_for
from gateway.identity import Authenticator, bearer_token

__all__ = ["ERROR_METADATA_KEY", "TRACE_METADATA_KEY", "CallInterceptor", "current_principal"]

ERROR_METADATA_KEY = "switchboard-error"
TRACE_METADATA_KEY = "switchboard-trace-id"
# Methods that need no identity (probes, reflection).
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")

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

    def __init__(self, error: Exception, field: str = "") -> None:
        self.error = error
        self.field = field


# JSON carried as protobuf: its contents are data, not the envelope.
_JSON_TYPES = frozenset({"google.protobuf.Struct", "google.protobuf.Value",
                         "google.protobuf.ListValue"})


def _unknown_field(message: Any, path: str = "") -> str | None:
    """The path of the first envelope message holding fields this server's schema does not
    know (``tool_call`` for one inside ``ExecuteRequest.tool_call``; ``""`` for the request
    itself), or None. A field a newer client relies on (say, a dry-run flag) must not be
    dropped silently and the action run as if it had not been sent."""
    if message.DESCRIPTOR.full_name in _JSON_TYPES:
        return None
    if len(unknown_fields.UnknownFieldSet(message)):
        return path
    for fd, value in message.ListFields():
        if fd.message_type is None or fd.message_type.GetOptions().map_entry:
            continue
        name = f"{path}.{fd.name}" if path else fd.name
        items = value if fd.is_repeated else (value,)
        for item in items:
            found = _unknown_field(item, name)
            if found is not None:
                return found
    return None


def _safe_deserializer(deserialize: Any) -> Any:
    if deserialize is None:
        return None

    def run(data: bytes) -> Any:
        try:
            request = deserialize(data)
        except Exception as exc:  # DecodeError, invalid UTF-8, nesting too deep
            return _Undecodable(exc)
        try:
            where = _unknown_field(request)
        except Exception as exc:  # a message this check cannot walk: refuse it too
            return _Undecodable(exc)
        if where is not None:
            return _Undecodable(ValueError(
                f"{where or 'the request'} has fields this gateway does not know (a newer "
                "client's?); nothing was executed"), field=where)
        return request

    return run


class _Call:
    """One RPC in the shared :func:`~gateway.frontdoor.call_scope`; what is gRPC's own here is
    reading the metadata, the ``rpc.*`` attributes, telling a deadline from a cancel, and
    the status + trailers of a failure (:mod:`gateway.grpc_status`)."""

    def __init__(self, interceptor: CallInterceptor, method: str) -> None:
        self.i = interceptor
        self.method = method
        self.code = grpc.StatusCode.OK
        self.trace_id = ""

    def scope(self, request: Any, context: grpc.aio.ServicerContext[Any, Any],
              ) -> AbstractAsyncContextManager[CallScope]:
        metadata = tuple(context.invocation_metadata() or ())
        service, _, name = self.method.lstrip("/").partition("/")
        raw_id = getattr(request, "request_id", "") or next(
            (str(v) for k, v in metadata if k == "x-request-id"), "")

        def on_end(span: trace.Span, error: BaseException | None) -> None:
            if error is not None and self.code == grpc.StatusCode.OK:
                self.code = grpc_status_for(error)
            span.set_attribute(attr.RPC_GRPC_STATUS_CODE, self.code.value[0])

        return call_scope(
            self.i.tracer, self.i.authenticator, transport="grpc",
            span_name=self.method.lstrip("/"), token=bearer_token(metadata),
            raw_request_id=recorded_request_id(raw_id),
            attributes={attr.RPC_SYSTEM: "grpc", attr.RPC_SERVICE: service,
                        attr.RPC_METHOD: name},
            parent=extract_trace_context(metadata), log_fields={"rpc_method": name},
            on_open=self.opened, on_end=on_end, in_flight=self.i.in_flight)

    def opened(self, scope: CallScope) -> None:
        self.trace_id = scope.trace_id

    def begin(self, scope: CallScope, request: Any) -> None:
        if isinstance(request, _Undecodable):
            raise InvalidRequest(
                f"the request is not a valid {self.method.lstrip('/').split('/')[0]} message: "
                f"{_clip(str(request.error), 200)}", field=request.field)

    def fail(self, exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, str], ...]]:
        """Map an exception to the status, message and trailers the client gets."""
        gw = exc if isinstance(exc, GatewayError) else GatewayError("internal error")
        self.code = grpc_status_for(gw)
        return (self.code, _clip(gw.message), _error_metadata(gw, self.trace_id))

    def cancelled(self, scope: CallScope,
                  context: grpc.aio.ServicerContext[Any, Any]) -> None:
        remaining = context.time_remaining()
        expired = remaining is not None and remaining <= 0
        self.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
        scope.error = TimeoutError("client deadline exceeded") if expired else \
            asyncio.CancelledError("cancelled by the client")


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every non-public handler with :class:`_Call` bookkeeping."""

    def __init__(self, authenticator: Authenticator, tracer: trace.Tracer,
                 in_flight: PrincipalCalls | None = None) -> None:
        self.authenticator = authenticator
        self.tracer = tracer
        self.in_flight = in_flight  # the per-principal cap, shared with the MCP door
        # method -> (the servicer's handler, our wrapped one): the generic handlers return the
        # same handler object for a method on every call, so it is wrapped once, not per RPC.
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails],
                               Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None:
            return handler
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            wrapped: grpc.RpcMethodHandler[Any, Any] = cached[1]
            return wrapped
        wrapped = self._wrap(method, handler)
        if len(self._wrapped) < 1024:  # the methods of the registered services, a few dozen
            self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any],
              ) -> grpc.RpcMethodHandler[Any, Any]:
        if method.startswith(PUBLIC_PREFIXES):
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
            try:
                async with call.scope(request, context) as scope:
                    try:
                        call.begin(scope, request)
                        response = await behavior(request, context)
                        context.set_trailing_metadata(((TRACE_METADATA_KEY, call.trace_id),))
                        return response
                    except asyncio.CancelledError:
                        call.cancelled(scope, context)
                        raise
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                failure = call.fail(exc)
            await context.abort(failure[0], failure[1], trailing_metadata=failure[2])

        return wrapper

    def _wrap_stream(self, method: str, behavior: Any) -> Any:
        async def wrapper(request: Any,
                          context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            call = _Call(self, method)
            failure = None
            try:
                async with call.scope(request, context) as scope:
                    try:
                        call.begin(scope, request)
                        async for item in behavior(request, context):
                            yield item
                        context.set_trailing_metadata(((TRACE_METADATA_KEY, call.trace_id),))
                    except (asyncio.CancelledError, GeneratorExit):
                        call.cancelled(scope, context)
                        raise
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                failure = call.fail(exc)
            if failure is not None:
                await context.abort(failure[0], failure[1], trailing_metadata=failure[2])

        return wrapper
