"""One front door, two protocols: every case here runs over gRPC and over MCP against the
real in-process gateway (real demo backends, sandbox and policy), and must give the same
stable error code, the same field (the same logical envelope field, at each door's own wire
path: :data:`gateway.frontdoor.GRPC` / :data:`gateway.frontdoor.MCP`) and the same audit
record shape.

The gRPC door is driven with the generated stub, the MCP door with plain JSON-RPC over
streamable HTTP (``Accept: application/json``), so each side sees exactly its wire format.
"""

from __future__ import annotations

import dataclasses
import json
import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from gateway_support import RunningGateway, code_request, error_of, mcp_endpoint, md, tool_request

from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway.audit import attributes as A
from gateway.frontdoor import GRPC, MCP, Fields
from gateway.mcp_server import REQUEST_ID_META_KEY
from gateway.values import MAX_NAME_LENGTH, MAX_QUERY_LENGTH, MAX_SOURCE_BYTES

TRANSFER = {"from_account": "A1", "to_account": "A2", "amount": 0.5, "currency": "USD"}
CREATE = "ledger.create_transfer"
DOORS = ("grpc", "mcp")


@dataclass
class Reply:
    """What a door answered, reduced to what both doors must agree on."""

    ok: bool
    code: str = ""
    field: str = ""
    trace_id: str = ""
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    payload: dict[str, Any] = dataclasses.field(default_factory=dict)


@pytest.fixture(scope="module")
def mcp_url(gateway: RunningGateway) -> Iterator[str]:
    yield from mcp_endpoint(gateway)


class GrpcDoor:
    name = "grpc"
    fields: Fields = GRPC

    def __init__(self, gateway: RunningGateway) -> None:
        self.stub = gateway.stub

    def _call(self, method: Callable[..., Any], request: Any, token: str | None) -> Reply:
        try:
            resp = method(request, metadata=md(token) if token else (), timeout=120)
        except grpc.RpcError as err:
            e = error_of(err)
            return Reply(ok=False, code=e.get("code", ""), field=e.get("field", ""),
                         trace_id=e["trace_id"], details=e.get("details", {}), payload=e)
        if isinstance(resp, pb.ExecuteResponse) and resp.HasField("error"):
            return Reply(ok=False, code=resp.error.code, field=resp.error.field,
                         trace_id=resp.trace_id)
        return Reply(ok=True, trace_id=getattr(resp, "trace_id", ""))

    def tool(self, token: str | None, operation: str, arguments: dict[str, Any],
             request_id: str | None = None) -> Reply:
        req = tool_request(operation, {}, request_id)
        for k, v in arguments.items():  # one by one: a Struct carries NaN, JSON does not
            req.tool_call.arguments[k] = v
        return self._call(self.stub.Execute, req, token)

    def code(self, token: str | None, source: str, request_id: str | None = None,
             session_id: str | None = None) -> Reply:
        req = code_request(source, session_id=session_id)
        if request_id is not None:
            req.request_id = request_id
        return self._call(self.stub.Execute, req, token)

    def search(self, token: str | None, query: str) -> Reply:
        return self._call(self.stub.SearchOperations, pb.SearchOperationsRequest(query=query),
                          token)

    def describe(self, token: str | None, name: str) -> Reply:
        return self._call(self.stub.DescribeOperation, pb.DescribeOperationRequest(name=name),
                          token)

    def root_name(self, tool: str) -> str:
        return A.SPAN_EXECUTE


class McpDoor:
    name = "mcp"
    fields: Fields = MCP

    def __init__(self, url: str) -> None:
        self.url = url

    def _call(self, token: str | None, tool: str, arguments: dict[str, Any],
              request_id: str | None = None) -> Reply:
        headers = {"Accept": "application/json", "Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        params: dict[str, Any] = {"name": tool, "arguments": arguments}
        if request_id is not None:
            params["_meta"] = {REQUEST_ID_META_KEY: request_id}
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
        # json.dumps writes NaN as the (non-standard) literal Python's parser reads back.
        resp = httpx.post(self.url, content=json.dumps(body), headers=headers, timeout=120)
        message = resp.json()
        if "error" in message:  # a JSON-RPC error (401 unauthenticated, -32602 unknown tool)
            data = message["error"].get("data") or {}
            return Reply(ok=False, code=data.get("code", ""), field=data.get("field", ""),
                         trace_id=data.get("trace_id", ""), details=data.get("details", {}),
                         payload=message)
        assert resp.status_code == 200, resp.text
        result = message["result"]
        payload = result["structuredContent"]
        assert json.loads(result["content"][0]["text"]) == payload
        if result.get("isError"):
            err = payload.get("error", {})
            return Reply(ok=False, code=err.get("code", ""), field=err.get("field", ""),
                         trace_id=payload.get("trace_id", ""), details=err.get("details", {}),
                         payload=payload)
        return Reply(ok=True, trace_id=payload.get("trace_id", ""), payload=payload)

    def tool(self, token: str | None, operation: str, arguments: dict[str, Any],
             request_id: str | None = None) -> Reply:
        return self._call(token, operation.replace(".", "__"), arguments,
                          request_id or str(uuid.uuid4()))

    def code(self, token: str | None, source: str, request_id: str | None = None,
             session_id: str | None = None) -> Reply:
        args: dict[str, Any] = {"code": source}
        if session_id is not None:
            args["session_id"] = session_id
        return self._call(token, "execute_code", args, request_id)

    def search(self, token: str | None, query: str) -> Reply:
        return self._call(token, "search_operations", {"query": query})

    def describe(self, token: str | None, name: str) -> Reply:
        return self._call(token, "describe_operation", {"name": name})

    def root_name(self, tool: str) -> str:
        return f"mcp tools/call {tool}"


Door = GrpcDoor | McpDoor


@pytest.fixture(params=DOORS)
def door(request: pytest.FixtureRequest, gateway: RunningGateway) -> Door:
    if request.param == "grpc":
        return GrpcDoor(gateway)
    return McpDoor(request.getfixturevalue("mcp_url"))


# -- the envelope ------------------------------------------------------------------------
# (case, call, expected code, the logical envelope field or a literal argument path)

@dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[Door], Reply]
    code: str
    field: str | None  # a Fields attribute name, "=<literal>" for the same path on both, None
    #                    for "no field"


CASES = [
    Case("malformed request_id",
         lambda d: d.tool("dev-finance", CREATE, TRANSFER, request_id="not an id!"),
         "invalid_request", "request_id"),
    Case("oversized request_id",
         lambda d: d.tool("dev-finance", CREATE, TRANSFER, request_id="r" * 129),
         "invalid_request", "request_id"),
    Case("malformed request_id of a code run",
         lambda d: d.code("dev-agent", "1 + 1", request_id="x/y"),
         "invalid_request", "request_id"),
    Case("oversized code source",
         lambda d: d.code("dev-agent", "#" * (MAX_SOURCE_BYTES + 1)),
         "invalid_request", "source"),
    Case("blank code source",
         lambda d: d.code("dev-agent", "   \n"),
         "invalid_request", "source"),
    Case("malformed session_id",
         lambda d: d.code("dev-agent", "1", session_id="no spaces allowed"),
         "invalid_request", "session_id"),
    Case("over-long operation name",
         lambda d: d.tool("dev-finance", "ledger." + "x" * MAX_NAME_LENGTH, {}),
         "invalid_request", "name"),
    Case("over-long describe name",
         lambda d: d.describe("dev-agent", "ledger." + "x" * MAX_NAME_LENGTH),
         "invalid_request", "describe_name"),
    Case("over-long query",
         lambda d: d.search("dev-agent", "q" * (MAX_QUERY_LENGTH + 1)),
         "invalid_request", "query"),
    Case("blank query",
         lambda d: d.search("dev-agent", "   "),
         "invalid_request", "query"),
    Case("unknown operation",
         lambda d: d.tool("dev-finance", "ledger.no_such_operation", {}),
         "unknown_operation", "name"),
    Case("missing token",
         lambda d: d.code(None, "1 + 1"),
         "unauthenticated", None),
    Case("bad token",
         lambda d: d.code("not-a-token", "1 + 1"),
         "unauthenticated", None),
    Case("policy denial",
         lambda d: d.tool("dev-agent", CREATE, TRANSFER),
         "policy_denied", None),
    Case("schema-invalid argument",
         lambda d: d.tool("dev-finance", CREATE, {**TRANSFER, "amount": "lots"}),
         "schema_invalid", "=arguments.amount"),
    Case("missing required argument",
         lambda d: d.tool("dev-finance", CREATE,
                          {k: v for k, v in TRANSFER.items() if k != "to_account"}),
         "schema_invalid", "=arguments.to_account"),
    Case("NaN argument",
         lambda d: d.tool("dev-finance", CREATE, {**TRANSFER, "amount": math.nan}),
         "invalid_request", "=arguments.amount"),
]


def expected_field(door: Door, case: Case) -> str:
    if case.field is None:
        return ""
    if case.field.startswith("="):
        return case.field[1:]
    return str(getattr(door.fields, case.field))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_envelope_gives_the_same_code_and_field(door: Door, case: Case) -> None:
    reply = case.call(door)
    assert not reply.ok, reply
    assert (reply.code, reply.field) == (case.code, expected_field(door, case)), reply.payload


def test_the_field_tables_name_the_same_envelope() -> None:
    """The two doors' tables differ only in wire paths, never in which fields exist, and
    the argument/input paths are literally the same."""
    assert GRPC.arguments == MCP.arguments == "arguments"
    assert GRPC.inputs == MCP.inputs == "inputs"
    assert GRPC.request_id == "request_id" and MCP.request_id == f"_meta.{REQUEST_ID_META_KEY}"
    assert GRPC.source == "code_run.source" and MCP.source == "arguments.code"


def test_denial_reasons_and_decision_id_are_the_same(door: Door) -> None:
    reply = door.tool("dev-agent", CREATE, TRANSFER)
    assert reply.code == "policy_denied"
    assert reply.details["reasons"], reply
    assert reply.details["decision_id"], reply
    assert len(reply.trace_id) == 32


# -- the audit record --------------------------------------------------------------------

def audit(gateway: RunningGateway, trace_id: str) -> list[dict[str, Any]]:
    assert len(trace_id) == 32, trace_id
    server = gateway.server
    assert server is not None and gateway.settings.audit.file is not None
    server.telemetry.force_flush()
    return [rec for line in Path(gateway.settings.audit.file).read_text().splitlines()
            if (rec := json.loads(line)).get("trace_id") == trace_id]


def root_of(records: list[dict[str, Any]]) -> dict[str, Any]:
    roots = [r for r in records if r["kind"] == "SERVER"]
    assert len(roots) == 1, [r["name"] for r in records]
    return roots[0]


def switchboard_keys(record: dict[str, Any]) -> set[str]:
    return {k for k in record["attributes"] if k.startswith("switchboard.")}


# The switchboard.* keys of each kind of call's root span: the same set on both doors.
TOOL_KEYS = {A.TRANSPORT, A.REQUEST_ID, A.PRINCIPAL_ID, A.TENANT, A.ROLES, A.ACTION_KIND,
             A.OPERATION, A.ARGUMENTS_HMAC, A.DIGEST_KEY_ID, A.ARGUMENTS, A.ROUTE, A.DECISION_ID,
             A.POLICY_REVISION, A.OUTCOME}
ALLOWED_TOOL_KEYS = TOOL_KEYS | {A.REASONS, A.REPLAYED, A.SCHEMA_STRICT}
DENIED_TOOL_KEYS = TOOL_KEYS | {A.REASONS}
CODE_KEYS = {A.TRANSPORT, A.REQUEST_ID, A.PRINCIPAL_ID, A.TENANT, A.ROLES, A.ACTION_KIND,
             A.CODE_HMAC, A.DIGEST_KEY_ID, A.ROUTE, A.REASONS, A.DECISION_ID, A.POLICY_REVISION,
             A.HOST_CALLS, A.OUTCOME}


@dataclass(frozen=True)
class Shape:
    id: str
    call: Callable[[Door], Reply]
    tool: str  # the MCP tool name (the MCP root span is named after it)
    ok: bool
    outcome: str
    route: str
    kind: str
    keys: frozenset[str]
    principal: str


SHAPES = [
    Shape("allowed tool call", lambda d: d.tool("dev-finance", CREATE, TRANSFER),
          "ledger__create_transfer", True, "ok", "tool", "tool", frozenset(ALLOWED_TOOL_KEYS),
          "finance-1"),
    Shape("denied tool call", lambda d: d.tool("dev-agent", CREATE, TRANSFER),
          "ledger__create_transfer", False, "policy_denied", "deny", "tool",
          frozenset(DENIED_TOOL_KEYS), "agent-1"),
    Shape("code run", lambda d: d.code("dev-agent", "from sdk import ledger\n"
                                       "ledger.get_balance(account='A1')['account']"),
          "execute_code", True, "ok", "code", "code", frozenset(CODE_KEYS), "agent-1"),
    Shape("code run whose code fails", lambda d: d.code("dev-agent", "1 / 0"),
          "execute_code", False, "user_code_error", "code", "code", frozenset(CODE_KEYS),
          "agent-1"),
]


@pytest.mark.parametrize("shape", SHAPES, ids=[s.id for s in SHAPES])
def test_audit_record_has_the_same_shape(door: Door, gateway: RunningGateway,
                                         shape: Shape) -> None:
    reply = shape.call(door)
    assert reply.ok is shape.ok, reply
    records = audit(gateway, reply.trace_id)
    root = root_of(records)
    attrs = root["attributes"]
    assert root["name"] == door.root_name(shape.tool)
    assert switchboard_keys(root) == shape.keys, sorted(switchboard_keys(root) ^ shape.keys)
    assert attrs[A.TRANSPORT] == door.name
    assert attrs[A.OUTCOME] == shape.outcome
    assert attrs[A.ROUTE] == shape.route
    assert attrs[A.ACTION_KIND] == shape.kind
    assert attrs[A.PRINCIPAL_ID] == shape.principal and attrs[A.TENANT] == "demo"
    assert attrs[A.GEN_AI_OPERATION_NAME] == "execute_tool"
    assert attrs[A.GEN_AI_TOOL_CALL_ID] == attrs[A.REQUEST_ID]
    if shape.kind == "tool":
        assert attrs[A.OPERATION] == CREATE and attrs[A.GEN_AI_TOOL_NAME] == CREATE
    else:
        assert attrs[A.GEN_AI_TOOL_NAME] == "execute_code"
    # The decision on the root is the policy's own (its span), and the one the caller saw.
    decide = [r for r in records if r["name"] == A.SPAN_POLICY_DECIDE
              and r["parent_span_id"] == root["span_id"]]
    assert len(decide) == 1, [r["name"] for r in records]
    assert attrs[A.DECISION_ID] and attrs[A.DECISION_ID] == \
        decide[0]["attributes"][A.DECISION_ID]
    if shape.outcome == "policy_denied":
        assert reply.details["decision_id"] == attrs[A.DECISION_ID]
        assert attrs[A.ERROR_TYPE] == "policy_denied"
        assert root["status"]["code"] == "ERROR"
    else:  # a code error is data: the call itself succeeded
        assert root["status"]["code"] == "OK"
    # Identity is recorded on the root itself, on both doors: no `identity` child span, and
    # no `schema.validate` one either (docs/audit.md, "Span tree").
    assert not [r for r in records if r["name"] in ("identity", "schema.validate")]
    assert attrs[A.ROLES]


def test_an_envelope_refusal_is_audited_the_same(door: Door, gateway: RunningGateway) -> None:
    """A refused envelope is still one audit record: the root span, its outcome and field,
    the caller (identity runs first) and the bounded stand-in for the bad request id."""
    reply = door.tool("dev-finance", CREATE, TRANSFER, request_id="bad id " + "z" * 200)
    assert reply.code == "invalid_request"
    root = root_of(audit(gateway, reply.trace_id))
    attrs = root["attributes"]
    assert attrs[A.TRANSPORT] == door.name
    assert attrs[A.OUTCOME] == "invalid_request" and attrs[A.ERROR_TYPE] == "invalid_request"
    assert attrs[A.ERROR_FIELD] == door.fields.request_id
    assert attrs[A.PRINCIPAL_ID] == "finance-1"
    assert attrs[A.REQUEST_ID].startswith("<invalid len=207 "), attrs[A.REQUEST_ID]
    assert root["status"]["code"] == "ERROR"


@pytest.mark.parametrize("token", [None, "not-a-token"], ids=["missing", "bad"])
def test_a_refused_caller_is_audited_the_same(door: Door, gateway: RunningGateway,
                                              token: str | None) -> None:
    """Guessing tokens leaves a trail on both doors: one root record with outcome
    ``unauthenticated``, no principal, its status the error — MCP's 401 guard included,
    which answers before the MCP app sees the request."""
    reply = door.code(token, "1 + 1")
    assert reply.code == "unauthenticated", reply
    records = audit(gateway, reply.trace_id)
    root = root_of(records)
    attrs = root["attributes"]
    assert attrs[A.TRANSPORT] == door.name
    assert attrs[A.OUTCOME] == "unauthenticated" and attrs[A.ERROR_TYPE] == "unauthenticated"
    assert A.PRINCIPAL_ID not in attrs
    assert root["status"]["code"] == "ERROR"
    assert root["status"]["message"].startswith("unauthenticated: "), root["status"]
    assert [r["name"] for r in records] == [root["name"]]  # nothing ran under it
    # The token itself is never written down.
    assert "not-a-token" not in json.dumps(records)


def test_an_authenticator_that_breaks_is_a_refusal_on_both_doors(
        door: Door, gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    """Authentication ends in a principal or a refusal, never an internal error, even when
    the authenticator itself fails unexpectedly (both doors' own safety net)."""
    server = gateway.server
    assert server is not None

    async def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("key store password is hunter2")

    monkeypatch.setattr(server.authenticator, "authenticate_async", broken)
    reply = door.code("dev-agent", "1 + 1")
    assert reply.code == "unauthenticated", reply
    records = audit(gateway, reply.trace_id)
    assert root_of(records)["attributes"][A.OUTCOME] == "unauthenticated"
    assert "hunter2" not in json.dumps(records) and "hunter2" not in repr(reply)
