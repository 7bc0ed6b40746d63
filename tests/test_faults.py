"""Fault injection against the assembled gateway, run as a real ``switchboard serve`` process.

Backends that are down, slow or answer garbage; the OPA server unreachable; the audit exporter
unreachable; a Deno worker SIGKILLed mid-run; the client giving up mid-run. Every case must end
in a clear error (stable code, right gRPC status) or a correct result within a bounded time —
never a hang, a lost audit record or a second effect — and the gateway keeps serving.

No test here asserts how fast a fault is handled (that is measured in ``bench/``): each checks
the outcome, the order of events (the gateway gave up before the slow backend answered) and,
where a configured limit ends a call, a generous bound derived from that limit
(``waiting.bound``). Client deadlines sit above those bounds, so a limit the gateway ignores
still fails the test.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from load_support import (
    FaultyBackend,
    GatewayProcess,
    cpu_ticks,
    deno_descendants,
    ledger_spec,
    policy_copy,
    refused_port,
    wait_for,
)
from waiting import bound, scaled

from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(scaled(300))

TOKENS = {
    "dev-agent": {"id": "agent-1", "tenant": "demo", "roles": ["agent"]},
    "dev-finance": {"id": "finance-1", "tenant": "demo", "roles": ["agent", "finance"]},
    # Runs of this agent may take 10 minutes: a run that ends sooner ended for another reason.
    "dev-patient": {"id": "patient-1", "tenant": "demo", "roles": ["agent", "patient"]},
}
PATIENT_LIMITS = {"patient": {"timeout_ms": 600_000}}
EXECUTE = "switchboard.v1.Gateway/Execute"
# Above every bound asserted below: a call the gateway does not end itself fails the test.
CLIENT_DEADLINE_S = scaled(150)
# The module's backends (see the config below): per-attempt timeout in seconds, attempts.
DOWN_TIMEOUT_S, DOWN_ATTEMPTS = 1.0, 2
SLOW_TIMEOUT_S, SLOW_ATTEMPTS = 0.3, 2
GARBAGE_TIMEOUT_S = 5.0  # the default timeout_ms; retries: 0


def _gw_support() -> Any:
    import gateway_support

    return gateway_support


class Stack:
    """The fault gateway and the faulty parts around it."""

    def __init__(self, gw: GatewayProcess, slow: FaultyBackend, garbage: FaultyBackend,
                 audit_file: Path) -> None:
        self.gw = gw
        self.stub = pb_grpc.GatewayStub(gw.channel)
        self.slow = slow
        self.garbage = garbage
        self.audit_file = audit_file

    def execute(self, req: Any, token: str = "dev-agent",
                timeout: float = CLIENT_DEADLINE_S) -> Any:
        return self.stub.Execute(req, metadata=_gw_support().md(token), timeout=timeout)

    def failure(self, req: Any, token: str = "dev-agent", timeout: float = CLIENT_DEADLINE_S,
                ) -> tuple[grpc.StatusCode, dict[str, Any], float]:
        """Run a call that must fail; returns (status, switchboard error, seconds taken)."""
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as info:
            self.execute(req, token, timeout)
        elapsed = time.monotonic() - started
        return info.value.code(), _gw_support().error_of(info.value), elapsed

    def assert_serving(self) -> None:
        """Health is SERVING and a real tool call through the real ledger works."""
        sup = _gw_support()
        assert self.gw.healthy(), self.gw.log_tail()
        resp = self.execute(sup.tool_request("ledger.get_balance", {"account": "A1"}))
        assert resp.result.struct_value["account"] == "A1"


def audit_records(file: Path, request_id: str) -> list[dict[str, Any]]:
    """Root ``Execute`` records of ``request_id`` in the audit file."""
    return audit_records_named(file, request_id, EXECUTE)


def audit_records_named(file: Path, request_id: str, name: str) -> list[dict[str, Any]]:
    """Records called ``name`` (a root RPC span) of ``request_id`` in the audit file."""
    if not file.exists():
        return []
    out = []
    for line in file.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        attrs = rec.get("attributes", {})
        if rec.get("name") == name and attrs.get("switchboard.request_id") == request_id:
            out.append(rec)
    return out


@pytest.fixture(scope="module")
def stack(backends: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
          ) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("faults")
    spec_file = state / "ledger-openapi.json"
    spec_file.write_text(json.dumps(ledger_spec()))
    # The slow backend answers only after every bound below: the order of events shows whether
    # the gateway's own timeout ended the call.
    slow = FaultyBackend("slow", delay_s=scaled(300))
    garbage = FaultyBackend("garbage")
    with refused_port() as down_port, refused_port() as otlp_port:
        policy = policy_copy(state / "policies", {"demo": {"backends": ["*"]}}, PATIENT_LIMITS)
        config = {
            "listen": "127.0.0.1:0",
            "identity": {"tokens": TOKENS},
            "policy": {"engine": "embedded", "path": str(policy)},
            "backends": [
                {"name": name, "openapi": f"{svc.url}/openapi.json", "base_url": svc.url}
                for name, svc in backends.items()
            ] + [
                {"name": "down", "openapi": str(spec_file),
                 "base_url": f"http://127.0.0.1:{down_port}",
                 "timeout_ms": int(DOWN_TIMEOUT_S * 1000), "retries": DOWN_ATTEMPTS - 1},
                {"name": "slow", "openapi": f"{slow.url}/openapi.json", "base_url": slow.url,
                 "timeout_ms": int(SLOW_TIMEOUT_S * 1000), "retries": SLOW_ATTEMPTS - 1},
                {"name": "garbage", "openapi": f"{garbage.url}/openapi.json",
                 "base_url": garbage.url, "retries": 0},
            ],
            "sandbox": {"workers": 1},
            "idempotency": {"dsn": f"sqlite:///{state / 'idempotency.db'}"},
            # The OTLP collector is a dead port for the whole module: every test below also
            # proves that calls are served while the exporter fails.
            "audit": {"file": str(state / "audit.jsonl"), "log_format": "json",
                      "otlp_endpoint": f"http://127.0.0.1:{otlp_port}", "otlp_protocol": "grpc"},
        }
        gw = GatewayProcess(config, state / "gw")
        try:
            yield Stack(gw, slow, garbage, state / "audit.jsonl")
        finally:
            rc = gw.stop()
            slow.close()
            garbage.close()
            assert rc == 0, f"gateway exited with {rc}:\n{gw.log_tail()}"


# -- backends ------------------------------------------------------------------------------


def test_backend_down_is_unavailable_fast(stack: Stack) -> None:
    sup = _gw_support()
    code, err, elapsed = stack.failure(sup.tool_request("down.get_balance", {"account": "A1"}))
    assert code == grpc.StatusCode.UNAVAILABLE, err
    assert err["code"] == "backend_unavailable", err
    assert err["trace_id"]
    assert elapsed < bound(DOWN_ATTEMPTS * DOWN_TIMEOUT_S), elapsed
    stack.assert_serving()


def test_backend_down_from_code_is_a_catchable_sdk_error(stack: Stack) -> None:
    sup = _gw_support()
    source = (
        "from sdk import down\n"
        "try:\n"
        "    down.get_balance(account='A1')\n"
        "    result = 'no error'\n"
        "except Exception as exc:\n"
        "    result = {'type': type(exc).__name__, 'code': getattr(exc, 'code', None)}\n"
    )
    resp = stack.execute(sup.code_request(source))
    assert resp.result.struct_value["code"] == "backend_unavailable", resp
    assert resp.host_calls == 1


def test_slow_backend_times_out_within_budget(stack: Stack) -> None:
    sup = _gw_support()
    code, err, elapsed = stack.failure(sup.tool_request("slow.get_balance", {"account": "A1"}))
    assert code == grpc.StatusCode.UNAVAILABLE, err
    assert err["code"] == "backend_unavailable", err
    assert "tim" in err["message"].lower(), err  # "timed out" / "timeout"
    # Order, not speed: both attempts reached the backend and the gateway gave up on them
    # before the backend answered either (it sleeps far longer than the bound below).
    assert stack.slow.hits["GET /accounts/A1/balance"] == SLOW_ATTEMPTS
    assert stack.slow.answered["GET /accounts/A1/balance"] == 0
    assert elapsed < bound(SLOW_ATTEMPTS * SLOW_TIMEOUT_S), elapsed
    stack.assert_serving()


def test_garbage_body_is_backend_error(stack: Stack) -> None:
    sup = _gw_support()
    code, err, elapsed = stack.failure(sup.tool_request("garbage.get_balance", {"account": "A1"}))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, err
    assert err["code"] == "backend_error", err
    assert err["message"]
    assert elapsed < bound(GARBAGE_TIMEOUT_S), elapsed
    stack.assert_serving()


def test_garbage_answer_to_a_payment_is_never_sent_twice(stack: Stack) -> None:
    """The backend took the POST (it answered 200, unreadably): a retry with the same request_id
    must not reach it again."""
    sup = _gw_support()
    rid = f"pay-{uuid.uuid4().hex}"
    args = {"from_account": "A1", "to_account": "A2", "amount": 1.5, "currency": "USD"}
    before = stack.garbage.hits["POST /transfers"]
    codes = []
    for _ in range(2):
        _status, err, elapsed = stack.failure(
            sup.tool_request("garbage.create_transfer", args, request_id=rid), token="dev-finance")
        codes.append(err["code"])
        assert elapsed < bound(GARBAGE_TIMEOUT_S), elapsed
    assert stack.garbage.hits["POST /transfers"] - before == 1
    assert codes[0] == "backend_error", codes
    assert codes[1] in {"backend_error", "outcome_unknown"}, codes


# -- audit exporter ------------------------------------------------------------------------


def test_audit_exporter_unreachable_calls_served_and_recorded_locally(stack: Stack) -> None:
    from gateway.audit import AuditSettings

    sup = _gw_support()
    # One export attempt against the dead collector lasts this long (retries included): a call
    # that waited for the exporter would take at least that. Not a speed bound — the calls
    # here take milliseconds even on a loaded machine.
    export_attempt_s = AuditSettings().otlp_timeout_s
    rids = []
    for _ in range(5):
        req = sup.tool_request("ledger.get_balance", {"account": "A2"})
        started = time.monotonic()
        resp = stack.execute(req)
        assert time.monotonic() - started < export_attempt_s
        assert resp.result.struct_value["account"] == "A2"
        rids.append(req.request_id)
    for rid in rids:
        recs = wait_for(lambda rid=rid: audit_records(stack.audit_file, rid), timeout=60.0)
        assert len(recs) == 1, rid
        assert recs[0]["attributes"]["switchboard.outcome"] == "ok"


# -- the sandbox ---------------------------------------------------------------------------


def _busiest_deno(pid: int, window: float = 0.4) -> int:
    pids = deno_descendants(pid)
    assert pids, "no Deno process under the gateway"
    before = {p: cpu_ticks(p) for p in pids}
    time.sleep(window)
    return max(pids, key=lambda p: cpu_ticks(p) - before[p])


class _Background:
    """One ExecuteStream on a thread, so the test can act while it runs; ``printed`` is set
    once the run's first stdout line arrived (the run is executing, not merely sent)."""

    def __init__(self, stack: Stack, req: Any, token: str, timeout: float) -> None:
        self.error: grpc.RpcError | None = None
        self.response: Any = None
        self.printed = threading.Event()

        def run() -> None:
            try:
                for event in stack.stub.ExecuteStream(
                        req, metadata=_gw_support().md(token), timeout=timeout):
                    kind = event.WhichOneof("event")
                    if kind == "stdout_line":
                        self.printed.set()
                    elif kind == "response":
                        self.response = event.response
            except grpc.RpcError as exc:
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def wait_printed(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.printed.wait(0.1):
            assert self.thread.is_alive(), f"the call ended first: {self.error or self.response}"
            assert time.monotonic() < deadline, "the run never started"

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the call hung"


def test_deno_worker_killed_mid_run_is_a_clear_error_and_recovers(stack: Stack) -> None:
    sup = _gw_support()
    stack.execute(sup.code_request("1 + 1"))  # the worker is warm
    # dev-patient's runs may last 10 minutes, far beyond the client deadline: a crash error
    # (not sandbox_timeout, not the client's DEADLINE_EXCEEDED) means the death itself was
    # noticed.
    call = _Background(stack, sup.code_request("print('looping', flush=True)\n"
                                                "while True:\n    pass\n"),
                       token="dev-patient", timeout=CLIENT_DEADLINE_S)
    call.wait_printed(scaled(120))  # the run is executing: now kill the process running it
    victim = _busiest_deno(stack.gw.pid, window=1.0)
    os.kill(victim, signal.SIGKILL)
    call.join(CLIENT_DEADLINE_S + 10)
    assert call.error is not None, f"a killed run returned {call.response}"
    err = sup.error_of(call.error)
    assert call.error.code() == grpc.StatusCode.INTERNAL, err
    assert err["code"] in {"sandbox_crashed", "sandbox_error"}, err
    # The dead process is reaped (no zombie left behind) and the pool serves again.
    assert wait_for(lambda: not os.path.exists(f"/proc/{victim}"), 60.0), "victim not reaped"
    resp = stack.execute(sup.code_request("sum(range(10))"))
    assert resp.result.number_value == 45
    assert victim not in deno_descendants(stack.gw.pid)
    stack.assert_serving()


def test_client_deadline_mid_run_is_audited_and_sandbox_recovers(stack: Stack) -> None:
    sup = _gw_support()
    req = sup.code_request("while True:\n    pass\n")
    with pytest.raises(grpc.RpcError) as info:
        stack.execute(req, timeout=1.0)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The call still leaves its record, marked as not completed.
    recs = wait_for(lambda: audit_records(stack.audit_file, req.request_id), timeout=60.0)
    assert len(recs) == 1, f"no audit record for the cancelled call:\n{stack.gw.log_tail()}"
    outcome = recs[0]["attributes"].get("switchboard.outcome")
    assert outcome in {"cancelled", "deadline_exceeded", "sandbox_timeout"}, recs[0]
    assert recs[0]["status"]["code"] == "ERROR"
    # The sandbox recovers: the next run is served normally (within the client deadline).
    resp = stack.execute(sup.code_request("'still here'"))
    assert resp.result.string_value == "still here"


def test_flood_of_runaway_code_is_contained(stack: Stack) -> None:
    """A burst of infinite loops, more than the pool holds: each ends in a clear error
    (its own time limit, or load shedding), none hangs, and the pool is whole afterwards."""
    sup = _gw_support()
    n = 6
    futures = [stack.stub.Execute.future(
        sup.code_request("while True:\n    pass\n", timeout_ms=300),
        metadata=sup.md("dev-agent"), timeout=CLIENT_DEADLINE_S) for _ in range(n)]
    codes = []
    for fut in futures:
        exc = fut.exception()
        assert exc is not None, f"a runaway loop returned {fut.result()}"
        err = sup.error_of(exc)
        codes.append(err.get("code"))
        assert exc.code() in {grpc.StatusCode.DEADLINE_EXCEEDED,
                              grpc.StatusCode.RESOURCE_EXHAUSTED}, (exc.code(), err)
    assert set(codes) <= {"sandbox_timeout", "resource_exhausted"}, codes
    assert codes.count("sandbox_timeout") >= 1, codes
    # Every run ended by its own limit or by shedding, none by the client's deadline (a
    # DEADLINE_EXCEEDED from the client carries no switchboard code and fails the check above).
    resp = stack.execute(sup.code_request("'calm again'"))
    assert resp.result.string_value == "calm again"
    assert len(deno_descendants(stack.gw.pid)) == 1  # workers: 1, nothing leaked


def test_stream_cancelled_mid_run_is_audited_and_sandbox_recovers(stack: Stack) -> None:
    """An agent that stops reading an ExecuteStream (cancels) after the first line."""
    sup = _gw_support()
    req = sup.code_request("print('started', flush=True)\nwhile True:\n    pass\n")
    call = stack.stub.ExecuteStream(req, metadata=sup.md("dev-agent"), timeout=CLIENT_DEADLINE_S)
    first = next(call)
    assert first.WhichOneof("event") == "stdout_line" and "started" in first.stdout_line, first
    call.cancel()
    with pytest.raises(grpc.RpcError) as info:
        next(call)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    recs = wait_for(lambda: audit_records_named(stack.audit_file, req.request_id,
                                                "switchboard.v1.Gateway/ExecuteStream"), 60.0)
    assert len(recs) == 1, f"no audit record for the cancelled stream:\n{stack.gw.log_tail()}"
    assert recs[0]["attributes"].get("switchboard.outcome") == "cancelled", recs[0]
    resp = stack.execute(sup.code_request("'after stream'"))
    assert resp.result.string_value == "after stream"


# -- the policy engine ---------------------------------------------------------------------


def test_opa_unreachable_fails_closed_fast_and_keeps_serving(
        backends: dict[str, Any], tmp_path: Path) -> None:
    sup = _gw_support()
    opa_timeout_s = 0.5
    with refused_port() as opa_port:
        config = {
            "listen": "127.0.0.1:0",
            "identity": {"tokens": TOKENS},
            "policy": {"engine": "opa", "opa_url": f"http://127.0.0.1:{opa_port}",
                       "timeout_ms": int(opa_timeout_s * 1000)},
            "backends": [
                {"name": name, "openapi": f"{svc.url}/openapi.json", "base_url": svc.url}
                for name, svc in backends.items()
            ],
            # Nothing runs in this gateway's sandbox (every call is denied): the smallest pool.
            "sandbox": {"workers": 1},
            "idempotency": {"dsn": f"sqlite:///{tmp_path / 'idempotency.db'}"},
            "audit": {"file": str(tmp_path / "audit.jsonl"), "log_format": "json"},
        }
        transfers_before = _ledger_transfers(backends["ledger"].url)
        gw = GatewayProcess(config, tmp_path / "gw")
        try:
            stub = pb_grpc.GatewayStub(gw.channel)
            requests = [
                ("dev-agent", sup.tool_request("ledger.get_balance", {"account": "A1"})),
                ("dev-finance", sup.tool_request(
                    "ledger.create_transfer",
                    {"from_account": "A1", "to_account": "A2", "amount": 1, "currency": "USD"})),
                ("dev-agent", sup.code_request("1 + 1")),
            ] * 3
            for token, req in requests:
                started = time.monotonic()
                with pytest.raises(grpc.RpcError) as info:
                    stub.Execute(req, metadata=sup.md(token), timeout=CLIENT_DEADLINE_S)
                err = sup.error_of(info.value)
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, err
                assert err["code"] == "policy_error", err
                assert time.monotonic() - started < bound(opa_timeout_s)
            assert gw.healthy()
        finally:
            rc = gw.stop()
        assert rc == 0, gw.log_tail()
        # Nothing reached the ledger: the denied transfers left no row (asked of the ledger
        # itself, before and after, so other tests' transfers and test order do not matter).
        assert _ledger_transfers(backends["ledger"].url) == transfers_before


def _ledger_transfers(url: str) -> list[dict[str, Any]]:
    """Every transfer from or to A1, as the demo ledger's own API lists them."""
    response = httpx.get(f"{url}/transfers", params={"account": "A1", "limit": 500},
                         timeout=scaled(10))
    response.raise_for_status()
    rows = response.json()
    assert isinstance(rows, list)
    return rows
