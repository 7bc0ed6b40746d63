"""The client library, the smolagents executor and the token benchmark's demo program against
the real gateway (port 0, real demo backends as subprocesses, real sandbox and policy)."""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import switchboard_tokenbench as tokenbench
from gateway_support import RunningGateway
from switchboard_client import AsyncSwitchboardClient, SwitchboardClient, SwitchboardError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from smolagents_executor import DEMO_STEPS, SwitchboardExecutor, run_demo

TRANSFER = {"from_account": "A1", "to_account": "A2", "amount": 0.25, "currency": "USD"}


def target(gateway: RunningGateway) -> str:
    return f"127.0.0.1:{gateway.port}"


def todays_events(backends: dict[str, Any]) -> list[dict[str, Any]]:
    url = backends["workspace"].url
    today = datetime.now(UTC).date().isoformat()
    events: list[dict[str, Any]] = httpx.get(
        f"{url}/events", params={"date": today}, timeout=10
    ).json()
    return events


def outbox(backends: dict[str, Any]) -> list[dict[str, Any]]:
    emails: list[dict[str, Any]] = httpx.get(
        f"{backends['workspace'].url}/emails", timeout=10
    ).json()
    return emails


def test_manifest_search_describe_explain(gateway: RunningGateway) -> None:
    with SwitchboardClient(target(gateway), "dev-finance") as sb:
        m = sb.manifest("openai")
        names = [t.name for t in m.tools]
        assert names[:3] == ["search_operations", "describe_operation", "execute_code"]
        assert "ledger__create_transfer" in names
        transfer = next(t for t in m.tools if t.name == "ledger__create_transfer")
        assert transfer.kind == "dedicated" and transfer.operation == "ledger.create_transfer"
        assert [f["function"]["name"] for f in m.formatted] == names
        assert m.policy_revision and m.catalog_revision
        assert sb.manifest("anthropic").formatted[0]["name"] == "search_operations"
        hits = sb.search("send an email", limit=3)
        assert hits[0].name == "workspace.send_email" and len(hits) <= 3
        info = sb.describe("ledger.create_transfer")
        assert info.route == "tool" and "amount" in info.input_schema["properties"]
        assert sb.explain("ledger.create_transfer", TRANSFER).route == "tool"
        assert sb.explain(source="1 + 1").route == "code"
    with SwitchboardClient(target(gateway), "dev-agent") as sb:
        assert "ledger__create_transfer" not in [t.name for t in sb.manifest().tools]
        assert sb.explain("ledger.create_transfer", TRANSFER).route == "deny"


def test_run_code_and_stream_code(gateway: RunningGateway) -> None:
    src = (
        "from sdk import ledger\n"
        "accounts = ledger.list_accounts()\n"
        "print('accounts', len(accounts))\n"
        "{'n': len(accounts), 'ids': sorted(a['id'] for a in accounts)}\n"
    )
    with SwitchboardClient(target(gateway), "dev-agent", timeout=60) as sb:
        res = sb.run_code(src)
        assert res.ok and res.route == "code", res.error
        assert res.result["n"] == 4 and isinstance(res.result["n"], int)
        assert res.result["ids"] == ["A1", "A2", "A3", "A4"]
        assert res.stdout.strip() == "accounts 4" and res.host_calls == 1
        assert len(res.trace_id) == 32
        events = list(sb.stream_code(src))
        kinds = [e.kind for e in events]
        assert kinds[-1] == "result" and "host_call" in kinds
        host = next(e.host_call for e in events if e.kind == "host_call")
        assert host is not None and host["operation"] == "ledger.list_accounts"
        assert host["outcome"] == "ok"
        final = events[-1].result
        assert final is not None and final.result == res.result
        broken = sb.run_code("1/0")
        assert not broken.ok and broken.error is not None
        assert broken.error["code"] == "user_code_error"
        assert "ZeroDivisionError" in str(broken.error)


def test_tool_call_retry_reuses_request_id(gateway: RunningGateway) -> None:
    rid = f"client-{uuid.uuid4()}"
    with SwitchboardClient(target(gateway), "dev-finance", timeout=30) as sb:
        first = sb.call_tool("ledger.create_transfer", TRANSFER, request_id=rid)
        again = sb.call_tool("ledger.create_transfer", TRANSFER, request_id=rid)
        assert first.ok and first.route == "tool" and not first.replayed
        assert again.replayed and again.result == first.result
        with pytest.raises(SwitchboardError) as bad:
            sb.call_tool("ledger.create_transfer", {**TRANSFER, "amount": -1})
        assert bad.value.code == "schema_invalid" and "amount" in bad.value.field
        assert bad.value.status == grpc.StatusCode.INVALID_ARGUMENT


def test_denial_raises_with_reasons_and_dispatch_returns_it(gateway: RunningGateway) -> None:
    with SwitchboardClient(target(gateway), "dev-agent") as sb:
        with pytest.raises(SwitchboardError) as info:
            sb.call_tool("ledger.create_transfer", TRANSFER)
        err = info.value
        assert err.code == "policy_denied" and err.status == grpc.StatusCode.PERMISSION_DENIED
        assert any("finance" in r for r in err.reasons)
        reply = sb.dispatch("ledger__create_transfer", TRANSFER)
        assert reply["ok"] is False and reply["error"]["code"] == "policy_denied"
        ran = sb.dispatch("execute_code", {"code": "21 * 2"})
        assert ran == {"ok": True, "result": 42}
    with SwitchboardClient(target(gateway), "wrong") as sb, pytest.raises(SwitchboardError) as e:
        sb.search("anything")
    assert e.value.code == "unauthenticated"


async def test_async_client(gateway: RunningGateway) -> None:
    async with AsyncSwitchboardClient(target(gateway), "dev-finance", timeout=60) as sb:
        res = await sb.run_code("from sdk import ledger\nledger.get_balance(account='A3')")
        assert res.ok and res.result["account"] == "A3"
        kinds = [e.kind async for e in sb.stream_code("print('a')\nprint('b')\n'done'")]
        assert kinds == ["stdout", "stdout", "result"]
        rid = f"async-{uuid.uuid4()}"
        first = await sb.call_tool("ledger.create_transfer", TRANSFER, request_id=rid)
        second = await sb.call_tool("ledger.create_transfer", TRANSFER, request_id=rid)
        assert second.replayed and second.result == first.result
        assert "ledger__create_transfer" in [t.name for t in (await sb.manifest()).tools]


def test_smolagents_code_agent_runs_on_the_gateway(
    gateway: RunningGateway, backends: dict[str, Any]
) -> None:
    events = todays_events(backends)
    longest = max(
        events, key=lambda e: datetime.fromisoformat(e["end"]) - datetime.fromisoformat(e["start"])
    )
    answer, agent = run_demo(target(gateway), "dev-agent")
    assert f"Emailed {len(longest['attendees'])} people about {longest['title']!r}" in answer
    executor = agent.python_executor
    assert isinstance(executor, SwitchboardExecutor)
    assert len(executor.runs) == len(DEMO_STEPS)  # one gateway code run per agent step
    assert all(r.route == "code" for r in executor.runs)
    assert executor.runs[0].stdout.strip().endswith(f"{len(events)} events today")
    # the second step used `events` from the first: the session kept the interpreter state
    sent = next(m for m in outbox(backends) if m["subject"].endswith(longest["title"]))
    assert sent["to"] == longest["attendees"]
    # the model saw the first step's output as its observation
    second_prompt = str(agent.model.seen[1])
    assert f"{len(events)} events today" in second_prompt


def test_smolagents_errors_become_observations(gateway: RunningGateway) -> None:
    steps = ("<code>\n1/0\n</code>", "<code>\nfinal_answer('recovered')\n</code>")
    answer, agent = run_demo(target(gateway), "dev-agent", steps=steps)
    assert answer == "recovered"
    assert "ZeroDivisionError" in str(agent.model.seen[1])


def test_token_bench_demo_program_runs_for_real(
    gateway: RunningGateway, backends: dict[str, Any]
) -> None:
    """The code-mode side of the token table is what this program really returns."""
    events = todays_events(backends)
    longest = max(
        events, key=lambda e: datetime.fromisoformat(e["end"]) - datetime.fromisoformat(e["start"])
    )
    with SwitchboardClient(target(gateway), "dev-agent", timeout=60) as sb:
        res = sb.run_code(tokenbench.DEMO_CODE)
    assert res.ok, res.error
    assert res.result == (
        f"Done: emailed {len(longest['attendees'])} people about {longest['title']!r}."
    )
    assert res.host_calls == 2 and res.stdout == ""
