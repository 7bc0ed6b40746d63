"""Work an anonymous caller can cause on the event loop: JWKS fetches and name suggestions.

Real loopback JWKS servers (port 0) that answer slowly, fail, or count requests; a real
gateway in-process. No wall-clock assertions: a "does not stall" test waits, with generous
deadlines, for a cheap call to complete while the JWKS server is provably still holding its
response; fetch-count tests count the requests the JWKS server received.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from gateway_support import RunningGateway, error_of, gateway_settings, md
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway.catalog import Catalog
from gateway.config import IdentitySettings
from gateway.errors import InvalidRequest, Unauthenticated
from gateway.identity import Authenticator, JwksCache
from gateway.models import Operation, Principal

pytestmark = pytest.mark.timeout(240)

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWKS_BODY = json.dumps({"keys": [{**json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(
    KEY.public_key())), "kid": "k1", "use": "sig", "alg": "RS256"}]}).encode()
DEADLINE = 30.0


@dataclass
class Jwks:
    """A loopback JWKS endpoint: ``hold`` makes it wait before answering, ``status`` != 200
    makes it fail; ``requests`` counts the GETs it received."""

    url: str = ""
    status: int = 200
    hold: threading.Event | None = None
    requests: int = 0
    seen: threading.Condition = field(default_factory=threading.Condition)

    def wait_for_requests(self, n: int, timeout: float = DEADLINE) -> bool:
        with self.seen:
            return self.seen.wait_for(lambda: self.requests >= n, timeout)


@pytest.fixture
def jwks() -> Iterator[Jwks]:
    state = Jwks()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with state.seen:
                state.requests += 1
                state.seen.notify_all()
            if state.hold is not None:
                state.hold.wait(60)
            body = JWKS_BODY if state.status == 200 else b"{}"
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    try:
        yield state
    finally:
        if state.hold is not None:
            state.hold.set()
        server.shutdown()
        server.server_close()


def token(kid: str = "k1", **claims: Any) -> str:
    base = {"sub": "jwt-bot", "tenant": "demo", "roles": ["agent"], "exp": time.time() + 600}
    base.update(claims)
    return jwt.encode(base, KEY, algorithm="RS256", headers={"kid": kid})


# -- the authenticator on its own ------------------------------------------------------------


def test_a_failing_jwks_is_fetched_once_per_cooldown(jwks: Jwks) -> None:
    jwks.status = 500
    auth = Authenticator({}, jwks=JwksCache(jwks.url, cooldown_s=3600))
    for _ in range(20):
        with pytest.raises(Unauthenticated, match="JWKS unavailable"):
            auth.authenticate(token())
    assert jwks.requests == 1


def test_unknown_kids_are_negatively_cached(jwks: Jwks) -> None:
    auth = Authenticator({}, jwks=JwksCache(jwks.url, cooldown_s=3600))
    assert auth.authenticate(token()) == Principal("jwt-bot", "demo", ("agent",))
    for i in range(20):
        with pytest.raises(Unauthenticated, match="unknown signing key"):
            auth.authenticate(token(kid=f"rotated-{i}"))
    assert auth.authenticate(token()).id == "jwt-bot"
    assert jwks.requests == 1


def test_oversized_and_malformed_tokens_are_refused_unread(jwks: Jwks) -> None:
    auth = Authenticator({}, jwks=JwksCache(jwks.url, cooldown_s=3600))
    huge = token(padding="p" * 10_000)  # validly signed, but over MAX_TOKEN_BYTES
    none_alg = jwt.encode({"sub": "x", "tenant": "demo", "exp": time.time() + 60}, None,
                          algorithm="none", headers={"kid": "k1"})
    no_kid = jwt.encode({"sub": "x", "tenant": "demo", "exp": time.time() + 60}, KEY,
                        algorithm="RS256")
    for bad in (huge, none_alg, no_kid, "a.b.c", "x" * 5_000 + ".y.z"):
        with pytest.raises(Unauthenticated):
            auth.authenticate(bad)
    assert jwks.requests == 0


async def test_concurrent_callers_share_one_fetch(jwks: Jwks) -> None:
    jwks.hold = threading.Event()
    auth = Authenticator({}, jwks=JwksCache(jwks.url, cooldown_s=3600, timeout_s=30))
    tasks = [asyncio.create_task(auth.authenticate_async(token())) for _ in range(10)]
    assert await asyncio.to_thread(jwks.wait_for_requests, 1)
    # The loop is free while the fetch is held: other coroutines run, none has finished.
    await asyncio.sleep(0)
    assert not any(t.done() for t in tasks)
    jwks.hold.set()
    principals = await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE)
    assert {p.id for p in principals} == {"jwt-bot"}
    assert jwks.requests == 1


# -- the assembled gateway -------------------------------------------------------------------


@pytest.fixture
def jwt_gateway(backends: dict[str, Any], jwks: Jwks,
                tmp_path: Path) -> Iterator[RunningGateway]:
    settings = gateway_settings(tmp_path, backends)
    identity = IdentitySettings(tokens=settings.identity.tokens, jwks_url=jwks.url)
    gw = RunningGateway(replace(settings, identity=identity))
    try:
        yield gw
    finally:
        if jwks.hold is not None:
            jwks.hold.set()
        gw.stop()


def test_a_slow_jwks_does_not_stall_other_callers(jwt_gateway: RunningGateway,
                                                 jwks: Jwks) -> None:
    """Anonymous JWTs wait for a JWKS that does not answer; meanwhile health checks and
    static-token calls are served, and the JWKS is asked exactly once."""
    jwks.hold = threading.Event()
    gw = jwt_gateway
    pending = [gw.stub.GetManifest.future(pb.GetManifestRequest(), metadata=md(token()),
                                          timeout=DEADLINE) for _ in range(5)]
    assert jwks.wait_for_requests(1), "the gateway never asked the JWKS"
    health = health_pb2_grpc.HealthStub(gw.channel)
    resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=DEADLINE)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    manifest = gw.stub.GetManifest(pb.GetManifestRequest(), metadata=md("dev-agent"),
                                   timeout=DEADLINE)
    assert manifest.tools
    assert not jwks.hold.is_set() and not any(f.done() for f in pending)
    jwks.hold.set()
    for f in pending:
        assert f.result(timeout=DEADLINE).tools
    assert jwks.requests == 1


def test_oversized_names_get_no_suggestion_work(gateway: RunningGateway,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """difflib is quadratic in the name: a 3.5 MiB name must be refused before it."""
    calls = []
    real = difflib.get_close_matches

    def counting(word: Any, *args: Any, **kw: Any) -> Any:
        calls.append(len(word))
        return real(word, *args, **kw)

    monkeypatch.setattr(difflib, "get_close_matches", counting)
    name = "ledger." + "y" * (3_500_000)
    req = pb.ExecuteRequest(request_id="huge-name", tool_call=pb.ToolCall(name=name))
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.Execute(req, metadata=md("dev-agent"), timeout=DEADLINE)
    err = error_of(info.value)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert (err["code"], err["field"]) == ("invalid_request", "tool_call.name"), err
    assert err["details"]["max_length"] == 256
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.DescribeOperation(pb.DescribeOperationRequest(name="x" * 3_500_000),
                                       metadata=md("dev-agent"), timeout=DEADLINE)
    assert (error_of(info.value)["code"], error_of(info.value)["field"]) == (
        "invalid_request", "name")
    assert all(n <= 256 for n in calls), calls
    # A near miss still gets its suggestions.
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.Execute(pb.ExecuteRequest(request_id="typo", tool_call=pb.ToolCall(
            name="ledger.get_balanse")), metadata=md("dev-agent"), timeout=DEADLINE)
    assert "ledger.get_balance" in error_of(info.value)["details"]["suggestions"]


def test_oversized_names_from_code_get_no_suggestion_work(
        gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sdk.describe`` / ``sdk.search`` host calls take the same bounds."""
    calls = []
    real = difflib.get_close_matches
    monkeypatch.setattr(difflib, "get_close_matches",
                        lambda word, *a, **kw: calls.append(len(word)) or real(word, *a, **kw))
    source = ("import sdk\nout = []\n"
              "for f, arg in ((sdk.describe, 'x' * 500_000), (sdk.search, 'q ' * 200_000)):\n"
              "    try:\n        f(arg)\n        out.append('ok')\n"
              "    except Exception as exc:\n        out.append(str(exc)[:300])\nout")
    run = pb.CodeRun(source=source)
    resp = gateway.stub.Execute(pb.ExecuteRequest(request_id="sdk-huge", code_run=run),
                                metadata=md("dev-agent"), timeout=DEADLINE)
    messages = [v.string_value for v in resp.result.list_value.values]
    assert len(messages) == 2, resp
    assert "256" in messages[0] and "500" in messages[1], messages
    assert all(n <= 256 for n in calls), calls


def test_catalog_bounds_names_and_queries() -> None:
    catalog = Catalog([Operation(name="ledger.get_balance", backend="ledger",
                                 operation_id="getBalance", summary="Get a balance")])
    assert catalog.suggest("ledger.get_balanse") == ["ledger.get_balance"]
    assert catalog.suggest("x" * 1_000_000) == []
    with pytest.raises(InvalidRequest) as info:
        catalog.require("x" * 1_000_000, field="name")
    assert info.value.field == "name"
    with pytest.raises(InvalidRequest):
        catalog.require("ledger.get_balance\x00")
    with pytest.raises(InvalidRequest) as info:
        catalog.search("q " * 1_000)
    assert info.value.field == "query"
