"""The model-facing tool definitions and their provider formats."""

from __future__ import annotations

import re

import jsonschema
import pytest

from gateway.manifest import (
    EXECUTE_CODE,
    META_TOOL_NAMES,
    ToolDef,
    dedicated_tool,
    dedicated_tools,
    format_tools,
    meta_tools,
    operation_for_tool,
    reverse_map,
    to_anthropic,
    to_openai,
    tool_name,
)
from gateway.models import Operation

PROVIDER_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

TRANSFER = Operation(
    name="ledger.create_transfer",
    backend="ledger",
    operation_id="createTransfer",
    summary="Move money between two accounts",
    description="Debits `from_account` and credits `to_account`.",
    tags=("compliance",),
    method="POST",
    path="/transfers",
    input_schema={
        "type": "object",
        "properties": {
            "from_account": {"type": "string"},
            "to_account": {"type": "string"},
            "amount_cents": {"type": "integer", "minimum": 1},
        },
        "required": ["from_account", "to_account", "amount_cents"],
        "additionalProperties": False,
    },
)


def test_meta_tools_are_the_three_code_mode_tools_with_valid_schemas() -> None:
    tools = meta_tools()
    assert [t.name for t in tools] == ["search_operations", "describe_operation", "execute_code"]
    assert {t.name for t in tools} == META_TOOL_NAMES
    for t in tools:
        assert t.kind == "meta" and t.operation is None
        jsonschema.Draft202012Validator.check_schema(t.input_schema)
        assert t.input_schema["type"] == "object"
        assert t.input_schema["additionalProperties"] is False


def test_meta_tool_schemas_are_tight() -> None:
    by_name = {t.name: t for t in meta_tools()}
    search = jsonschema.Draft202012Validator(by_name["search_operations"].input_schema)
    assert search.is_valid({"query": "send an email", "limit": 5})
    assert not search.is_valid({})
    assert not search.is_valid({"query": ""})
    assert not search.is_valid({"query": "x", "limit": 500})
    assert not search.is_valid({"query": "x", "extra": 1})
    code = jsonschema.Draft202012Validator(by_name[EXECUTE_CODE].input_schema)
    assert code.is_valid({"code": "1 + 1", "inputs": {"a": 1}, "timeout_ms": 100})
    assert not code.is_valid({"source": "1 + 1"})
    assert not code.is_valid({"code": "1", "timeout_ms": -1})
    describe = jsonschema.Draft202012Validator(by_name["describe_operation"].input_schema)
    assert describe.is_valid({"name": "ledger.get_balance"})
    assert not describe.is_valid({"name": 3})


def test_execute_code_description_teaches_the_sdk() -> None:
    desc = {t.name: t for t in meta_tools()}[EXECUTE_CODE].description
    for needle in ("from sdk import", "sdk.search(", "help(", "last expression", "print"):
        assert needle in desc, needle


def test_dedicated_tool_keeps_schema_and_maps_name_back() -> None:
    tool = dedicated_tool(TRANSFER)
    assert tool.name == "ledger__create_transfer"
    assert tool.kind == "dedicated"
    assert tool.operation == "ledger.create_transfer"
    assert tool.input_schema == TRANSFER.input_schema
    assert tool.input_schema is not TRANSFER.input_schema  # a copy: callers may not mutate ours
    assert "Move money" in tool.description and "ledger.create_transfer" in tool.description
    tools = [*meta_tools(), tool]
    assert reverse_map(tools) == {"ledger__create_transfer": "ledger.create_transfer"}
    assert operation_for_tool("ledger__create_transfer", tools) == "ledger.create_transfer"
    assert operation_for_tool("ledger.create_transfer", tools) == "ledger.create_transfer"
    assert operation_for_tool("execute_code", tools) is None
    assert operation_for_tool("nope", tools) is None


@pytest.mark.parametrize(
    "op_name",
    [
        "ledger.create_transfer",
        "github.repos/list-for-org",
        "weird.name with spaces!",
        "github." + "x" * 200,
        "github." + "x" * 200 + "y",
    ],
)
def test_tool_names_are_provider_safe(op_name: str) -> None:
    assert PROVIDER_NAME.match(tool_name(op_name))


def test_long_names_stay_distinct() -> None:
    a, b = tool_name("github." + "x" * 200), tool_name("github." + "x" * 200 + "y")
    assert a != b and len(a) == len(b) == 64


def test_colliding_tool_names_are_refused() -> None:
    a = Operation(name="svc.a_b", backend="svc", operation_id="a_b")
    b = Operation(name="svc.a-b", backend="svc", operation_id="a-b")
    c = Operation(name="svc.a/b", backend="svc", operation_id="a/b")
    assert [t.name for t in dedicated_tools([b, a])] == ["svc__a-b", "svc__a_b"]
    with pytest.raises(ValueError, match="same tool name"):
        dedicated_tools([a, c])


def test_non_object_input_schema_is_wrapped() -> None:
    op = Operation(name="svc.ping", backend="svc", operation_id="ping", input_schema={})
    tool = dedicated_tool(op)
    assert tool.input_schema == {"type": "object", "properties": {}}
    assert tool.description.startswith("GET /")


def test_openai_and_anthropic_formats() -> None:
    tools = [*meta_tools(), dedicated_tool(TRANSFER)]
    oa = to_openai(tools)
    assert len(oa) == 4
    for entry, tool in zip(oa, tools, strict=True):
        assert entry["type"] == "function"
        assert set(entry["function"]) == {"name", "description", "parameters"}
        assert entry["function"]["name"] == tool.name
        assert entry["function"]["parameters"]["type"] == "object"
    an = to_anthropic(tools)
    for entry, tool in zip(an, tools, strict=True):
        assert set(entry) == {"name", "description", "input_schema"}
        assert entry["name"] == tool.name and PROVIDER_NAME.match(entry["name"])
        assert entry["input_schema"] == tool.input_schema
    native = format_tools(tools, "")
    assert native[-1]["kind"] == "dedicated" and native[-1]["operation"] == TRANSFER.name
    assert format_tools(tools, "openai") == oa
    with pytest.raises(ValueError, match="unknown manifest format"):
        format_tools(tools, "gemini")


def test_tooldef_is_immutable() -> None:
    t = ToolDef(name="x", description="d")
    with pytest.raises(AttributeError):
        t.name = "y"  # type: ignore[misc]
