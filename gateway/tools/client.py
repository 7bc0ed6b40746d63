"""HTTP calls to backends: request building, timeouts, safe retries, a circuit breaker.

Retry rule (the one that keeps effects exactly-once): an attempt that certainly never reached
the backend (connect refused/timed out, pool exhausted) may always be retried. An attempt that
may have reached it (read timeout, dropped connection, 502/503/504, 429) is retried only when
repeating it cannot duplicate an effect: the method is safe (GET/HEAD/OPTIONS), or an
``Idempotency-Key`` is forwarded to a backend declared to honour it. Forwarding a key to a
backend that merely records it (the demo ledger) is not enough.

Transport: a backend reached over the network (``base_url``) is called with **aiohttp** (one
``ClientSession`` per backend); in-process ASGI apps (``app``) and injected test transports go
through httpx. aiohttp was chosen by measurement: ~0.25 ms of client CPU per request against
1.0-2.8 ms for httpx (0.6-2.5 ms for httpcore alone) on the same fast backend
(``bench/http_clients.py``, docs/benchmarks.md "Gateway performance at the limit").
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib
import json
import random
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import httpx
import structlog
import yarl
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from gateway.audit import attributes as A
from gateway.audit import inject_trace_context, record_outcome, safe_url
from gateway.audit.tracing import contextual_tracer
from gateway.errors import (
    BackendError,
    BackendUnavailable,
    ConfigError,
    GatewayError,
    InvalidRequest,
)
from gateway.models import BackendSettings, Operation
from gateway.tools.breaker import BreakerPolicy, CircuitBreaker

if TYPE_CHECKING:  # imported on the first network call (or right after SERVING)
    import aiohttp

__all__ = ["BackendClient", "RetryPolicy", "build_request_parts", "load_app", "may_have_applied"]

log = structlog.get_logger(__name__)
_tracer = contextual_tracer("switchboard.tools")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
RETRY_STATUS = frozenset({429, 502, 503, 504})
# Statuses that say "I did not act on this request": retrying cannot duplicate an effect.
NOT_APPLIED_STATUS = frozenset({408, 425, 429, 503})
_BODY_LIMIT = 2048


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; ``Retry-After`` honoured up to a cap."""

    base_delay_s: float = 0.1
    max_delay_s: float = 2.0
    max_retry_after_s: float = 10.0

    def backoff(self, retry_index: int) -> float:
        return random.uniform(0, min(self.max_delay_s, self.base_delay_s * 2**retry_index))


def may_have_applied(error: BaseException) -> bool:
    """Could the failed call have taken effect at the backend? (Conservative: unknown → True.)"""
    details = getattr(error, "details", None)
    if isinstance(details, Mapping) and "may_have_applied" in details:
        return bool(details["may_have_applied"])
    return True


@dataclass(frozen=True)
class _Reply:
    """A backend's answer, whichever library carried it."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes
    reason_phrase: str

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


def _retry_after(response: _Reply) -> float | None:
    value = response.headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


# A path parameter that is, once quoted, a dot-segment or nothing: HTTP clients and servers
# collapse "/accounts/../x" to "/x" (even above the base path), so it would address another
# resource than the operation's; "" makes "//" that some servers merge too.
_NOT_A_SEGMENT = frozenset({"", ".", ".."})


def _path_segment(name: str, value: Any) -> str:
    """``value`` percent-encoded as exactly one path segment (``/`` included), or
    InvalidRequest naming the argument when no encoding keeps it one."""
    segment = quote(_scalar(value), safe="")
    if segment in _NOT_A_SEGMENT:
        raise InvalidRequest(
            f"arguments.{name}: a path parameter cannot be empty, '.' or '..'",
            field=f"arguments.{name}")
    return segment


def build_request_parts(
    op: Operation, arguments: Mapping[str, Any]
) -> tuple[str, list[tuple[str, str]], dict[str, str], Any]:
    """(path, query, headers, json_body) for ``op`` from ``arguments`` via ``op.parameters``."""
    path = op.path
    query: list[tuple[str, str]] = []
    headers: dict[str, str] = {}
    body: Any = None
    for param in op.parameters:
        if param.name not in arguments:
            continue
        value = arguments[param.name]
        wire = param.wire_name or param.name
        if param.location == "path":
            path = path.replace("{" + wire + "}", _path_segment(param.name, value))
        elif param.location == "query":
            if value is None:
                continue
            values = value if isinstance(value, list) else [value]
            query.extend((wire, _scalar(v)) for v in values)
        elif param.location == "header":
            if value is not None:
                headers[wire] = _scalar(value)
        elif op.body_as_argument:
            body = value
        else:
            if body is None:
                body = {}
            body[wire] = value
    return path, query, headers, body


def _error_message(response: _Reply) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason_phrase
    if isinstance(data, Mapping):
        for key in ("detail", "message", "error", "title"):
            value = data.get(key)
            if isinstance(value, Mapping) and "message" in value:
                code = value.get("code")
                return f"{code}: {value['message']}" if code else str(value["message"])
            if value:
                return value if isinstance(value, str) else json.dumps(value)[:300]
    return json.dumps(data)[:200]


def load_app(entry_point: str) -> Any:
    module_name, _, attr = entry_point.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in (attr or "app").split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"backend app {entry_point!r} cannot be imported: {exc}",
                          field="backends.app") from exc
    return target


class _AttemptFailed(Exception):
    def __init__(self, reason: str, applied: bool, retry_after: float | None = None,
                 response: _Reply | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.applied = applied
        self.retry_after = retry_after
        self.response = response


def _json_body(body: Any) -> bytes:
    # As httpx encodes ``json=``: compact, UTF-8, no NaN.
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"),
                      allow_nan=False).encode()


class BackendClient:
    """One pooled HTTP client (an aiohttp ``ClientSession`` for a network backend, an
    ``httpx.AsyncClient`` for an in-process app or an injected transport) and one circuit
    breaker per backend."""

    def __init__(
        self,
        backends: Mapping[str, BackendSettings],
        *,
        transport_for: Callable[[BackendSettings], httpx.AsyncBaseTransport | None] | None = None,
        retry: RetryPolicy | None = None,
        breaker: BreakerPolicy | None = None,
        idempotency_aware: Collection[str] = (),
    ) -> None:
        self.settings = dict(backends)
        self.retry = retry or RetryPolicy()
        self._aware = frozenset(idempotency_aware) | {
            name for name, s in backends.items() if getattr(s, "idempotency_keys", False)
        }
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._sessions: dict[str, aiohttp.ClientSession] = {}  # created on first use (a loop)
        self._bases: dict[str, str] = {}
        self._breakers: dict[str, CircuitBreaker] = {}
        self._hosts: dict[str, str] = {}
        for name, settings in self.settings.items():
            transport = transport_for(settings) if transport_for else None
            base_url = settings.base_url
            self._breakers[name] = CircuitBreaker(breaker or BreakerPolicy())
            if transport is None and base_url:
                self._bases[name] = base_url.rstrip("/")  # aiohttp: see _session()
                continue
            if transport is None and not base_url and settings.app:
                transport = httpx.ASGITransport(app=load_app(settings.app))
            if not base_url:
                if transport is None:
                    raise ConfigError(f"backend {name!r} has neither base_url nor app",
                                      field=f"backends.{name}.base_url")
                base_url = f"http://{name}.internal"
            self._clients[name] = httpx.AsyncClient(
                base_url=base_url, transport=transport, headers=settings.headers,
                follow_redirects=False, trust_env=False,
            )

    def _session(self, backend: str) -> aiohttp.ClientSession:
        session = self._sessions.get(backend)
        if session is None or session.closed:
            import aiohttp

            # No proxies from the environment, no cookies kept between calls (as httpx here:
            # trust_env=False, a fresh jar never read), TCP_NODELAY (aiohttp's default), at
            # most 100 connections per backend (httpx's default pool).
            session = self._sessions[backend] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=100, limit_per_host=0,
                                               enable_cleanup_closed=False),
                cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                auto_decompress=True, raise_for_status=False)
        return session

    def _host(self, backend: str, base_url: str) -> str:
        host = self._hosts.get(backend)
        if host is None:
            host = self._hosts[backend] = httpx.URL(base_url).host  # parsed once, not per call
        return host

    def honours_idempotency_key(self, backend: str) -> bool:
        """Does this backend deduplicate by ``Idempotency-Key`` (declared in the config)?"""
        return backend in self._aware

    def breaker(self, backend: str) -> CircuitBreaker:
        return self._breakers[backend]

    async def call(
        self,
        op: Operation,
        arguments: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
        timeout_ms: int | None = None,
    ) -> Any:
        """Call ``op`` and return its parsed JSON result (``None`` for an empty body).

        One CLIENT span per call (retries included) carries the HTTP attributes, and the
        trace context travels to the backend in ``traceparent``."""
        with _tracer.start_as_current_span(
                A.backend_call_span_name(op.name), kind=SpanKind.CLIENT,
                record_exception=False, set_status_on_exception=False) as span:
            span.set_attribute(A.OPERATION, op.name)
            span.set_attribute(A.BACKEND, op.backend)
            span.set_attribute(A.HTTP_REQUEST_METHOD, op.method.upper())
            span.set_attribute("url.template", op.path)
            try:
                result = await self._call(op, arguments, idempotency_key=idempotency_key,
                                          timeout_ms=timeout_ms)
            except BaseException as exc:
                record_outcome(span, exc)
                if isinstance(exc, GatewayError) and "status" in exc.details:
                    span.set_attribute(A.HTTP_RESPONSE_STATUS_CODE, int(exc.details["status"]))
                raise
            record_outcome(span)
            return result

    async def _call(
        self,
        op: Operation,
        arguments: Mapping[str, Any],
        *,
        idempotency_key: str | None,
        timeout_ms: int | None,
    ) -> Any:
        settings = self.settings.get(op.backend)
        if settings is None:
            raise BackendUnavailable(f"unknown backend {op.backend!r} for {op.name}",
                                     details={"backend": op.backend, "attempts": 0,
                                              "reason": "unknown_backend",
                                              "may_have_applied": False})
        client, breaker = self._clients.get(op.backend), self._breakers[op.backend]
        timeout_s = (timeout_ms or settings.timeout_ms) / 1000.0
        method = op.method.upper()
        path, query, headers, body = build_request_parts(op, arguments)
        headers.update(settings.headers)  # configured credentials win over agent arguments
        if idempotency_key:
            headers["Idempotency-Key"] = idempotency_key
        inject_trace_context(headers)
        span = trace.get_current_span()
        if settings.base_url:
            span.set_attribute(A.URL_FULL, safe_url(settings.base_url.rstrip("/") + path))
            span.set_attribute(A.SERVER_ADDRESS, self._host(op.backend, settings.base_url))
        repeat_safe = method in SAFE_METHODS or (
            idempotency_key is not None and self.honours_idempotency_key(op.backend))
        max_attempts = 1 + max(0, settings.retries)
        applied = False
        attempt = 0
        last: _AttemptFailed | None = None
        while True:
            attempt += 1
            if not breaker.allow():
                if last is not None:  # the circuit opened during our retries: report why
                    err = self._final_error(op, last, attempt - 1, applied)
                    err.details["circuit"] = "open"
                    raise err
                raise BackendUnavailable(
                    f"{op.backend} is unavailable (circuit open after repeated failures)",
                    details={"backend": op.backend, "attempts": attempt - 1,
                             "reason": "circuit_open", "may_have_applied": applied,
                             "retry_after_s": round(breaker.retry_after_s(), 3)})
            try:
                return await self._attempt(client, breaker, op, method, path, query, headers,
                                           body, timeout_s, attempt)
            except _AttemptFailed as failure:
                last = failure
                applied = applied or failure.applied
                can_repeat = not failure.applied or repeat_safe
                too_long = (failure.retry_after is not None
                            and failure.retry_after > self.retry.max_retry_after_s)
                if attempt >= max_attempts or not can_repeat or too_long:
                    raise self._final_error(op, failure, attempt, applied) from None
                delay = (failure.retry_after if failure.retry_after is not None
                         else self.retry.backoff(attempt - 1))
                log.info("backend_retry", backend=op.backend, operation=op.name,
                         attempt=attempt, reason=failure.reason, delay_s=round(delay, 3))
                await asyncio.sleep(delay)

    async def _send_aiohttp(self, backend: str, method: str, path: str,
                            query: list[tuple[str, str]], headers: dict[str, str], body: Any,
                            timeout_s: float) -> _Reply:
        import aiohttp

        url = self._bases[backend] + path
        if query:
            url += "?" + urlencode(query, quote_via=quote)
        data = None
        if body is not None:
            data = _json_body(body)
            headers = {"Content-Type": "application/json", **headers}
        try:
            # encoded=True: the path was quoted by build_request_parts; sent as built.
            async with self._session(backend).request(
                    method, yarl.URL(url, encoded=True), headers=headers, data=data,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(total=timeout_s, sock_connect=timeout_s),
            ) as resp:
                content = await resp.read()
                return _Reply(resp.status, resp.headers, content, resp.reason or "")
        except aiohttp.ConnectionTimeoutError as exc:  # before a byte was sent
            raise httpx.ConnectTimeout(str(exc)) from exc
        except aiohttp.ClientConnectorError as exc:  # refused, unreachable, DNS, TLS setup
            raise httpx.ConnectError(str(exc)) from exc
        except aiohttp.ServerTimeoutError as exc:  # sent, no (complete) answer in time
            raise httpx.ReadTimeout(str(exc)) from exc
        except aiohttp.ClientError as exc:  # dropped mid-exchange: it may have arrived
            raise httpx.ReadError(f"{type(exc).__name__}: {exc}") from exc

    async def _send_httpx(self, client: httpx.AsyncClient, method: str, path: str,
                          query: list[tuple[str, str]], headers: dict[str, str], body: Any,
                          timeout_s: float) -> _Reply:
        response = await client.request(
            method, path, params=tuple(query), headers=headers,
            json=body if body is not None else None, timeout=httpx.Timeout(timeout_s))
        return _Reply(response.status_code, response.headers, response.content,
                      response.reason_phrase)

    async def _attempt(
        self, client: httpx.AsyncClient | None, breaker: CircuitBreaker, op: Operation,
        method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str],
        body: Any, timeout_s: float, attempt: int,
    ) -> Any:
        try:
            async with asyncio.timeout(timeout_s):
                if client is None:
                    response = await self._send_aiohttp(op.backend, method, path, query,
                                                        headers, body, timeout_s)
                else:
                    response = await self._send_httpx(client, method, path, query, headers,
                                                       body, timeout_s)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            breaker.record_failure()
            raise _AttemptFailed(f"connect_failed: {type(exc).__name__}", applied=False) from exc
        except (httpx.TimeoutException, TimeoutError) as exc:
            breaker.record_failure()
            raise _AttemptFailed("timeout", applied=True) from exc
        except httpx.TransportError as exc:
            breaker.record_failure()
            raise _AttemptFailed(f"transport_error: {type(exc).__name__}", applied=True) from exc
        except BaseException:
            breaker.release_probe()  # cancelled: no verdict on the backend's health
            raise
        status = response.status_code
        span = trace.get_current_span()
        span.set_attribute(A.HTTP_RESPONSE_STATUS_CODE, status)
        span.set_attribute("switchboard.backend.attempts", attempt)
        if status >= 500:
            breaker.record_failure()
        else:
            breaker.record_success()
        if status in RETRY_STATUS:
            raise _AttemptFailed(f"status_{status}", applied=status not in NOT_APPLIED_STATUS,
                                 retry_after=_retry_after(response), response=response)
        if status >= 400:
            raise self._status_error(op, response, attempts=attempt, applied=status >= 500
                                     and status not in NOT_APPLIED_STATUS)
        if status == 204 or not response.content.strip():
            return None
        try:
            return json.loads(response.content)
        except ValueError:
            raise BackendError(
                f"{op.backend} answered {status} to {op.name} with a body that is not JSON "
                f"(content-type {response.headers.get('content-type', 'none')!r})",
                details={"backend": op.backend, "status": status,
                         "body": response.text[:_BODY_LIMIT], "may_have_applied": True,
                         "reason": "invalid_body", "attempts": attempt}) from None

    def _status_error(self, op: Operation, response: _Reply, *, attempts: int,
                      applied: bool) -> BackendError:
        details: dict[str, Any] = {
            "backend": op.backend, "status": response.status_code,
            "body": response.text[:_BODY_LIMIT], "may_have_applied": applied,
            "attempts": attempts,
        }
        return BackendError(
            f"{op.backend} answered {response.status_code} {response.reason_phrase} to "
            f"{op.name}: {_error_message(response)}", details=details)

    def _final_error(self, op: Operation, failure: _AttemptFailed, attempts: int,
                     applied: bool) -> BackendError | BackendUnavailable:
        if failure.response is not None:
            err = self._status_error(op, failure.response, attempts=attempts, applied=applied)
            if failure.retry_after is not None:
                err.details["retry_after_s"] = round(failure.retry_after, 3)
            return err
        what = "timed out" if failure.reason == "timeout" else f"unreachable ({failure.reason})"
        return BackendUnavailable(
            f"{op.backend} {what} calling {op.name} after {attempts} attempt(s)",
            details={"backend": op.backend, "attempts": attempts,
                     "reason": failure.reason.split(":")[0], "may_have_applied": applied})

    async def aclose(self) -> None:
        await asyncio.gather(*(c.aclose() for c in self._clients.values()),
                             *(s.close() for s in self._sessions.values()))
