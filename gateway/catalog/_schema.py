"""OpenAPI schema objects → self-contained Draft 2020-12 JSON Schemas.

Local ``$ref``s are inlined, except refs to schemas that take part in a reference cycle: those
stay ``{"$ref": "#/$defs/<Name>"}`` and the root carries the ``$defs`` it needs, so recursive
schemas are exact and finite. OpenAPI 3.0 dialect (``nullable``, boolean ``exclusiveMinimum``,
``example``) is rewritten to 2020-12. Converted component schemas are memoised and *shared*
between operations: treat every returned schema as read-only (copy before changing).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

__all__ = ["SchemaConverter", "deref", "resolve_pointer"]

# Keywords whose value is a schema, a list of schemas, or a name → schema map.
_ONE = ("additionalProperties", "items", "not", "if", "then", "else", "contains",
        "propertyNames", "unevaluatedProperties", "unevaluatedItems", "additionalItems")
_MANY = ("allOf", "anyOf", "oneOf", "prefixItems")
_MAP = ("properties", "patternProperties", "dependentSchemas", "$defs", "definitions")
# OpenAPI-only keywords that are not JSON Schema (dropped).
_DROP = frozenset({"nullable", "discriminator", "xml", "externalDocs", "example"})


def resolve_pointer(spec: dict[str, Any], ref: str) -> Any:
    """Follow a local JSON pointer ``#/a/b`` into ``spec``; KeyError when it points nowhere."""
    if not ref.startswith("#"):
        raise KeyError(f"only local $refs are supported, not {ref!r}")
    node: Any = spec
    for raw in unquote(ref[1:]).split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            node = node[int(part)]
        elif isinstance(node, dict):
            node = node[part]
        else:
            raise KeyError(ref)
    return node


def deref(spec: dict[str, Any], node: Any) -> Any:
    """Follow a chain of ``$ref``s on a non-schema object (parameter, body, response)."""
    seen: set[str] = set()
    while isinstance(node, dict) and isinstance(node.get("$ref"), str):
        ref = node["$ref"]
        if ref in seen:
            raise KeyError(f"$ref cycle at {ref!r}")
        seen.add(ref)
        node = resolve_pointer(spec, ref)
    return node


def _refs_in(node: Any) -> Iterator[str]:
    """Every ``$ref`` string in a subtree, without following them."""
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            ref = cur.get("$ref")
            if isinstance(ref, str):
                yield ref
            stack.extend(cur.values())
        elif isinstance(cur, list):
            stack.extend(cur)


def _cyclic_refs(spec: dict[str, Any]) -> frozenset[str]:
    """Refs that lie on a reference cycle (Tarjan's SCCs, iterative)."""
    graph: dict[str, list[str]] = {}
    todo = [r for r in _refs_in(spec) if r.startswith("#")]
    while todo:
        ref = todo.pop()
        if ref in graph:
            continue
        try:
            target = resolve_pointer(spec, ref)
        except (KeyError, IndexError, ValueError):
            graph[ref] = []
            continue
        graph[ref] = [r for r in set(_refs_in(target)) if r.startswith("#")]
        todo.extend(r for r in graph[ref] if r not in graph)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cyclic: set[str] = set()
    counter = 0
    for root in graph:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    cyclic.update(component)
    return frozenset(cyclic)


def _def_name(ref: str) -> str:
    tail = ref.rsplit("/", 1)[-1] if ref.startswith("#/components/schemas/") else ref[2:]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", unquote(tail).replace("~1", "/").replace("~0", "~"))


class SchemaConverter:
    """Converts the schemas of one OpenAPI document (3.0 or 3.1)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.is_30 = str(spec.get("openapi", "3.1")).startswith("3.0")
        self._cyclic = _cyclic_refs(spec)
        self._memo: dict[str, tuple[Any, frozenset[str]]] = {}
        self._defs: dict[str, tuple[Any, frozenset[str]]] = {}
        self._names: dict[str, str] = {}
        self._in_progress: set[str] = set()

    # -- public -----------------------------------------------------------------------------
    def convert(self, schema: Any) -> tuple[Any, frozenset[str]]:
        """``(converted, needs)``: needs are the cyclic refs the result points to in ``$defs``."""
        return self._conv(schema)

    def defs_for(self, needs: frozenset[str]) -> dict[str, Any]:
        """The ``$defs`` block (transitively closed) for a set of cyclic refs."""
        out: dict[str, Any] = {}
        todo = list(needs)
        while todo:
            ref = todo.pop()
            name = self._name(ref)
            if name in out:
                continue
            body, more = self._def(ref)
            out[name] = body
            todo.extend(more)
        return dict(sorted(out.items()))

    def standalone(self, schema: Any) -> Any:
        """A converted schema with its ``$defs`` attached (for output schemas)."""
        converted, needs = self._conv(schema)
        if not needs:
            return converted
        base = dict(converted) if isinstance(converted, dict) else {"allOf": [converted]}
        base["$defs"] = self.defs_for(needs)
        return base

    # -- internals --------------------------------------------------------------------------
    def _name(self, ref: str) -> str:
        if ref not in self._names:
            name, n = _def_name(ref), 2
            taken = set(self._names.values())
            candidate = name
            while candidate in taken:
                candidate, n = f"{name}_{n}", n + 1
            self._names[ref] = candidate
        return self._names[ref]

    def _def(self, ref: str) -> tuple[Any, frozenset[str]]:
        if ref not in self._defs:
            self._defs[ref] = self._conv(resolve_pointer(self.spec, ref))
        return self._defs[ref]

    def _target(self, ref: str) -> tuple[Any, frozenset[str]]:
        if ref in self._memo:
            return self._memo[ref]
        if ref in self._in_progress:  # defensive: a cycle the SCC pass did not see
            return {}, frozenset()
        self._in_progress.add(ref)
        try:
            try:
                target = resolve_pointer(self.spec, ref)
            except (KeyError, IndexError, ValueError):
                result: tuple[Any, frozenset[str]] = (
                    {"description": f"unresolvable $ref {ref}"},
                    frozenset(),
                )
            else:
                result = self._conv(target)
        finally:
            self._in_progress.discard(ref)
        self._memo[ref] = result
        return result

    def _conv(self, node: Any) -> tuple[Any, frozenset[str]]:
        if isinstance(node, bool):
            return node, frozenset()
        if not isinstance(node, dict):
            return {}, frozenset()
        ref = node.get("$ref")
        if isinstance(ref, str):
            siblings = {k: v for k, v in node.items() if k != "$ref"}
            if not ref.startswith("#"):
                base: Any = {"description": f"external $ref {ref} (not resolved)"}
                needs: frozenset[str] = frozenset()
            elif ref in self._cyclic:
                base, needs = {"$ref": f"#/$defs/{self._name(ref)}"}, frozenset({ref})
            else:
                base, needs = self._target(ref)
            if not siblings:
                return base, needs
            nullable = siblings.pop("nullable", None) is True
            extra, more = self._conv_plain(siblings)
            merged = {**base, **extra} if isinstance(base, dict) else {"allOf": [base], **extra}
            return (_nullable(merged) if nullable else merged), needs | more
        return self._conv_plain(node)

    def _conv_plain(self, node: dict[str, Any]) -> tuple[dict[str, Any], frozenset[str]]:
        out: dict[str, Any] = {}
        needs: set[str] = set()
        for key, value in node.items():
            if key in _DROP or key.startswith("x-"):
                continue
            if key in _ONE:
                if key == "items" and isinstance(value, list):
                    items = [self._conv(v) for v in value]
                    out["prefixItems"] = [v for v, _ in items]
                    needs.update(n for _, ns in items for n in ns)
                    continue
                out[key], sub = self._conv(value)
                needs |= sub
            elif key in _MANY and isinstance(value, list):
                items = [self._conv(v) for v in value]
                out[key] = [v for v, _ in items]
                needs.update(n for _, ns in items for n in ns)
            elif key in _MAP and isinstance(value, dict):
                conv: dict[str, Any] = {}
                for name, sub_schema in value.items():
                    conv[name], sub = self._conv(sub_schema)
                    needs |= sub
                out["$defs" if key == "definitions" else key] = conv
            else:
                out[key] = value
        if "example" in node and "examples" not in out:
            out["examples"] = [node["example"]]
        self._fix_30(node, out)
        if node.get("nullable") is True:
            out = _nullable(out)
        return out, frozenset(needs)

    def _fix_30(self, node: dict[str, Any], out: dict[str, Any]) -> None:
        for flag, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
            value = node.get(flag)
            if isinstance(value, bool):
                del out[flag]
                if value and bound in out:
                    out[flag] = out.pop(bound)
        if isinstance(out.get("required"), list) and not out["required"]:
            del out["required"]


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    kind = schema.get("type")
    if isinstance(kind, str):
        schema = {**schema, "type": [kind, "null"] if kind != "null" else "null"}
    elif isinstance(kind, list):
        schema = {**schema, "type": [*kind, "null"] if "null" not in kind else kind}
    else:
        return {"anyOf": [schema, {"type": "null"}]}
    if isinstance(schema.get("enum"), list) and None not in schema["enum"]:
        schema["enum"] = [*schema["enum"], None]
    return schema
