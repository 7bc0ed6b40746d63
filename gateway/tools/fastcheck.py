"""A compiled *accept* check for the common catalog schemas, in front of jsonschema.

jsonschema's ``iter_errors`` walks a schema through generic keyword dispatch, error objects
and scope bookkeeping on every call: ~0.2 ms for the benchmark GET's small result, 14 µs
here (one core, load ~4). Almost every result and argument object is valid, and for those only
a yes is needed. :func:`compile_accept` turns a schema built from the keywords below into
nested closures that answer "valid" with the same rules as ``Draft202012Validator`` (the
gateway's RE2 ``pattern``, the same format checker). It is conservative: whatever it is not
sure of (a keyword it does not implement, a float where an integer is asked, a number type
JSON does not produce) is "not known", and the caller runs jsonschema as before, which also
words every error. So a fast *yes* is exactly jsonschema's yes, and every no is its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from jsonschema import Draft202012Validator

from gateway.schemas import UnsafePattern, compile_pattern

__all__ = ["Accept", "compile_accept"]

Accept = Callable[[Any], bool]

# Keywords jsonschema implements; of these, the ones below are compiled and any other makes the
# schema fall back entirely. Keys jsonschema ignores (title, description, x-*, nullable,
# $defs...) are ignored here too.
_JSONSCHEMA_KEYWORDS = frozenset(Draft202012Validator.VALIDATORS)
_CHECKER = Draft202012Validator.FORMAT_CHECKER
_MAX_DEPTH = 64


class _Unsupported(Exception):
    """The schema uses something this module does not compile."""


def _type_check(name: str) -> Accept:
    if name == "string":
        return lambda v: type(v) is str
    if name == "integer":  # 1.0 is an integer to jsonschema: not known here, so not a yes
        return lambda v: type(v) is int
    if name == "number":
        return lambda v: type(v) is int or type(v) is float
    if name == "object":
        return lambda v: type(v) is dict
    if name == "array":
        return lambda v: type(v) is list
    if name == "boolean":
        return lambda v: type(v) is bool
    if name == "null":
        return lambda v: v is None
    raise _Unsupported(f"type {name!r}")


def _plain(v: Any) -> bool:
    """The types JSON decoding produces (anything else is not known: fall back)."""
    t = type(v)
    return t is str or t is int or t is float or t is bool or t is dict or t is list \
        or v is None


class _Compiler:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root
        self.refs: dict[str, list[Accept]] = {}

    def ref(self, ref: str, depth: int) -> Accept:
        """A local ``#/$defs/...`` reference, compiled once (a cell: refs may recurse)."""
        cell = self.refs.get(ref)
        if cell is None:
            if not ref.startswith("#/"):
                raise _Unsupported(f"$ref {ref[:80]!r}")
            target: Any = self.root
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(target, Mapping) or part not in target:
                    raise _Unsupported(f"$ref {ref[:80]!r}")
                target = target[part]
            cell = self.refs[ref] = []
            cell.append(self.compile(target, depth + 1))
        return lambda v: cell[0](v)

    def compile(self, schema: Any, depth: int = 0) -> Accept:
        if depth > _MAX_DEPTH:
            raise _Unsupported("too deep")
        if schema is True:
            return lambda v: True
        if schema is False or not isinstance(schema, Mapping):
            raise _Unsupported("schema")
        if depth and "$id" in schema:
            raise _Unsupported("$id below the root")  # would move what '#' refers to
        checks: list[Accept] = []
        for key, value in schema.items():
            if key in _JSONSCHEMA_KEYWORDS:
                checks.append(self.keyword(key, value, schema, depth))
        if not checks:
            return _plain
        if len(checks) == 1:
            return checks[0]
        return lambda v: all(check(v) for check in checks)

    def keyword(self, key: str, value: Any, schema: Mapping[str, Any], depth: int) -> Accept:
        if key == "type":
            names = [value] if isinstance(value, str) else value
            if not isinstance(names, list) or not names:
                raise _Unsupported("type")
            types = [_type_check(n) for n in names]
            return types[0] if len(types) == 1 else (lambda v: any(t(v) for t in types))
        if key == "properties":
            subs = {k: self.compile(s, depth + 1) for k, s in value.items()}
            return lambda v: type(v) is not dict or all(
                sub(v[k]) for k, sub in subs.items() if k in v)
        if key == "required":
            if not isinstance(value, list) or not all(type(n) is str for n in value):
                raise _Unsupported("required")
            names = tuple(value)
            return lambda v: type(v) is not dict or all(n in v for n in names)
        if key == "additionalProperties":
            if "patternProperties" in schema:
                raise _Unsupported("patternProperties")
            declared = frozenset(schema.get("properties") or ())
            if value is False:
                return lambda v: type(v) is not dict or all(k in declared for k in v)
            extra = self.compile(value, depth + 1)
            return lambda v: type(v) is not dict or all(
                extra(x) for k, x in v.items() if k not in declared)
        if key == "items":
            if "prefixItems" in schema:
                raise _Unsupported("prefixItems")
            item = self.compile(value, depth + 1)
            return lambda v: type(v) is not list or all(item(x) for x in v)
        if key in ("anyOf", "allOf"):
            subs_l = [self.compile(s, depth + 1) for s in value]
            if key == "anyOf":
                return lambda v: any(sub(v) for sub in subs_l)
            return lambda v: all(sub(v) for sub in subs_l)
        if key == "$ref":
            return self.ref(str(value), depth)
        if key == "enum":
            if not isinstance(value, list) or not all(type(e) is str for e in value):
                raise _Unsupported("enum")
            members = frozenset(value)
            return lambda v: type(v) is str and v in members
        if key == "format":
            fmt = str(value)
            return lambda v: _CHECKER.conforms(v, fmt)
        if key == "pattern":
            try:
                program = compile_pattern(value)
            except UnsafePattern:
                raise _Unsupported("pattern") from None
            return lambda v: type(v) is not str or program.search(v) is not None
        if key in ("minLength", "maxLength", "minItems", "maxItems"):
            return _length(key, value)
        if key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            return _bound(key, value)
        raise _Unsupported(key)


def _length(key: str, limit: Any) -> Accept:
    if type(limit) is not int:
        raise _Unsupported(key)
    kind = list if key.endswith("Items") else str
    if key.startswith("min"):
        return lambda v: type(v) is not kind or len(v) >= limit
    return lambda v: type(v) is not kind or len(v) <= limit


def _bound(key: str, bound: Any) -> Accept:
    if type(bound) is not int and type(bound) is not float:
        raise _Unsupported(key)

    def applies(v: Any) -> bool | None:  # None: a number this check does not know
        t = type(v)
        if t is int or t is float:
            return True
        return False if _plain(v) else None

    if key == "minimum":
        return lambda v: (a := applies(v)) is False or (a is True and v >= bound)
    if key == "maximum":
        return lambda v: (a := applies(v)) is False or (a is True and v <= bound)
    if key == "exclusiveMinimum":
        return lambda v: (a := applies(v)) is False or (a is True and v > bound)
    return lambda v: (a := applies(v)) is False or (a is True and v < bound)


def compile_accept(schema: Any) -> Accept | None:
    """The accept check for ``schema``, or None when it uses what is not compiled here."""
    try:
        check = _Compiler(schema if isinstance(schema, Mapping) else {}).compile(schema)
    except (_Unsupported, RecursionError, TypeError, AttributeError):
        return None

    def accept(value: Any) -> bool:
        try:
            return check(value)
        except (RecursionError, TypeError):  # e.g. NaN/odd keys: let jsonschema decide
            return False

    return accept
