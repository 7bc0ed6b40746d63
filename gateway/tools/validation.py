"""Argument and output validation against an operation's JSON Schema (Draft 2020-12).

Validators are compiled once per operation and cached: the GitHub catalog alone has ~1,000
operations and recompiling a schema on every call would dominate the tool channel's latency.
Strict mode (the policy decision says ``validation: "strict"``) additionally rejects any field
the schema does not declare, even when the schema itself would allow it, so a typo like
``ammount`` can never be silently ignored.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing.exceptions import Unresolvable

from gateway.audit.redact import redact
from gateway.errors import OutputInvalid, SchemaInvalid
from gateway.models import Operation
from gateway.schemas import NO_REMOTE, UnsafePattern
from gateway.tools.fastcheck import Accept, compile_accept

__all__ = ["check_output", "field_path", "validate_arguments"]

_CACHE_SIZE = 4096
_cache: OrderedDict[tuple[str, int, bool],
                    tuple[object, Draft202012Validator, Accept | None]] = OrderedDict()
_cache_lock = threading.Lock()
_REQUIRED = re.compile(r"^'(?P<name>.*)' is a required property$")
_MAX_REPORTED = 50
_MISSING = object()
# Rules whose schema value is worth naming when the instance itself must not be quoted.
_NAMED_RULES = frozenset({
    "pattern", "format", "type", "enum", "const", "minLength", "maxLength", "minimum",
    "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems", "maxItems",
    "minProperties", "maxProperties", "uniqueItems",
})  # fmt: skip


def _validator(op_name: str, schema: dict[str, Any], *, output: bool,
               ) -> tuple[Draft202012Validator, Accept | None]:
    """The compiled validator for ``schema`` and its fast accept check (None when the schema
    uses what :mod:`gateway.tools.fastcheck` does not compile); cached by operation and
    schema identity."""
    key = (op_name, id(schema), output)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None and hit[0] is schema:
            _cache.move_to_end(key)
            return hit[1], hit[2]
    # NO_REMOTE: a spec's `$ref` to a URL or file is never fetched (gateway/schemas.py).
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER,
                                     registry=NO_REMOTE)
    accept = compile_accept(schema)
    with _cache_lock:
        _cache[key] = (schema, validator, accept)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return validator, accept


def field_path(root: str, path: Sequence[str | int]) -> str:
    """``arguments`` + ``["items", 0, "sku"]`` → ``arguments.items[0].sku``."""
    out = root
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _at(value: Any, path: Sequence[str | int]) -> Any:
    for part in path:
        in_map = isinstance(value, Mapping) and part in value
        in_list = isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value)
        if not (in_map or in_list):
            return _MISSING
        value = value[part]
    return value


def _withheld(error: ValidationError, rule: str) -> str:
    """A message for a value that must not be quoted: the rule, never the instance."""
    wanted = error.validator_value
    if rule in _NAMED_RULES and len(text := repr(wanted)) <= 200:
        return f"does not satisfy {rule} {text} (value not shown: the field is masked)"
    return f"does not satisfy the schema's {rule} rule (value not shown: the field is masked)"


def _describe(error: ValidationError, root: str, hidden: Any = _MISSING) -> dict[str, str]:
    """``hidden``: the instance with the decision's mask applied; where the error's instance
    differs from it (it is, or contains, a masked value), jsonschema's message — which quotes
    the instance — is replaced by one that does not."""
    path: list[str | int] = list(error.absolute_path)
    rule = str(error.validator)
    message = error.message
    if rule == "required":
        m = _REQUIRED.match(message)
        if m:
            path.append(m.group("name"))
            message = "is a required property"
    elif rule == "additionalProperties" and isinstance(error.instance, Mapping):
        declared = error.schema.get("properties", {}) if isinstance(error.schema, Mapping) else {}
        extras = sorted(str(k) for k in error.instance if k not in declared)
        if extras:
            path.append(extras[0])
            message = f"unknown field (not in the schema); unexpected: {', '.join(extras)}"
    elif hidden is not _MISSING and _at(hidden, error.absolute_path) != error.instance:
        message = _withheld(error, rule)
    field = field_path(root, path)
    return {"field": field, "message": f"{field}: {message}", "rule": rule}


def _resolve_local(schema: Any, root: Mapping[str, Any], depth: int = 0) -> Any:
    """Follow a local ``$ref`` (``#/...``); anything else is returned unchanged."""
    while isinstance(schema, Mapping) and isinstance(schema.get("$ref"), str) and depth < 32:
        ref = schema["$ref"]
        if not ref.startswith("#"):
            return schema
        target: Any = root
        for token in [t for t in ref[1:].split("/") if t]:
            token = token.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, Mapping) or token not in target:
                return schema
            target = target[token]
        schema, depth = target, depth + 1
    return schema


def _declared(schema: Any, root: Mapping[str, Any], depth: int = 0) -> tuple[set[str], bool]:
    """Field names an object schema declares, and whether it is an open map (no field list).

    Composition keywords contribute the union of their branches' properties; an object whose
    ``additionalProperties`` is itself a schema is a typed map, whose keys are data, not fields.
    """
    schema = _resolve_local(schema, root)
    if not isinstance(schema, Mapping) or depth > 16:
        return set(), True
    names: set[str] = set(schema.get("properties", {}) or {})
    has_fields = bool(names)
    for keyword in ("allOf", "anyOf", "oneOf"):
        for branch in schema.get(keyword, []) or []:
            sub, open_map = _declared(branch, root, depth + 1)
            names |= sub
            has_fields = has_fields or (bool(sub) and not open_map)
    extra = schema.get("additionalProperties")
    if (isinstance(extra, Mapping) and extra) or schema.get("patternProperties"):
        return names, True
    return names, not has_fields


def _sub_schemas(schema: Any, root: Mapping[str, Any], name: str) -> Iterator[Any]:
    schema = _resolve_local(schema, root)
    if not isinstance(schema, Mapping):
        return
    props = schema.get("properties") or {}
    if name in props:
        yield props[name]
    for keyword in ("allOf", "anyOf", "oneOf"):
        for branch in schema.get(keyword, []) or []:
            yield from _sub_schemas(branch, root, name)


def _items_schema(schema: Any, root: Mapping[str, Any]) -> Any:
    schema = _resolve_local(schema, root)
    return schema.get("items") if isinstance(schema, Mapping) else None


def _unknown_fields(
    instance: Any, schema: Any, root: Mapping[str, Any], path: list[str | int], depth: int = 0
) -> Iterator[dict[str, str]]:
    """Strict mode: every object field must be declared by the schema (recursively)."""
    if depth > 32:
        return
    if isinstance(instance, Mapping):
        names, open_map = _declared(schema, root)
        for key in instance:
            if not open_map and key not in names:
                field = field_path("arguments", [*path, str(key)])
                yield {
                    "field": field,
                    "message": f"{field}: unknown field (not in the schema)",
                    "rule": "unknownField",
                }
                continue
            for sub in _sub_schemas(schema, root, str(key)):
                yield from _unknown_fields(instance[key], sub, root, [*path, str(key)], depth + 1)
    elif isinstance(instance, list):
        items = _items_schema(schema, root)
        if items is not None:
            for i, item in enumerate(instance):
                yield from _unknown_fields(item, items, root, [*path, i], depth + 1)


def validate_arguments(op: Operation, arguments: Mapping[str, Any], *, strict: bool,
                       mask: Sequence[str] = ()) -> None:
    """Raise :class:`SchemaInvalid` listing every violation; the first one is the message.

    ``mask``: the decision's mask (paths as in :func:`gateway.audit.redact`). A violation in a
    masked field — or in an object or list that holds one — names the field and the rule but
    never quotes the value.
    """
    if not isinstance(arguments, Mapping):
        raise SchemaInvalid(
            f"arguments: must be a JSON object, got {type(arguments).__name__}",
            field="arguments",
            details={"errors": [{"field": "arguments", "message": "must be an object",
                                 "rule": "type"}]},
        )
    schema = op.input_schema or {"type": "object"}
    validator, accept = _validator(op.name, schema, output=False)
    instance = dict(arguments)
    try:
        found = [] if accept is not None and accept(instance) else \
            list(validator.iter_errors(instance))
    except (UnsafePattern, Unresolvable) as exc:
        raise SchemaInvalid(f"{op.name}'s arguments schema cannot be applied safely: {exc}",
                            field="arguments", details={"operation": op.name}) from None
    # The masked copy is only needed to word a violation: a valid call does not make it.
    hidden = redact(instance, mask, "action.arguments") if mask and found else _MISSING
    errors = [_describe(e, "arguments", hidden) for e in found]
    if strict:
        seen = {e["field"] for e in errors if e["rule"] == "additionalProperties"}
        errors.extend(
            e for e in _unknown_fields(arguments, schema, schema, []) if e["field"] not in seen
        )
    if errors:
        errors.sort(key=lambda e: (e["field"], e["rule"]))
        first = errors[0]
        raise SchemaInvalid(
            first["message"],
            field=first["field"],
            details={"operation": op.name, "errors": errors[:_MAX_REPORTED]},
        )


def check_output(op: Operation, result: Any) -> None:
    """Raise :class:`OutputInvalid` when the backend's result breaks ``op.output_schema``."""
    if op.output_schema is None:
        return
    validator, accept = _validator(op.name, op.output_schema, output=True)
    if accept is not None and accept(result):
        return
    try:
        errors = [_describe(e, "result") for e in validator.iter_errors(result)]
    except (UnsafePattern, Unresolvable) as exc:
        raise OutputInvalid(f"{op.name}'s output schema cannot be applied safely: {exc}",
                            field="result", details={"operation": op.name}) from None
    if errors:
        errors.sort(key=lambda e: (e["field"], e["rule"]))
        first = errors[0]
        raise OutputInvalid(
            f"{op.name} returned a result that does not match its schema: {first['message']}",
            field=first["field"],
            details={"operation": op.name, "errors": errors[:_MAX_REPORTED]},
        )
