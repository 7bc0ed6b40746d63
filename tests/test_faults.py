"""Fault injection against the assembled gateway, run as a real ``switchboard serve`` process.

Backends that are down, slow or answer garbage; the OPA server unreachable; the audit exporter
unreachable; a Deno worker SIGKILLed mid-run; the client giving up mid-run. Every case must end
in a clear error (stable code, right gRPC status) or a correct result within a bounded time —
never a hang, a lost audit record or a second effect — and the gateway keeps serving.
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

from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(180)

TOKENS = {
    "dev-agent": {"id": "agent-1", "tenant": "demo", "roles": ["agent"]},
    "dev-finance": {"id": "finance-1", "tenant": "demo", "roles": ["agent", "finance"]},
}
EXECUTE = "switchboard.v1.Gateway/Execute"


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

    def execute(self, req: Any, token: str = "dev-agent", timeout: float = 30.0) -> Any:
        return self.stub.Execute(req, metadata=_gw_support().md(token), timeout=timeout)

    def failure(self, req: Any, token: str = "dev-agent", timeout: float = 30.0,
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
    slow = FaultyBackend("slow", delay_s=5.0)
    garbage = FaultyBackend("garbage")
    with refused_port() as down_port, refused_port() as otlp_port:
        policy = policy_copy(state / "policies", {"demo": {"backends": ["*"]}})
        config = {
            "listen": "127.0.0.1:0",
            "identity": {"tokens": TOKENS},
            "policy": {"engine": "embedded", "path": str(policy)},
            "backends": [
                {"name": name, "openapi": f"{svc.url}/openapi.json", "base_url": svc.url}
                for name, svc in backends.items()
            ] + [
                {"name": "down", "openapi": str(spec_file),
                 "base_url": f"http://127.0.0.1:{down_port}", "timeout_ms": 1000, "retries": 1},
                {"name": "slow", "openapi": f"{slow.url}/openapi.json", "base_url": slow.url,
                 "timeout_ms": 300, "retries": 1},
                {"name": "garbage", "openapi": f"{garbage.url}/openapi.json",
                 "base_url": garbage.url, "retries": 0},
            ],
            "sandbox": {"workers": 1, "spares": 1},
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
    assert elapsed < 10.0
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
    # 300 ms per attempt, one retry with backoff: far below the backend's 5 s sleep.
    assert elapsed < 4.0, elapsed
    assert stack.slow.hits["GET /accounts/A1/balance"] == 2
    stack.assert_serving()


def test_garbage_body_is_backend_error(stack: Stack) -> None:
    sup = _gw_support()
    code, err, elapsed = stack.failure(sup.tool_request("garbage.get_balance", {"account": "A1"}))
    assert code == grpc.StatusCode.FAILED_PRECONDITION, err
    assert err["code"] == "backend_error", err
    assert err["message"]
    assert elapsed < 5.0
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
        assert elapsed < 10.0
    assert stack.garbage.hits["POST /transfers"] - before == 1
    assert codes[0] == "backend_error", codes
    assert codes[1] in {"backend_error", "outcome_unknown"}, codes


# -- audit exporter ------------------------------------------------------------------------


def test_audit_exporter_unreachable_calls_served_and_recorded_locally(stack: Stack) -> None:
    sup = _gw_support()
    rids = []
    for _ in range(5):
        req = sup.tool_request("ledger.get_balance", {"account": "A2"})
        started = time.monotonic()
        resp = stack.execute(req, timeout=10.0)
        assert time.monotonic() - started < 2.0
        assert resp.result.struct_value["account"] == "A2"
        rids.append(req.request_id)
    for rid in rids:
        recs = wait_for(lambda rid=rid: audit_records(stack.audit_file, rid), timeout=10.0)
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
    """One blocking Execute on a thread, so the test can act while it runs."""

    def __init__(self, stack: Stack, req: Any, timeout: float) -> None:
        self.error: grpc.RpcError | None = None
        self.response: Any = None
        self.elapsed = 0.0

        def run() -> None:
            started = time.monotonic()
            try:
                self.response = stack.execute(req, timeout=timeout)
            except grpc.RpcError as exc:
                self.error = exc
            self.elapsed = time.monotonic() - started

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the call hung"


def test_deno_worker_killed_mid_run_is_a_clear_error_and_recovers(stack: Stack) -> None:
    sup = _gw_support()
    stack.execute(sup.code_request("1 + 1"))  # the worker is warm
    call = _Background(stack, sup.code_request("while True:\n    pass\n"), timeout=30.0)
    time.sleep(1.0)
    victim = _busiest_deno(stack.gw.pid)
    os.kill(victim, signal.SIGKILL)
    call.join(20.0)
    assert call.error is not None, f"a killed run returned {call.response}"
    err = sup.error_of(call.error)
    assert call.error.code() == grpc.StatusCode.INTERNAL, err
    assert err["code"] in {"sandbox_crashed", "sandbox_error"}, err
    assert call.elapsed < 5.0  # not the 5 s policy timeout: the death itself was noticed
    # The dead process is reaped (no zombie left behind) and the pool serves again.
    assert wait_for(lambda: not os.path.exists(f"/proc/{victim}"), 10.0), "victim not reaped"
    resp = stack.execute(sup.code_request("sum(range(10))"), timeout=60.0)
    assert resp.result.number_value == 45
    assert victim not in deno_descendants(stack.gw.pid)
    stack.assert_serving()


def test_client_deadline_mid_run_is_audited_and_sandbox_recovers(stack: Stack) -> None:
    sup = _gw_support()
    req = sup.code_request("while True:\n    pass\n")
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        stack.execute(req, timeout=1.0)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3.0
    # The call still leaves its record, marked as not completed.
    recs = wait_for(lambda: audit_records(stack.audit_file, req.request_id), timeout=10.0)
    assert len(recs) == 1, f"no audit record for the cancelled call:\n{stack.gw.log_tail()}"
    outcome = recs[0]["attributes"].get("switchboard.outcome")
    assert outcome in {"cancelled", "deadline_exceeded", "sandbox_timeout"}, recs[0]
    assert recs[0]["status"]["code"] == "ERROR"
    # The sandbox recovers: the next run is served normally, in bounded time.
    started = time.monotonic()
    resp = stack.execute(sup.code_request("'still here'"), timeout=30.0)
    assert resp.result.string_value == "still here"
    assert time.monotonic() - started < 20.0


def test_flood_of_runaway_code_is_contained(stack: Stack) -> None:
    """A burst of infinite loops, more than the pool holds: each ends in a clear error
    (its own time limit, or load shedding), none hangs, and the pool is whole afterwards."""
    sup = _gw_support()
    n = 6
    futures = [stack.stub.Execute.future(
        sup.code_request("while True:\n    pass\n", timeout_ms=300),
        metadata=sup.md("dev-agent"), timeout=90.0) for _ in range(n)]
    started = time.monotonic()
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
    assert time.monotonic() - started < 80.0
    resp = stack.execute(sup.code_request("'calm again'"), timeout=60.0)
    assert resp.result.string_value == "calm again"
    assert len(deno_descendants(stack.gw.pid)) == 1  # workers: 1, nothing leaked


def test_stream_cancelled_mid_run_is_audited_and_sandbox_recovers(stack: Stack) -> None:
    """An agent that stops reading an ExecuteStream (cancels) after the first line."""
    sup = _gw_support()
    req = sup.code_request("print('started', flush=True)\nwhile True:\n    pass\n")
    call = stack.stub.ExecuteStream(req, metadata=sup.md("dev-agent"), timeout=30.0)
    started = time.monotonic()
    first = next(call)
    assert first.WhichOneof("event") == "stdout_line" and "started" in first.stdout_line, first
    call.cancel()
    with pytest.raises(grpc.RpcError) as info:
        next(call)
    assert info.value.code() == grpc.StatusCode.CANCELLED
    assert time.monotonic() - started < 10.0
    recs = wait_for(lambda: audit_records_named(stack.audit_file, req.request_id,
                                                "switchboard.v1.Gateway/ExecuteStream"), 10.0)
    assert len(recs) == 1, f"no audit record for the cancelled stream:\n{stack.gw.log_tail()}"
    assert recs[0]["attributes"].get("switchboard.outcome") == "cancelled", recs[0]
    resp = stack.execute(sup.code_request("'after stream'"), timeout=30.0)
    assert resp.result.string_value == "after stream"


# -- the policy engine ---------------------------------------------------------------------


def test_opa_unreachable_fails_closed_fast_and_keeps_serving(
        backends: dict[str, Any], tmp_path: Path) -> None:
    sup = _gw_support()
    with refused_port() as opa_port:
        config = {
            "listen": "127.0.0.1:0",
            "identity": {"tokens": TOKENS},
            "policy": {"engine": "opa", "opa_url": f"http://127.0.0.1:{opa_port}",
                       "timeout_ms": 500},
            "backends": [
                {"name": name, "openapi": f"{svc.url}/openapi.json", "base_url": svc.url}
                for name, svc in backends.items()
            ],
            # Nothing runs in this gateway's sandbox (every call is denied): the smallest pool.
            "sandbox": {"workers": 1, "spares": 0},
            "idempotency": {"dsn": f"sqlite:///{tmp_path / 'idempotency.db'}"},
            "audit": {"file": str(tmp_path / "audit.jsonl"), "log_format": "json"},
        }
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
                    stub.Execute(req, metadata=sup.md(token), timeout=10.0)
                err = sup.error_of(info.value)
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, err
                assert err["code"] == "policy_error", err
                assert time.monotonic() - started < 2.0
            assert gw.healthy()
        finally:
            rc = gw.stop()
        assert rc == 0, gw.log_tail()
        # Nothing reached the ledger: the denied transfer left no row.
        import sqlite3

        db = Path(backends["ledger"].proc.args[-1])
        with sqlite3.connect(db) as conn:
            n = conn.execute("SELECT COUNT(*) FROM transfers WHERE memo IS NULL "
                             "AND amount_cents = 100 AND from_account = 'A1'").fetchone()[0]
        assert n == 0
