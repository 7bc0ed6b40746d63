"""``switchboard serve --processes 2``: two real gateway processes on one port under the
supervisor, one SQLite idempotency file, the real demo ledger (which records but does not
deduplicate ``Idempotency-Key``).

* every child serves (new connections are spread by the kernel: SO_REUSEPORT);
* concurrent retries of one POST, each on a connection of its own and so landing on both
  children, take effect once: one transfer at the ledger, every answer is that transfer;
* each child writes its own audit file, and ``audit verify`` passes over all of them;
* a code session stays with its channel; a run for it over a new connection that lands on the
  other child fails with ``session_elsewhere`` and runs nothing (docs/deploy.md);
* SIGTERM to the supervisor drains and stops every child; a child that dies is restarted.

Nothing here measures time: waits are on conditions, deadlines only turn a hang into a failure.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tools_support import ROOT, Ledger, run_ledger
from waiting import scaled, wait_for_listening, wait_until_sync

from gateway.client import SwitchboardClient
from gateway.client_types import SwitchboardError
from gateway.models import Principal
from gateway.tools import idempotency_key

pytestmark = pytest.mark.timeout(600)

TOKEN_FIN, TOKEN_AGENT = "dev-finance", "dev-agent"
FINANCE = Principal(id="finance-1", tenant="demo", roles=("agent", "finance"))
RETRYABLE = {"unavailable", "duplicate_in_flight", "outcome_unknown", "deadline_exceeded"}


def wait_for(what: str, predicate: Callable[[], Any], timeout: float) -> Any:
    return wait_until_sync(predicate, timeout, what=what)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    # The ledger sleeps after committing, so concurrent retries overlap the first attempt.
    with run_ledger(tmp_path_factory.mktemp("ledger") / "ledger.db",
                    respond_delay_ms=300) as running:
        yield running


class Gateway:
    def __init__(self, tmp: Path, ledger: Ledger) -> None:
        self.tmp = tmp
        self.audit = tmp / "audit" / "audit.jsonl"
        self.audit.parent.mkdir()
        config = tmp / "gateway.yaml"
        config.write_text(yaml.safe_dump({
            "listen": "127.0.0.1:0",
            "server": {"processes": 2},
            "identity": {"tokens": {
                TOKEN_FIN: {"id": FINANCE.id, "tenant": FINANCE.tenant,
                            "roles": list(FINANCE.roles)},
                TOKEN_AGENT: {"id": "agent-1", "tenant": "demo", "roles": ["agent"]}}},
            "backends": [{"name": "ledger", "openapi": f"{ledger.url}/openapi.json",
                          "base_url": ledger.url, "timeout_ms": 10_000, "retries": 0}],
            "idempotency": {"dsn": f"sqlite:///{tmp / 'idempotency.db'}"},
            "audit": {"file": str(self.audit), "log_format": "json"},
            "sandbox": {"workers": 1},
        }))
        self.log = tmp / "serve.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
            stdout=subprocess.PIPE, stderr=self.log.open("w"), stdin=subprocess.DEVNULL,
            text=True, cwd=ROOT)
        self.target = wait_for_listening(self.proc, self.log)

    def files(self) -> list[Path]:
        return sorted(self.audit.parent.glob("audit.*.jsonl"))

    def children(self) -> list[int]:
        text = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return [int(p) for p in text.split()]

    def served_by(self, trace_id: str) -> Path | None:
        """The audit file (so the child) that holds this call's root record."""
        for path in self.files():
            if trace_id in path.read_text():
                return path
        return None


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, ledger: Ledger) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("serve-processes"), ledger)
    try:
        yield gw
    finally:
        if gw.proc.poll() is None:
            gw.proc.send_signal(signal.SIGTERM)
        try:
            gw.proc.wait(scaled(120))
        except subprocess.TimeoutExpired:
            gw.proc.kill()
            gw.proc.wait()


def _read_on_new_connection(gw: Gateway) -> Path | None:
    with SwitchboardClient(gw.target, TOKEN_AGENT, retries=0) as client:
        r = client.call_tool("ledger.get_balance", {"account": "A1"})
    assert r.ok, r
    return wait_for("the call's audit record", lambda: gw.served_by(r.trace_id), 30)


def test_two_children_one_port_each_with_its_own_audit_file(gateway: Gateway) -> None:
    assert len(gateway.children()) == 2
    seen: set[Path] = set()
    for _ in range(200):  # new connections until both children have answered
        found = _read_on_new_connection(gateway)
        assert found is not None
        seen.add(found)
        if len(seen) == 2:
            break
    assert {p.name for p in seen} == {"audit.0.jsonl", "audit.1.jsonl"}


def _transfer(gw: Gateway, rid: str, args: dict[str, Any]) -> tuple[dict[str, Any] | None,
                                                                    str, str]:
    try:
        with SwitchboardClient(gw.target, TOKEN_FIN, retries=0) as client:
            r = client.call_tool("ledger.create_transfer", args, request_id=rid, timeout=60)
    except SwitchboardError as exc:
        return None, exc.code, ""
    assert r.ok, r
    assert isinstance(r.result, dict)
    return r.result, "", r.trace_id


def _until_resolved(gw: Gateway, rid: str, args: dict[str, Any]) -> tuple[dict[str, Any], str]:
    deadline = time.monotonic() + scaled(120)
    while True:
        result, code, trace_id = _transfer(gw, rid, args)
        if result is not None:
            return result, trace_id
        assert code in RETRYABLE, code
        assert time.monotonic() < deadline, f"{rid} never resolved ({code})"
        time.sleep(0.1)


def test_concurrent_retries_across_children_take_effect_once(gateway: Gateway,
                                                             ledger: Ledger) -> None:
    rid = f"mp-{uuid.uuid4().hex[:8]}"
    args = {"from_account": "A1", "to_account": "A2", "amount": 0.25, "currency": "USD",
            "memo": rid}
    key = idempotency_key(FINANCE, rid)
    with ThreadPoolExecutor(max_workers=12) as pool:
        answers = list(pool.map(lambda _: _until_resolved(gateway, rid, args), range(12)))
    rows = [r for r in httpx.get(f"{ledger.url}/transfers", params={"limit": 500},
                                 timeout=30).json() if r["idempotency_key"] == key]
    assert len(rows) == 1, rows  # applied once, whichever child each retry reached
    assert {a[0]["id"] for a in answers} == {rows[0]["id"]}
    served = {wait_for("audit record", lambda t=t: gateway.served_by(t), 30)
              for _, t in answers}
    # With 12 connections both children almost surely answered some; when the kernel put all
    # on one, retry on fresh connections until the other child replays the outcome too.
    for _ in range(200):
        if len(served) == 2:
            break
        _, t = _until_resolved(gateway, rid, args)
        served.add(wait_for("audit record", lambda t=t: gateway.served_by(t), 30))
    assert len(served) == 2


def test_a_session_stays_on_its_channel_and_is_elsewhere_on_the_other_child(
        gateway: Gateway) -> None:
    session = f"s-{uuid.uuid4().hex[:6]}"
    with SwitchboardClient(gateway.target, TOKEN_AGENT, retries=0) as held:
        r = held.run_code("total = 40\ntotal", session_id=session, timeout=120)
        assert r.ok and r.result == 40, r
        home = wait_for("audit record", lambda: gateway.served_by(r.trace_id), 30)
        elsewhere = None
        for _ in range(200):  # new connections until one lands on the other child
            # (a local subchannel pool: else gRPC would reuse the held channel's connection)
            with SwitchboardClient(gateway.target, TOKEN_AGENT, retries=0,
                                   options=[("grpc.use_local_subchannel_pool", 1)]) as other:
                try:
                    got = other.run_code("total + 1", session_id=session, timeout=120)
                except SwitchboardError as exc:
                    elsewhere = exc
                    break
                assert got.ok and got.result == 41, got  # the same child: same interpreter
                where = wait_for("audit record", lambda g=got: gateway.served_by(g.trace_id), 30)
                assert where == home, (where, home)
        assert elsewhere is not None and elsewhere.code == "session_elsewhere", elsewhere
        # The holding channel still reaches its interpreter, state intact.
        r = held.run_code("total + 2", session_id=session, timeout=120)
        assert r.ok and r.result == 42, r
        assert gateway.served_by(r.trace_id) == home


def test_a_dead_child_is_restarted_and_every_audit_file_verifies(gateway: Gateway) -> None:
    before = gateway.children()
    os.kill(before[1], signal.SIGKILL)
    wait_for("a new child", lambda: len(set(gateway.children()) - set(before)) == 1 and
             len(gateway.children()) == 2, 120)
    seen: set[Path] = set()

    def both_answer() -> bool:  # the port answers on both children once the new one listens
        found = _read_on_new_connection(gateway)
        assert found is not None
        seen.add(found)
        return len(seen) == 2

    wait_for("the restarted child to answer", both_answer, 240)
    gateway.proc.send_signal(signal.SIGTERM)
    assert gateway.proc.wait(scaled(120)) == 0
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify",
                          str(gateway.audit.parent)], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 of 2 audit files intact" in out.stdout, out.stdout
    for path in gateway.files():  # every line is a record of the chain
        for line in path.read_text().splitlines():
            json.loads(line)
