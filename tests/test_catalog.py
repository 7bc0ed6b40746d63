"""The Catalog API, the loaders (file JSON/YAML, app entry point) and the SDK renderings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from gateway.catalog import (
    Catalog,
    load_catalog,
    load_catalog_sync,
    python_signature,
    sdk_doc,
)
from gateway.errors import ConfigError, UnknownOperation
from gateway.models import BackendSettings

DEMO = [
    BackendSettings(name="ledger", app="gateway.demo.ledger:app"),
    BackendSettings(name="workspace", app="gateway.demo.workspace:app"),
]


@pytest.fixture(scope="module")
def demo() -> Catalog:
    return load_catalog_sync(DEMO)


def test_demo_catalog_from_app_entry_points(demo: Catalog) -> None:
    assert {op.name for op in demo.for_backend("ledger")} == {
        "ledger.list_accounts", "ledger.get_balance", "ledger.create_transfer",
        "ledger.list_transfers", "ledger.get_transfer"}
    assert len(demo.for_backend("workspace")) == 5
    assert demo.for_backend("nope") == []
    # in-process backends keep base_url unset (the tool channel uses the ASGI app)
    assert demo.backends["ledger"].base_url is None
    assert demo.backends["ledger"].app == "gateway.demo.ledger:app"
    assert "ledger.get_balance" in demo and len(demo) == 10


def test_get_and_require(demo: Catalog) -> None:
    op = demo.require("ledger.get_balance")
    assert demo.get("ledger.get_balance") is op
    assert op.method == "GET" and op.path == "/accounts/{account}/balance"
    assert demo.get("ledger.nope") is None
    with pytest.raises(UnknownOperation) as info:
        demo.require("ledger.create_transfers")
    err = info.value
    assert err.field == "tool_call.name" and err.code == "unknown_operation"
    assert "ledger.create_transfer" in err.message
    assert err.details["suggestions"][0] == "ledger.create_transfer"
    with pytest.raises(UnknownOperation) as info:
        demo.require("send_email")
    assert "workspace.send_email" in info.value.details["suggestions"]


def test_python_signature_and_sdk_doc(demo: Catalog) -> None:
    transfer = demo.require("ledger.create_transfer")
    assert python_signature(transfer) == (
        "create_transfer(from_account: str, to_account: str, amount: float, "
        "currency: str = 'USD', memo: str | None = None) -> dict")
    assert python_signature(demo.require("ledger.list_accounts")) == (
        "list_accounts(team: str | None = None) -> list[dict]")
    assert python_signature(demo.require("workspace.send_email")) == (
        "send_email(to: list[str], subject: str, body: str) -> dict")
    doc = sdk_doc(transfer)
    assert doc.splitlines()[0] == "Transfer money between accounts"
    assert "    amount (float): Amount to move; at most two decimal places. >= 0.01" in doc
    assert "currency (str, optional)" in doc and "'USD', 'EUR', 'GBP'" in doc
    assert "ledger.create_transfer (POST /transfers); tags: payments, compliance" in doc


def test_revision_is_a_content_hash(demo: Catalog) -> None:
    again = load_catalog_sync(list(reversed(DEMO)))
    assert again.revision == demo.revision and len(demo.revision) == 16
    only_ledger = load_catalog_sync(DEMO[:1])
    assert only_ledger.revision != demo.revision
    tagged = load_catalog_sync([BackendSettings(name="ledger", app="gateway.demo.ledger:app",
                                                tags={"get_balance": ["pii"]}), DEMO[1]])
    assert tagged.revision != demo.revision
    assert tagged.require("ledger.get_balance").tags == ("accounts", "pii")


def test_search_demo(demo: Catalog) -> None:
    hits = demo.search("send an email to the team", limit=3)
    assert hits[0][0].name == "workspace.send_email"
    assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert demo.search("balance of account A1", limit=1)[0][0].name == "ledger.get_balance"
    assert demo.search("", limit=5) == [] and demo.search("zzzqqq") == []
    assert len(demo.search("list", limit=2)) == 2


def test_file_specs_json_and_yaml(tmp_path: Path) -> None:
    from gateway.demo.workspace import app

    spec = app.openapi()
    (tmp_path / "ws.json").write_text(json.dumps(spec))
    servers = [{"url": "https://{host}/api", "variables": {"host": {"default": "ws.example"}}}]
    (tmp_path / "ws.yaml").write_text(yaml.safe_dump({**spec, "servers": servers},
                                                     sort_keys=False))
    a = load_catalog_sync([BackendSettings(name="workspace", openapi=str(tmp_path / "ws.json"))])
    b = load_catalog_sync([BackendSettings(name="workspace", openapi=str(tmp_path / "ws.yaml"))])
    assert a.revision == b.revision
    assert a.backends["workspace"].base_url is None  # relative/no servers in a file
    assert b.backends["workspace"].base_url == "https://ws.example/api"
    pinned = load_catalog_sync([BackendSettings(name="workspace", openapi=str(tmp_path /
                                "ws.yaml"), base_url="http://127.0.0.1:9/")])
    assert pinned.backends["workspace"].base_url == "http://127.0.0.1:9"


async def test_async_loader_matches_sync(demo: Catalog) -> None:
    catalog = await load_catalog(DEMO)
    assert catalog.revision == demo.revision


@pytest.mark.parametrize(
    ("backends", "message"),
    [
        ([BackendSettings(name="x", openapi="/nonexistent/spec.json")], "cannot read"),
        ([BackendSettings(name="x", app="gateway.demo.nope:app")], "cannot import"),
        ([BackendSettings(name="x", app="gateway.demo.ledger")], "module:attr"),
        ([BackendSettings(name="x", app="gateway.demo.ledger:DEMO_ACCOUNTS")], "openapi()"),
        ([BackendSettings(name="x")], "exactly one"),
        ([BackendSettings(name="Bad-Name", app="gateway.demo.ledger:app")], "identifier"),
        ([DEMO[0], DEMO[0]], "duplicate backend"),
        ([BackendSettings(name="x", openapi="http://127.0.0.1:9/openapi.json")],
         "cannot fetch"),
    ],
)
def test_loader_errors_are_config_errors(backends: list[BackendSettings], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_catalog_sync(backends)
    assert info.value.field.startswith("backends.")


def test_non_openapi_file_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="not an OpenAPI document"):
        load_catalog_sync([BackendSettings(name="x", openapi=str(bad))])


def test_catalog_rejects_duplicate_operation_names(demo: Catalog) -> None:
    op = demo.require("ledger.get_balance")
    with pytest.raises(ConfigError, match="duplicate operation name"):
        Catalog([op, op])


def test_backend_credentials_only_go_to_the_backend_origin() -> None:
    from gateway.catalog.loader import _headers_for

    secret = {"Authorization": "Bearer s3cret"}
    own = BackendSettings(name="x", openapi="https://api.example/openapi.json",
                          base_url="https://api.example", headers=secret)
    assert _headers_for(own, own.openapi or "") == secret
    elsewhere = BackendSettings(name="x", openapi="https://raw.example/spec.json",
                                base_url="https://api.example", headers=secret)
    assert _headers_for(elsewhere, elsewhere.openapi or "") == {}
    unknown = BackendSettings(name="x", openapi="https://api.example/spec.json", headers=secret)
    assert _headers_for(unknown, unknown.openapi or "") == secret
