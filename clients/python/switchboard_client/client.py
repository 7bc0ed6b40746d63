"""Python client for agents: sync and asyncio, over the gateway's gRPC API.

Typical agent loop::

    with SwitchboardClient("127.0.0.1:50051", token="dev-agent") as sb:
        tools = sb.manifest("openai").formatted          # hand these to the model
        ...
        reply = sb.dispatch(call.name, call.arguments)   # JSON for the model, never raises
                                                         # for a gateway-reported error

``dispatch`` maps the model-facing tool names (meta-tools and ``ledger__create_transfer``-style
dedicated tools) back onto the RPCs. The typed methods (``call_tool``, ``run_code``, ``search``,
``describe``, ``explain``, ``manifest``) raise :class:`SwitchboardError` on gRPC errors, parsed
from the ``switchboard-error`` trailing metadata the server sends.

Tool calls are idempotent on the server by ``request_id``; the client generates one (uuid4) when
absent and reuses it on every retry, so a retry after a lost reply cannot apply a call twice.
Code runs are not retried (they are not idempotent).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

import grpc
import grpc.aio

from switchboard_client._proto.switchboard.v1 import gateway_pb2 as pb
from switchboard_client.client_types import (
    DEFAULT_TIMEOUT_S,
    Decision,
    ExecutionResult,
    Manifest,
    OperationInfo,
    OperationMatch,
    StreamEvent,
    SwitchboardError,
    code_request,
    decision_from_pb,
    dispatch_plan,
    event_from_pb,
    manifest_from_pb,
    match_from_pb,
    operation_from_pb,
    result_from_pb,
    reverse_map,
    tool_request,
)

__all__ = [
    "AsyncSwitchboardClient",
    "Decision",
    "ExecutionResult",
    "Manifest",
    "OperationInfo",
    "OperationMatch",
    "StreamEvent",
    "SwitchboardClient",
    "SwitchboardError",
]

_SERVICE = "/switchboard.v1.Gateway/"
# Retryable: the call did not (or may not have) reached the gateway, or the same request_id is
# still running there. Safe for tool calls only because the server deduplicates by request_id.
_RETRY_STATUS = frozenset({grpc.StatusCode.UNAVAILABLE})
_RETRY_CODES = frozenset({"duplicate_in_flight", "backend_unavailable"})
_T = TypeVar("_T")


def _channel_credentials(
    root: bytes | None, key: bytes | None, chain: bytes | None
) -> grpc.ChannelCredentials:
    """TLS (``root`` verifies the server; ``None`` uses the system roots), plus a client
    certificate for mTLS when ``key`` and ``chain`` are given."""
    return grpc.ssl_channel_credentials(
        root_certificates=root, private_key=key, certificate_chain=chain
    )


def _should_retry(err: SwitchboardError) -> bool:
    return err.status in _RETRY_STATUS or err.code in _RETRY_CODES


class _Base:
    def __init__(
        self,
        target: str,
        token: str,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        client_key: bytes | None = None,
        client_cert_chain: bytes | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retries: int = 2,
        backoff: float = 0.1,
        options: list[tuple[str, Any]] | None = None,
    ) -> None:
        if not token:
            raise ValueError("a bearer token is required")
        self.target = target
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self._metadata = (("authorization", f"Bearer {token}"),)
        self._tls = tls
        self._root = root_certificates
        if (client_key is None) != (client_cert_chain is None):
            raise ValueError("mTLS needs both client_key and client_cert_chain")
        if client_key is not None and not tls:
            raise ValueError("a client certificate needs tls=True")
        self._key = client_key
        self._chain = client_cert_chain
        self._options = list(options or [])
        # Dedicated tool name -> operation, learned from the last manifest() call.
        self._tool_map: dict[str, str] = {}

    def _remember(self, manifest: Manifest) -> Manifest:
        self._tool_map.update(reverse_map(manifest.tools))
        return manifest

    def _backoff(self, attempt: int) -> float:
        return float(self.backoff * (2**attempt))


class SwitchboardClient(_Base):
    """Blocking client; one channel, safe to share between threads."""

    def __init__(self, target: str, token: str, **kw: Any) -> None:
        super().__init__(target, token, **kw)
        if self._tls:
            creds = _channel_credentials(self._root, self._key, self._chain)
            self._channel = grpc.secure_channel(target, creds, options=self._options)
        else:
            self._channel = grpc.insecure_channel(target, options=self._options)

    def _unary(self, method: str, request: Any, response_type: Any, timeout: float | None) -> Any:
        call = self._channel.unary_unary(
            _SERVICE + method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        try:
            return call(request, metadata=self._metadata, timeout=timeout or self.timeout)
        except grpc.RpcError as err:
            raise SwitchboardError.from_rpc(err) from None

    def _retrying(self, fn: Callable[[], _T]) -> _T:
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except SwitchboardError as err:
                if attempt >= self.retries or not _should_retry(err):
                    raise
                time.sleep(self._backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def call_tool(
        self,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> ExecutionResult:
        """Call one operation by name (``ledger.create_transfer``); retried with the same
        request_id on transient failures."""
        req = tool_request(name, arguments, request_id or str(uuid.uuid4()), labels)
        resp = self._retrying(lambda: self._unary("Execute", req, pb.ExecuteResponse, timeout))
        return result_from_pb(resp)

    def run_code(
        self,
        source: str,
        inputs: Mapping[str, Any] | None = None,
        timeout_ms: int = 0,
        session_id: str | None = None,
        *,
        request_id: str | None = None,
        output_schema: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> ExecutionResult:
        """Run Python in the gateway's sandbox; errors in the code come back as data."""
        req = code_request(
            source,
            inputs,
            timeout_ms,
            session_id,
            request_id or str(uuid.uuid4()),
            output_schema,
            labels,
        )
        return result_from_pb(self._unary("Execute", req, pb.ExecuteResponse, timeout))

    def stream_code(
        self,
        source: str,
        inputs: Mapping[str, Any] | None = None,
        timeout_ms: int = 0,
        session_id: str | None = None,
        *,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> Iterator[StreamEvent]:
        """Like :meth:`run_code`, yielding stdout/stderr lines and host calls as they happen;
        the last event has ``kind == "result"``."""
        req = code_request(
            source, inputs, timeout_ms, session_id, request_id or str(uuid.uuid4()), None, labels
        )
        call = self._channel.unary_stream(
            _SERVICE + "ExecuteStream",
            request_serializer=pb.ExecuteRequest.SerializeToString,
            response_deserializer=pb.ExecuteEvent.FromString,
        )
        try:
            for event in call(req, metadata=self._metadata, timeout=timeout or self.timeout):
                yield event_from_pb(event)
        except grpc.RpcError as err:
            raise SwitchboardError.from_rpc(err) from None

    def search(self, query: str, limit: int = 10) -> list[OperationMatch]:
        req = pb.SearchOperationsRequest(query=query, limit=limit)
        resp = self._retrying(
            lambda: self._unary("SearchOperations", req, pb.SearchOperationsResponse, None)
        )
        return [match_from_pb(m) for m in resp.operations]

    def describe(self, name: str, path: str | None = None,
                 page: int | None = None) -> OperationInfo:
        """The operation within 2,000 tokens (``view``); ``path`` reads an ``$elided`` part,
        ``page`` a page of a long one."""
        req = pb.DescribeOperationRequest(name=name, path=path or "", page=page or 0)
        resp = self._retrying(
            lambda: self._unary("DescribeOperation", req, pb.OperationDescription, None)
        )
        return operation_from_pb(resp)

    def explain(
        self,
        tool: str | None = None,
        arguments: Mapping[str, Any] | None = None,
        *,
        source: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Decision:
        """The policy decision for a tool call (``tool``) or a code run (``source``)."""
        if (tool is None) == (source is None):
            raise ValueError("give exactly one of tool or source")
        rid = str(uuid.uuid4())
        if tool is not None:
            req = tool_request(tool, arguments, rid, labels)
        else:
            req = code_request(source or "", None, 0, None, rid, None, labels)
        return decision_from_pb(
            self._retrying(lambda: self._unary("Explain", req, pb.Decision, None))
        )

    def manifest(self, format: str = "") -> Manifest:
        """Tools for the model: meta-tools plus the caller's dedicated tools; ``format`` is
        "openai", "anthropic" or "" (native)."""
        req = pb.GetManifestRequest(format=format)
        return self._remember(
            manifest_from_pb(
                self._retrying(lambda: self._unary("GetManifest", req, pb.Manifest, None))
            )
        )

    def dispatch(self, name: str, arguments: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run a model's tool call by its manifest tool name and return a JSON-able reply for
        the model; gateway errors (denials, schema errors) come back as ``{"error": ...}``."""
        plan = dispatch_plan(name, dict(arguments or {}), self._tool_map)
        try:
            if plan.kind == "search":
                return {"operations": [m.to_dict() for m in self.search(*plan.args)]}
            if plan.kind == "describe":
                info = self.describe(*plan.args)
                return info.view if isinstance(info.view, dict) else info.to_dict()
            if plan.kind == "code":
                return self.run_code(**plan.kwargs).to_model()
            return self.call_tool(*plan.args).to_model()
        except SwitchboardError as err:
            return {"ok": False, "error": err.to_dict()}

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SwitchboardClient:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncSwitchboardClient(_Base):
    """asyncio client over ``grpc.aio``; create and use it inside one event loop."""

    def __init__(self, target: str, token: str, **kw: Any) -> None:
        super().__init__(target, token, **kw)
        if self._tls:
            creds = _channel_credentials(self._root, self._key, self._chain)
            self._channel = grpc.aio.secure_channel(target, creds, options=self._options)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=self._options)

    async def _unary(
        self, method: str, request: Any, response_type: Any, timeout: float | None
    ) -> Any:
        call = self._channel.unary_unary(
            _SERVICE + method,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response_type.FromString,
        )
        try:
            return await call(request, metadata=self._metadata, timeout=timeout or self.timeout)
        except grpc.aio.AioRpcError as err:
            raise SwitchboardError.from_rpc(err) from None

    async def _retrying(
        self, method: str, request: Any, response_type: Any, timeout: float | None = None
    ) -> Any:
        for attempt in range(self.retries + 1):
            try:
                return await self._unary(method, request, response_type, timeout)
            except SwitchboardError as err:
                if attempt >= self.retries or not _should_retry(err):
                    raise
                await asyncio.sleep(self._backoff(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def call_tool(
        self,
        name: str,
        arguments: Mapping[str, Any] | None = None,
        request_id: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> ExecutionResult:
        req = tool_request(name, arguments, request_id or str(uuid.uuid4()), labels)
        return result_from_pb(await self._retrying("Execute", req, pb.ExecuteResponse, timeout))

    async def run_code(
        self,
        source: str,
        inputs: Mapping[str, Any] | None = None,
        timeout_ms: int = 0,
        session_id: str | None = None,
        *,
        request_id: str | None = None,
        output_schema: Mapping[str, Any] | None = None,
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> ExecutionResult:
        req = code_request(
            source,
            inputs,
            timeout_ms,
            session_id,
            request_id or str(uuid.uuid4()),
            output_schema,
            labels,
        )
        return result_from_pb(await self._unary("Execute", req, pb.ExecuteResponse, timeout))

    async def stream_code(
        self,
        source: str,
        inputs: Mapping[str, Any] | None = None,
        timeout_ms: int = 0,
        session_id: str | None = None,
        *,
        request_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[StreamEvent]:
        req = code_request(
            source, inputs, timeout_ms, session_id, request_id or str(uuid.uuid4()), None, labels
        )
        call = self._channel.unary_stream(
            _SERVICE + "ExecuteStream",
            request_serializer=pb.ExecuteRequest.SerializeToString,
            response_deserializer=pb.ExecuteEvent.FromString,
        )
        stream = call(req, metadata=self._metadata, timeout=timeout or self.timeout)
        try:
            async for event in stream:
                yield event_from_pb(event)
        except grpc.aio.AioRpcError as err:
            raise SwitchboardError.from_rpc(err) from None
        finally:
            stream.cancel()

    async def search(self, query: str, limit: int = 10) -> list[OperationMatch]:
        req = pb.SearchOperationsRequest(query=query, limit=limit)
        resp = await self._retrying("SearchOperations", req, pb.SearchOperationsResponse)
        return [match_from_pb(m) for m in resp.operations]

    async def describe(self, name: str, path: str | None = None,
                       page: int | None = None) -> OperationInfo:
        req = pb.DescribeOperationRequest(name=name, path=path or "", page=page or 0)
        return operation_from_pb(
            await self._retrying("DescribeOperation", req, pb.OperationDescription)
        )

    async def explain(
        self,
        tool: str | None = None,
        arguments: Mapping[str, Any] | None = None,
        *,
        source: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Decision:
        if (tool is None) == (source is None):
            raise ValueError("give exactly one of tool or source")
        rid = str(uuid.uuid4())
        if tool is not None:
            req = tool_request(tool, arguments, rid, labels)
        else:
            req = code_request(source or "", None, 0, None, rid, None, labels)
        return decision_from_pb(await self._retrying("Explain", req, pb.Decision))

    async def manifest(self, format: str = "") -> Manifest:
        req = pb.GetManifestRequest(format=format)
        return self._remember(
            manifest_from_pb(await self._retrying("GetManifest", req, pb.Manifest))
        )

    async def dispatch(
        self, name: str, arguments: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Async twin of :meth:`SwitchboardClient.dispatch`."""
        plan = dispatch_plan(name, dict(arguments or {}), self._tool_map)
        try:
            if plan.kind == "search":
                return {"operations": [m.to_dict() for m in await self.search(*plan.args)]}
            if plan.kind == "describe":
                info = await self.describe(*plan.args)
                return info.view if isinstance(info.view, dict) else info.to_dict()
            if plan.kind == "code":
                return (await self.run_code(**plan.kwargs)).to_model()
            return (await self.call_tool(*plan.args)).to_model()
        except SwitchboardError as err:
            return {"ok": False, "error": err.to_dict()}

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncSwitchboardClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
