"""Every host call a run makes is one bounded ``host_call`` record (round 3, findings 3 and 4).

docs/sandbox.md: every SDK call is a host call, budgeted; docs/audit.md: each is a
``host_call <operation>`` span and ``switchboard.host_calls`` counts them. These runs make
calls of every kind — discovery, tools, refused by the policy or the schema, refused by the pool
before the pipeline sees them (an operation not in the SDK, arguments that are not JSON, past
the budget) — and check the trail has each one, bounded, without a stack trace.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from gateway_support import code_request, md
from google.protobuf import json_format
from waiting import scaled, wait_until_sync

pytestmark = pytest.mark.timeout(600)

RECORD_MAX = 64 * 1024

PRELUDE = """
import json, sdk, _sandbox_runner as runner
from sdk import ledger
from pyodide.ffi import run_sync
codes = []
def attempt(f):
    try:
        f()
        codes.append('ok')
    except sdk.SdkError as e:
        codes.append(e.code)
"""
# Two runs (a loaded machine runs Pyodide slowly; each stays well inside its time limit).
RUNS = {
    "discovery": """
attempt(lambda: sdk.search('balance'))
attempt(lambda: sdk.describe('ledger.get_balance'))
attempt(lambda: sdk.describe('N' * 100_000))                   # unknown, a huge name
attempt(lambda: sdk.describe('ledger.get_balance', path='P' * 100_000))
result = codes
""",
    "tools": """
attempt(lambda: ledger.get_balance(account='A1'))
attempt(lambda: ledger.get_balance(account='Z' * 100_000))     # schema refusal, huge value
attempt(lambda: runner._call('ledger.no_such_operation', {}))  # refused by the pool
reply = json.loads(run_sync(runner._state['host']('ledger.get_balance', '{"account": "A1"')))
codes.append(reply['error']['code'])                           # not JSON: refused by the pool
result = codes
""",
}
EXPECTED = {"discovery": ["ok", "ok", "invalid_request", "invalid_request"],
            "tools": ["ok", "schema_invalid", "invalid_request", "invalid_request"]}


def _audit(gw: Any) -> list[dict[str, Any]]:
    gw.server.telemetry.force_flush()
    return [json.loads(line) for line in gw.settings.audit.file.read_text().splitlines()
            if line.strip()]


def _run_records(gw: Any, trace_id: str) -> list[dict[str, Any]]:
    def mine() -> list[dict[str, Any]]:
        found = [r for r in _audit(gw) if r.get("trace_id") == trace_id]
        return found if any(r.get("parent_span_id") is None for r in found) else []

    return wait_until_sync(mine, 60, what="the run's records")


@pytest.mark.parametrize("run", sorted(RUNS))
def test_every_kind_of_host_call_is_one_bounded_record(gateway: Any, run: str) -> None:
    resp = gateway.stub.Execute(code_request(PRELUDE + RUNS[run]), metadata=md("dev-finance"),
                                timeout=scaled(120))
    codes = json_format.MessageToDict(resp.result)
    assert codes == EXPECTED[run]
    records = _run_records(gateway, resp.trace_id)
    root = next(r for r in records if r.get("parent_span_id") is None)
    calls = [r for r in records if str(r.get("name", "")).startswith("host_call ")]
    assert root["attributes"]["switchboard.host_calls"] == len(codes) == len(calls), (
        root["attributes"], [c["name"] for c in calls])
    assert sorted(c["attributes"]["switchboard.outcome"] for c in calls) == sorted(codes)
    for rec in calls:
        assert len(json.dumps(rec)) <= RECORD_MAX, (rec["name"], len(json.dumps(rec)))
        assert not any("exception.stacktrace" in e.get("attributes", {})
                       for e in rec.get("events", [])), rec["name"]
    for rec in records:  # the run's other spans too (sandbox.run, policy.decide, the root)
        assert len(json.dumps(rec)) <= RECORD_MAX, (rec["name"], len(json.dumps(rec)))


def test_calls_past_the_budget_are_counted_and_recorded(gateway: Any) -> None:
    """dev-agent's budget is 50 host calls: calls the pool refuses and discovery calls spend it
    like tool calls, and the call past it is refused and still recorded."""
    source = PRELUDE + (
        "for i in range(49):\n"
        "    attempt(lambda: runner._call('ledger.no_such_operation', {}))\n"
        "attempt(lambda: sdk.search('balance'))\n"
        "attempt(lambda: sdk.search('balance'))\n"
        "result = [codes.count('invalid_request'), codes[-2:]]\n")
    resp = gateway.stub.Execute(code_request(source), metadata=md("dev-agent"),
                                timeout=scaled(120))
    assert json_format.MessageToDict(resp.result) == [49, ["ok", "resource_exhausted"]]
    records = _run_records(gateway, resp.trace_id)
    root = next(r for r in records if r.get("parent_span_id") is None)
    calls = [r for r in records if str(r.get("name", "")).startswith("host_call ")]
    assert root["attributes"]["switchboard.host_calls"] == 51 == len(calls)
    outcomes = [c["attributes"]["switchboard.outcome"] for c in calls]
    assert outcomes.count("resource_exhausted") == 1 and outcomes.count("ok") == 1
