"""digest / redact / json_attr / safe_url / scrubbing."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from gateway.audit import REDACTED, digest, json_attr, redact, register_secret, safe_url, scrub_text
from gateway.audit.redact import is_secret_key, scrub_value


def test_digest_of_text_bytes_and_json() -> None:
    abc = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert digest("abc") == abc
    assert digest(b"abc") == abc
    canon = '{"a":[1,2],"b":"é"}'.encode()
    assert digest({"b": "é", "a": [1, 2]}) == "sha256:" + hashlib.sha256(canon).hexdigest()
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})
    assert digest({"a": 1}) != digest({"a": "1"})
    assert digest(None) == "sha256:" + hashlib.sha256(b"null").hexdigest()


ARGS: dict[str, Any] = {
    "card_number": "4111",
    "memo": "private",
    "amount": 10,
    "payees": [{"name": "a", "iban": "X1"}, {"name": "b", "iban": "X2"}],
    "meta": {"k1": {"pin": 1}, "k2": {"pin": 2, "keep": 3}},  # not credential keys
}


@pytest.mark.parametrize(
    ("mask", "prefix", "check"),
    [
        (
            ["action.arguments.card_number"],
            "action.arguments",
            lambda r: r["card_number"] == REDACTED,
        ),
        (["arguments.memo"], "action.arguments", lambda r: r["memo"] == REDACTED),
        (["memo"], "action.arguments", lambda r: r["memo"] == REDACTED),
        (["card_number"], "", lambda r: r["card_number"] == REDACTED),
        (
            ["action.arguments.payees.*.iban"],
            "action.arguments",
            lambda r: (
                [p["iban"] for p in r["payees"]] == [REDACTED, REDACTED]
                and r["payees"][0]["name"] == "a"
            ),
        ),
        (["payees[1].iban"], "", lambda r: [p["iban"] for p in r["payees"]] == ["X1", REDACTED]),
        (
            ["meta.*.pin"],
            "",
            lambda r: (
                r["meta"] == {"k1": {"pin": REDACTED}, "k2": {"pin": REDACTED, "keep": 3}}
            ),
        ),
        (["meta"], "", lambda r: r["meta"] == REDACTED),
        (["action.*.memo"], "action.arguments", lambda r: r["memo"] == REDACTED),
    ],
)
def test_redact_paths(mask: list[str], prefix: str, check: Any) -> None:
    before = json.dumps(ARGS, sort_keys=True)
    out = redact(ARGS, mask, prefix)
    assert check(out), out
    assert json.dumps(ARGS, sort_keys=True) == before  # input untouched
    assert out["amount"] == 10


def test_redact_ignores_paths_elsewhere_and_missing_keys() -> None:
    assert redact(ARGS, ["context.labels.x", "nope", "amount.deeper"], "action.arguments") == ARGS
    assert redact("scalar", ["a"]) == "scalar"
    assert redact({"a": 1}, []) == {"a": 1}


def test_json_attr_is_canonical_and_bounded() -> None:
    assert json_attr({"b": 1, "a": [1, "x"]}) == '{"a":[1,"x"],"b":1}'
    big = {"blob": "x" * 10_000}
    text = json_attr(big, max_len=200)
    assert len(text) == 200 and text.endswith("chars]") and "truncated" in text


def test_safe_url() -> None:
    assert safe_url("https://h.example/p?q=1") == "https://h.example/p?q=1"
    out = safe_url("https://alice:pw@h.example:8443/p?sig=abc&q=1&X-Amz-Signature=zz")
    assert "alice" not in out and "pw" not in out and "abc" not in out and "zz" not in out
    assert out.startswith("https://[REDACTED]:[REDACTED]@h.example:8443/p?")
    assert "q=1" in out


def test_scrubbing() -> None:
    register_secret("s3cr3t-value-xyz")
    register_secret("short")  # too short to register: would redact words
    assert scrub_text("the short s3cr3t-value-xyz!") == f"the short {REDACTED}!"
    assert scrub_text("Authorization: Bearer eyJhbGciOi.x.y") == f"Authorization: Bearer {REDACTED}"
    assert scrub_text("plain text about bearers") == "plain text about bearers"
    assert is_secret_key("http.request.header.authorization")
    assert is_secret_key("api_key") and is_secret_key("X-Api-Key") and is_secret_key("password")
    assert not is_secret_key("gen_ai.usage.input_tokens")
    assert not is_secret_key("switchboard.request_id")
    assert scrub_value("cookie", ["a=b"]) == REDACTED
    assert scrub_value("nested", {"token": "x", "n": 1}) == {"token": REDACTED, "n": 1}
    assert scrub_value("x", float("nan")) == "nan"


@pytest.mark.parametrize(("text", "scrubbed"), [
    ("refund to card 4111 1111 1111 1111 please", "refund to card [REDACTED:card-1111] please"),
    ("4111-1111-1111-1111", "[REDACTED:card-1111]"),
    ("amex 378282246310005.", "amex [REDACTED:card-0005]."),
    ('{"memo":"5555555555554444"}', '{"memo":"[REDACTED:card-4444]"}'),
    ("mc 2-series 2223003122003222", "mc 2-series [REDACTED:card-3222]"),
    ("discover 6011111111111117", "discover [REDACTED:card-1117]"),
    ("card 4111111111111111 7 typed on", "card [REDACTED:card-1111] 7 typed on"),
    ("4111 1111 1111 1111 111", "[REDACTED:card-1111]"),  # 19 digits, 4-4-4-4-3... cut to 16
    ("amex 3782 822463 10005", "amex [REDACTED:card-0005]"),  # printed 4-6-5
    ("id a5231649-4626-42c1-8e1b-362943028344", "id a5231649-4626-42c1-8e1b-362943028344"),
    ("52316494-4626-4215-8462-462642155231", "52316494-4626-4215-8462-462642155231"),  # a UUID
    ("4111-1111 1111-1111", "4111-1111 1111-1111"),  # mixed separators: not how cards print
    ("4111111111111112", "4111111111111112"),  # the check digit is wrong: not a card
    ("at 1764640000000 ms", "at 1764640000000 ms"),  # a timestamp: no card prefix
    ("order 41111111111111111111111", "order 41111111111111111111111"),  # 23 digits: an id
    ("x41234567890123456", "x41234567890123456"),  # 17 digits, no valid check digit at any cut
    ("x41111111111111111", "x41111111111111111"),  # its first 16 would be: not cut by digit
    ("4111 1111 1111 1111 2024", "[REDACTED:card-1111]"),  # a group after the card
    ("trace a835ba995dc1a654a792e578a1d55d43", "trace a835ba995dc1a654a792e578a1d55d43"),
    ("4111 1111", "4111 1111"),
])
def test_payment_card_numbers_are_scrubbed_from_free_text(text: str, scrubbed: str) -> None:
    """PCI DSS: a card number typed into free text (a memo, a query, an error) is never
    written readable to a span or a log line; only its last four digits are kept."""
    assert scrub_text(text) == scrubbed
    assert scrub_value("memo", text) == scrubbed
    assert scrub_value("arguments", {"memo": text, "n": [text]}) == {"memo": scrubbed,
                                                                     "n": [scrubbed]}


def test_the_gateways_own_ids_are_never_taken_for_cards() -> None:
    """Request ids, decision ids and digests are facts: recorded as they are, even when one
    looks like a card number (a correlation id is worth more than a guess)."""
    assert scrub_value("switchboard.request_id", "4111 1111 1111 1111") == "4111 1111 1111 1111"
    assert scrub_value("request_id", "4111111111111111") == "4111111111111111"
    assert scrub_value("memo", "4111111111111111") == "[REDACTED:card-1111]"
