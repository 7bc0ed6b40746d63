"""The demo backends as real uvicorn subprocesses on port 0, over real HTTP."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from waiting import scaled

from gateway.catalog import load_catalog
from gateway.errors import ConfigError
from gateway.models import BackendSettings
from tests.catalog_support import DemoService, demo_service


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoService]:
    with demo_service("ledger", tmp_path_factory.mktemp("ledger") / "ledger.db") as svc:
        yield svc


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoService]:
    with demo_service("workspace", tmp_path_factory.mktemp("ws") / "workspace.db") as svc:
        yield svc


def _rows(db: Path, sql: str, *args: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def test_ledger_seeded_accounts_and_balance(ledger: DemoService) -> None:
    accounts = httpx.get(f"{ledger.url}/accounts").json()
    assert [a["id"] for a in accounts] == ["A1", "A2", "A3", "A4"]
    assert {a["team"] for a in accounts} == {"demo"}
    balance = httpx.get(f"{ledger.url}/accounts/A3/balance").json()
    assert balance["account"] == "A3" and balance["currency"] == "USD"
    assert isinstance(balance["balance"], float)


def test_ledger_uses_wal_sqlite_file(ledger: DemoService) -> None:
    httpx.get(f"{ledger.url}/accounts").raise_for_status()
    assert _rows(ledger.db, "PRAGMA journal_mode")[0][0] == "wal"


def test_transfer_moves_money_and_records_idempotency_key(ledger: DemoService) -> None:
    before = {a["id"]: a["balance"] for a in httpx.get(f"{ledger.url}/accounts").json()}
    response = httpx.post(
        f"{ledger.url}/transfers",
        json={"from_account": "A1", "to_account": "A2", "amount": 12.34, "memo": "lunch"},
        headers={"Idempotency-Key": "key-transfer-1"},
    )
    assert response.status_code == 201, response.text
    transfer = response.json()
    assert transfer["amount"] == 12.34 and transfer["currency"] == "USD"
    assert transfer["idempotency_key"] == "key-transfer-1"
    after = {a["id"]: a["balance"] for a in httpx.get(f"{ledger.url}/accounts").json()}
    assert round(before["A1"] - after["A1"], 2) == 12.34
    assert round(after["A2"] - before["A2"], 2) == 12.34
    rows = _rows(ledger.db, "SELECT amount_cents, idempotency_key FROM transfers WHERE id = ?",
                 transfer["id"])
    assert rows == [(1234, "key-transfer-1")]
    got = httpx.get(f"{ledger.url}/transfers/{transfer['id']}").json()
    assert got == transfer


def test_ledger_does_not_deduplicate_by_key(ledger: DemoService) -> None:
    body = {"from_account": "A2", "to_account": "A1", "amount": 1.0}
    for _ in range(2):
        r = httpx.post(f"{ledger.url}/transfers", json=body, headers={"Idempotency-Key": "dup"})
        assert r.status_code == 201
    rows = _rows(ledger.db, "SELECT COUNT(*) FROM transfers WHERE idempotency_key = 'dup'")
    assert rows[0][0] == 2
    listed = httpx.get(f"{ledger.url}/transfers", params={"idempotency_key": "dup"}).json()
    assert len(listed) == 2 and all(t["idempotency_key"] == "dup" for t in listed)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"from_account": "A3", "to_account": "A2", "amount": 1_000_000}, 409,
         "insufficient_funds"),
        ({"from_account": "A9", "to_account": "A2", "amount": 1}, 404, "unknown_account"),
        ({"from_account": "A1", "to_account": "A1", "amount": 1}, 422, "same_account"),
        ({"from_account": "A1", "to_account": "A4", "amount": 1}, 422, "currency_mismatch"),
        ({"from_account": "A1", "to_account": "A2", "amount": 1.005}, 422, "invalid_amount"),
    ],
)
def test_transfer_business_errors_are_4xx_json_and_change_nothing(
    ledger: DemoService, body: dict[str, object], status: int, code: str
) -> None:
    count = _rows(ledger.db, "SELECT COUNT(*), SUM(balance_cents) FROM accounts")
    transfers = _rows(ledger.db, "SELECT COUNT(*) FROM transfers")
    r = httpx.post(f"{ledger.url}/transfers", json=body)
    assert r.status_code == status
    assert r.json()["error"]["code"] == code
    assert _rows(ledger.db, "SELECT COUNT(*), SUM(balance_cents) FROM accounts") == count
    assert _rows(ledger.db, "SELECT COUNT(*) FROM transfers") == transfers


async def test_concurrent_transfers_never_overdraw(tmp_path: Path) -> None:
    db = tmp_path / "race.db"
    with demo_service("ledger", db) as svc:
        body = {"from_account": "A3", "to_account": "A2", "amount": 10}  # A3 holds 50.00
        async with httpx.AsyncClient(base_url=svc.url, timeout=30) as client:
            responses = await asyncio.gather(
                *(client.post("/transfers", json=body) for _ in range(12)))
        codes = sorted(r.status_code for r in responses)
        assert codes == [201] * 5 + [409] * 7
        assert _rows(db, "SELECT balance_cents FROM accounts WHERE id = 'A3'") == [(0,)]
        assert _rows(db, "SELECT COUNT(*), SUM(amount_cents) FROM transfers") == [(5, 5000)]
        assert _rows(db, "SELECT SUM(balance_cents) FROM accounts WHERE currency = 'USD'") == [
            (1_000_000 + 250_000 + 5_000,)]


def test_transfer_schema_errors(ledger: DemoService) -> None:
    r = httpx.post(f"{ledger.url}/transfers",
                   json={"from_account": "A1", "to_account": "A2", "amount": -5})
    assert r.status_code == 422
    r = httpx.post(f"{ledger.url}/transfers",
                   json={"from_account": "A1", "to_account": "A2", "amount": 5, "extra": 1})
    assert r.status_code == 422  # extra="forbid"
    assert httpx.get(f"{ledger.url}/accounts/nope!/balance").status_code == 422
    assert httpx.get(f"{ledger.url}/transfers/T000").status_code == 404


def test_openapi_has_compliance_extension(ledger: DemoService) -> None:
    spec = httpx.get(f"{ledger.url}/openapi.json").json()
    post = spec["paths"]["/transfers"]["post"]
    assert post["operationId"] == "create_transfer"
    assert post["x-switchboard-tags"] == ["compliance"]
    assert "Idempotency-Key" not in str(post.get("parameters", []))


def test_respond_delay_happens_after_commit(tmp_path: Path) -> None:
    db = tmp_path / "slow.db"
    with demo_service("ledger", db, env={"LEDGER_RESPOND_DELAY_MS": "2000"}) as svc:
        body = {"from_account": "A1", "to_account": "A2", "amount": 2}
        result: dict[str, object] = {}

        def call() -> None:
            start = time.monotonic()
            r = httpx.post(f"{svc.url}/transfers", json=body, timeout=30,
                           headers={"Idempotency-Key": "slow-1"})
            result.update(status=r.status_code, elapsed=time.monotonic() - start)

        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + scaled(60)
        while not _rows(db, "SELECT 1 FROM transfers") and time.monotonic() < deadline:
            time.sleep(0.02)
        # The effect is durable while the response is still being held back.
        assert _rows(db, "SELECT idempotency_key FROM transfers") == [("slow-1",)]
        assert caller.is_alive() and not result
        caller.join(timeout=scaled(60))
        assert result["status"] == 201
        assert result["elapsed"] >= 2.0  # type: ignore[operator]
        assert svc.stop() == 0  # SIGTERM: graceful exit


def test_workspace_has_events_today_with_a_longest_meeting(workspace: DemoService) -> None:
    today = datetime.now(UTC).date()
    events = httpx.get(f"{workspace.url}/events", params={"date": today.isoformat()}).json()
    assert len(events) >= 3
    assert all(e["start"].startswith(today.isoformat()) for e in events)

    def minutes(e: dict[str, str]) -> float:
        start, end = datetime.fromisoformat(e["start"]), datetime.fromisoformat(e["end"])
        return (end - start).total_seconds() / 60

    lengths = sorted(minutes(e) for e in events)
    assert lengths[-1] > lengths[-2], "today's longest meeting must be unique"
    longest = max(events, key=minutes)
    assert len(longest["attendees"]) >= 3
    other = httpx.get(f"{workspace.url}/events",
                      params={"date": (today + timedelta(days=1)).isoformat()}).json()
    assert other and all(e["id"] not in {x["id"] for x in events} for e in other)
    assert httpx.get(f"{workspace.url}/events/{longest['id']}").json() == longest
    assert httpx.get(f"{workspace.url}/events/nope").status_code == 404
    team = httpx.get(f"{workspace.url}/events", params={"calendar": "ops"}).json()
    assert team and {e["calendar"] for e in team} == {"ops"}


def test_workspace_emails_are_recorded(workspace: DemoService) -> None:
    r = httpx.post(f"{workspace.url}/emails", json={
        "to": ["alice@example.com", "bob@example.com"], "subject": "Longest meeting",
        "body": "Architecture review is today's longest meeting."})
    assert r.status_code == 201, r.text
    sent = r.json()
    assert sent["status"] == "queued"
    outbox = httpx.get(f"{workspace.url}/emails").json()
    assert outbox[0]["id"] == sent["id"] and outbox[0]["to"] == sent["to"]
    bad = httpx.post(f"{workspace.url}/emails", json={"to": ["not-an-email"], "subject": "x",
                                                      "body": ""})
    assert bad.status_code == 422
    assert httpx.post(f"{workspace.url}/emails",
                      json={"to": [], "subject": "x", "body": ""}).status_code == 422


def test_workspace_contacts_team_filter(workspace: DemoService) -> None:
    everyone = httpx.get(f"{workspace.url}/contacts").json()
    team = httpx.get(f"{workspace.url}/contacts", params={"team": "demo"}).json()
    assert len(team) == 4 and len(everyone) > len(team)
    assert all(c["team"] == "demo" and "@" in c["email"] for c in team)


def test_workspace_reseeds_today_on_an_old_database(tmp_path: Path) -> None:
    from gateway.demo.workspace import _init_db, seed_events_for

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    _init_db(conn)
    conn.execute("DELETE FROM events")
    seed_events_for(conn, datetime.now(UTC).date() - timedelta(days=30))
    conn.commit()
    conn.close()
    with demo_service("workspace", db) as svc:
        today = datetime.now(UTC).date().isoformat()
        assert httpx.get(f"{svc.url}/events", params={"date": today}).json()


async def test_catalog_from_running_services_openapi_urls(
    ledger: DemoService, workspace: DemoService
) -> None:
    catalog = await load_catalog([
        BackendSettings(name="ledger", openapi=f"{ledger.url}/openapi.json"),
        BackendSettings(name="workspace", openapi=f"{workspace.url}/openapi.json"),
    ])
    assert catalog.backends["ledger"].base_url == ledger.url
    assert catalog.backends["workspace"].base_url == workspace.url
    names = {op.name for op in catalog.operations}
    assert {"ledger.list_accounts", "ledger.get_balance", "ledger.create_transfer",
            "ledger.list_transfers", "ledger.get_transfer", "workspace.list_events",
            "workspace.get_event", "workspace.send_email", "workspace.list_outbox",
            "workspace.list_contacts"} <= names
    transfer = catalog.require("ledger.create_transfer")
    assert transfer.tags == ("payments", "compliance")
    assert transfer.input_schema["additionalProperties"] is False
    assert transfer.output_schema is not None
    assert transfer.output_schema["properties"]["idempotency_key"]


async def test_catalog_from_a_url_that_is_not_a_spec(ledger: DemoService) -> None:
    with pytest.raises(ConfigError, match="returned HTTP 404") as info:
        await load_catalog([BackendSettings(name="ledger", openapi=f"{ledger.url}/nope.json")])
    assert info.value.field == "backends.ledger.openapi"
    with pytest.raises(ConfigError, match="not an OpenAPI"):
        await load_catalog([BackendSettings(name="ledger", openapi=f"{ledger.url}/accounts")])
