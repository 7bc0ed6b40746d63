"""The digest key: where it comes from, what it does without one, and that the trail only ever
holds keyed digests of unredacted arguments (review finding 3)."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import structlog
from gateway_support import RunningGateway, code_request, gateway_settings, md, tool_request

from gateway.audit.redact import (
    DIGEST_KEY_ENV,
    DigestKey,
    canonical_json,
    digest,
    load_digest_key,
    scrub_text,
)
from gateway.config import parse_settings
from gateway.errors import ConfigError

KEY = b"0123456789abcdef0123456789abcdef"


def test_hmac_is_over_the_bytes_digest_hashes() -> None:
    key = DigestKey(KEY)
    value = {"b": "é", "a": [1, 2]}
    want = hmac.new(KEY, canonical_json(value).encode(), hashlib.sha256).hexdigest()
    assert key.digest(value) == "hmac-sha256:" + want
    assert key.digest("abc") == "hmac-sha256:" + hmac.new(KEY, b"abc", "sha256").hexdigest()
    assert key.digest({"a": 1, "b": 2}) == key.digest({"b": 2, "a": 1})
    assert key.digest("x\ud800y").startswith("hmac-sha256:")  # lone surrogates still digest
    assert key.digest(value).removeprefix("hmac-sha256:") != \
        digest(value).removeprefix("sha256:")


def test_key_id_names_the_key_without_revealing_it() -> None:
    a, b = DigestKey(KEY), DigestKey(KEY[::-1])
    assert a.key_id == DigestKey(KEY).key_id and a.key_id != b.key_id and len(a.key_id) == 16
    assert a.digest("x") != b.digest("x")
    assert KEY.decode() not in repr(a) and a.key_id in repr(a)
    assert a.key_id not in a.digest("x")  # the id is not a digest of the empty string either
    with pytest.raises(ValueError):
        DigestKey(b"short")
    one, two = DigestKey.generate(), DigestKey.generate()
    assert one.ephemeral and one.key_id != two.key_id


def test_key_file_wins_over_the_environment(tmp_path: Path) -> None:
    f = tmp_path / "digest.key"
    f.write_bytes(KEY + b"\n")  # surrounding whitespace is not part of the key
    key = load_digest_key(f, env={DIGEST_KEY_ENV: "e" * 40})
    assert key.key_id == DigestKey(KEY).key_id and not key.ephemeral
    assert scrub_text(f"leaked {KEY.decode()}") == "leaked [REDACTED]"  # registered secret


def test_key_from_the_environment() -> None:
    key = load_digest_key(None, env={DIGEST_KEY_ENV: " " + "e" * 40 + " "})
    assert key.key_id == DigestKey(b"e" * 40).key_id


@pytest.mark.parametrize("content", [b"", b"too short", b" " * 64])
def test_a_short_key_refuses_to_start(tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "digest.key"
    f.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_digest_key(f, env={})
    assert info.value.field == "audit.digest_key_file"
    with pytest.raises(ConfigError) as env_info:
        load_digest_key(None, env={DIGEST_KEY_ENV: "short"})
    assert env_info.value.field == DIGEST_KEY_ENV


def test_an_unreadable_key_file_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_digest_key(tmp_path / "missing.key", env={DIGEST_KEY_ENV: "e" * 40})
    assert info.value.field == "audit.digest_key_file"


def test_no_key_is_a_per_process_key_and_a_warning() -> None:
    with structlog.testing.capture_logs() as logs:
        key = load_digest_key(None, env={})
    assert key.ephemeral
    warned = [e for e in logs if e["event"] == "audit.digest_key.ephemeral"]
    assert warned and warned[0]["log_level"] == "warning" and warned[0]["key_id"] == key.key_id


def test_config_key_resolves_against_the_config_dir(tmp_path: Path) -> None:
    s = parse_settings({"audit": {"digest_key_file": "keys/digest.key"}}, base_dir=tmp_path)
    assert s.audit.digest_key_file == tmp_path / "keys" / "digest.key"
    assert parse_settings({}, base_dir=tmp_path).audit.digest_key_file is None
    with pytest.raises(ConfigError):
        parse_settings({"audit": {"digest_key_file": 3}}, base_dir=tmp_path)


def _roots(audit: Path, trace_id: str) -> list[dict[str, Any]]:
    out = []
    for line in audit.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("trace_id") == trace_id and "switchboard.arguments.hmac" in rec["attributes"]:
            out.append(rec["attributes"])
    return out


def _execute_keyed(state: Path, backends: dict[str, Any], key: bytes, request: Any,
                   token: str, timeout: float) -> tuple[Any, Path]:
    """One Execute on a gateway whose audit digest key is ``key``; the response and the
    audit file, flushed."""
    f = state / "digest.key"
    f.write_bytes(key)
    base = gateway_settings(state, backends)
    gw = RunningGateway(replace(base, audit=replace(base.audit, digest_key_file=f)))
    try:
        resp = gw.stub.Execute(request, metadata=md(token), timeout=timeout)
        assert gw.server is not None
        gw.server.telemetry.force_flush()
    finally:
        gw.stop()
    assert base.audit.file is not None
    return resp, Path(base.audit.file)


def test_the_configured_key_lets_an_auditor_check_what_ran(
        backends: dict[str, Any], tmp_path: Path) -> None:
    # 3.0: a protobuf Struct has only doubles, and the digest is of the arguments as received.
    args = {"from_account": "A1", "to_account": "A2", "amount": 3.0, "currency": "USD"}
    resp, audit = _execute_keyed(tmp_path, backends, KEY,
                                 tool_request("ledger.create_transfer", args, "dk-1"),
                                 "dev-finance", 60)
    (root,) = _roots(audit, resp.trace_id)
    key = DigestKey(KEY)
    assert root["switchboard.digest.key_id"] == key.key_id
    assert root["switchboard.arguments.hmac"] == key.digest(args)  # the auditor's check
    assert root["switchboard.arguments.hmac"] != key.digest({**args, "to_account": "A3"})
    text = audit.read_text()
    assert KEY.decode() not in text and digest(args) not in text
    shown = json.loads(root["switchboard.arguments"])["arguments"]
    assert shown["from_account"] == shown["to_account"] == "[REDACTED]"


def test_the_code_digest_is_keyed_and_differs_per_key(
        backends: dict[str, Any], tmp_path: Path) -> None:
    """Known gap of the last review: ``switchboard.code.sha256`` was a plain SHA-256 of the
    source, so a guessed script (and the low-entropy secret in it) could be confirmed offline.
    The same code run on two gateways with different digest keys: each root carries
    ``switchboard.code.hmac`` = HMAC-SHA256 under its own key (what an auditor with that key
    recomputes), the two differ, and neither the plain digest nor the old attribute is
    anywhere in the trail."""
    source = "secret = 'pin-4711'\nlen(secret)\n"
    plain = hashlib.sha256(source.encode()).hexdigest()
    seen = []
    for i, key_bytes in enumerate((KEY, KEY[::-1])):
        state = tmp_path / f"gw{i}"
        state.mkdir()
        resp, audit = _execute_keyed(state, backends, key_bytes, code_request(source),
                                     "dev-agent", 120)
        assert not resp.error.code, resp.error
        text = audit.read_text()
        roots = [json.loads(line)["attributes"] for line in text.splitlines()
                 if json.loads(line).get("trace_id") == resp.trace_id
                 and "switchboard.code.hmac" in json.loads(line)["attributes"]]
        (root,) = roots
        key = DigestKey(key_bytes)
        assert root["switchboard.code.hmac"] == key.digest(source)
        assert root["switchboard.code.hmac"] == "hmac-sha256:" + hmac.new(
            key_bytes, source.encode(), hashlib.sha256).hexdigest()
        assert root["switchboard.digest.key_id"] == key.key_id
        assert plain not in text and "switchboard.code.sha256" not in text
        seen.append(root["switchboard.code.hmac"])
    assert seen[0] != seen[1]
