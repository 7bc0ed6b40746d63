"""BackendClient against a real HTTP backend on loopback: request building, retries only where
safe, Retry-After, timeouts, connection refused, garbage bodies, the circuit breaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from tools_support import Backend, Scripted, free_port_refusing, op, serve_backend
from waiting import wait_until

from gateway.errors import BackendError, BackendUnavailable
from gateway.models import BackendSettings, Parameter
from gateway.tools import BackendClient, BreakerPolicy, RetryPolicy

FAST = RetryPolicy(base_delay_s=0.01, max_delay_s=0.05, max_retry_after_s=2.0)


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    with serve_backend() as b:
        yield b


@pytest.fixture
async def client(backend: Backend) -> AsyncIterator[BackendClient]:
    backend.reset()
    c = BackendClient(
        {"svc": BackendSettings(name="svc", base_url=backend.url, timeout_ms=2000, retries=2,
                                headers={"Authorization": "Bearer s3cret"})},
        retry=FAST, breaker=BreakerPolicy(failure_threshold=3, cooldown_s=0.3))
    yield c
    await c.aclose()


async def test_request_built_from_parameters(client: BackendClient, backend: Backend) -> None:
    get = op("items", "GET", "/s/items/{item id}", params=(
        Parameter("item_id", "path", wire_name="item id"), Parameter("tag", "query"),
        Parameter("flag", "query"), Parameter("trace", "header", wire_name="X-Trace"),
        Parameter("authorization", "header", wire_name="Authorization")))
    out = await client.call(get, {"item_id": "a/b c", "tag": ["x", "y"], "flag": True,
                                  "trace": "t1", "authorization": "Bearer agent-forged"})
    seen = out["echo"]
    assert seen["path"] == "/s/items/a%2Fb%20c"
    assert seen["query"] == [["tag", "x"], ["tag", "y"], ["flag", "true"]]
    assert seen["headers"]["x-trace"] == "t1"
    assert seen["headers"]["authorization"] == "Bearer s3cret"  # config credentials win
    assert seen["json"] is None


async def test_json_body_flattened_and_as_argument(client: BackendClient) -> None:
    flat = op("flat", "POST", params=(Parameter("amount", "body"),
                                      Parameter("memo_text", "body", wire_name="memo")))
    out = await client.call(flat, {"amount": 5, "memo_text": "hi"}, idempotency_key="k1")
    assert out["echo"]["json"] == {"amount": 5, "memo": "hi"}
    assert out["echo"]["headers"]["idempotency-key"] == "k1"
    whole = op("whole", "PUT", params=(Parameter("body", "body"),), body_as_argument=True)
    out = await client.call(whole, {"body": [1, 2, 3]})
    assert out["echo"]["json"] == [1, 2, 3]


async def test_204_returns_none(client: BackendClient, backend: Backend) -> None:
    backend.script("gone", Scripted(status=204))
    assert await client.call(op("gone", "DELETE"), {}) is None


async def test_get_retried_on_503_then_succeeds(client: BackendClient, backend: Backend) -> None:
    backend.script("flaky", Scripted(503, {"detail": "busy"}), Scripted(502, {}),
                   Scripted(200, {"ok": 1}))
    assert await client.call(op("flaky"), {}) == {"ok": 1}
    assert backend.hits["flaky"] == 3


async def test_retries_exhausted_reports_status_and_attempts(client: BackendClient,
                                                             backend: Backend) -> None:
    backend.script("down5", *[Scripted(504, {"message": "upstream timeout"})] * 5)
    with pytest.raises(BackendError) as exc:
        await client.call(op("down5"), {})
    assert backend.hits["down5"] == 3  # 1 + retries=2
    d = exc.value.details
    assert d["status"] == 504 and d["attempts"] == 3 and d["backend"] == "svc"
    assert "upstream timeout" in exc.value.message and "upstream timeout" in d["body"]


async def test_post_without_key_not_retried(client: BackendClient, backend: Backend) -> None:
    backend.script("pay", Scripted(502, {"detail": "bad gateway"}), Scripted(200, {}))
    with pytest.raises(BackendError) as exc:
        await client.call(op("pay", "POST"), {})
    assert backend.hits["pay"] == 1
    assert exc.value.details["may_have_applied"] is True


async def test_post_with_key_retried_only_if_backend_honours_keys(backend: Backend) -> None:
    backend.reset()
    settings = {"svc": BackendSettings(name="svc", base_url=backend.url, retries=2)}
    plain = BackendClient(settings, retry=FAST)
    aware = BackendClient(settings, retry=FAST, idempotency_aware={"svc"})
    try:
        backend.script("pay", Scripted(504, {}), Scripted(200, {"ok": True}))
        with pytest.raises(BackendError):
            await plain.call(op("pay", "POST"), {}, idempotency_key="k")
        assert backend.hits["pay"] == 1
        backend.script("pay2", Scripted(504, {}), Scripted(200, {"ok": True}))
        assert await aware.call(op("pay2", "POST"), {}, idempotency_key="k") == {"ok": True}
        assert backend.hits["pay2"] == 2
        assert [r["headers"]["idempotency-key"] for r in backend.requests[-2:]] == ["k", "k"]
    finally:
        await plain.aclose()
        await aware.aclose()


async def test_4xx_not_retried(client: BackendClient, backend: Backend) -> None:
    backend.script("bad", Scripted(409, {"error": {"code": "insufficient_funds",
                                                    "message": "A1 has 3.00"}}))
    with pytest.raises(BackendError) as exc:
        await client.call(op("bad"), {})
    assert backend.hits["bad"] == 1
    assert exc.value.details["status"] == 409
    assert exc.value.message == (
        "svc answered 409 Conflict to svc.bad: insufficient_funds: A1 has 3.00")


async def test_retry_after_honoured(client: BackendClient, backend: Backend) -> None:
    backend.script("ra", Scripted(503, {}, headers={"Retry-After": "1"}), Scripted(200, {}))
    start = time.monotonic()
    await client.call(op("ra"), {})
    assert time.monotonic() - start >= 0.95
    assert backend.hits["ra"] == 2


async def test_retry_after_beyond_limit_gives_up(client: BackendClient, backend: Backend) -> None:
    backend.script("ra2", Scripted(503, {}, headers={"Retry-After": "120"}))
    start = time.monotonic()
    with pytest.raises(BackendError) as exc:
        await client.call(op("ra2"), {})
    assert backend.hits["ra2"] == 1  # gave up: no second attempt after the capped wait
    assert time.monotonic() - start < 60  # and never slept the 120 s it was told to
    assert exc.value.details["retry_after_s"] == pytest.approx(120, abs=1)


async def test_garbage_body_is_a_clear_error(client: BackendClient, backend: Backend) -> None:
    backend.script("html", Scripted(200, b"<html>oops</html>", content_type="text/html"))
    with pytest.raises(BackendError) as exc:
        await client.call(op("html"), {})
    assert "not JSON" in exc.value.message and "text/html" in exc.value.message
    assert exc.value.details["body"] == "<html>oops</html>"
    assert backend.hits["html"] == 1


async def test_slow_backend_times_out_and_get_is_retried(client: BackendClient,
                                                         backend: Backend) -> None:
    backend.script("slow", *[Scripted(200, {}, delay_s=1.0)] * 3)
    with pytest.raises(BackendUnavailable) as exc:
        await client.call(op("slow"), {}, timeout_ms=150)
    # Order, not speed: every attempt ended by its 150 ms timeout before the backend's 1 s
    # answer (one that waited would have got the 200).
    assert exc.value.details["reason"] == "timeout" and exc.value.details["attempts"] == 3
    assert backend.hits["slow"] == 3
    assert "timed out" in exc.value.message


async def test_slow_post_not_retried(client: BackendClient, backend: Backend) -> None:
    backend.script("slowpost", Scripted(200, {}, delay_s=1.0))
    with pytest.raises(BackendUnavailable) as exc:
        await client.call(op("slowpost", "POST"), {}, timeout_ms=150, idempotency_key="k")
    assert backend.hits["slowpost"] == 1
    assert exc.value.details["may_have_applied"] is True


async def test_connection_refused_retried_even_for_post() -> None:
    c = BackendClient({"svc": BackendSettings(name="svc", base_url=free_port_refusing(),
                                              retries=2)}, retry=FAST)
    try:
        with pytest.raises(BackendUnavailable) as exc:
            await c.call(op("x", "POST"), {})
        d = exc.value.details
        assert d["attempts"] == 3 and d["reason"] == "connect_failed"
        assert d["may_have_applied"] is False and d["backend"] == "svc"
    finally:
        await c.aclose()


async def test_circuit_breaker_opens_and_half_opens(client: BackendClient,
                                                    backend: Backend) -> None:
    backend.script("sick", *[Scripted(500, {"detail": "boom"})] * 3)
    for _ in range(3):  # 500 is not retried; three consecutive failures open the circuit
        with pytest.raises(BackendError):
            await client.call(op("sick"), {})
    assert client.breaker("svc").state == "open"
    with pytest.raises(BackendUnavailable) as exc:
        await client.call(op("sick"), {})
    assert exc.value.details["reason"] == "circuit_open"
    assert backend.hits["sick"] == 3  # fail fast: nothing sent while open
    await asyncio.sleep(0.35)
    assert client.breaker("svc").state == "half_open"
    backend.script("probe", Scripted(200, {"ok": True}, delay_s=3.0))
    probe = asyncio.create_task(client.call(op("probe"), {}, timeout_ms=60_000))
    await wait_until(lambda: backend.hits["probe"] == 1, what="the probe reaching the backend")
    assert not probe.done()  # the probe is in flight (the backend holds it for 3 s)
    with pytest.raises(BackendUnavailable):  # one probe at a time while half-open
        await client.call(op("other"), {})
    assert await probe == {"ok": True}
    assert client.breaker("svc").state == "closed"
    assert (await client.call(op("after"), {}))["echo"]["name"] == "after"


async def test_failed_probe_reopens(client: BackendClient, backend: Backend) -> None:
    backend.script("sick2", *[Scripted(503, {})] * 12)
    with pytest.raises(BackendError):  # 3 attempts = 3 failures → open
        await client.call(op("sick2"), {})
    assert client.breaker("svc").state == "open"
    await asyncio.sleep(0.35)
    with pytest.raises(BackendError):
        await client.call(op("sick2"), {})  # the probe fails → open again, no further retry
    assert client.breaker("svc").state == "open"
    assert backend.hits["sick2"] == 4


async def test_in_process_asgi_app_backend() -> None:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def hello(request: Any) -> JSONResponse:
        return JSONResponse({"hello": request.path_params["who"]})

    app = Starlette(routes=[Route("/hello/{who}", hello)])
    c = BackendClient({"inproc": BackendSettings(name="inproc", app="x:y")},
                      transport_for=lambda s: httpx.ASGITransport(app=app))
    try:
        hi = op("hello", "GET", "/hello/{who}", params=(Parameter("who", "path"),),
                backend="inproc")
        assert await c.call(hi, {"who": "ann"}) == {"hello": "ann"}
    finally:
        await c.aclose()


async def test_app_entry_point_imported(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_DB", str(tmp_path / "inproc-ledger.db"))
    import importlib
    import sys

    sys.modules.pop("gateway.demo.ledger", None)
    importlib.import_module("gateway.demo.ledger")
    c = BackendClient({"ledger": BackendSettings(name="ledger", app="gateway.demo.ledger:app")})
    try:
        bal = op("get_balance", "GET", "/accounts/{account}/balance",
                 params=(Parameter("account", "path"),), backend="ledger")
        out = await c.call(bal, {"account": "A1"})
        assert out["account"] == "A1" and out["currency"] == "USD"
    finally:
        await c.aclose()
        sys.modules.pop("gateway.demo.ledger", None)


async def test_configured_headers_are_never_logged(client: BackendClient,
                                                   backend: Backend) -> None:
    from structlog.testing import capture_logs

    backend.script("noisy", Scripted(503, {}), Scripted(200, {"ok": True}))
    with capture_logs() as logs:
        await client.call(op("noisy"), {})
    assert any(entry["event"] == "backend_retry" for entry in logs)  # something was logged
    assert "s3cret" not in repr(logs)
    assert backend.requests[-1]["headers"]["authorization"] == "Bearer s3cret"  # but sent
