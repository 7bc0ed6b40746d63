"""Config validation: clear errors naming the bad key; env expansion; token files."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import embedded_defaults, load_settings, parse_settings
from gateway.errors import ConfigError


def test_embedded_defaults_match_the_design() -> None:
    s = embedded_defaults()
    assert s.listen == "127.0.0.1:50051"
    assert s.identity.tokens["dev-agent"].roles == ("agent",)
    assert set(s.identity.tokens["dev-finance"].roles) == {"agent", "finance"}
    assert {b.name for b in s.backends} == {"ledger", "workspace"}


@pytest.mark.parametrize(
    ("raw", "field", "fragment"),
    [
        ({"listn": "1.2.3.4:5"}, "listn", "unknown key"),
        ({"policy": {"engine": "rego"}}, "policy.engine", "is not one of"),
        ({"policy": {"engin": "opa"}}, "policy.engin", "unknown key"),
        ({"backends": [{"name": "x"}]}, "backends[0]", "valid"),
        ({"backends": [{"name": "Bad-Name", "openapi": "a.json"}]}, "backends[0].name", "match"),
        ({"sandbox": {"workers": "two"}}, "sandbox.workers", "not of type"),
        ({"identity": {"tokens": {"t": {"id": "a"}}}}, "identity.tokens.t", "tenant"),
        ({"listen": "nope"}, "listen", "match"),
    ],
)
def test_bad_config_names_the_key(raw: dict[str, object], field: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(raw)
    assert info.value.field == field
    assert fragment in info.value.message
    assert info.value.message.startswith(field)


def test_duplicate_backend_rejected() -> None:
    raw = {"backends": [{"name": "a", "openapi": "x.json"}, {"name": "a", "openapi": "y.json"}]}
    with pytest.raises(ConfigError) as info:
        parse_settings(raw)
    assert info.value.field == "backends[1].name"


def test_env_expansion_and_tokens_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tokens.yaml").write_text("s3cret: {id: bot, tenant: acme, roles: [agent]}\n")
    (tmp_path / "gw.yaml").write_text(
        "identity: {tokens_file: tokens.yaml}\n"
        "idempotency: {dsn: '${IDEM_DSN}'}\n"
        "backends: [{name: ledger, openapi: specs/ledger.json}]\n")
    monkeypatch.setenv("IDEM_DSN", "sqlite:////var/lib/x.db")
    s = load_settings(tmp_path / "gw.yaml")
    assert s.identity.tokens["s3cret"].tenant == "acme"
    assert s.idempotency.dsn == "sqlite:////var/lib/x.db"
    assert s.backends[0].openapi == str(tmp_path / "specs/ledger.json")
    monkeypatch.delenv("IDEM_DSN")
    with pytest.raises(ConfigError) as info:
        load_settings(tmp_path / "gw.yaml")
    assert info.value.field == "idempotency.dsn" and "IDEM_DSN" in info.value.message


def test_bad_tokens_file(tmp_path: Path) -> None:
    (tmp_path / "tokens.yaml").write_text("t: {id: bot}\n")
    with pytest.raises(ConfigError) as info:
        parse_settings({"identity": {"tokens_file": "tokens.yaml"}}, base_dir=tmp_path)
    assert info.value.field == "identity.tokens_file" and "tenant" in info.value.message


def test_cli_reports_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_text("policy: {engine: magic}\n")
    assert main(["serve", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "policy.engine" in err and "magic" in err
    cfg.write_text("listen: [unclosed\n")
    assert main(["serve", "--config", str(cfg)]) == 2
    assert "invalid YAML" in capsys.readouterr().err


def test_tls_files_must_exist(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    with pytest.raises(ConfigError) as info:
        parse_settings({"tls": {"cert_file": "cert.pem", "key_file": "missing.key"}},
                       base_dir=tmp_path)
    assert info.value.field == "tls.key_file"
    with pytest.raises(ConfigError) as info:
        parse_settings({"tls": {"cert_file": "cert.pem"}}, base_dir=tmp_path)
    assert info.value.field == "tls" and "key_file" in info.value.message


def test_mcp_host_checks_and_resource_url() -> None:
    s = parse_settings({"mcp": {"enabled": True, "allowed_hosts": ["127.0.0.1:*", "gw:8765"],
                                "allowed_origins": ["https://app.example"],
                                "resource_url": "https://gw.example/mcp"}})
    assert s.mcp.allowed_hosts == ("127.0.0.1:*", "gw:8765")
    assert s.mcp.allowed_origins == ("https://app.example",)
    assert s.mcp.resource_url == "https://gw.example/mcp"
    assert parse_settings({}).mcp.allowed_hosts is None  # no Host/Origin checks by default
    caps = parse_settings({"mcp": {"max_connections_per_address": 0, "max_connections": 8}}).mcp
    assert (caps.max_connections_per_address, caps.max_connections) == (0, 8)
    default = parse_settings({}).mcp
    assert (default.max_connections_per_address, default.max_connections) == (64, 1024)
    for bad in ({"max_connections": 0}, {"max_connections_per_address": -1},
                {"max_connections": "many"}):
        with pytest.raises(ConfigError) as bad_info:
            parse_settings({"mcp": bad})
        assert bad_info.value.field.startswith("mcp.max_connections")
    with pytest.raises(ConfigError) as info:
        parse_settings({"mcp": {"allowed_hosts": "localhost"}})
    assert info.value.field.startswith("mcp.allowed_hosts")
