"""Exactly-once against the real demo ledger (a subprocess that records but does not dedupe
Idempotency-Key), including the acceptance test: kill the gateway between the ledger's commit
and its response, restart, retry the same request_id, find exactly one transfer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tools_support import (
    CREATE_TRANSFER,
    LIST_TRANSFERS,
    PRINCIPAL,
    ROOT,
    Ledger,
    run_ledger,
)
from waiting import scaled

from gateway.errors import BackendError
from gateway.models import BackendSettings
from gateway.tools import BackendClient, IdempotencySettings, Reconciler, ToolChannel
from gateway.tools import idempotency_key as key_for
from gateway.tools.sqlite_store import SQLiteIdempotencyStore

DELAY_MS = 1500


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ledger]:
    with run_ledger(tmp_path_factory.mktemp("ledger") / "ledger.db",
                    respond_delay_ms=DELAY_MS) as running:
        yield running


def gateway_cmd(ledger: Ledger, store: Path, rid: str, args: dict[str, Any],
                reconcile: bool) -> list[str]:
    cmd = [sys.executable, str(ROOT / "tests" / "tools_support.py"), "call",
           "--ledger", ledger.url, "--store", str(store), "--request-id", rid,
           "--arguments", json.dumps(args)]
    return [*cmd, "--reconcile"] if reconcile else cmd


def outcome(proc_out: str) -> dict[str, Any]:
    line = next(x for x in proc_out.splitlines() if x.startswith("OUTCOME "))
    out: dict[str, Any] = json.loads(line[len("OUTCOME "):])
    return out


def rows_for(ledger: Ledger, key: str) -> list[dict[str, Any]]:
    return [r for r in ledger.transfers() if r["idempotency_key"] == key]


@pytest.mark.parametrize("reconcile", [True, False], ids=["reconciled", "no-lookup"])
def test_kill_after_commit_before_response_then_retry(ledger: Ledger, tmp_path: Path,
                                                      reconcile: bool) -> None:
    rid = f"kill-{uuid.uuid4()}"
    key = key_for(PRINCIPAL, rid)
    args = {"from_account": "A1", "to_account": "A2", "amount": 1.25, "currency": "USD",
            "memo": rid[:40]}
    store = tmp_path / "state" / "idempotency.db"
    first = subprocess.Popen(gateway_cmd(ledger, store, rid, args, reconcile),
                             stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + scaled(120)
    while not rows_for(ledger, key):  # the ledger committed the transfer...
        assert first.poll() is None, "the gateway finished before it could be killed"
        assert time.monotonic() < deadline, "the transfer never reached the ledger"
        time.sleep(0.02)
    assert first.poll() is None  # ...and is still sleeping before its response
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert first.stdout is not None and "OUTCOME" not in first.stdout.read()

    retry = subprocess.run(gateway_cmd(ledger, store, rid, args, reconcile),
                           capture_output=True, text=True, cwd=tmp_path, timeout=scaled(180))
    out = outcome(retry.stdout)
    rows = rows_for(ledger, key)
    assert len(rows) == 1  # exactly one transfer, whatever the retry reports
    if reconcile:
        assert out["replayed"] is True
        assert out["result"]["id"] == rows[0]["id"] and out["result"]["amount"] == 1.25
        again = subprocess.run(gateway_cmd(ledger, store, rid, args, reconcile),
                               capture_output=True, text=True, cwd=tmp_path, timeout=scaled(180))
        assert outcome(again.stdout)["result"] == out["result"]
    else:
        assert out["error"]["code"] == "outcome_unknown"
        assert out["error"]["field"] == "request_id"
    assert len(rows_for(ledger, key)) == 1


async def test_concurrent_duplicates_against_ledger_one_transfer(ledger: Ledger,
                                                                 tmp_path: Path) -> None:
    client = BackendClient({"ledger": BackendSettings(name="ledger", base_url=ledger.url)})
    store = SQLiteIdempotencyStore(tmp_path / "idem.db")
    channel = ToolChannel(client, store, settings=IdempotencySettings(wait_s=10),
                          reconcilers={CREATE_TRANSFER.name: Reconciler(LIST_TRANSFERS)})
    rid = f"dup-{uuid.uuid4()}"
    args = {"from_account": "A2", "to_account": "A1", "amount": 2, "currency": "USD"}
    try:
        before = {r["id"] for r in ledger.transfers()}
        outs = await asyncio.gather(*(
            channel.execute(CREATE_TRANSFER, args, request_id=rid, principal=PRINCIPAL,
                            strict=True) for _ in range(10)))
        new = [r for r in ledger.transfers() if r["id"] not in before]
        assert len(new) == 1 and new[0]["idempotency_key"] == key_for(PRINCIPAL, rid)
        assert {o.result["id"] for o in outs} == {new[0]["id"]}
        assert sum(not o.replayed for o in outs) == 1

        # a definitive 4xx (insufficient funds) is recorded and replayed, not re-sent
        poor = {"from_account": "A3", "to_account": "A1", "amount": 999_999, "currency": "USD"}
        errors = []
        for _ in range(2):
            with pytest.raises(BackendError) as exc:
                await channel.execute(CREATE_TRANSFER, poor, request_id=f"{rid}-poor",
                                      principal=PRINCIPAL, strict=True)
            errors.append(exc.value)
        assert errors[0].details["status"] == 409 and "insufficient" in errors[0].message
        assert errors[1].message == errors[0].message and errors[1].details["replayed"]
    finally:
        await client.aclose()
        await store.aclose()


async def test_catalog_operations_end_to_end(ledger: Ledger, tmp_path: Path) -> None:
    """The catalog's own operations (from the ledger's /openapi.json) work through the channel:
    request building, strict validation, the declared output schema, reconciler discovery."""
    from gateway.catalog import load_catalog
    from gateway.errors import SchemaInvalid
    from gateway.tools import discover_reconcilers

    settings = BackendSettings(name="ledger", openapi=f"{ledger.url}/openapi.json",
                               base_url=ledger.url)
    catalog = await load_catalog([settings])
    create = catalog.require("ledger.create_transfer")
    found = discover_reconcilers(catalog.operations)
    assert found["ledger.create_transfer"].operation.name == "ledger.list_transfers"
    client = BackendClient({"ledger": settings})
    store = SQLiteIdempotencyStore(tmp_path / "idem.db")
    channel = ToolChannel(client, store, reconcilers=found)

    async def transfer(rid: str, **args: Any) -> Any:
        return await channel.execute(create, args, request_id=rid, principal=PRINCIPAL,
                                     strict=True)

    try:
        with pytest.raises(SchemaInvalid) as bad:
            await transfer("neg", from_account="A1", to_account="A2", amount=-5)
        assert bad.value.message == "arguments.amount: -5 is less than the minimum of 0.01"
        with pytest.raises(BackendError) as refused:
            await transfer("fx", from_account="A1", to_account="A4", amount=1, currency="USD")
        assert refused.value.details["status"] == 422
        assert "currency_mismatch" in refused.value.message
        got = await client.call(catalog.require("ledger.get_balance"), {"account": "A2"})
        assert got["account"] == "A2"
        out = await transfer("ok", from_account="A2", to_account="A1", amount=0.5,
                             currency="USD")
        assert out.result["amount"] == 0.5 and not out.replayed  # passed the output schema
    finally:
        await client.aclose()
        await store.aclose()


def _serve(config: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
        stdout=subprocess.PIPE, stderr=log.open("a"), text=True, cwd=ROOT)
    assert proc.stdout is not None
    deadline = time.monotonic() + scaled(240)  # Deno + Pyodide start, on a busy machine
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("LISTENING grpc://"):
            return proc, line.split("grpc://", 1)[1].strip()
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"switchboard serve did not start: {log.read_text()[-2000:]}")


def test_real_gateway_killed_between_effect_and_response(ledger: Ledger, tmp_path: Path) -> None:
    """The acceptance test on the real `switchboard serve` (gRPC, policy, pipeline): SIGKILL
    it while the ledger sleeps after committing, restart it on the same state, retry."""
    import yaml

    from gateway.client import SwitchboardClient
    from gateway.client_types import SwitchboardError

    config = tmp_path / "switchboard.yaml"
    config.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:0",
        "identity": {"tokens": {"test-finance": {"id": "finance-1", "tenant": "demo",
                                                 "roles": ["agent", "finance"]}}},
        "backends": [{"name": "ledger", "openapi": f"{ledger.url}/openapi.json",
                      "base_url": ledger.url, "timeout_ms": 10_000, "retries": 0}],
        "idempotency": {"dsn": f"sqlite:///{tmp_path / 'idempotency.db'}"},
        "audit": {"file": str(tmp_path / "audit.jsonl")},
        "sandbox": {"workers": 1},
    }))
    rid = f"serve-kill-{uuid.uuid4()}"
    key = key_for(PRINCIPAL.__class__(id="finance-1", tenant="demo"), rid)
    args = {"from_account": "A1", "to_account": "A2", "amount": 3.5, "currency": "USD"}
    log = tmp_path / "serve.log"

    first, target = _serve(config, log)
    try:
        def call_in_background() -> None:
            with SwitchboardClient(target, "test-finance", retries=0) as c, \
                    contextlib.suppress(Exception):
                c.call_tool("ledger.create_transfer", args, request_id=rid, timeout=scaled(120))

        caller = threading.Thread(target=call_in_background, daemon=True)
        caller.start()
        deadline = time.monotonic() + scaled(120)
        while not rows_for(ledger, key):
            assert time.monotonic() < deadline, f"no transfer reached the ledger: {log.read_text()}"
            time.sleep(0.02)
        assert first.poll() is None
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()

    second, target = _serve(config, log)
    try:
        with SwitchboardClient(target, "test-finance", retries=0) as client:
            try:
                result = client.call_tool("ledger.create_transfer", args, request_id=rid,
                                          timeout=scaled(120))
                outcome: dict[str, Any] = (
                    {"result": result.result, "replayed": result.replayed} if result.ok
                    else {"code": (result.error or {}).get("code")})
            except SwitchboardError as exc:
                outcome = {"code": exc.code}
    finally:
        second.terminate()
        second.wait(scaled(60))
    rows = rows_for(ledger, key)
    assert len(rows) == 1, rows  # exactly one transfer, however the retry is answered
    # The server's reconciler (GET /transfers?idempotency_key=) found the committed transfer:
    # the retry returns it instead of refusing to guess.
    assert "code" not in outcome, outcome
    assert outcome["result"]["id"] == rows[0]["id"] and outcome["replayed"] is True
