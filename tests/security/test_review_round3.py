"""Findings of the third 2026-12-01 security review round, against the real server.

Each ``xfail(strict=True)`` test reproduces a confirmed break of a documented promise; it fails
today and flips to XPASS (a failure under ``strict``) once the root cause is fixed, so the
marker must then be removed. The plain tests pin down attacks that held where no other test
covers the promise.

The cases that stall or may crash the gateway run against a real ``switchboard serve``
subprocess of their own (an in-process gateway would take the test runner down with it).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from gateway_support import (
    code_request,
    error_of,
    mcp_endpoint,
    md,
    serve_demo_gateway,
    serve_with_second_tenant,
    tool_request,
)
from google.protobuf import json_format
from waiting import scaled, wait_until_sync

from gateway._proto.switchboard.v1 import approvals_pb2 as apb
from gateway._proto.switchboard.v1 import approvals_pb2_grpc as apb_grpc
from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(900)




@pytest.fixture
def own_gateway(backends: dict[str, Any], tmp_path: Path) -> Iterator[pb_grpc.GatewayStub]:
    """A ``switchboard serve`` child for one test (killed after it, however stuck it is)."""
    proc = serve_demo_gateway(backends, tmp_path)
    channel = grpc.insecure_channel(proc.url.removeprefix("grpc://"))
    try:
        yield pb_grpc.GatewayStub(channel)  # type: ignore[no-untyped-call]
    finally:
        channel.close()
        proc.stop(timeout=scaled(15))


def _result(resp: pb.ExecuteResponse) -> Any:
    return json_format.MessageToDict(resp.result) if resp.HasField("result") else None


# -- finding 1: a caller's output_schema is evaluated in exponential / quadratic time --------

def _ref_fanout_schema(levels: int) -> dict[str, Any]:
    """Forty local definitions, each referring twice to the next: 2**40 evaluations of a
    schema a few KiB long ("billion laughs" for JSON Schema). Only '#…' references, no
    pattern: everything check_untrusted lets through."""
    defs: dict[str, Any] = {
        f"d{i}": {"allOf": [{"$ref": f"#/$defs/d{i + 1}"}, {"$ref": f"#/$defs/d{i + 1}"}]}
        for i in range(levels)}
    defs[f"d{levels}"] = {"type": "integer"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


OUTPUT_SCHEMA_BOMBS = {
    # any result at all: 1
    "local-ref-fanout": ("1", _ref_fanout_schema(40)),
    # jsonschema's uniqueItems compares unsortable items pairwise: 30,000 distinct objects are
    # ~4.5e8 comparisons (a 330 KB result, well under max_result_bytes)
    "unique-items": ("[{'k': i} for i in range(30000)]",
                     {"type": "array", "uniqueItems": True}),
}


@pytest.mark.parametrize("bomb", sorted(OUTPUT_SCHEMA_BOMBS))
def test_a_costly_output_schema_does_not_stall_other_callers(
        own_gateway: pb_grpc.GatewayStub, bomb: str) -> None:
    stub = own_gateway
    assert stub.Execute(tool_request("ledger.get_balance", {"account": "A1"}),
                        metadata=md("dev-finance"), timeout=scaled(120)).trace_id
    source, schema = OUTPUT_SCHEMA_BOMBS[bomb]
    attack = code_request(source)
    attack.code_run.output_schema.update(schema)
    outcome: dict[str, Any] = {}

    def send() -> None:
        try:
            outcome["response"] = stub.Execute(attack, metadata=md("dev-agent"),
                                               timeout=scaled(600))
        except grpc.RpcError as err:
            outcome["error"] = err.code()

    attacker = threading.Thread(target=send, daemon=True)
    attacker.start()
    deadline = time.monotonic() + scaled(300)
    served = 0
    while attacker.is_alive() and time.monotonic() < deadline:
        # Another principal's tool call (no sandbox process needed), with a deadline far
        # above its own cost.
        try:
            stub.Execute(tool_request("ledger.get_balance", {"account": "A1"}),
                         metadata=md("dev-finance"), timeout=scaled(30))
        except grpc.RpcError as err:
            pytest.fail(f"a bystander's call failed with {err.code()} after {served} "
                        "succeeded while the attacker's result was validated")
        served += 1
    assert not attacker.is_alive(), "the attacker's run never finished"


# -- finding 2: the Web Cache API is a disk-backed store shared by every run and principal --

# Sandboxed code reaches the JS global scope (docs/sandbox.md); Deno's Cache API there needs no
# permission and persists to $DENO_DIR/location_data/web_cache, which every process of the pool
# shares and no run ever clears.
_JS = ("import pyodide_js\nfrom pyodide.ffi import run_sync\n"
       "F = pyodide_js._module.constructor.constructor\n")
CACHE_PUT = _JS + (
    "put = F('v', 'return (async () => { const c = await caches.open(\"r3\");'\n"
    "        ' await c.put(\"http://x/k\", new Response(v)); return \"stored\"; })()')\n"
    "result = run_sync(put(inputs['marker']))\n")
CACHE_GET = _JS + (
    "get = F('return (async () => { const c = await caches.open(\"r3\");'\n"
    "        ' const r = await c.match(\"http://x/k\"); return r ? await r.text() : \"\"; })()')\n"
    "try:\n"
    "    result = run_sync(get())\n"
    "except Exception as e:\n"
    "    result = 'refused: ' + type(e).__name__\n")


def test_a_run_cannot_leave_data_for_another_principals_run(gateway: Any) -> None:
    marker = f"R3-SECRET-{time.time_ns()}"
    wrote = gateway.stub.Execute(code_request(CACHE_PUT, inputs={"marker": marker}),
                                 metadata=md("dev-agent"), timeout=scaled(120))
    seen = []
    for _ in range(3):  # later isolated runs, fresh isolates, another principal
        resp = gateway.stub.Execute(code_request(CACHE_GET), metadata=md("dev-finance"),
                                    timeout=scaled(120))
        seen.append(json_format.MessageToJson(resp))
    assert not any(marker in s for s in seen), (
        f"dev-finance read what dev-agent's run stored (that run said "
        f"{_result(wrote)!r})")


# -- finding 3: sdk.search / sdk.describe from code leave no trace in the audit record -------


def _audit(gw: Any) -> list[dict[str, Any]]:
    gw.server.telemetry.force_flush()
    return [json.loads(line) for line in gw.settings.audit.file.read_text().splitlines()
            if line.strip()]


def test_sdk_discovery_calls_from_code_are_in_the_audit_record(gateway: Any) -> None:
    source = ("import sdk\n"
              "result = [len(sdk.search('balance')), 'name' in sdk.describe('ledger.get_balance')]")
    resp = gateway.stub.Execute(code_request(source), metadata=md("dev-agent"),
                                timeout=scaled(120))
    assert _result(resp) == [2, True]  # both host calls were answered

    def mine() -> list[dict[str, Any]]:
        found = [r for r in _audit(gateway) if r.get("trace_id") == resp.trace_id]
        return found if any(r.get("parent_span_id") is None for r in found) else []

    records = wait_until_sync(mine, 60, what="the run's records")
    root = next(r for r in records if r.get("parent_span_id") is None)
    calls = [r["name"] for r in records if str(r.get("name", "")).startswith("host_call")]
    # Two host calls were made and budgeted (docs/sandbox.md): the trail says so.
    assert root["attributes"].get("switchboard.host_calls") == 2, root["attributes"]
    assert sorted(calls) == ["host_call sdk.describe", "host_call sdk.search"], calls


# -- finding 4: a host call's error is recorded unbounded, three times over -----------------

# Four refused host calls with a 500 kB argument each (well inside the run's 8 MiB of host-call
# arguments): the schema error quotes the value, and the host_call span records it as its
# status message, as an exception event's message and inside that event's stack trace.
AUDIT_FLOOD = (
    "from sdk import ledger\n"
    "for _ in range(4):\n"
    "    try:\n"
    "        ledger.get_balance(account='Z' * 500_000)\n"
    "    except Exception:\n"
    "        pass\n"
    "result = 'done'\n")


def test_a_refused_host_call_leaves_a_bounded_audit_record(gateway: Any) -> None:
    audit = gateway.settings.audit.file
    gateway.server.telemetry.force_flush()
    before = audit.stat().st_size
    resp = gateway.stub.Execute(code_request(AUDIT_FLOOD), metadata=md("dev-finance"),
                                timeout=scaled(120))
    assert _result(resp) == "done"

    def mine() -> list[dict[str, Any]]:
        found = [r for r in _audit(gateway) if r.get("trace_id") == resp.trace_id]
        return found if any(r.get("parent_span_id") is None for r in found) else []

    records = wait_until_sync(mine, 60, what="the run's records")
    calls = [r for r in records if r["name"] == "host_call ledger.get_balance"]
    assert len(calls) == 4
    assert all(r["attributes"]["switchboard.outcome"] == "schema_invalid" for r in calls)
    # As on the tool door's root span: the refusal is recorded, bounded, and an expected
    # error carries no stack trace (docs/audit.md, record_outcome).
    biggest = max(len(json.dumps(r)) for r in calls)
    traced = [e for r in calls for e in r.get("events", [])
              if "exception.stacktrace" in e.get("attributes", {})]
    grown = audit.stat().st_size - before
    assert biggest <= 64 * 1024 and not traced and grown <= 1024 * 1024, (
        f"largest host_call record {biggest} bytes, {len(traced)} stack traces of an expected "
        f"error; the audit file grew {grown} bytes for one run")


# -- attacks that held -------------------------------------------------------------------------


def test_concurrent_duplicates_with_different_arguments_make_one_transfer(
        gateway: Any, backends: dict[str, Any]) -> None:
    """Exactly-once under a race: twelve concurrent create_transfer calls under one request_id,
    half with another amount. One transfer reaches the ledger; every other call is a replay of
    it (same arguments) or idempotency_conflict (other arguments), never a second effect."""
    rid = f"race-{uuid.uuid4().hex}"
    outcomes: list[tuple[int, str, bool]] = []
    lock = threading.Lock()

    def call(amount: int) -> None:
        args = {"from_account": "A1", "to_account": "A2", "amount": amount,
                "currency": "USD", "memo": rid}
        try:
            resp = gateway.stub.Execute(tool_request("ledger.create_transfer", args, rid),
                                        metadata=md("dev-finance"), timeout=scaled(120))
            got = (amount, "ok", resp.replayed)
        except grpc.RpcError as err:
            got = (amount, str(error_of(err).get("code")), False)
        with lock:
            outcomes.append(got)

    threads = [threading.Thread(target=call, args=(3 if i % 2 else 4,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(scaled(300))
    assert len(outcomes) == 12
    winners = {a for a, code, replayed in outcomes if code == "ok" and not replayed}
    assert len(winners) == 1, outcomes
    (winner,) = winners
    for amount, code, _ in outcomes:
        assert code == ("ok" if amount == winner else "idempotency_conflict"), outcomes
    with urllib.request.urlopen(f"{backends['ledger'].url}/transfers?limit=500",
                                timeout=30) as resp:
        items = json.load(resp)
    assert sum(1 for t in items if t.get("memo") == rid) == 1


@pytest.fixture(scope="module")
def mcp_url(gateway: Any) -> Iterator[str]:
    yield from mcp_endpoint(gateway)


def test_an_mcp_argument_integer_past_64_bits_fails_closed(mcp_url: str) -> None:
    """MCP's JSON carries integers of any size (gRPC's Struct cannot): one the policy engine
    cannot take is a fail-closed policy_error for that call, not an allow and not a crash."""
    headers = {"authorization": "Bearer dev-agent", "accept": "application/json",
               "content-type": "application/json", "mcp-protocol-version": "2025-06-18"}
    body = ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":'
            '"ledger__get_balance","arguments":{"account":' + "9" * 400 + "}}}")
    resp = httpx.post(mcp_url, headers=headers, content=body, timeout=scaled(60))
    assert resp.status_code == 200, resp.text[:300]
    result = resp.json()["result"]
    assert result["isError"] is True
    assert result["structuredContent"]["error"]["code"] == "policy_error"
    listed = httpx.post(mcp_url, headers=headers, timeout=scaled(60),
                        json={"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}})
    assert listed.status_code == 200 and listed.json()["result"]["tools"]


POLICIES = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture
def two_tenant_approvers(backends: dict[str, Any], tmp_path: Path) -> Iterator[grpc.Channel]:
    """Tenant acme with its own approver and a principal sharing dev-finance's id."""
    proc = serve_with_second_tenant(backends, tmp_path, POLICIES, {
        "acme-approver": {"id": "approver-9", "tenant": "acme", "roles": ["approver"]},
        # the requester's own id, in another tenant, with the approver role
        "acme-finance-approver": {"id": "finance-1", "tenant": "acme", "roles": ["approver"]}})
    channel = grpc.insecure_channel(proc.url.removeprefix("grpc://"))
    try:
        yield channel
    finally:
        channel.close()
        proc.stop()


def test_an_approver_of_another_tenant_can_neither_see_nor_decide_an_approval(
        two_tenant_approvers: grpc.Channel) -> None:
    """A held demo transfer: approvers of tenant acme (one even with the requester's principal
    id) get approval_not_found for Get, Approve and Reject and do not see it listed; the
    transfer stays held until demo's approver decides."""
    stub = pb_grpc.GatewayStub(two_tenant_approvers)  # type: ignore[no-untyped-call]
    approvals = apb_grpc.ApprovalsServiceStub(two_tenant_approvers)  # type: ignore[no-untyped-call]
    rid = f"xtenant-{uuid.uuid4().hex}"
    args = {"from_account": "A1", "to_account": "A2", "amount": 1500, "currency": "USD",
            "memo": rid}
    with pytest.raises(grpc.RpcError) as held:
        stub.Execute(tool_request("ledger.create_transfer", args, rid),
                     metadata=md("dev-finance"), timeout=scaled(120))
    approval_id = error_of(held.value)["details"]["approval_id"]
    for token in ("acme-approver", "acme-finance-approver"):
        listed = approvals.ListApprovals(apb.ListApprovalsRequest(state="all"),
                                         metadata=md(token), timeout=scaled(60))
        assert approval_id not in {a.approval_id for a in listed.approvals}
        for rpc, req in ((approvals.GetApproval, apb.GetApprovalRequest(approval_id=approval_id)),
                         (approvals.Approve, apb.ApproveRequest(approval_id=approval_id)),
                         (approvals.Reject, apb.RejectRequest(approval_id=approval_id))):
            with pytest.raises(grpc.RpcError) as info:
                rpc(req, metadata=md(token), timeout=scaled(60))
            assert error_of(info.value)["code"] == "approval_not_found", (token, rpc)
    with pytest.raises(grpc.RpcError) as again:
        stub.Execute(tool_request("ledger.create_transfer", args, rid),
                     metadata=md("dev-finance"), timeout=scaled(120))
    assert error_of(again.value)["code"] == "approval_required"


# -- finding 5: masking is exact-path, the shipped masks are top-level only ------------------


def test_sensitive_fields_nested_in_arguments_never_reach_the_audit_file(gateway: Any) -> None:
    card, cvv, password = "4000000000000002", "9876", f"pw-{uuid.uuid4().hex[:12]}"
    args = {"card_number": "4111111111111111",  # masked: top level
            "payment": {"card_number": card, "cvv": cvv, "password": password}}
    resp = gateway.stub.Execute(tool_request("ledger.list_accounts", args),
                                metadata=md("dev-agent"), timeout=scaled(120))

    def mine() -> list[dict[str, Any]]:
        return [r for r in _audit(gateway) if r.get("trace_id") == resp.trace_id
                and "switchboard.arguments" in r.get("attributes", {})]

    (root,) = wait_until_sync(mine, 60, what="the call's root record")
    recorded = json.loads(root["attributes"]["switchboard.arguments"])["arguments"]
    assert recorded["card_number"] == "[REDACTED]"  # the shipped mask does work at the top
    text = gateway.settings.audit.file.read_text()
    leaked = [name for name, value in (("card number", card), ("password", password))
              if value in text]
    assert not leaked, f"in clear in the audit file: {leaked}; recorded {recorded}"


# -- finding 6: a result nested past the host's recursion limit is an internal error ---------

# The worker is untrusted (docs/sandbox.md): code can post its own `done` frame, whose reply the
# host parses with json.loads. 100,000 levels raise RecursionError, which result_of does not
# treat as a malformed result.
DEEP_DONE = _JS + (
    "import json, time\n"
    "g = F('return globalThis')()\n"
    "reply = '{\"ok\": true, \"result\": ' + '[' * 100000 + ']' * 100000 + '}'\n"
    "g.postMessage(g.JSON.parse(json.dumps({'t': 'done', 'reply': reply, 'truncated': False,\n"
    "                                       'fatal': False, 'ms': 1})))\n"
    "time.sleep(1)\n")


def test_a_result_nested_too_deep_is_a_sandbox_crash_not_an_internal_error(
        gateway: Any) -> None:
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.Execute(code_request(DEEP_DONE), metadata=md("dev-agent"),
                             timeout=scaled(120))
    assert error_of(info.value)["code"] == "sandbox_crashed", error_of(info.value)
    assert _result(gateway.stub.Execute(code_request("2 + 2"), metadata=md("dev-agent"),
                                        timeout=scaled(120))) == 4
