"""Tenant isolation through the assembled gateway.

A second tenant ``other`` (known to the policy, allowed the code channel, granted no backend)
shares the gateway with tenant ``demo``. Its principal even reuses demo's principal id
(``agent-1``): nothing may be keyed by the id alone. It must not call demo's operations (as
tools or from code), must not see them in search/describe/manifest, must not reach another
principal's code session, and must not see demo's records in the audit trail.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from gateway_support import (
    RunningGateway,
    code_request,
    error_of,
    gateway_settings,
    md,
    tool_request,
)
from load_support import policy_copy

from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway.audit import cli_audit_show, read_trace
from gateway.models import Principal

pytestmark = pytest.mark.timeout(180)

T = 20.0  # per-call deadline


@pytest.fixture(scope="module")
def iso(backends: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
        ) -> Iterator[RunningGateway]:
    state: Path = tmp_path_factory.mktemp("isolation")
    policy = policy_copy(state / "policies", {
        "demo": {"backends": ["ledger", "workspace"]},
        "other": {"backends": []},
    })
    base = gateway_settings(state, backends)
    tokens = dict(base.identity.tokens)
    tokens["other-agent"] = Principal(id="agent-1", tenant="other", roles=("agent",))
    tokens["ghost-agent"] = Principal(id="ghost-1", tenant="ghost", roles=("agent",))
    settings = replace(base, identity=replace(base.identity, tokens=tokens),
                       policy=replace(base.policy, path=policy))
    gw = RunningGateway(settings)
    try:
        yield gw
    finally:
        gw.stop()


def _denied(gw: RunningGateway, req: pb.ExecuteRequest, token: str) -> dict[str, Any]:
    with pytest.raises(grpc.RpcError) as info:
        gw.stub.Execute(req, metadata=md(token), timeout=T)
    err = error_of(info.value)
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, err
    assert err["code"] == "policy_denied", err
    return err


@pytest.mark.parametrize(("name", "args"), [
    ("ledger.get_balance", {"account": "A1"}),
    ("ledger.list_accounts", {}),
    ("workspace.list_events", {}),
    ("workspace.send_email", {"to": "x@example.com", "subject": "s", "body": "b"}),
])
def test_other_tenant_cannot_call_demo_operations(iso: RunningGateway, name: str,
                                                  args: dict[str, Any]) -> None:
    err = _denied(iso, tool_request(name, args), "other-agent")
    backend = name.split(".")[0]
    reasons = err["details"]["reasons"]
    assert any(f'tenant "other" may not use backend "{backend}"' in r for r in reasons), reasons
    # The same call is fine for demo's principal (the denial is about the tenant).
    if name != "workspace.send_email":
        iso.stub.Execute(tool_request(name, args), metadata=md("dev-agent"), timeout=T)


def test_other_tenant_cannot_move_demo_money(iso: RunningGateway) -> None:
    args = {"from_account": "A1", "to_account": "A2", "amount": 1, "currency": "USD"}
    _denied(iso, tool_request("ledger.create_transfer", args), "other-agent")


def test_other_tenant_cannot_reach_demo_operations_from_code(iso: RunningGateway) -> None:
    source = (
        "from sdk import ledger\n"
        "try:\n"
        "    ledger.get_balance(account='A1')\n"
        "    result = 'reached'\n"
        "except Exception as exc:\n"
        "    result = getattr(exc, 'code', type(exc).__name__)\n"
    )
    resp = iso.stub.Execute(code_request(source), metadata=md("other-agent"), timeout=T)
    assert resp.result.string_value == "policy_denied", resp
    ok = iso.stub.Execute(code_request(source), metadata=md("dev-agent"), timeout=T)
    assert ok.result.string_value == "reached", ok


def test_other_tenant_does_not_discover_demo_operations(iso: RunningGateway) -> None:
    found = iso.stub.SearchOperations(pb.SearchOperationsRequest(query="account balance"),
                                      metadata=md("other-agent"), timeout=T)
    assert [op.name for op in found.operations] == []
    demo = iso.stub.SearchOperations(pb.SearchOperationsRequest(query="account balance"),
                                     metadata=md("dev-agent"), timeout=T)
    assert "ledger.get_balance" in [op.name for op in demo.operations]
    with pytest.raises(grpc.RpcError) as info:
        iso.stub.DescribeOperation(pb.DescribeOperationRequest(name="ledger.get_balance"),
                                   metadata=md("other-agent"), timeout=T)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    manifest = iso.stub.GetManifest(pb.GetManifestRequest(), metadata=md("other-agent"),
                                    timeout=T)
    assert all(t.kind != "dedicated" for t in manifest.tools)


def test_unknown_tenant_is_denied_everything(iso: RunningGateway) -> None:
    err = _denied(iso, code_request("1 + 1"), "ghost-agent")
    assert any('unknown tenant "ghost"' in r for r in err["details"]["reasons"]), err
    _denied(iso, tool_request("ledger.get_balance", {"account": "A1"}), "ghost-agent")


def test_code_sessions_are_per_principal(iso: RunningGateway) -> None:
    session = f"shared-{secrets.token_hex(4)}"
    secret = secrets.token_hex(8)
    iso.stub.Execute(code_request(f"secret = {secret!r}", session_id=session),
                     metadata=md("dev-agent"), timeout=T)
    # The owner sees its variable again (the session is real, so the checks below mean something).
    again = iso.stub.Execute(code_request("secret", session_id=session),
                             metadata=md("dev-agent"), timeout=T)
    assert again.result.string_value == secret
    probe = ("import sys\n"
             "found = [k for k, v in globals().items() if v == SECRET]\n"
             "found += [m for m in sys.modules if 'secret' in m]\n"
             "result = {'has_secret': 'secret' in globals(), 'found': found}\n")
    probe = probe.replace("SECRET", repr(secret))
    # Same session id, different tenant, *same principal id*: a fresh interpreter.
    # Same session id, same tenant, different principal: a fresh interpreter too.
    for token in ("other-agent", "dev-finance"):
        resp = iso.stub.Execute(code_request(probe, session_id=session), metadata=md(token),
                                timeout=T)
        assert not resp.error.code, resp.error
        assert resp.result.struct_value["has_secret"] is False, token
        assert list(resp.result.struct_value["found"]) == [], token
        resp = iso.stub.Execute(code_request("secret", session_id=session), metadata=md(token),
                                timeout=T)
        assert resp.error.code == "user_code_error", resp
        assert "NameError" in resp.error.message + str(resp.error.details), resp.error
    # The intruders' attempts did not clobber the owner's session.
    last = iso.stub.Execute(code_request("secret", session_id=session),
                            metadata=md("dev-agent"), timeout=T)
    assert last.result.string_value == secret


def test_audit_records_are_filtered_by_tenant(iso: RunningGateway) -> None:
    """Two tenants' calls share one (agent-propagated) trace id; each tenant sees only its own."""
    trace_id = secrets.token_hex(16)
    traceparent = (("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"),)
    demo_req = tool_request("ledger.get_balance", {"account": "A4"})
    iso.stub.Execute(demo_req, metadata=md("dev-agent") + traceparent, timeout=T)
    other_req = code_request("'other tenant was here'")
    iso.stub.Execute(other_req, metadata=md("other-agent") + traceparent, timeout=T)
    audit_file = iso.settings.audit.file
    assert audit_file is not None

    def request_ids(spans: list[dict[str, Any]]) -> set[str]:
        return {s["attributes"]["switchboard.request_id"] for s in spans
                if "switchboard.request_id" in s.get("attributes", {})}

    everything = read_trace(audit_file, trace_id)
    assert {demo_req.request_id, other_req.request_id} <= request_ids(everything)
    demo_view = read_trace(audit_file, trace_id, tenant="demo")
    other_view = read_trace(audit_file, trace_id, tenant="other")
    assert demo_req.request_id in request_ids(demo_view)
    assert other_req.request_id not in request_ids(demo_view)
    assert all(s["attributes"].get("switchboard.tenant", "demo") == "demo" for s in demo_view)
    assert request_ids(other_view) == {other_req.request_id}
    assert all(s["attributes"].get("switchboard.tenant", "other") == "other" for s in other_view)
    assert read_trace(audit_file, trace_id, tenant="ghost") == []
    # The rendered `audit show` view obeys the same filter.
    out = io.StringIO()
    assert cli_audit_show(trace_id, audit_file, tenant="other", out=out) == 0
    assert other_req.request_id in out.getvalue() or "execute_code" in out.getvalue()
    assert demo_req.request_id not in out.getvalue()
    assert "A4" not in out.getvalue()


def test_audit_show_cli_takes_a_tenant_filter(iso: RunningGateway,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    trace_id = secrets.token_hex(16)
    traceparent = (("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-01"),)
    demo_req = tool_request("ledger.get_balance", {"account": "A1"})
    iso.stub.Execute(demo_req, metadata=md("dev-agent") + traceparent, timeout=T)
    audit_file = iso.settings.audit.file
    assert audit_file is not None
    capsys.readouterr()  # drop the gateway's own log lines so far
    rc = main(["audit", "show", trace_id, "--file", str(audit_file), "--tenant", "other"])
    assert rc == 1  # nothing of tenant "other" in this trace
    out = capsys.readouterr().out
    assert "Gateway/Execute" not in out and "principal.id" not in out
    rc = main(["audit", "show", trace_id, "--file", str(audit_file), "--tenant", "demo"])
    assert rc == 0
    assert "Gateway/Execute" in capsys.readouterr().out
