"""Several replicas, one truth: three real ``switchboard serve`` processes share one idempotency
store (PostgreSQL, then Redis) in front of the real demo ledger, which records but does not
deduplicate ``Idempotency-Key``. Concurrent transfers are spread round-robin across them; one
replica is SIGKILLed while its calls sleep between the ledger's commit and its response; every
call the client got no answer for is retried (same request_id) against the survivors until it
resolves. Then the ledger holds exactly one transfer per request_id, each retry of a completed
request answers the recorded outcome (``replayed``), and each replica's own audit file verifies
and shows traces with ``switchboard audit verify|show`` across all three files.

Where the doomed replica runs decides how the survivors learn that its claims are orphaned:

- ``same-node``: its owner id names a pid on this host and PID namespace, so a survivor sees at
  once that the process is gone and takes the claim over;
- ``other-node`` (as in a cluster, where each pod has its own PID namespace): it runs under
  ``unshare --pid``, its liveness is unknowable to the survivors, and its claims block retries
  (``duplicate_in_flight``, ``retry_after_s``) until their lease (``lease_s``) runs out.

Nothing here measures time: waits are on conditions, deadlines only turn a hang into a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tools_support import ROOT, Ledger, postgres_server, redis_server, run_ledger
from waiting import scaled, wait_for_listening

from gateway.client import SwitchboardClient
from gateway.client_types import SwitchboardError
from gateway.models import Principal
from gateway.tools import idempotency_key

pytestmark = pytest.mark.timeout(600)

REPLICAS = 3
LEASE_S = 4.0  # the claim lease: how long a dead replica on another node blocks its requests
WARMUP = 6  # answered before the kill: every replica, the doomed one too, has finished calls
CONCURRENT = 24  # in flight when one replica dies
DELAY_MS = 2000  # the ledger sleeps this long after committing, before it responds
TOKEN = "dev-finance"
FINANCE = Principal(id="finance-1", tenant="demo", roles=("agent", "finance"))
# Codes that mean "no outcome for you yet, ask again with the same request_id".
RETRYABLE = {"unavailable", "deadline_exceeded", "cancelled", "outcome_unknown",
             "duplicate_in_flight", "backend_unavailable", "internal", "unknown"}


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[str]
    audit: Path
    log: Path
    isolated: bool = False  # in a PID namespace of its own (another node, as far as ids go)
    target: str = ""


@dataclass
class Answer:
    rid: str
    replica: str
    result: dict[str, Any] | None = None  # the transfer, when the call resolved
    replayed: bool = False
    trace_id: str = ""
    code: str = ""  # the error code when it did not
    retry_after_s: float = 0.0

    @property
    def retryable(self) -> bool:
        return self.result is None and self.code in RETRYABLE


def call(replica: Replica, rid: str, args: dict[str, Any]) -> Answer:
    """One ``ledger.create_transfer`` as the finance principal; no client-side retries."""
    try:
        with SwitchboardClient(replica.target, TOKEN, retries=0) as client:
            r = client.call_tool("ledger.create_transfer", args, request_id=rid,
                                 timeout=scaled(60))
    except SwitchboardError as exc:
        after = exc.details.get("retry_after_s", 0.0)
        return Answer(rid, replica.name, code=exc.code,
                      retry_after_s=float(after) if isinstance(after, int | float) else 0.0)
    if not r.ok:
        return Answer(rid, replica.name, code=str((r.error or {}).get("code", r.route)),
                      trace_id=r.trace_id)
    assert isinstance(r.result, dict), r
    return Answer(rid, replica.name, r.result, r.replayed, r.trace_id)


def until_resolved(replicas: list[Replica], rid: str, args: dict[str, Any], *, start: int,
                   deadline: float) -> list[Answer]:
    """Retry ``rid`` against ``replicas`` (round-robin from ``start``) until it resolves;
    every answer in order. Retryable answers back off (the server's ``retry_after_s``, capped)."""
    answers: list[Answer] = []
    backoff = 0.1
    for n in range(10_000):
        answer = call(replicas[(start + n) % len(replicas)], rid, args)
        answers.append(answer)
        if not answer.retryable:
            return answers
        assert time.monotonic() < deadline, f"{rid} never resolved: {answers}"
        time.sleep(min(max(backoff, answer.retry_after_s), 2.0))
        backoff = min(backoff * 2, 1.0)
    raise AssertionError("unreachable")


def ledger_rows(ledger: Ledger) -> list[dict[str, Any]]:
    """Every transfer, through the ledger's own API (``GET /transfers``)."""
    got = httpx.get(f"{ledger.url}/transfers", params={"limit": 500}, timeout=scaled(30))
    got.raise_for_status()
    rows: list[dict[str, Any]] = got.json()
    return rows


def rows_by_key(ledger: Ledger) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in ledger_rows(ledger):
        out.setdefault(row["idempotency_key"] or "", []).append(row)
    return out


def wait_for(what: str, predicate: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + scaled(timeout)
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ---------------------------------------------------------------- the replicas


def write_config(path: Path, *, ledger: Ledger, dsn: str, audit: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:0",
        "identity": {"tokens": {TOKEN: {"id": FINANCE.id, "tenant": FINANCE.tenant,
                                        "roles": list(FINANCE.roles)}}},
        "backends": [{"name": "ledger", "openapi": f"{ledger.url}/openapi.json",
                      "base_url": ledger.url, "timeout_ms": 10_000, "retries": 0}],
        "idempotency": {"dsn": dsn, "lease_s": LEASE_S},
        "audit": {"file": str(audit), "log_format": "json"},
        "sandbox": {"workers": 1},
    }))
    return path


def other_node() -> list[str]:
    """A command prefix that runs a process in a PID namespace of its own (as another pod or
    node would be): ``unshare``, with a user namespace when not root."""
    unshare = shutil.which("unshare")
    assert unshare, "the other-node case needs util-linux's `unshare`"
    prefix = [unshare, "--pid", "--fork", "--mount-proc", "--kill-child"]
    if os.geteuid() != 0:
        prefix[1:1] = ["--user", "--map-root-user"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True)
    assert probe.returncode == 0, f"cannot make a PID namespace: {probe.stderr}"
    return prefix


def kill_gateway(rep: Replica) -> None:
    """SIGKILL the gateway process itself (under ``unshare``, its child: the namespace's init,
    whose death takes everything in the namespace with it)."""
    pid = rep.proc.pid
    if rep.isolated:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        assert len(children) == 1, children
        pid = int(children[0])
    os.kill(pid, signal.SIGKILL)
    rep.proc.wait(scaled(30))


@contextlib.contextmanager
def replicas(tmp: Path, ledger: Ledger, dsn: str, *,
             isolate_first: bool) -> Iterator[list[Replica]]:
    """Start ``REPLICAS`` gateways at once (each on its own OS-chosen port, with its own audit
    file; the first in its own PID namespace if ``isolate_first``) and wait for each to
    announce its address; always stop them all."""
    started: list[Replica] = []
    try:
        for i in range(REPLICAS):
            name = f"replica-{i}"
            audit, log = tmp / f"audit-{name}.jsonl", tmp / f"{name}.log"
            config = write_config(tmp / f"{name}.yaml", ledger=ledger, dsn=dsn, audit=audit)
            isolated = isolate_first and i == 0
            proc = subprocess.Popen(
                [*(other_node() if isolated else []),
                 sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
                stdout=subprocess.PIPE, stderr=log.open("w"), stdin=subprocess.DEVNULL,
                text=True, cwd=ROOT)
            started.append(Replica(name, proc, audit, log, isolated))
        for rep in started:
            rep.target = wait_for_listening(rep.proc, rep.log, rep.name)
        yield started
    finally:
        for rep in started:
            if rep.proc.poll() is None:
                rep.proc.terminate()
        for rep in started:
            try:
                rep.proc.wait(scaled(60))
            except subprocess.TimeoutExpired:
                rep.proc.kill()
                rep.proc.wait()



# ---------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    with run_ledger(tmp_path_factory.mktemp("ledger") / "ledger.db",
                    respond_delay_ms=DELAY_MS) as running:
        yield running


@pytest.fixture
def store_dsn(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh shared store; no server found is an error (the dev extra installs both)."""
    server = postgres_server if request.param == "postgres" else redis_server
    with server() as dsn:
        yield dsn


# Each store with one placement of the doomed replica (both placements would double the run).
CASES = [pytest.param("postgres", "other-node", id="postgres-other-node"),
         pytest.param("redis", "same-node", id="redis-same-node")]


def switchboard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=scaled(120), stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("store_dsn", "placement"), CASES, indirect=["store_dsn"])
def test_three_replicas_one_store_one_killed_every_transfer_once(
        ledger: Ledger, store_dsn: str, placement: str, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    rids = [f"rep-{run}-{i:02d}" for i in range(WARMUP + CONCURRENT)]
    args = {rid: {"from_account": "A1", "to_account": "A2", "amount": 0.01 * (1 + i % 7),
                  "currency": "USD", "memo": rid} for i, rid in enumerate(rids)}
    key = {rid: idempotency_key(FINANCE, rid) for rid in rids}
    before = len(ledger_rows(ledger))
    first: dict[str, Answer] = {}

    with replicas(tmp_path, ledger, store_dsn, isolate_first=placement == "other-node") as reps, \
            ThreadPoolExecutor(max_workers=CONCURRENT) as pool:
        doomed, survivors = reps[0], reps[1:]

        # 1. warm-up: every replica completes a few transfers (the doomed one's are in its file)
        warm = {rid: pool.submit(call, reps[i % REPLICAS], rid, args[rid])
                for i, rid in enumerate(rids[:WARMUP])}
        for rid, fut in warm.items():
            first[rid] = fut.result(scaled(120))
            assert first[rid].result is not None and not first[rid].replayed, first[rid]

        # 2. concurrent transfers round-robin; SIGKILL the doomed replica once some of its
        # calls are committed at the ledger but not yet answered (the ledger is sleeping)
        wave = rids[WARMUP:]
        futures: dict[str, Future[Answer]] = {
            rid: pool.submit(call, reps[i % REPLICAS], rid, args[rid])
            for i, rid in enumerate(wave)}
        mine = [rid for i, rid in enumerate(wave) if i % REPLICAS == 0]

        def committed_unanswered() -> list[str]:
            rows = rows_by_key(ledger)
            found = [rid for rid in mine if key[rid] in rows and not futures[rid].done()]
            return found if len(found) >= 2 else []

        caught = wait_for("the doomed replica's transfers to commit", committed_unanswered, 120)
        kill_gateway(doomed)
        for rid, fut in futures.items():
            first[rid] = fut.result(scaled(120))
        lost = [rid for rid in rids if first[rid].result is None]
        # (one of them may have been answered in the instant between the look and the kill)
        caught = [rid for rid in caught if rid in lost]
        assert caught, "the killed replica answered every call it was killed in"
        for rid in lost:
            assert first[rid].retryable, first[rid]  # e.g. unavailable: no outcome, no verdict

        # 3. every call without an outcome is retried against the survivors until it resolves
        deadline = time.monotonic() + scaled(120)
        retried = {rid: pool.submit(until_resolved, survivors, rid, args[rid], start=i,
                                    deadline=deadline) for i, rid in enumerate(lost)}
        final = dict(first)
        for rid, fut in retried.items():
            answers = fut.result(scaled(180))
            final[rid] = answers[-1]
            assert final[rid].result is not None, answers

        # 4. the ledger holds exactly one transfer per request_id, and it is the one answered
        rows = rows_by_key(ledger)
        assert len(ledger_rows(ledger)) - before == len(rids)  # nothing applied twice
        for rid in rids:
            assert len(rows.get(key[rid], [])) == 1, (rid, rows.get(key[rid]))
            got = final[rid].result
            assert got is not None and got["id"] == rows[key[rid]][0]["id"], (rid, got)
        for rid in caught:  # committed before the kill: the retry reports that transfer
            assert final[rid].replayed, final[rid]

        # 5. every completed request asked again, on a survivor other than the one that
        # answered: the recorded outcome, replayed, from the shared store
        again = {rid: pool.submit(call, next(r for r in survivors if r.name != final[rid].replica),
                                  rid, args[rid]) for rid in rids}
        for rid, fut in again.items():
            answer = fut.result(scaled(120))
            assert answer.result == final[rid].result and answer.replayed, (rid, answer)
        rows_after = rows_by_key(ledger)
        assert all(len(rows_after[key[rid]]) == 1 for rid in rids)

        # the replay trace ids, for the audit check below
        survivor_trace = next(a for a in (final[rid] for rid in lost) if a.trace_id)
        doomed_trace = next(first[rid] for rid in rids[:WARMUP]
                            if first[rid].replica == doomed.name)

    # 6. audit: each replica wrote its own chain (the killed one's ends at its last record);
    # `audit verify` checks each of the three files, `audit show` finds a trace in any
    files = [str(rep.audit) for rep in reps]
    verified = switchboard("audit", "verify", *files)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.count("OK: ") == REPLICAS
    assert verified.stdout.splitlines()[-1] == f"{REPLICAS} of {REPLICAS} audit files intact"
    for answer in (survivor_trace, doomed_trace):
        shown = switchboard("audit", "show", answer.trace_id, *files)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith(f"trace {answer.trace_id}")
        assert answer.rid in shown.stdout and "ledger.create_transfer" in shown.stdout
    shown = switchboard("audit", "show", doomed_trace.trace_id, str(tmp_path))  # a directory
    assert shown.returncode == 0 and doomed_trace.rid in shown.stdout
    alone = switchboard("audit", "show", doomed_trace.trace_id, files[1], files[2])
    assert alone.returncode == 1 and "no audit records" in alone.stderr
