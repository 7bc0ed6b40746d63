"""The client library against a scripted gRPC Gateway on loopback (port 0).

The scripted server (``client_support``) pins down the wire contract the client relies on;
the end-to-end behaviour against the real gateway is in ``test_client_gateway.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from client_support import TRANSFER, ScriptedGateway, start_scripted
from switchboard_client import AsyncSwitchboardClient, SwitchboardClient, SwitchboardError


@pytest.fixture(scope="module")
def scripted() -> Iterator[tuple[str, ScriptedGateway]]:
    server, port, servicer = start_scripted()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


@pytest.fixture
def client(scripted: tuple[str, ScriptedGateway]) -> Iterator[SwitchboardClient]:
    with SwitchboardClient(scripted[0], "dev-agent", timeout=5, backoff=0.01) as c:
        yield c


def test_run_code_returns_json_result_and_sends_bearer_token(
    client: SwitchboardClient, scripted: tuple[str, ScriptedGateway]
) -> None:
    res = client.run_code("1", inputs={"a": [1, 2]}, request_id="req-code-1")
    assert res.ok and res.route == "code"
    assert res.result == {"echo": {"a": [1, 2]}, "n": 3, "f": 1.5}
    assert isinstance(res.result["n"], int) and isinstance(res.result["echo"]["a"][0], int)
    assert res.stdout == "hi\n" and res.host_calls == 2 and res.trace_id == "t" * 32
    assert ("Execute", "req-code-1", "Bearer dev-agent") in scripted[1].seen
    assert res.to_model() == {"ok": True, "result": res.result, "stdout": "hi\n"}


def test_user_code_error_is_data_not_exception(client: SwitchboardClient) -> None:
    res = client.run_code("boom")
    assert not res.ok
    assert res.error == {
        "code": "user_code_error",
        "message": "ZeroDivisionError",
        "details": {"line": 1},
    }


def test_request_id_generated_and_reused_across_retries(
    client: SwitchboardClient, scripted: tuple[str, ScriptedGateway]
) -> None:
    before = len(scripted[1].seen)
    res = client.call_tool("flaky.op", {"x": 1})
    attempts = scripted[1].seen[before:]
    assert len(attempts) == 3  # two UNAVAILABLE, then success
    ids = {rid for _, rid, _ in attempts}
    assert len(ids) == 1 and len(ids.pop()) == 36  # one uuid4 for all attempts
    assert res.ok and res.route == "tool" and res.result == {"called": "flaky.op", "args": {"x": 1}}


def test_retries_give_up_with_the_last_error(scripted: tuple[str, ScriptedGateway]) -> None:
    with (
        SwitchboardClient(scripted[0], "dev-agent", retries=1, backoff=0.01) as c,
        pytest.raises(SwitchboardError) as info,
    ):
        c.call_tool("flaky.op", {}, request_id="give-up-1")
    assert info.value.status == grpc.StatusCode.UNAVAILABLE
    assert info.value.code == "unavailable"  # no structured error: the status name


def test_denial_is_parsed_from_trailing_metadata(client: SwitchboardClient) -> None:
    with pytest.raises(SwitchboardError) as info:
        client.call_tool("ledger.create_transfer", {"amount_cents": 5})
    err = info.value
    assert err.code == "policy_denied" and err.status == grpc.StatusCode.PERMISSION_DENIED
    assert err.reasons == ["ledger.create_transfer requires role finance"]
    assert err.details["decision_id"] == "d-9"


def test_schema_error_carries_the_field(client: SwitchboardClient) -> None:
    with pytest.raises(SwitchboardError) as info:
        client.call_tool("ledger.bad_args", {"amount_cents": -1})
    assert info.value.code == "schema_invalid" and info.value.field == "arguments.amount_cents"


def test_bad_token_is_unauthenticated(scripted: tuple[str, ScriptedGateway]) -> None:
    with SwitchboardClient(scripted[0], "nope") as c, pytest.raises(SwitchboardError) as info:
        c.search("x")
    assert info.value.code == "unauthenticated"
    assert info.value.status == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(ValueError):
        SwitchboardClient(scripted[0], "")


def test_stream_code_yields_events_in_order(client: SwitchboardClient) -> None:
    events = list(client.stream_code("print(1)"))
    assert [e.kind for e in events] == ["stdout", "host_call", "stderr", "result"]
    assert events[0].text == "line 1"
    assert events[1].host_call == {
        "operation": "workspace.list_events",
        "outcome": "ok",
        "duration_ms": 0.4,
    }
    assert events[-1].result is not None and events[-1].result.result == "Done"


def test_search_describe_explain(client: SwitchboardClient) -> None:
    hits = client.search("send mail", limit=3)
    assert [h.name for h in hits] == ["svc.op0", "svc.op1", "svc.op2"]
    assert hits[0].summary == "send mail" and hits[0].route == "code"
    info = client.describe("ledger.create_transfer")
    assert info.route == "tool" and info.input_schema == TRANSFER.input_schema
    assert info.python_signature.startswith("ledger.create_transfer(")
    with pytest.raises(SwitchboardError) as err:
        client.describe("nope.nope")
    assert err.value.code == "unknown_operation" and err.value.field == "name"
    d = client.explain("ledger.create_transfer", {"amount_cents": 1})
    assert d.route == "tool" and d.reasons == ("tool_call",) and d.limits.max_host_calls == 5
    assert client.explain(source="1").route == "code"
    with pytest.raises(ValueError):
        client.explain()


def test_manifest_formats_and_dispatch(client: SwitchboardClient) -> None:
    m = client.manifest("openai")
    assert [t.name for t in m.tools] == [
        "search_operations",
        "describe_operation",
        "execute_code",
        "ledger__create_transfer",
    ]
    assert m.tools[-1].operation == "ledger.create_transfer"
    assert m.formatted[0]["type"] == "function"
    assert m.policy_revision == "r1" and m.catalog_revision == "c1"
    assert client.manifest("anthropic").formatted[3]["name"] == "ledger__create_transfer"
    assert client.manifest().formatted == []
    # dispatch: what an agent loop does with the model's tool calls; errors become data.
    denied = client.dispatch("ledger__create_transfer", {"amount_cents": 5})
    assert denied["ok"] is False and denied["error"]["code"] == "policy_denied"
    ran = client.dispatch("execute_code", {"code": "1", "inputs": {"k": "v"}})
    assert ran["ok"] is True and ran["result"]["echo"] == {"k": "v"}
    found = client.dispatch("search_operations", {"query": "q", "limit": 2})
    assert [o["name"] for o in found["operations"]] == ["svc.op0", "svc.op1"]
    described = client.dispatch("describe_operation", {"name": "ledger.create_transfer"})
    assert described["route"] == "tool"


def test_finance_principal_may_transfer(scripted: tuple[str, ScriptedGateway]) -> None:
    with SwitchboardClient(scripted[0], "dev-finance") as c:
        res = c.call_tool("ledger.create_transfer", {"amount_cents": 5}, request_id="tr-1")
    assert res.ok and res.result == {
        "called": "ledger.create_transfer",
        "args": {"amount_cents": 5},
    }


async def test_async_client_mirrors_sync(scripted: tuple[str, ScriptedGateway]) -> None:
    async with AsyncSwitchboardClient(scripted[0], "dev-agent", backoff=0.01) as c:
        res = await c.run_code("1", inputs={"z": True})
        assert res.ok and res.result["echo"] == {"z": True}
        flaky = await c.call_tool("flaky.op", {}, request_id="async-flaky-1")
        assert flaky.ok
        assert scripted[1].flaky_failures["async-flaky-1"] == -1  # 3 attempts, same id
        with pytest.raises(SwitchboardError) as info:
            await c.call_tool("ledger.create_transfer", {"amount_cents": 1})
        assert info.value.code == "policy_denied"
        kinds = [e.kind async for e in c.stream_code("x")]
        assert kinds == ["stdout", "host_call", "stderr", "result"]
        assert [h.name for h in await c.search("q", 1)] == ["svc.op0"]
        assert (await c.describe("ledger.create_transfer")).route == "tool"
        assert (await c.explain(source="1")).route == "code"
        m = await c.manifest("anthropic")
        assert m.formatted[-1]["input_schema"] == TRANSFER.input_schema
        reply = await c.dispatch("ledger__create_transfer", {"amount_cents": 1})
        assert reply["error"]["code"] == "policy_denied"


def test_deprecated_gateway_client_alias_still_works(scripted: tuple[str, ScriptedGateway]) -> None:
    """``gateway.client`` / ``gateway.client_types`` re-export ``switchboard_client``."""
    import switchboard_client
    from switchboard_client import client_types

    from gateway import client as old_client
    from gateway import client_types as old_types

    for name in old_client.__all__:
        assert getattr(old_client, name) is getattr(switchboard_client, name), name
    for name in old_types.__all__:
        assert getattr(old_types, name) is getattr(client_types, name), name
    with old_client.SwitchboardClient(scripted[0], "dev-agent", backoff=0.01) as c:
        assert c.run_code("1", inputs={"a": 1}).result["echo"] == {"a": 1}
        with pytest.raises(old_types.SwitchboardError) as info:
            c.call_tool("ledger.create_transfer", {"amount_cents": 5})
    assert info.value.code == "policy_denied"
