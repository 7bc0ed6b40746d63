"""Masks reach any depth and any key spelling (round 3 finding 5; gateway/maskpath.py).

The shipped ``mask.always`` uses ``**``; keys compare case- and ``_``/``-``/camelCase-blind; a
path ending at an object or list hides the whole subtree; credential keys (``password``,
``*token``, ``apiKey``, …) in arguments are hidden at any depth even with no mask. Checked
where arguments leave the process: the audit file, the policy decision log (structlog),
schema error wording, approval records, and the per-call free-text scrubbing.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import policy_support as ps
import pytest
import structlog
from gateway_support import error_of, md, tool_request
from hypothesis import given, settings
from hypothesis import strategies as st
from waiting import scaled, wait_until_sync

import gateway.audit.logs
from gateway import maskpath
from gateway.audit import REDACTED, redact
from gateway.audit.redact import CallSecrets, masked_values
from gateway.errors import SchemaInvalid
from gateway.models import Operation
from gateway.policy import EmbeddedPolicyEngine, PolicySettings
from gateway.policy import redact as policy_redact
from gateway.tools import validate_arguments

pytestmark = pytest.mark.timeout(600)

SHIPPED = json.loads((ps.POLICY_DIR / "switchboard" / "data.json").read_text())["mask"]
ALWAYS = tuple(SHIPPED["always"])


# -- the path language -------------------------------------------------------------------


@pytest.mark.parametrize("key", [
    "card_number", "cardNumber", "CardNumber", "CARD_NUMBER", "card-number", "Card Number",
    "card__number", "CARD-number", "card.number", "\uff43\uff41\uff52\uff44_number",
    "card\u200bnumber", "\u00adcard_number"])
def test_key_spellings_are_one_key(key: str) -> None:
    args = {"payment": {"methods": [{"x": 1}, {key: "4000000000000002"}]}}
    out = redact(args, ALWAYS, "action.arguments")
    assert out["payment"]["methods"][1][key] == REDACTED
    assert out["payment"]["methods"][0] == {"x": 1}
    assert masked_values(args, ALWAYS, "action.arguments") == ["4000000000000002"]


def test_any_depth_through_objects_and_arrays() -> None:
    args = {"cvv": "111", "a": {"b": [[{"cvv": "222"}], {"c": {"cvv": "333"}}]},
            "cards": [{"cvv": "444", "n": 1}, {"nested": {"deeper": [{"CVV": "555"}]}}]}
    out = redact(args, ALWAYS, "action.arguments")
    text = json.dumps(out)
    for value in ("111", "222", "333", "444", "555"):
        assert value not in text, text
    assert out["cards"][0]["n"] == 1
    assert sorted(masked_values(args, ALWAYS, "action.arguments")) == [
        "111", "222", "333", "444", "555"]


def test_a_sensitive_key_holding_an_object_hides_the_whole_subtree() -> None:
    args = {"payment": {"card_number": {"pan": "4000000000000002", "exp": "12/30"},
                        "iban": ["DE89370400440532013000"]}}
    out = redact(args, ALWAYS, "action.arguments")
    assert out == {"payment": {"card_number": REDACTED, "iban": REDACTED}}
    assert sorted(masked_values(args, ALWAYS, "action.arguments")) == [
        "12/30", "4000000000000002", "DE89370400440532013000"]


def test_a_key_merely_containing_a_masked_word_is_not_that_key() -> None:
    """Documented: ``card_number_last4`` is not ``card_number`` (it is what one shows)."""
    args = {"card_number_last4": "0002", "my_card_number": "x", "cvv2": "y"}
    assert redact(args, ALWAYS, "action.arguments") == args


def test_globs_star_and_prefix_tails() -> None:
    args = {"a": {"x_id": 1, "y_id": 2, "z": 3}, "l": [1, 2, 3]}
    assert redact(args, ["action.arguments.a.*_id"], "action.arguments")["a"] == {
        "x_id": REDACTED, "y_id": REDACTED, "z": 3}
    assert redact(args, ["arguments.l.1"], "action.arguments")["l"] == [1, REDACTED, 3]
    assert redact(args, ["l[2]"], "action.arguments")["l"] == [1, 2, REDACTED]
    assert redact(args, ["**"], "action.arguments") == REDACTED  # the prefix is in it too
    assert redact(args, ["**"]) == {"a": REDACTED, "l": REDACTED}
    assert redact(args, ["action.arguments"], "action.arguments") == REDACTED
    assert redact(args, ["action.**.z"], "action.arguments")["a"]["z"] == REDACTED
    # not anchored anywhere in the value: a bare name is a path from the arguments' root
    assert redact({"a": {"memo": "m"}}, ["memo"], "action.arguments") == {"a": {"memo": "m"}}


@pytest.mark.parametrize("key", [
    "password", "userPassword", "password_confirmation", "db-passwd", "client_secret",
    "apiKey", "X-API-KEY", "access_token", "refreshToken", "id_token", "Authorization",
    "private_key", "credentials", "sessionCookie", "passphrase"])
def test_credential_keys_are_hidden_at_any_depth_without_a_mask(key: str) -> None:
    args = {"config": {"db": [{key: "hunter2-credential"}]}}
    assert json.dumps(redact(args, [], "action.arguments")).count("hunter2") == 0
    assert "hunter2" not in json.dumps(policy_redact({"action": {"arguments": args}}, []))
    assert masked_values(args, [], "action.arguments") == ["hunter2-credential"]


@pytest.mark.parametrize("key", ["max_tokens", "token_count", "secretary", "page"])
def test_ordinary_keys_are_kept(key: str) -> None:
    args = {key: 5}
    expect = REDACTED if key == "secretary" else 5  # "*secret*": over-masking, the safe side
    assert redact(args, [], "action.arguments") == {key: expect}


_keys = st.sampled_from(["cvv", "CVV", "card_number", "cardNumber", "iban", "x", "y", "list",
                         "Password", "memo"])
_tree = st.recursive(
    st.text(alphabet="SECRET0123456789", min_size=8, max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=12)
_SENSITIVE = {"cvv", "cardnumber", "iban", "password"}


def _exposed(value: Any, under: bool, out: list[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _exposed(v, under or maskpath.normalise_key(k) in _SENSITIVE, out)
    elif isinstance(value, list):
        for v in value:
            _exposed(v, under, out)
    elif under:
        out.append(value)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_keys, _tree, max_size=4))
def test_no_value_under_a_sensitive_key_survives(args: dict[str, Any]) -> None:
    hidden: list[str] = []
    _exposed(args, False, hidden)
    outs = (redact(args, ALWAYS, "action.arguments"),
            redact({"arguments": args}, [m.removeprefix("action.") for m in ALWAYS])["arguments"],
            policy_redact({"action": {"arguments": args}}, ALWAYS)["action"]["arguments"])
    for out in outs:
        left: list[str] = []
        _exposed(out, False, left)  # what still sits under a sensitive key
        assert set(left) <= {REDACTED, "[redacted]"}, (args, out)
    assert sorted(masked_values(args, ALWAYS, "action.arguments")) == sorted(hidden)


# -- where arguments leave the process ------------------------------------------------------

NESTED_CARD = Operation(
    name="pay.charge", backend="pay", operation_id="charge", summary="s", method="POST",
    path="/charge", input_schema={"type": "object", "properties": {"payment": {
        "type": "object", "properties": {
            "cardNumber": {"type": "string", "pattern": "^[0-9]{4}$"},
            "cvv": {"type": "integer"},
            "owner": {"type": "object", "properties": {"password": {"type": "integer"}}}},
        "additionalProperties": False}}})


def test_schema_errors_never_quote_a_nested_masked_or_credential_value() -> None:
    args = {"payment": {"cardNumber": "4000000000000002", "cvv": "9876x",
                        "owner": {"password": "pw-hunter2"}, "extra": 1}}
    with pytest.raises(SchemaInvalid) as info:
        validate_arguments(NESTED_CARD, args, strict=False, mask=ALWAYS)
    text = json.dumps([info.value.message, info.value.details])
    for secret in ("4000000000000002", "9876x", "hunter2"):
        assert secret not in text, text
    assert "arguments.payment.cardNumber" in text


@pytest.fixture
async def engine() -> AsyncIterator[EmbeddedPolicyEngine]:
    eng = EmbeddedPolicyEngine(PolicySettings(path=ps.POLICY_DIR, reload=False))
    await eng.start()
    yield eng
    await eng.close()


async def test_the_decision_log_hides_nested_card_numbers_and_passwords(
        engine: EmbeddedPolicyEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    inp = ps.tool(ps.AGENT, "ledger.get_balance", account="A1", payment={
        "cards": [{"cardNumber": "4000000000000002", "CVV": "987"}],
        "login": {"userPassword": "pw-hunter2", "Api-Key": "k-abcdef"}})
    # The line is debug unless `audit.decision_log_level: info`; an operator who turns it on
    # must still see no secret in it.
    monkeypatch.setattr(gateway.audit.logs, "_decision_level", logging.INFO)
    with structlog.testing.capture_logs() as logs:
        await engine.decide(inp)
    (event,) = [e for e in logs if e["event"] == "policy.decision"]
    text = json.dumps(event, default=str)
    for secret in ("4000000000000002", "987", "hunter2", "k-abcdef"):
        assert secret not in text, text
    assert event["input"]["action"]["arguments"]["account"] == "A1"


def test_call_secrets_scrub_nested_values_from_free_text() -> None:
    args = {"payment": {"card-number": "4000000000000002"}, "auth": {"accessToken": "tok-xyz1"}}
    secrets = CallSecrets()
    secrets.add(masked_values(args, ALWAYS, "action.arguments"))
    assert secrets.scrub("card 4000000000000002 token tok-xyz1") == \
        f"card {REDACTED} token {REDACTED}"


# -- end to end: the audit file -------------------------------------------------------------


def _audit(gw: Any) -> list[dict[str, Any]]:
    gw.server.telemetry.force_flush()
    return [json.loads(line) for line in gw.settings.audit.file.read_text().splitlines()
            if line.strip()]


@pytest.mark.parametrize("shape", ["camel", "screaming", "kebab-in-array", "subtree"])
def test_nested_variants_never_reach_the_audit_file(gateway: Any, shape: str) -> None:
    card, cvv, pw = "4000000000000002", f"{uuid.uuid4().int % 10**6:06d}", \
        f"pw-{uuid.uuid4().hex[:12]}"
    args: dict[str, Any] = {
        "camel": {"payment": {"cardNumber": card, "securityCode": 1,
                              "owner": {"Password": pw, "cvv": cvv}}},
        "screaming": {"PAYMENT": {"CARD_NUMBER": card, "CVV": cvv, "PASSWORD": pw}},
        "kebab-in-array": {"payment": {"cards": [{}, {}, {}, {"card-number": card, "cvv": cvv,
                                                              "pass-word": pw}]}},
        "subtree": {"card_number": {"pan": card, "cvv": cvv}, "login": {"user_password": pw}},
    }[shape]
    resp = gateway.stub.Execute(tool_request("ledger.list_accounts", args),
                                metadata=md("dev-agent"), timeout=scaled(120))

    def mine() -> list[dict[str, Any]]:
        return [r for r in _audit(gateway) if r.get("trace_id") == resp.trace_id
                and "switchboard.arguments" in r.get("attributes", {})]

    wait_until_sync(mine, 60, what="the call's root record")
    text = gateway.settings.audit.file.read_text()
    leaked = [n for n, v in (("card", card), ("password", pw), ("cvv", cvv)) if v in text]
    assert not leaked, leaked


def test_a_refused_call_with_nested_secrets_leaks_nothing(gateway: Any) -> None:
    """A schema refusal (the message could quote the instance) of a call whose arguments carry
    nested secrets: neither the error nor the audit file holds them."""
    pw = f"pw-{uuid.uuid4().hex[:12]}"
    card = "4000000000000002"
    args = {"account": ["not", "a", "string"],
            "payment": {"cardNumber": card, "login": {"password": pw}}}
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.Execute(tool_request("ledger.get_balance", args),
                             metadata=md("dev-agent"), timeout=scaled(120))
    err = error_of(info.value)
    assert pw not in json.dumps(err) and card not in json.dumps(err), err
    gateway.server.telemetry.force_flush()
    text = gateway.settings.audit.file.read_text()
    assert pw not in text and card not in text
