"""Masked values never leak through error text.

The policy's ``mask`` names argument fields the trail must not hold (``from_account`` of a
payment; here also ``account`` of every call, via a test copy of the policy data). Such a value
that fails the schema pattern (jsonschema's message repeats the instance), or that the backend's
404 repeats ("account 'X' does not exist"), must appear nowhere: not in any span, event or
status message at a real OTLP receiver, not in the audit file, not in the log events, and not
in the error the client gets back (the caller sent it, but error text does not echo it). That
holds for dedicated tool calls, their idempotent replays, and host calls from code.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from gateway_support import RunningGateway, code_request, error_of, md, tool_request
from otlp_receiver import OtlpReceiver
from structlog.testing import capture_logs

import gateway.audit.logs
from gateway.audit import AuditSettings
from gateway.audit import attributes as A
from gateway.audit.logs import add_trace_context, scrub_event
from gateway.audit.redact import CallSecrets, masked_forms, scrub_text, scrub_value
from gateway.config import embedded_defaults
from gateway.errors import SchemaInvalid
from gateway.models import BackendSettings, Operation
from gateway.policy import PolicySettings
from gateway.sandbox import SandboxSettings
from gateway.tools import IdempotencySettings, validate_arguments

pytestmark = pytest.mark.timeout(240)
REPO = Path(__file__).resolve().parents[2]

# Each secret has an alphanumeric core that every spelling of it contains (JSON-escaped,
# URL-encoded, repr): the core found anywhere means the value leaked.
SCHEMA_CORE = "SECRETSCHEMA7"
SCHEMA_BAD = f'Qx {SCHEMA_CORE} "ü/'  # fails ^[A-Za-z0-9_-]{{1,32}}$
MISSING_CORE = "SECRET404Z9"  # a well-formed account the ledger does not have
HOST_BAD_CORE = "SECRETHOSTBAD1"
HOST_MISSING_CORE = "SECRETHOST404Q"
CORES = (SCHEMA_CORE, MISSING_CORE, HOST_BAD_CORE, HOST_MISSING_CORE)


@pytest.fixture(scope="module")
def rx() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def gw(backends: dict[str, Any], rx: OtlpReceiver,
       tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    state = tmp_path_factory.mktemp("gw-masking")
    policies = state / "policies"
    shutil.copytree(REPO / "policies", policies)
    data_file = policies / "switchboard" / "data.json"
    data = json.loads(data_file.read_text())
    data["mask"]["always"].append("action.arguments.account")  # masks host calls' accounts
    data_file.write_text(json.dumps(data))
    settings = replace(
        embedded_defaults(state), listen="127.0.0.1:0", sandbox=SandboxSettings(workers=1),
        policy=PolicySettings(path=policies, reload=False),
        idempotency=IdempotencySettings(dsn=f"sqlite:///{state / 'idempotency.db'}"),
        audit=AuditSettings(file=state / "audit.jsonl", otlp_endpoint=rx.endpoint,
                            otlp_protocol="grpc", otlp_schedule_delay_ms=50, log_format="json",
                            fsync="never"),
        backends=tuple(BackendSettings(name=n, openapi=f"{s.url}/openapi.json", base_url=s.url)
                       for n, s in backends.items()))
    g = RunningGateway(settings)
    yield g
    g.stop()


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """The log events of the calls, after the gateway's own processors (as rendered), the
    `policy.decision` lines included (debug by default: an operator may turn them on)."""
    monkeypatch.setattr(gateway.audit.logs, "_decision_level", logging.INFO)
    with capture_logs(processors=[structlog.contextvars.merge_contextvars, add_trace_context,
                                  scrub_event]) as events:
        yield events


def _leaks(text: str) -> list[str]:
    return [core for core in CORES if core in text]


def _spans_text(gw: RunningGateway, rx: OtlpReceiver, trace_id: str, at_least: int) -> str:
    """Everything the collector received for the trace: names, attributes, events, status."""
    assert gw.server is not None
    gw.server.telemetry.force_flush()
    deadline = time.monotonic() + 20
    while len(rx.trace(trace_id)) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    spans = rx.trace(trace_id)
    assert len(spans) >= at_least, rx.render(trace_id)
    return json.dumps([[s.name, s.attributes, s.events, s.status_message] for s in spans],
                      default=str, ensure_ascii=False)


def _audit_text(gw: RunningGateway) -> str:
    file = gw.settings.audit.file
    assert file is not None
    raw = file.read_text()
    decoded = [json.loads(line) for line in raw.splitlines() if line.strip()]
    return raw + json.dumps(decoded, ensure_ascii=False)


def _rpc_error(gw: RunningGateway, request: Any, token: str) -> tuple[grpc.RpcError, str]:
    with pytest.raises(grpc.RpcError) as info:
        gw.stub.Execute(request, metadata=md(token), timeout=30)
    err = info.value
    text = json.dumps([err.details(), error_of(err)], ensure_ascii=False)  # type: ignore[attr-defined]
    return err, text


def test_schema_error_of_a_masked_field_never_quotes_it(
        gw: RunningGateway, rx: OtlpReceiver, logs: list[dict[str, Any]]) -> None:
    args = {"from_account": SCHEMA_BAD, "to_account": "A2", "amount": 1, "currency": "USD"}
    err, client_text = _rpc_error(gw, tool_request("ledger.create_transfer", args),
                                  "dev-finance")
    payload = error_of(err)
    assert payload["code"] == "schema_invalid"
    # The caller still learns which field broke which rule ...
    assert payload["field"] == "arguments.from_account"
    assert "pattern" in payload["message"] and "not shown" in payload["message"]
    # ... but no error text, span, record or log quotes the value.
    assert _leaks(client_text) == [], client_text
    assert _leaks(_spans_text(gw, rx, payload["trace_id"], 2)) == []
    assert _leaks(_audit_text(gw)) == []
    assert logs and _leaks(json.dumps(logs, default=str, ensure_ascii=False)) == []


def test_backend_404_repeating_a_masked_value_is_scrubbed_everywhere(
        gw: RunningGateway, rx: OtlpReceiver, logs: list[dict[str, Any]]) -> None:
    args = {"from_account": MISSING_CORE, "to_account": "A2", "amount": 1, "currency": "USD"}
    rid = f"req-{uuid.uuid4()}"
    for attempt in ("first", "replay"):  # the recorded error replays scrubbed, too
        err, client_text = _rpc_error(gw, tool_request("ledger.create_transfer", args, rid),
                                      "dev-finance")
        payload = error_of(err)
        assert payload["code"] == "backend_error", payload
        assert "404" in payload["message"] and "[REDACTED]" in payload["message"], attempt
        assert _leaks(client_text) == [], (attempt, client_text)
        assert payload["details"]["status"] == 404
        assert bool(payload["details"].get("replayed")) == (attempt == "replay")
        spans = _spans_text(gw, rx, payload["trace_id"], 3)
        assert _leaks(spans) == [], attempt
        # the first attempt reached the backend (whose 404 quoted the account)
        assert ("backend.call ledger.create_transfer" in spans) == (attempt == "first")
    assert _leaks(_audit_text(gw)) == []
    assert logs and _leaks(json.dumps(logs, default=str, ensure_ascii=False)) == []


def test_host_calls_from_code_do_not_echo_masked_values(
        gw: RunningGateway, rx: OtlpReceiver, logs: list[dict[str, Any]]) -> None:
    # The values arrive as inputs, so the source (and its traceback lines) never holds them.
    src = ("from sdk import ledger\n"
           "msgs = []\n"
           "for a in (inputs['bad'], inputs['missing']):\n"
           "    try:\n"
           "        ledger.get_balance(account=a)\n"
           "    except Exception as e:\n"
           "        msgs.append(str(e))\n"
           "raise RuntimeError(' | '.join(msgs))\n")
    inputs = {"bad": f"bad {HOST_BAD_CORE}!", "missing": HOST_MISSING_CORE}
    resp = gw.stub.Execute(code_request(src, inputs=inputs), metadata=md("dev-agent"),
                           timeout=120)
    assert resp.error.code == "user_code_error", resp
    client_text = json.dumps([resp.error.message, resp.error.field, str(resp.error.details),
                              resp.stderr], ensure_ascii=False)
    # Both host calls failed for the reasons expected, without quoting the value.
    assert "schema_invalid" in client_text and "backend_error" in client_text, client_text
    assert _leaks(client_text) == [], client_text
    spans = _spans_text(gw, rx, resp.trace_id, 7)
    assert "host_call ledger.get_balance" in spans
    assert _leaks(spans) == []
    assert _leaks(_audit_text(gw)) == []
    assert logs and _leaks(json.dumps(logs, default=str, ensure_ascii=False)) == []


# -- the rules, at the unit level ------------------------------------------------------------

NESTED = Operation(
    name="demo.pay", backend="demo", operation_id="pay", method="POST", path="/pay", summary="pay",
    input_schema={
        "type": "object",
        "properties": {
            "payer": {"type": "object", "properties": {
                "account": {"type": "string", "pattern": "^A[0-9]+$"},
                "pin": {"type": "integer", "maximum": 9999}}},
            "lines": {"type": "array", "items": {"type": "string", "maxLength": 3}},
        },
        "not": {"required": ["forbidden"]},
    },
)


def test_validator_messages_never_quote_masked_values_nested_or_whole() -> None:
    args = {"payer": {"account": "SECRETNESTED1", "pin": 123456},
            "lines": ["ok", "SECRETLINE22"], "forbidden": True}
    mask = ("action.arguments.payer.account", "action.arguments.payer.pin",
            "action.arguments.lines.*")
    with pytest.raises(SchemaInvalid) as info:
        validate_arguments(NESTED, args, strict=False, mask=mask)
    text = json.dumps([info.value.message, info.value.details])
    # the root-level `not` error would repr the whole arguments object, masked values included
    for secret in ("SECRETNESTED1", "123456", "SECRETLINE22"):
        assert secret not in text, text
    fields = {e["field"]: e for e in info.value.details["errors"]}
    assert set(fields) >= {"arguments.payer.account", "arguments.payer.pin", "arguments.lines[1]",
                           "arguments"}
    assert "'^A[0-9]+$'" in fields["arguments.payer.account"]["message"]
    # without a mask the messages are jsonschema's own (nothing withheld needlessly)
    with pytest.raises(SchemaInvalid) as plain:
        validate_arguments(NESTED, args, strict=False)
    assert "SECRETNESTED1" in json.dumps(plain.value.details)


def test_call_secrets_forms_and_the_short_value_rule() -> None:
    value = 'SECRET "q"/ü x\n'
    secrets = CallSecrets()
    secrets.add([value, 12345, 1000.0, "1", 7, True, None])
    once = json.dumps(value)[1:-1]
    # raw, JSON-escaped (once, twice, non-ASCII kept), repr and URL-encoded spellings
    for spelling in [value, once, json.dumps(once)[1:-1], json.dumps(value, ensure_ascii=False),
                     repr(value), "SECRET%20%22q%22%2F%C3%BC%20x%0A",
                     "SECRET+%22q%22%2F%C3%BC+x%0A"]:
        assert "SECRET" not in scrub_text(f"<{spelling}>", secrets), spelling
    assert scrub_text("amount 1000.0 or 1000 of 12345", secrets) == (
        "amount [REDACTED] or [REDACTED] of [REDACTED]")
    # a masked "1" (or 7, or True) is too short to scrub from free text: no garbage
    assert scrub_text("1 attempt(s), status 201, 7 days, true", secrets) == (
        "1 attempt(s), status 201, 7 days, true")
    assert masked_forms("abc") == set() and masked_forms(True) == set()
    # facts the gateway establishes are never scrubbed for a call's values (a caller could
    # otherwise blank out its own principal id or outcome by choosing a masked value)
    assert scrub_value(A.PRINCIPAL_ID, "12345", secrets) == "12345"
    assert scrub_value(A.OUTCOME, "12345", secrets) == "12345"
    assert scrub_value("exception.message", "no 12345", secrets) == "no [REDACTED]"
