"""The model-facing tool list and its provider formats.

Switchboard hands a model three meta-tools (search, describe, execute code) plus the few
dedicated tools the policy routes to the validated channel, instead of one tool per backend
operation. This module builds those definitions and converts them to the shapes OpenAI and
Anthropic expect, so the gRPC ``GetManifest``, the MCP server and the client library all
describe the same tools the same way.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.models import Operation

__all__ = [
    "DESCRIBE_OPERATION",
    "EXECUTE_CODE",
    "META_TOOL_NAMES",
    "SEARCH_OPERATIONS",
    "ToolDef",
    "ToolKind",
    "dedicated_tool",
    "dedicated_tools",
    "format_tools",
    "meta_tools",
    "operation_for_tool",
    "reverse_map",
    "to_anthropic",
    "to_openai",
    "tool_name",
]

ToolKind = Literal["meta", "dedicated"]

SEARCH_OPERATIONS = "search_operations"
DESCRIBE_OPERATION = "describe_operation"
EXECUTE_CODE = "execute_code"
META_TOOL_NAMES = frozenset({SEARCH_OPERATIONS, DESCRIBE_OPERATION, EXECUTE_CODE})

# OpenAI and Anthropic both accept ^[a-zA-Z0-9_-]{1,64}$ for tool names; dots are not allowed.
_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_MAX_NAME = 64
# Dedicated tool descriptions: enough for the model to choose, not the whole OpenAPI prose.
_MAX_DESCRIPTION = 1024


@dataclass(frozen=True)
class ToolDef:
    """One tool as a model sees it; ``operation`` names the catalog operation for dedicated
    tools (``None`` for meta-tools)."""

    name: str
    description: str
    input_schema: dict[str, Any] = field(default_factory=dict)
    kind: ToolKind = "meta"
    operation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The native (provider-neutral) form, as ``GetManifest`` returns with format ""."""
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "input_schema": copy.deepcopy(self.input_schema),
            "kind": self.kind,
        }
        if self.operation is not None:
            out["operation"] = self.operation
        return out


_SEARCH_DESCRIPTION = (
    "Search the catalog of backend operations by what you want to do, in plain words "
    "(e.g. 'list open pull requests', 'send an email'). Returns the best-matching operation "
    "names with a one-line summary and the route the policy gives you for each. Use it first "
    "when you do not know the operation's name."
)

_DESCRIBE_DESCRIPTION = (
    "Show one operation: its arguments as JSON Schema, its output, its docs and the Python "
    "signature to call it with from execute_code. Big parts come back as "
    '{"$elided": "<path>", "tokens": n}: pass that path (and page for long ones) to read them.'
)

_EXECUTE_DESCRIPTION = """\
Run a short Python program in an isolated sandbox (no network, no files) that calls backend \
operations through the `sdk` package. Prefer this over one tool call per step: loop, filter \
and join data in code so only the answer comes back to you.
- `from sdk import <backend>` then call `<backend>.<operation>(**kwargs)`, e.g. \
`from sdk import ledger; ledger.get_balance(account="A1")`. Results are plain JSON values \
(dicts, lists, str, numbers).
- `sdk.search("what you need")` lists matching operations; `help(<backend>.<operation>)` \
shows one's arguments.
- The value of the last expression (or a variable named `result`) is returned as JSON; \
`print()` output is returned too (capped). Keep both small: summarise, do not dump raw data.
- `inputs` is available as the global `inputs`. Some operations (e.g. payments) are only \
allowed through their dedicated tool; calling them from code is denied with the reason."""


def meta_tools() -> list[ToolDef]:
    """The three tools every principal gets, whatever the size of the catalog."""
    return [
        ToolDef(
            name=SEARCH_OPERATIONS,
            description=_SEARCH_DESCRIPTION,
            input_schema={
                "type": "object",
                "properties": {
                    "query": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 500,
                        "description": "What you want to do, in plain words.",
                    },
                    "limit": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 50,
                        "default": 10,
                        "description": "How many operations to return.",
                    },
                },
                "required": ["query"],
                "additionalProperties": False,
            },
        ),
        ToolDef(
            name=DESCRIBE_OPERATION,
            description=_DESCRIBE_DESCRIPTION,
            input_schema={
                "type": "object",
                "properties": {
                    "name": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": 200,
                        "description": "Operation name as returned by search_operations, "
                        "e.g. 'ledger.get_balance'.",
                    },
                    "path": {
                        "type": "string",
                        "maxLength": 1000,
                        "description": "Optional: an $elided path to read, e.g. "
                        "'output_schema.properties.owner'.",
                    },
                    "page": {
                        "type": "integer",
                        "minimum": 1,
                        "description": "Optional: page of a long part (see 'pages').",
                    },
                },
                "required": ["name"],
                "additionalProperties": False,
            },
        ),
        ToolDef(
            name=EXECUTE_CODE,
            description=_EXECUTE_DESCRIPTION,
            input_schema={
                "type": "object",
                "properties": {
                    "code": {
                        "type": "string",
                        "minLength": 1,
                        "description": "The Python source to run.",
                    },
                    "inputs": {
                        "type": "object",
                        "description": "Optional JSON data bound to the global `inputs`.",
                    },
                    "timeout_ms": {
                        "type": "integer",
                        "minimum": 0,
                        "description": "Optional time budget; 0 or absent uses the policy's "
                        "limit, which is also the maximum.",
                    },
                    "session_id": {
                        "type": "string",
                        "maxLength": 128,
                        "description": "Optional: reuse an interpreter across calls so "
                        "variables persist.",
                    },
                },
                "required": ["code"],
                "additionalProperties": False,
            },
        ),
    ]


def tool_name(operation: str) -> str:
    """Provider-safe tool name for an operation: ``ledger.create_transfer`` becomes
    ``ledger__create_transfer``; other forbidden characters become ``_`` and over-long names
    are shortened with a stable hash suffix so the mapping stays one-to-one."""
    name = _NAME_BAD_CHARS.sub("_", operation.replace(".", "__"))
    if name in META_TOOL_NAMES or not name:
        name = f"op_{name}"
    if len(name) > _MAX_NAME:
        digest = hashlib.sha256(operation.encode("utf-8")).hexdigest()[:8]
        name = f"{name[: _MAX_NAME - 9]}_{digest}"
    return name


def _object_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """Both providers require a top-level ``type: object`` parameter schema."""
    out = copy.deepcopy(dict(schema))
    if out.get("type") != "object":
        out = {"type": "object", "properties": {}, **{k: v for k, v in out.items() if k != "type"}}
    out.setdefault("properties", {})
    return out


def _describe(op: Operation) -> str:
    text = op.summary.strip()
    extra = op.description.strip()
    if extra and extra != text:
        text = f"{text}\n\n{extra}" if text else extra
    if not text:
        text = f"{op.method} {op.path}"
    if len(text) > _MAX_DESCRIPTION:
        text = text[: _MAX_DESCRIPTION - 1].rstrip() + "…"
    return f"{text}\n(operation {op.name})"


def dedicated_tool(op: Operation) -> ToolDef:
    """The validated-channel tool for one operation, with its input JSON Schema."""
    return ToolDef(
        name=tool_name(op.name),
        description=_describe(op),
        input_schema=_object_schema(op.input_schema),
        kind="dedicated",
        operation=op.name,
    )


def dedicated_tools(ops: Iterable[Operation]) -> list[ToolDef]:
    """Dedicated tools for ``ops`` in name order; refuses two operations that map to the
    same tool name, which would make the reverse map ambiguous."""
    tools = sorted((dedicated_tool(op) for op in ops), key=lambda t: t.name)
    seen: dict[str, str | None] = {}
    for tool in tools:
        if tool.name in seen:
            raise ValueError(
                f"operations {seen[tool.name]!r} and {tool.operation!r} map to the same "
                f"tool name {tool.name!r}"
            )
        seen[tool.name] = tool.operation
    return tools


def reverse_map(tools: Iterable[ToolDef]) -> dict[str, str]:
    """Tool name -> operation name, for the dedicated tools in ``tools``."""
    return {t.name: t.operation for t in tools if t.kind == "dedicated" and t.operation}


def operation_for_tool(name: str, tools: Iterable[ToolDef]) -> str | None:
    """The operation behind a tool name a model called (accepts the dotted name too)."""
    for t in tools:
        if t.kind == "dedicated" and (t.name == name or t.operation == name):
            return t.operation
    return None


def to_openai(tools: Iterable[ToolDef]) -> list[dict[str, Any]]:
    """Chat Completions ``tools`` entries."""
    return [
        {
            "type": "function",
            "function": {
                "name": t.name,
                "description": t.description,
                "parameters": _object_schema(t.input_schema),
            },
        }
        for t in tools
    ]


def to_anthropic(tools: Iterable[ToolDef]) -> list[dict[str, Any]]:
    """Anthropic Messages ``tools`` entries."""
    return [
        {
            "name": t.name,
            "description": t.description,
            "input_schema": _object_schema(t.input_schema),
        }
        for t in tools
    ]


def format_tools(tools: Iterable[ToolDef], fmt: str) -> list[dict[str, Any]]:
    """``fmt`` is "openai", "anthropic" or "" (native :meth:`ToolDef.to_dict`)."""
    if fmt == "openai":
        return to_openai(tools)
    if fmt == "anthropic":
        return to_anthropic(tools)
    if fmt == "":
        return [t.to_dict() for t in tools]
    raise ValueError(f"unknown manifest format {fmt!r} (expected 'openai', 'anthropic' or '')")
