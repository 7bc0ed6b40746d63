"""The audit trail of real gateway calls, exported over OTLP to a real receiver: the span tree
and attributes of a tool call, a code run with host calls, and a denial — and the same story
in the local hash-chained file."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from gateway_support import RunningGateway, code_request, gateway_settings, md, tool_request
from otlp_receiver import OtlpReceiver, ReceivedSpan

from gateway.audit import AuditSettings, read_trace, verify_chain

ROOT = "switchboard.v1.Gateway/Execute"
TRANSFER = {"from_account": "A1", "to_account": "A2", "amount": 2.5, "currency": "USD",
            "memo": "audit e2e"}


@pytest.fixture(scope="module")
def rx() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
def audited(backends: dict[str, Any], rx: OtlpReceiver,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    state = tmp_path_factory.mktemp("gw-audit")
    settings = gateway_settings(
        state, backends,
        audit=AuditSettings(file=state / "audit.jsonl", otlp_endpoint=rx.endpoint,
                            otlp_protocol="grpc", log_format="json"))
    gw = RunningGateway(settings)
    yield gw
    gw.stop()


def _tree(gw: RunningGateway, rx: OtlpReceiver, trace_id: str, at_least: int) -> list[ReceivedSpan]:
    assert gw.server is not None
    gw.server.telemetry.force_flush()
    deadline = time.monotonic() + 15
    while len(rx.trace(trace_id)) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    spans = rx.trace(trace_id)
    assert len(spans) >= at_least, rx.render(trace_id)
    return spans


def _root(rx: OtlpReceiver, trace_id: str) -> ReceivedSpan:
    (root,) = [s for s in rx.trace(trace_id) if s.name == ROOT]
    assert root.parent_span_id is None and root.kind == "SERVER"
    return root


def _names(rx: OtlpReceiver, span: ReceivedSpan) -> list[str]:
    return [c.name for c in rx.children(span)]


def test_tool_call_trace(audited: RunningGateway, rx: OtlpReceiver) -> None:
    resp = audited.stub.Execute(tool_request("ledger.create_transfer", TRANSFER),
                                metadata=md("dev-finance"), timeout=30)
    _tree(audited, rx, resp.trace_id, 4)
    root = _root(rx, resp.trace_id)
    a = root.attributes
    assert a["switchboard.principal.id"] == "finance-1" and a["switchboard.tenant"] == "demo"
    assert a["switchboard.route"] == "tool" and a["switchboard.outcome"] == "ok"
    assert a["switchboard.decision_id"] == resp.decision.decision_id
    assert a["switchboard.policy_revision"] == resp.decision.policy_revision
    assert a["gen_ai.operation.name"] == "execute_tool"
    assert a["gen_ai.tool.name"] == "ledger.create_transfer"
    assert a["rpc.system"] == "grpc" and a["rpc.grpc.status_code"] == 0
    assert a["switchboard.arguments.hmac"].startswith("hmac-sha256:")
    assert "switchboard.arguments.sha256" not in a  # a plain digest gives masked values back
    # The decision's mask redacts account numbers; the memo is kept.
    assert "A1" not in a["switchboard.arguments"] and "audit e2e" in a["switchboard.arguments"]
    assert root.status_code == "OK"
    children = _names(rx, root)
    for step in ("policy.decide", "idempotency"):
        assert step in children, rx.render(resp.trace_id)
    # identity and the schema check are recorded on the root, not in spans of their own
    assert "identity" not in children and "schema.validate" not in children
    assert a["switchboard.schema.strict"] is True  # a compliance operation
    backend = [s for s in rx.trace(resp.trace_id) if s.name.startswith("backend.call")]
    assert len(backend) == 1 and backend[0].kind == "CLIENT"
    assert backend[0].attributes["http.request.method"] == "POST"
    assert backend[0].attributes["http.response.status_code"] in (200, 201)


def test_code_run_trace_shows_every_host_call(audited: RunningGateway, rx: OtlpReceiver) -> None:
    src = ("from sdk import ledger, workspace\n"
           "ledger.get_balance(account='A1')\n"
           "len(workspace.list_contacts(team='demo'))\n")
    resp = audited.stub.Execute(code_request(src), metadata=md("dev-agent"), timeout=60)
    assert not resp.error.code, resp.error
    _tree(audited, rx, resp.trace_id, 8)
    root = _root(rx, resp.trace_id)
    assert root.attributes["switchboard.route"] == "code"
    assert root.attributes["switchboard.code.hmac"].startswith("hmac-sha256:")
    assert root.attributes["switchboard.host_calls"] == 2
    (run,) = [c for c in rx.children(root) if c.name == "sandbox.run"]
    calls = [c for c in rx.children(run) if c.name.startswith("host_call ")]
    assert [c.name for c in calls] == ["host_call ledger.get_balance",
                                       "host_call workspace.list_contacts"]
    for call in calls:
        # Each host call was authorised on its own, as the run's principal.
        assert "policy.decide" in _names(rx, call), rx.render(resp.trace_id)
        assert call.attributes["switchboard.outcome"] == "ok"
        assert any(c.name.startswith("backend.call") for c in rx.children(call))
        # Host calls' arguments are digested like a tool call's: keyed, never plain.
        assert call.attributes["switchboard.arguments.hmac"].startswith("hmac-sha256:")
        assert "switchboard.arguments.sha256" not in call.attributes
    assert len({c.attributes["switchboard.digest.key_id"] for c in calls}) == 1


def test_denial_trace(audited: RunningGateway, rx: OtlpReceiver) -> None:
    with pytest.raises(grpc.RpcError) as info:
        audited.stub.Execute(tool_request("ledger.create_transfer", TRANSFER),
                             metadata=md("dev-agent"), timeout=30)
    trailers = dict(info.value.trailing_metadata() or ())  # type: ignore[attr-defined]
    trace_id = trailers["switchboard-trace-id"]
    _tree(audited, rx, trace_id, 2)
    root = _root(rx, trace_id)
    assert root.attributes["switchboard.route"] == "deny"
    assert root.attributes["switchboard.outcome"] == "policy_denied"
    assert root.attributes["rpc.grpc.status_code"] == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert any("finance" in r for r in root.attributes["switchboard.reasons"])
    assert root.status_code == "ERROR"
    assert not any(s.name.startswith("backend.call") for s in rx.trace(trace_id))


def test_local_file_tells_the_same_story(audited: RunningGateway, rx: OtlpReceiver) -> None:
    resp = audited.stub.Execute(tool_request("ledger.get_balance", {"account": "A3"}),
                                metadata=md("dev-agent"), timeout=30)
    exported = _tree(audited, rx, resp.trace_id, 3)
    audit_file = audited.settings.audit.file
    assert audit_file is not None
    local = read_trace(audit_file, resp.trace_id)
    assert sorted(s["name"] for s in local) == sorted(s.name for s in exported)
    assert verify_chain(audit_file).ok
    # The bearer token never reaches the trail.
    assert "dev-agent" not in audit_file.read_text()


def test_a_card_number_in_free_text_never_reaches_the_trail(
        audited: RunningGateway, rx: OtlpReceiver) -> None:
    """A card number typed into the transfer's free-text memo (kept in the trail: no mask
    covers it) reaches the backend as sent, but the exported spans and the local file carry
    only its last four digits."""
    card = "4111 1111 1111 1111"
    resp = audited.stub.Execute(
        tool_request("ledger.create_transfer", {**TRANSFER, "memo": f"refund card {card}"}),
        metadata=md("dev-finance"), timeout=30)
    assert not resp.error.code, resp.error
    assert card in str(resp.result)  # the backend got it, and the caller gets its reply
    spans = _tree(audited, rx, resp.trace_id, 4)
    root = _root(rx, resp.trace_id)
    assert "refund card [REDACTED:card-1111]" in root.attributes["switchboard.arguments"]
    assert not any(card in str(s.attributes) or card.replace(" ", "") in str(s.attributes)
                   for s in spans)
    audit_file = audited.settings.audit.file
    assert audit_file is not None
    text = audit_file.read_text()
    assert card not in text and card.replace(" ", "") not in text
    assert "[REDACTED:card-1111]" in text
