"""Findings of the 2026-12-01 security review, against the real server.

Each test of a finding reproduced a confirmed break of a documented promise (it was written
``xfail(strict=True)`` and failed until the root cause was fixed; all eight are fixed now, see
CHANGELOG.md). The other tests pin down attacks that held where no other test covers the
promise.

The gateway-crashing cases run against a real ``switchboard serve`` subprocess (an in-process
gateway would take the test runner down with it).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from gateway_support import (
    RunningGateway,
    code_request,
    error_of,
    gateway_settings,
    mcp_endpoint,
    md,
    tool_request,
)
from google.protobuf import json_format
from waiting import scaled, wait_until_sync

from gateway._proto.switchboard.v1 import approvals_pb2 as apb
from gateway._proto.switchboard.v1 import approvals_pb2_grpc as apb_grpc
from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc
from gateway.audit import digest
from gateway.demo_stack import ServiceProcess, spawn_service, write_demo_config
from gateway.policy import PolicySettings

pytestmark = pytest.mark.timeout(900)


class Served:
    """A ``switchboard serve`` child and a channel to it; restarted when a test killed it."""

    def __init__(self, backends: dict[str, Any], state: Path) -> None:
        self.backends = backends
        self.state = state
        self.proc: ServiceProcess | None = None
        self.channel: grpc.Channel | None = None
        self.stub: pb_grpc.GatewayStub | None = None

    def ensure(self) -> pb_grpc.GatewayStub:
        if self.proc is not None and self.proc.proc.poll() is None and self.stub is not None:
            return self.stub
        self.close()
        cfg = write_demo_config(self.state / "gw.yaml", ledger_url=self.backends["ledger"].url,
                                workspace_url=self.backends["workspace"].url, state=self.state)
        raw = yaml.safe_load(cfg.read_text())
        raw["sandbox"] = {"workers": 1}
        cfg.write_text(yaml.safe_dump(raw))
        self.proc = spawn_service(
            "gateway", [sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg)],
            log_file=self.state / "gw.log", timeout=scaled(300))
        self.channel = grpc.insecure_channel(self.proc.url.removeprefix("grpc://"))
        self.stub = pb_grpc.GatewayStub(self.channel)
        return self.stub

    def alive(self) -> bool:
        return self.proc is not None and self.proc.proc.poll() is None

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
        if self.proc is not None:
            self.proc.stop()
        self.proc = self.channel = self.stub = None


@pytest.fixture(scope="module")
def served(backends: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[Served]:
    s = Served(backends, tmp_path_factory.mktemp("review-serve"))
    try:
        yield s
    finally:
        s.close()


def _run(stub: pb_grpc.GatewayStub, source: str) -> pb.ExecuteResponse:
    return stub.Execute(code_request(source), metadata=md("dev-agent"), timeout=scaled(120))


def _result(resp: pb.ExecuteResponse) -> Any:
    return json_format.MessageToDict(resp.result) if resp.HasField("result") else None


# -- finding 1: a lone surrogate in a host call's arguments kills the gateway process ------

LONE_SURROGATE_VIA_SDK = (
    "from sdk import ledger\n"
    "try:\n"
    "    ledger.get_balance(account=chr(0xD800))\n"
    "    result = 'called'\n"
    "except Exception as e:\n"
    "    result = getattr(e, 'code', type(e).__name__)\n"
)


def test_lone_surrogate_in_host_call_arguments_does_not_kill_the_gateway(
        served: Served) -> None:
    stub = served.ensure()
    assert _result(_run(stub, "1 + 1")) == 2
    try:
        resp = _run(stub, LONE_SURROGATE_VIA_SDK)
    except grpc.RpcError as err:
        if served.proc is not None:  # let a dying child finish dying before anyone reuses it
            with contextlib.suppress(subprocess.TimeoutExpired):
                served.proc.proc.wait(scaled(30))
        pytest.fail(f"the call failed with {err.code()} (gateway alive: {served.alive()})")
    # A clear, stable refusal to the code, and the gateway keeps serving everyone else.
    assert _result(resp) == "invalid_request"
    assert served.alive()
    assert _result(_run(stub, "2 + 2")) == 4


# The same crash at its root, through every road to the engine (host-call arguments, an
# OpenAPI document's tags, JWT claims): the embedded engine must fail closed on a string regorus
# cannot take, never take the process down. Run in a child so the crash is observable.
ENGINE_PROBE = """
import asyncio, sys
from gateway.policy import EmbeddedPolicyEngine, PolicySettings, build_input
from gateway.models import Operation, Principal

async def main():
    eng = EmbeddedPolicyEngine(PolicySettings(path=sys.argv[1], reload=False))
    await eng.start()
    op = Operation(name="evil.get_a", backend="evil", operation_id="getA", summary="s",
                   tags=("t" + chr(0xD800),), method="GET", path="/a")
    agent = Principal(id="agent-1", tenant="demo", roles=("agent",))
    d = await eng.decide(build_input(principal=agent, kind="host_call", operation=op,
                                     operation_name=op.name, arguments={"a": chr(0xDC00)}))
    print("ROUTE", d.route, flush=True)
    await eng.close()

asyncio.run(main())
"""


def test_engine_fails_closed_on_lone_surrogates_in_the_input(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", ENGINE_PROBE, str(repo / "policies")],
                          capture_output=True, text=True, timeout=scaled(120), cwd=repo)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-500:]}"
    assert "ROUTE deny" in proc.stdout


# -- finding 2: NaN / Infinity / too-deep host-call arguments are an "internal" error --------

RAW_HOST = (
    "import _sandbox_runner as r, json\n"
    "from pyodide.ffi import run_sync\n"
    "def raw(op, text):\n"
    "    return json.loads(run_sync(r._state['host'](op, text)))\n"
)


@pytest.mark.parametrize("text", [
    '{"account": "A1", "x": NaN}',
    '{"account": "A1", "x": 1e400}',
    '{"account": "A1", "x": ' + "[" * 3000 + "]" * 3000 + "}",
], ids=["nan", "overflow-to-infinity", "too-deep"])
def test_host_call_arguments_json_cannot_carry_get_invalid_request(
        served: Served, text: str) -> None:
    stub = served.ensure()
    reply = _result(_run(stub, RAW_HOST + f"result = raw('ledger.get_balance', {text!r})"))
    assert reply["ok"] is False
    assert reply["error"]["code"] == "invalid_request", reply
    assert reply["error"].get("field", "").startswith("arguments"), reply


# -- finding 3: the unsalted argument digest gives masked values back ------------------------


def test_masked_values_cannot_be_recovered_from_the_audit_digest(served: Served) -> None:
    """Finding 3 (fixed): the arguments' digest beside their redacted copy is keyed (HMAC under
    the server's digest key), so trying candidates against it recovers nothing."""
    stub = served.ensure()
    resp = stub.Execute(tool_request(
        "ledger.create_transfer",
        {"from_account": "A1", "to_account": "A2", "amount": 5, "currency": "USD"},
        str(uuid.uuid4())), metadata=md("dev-finance"), timeout=scaled(120))
    audit = served.state / "audit.jsonl"
    root: dict[str, Any] = {}
    for line in audit.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("trace_id") == resp.trace_id and \
                "switchboard.arguments.hmac" in rec.get("attributes", {}):
            root = rec["attributes"]
    assert root, "the call's root span is in the audit file"
    assert "switchboard.arguments.sha256" not in root  # the plain digest is gone
    recorded = root["switchboard.arguments.hmac"]
    assert recorded.startswith("hmac-sha256:") and root["switchboard.digest.key_id"]
    shown = json.loads(root["switchboard.arguments"])["arguments"]
    masked = sorted(k for k, v in shown.items() if v == "[REDACTED]")
    assert masked == ["from_account", "to_account"]  # the policy masks them ...
    candidates = [f"A{i}" for i in range(100)]  # ... and the ledger's ids are short
    recovered = None
    for guess in itertools.product(candidates, repeat=len(masked)):
        trial = {**shown, **dict(zip(masked, guess, strict=True))}
        # Whatever the attacker hashes: the plain digest, or an HMAC under a guessable key.
        canon = json.dumps(trial, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False).encode()
        tries = {digest(trial).removeprefix("sha256:"),
                 *(hmac.new(k, canon, hashlib.sha256).hexdigest()
                   for k in (b"", b"switchboard", b"0" * 32))}
        if recorded.removeprefix("hmac-sha256:") in tries:
            recovered = guess
            break
    assert recovered is None, f"masked values recovered from the audit file: {recovered}"


# -- finding 4: a JWT whose alg does not fit the JWKS key is an internal error ---------------

_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwt_gateway(backends: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
                ) -> Iterator[tuple[RunningGateway, str, Path]]:
    state = tmp_path_factory.mktemp("review-jwt")
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(_RSA.public_key()))
    (state / "jwks.json").write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "use": "sig"}]}))
    base = gateway_settings(state, backends)
    gw = RunningGateway(replace(base, identity=replace(
        base.identity, jwks_url=f"file://{state / 'jwks.json'}")))
    try:
        for url in mcp_endpoint(gw):
            yield gw, url, state
    finally:
        gw.stop()


def _jwt(key: Any, alg: str) -> str:
    claims = {"sub": "bot-1", "tenant": "demo", "roles": ["agent"],
              "exp": int(time.time()) + 3600}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": "k1"})


def _mismatched_tokens() -> dict[str, str]:
    # Anyone can mint these: the kid is public (it is in the JWKS), the key is the caller's own.
    return {"ES256": _jwt(ec.generate_private_key(ec.SECP256R1()), "ES256"),
            "EdDSA": _jwt(ed25519.Ed25519PrivateKey.generate(), "EdDSA")}


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_grpc_jwt_with_a_mismatched_alg_is_unauthenticated(
        jwt_gateway: tuple[RunningGateway, str, Path], alg: str) -> None:
    gw, _, _ = jwt_gateway
    assert gw.stub.Execute(code_request("1 + 1"), metadata=md(_jwt(_RSA, "RS256")),
                           timeout=scaled(120)).trace_id  # the JWKS works
    with pytest.raises(grpc.RpcError) as info:
        gw.stub.Execute(code_request("1 + 1"), metadata=md(_mismatched_tokens()[alg]),
                        timeout=scaled(120))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert error_of(info.value)["code"] == "unauthenticated"


def test_mcp_jwt_with_a_mismatched_alg_is_a_401_and_audited(
        jwt_gateway: tuple[RunningGateway, str, Path]) -> None:
    _, url, state = jwt_gateway
    resp = httpx.post(url, headers={
        "authorization": f"Bearer {_mismatched_tokens()['ES256']}",
        "accept": "application/json, text/event-stream", "content-type": "application/json"},
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
        timeout=scaled(60))
    assert resp.status_code == 401, resp.text[:200]
    trace_id = resp.json()["error"]["data"]["trace_id"]
    names = [json.loads(line).get("name") for line in
             (state / "audit.jsonl").read_text().splitlines()
             if json.loads(line).get("trace_id") == trace_id]
    assert "mcp unauthenticated" in names


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _crafted(header: dict[str, Any], key: Any = _RSA, payload: bytes | None = None) -> str:
    """A token with exactly ``header`` (PyJWT would add or check fields), signed by ``key``
    (RS256) over ``payload`` (default: valid claims) — the real key where the point is that
    even a good signature does not get the header through."""
    claims = payload if payload is not None else json.dumps(
        {"sub": "bot-1", "tenant": "demo", "roles": ["agent"],
         "exp": int(time.time()) + 3600}).encode()
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(claims)}"
    signature = jwt.algorithms.RSAAlgorithm(jwt.algorithms.RSAAlgorithm.SHA256).sign(
        signing_input.encode(), key)
    return f"{signing_input}.{_b64(signature)}"


def _hs256(header: dict[str, Any]) -> str:
    claims = {"sub": "bot-1", "tenant": "demo", "exp": int(time.time()) + 3600}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    secret = _RSA.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _hostile_tokens(jku_url: str) -> dict[str, str]:
    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attacker_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker.public_key()))
    inner = _jwt(_RSA, "RS256")
    return {
        "garbage-base64": "AAAA.AAAA.AAAA",
        "header-not-an-object": f"{_b64(b'[]')}.e30.AAAA",
        "header-not-utf8": f"{_b64(bytes([0xFF, 0xFE, 0xFD]))}.e30.AAAA",
        "header-nested-too-deep": _b64(b'{"alg":"RS256","kid":"k1","x":' + b"[" * 2500
                                       + b"]" * 2500 + b"}") + ".e30.AAAA",
        "huge-header": _b64(json.dumps({"alg": "RS256", "kid": "k1",
                                        "x": "y" * 5000}).encode()) + ".e30.AAAA",
        "alg-none": _crafted({"alg": "none", "kid": "k1"}).rsplit(".", 1)[0] + ".",
        "alg-not-a-string": _crafted({"alg": ["RS256"], "kid": "k1"}),
        # The classic confusion: HMAC keyed with the (public) RSA key's PEM.
        "hs256-keyed-with-the-public-key": _hs256({"alg": "HS256", "kid": "k1"}),
        "kid-an-int": _crafted({"alg": "RS256", "kid": 1}),
        "kid-a-list": _crafted({"alg": "RS256", "kid": ["k1"]}),
        "kid-an-object": _crafted({"alg": "RS256", "kid": {"$ne": ""}}),
        "crit-unknown": _crafted({"alg": "RS256", "kid": "k1", "crit": ["exp"], "exp": 1}),
        "crit-b64-detached": _crafted({"alg": "RS256", "kid": "k1", "b64": False,
                                       "crit": ["b64"]}),
        # jku/x5u/jwk point at a key the attacker holds; only the configured JWKS counts.
        "jku": _crafted({"alg": "RS256", "kid": "k1", "jku": jku_url}, attacker),
        "x5u": _crafted({"alg": "RS256", "kid": "k1", "x5u": jku_url}, attacker),
        "embedded-jwk": _crafted({"alg": "RS256", "kid": "k1", "jwk": attacker_jwk},
                                 attacker),
        # A nested JWT, signed with the real key: the inner token is never unwrapped.
        "nested-jwt": _crafted({"alg": "RS256", "kid": "k1", "cty": "JWT"},
                               payload=inner.encode()),
    }


@pytest.fixture(scope="module")
def key_server() -> Iterator[tuple[str, list[str]]]:
    """Where a hostile token's ``jku``/``x5u`` points; records any fetch."""
    hits: list[str] = []
    attacker_keys = json.dumps({"keys": []}).encode()

    class Keys(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(attacker_keys)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Keys)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/keys.json", hits
    finally:
        server.shutdown()


HOSTILE = sorted(_hostile_tokens("http://x.invalid/"))


@pytest.mark.parametrize("kind", HOSTILE)
def test_grpc_hostile_jwts_are_unauthenticated(
        jwt_gateway: tuple[RunningGateway, str, Path],
        key_server: tuple[str, list[str]], kind: str) -> None:
    gw, _, _ = jwt_gateway
    url, hits = key_server
    with pytest.raises(grpc.RpcError) as info:
        gw.stub.Execute(code_request("1 + 1"), metadata=md(_hostile_tokens(url)[kind]),
                        timeout=scaled(120))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert error_of(info.value)["code"] == "unauthenticated"
    assert hits == []


@pytest.mark.parametrize("kind", ["nested-jwt", "jku", "kid-an-object", "header-not-utf8",
                                  "crit-b64-detached"])
def test_mcp_hostile_jwts_are_a_401_and_audited(
        jwt_gateway: tuple[RunningGateway, str, Path],
        key_server: tuple[str, list[str]], kind: str) -> None:
    _, url, state = jwt_gateway
    jku, hits = key_server
    resp = httpx.post(url, headers={
        "authorization": f"Bearer {_hostile_tokens(jku)[kind]}",
        "accept": "application/json", "content-type": "application/json",
        "mcp-protocol-version": "2025-06-18"},
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
        timeout=scaled(60))
    assert resp.status_code == 401, resp.text[:200]
    assert resp.json()["error"]["data"]["code"] == "unauthenticated"
    trace_id = resp.json()["error"]["data"]["trace_id"]
    roots = [rec for line in (state / "audit.jsonl").read_text().splitlines()
             if (rec := json.loads(line)).get("trace_id") == trace_id
             and rec.get("name") == "mcp unauthenticated"]
    assert [r["attributes"]["switchboard.outcome"] for r in roots] == ["unauthenticated"]
    assert hits == []


def test_a_jwt_signed_by_the_jwks_key_still_gets_in(
        jwt_gateway: tuple[RunningGateway, str, Path]) -> None:
    """The pinning refuses what does not fit the key, not what does (every RS* on an RSA key
    whose JWK names no ``alg``)."""
    gw, _, _ = jwt_gateway
    for alg in ("RS256", "RS384", "RS512"):
        assert gw.stub.Execute(code_request("1 + 1"), metadata=md(_jwt(_RSA, alg)),
                               timeout=scaled(120)).trace_id


# -- finding 5: an approval outlives the policy that asked for it ----------------------------


@pytest.fixture(scope="module")
def reloading_gateway(backends: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
                      ) -> Iterator[tuple[RunningGateway, Path]]:
    state = tmp_path_factory.mktemp("review-approvals")
    policies = state / "policies"
    shutil.copytree(Path(__file__).resolve().parents[2] / "policies", policies)
    gw = RunningGateway(gateway_settings(
        state, backends, policy=PolicySettings(path=policies, reload=True,
                                               reload_interval_s=0.2)))
    try:
        yield gw, policies
    finally:
        gw.stop()


def test_an_approval_by_a_role_the_policy_no_longer_accepts_does_not_run(
        reloading_gateway: tuple[RunningGateway, Path], backends: dict[str, Any]) -> None:
    gw, policies = reloading_gateway
    assert gw.server is not None
    memo = f"review-{uuid.uuid4().hex[:8]}"
    args = {"from_account": "A1", "to_account": "A2", "amount": 1500.0, "currency": "USD",
            "memo": memo}
    rid = str(uuid.uuid4())
    with pytest.raises(grpc.RpcError) as info:
        gw.stub.Execute(tool_request("ledger.create_transfer", args, rid),
                        metadata=md("dev-finance"), timeout=scaled(120))
    held = error_of(info.value)
    assert held["code"] == "approval_required"
    approvals = apb_grpc.ApprovalsServiceStub(gw.channel)
    approvals.Approve(apb.ApproveRequest(approval_id=held["details"]["approval_id"],
                                         comment="ok"),
                      metadata=md("dev-approver"), timeout=scaled(60))
    # The policy now says: transfers above 1,000 need a "cfo" (dev-approver is not one).
    before = gw.server.pipeline.policy.revision
    data_file = policies / "switchboard" / "data.json"
    data = json.loads(data_file.read_text())
    data["approvals"]["rules"][0]["roles"] = ["cfo"]
    tmp = data_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(data_file)
    wait_until_sync(lambda: gw.server is not None
                    and gw.server.pipeline.policy.revision != before,
                    what="the edited policy to load", timeout_s=60)
    again: dict[str, Any] = {}
    try:
        gw.stub.Execute(tool_request("ledger.create_transfer", args, rid),
                        metadata=md("dev-finance"), timeout=scaled(120))
        ran = True
    except grpc.RpcError as exc:
        ran, again = False, error_of(exc)
    with urllib.request.urlopen(f"{backends['ledger'].url}/transfers", timeout=30) as resp:
        items = json.load(resp)
    if isinstance(items, dict):
        items = items.get("items") or items.get("transfers") or []
    reached = sum(1 for t in items if t.get("memo") == memo)
    assert not ran and reached == 0, (
        f"ran={ran}: the transfer reached the ledger {reached}x on an approval the current "
        "policy does not accept")
    # Held again, for a new approval by the role the policy asks for now, saying why.
    assert again["code"] == "approval_required", again
    assert again["details"]["approval_id"] != held["details"]["approval_id"]
    assert again["details"]["approver_roles"] == ["cfo"]
    assert "no longer accepts" in again["details"]["superseded"]
    # The old approver cannot decide the new one.
    with pytest.raises(grpc.RpcError) as refused:
        approvals.Approve(apb.ApproveRequest(approval_id=again["details"]["approval_id"]),
                          metadata=md("dev-approver"), timeout=scaled(60))
    assert error_of(refused.value)["code"] == "approval_forbidden"


def _set_approval_rules(gw: RunningGateway, policies: Path,
                        rules: list[dict[str, Any]]) -> None:
    """Rewrite the approval rules and wait until the gateway decides with them."""
    assert gw.server is not None
    before = gw.server.pipeline.policy.revision
    data_file = policies / "switchboard" / "data.json"
    data = json.loads(data_file.read_text())
    if data["approvals"]["rules"] == rules:
        return  # already in force (the same content keeps the same revision)
    data["approvals"]["rules"] = rules
    tmp = data_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(data_file)
    wait_until_sync(lambda: gw.server is not None
                    and gw.server.pipeline.policy.revision != before,
                    what="the edited policy to load", timeout_s=60)


def test_an_approval_the_policy_no_longer_requires_is_not_needed(
        reloading_gateway: tuple[RunningGateway, Path], backends: dict[str, Any]) -> None:
    """Finding 5, the other way: once the policy drops the requirement, the held request runs
    without anyone approving it, exactly once (the idempotency channel replays after)."""
    gw, policies = reloading_gateway
    rule = {"operation": "ledger.create_transfer", "kinds": ["tool"], "argument": "amount",
            "above": 1000, "roles": ["cfo"], "expires_s": 3600}
    _set_approval_rules(gw, policies, [rule])
    memo = f"review-{uuid.uuid4().hex[:8]}"
    args = {"from_account": "A1", "to_account": "A2", "amount": 1200.0, "currency": "USD",
            "memo": memo}
    rid = str(uuid.uuid4())
    with pytest.raises(grpc.RpcError) as info:
        gw.stub.Execute(tool_request("ledger.create_transfer", args, rid),
                        metadata=md("dev-finance"), timeout=scaled(120))
    assert error_of(info.value)["code"] == "approval_required"
    _set_approval_rules(gw, policies, [])
    first = gw.stub.Execute(tool_request("ledger.create_transfer", args, rid),
                            metadata=md("dev-finance"), timeout=scaled(120))
    again = gw.stub.Execute(tool_request("ledger.create_transfer", args, rid),
                            metadata=md("dev-finance"), timeout=scaled(120))
    assert not first.replayed and again.replayed
    with urllib.request.urlopen(f"{backends['ledger'].url}/transfers", timeout=30) as resp:
        items = json.load(resp)
    if isinstance(items, dict):
        items = items.get("items") or items.get("transfers") or []
    assert sum(1 for t in items if t.get("memo") == memo) == 1


# -- finding 6: MCP's discovery requests leave no audit record -------------------------------


@pytest.fixture(scope="module")
def mcp_url(gateway: RunningGateway) -> Iterator[str]:
    yield from mcp_endpoint(gateway)


def _records(gw: RunningGateway) -> list[dict[str, Any]]:
    assert gw.server is not None
    gw.server.telemetry.force_flush()
    file = gw.settings.audit.file
    assert file is not None
    return [json.loads(line) for line in file.read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("method,params", [
    ("tools/list", {}),
    ("resources/read", {"uri": "switchboard://operations/ledger.get_balance"}),
    ("resources/list", {}),
    ("completion/complete", {"ref": {"type": "ref/resource",
                                     "uri": "switchboard://operations/{name}"},
                             "argument": {"name": "name", "value": "ledger."}}),
], ids=["tools-list", "resources-read", "resources-list", "completion"])
def test_mcp_discovery_calls_are_audited_like_their_grpc_twins(
        gateway: RunningGateway, mcp_url: str, method: str, params: dict[str, Any]) -> None:
    before = len(_records(gateway))
    gateway.stub.DescribeOperation(pb.DescribeOperationRequest(name="ledger.get_balance"),
                                   metadata=md("dev-agent"), timeout=scaled(60))
    grpc_roots = [r for r in _records(gateway)[before:] if r.get("parent_span_id") in (None, "")
                  or r.get("name", "").startswith("switchboard.v1.")]
    assert grpc_roots, "the gRPC describe leaves a record"
    before = len(_records(gateway))
    resp = httpx.post(mcp_url, headers={
        "authorization": "Bearer dev-agent", "accept": "application/json",
        "content-type": "application/json", "mcp-protocol-version": "2025-06-18"},
        json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
        timeout=scaled(60))
    assert resp.status_code == 200 and "result" in resp.json()
    names = [r.get("name", "") for r in _records(gateway)[before:]]
    assert any(n.startswith("mcp ") for n in names), names
    root = next(r for r in _records(gateway)[before:] if r.get("name") == f"mcp {method}")
    assert root["kind"] == "SERVER" and root["parent_span_id"] is None
    assert root["attributes"]["mcp.method.name"] == method
    assert root["attributes"]["switchboard.transport"] == "mcp"
    assert root["attributes"]["switchboard.principal.id"] == "agent-1"  # dev-agent's
    assert root["attributes"]["switchboard.outcome"] == "ok"


@pytest.mark.parametrize("method,params,outcome,error", [
    ("resources/read", {"uri": "switchboard://operations/nope.missing"},
     "unknown_operation", -32002),
    ("resources/read", {"uri": "switchboard://operations/" + "x" * 5000},
     "invalid_request", -32002),
    ("completion/complete", {"ref": {"type": "ref/prompt", "name": "p"},
                             "argument": {"name": "name", "value": ""}},
     "invalid_request", -32602),
], ids=["unknown-resource", "hostile-uri", "unknown-prompt"])
def test_a_refused_mcp_discovery_call_is_audited_with_its_outcome(
        gateway: RunningGateway, mcp_url: str, method: str, params: dict[str, Any],
        outcome: str, error: int) -> None:
    """What the caller is told stays MCP's (unknown and denied look alike); the record has
    the real outcome, and a hostile URI is recorded only as a bounded stand-in."""
    before = len(_records(gateway))
    resp = httpx.post(mcp_url, headers={
        "authorization": "Bearer dev-agent", "accept": "application/json",
        "content-type": "application/json", "mcp-protocol-version": "2025-06-18"},
        json={"jsonrpc": "2.0", "id": 1, "method": method, "params": params},
        timeout=scaled(60))
    assert resp.json()["error"]["code"] == error, resp.text[:300]
    roots = [r for r in _records(gateway)[before:] if r.get("name") == f"mcp {method}"]
    assert [r["attributes"]["switchboard.outcome"] for r in roots] == [outcome]
    assert len(roots[0]["attributes"].get("mcp.resource.uri", "")) <= 512


# -- finding 7: a caller's output_schema pattern stalls the whole gateway (ReDoS) -------------

REDOS_SCHEMA = {"type": "string", "pattern": "^(a+)+$"}
REDOS_SOURCE = "'a' * 40 + '!'"  # 2**40 backtracking steps in Python's re


def test_a_catastrophic_output_schema_pattern_does_not_stall_other_callers(
        backends: dict[str, Any], tmp_path: Path) -> None:
    victim_host = Served(backends, tmp_path)
    try:
        stub = victim_host.ensure()
        assert _result(_run(stub, "1 + 1")) == 2
        attack = code_request(REDOS_SOURCE)
        attack.code_run.output_schema.update(REDOS_SCHEMA)
        outcome: dict[str, Any] = {}

        def send() -> None:
            try:
                outcome["response"] = stub.Execute(attack, metadata=md("dev-agent"),
                                                   timeout=scaled(600))
            except grpc.RpcError as err:
                outcome["error"] = err.code()  # type: ignore[attr-defined]

        attacker = threading.Thread(target=send, daemon=True)
        attacker.start()
        deadline = time.monotonic() + scaled(300)
        victims = 0
        while attacker.is_alive() and time.monotonic() < deadline:
            # Another principal's trivial run, with a deadline far above its own cost.
            try:
                resp = stub.Execute(code_request("2 + 2"), metadata=md("dev-finance"),
                                    timeout=scaled(30))
            except grpc.RpcError as err:
                pytest.fail(f"a bystander's call failed with {err.code()} after {victims} "
                            "succeeded while the attacker's run was validated")
            assert _result(resp) == 4
            victims += 1
        assert not attacker.is_alive(), "the attacker's run never finished"
    finally:
        victim_host.close()


# -- finding 8: a caller's output_schema $ref makes the gateway fetch any URL (SSRF) ----------


def test_output_schema_refs_are_never_fetched(served: Served) -> None:
    hits: list[str] = []

    class Internal(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            body = json.dumps({"const": "INTERNAL-ONLY-7f3a"}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    internal = ThreadingHTTPServer(("127.0.0.1", 0), Internal)
    threading.Thread(target=internal.serve_forever, daemon=True).start()
    try:
        stub = served.ensure()
        req = code_request("1")
        req.code_run.output_schema.update(
            {"$ref": f"http://127.0.0.1:{internal.server_address[1]}/metadata.json"})
        try:
            resp = stub.Execute(req, metadata=md("dev-agent"), timeout=scaled(120))
            said = json_format.MessageToJson(resp)
        except grpc.RpcError as err:
            said = str(err.details())  # type: ignore[attr-defined]
    finally:
        internal.shutdown()
    assert hits == [], f"the gateway fetched {hits}"
    assert "INTERNAL-ONLY-7f3a" not in said


# -- attacks that held (promises no other test covers end to end) ----------------------------


def test_another_principal_reusing_a_request_id_gets_no_recorded_outcome(
        served: Served) -> None:
    """dev-finance's transfer under request_id R is recorded; dev-agent reusing R (same
    operation and arguments, then a tool it may call) is decided by the policy on its own and
    never sees the finance principal's recorded result."""
    stub = served.ensure()
    rid = f"shared-{uuid.uuid4().hex}"
    args = {"from_account": "A1", "to_account": "A2", "amount": 3, "currency": "USD",
            "memo": rid}
    first = stub.Execute(tool_request("ledger.create_transfer", args, rid),
                         metadata=md("dev-finance"), timeout=scaled(120))
    assert not first.replayed
    again = stub.Execute(tool_request("ledger.create_transfer", args, rid),
                         metadata=md("dev-finance"), timeout=scaled(120))
    assert again.replayed  # the owner's retry replays ...
    with pytest.raises(grpc.RpcError) as info:  # ... another principal's is decided afresh
        stub.Execute(tool_request("ledger.create_transfer", args, rid),
                     metadata=md("dev-agent"), timeout=scaled(120))
    assert error_of(info.value)["code"] == "policy_denied"
    other = stub.Execute(tool_request("ledger.list_accounts", {}, rid),
                         metadata=md("dev-agent"), timeout=scaled(120))
    assert not other.replayed


def test_an_oversized_mcp_body_is_refused_and_the_door_keeps_serving(
        gateway: RunningGateway, mcp_url: str) -> None:
    headers = {"authorization": "Bearer dev-agent", "accept": "application/json",
               "content-type": "application/json", "mcp-protocol-version": "2025-06-18"}

    def body() -> Iterator[bytes]:  # streamed (chunked): no content-length to trust
        yield (b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":'
               b'{"name":"execute_code","arguments":{"code":"')
        for _ in range(32):
            yield b"x" * (1024 * 1024)
        yield b'"}}}'

    refused = httpx.post(mcp_url, headers=headers, content=body(), timeout=scaled(120))
    assert refused.status_code == 413
    listed = httpx.post(mcp_url, headers=headers, timeout=scaled(60),
                        json={"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}})
    assert listed.status_code == 200 and listed.json()["result"]["tools"]
