"""The MCP front door, driven by the official MCP client over streamable HTTP against the real
gateway (port 0, real demo backends, real sandbox, real policy)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from gateway_support import RunningGateway, mcp_endpoint, serve_lifespan
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from waiting import bound, scaled

from gateway.audit import AuditSettings, setup_telemetry
from gateway.identity import Authenticator
from gateway.mcp_http import _AuthGuard
from gateway.mcp_server import REQUEST_ID_META_KEY
from gateway.models import Principal

TRANSFER = {"from_account": "A1", "to_account": "A2", "amount": 0.5, "currency": "USD"}


@pytest.fixture(scope="module")
def mcp_url(gateway: RunningGateway) -> Iterator[str]:
    """The gateway's MCP endpoint: the one ``serve`` started, or one started here on the
    gateway's own event loop over its pipeline and authenticator."""
    yield from mcp_endpoint(gateway)


@asynccontextmanager
async def connect(url: str, token: str | None, mode: str = "auto") -> AsyncIterator[Client]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,  # type: ignore[arg-type]
    ):
        yield client


def structured(result: Any) -> dict[str, Any]:
    """The structured payload, checked against the JSON text every client can read."""
    payload = result.structured_content
    assert isinstance(payload, dict)
    assert json.loads(result.content[0].text) == payload
    return payload


def audit_records(gateway: RunningGateway, trace_id: str) -> list[dict[str, Any]]:
    audit_file = gateway.settings.audit.file
    assert audit_file is not None
    server = gateway.server
    assert server is not None
    server.telemetry.force_flush()
    out = []
    for line in Path(audit_file).read_text().splitlines():
        rec = json.loads(line)
        if rec.get("trace_id") == trace_id:
            out.append(rec)
    return out


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_lists_code_mode_tools_per_principal(mcp_url: str, mode: str) -> None:
    async with connect(mcp_url, "dev-agent", mode) as c:
        agent_tools = {t.name: t for t in (await c.list_tools()).tools}
    assert set(agent_tools) == {"search_operations", "describe_operation", "execute_code"}
    assert agent_tools["execute_code"].input_schema["required"] == ["code"]
    assert agent_tools["search_operations"].annotations is not None
    assert agent_tools["search_operations"].annotations.read_only_hint is True
    async with connect(mcp_url, "dev-finance", mode) as c:
        finance_tools = {t.name: t for t in (await c.list_tools()).tools}
    # Every payments-tagged ledger operation is tool-only for finance (the policy's advertise).
    assert set(finance_tools) - set(agent_tools) == {
        "ledger__create_transfer", "ledger__get_transfer", "ledger__list_transfers"}
    schema = finance_tools["ledger__create_transfer"].input_schema
    assert schema["type"] == "object"
    assert {"from_account", "to_account", "amount"} <= set(schema["required"])


async def test_execute_code_runs_in_the_sandbox_and_is_audited(
    mcp_url: str, gateway: RunningGateway
) -> None:
    code = (
        "from sdk import workspace\n"
        "events = workspace.list_events()\n"
        "print('seen', len(events))\n"
        "{'events': len(events), 'longest': max(e['title'] for e in events)}\n"
    )
    async with connect(mcp_url, "dev-agent") as c:
        result = await c.call_tool("execute_code", {"code": code})
    payload = structured(result)
    assert result.is_error is False, payload
    assert payload["ok"] is True and payload["route"] == "code"
    assert payload["result"]["events"] > 0
    assert payload["stdout"].startswith("seen ")
    records = audit_records(gateway, payload["trace_id"])
    root = next(r for r in records if r["name"] == "mcp tools/call execute_code")
    assert root["attributes"]["switchboard.transport"] == "mcp"
    assert root["attributes"]["switchboard.principal.id"] == "agent-1"
    assert root["attributes"]["switchboard.outcome"] == "ok"
    names = {r["name"] for r in records}
    assert "sandbox.run" in names and "policy.decide" in names  # the pipeline's own steps


async def test_dedicated_tool_is_idempotent_by_meta_request_id(mcp_url: str) -> None:
    rid = f"mcp-{uuid.uuid4()}"
    async with connect(mcp_url, "dev-finance") as c:
        first = await c.call_tool(
            "ledger__create_transfer", TRANSFER, meta={REQUEST_ID_META_KEY: rid}
        )
        again = await c.call_tool(
            "ledger__create_transfer", TRANSFER, meta={REQUEST_ID_META_KEY: rid}
        )
    one, two = structured(first), structured(again)
    assert first.is_error is False, one
    assert one["route"] == "tool" and one["result"]["from_account"] == "A1"
    assert "replayed" not in one and two["replayed"] is True
    assert two["result"]["id"] == one["result"]["id"]  # one transfer, recorded once


async def test_denials_are_tool_errors_with_reasons(mcp_url: str) -> None:
    async with connect(mcp_url, "dev-agent") as c:
        denied = await c.call_tool("ledger__create_transfer", TRANSFER)
        from_code = await c.call_tool(
            "execute_code",
            {
                "code": "from sdk import ledger\nledger.create_transfer(from_account='A1', "
                "to_account='A2', amount=1.0)"
            },
        )
    payload = structured(denied)
    assert denied.is_error is True
    assert payload["error"]["code"] == "policy_denied"
    assert payload["error"]["details"]["reasons"]
    assert len(payload["trace_id"]) == 32
    code_payload = structured(from_code)
    assert from_code.is_error is True
    assert code_payload["error"]["code"] == "policy_denied"  # the host call was refused


async def test_search_describe_and_argument_errors(mcp_url: str) -> None:
    async with connect(mcp_url, "dev-agent") as c:
        found = structured(
            await c.call_tool("search_operations", {"query": "send an email", "limit": 3})
        )
        described = structured(
            await c.call_tool("describe_operation", {"name": "workspace.send_email"})
        )
        part = structured(await c.call_tool(
            "describe_operation", {"name": "workspace.send_email", "path": "input_schema"}))
        bad_path = await c.call_tool(
            "describe_operation", {"name": "workspace.send_email", "path": "nope", "page": 1})
        bad = await c.call_tool("search_operations", {"query": "x", "limit": 500})
    assert found["operations"][0]["name"] == "workspace.send_email"
    assert len(found["operations"]) <= 3
    assert described["python_signature"].startswith("send_email(")
    assert described["route"] in ("tool", "code")  # the policy may allow either; not deny
    assert part["at"] == "input_schema" and "to" in part["value"]["properties"]
    assert bad_path.is_error
    assert structured(bad_path)["error"]["code"] == "invalid_request"
    assert structured(bad_path)["error"]["field"] == "arguments.path"
    bad_payload = structured(bad)
    assert bad.is_error and bad_payload["error"]["code"] == "schema_invalid"
    assert bad_payload["error"]["field"] == "arguments.limit"


@pytest.mark.parametrize("token", [None, "not-a-token"])
async def test_missing_or_invalid_token_is_401(mcp_url: str, token: str | None) -> None:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(mcp_url, json=body, headers=headers)
    assert resp.status_code == 401
    challenge = resp.headers["www-authenticate"]
    assert challenge.startswith("Bearer")
    metadata = mcp_url.removesuffix("/mcp") + "/.well-known/oauth-protected-resource/mcp"
    assert f'resource_metadata="{metadata}"' in challenge
    assert ('error="invalid_token"' in challenge) == (token is not None)
    assert resp.json()["error"]["data"]["code"] == "unauthenticated"
    with pytest.raises(BaseException) as info:  # the official client refuses to go on
        async with connect(mcp_url, token) as c:
            await c.list_tools()
    errors = list(leaves(info.value))
    assert any(isinstance(e, MCPError) and e.error.code == -32001 for e in errors), errors
    mcp_error = next(e for e in errors if isinstance(e, MCPError))
    assert (mcp_error.error.data or {})["code"] == "unauthenticated"


def leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


async def test_caller_trace_context_in_meta_is_continued(mcp_url: str) -> None:
    trace_id = uuid.uuid4().hex
    parent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    async with connect(mcp_url, "dev-agent") as c:
        result = await c.call_tool(
            "execute_code", {"code": "'traced'"}, meta={"traceparent": parent}
        )
    payload = structured(result)
    assert payload["result"] == "traced"
    assert payload["trace_id"] == trace_id  # the gateway's spans join the caller's trace


async def test_unexpected_failures_do_not_leak_internals(
    mcp_url: str, gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = gateway.server
    assert server is not None

    async def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("db password is hunter2")

    monkeypatch.setattr(server.pipeline, "search", broken)
    async with connect(mcp_url, "dev-agent") as c:
        result = await c.call_tool("search_operations", {"query": "anything"})
    payload = structured(result)
    assert result.is_error is True
    assert payload["error"] == {"code": "internal", "message": "internal error"}
    assert "hunter2" not in result.content[0].text
    root = next(
        r
        for r in audit_records(gateway, payload["trace_id"])
        if r["name"] == "mcp tools/call search_operations"
    )
    assert root["attributes"]["switchboard.outcome"] == "internal"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_unknown_tool_is_a_jsonrpc_invalid_params_error(mcp_url: str, mode: str) -> None:
    async with connect(mcp_url, "dev-agent", mode) as c:
        with pytest.raises(MCPError) as info:
            await c.call_tool("no_such_tool", {})
        # a catalog operation the caller may not use is still the policy's denial
        denied = await c.call_tool("ledger__create_transfer", TRANSFER)
    assert info.value.error.code == -32602
    assert "no_such_tool" in info.value.error.message
    assert (info.value.error.data or {})["code"] == "unknown_operation"
    assert denied.is_error and structured(denied)["error"]["code"] == "policy_denied"


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_execute_code_streams_progress_and_log_notifications(
    mcp_url: str, mode: str
) -> None:
    progress: list[tuple[float, float | None, str | None]] = []
    logs: list[Any] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async def on_log(params: Any) -> None:
        logs.append(params)

    code = (
        "import sys\n"
        "from sdk import workspace\n"
        "print('step one')\n"
        "n = len(workspace.list_events())\n"
        "print('step two', file=sys.stderr)\n"
        "print('done')\n"
        "n\n"
    )
    headers = {"Authorization": "Bearer dev-agent"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        Client(streamable_http_client(mcp_url, http_client=http), mode=mode,  # type: ignore[arg-type]
               logging_callback=on_log, log_level="info") as c,
    ):
        result = await c.call_tool("execute_code", {"code": code}, progress_callback=on_progress)
    payload = structured(result)
    assert result.is_error is False, payload
    messages = [m for _, _, m in progress]
    assert messages[0] == "stdout: step one", messages
    assert "stderr: step two" in messages and messages[-1] == "stdout: done"
    assert any(m and m.startswith("host call workspace.list_events: ok") for m in messages)
    values = [v for v, _, _ in progress]
    assert values == sorted(values) and len(set(values)) == len(values)
    got = [(p.level, p.logger, p.data) for p in logs]
    assert got == [
        ("info", "switchboard.stdout", "step one"),
        ("warning", "switchboard.stderr", "step two"),
        ("info", "switchboard.stdout", "done"),
    ]
    assert payload["stdout"] == "step one\ndone\n"  # the result still has the whole output


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")
async def test_logging_set_level_is_accepted(mcp_url: str) -> None:
    async with connect(mcp_url, "dev-agent", "legacy") as c:
        assert (await c.set_logging_level("debug")).model_dump(exclude_none=True) == {}


async def test_annotations_follow_method_and_policy(mcp_url: str) -> None:
    async with connect(mcp_url, "dev-finance") as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
    transfer = tools["ledger__create_transfer"]
    assert transfer.annotations is not None
    assert transfer.annotations.read_only_hint is False  # POST
    assert transfer.annotations.destructive_hint is False
    assert transfer.annotations.idempotent_hint is True  # exactly-once by request id
    assert transfer.output_schema is not None
    assert transfer.output_schema["properties"]["result"]["type"] == "object"
    code = tools["execute_code"].annotations
    assert code is not None
    # the caller's code may reach POST operations (send_email): not read-only, not idempotent
    assert code.read_only_hint is False and code.idempotent_hint is False
    assert code.open_world_hint is True
    assert tools["describe_operation"].annotations is not None
    assert tools["describe_operation"].annotations.read_only_hint is True
    assert tools["search_operations"].output_schema is None


async def test_catalog_resources_templates_and_completion(mcp_url: str) -> None:
    from mcp_types import PromptReference, ResourceTemplateReference

    async with connect(mcp_url, "dev-agent") as c:
        listed = {str(r.uri): r for r in (await c.list_resources()).resources}
        templates = (await c.list_resource_templates()).resource_templates
        doc = await c.read_resource("switchboard://operations/workspace.send_email")
        with pytest.raises(MCPError) as denied:  # a denied operation is as unknown as none
            await c.read_resource("switchboard://operations/ledger.create_transfer")
        with pytest.raises(MCPError) as unknown:
            await c.read_resource("switchboard://operations/nope.nothing")
        ref = ResourceTemplateReference(type="ref/resource",
                                        uri="switchboard://operations/{name}")
        completed = await c.complete(ref, {"name": "name", "value": "workspace.l"})
        with pytest.raises(MCPError) as no_prompt:
            await c.complete(PromptReference(type="ref/prompt", name="p"),
                             {"name": "a", "value": ""})
    assert "switchboard://operations/workspace.send_email" in listed
    assert "switchboard://operations/ledger.create_transfer" not in listed  # denied to agent
    assert listed["switchboard://operations/workspace.send_email"].mime_type == "application/json"
    assert [t.uri_template for t in templates] == ["switchboard://operations/{name}"]
    content = doc.contents[0]
    described = json.loads(content.text)  # type: ignore[union-attr]
    assert described["python_signature"].startswith("send_email(")
    assert denied.value.error.code == unknown.value.error.code == -32002
    values = completed.completion.values
    assert values and all(v.startswith("workspace.l") for v in values)
    assert "workspace.list_events" in values
    assert no_prompt.value.error.code == -32602


async def test_protected_resource_metadata_without_auth(mcp_url: str) -> None:
    base = mcp_url.removesuffix("/mcp")
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.get(base + "/.well-known/oauth-protected-resource/mcp")
        post = await http.post(base + "/.well-known/oauth-protected-resource", json={})
    assert resp.status_code == 200
    meta = resp.json()
    assert meta["resource"] == mcp_url
    assert meta["switchboard_token_types"] == ["static"]  # the token table, no JWT issuer
    assert "authorization_servers" not in meta
    assert post.status_code == 405


async def test_metadata_follows_the_configured_resource_url() -> None:
    from gateway.identity import Authenticator
    from gateway.mcp_server import _AuthGuard
    from gateway.models import Principal

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("an unauthenticated request reached the MCP app")

    guard = _AuthGuard(app, Authenticator({"t": Principal("p", "demo")}), path="/mcp",
                       resource_url="https://gw.example/agents/mcp",
                       authorization_servers=["https://idp.example"])
    transport = httpx.ASGITransport(app=guard)
    async with httpx.AsyncClient(transport=transport, base_url="http://10.0.0.7:8765") as http:
        meta = await http.get("/.well-known/oauth-protected-resource/agents/mcp")
        denied = await http.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
    assert meta.json()["resource"] == "https://gw.example/agents/mcp"
    assert meta.json()["authorization_servers"] == ["https://idp.example"]
    assert denied.status_code == 401
    assert ('resource_metadata="https://gw.example/.well-known/oauth-protected-resource/'
            'agents/mcp"') in denied.headers["www-authenticate"]


async def test_both_protocol_eras_are_negotiated(mcp_url: str) -> None:
    from mcp_types.version import LATEST_HANDSHAKE_VERSION, LATEST_MODERN_VERSION

    assert (LATEST_MODERN_VERSION, LATEST_HANDSHAKE_VERSION) == ("2026-07-28", "2025-11-25")
    async with connect(mcp_url, "dev-agent", "auto") as modern:
        assert modern.protocol_version == "2026-07-28"  # server/discover, no initialize
        assert (await modern.list_tools()).tools
    async with connect(mcp_url, "dev-agent", "legacy") as legacy:
        assert legacy.protocol_version == "2025-11-25"  # initialize handshake
        assert (await legacy.list_tools()).tools


async def test_metadata_ignores_a_malformed_host_header(mcp_url: str) -> None:
    port = mcp_url.split(":")[2].split("/")[0]
    async with httpx.AsyncClient(timeout=10) as http:
        resp = await http.post(mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                               headers={"Host": 'evil"x, error="y'})
    assert resp.status_code == 401
    challenge = resp.headers["www-authenticate"]
    assert "evil" not in challenge
    assert f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp" in challenge


async def test_clients_accepting_only_json_get_json(mcp_url: str) -> None:
    headers = {"Accept": "application/json", "Authorization": "Bearer dev-agent"}
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "execute_code", "arguments": {"code": "print('x')\n1 + 1"},
                       "_meta": {"progressToken": "p1"}}}
    both = {**headers, "Accept": "application/json, text/event-stream"}
    async with httpx.AsyncClient(timeout=60) as http:
        only_json = await http.post(mcp_url, json=call, headers=headers)
        streamed = await http.post(mcp_url, json=call, headers=both)
    assert only_json.status_code == 200
    assert only_json.headers["content-type"] == "application/json"
    body = only_json.json()
    assert body["id"] == 7 and body["result"]["structuredContent"]["result"] == 2
    # a client that accepts SSE gets the notifications too
    assert streamed.headers["content-type"].startswith("text/event-stream")
    assert '"notifications/progress"' in streamed.text and '"id":7' in streamed.text


async def test_a_failing_authenticator_is_a_401_audited_never_a_500(tmp_path: Path) -> None:
    """The guard's promise holds even if the authenticator breaks its own (raises something
    other than ``Unauthenticated``): a 401, and one ``mcp unauthenticated`` record."""

    class Broken(Authenticator):
        async def authenticate_async(self, token: str | None) -> Principal:
            raise TypeError("ec key expected")

    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        raise AssertionError("an unauthenticated request reached the MCP app")

    telemetry = setup_telemetry(AuditSettings(file=tmp_path / "audit.jsonl"))
    try:
        guard = _AuthGuard(app, Broken({}), path="/mcp", resource_url=None,
                           authorization_servers=(), tracer=telemetry.tracer)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard),
                                     base_url="http://gw") as http:
            resp = await http.post("/mcp", headers={"authorization": "Bearer x.y.z"},
                                   json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        telemetry.force_flush()
        records = [json.loads(line)
                   for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    finally:
        telemetry.shutdown()
    assert resp.status_code == 401
    data = resp.json()["error"]["data"]
    assert data["code"] == "unauthenticated" and "ec key" not in resp.text
    roots = [r for r in records if r["trace_id"] == data["trace_id"]
             and r["name"] == "mcp unauthenticated"]
    assert [r["attributes"]["switchboard.outcome"] for r in roots] == ["unauthenticated"]


async def test_discovery_calls_continue_the_callers_trace(
        mcp_url: str, gateway: RunningGateway) -> None:
    trace_id = uuid.uuid4().hex
    headers = {"authorization": "Bearer dev-agent", "accept": "application/json",
               "content-type": "application/json", "mcp-protocol-version": "2025-06-18",
               "traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"}
    async with httpx.AsyncClient(timeout=60) as http:
        resp = await http.post(mcp_url, headers=headers, json={
            "jsonrpc": "2.0", "id": 1, "method": "resources/list", "params": {}})
    assert resp.status_code == 200 and resp.json()["result"]["resources"]
    root = next(r for r in audit_records(gateway, trace_id) if r["name"] == "mcp resources/list")
    assert root["parent_remote"] is True
    assert root["attributes"]["switchboard.outcome"] == "ok"
    assert root["attributes"]["switchboard.principal.id"]  # identity, on the root


async def test_a_failing_discovery_call_is_recorded_and_leaks_nothing(
    mcp_url: str, gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = gateway.server
    assert server is not None

    async def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("db password is hunter2")

    monkeypatch.setattr(server.pipeline, "manifest", broken)
    trace_id = uuid.uuid4().hex
    headers = {"authorization": "Bearer dev-agent", "accept": "application/json",
               "content-type": "application/json", "mcp-protocol-version": "2025-06-18",
               "traceparent": f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"}
    async with httpx.AsyncClient(timeout=60) as http:
        resp = await http.post(mcp_url, headers=headers, json={
            "jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}})
    assert "error" in resp.json(), resp.text[:300]
    assert "hunter2" not in resp.text
    root = next(r for r in audit_records(gateway, trace_id) if r["name"] == "mcp tools/list")
    assert root["attributes"]["switchboard.outcome"] == "internal"


async def _raw_get_held_open(port: int, token: str, source: str = "127.0.0.1") -> bytes:
    """A slowloris-style client: sends a standalone-stream GET, then only waits (never sends
    more, never closes); returns all the server sent until it closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write((f"GET /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                      f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n"
                      "Mcp-Protocol-Version: 2025-11-25\r\nConnection: keep-alive\r\n\r\n"
                      ).encode())
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), scaled(60))  # EOF: the server closed
    finally:
        writer.close()


async def test_standalone_get_streams_are_refused_audited_and_never_held(
        mcp_url: str, gateway: RunningGateway) -> None:
    """The attack: many concurrent standalone GET /mcp SSE streams (both protocol eras and
    none, JSON and SSE accept headers), plus raw connections that send a GET and then just
    hold the socket. Each is answered 405 ``Allow: POST`` with the stable code
    ``method_not_allowed`` and the connection closed (none stays open), each leaves one audit
    record with the caller's principal, and tool calls keep being served meanwhile. Before
    the fix a handshake-era GET opened an SSE stream that never ended and left no record.
    The held connections and the GETs each come from a loopback address of their own, so
    together they stay within the listener's per-address connection cap (64)."""
    port = int(mcp_url.split(":")[2].split("/")[0])
    auth = {"Authorization": "Bearer dev-agent"}
    variants = [
        {"Accept": "text/event-stream", "Mcp-Protocol-Version": "2025-11-25"},
        {"Accept": "text/event-stream", "Mcp-Protocol-Version": "2025-03-26"},
        {"Accept": "text/event-stream"},
        {"Accept": "text/event-stream", "Mcp-Protocol-Version": "2026-07-28"},
        {"Accept": "application/json, text/event-stream", "Last-Event-ID": "0"},
    ]

    async def one_get(http: httpx.AsyncClient, i: int) -> httpx.Response:
        async with http.stream("GET", mcp_url, headers={**auth, **variants[i % len(variants)]}
                               ) as resp:
            await resp.aread()  # ends only if the server ends the response
            return resp

    limits = httpx.Limits(max_connections=200, max_keepalive_connections=0)
    transport = httpx.AsyncHTTPTransport(limits=limits, local_address="127.0.0.3")
    async with httpx.AsyncClient(timeout=scaled(60), transport=transport) as http:
        held = [asyncio.create_task(_raw_get_held_open(port, "dev-agent", "127.0.0.2"))
                for _ in range(40)]
        gets = await asyncio.wait_for(
            asyncio.gather(*(one_get(http, i) for i in range(60))), scaled(120))
        others = [await http.request(m, mcp_url, headers=auth)
                  for m in ("DELETE", "PUT", "PATCH", "OPTIONS", "HEAD")]
        # The gateway keeps serving tool calls through the official client meanwhile.
        async with connect(mcp_url, "dev-agent") as c:
            found = structured(await c.call_tool("search_operations", {"query": "email"}))
        raw = await asyncio.wait_for(asyncio.gather(*held), scaled(120))
        unauthenticated = await http.get(mcp_url, headers={"Accept": "text/event-stream"})
    assert found["operations"], found
    trace_ids = []
    for resp in gets:
        assert resp.status_code == 405, (resp.status_code, resp.headers)
        assert resp.headers["allow"] == "POST"
        assert resp.headers["connection"] == "close"
        body = json.loads(resp.content)
        assert body["error"]["code"] == -32600
        data = body["error"]["data"]
        assert data["code"] == "method_not_allowed" and data["details"] == {"allow": ["POST"]}
        trace_ids.append(data["trace_id"])
    for resp in others:
        assert resp.status_code == 405 and resp.headers["allow"] == "POST", resp.request.method
    for answer in raw:  # every held connection got the 405 and was closed by the server
        assert answer.startswith(b"HTTP/1.1 405 "), answer[:200]
        assert b'"method_not_allowed"' in answer and b"text/event-stream" not in answer
    assert unauthenticated.status_code == 401  # authentication still comes first
    assert len(set(trace_ids)) == len(trace_ids)
    for trace_id in trace_ids:
        _assert_refusal_recorded(gateway, trace_id, "method_not_allowed", "GET")


async def test_a_slowloris_head_is_cut_but_a_long_response_streams_on(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The MCP listener's header deadline, on a real listener (port 0) with a 1 s deadline: a
    client that sends part of a request head and then nothing, and one that dribbles a byte
    every 0.3 s, are both disconnected by the server; a response that streams for several
    deadlines after its head arrived is delivered whole, and a keep-alive connection may send
    its next request."""
    from gateway import mcp_http

    monkeypatch.setattr(mcp_http, "HEADER_TIMEOUT_S", 1.0)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        for i in range(8):  # ~2.4 s: more than twice the deadline
            await send({"type": "http.response.body", "body": b"%d\n" % i, "more_body": True})
            await asyncio.sleep(0.3)
        await send({"type": "http.response.body", "body": b"end\n"})

    handle = await mcp_http.start_mcp_server(app, "127.0.0.1:0")
    try:
        async def held(dribble: bool) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", handle.port)
            try:
                writer.write(b"POST /mcp HTTP/1.1\r\nHost: x\r\n")
                await writer.drain()
                read = asyncio.create_task(reader.read(-1))
                while dribble and not read.done():
                    writer.write(b"X")  # part of a header name, never a whole line
                    with contextlib.suppress(ConnectionError):
                        await writer.drain()
                    await asyncio.wait({read}, timeout=0.3)
                try:
                    return await asyncio.wait_for(read, scaled(60))  # EOF: the server closed
                except ConnectionResetError:  # a dribbled byte crossed the server's close
                    return b""
            finally:
                writer.close()

        cut = await asyncio.wait_for(asyncio.gather(held(False), held(True)), scaled(120))
        assert cut == [b"", b""]  # closed without an answer
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{handle.port}",
                                     timeout=scaled(60)) as http:
            first = await http.post("/mcp", content=b"{}")
            second = await http.post("/mcp", content=b"{}")  # the same keep-alive connection
        for resp in (first, second):
            assert resp.status_code == 200
            assert resp.text == "".join(f"{i}\n" for i in range(8)) + "end\n"
    finally:
        await handle.stop(grace=2.0)


def _post_head(port: int, token: str, extra: str) -> bytes:
    return (f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            "Accept: application/json, text/event-stream\r\n"
            f"Mcp-Protocol-Version: 2025-11-25\r\n{extra}\r\n").encode()


async def _until_answered(port: int, head: bytes, body: bytes = b"",
                          trickle: bool = False) -> tuple[bytes, float]:
    """Send ``head`` and ``body``, then (``trickle``) one more body byte every 0.3 s until
    the server answers, or nothing; returns all the server sent until it closed (kept even
    if the close was a reset: a byte may cross it), and the seconds that took."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    answer = bytearray()

    async def read_all() -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                answer.extend(chunk)

    try:
        with contextlib.suppress(ConnectionError):
            writer.write(head + body)
            await writer.drain()
        read = asyncio.create_task(read_all())
        while trickle and not answer and not read.done():
            with contextlib.suppress(ConnectionError):
                writer.write(b" ")
                await writer.drain()
            await asyncio.wait({read}, timeout=0.3)
        await asyncio.wait_for(read, scaled(300))  # EOF: the server closed
        return bytes(answer), time.monotonic() - started
    finally:
        writer.close()


def _assert_refusal_recorded(gateway: RunningGateway, trace_id: str, code: str,
                             method: str) -> None:
    """Exactly one audit record of an HTTP-level refusal (``mcp <code>``), the caller's."""
    roots = [r for r in audit_records(gateway, trace_id) if r["name"] == f"mcp {code}"]
    assert len(roots) == 1, trace_id
    attrs = roots[0]["attributes"]
    assert attrs["switchboard.outcome"] == code
    assert attrs["switchboard.principal.id"] == "agent-1"
    assert attrs["switchboard.transport"] == "mcp"
    assert attrs["http.request.method"] == method


def _refusal(answer: bytes, status: int, code: str) -> str:
    """The checked HTTP-level refusal in a raw answer; returns its trace id."""
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), answer[:300]
    assert b"\r\nconnection: close" in head.lower(), head
    error = json.loads(body)["error"]
    assert error["code"] == -32600 and error["data"]["code"] == code, error
    return str(error["data"]["trace_id"])


async def test_a_trickled_or_withheld_body_is_cut_408_audited_and_others_are_served(
        mcp_url: str, gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """The slow-body attack, with a 1 s body deadline: raw connections send a complete head
    (``Content-Length: 1000000``) and then a byte every 0.3 s, or nothing at all. Each is
    answered 408 with the stable code ``request_timeout`` and ``Connection: close`` within a
    bound of the deadline, and leaves one audit record with the caller's principal; a tool
    call through the official client succeeds meanwhile. Before the fix the connections were
    held forever (the header deadline ends with the head)."""
    from gateway import mcp_http

    monkeypatch.setattr(mcp_http, "BODY_TIMEOUT_S", 1.0)
    port = int(mcp_url.split(":")[2].split("/")[0])
    head = _post_head(port, "dev-agent", "Content-Length: 1000000\r\n")
    slow = [asyncio.create_task(_until_answered(port, head, b'{"jsonrpc":', trickle=i % 2 == 0))
            for i in range(6)]
    async with connect(mcp_url, "dev-agent") as c:
        found = structured(await c.call_tool("search_operations", {"query": "email"}))
    assert found["operations"], found
    answers = await asyncio.wait_for(asyncio.gather(*slow), scaled(300))
    for answer, elapsed in answers:
        trace_id = _refusal(answer, 408, "request_timeout")
        assert elapsed < bound(1.0), elapsed
        _assert_refusal_recorded(gateway, trace_id, "request_timeout", "POST")


async def test_an_oversized_body_is_refused_413_while_it_streams(
        mcp_url: str, gateway: RunningGateway) -> None:
    """A body over the limit (4 MiB) is refused 413 ``resource_exhausted`` without being
    buffered whole: a declared ``Content-Length`` over it before any body byte is sent, a
    chunked one as soon as it crosses it, while the client still holds the rest (the answer
    comes before the end of the body, which never comes). Both are audited."""
    from gateway import mcp_http

    port = int(mcp_url.split(":")[2].split("/")[0])
    server = gateway.server
    assert server is not None  # ``serve``'s own MCP listener takes max_message_bytes
    limit = gateway.settings.max_message_bytes if server.mcp_port else mcp_http.MAX_BODY_BYTES
    declared, _ = await _until_answered(
        port, _post_head(port, "dev-agent", f"Content-Length: {limit + 1}\r\n"))
    piece = b"x" * 65536
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece)
                       for _ in range(limit // len(piece) + 1))  # no last chunk: never ends
    crossed, _ = await _until_answered(
        port, _post_head(port, "dev-agent", "Transfer-Encoding: chunked\r\n"), chunked)
    for answer in (declared, crossed):
        trace_id = _refusal(answer, 413, "resource_exhausted")
        _assert_refusal_recorded(gateway, trace_id, "resource_exhausted", "POST")


async def test_a_large_body_arriving_steadily_is_served(
        mcp_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A legitimate large POST is never cut: an execute_code call whose body is ~700 KB
    (a 220 KB source, JSON-escaped) uploaded in 16 KiB chunks for longer than the (1 s)
    body deadline, at well over the minimum rate, runs; so does one sent at once."""
    from gateway import mcp_http

    monkeypatch.setattr(mcp_http, "BODY_TIMEOUT_S", 1.0)
    monkeypatch.setattr(mcp_http, "BODY_MIN_RATE", 8 * 1024)
    code = "# " + "\U0001f600" * 55_000 + "\n1 + 1"
    call = {"jsonrpc": "2.0", "id": 9, "method": "tools/call",
            "params": {"name": "execute_code", "arguments": {"code": code}}}
    body = json.dumps(call).encode()
    assert len(body) > 600_000

    async def steadily() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 16384):
            yield body[i:i + 16384]
            await asyncio.sleep(0.05)

    headers = {"Accept": "application/json", "Authorization": "Bearer dev-agent",
               "Content-Type": "application/json"}
    async with httpx.AsyncClient(timeout=scaled(120)) as http:
        slow = await http.post(mcp_url, content=steadily(), headers=headers)
        at_once = await http.post(mcp_url, content=body, headers=headers)
    for resp in (slow, at_once):
        assert resp.status_code == 200, resp.text[:500]
        assert resp.json()["result"]["structuredContent"]["result"] == 2, resp.text[:500]
