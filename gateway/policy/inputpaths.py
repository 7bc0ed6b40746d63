"""Which parts of ``input`` a policy can read, found statically from the regorus AST.

The embedded engine caches decisions keyed on exactly those parts, so the analysis must be
conservative: any use of ``input`` that is not a plain reference with constant keys
(``input.action.kind``, ``input["principal"]``) counts as reading everything below that
point, a bare ``input`` (e.g. ``object.get(input, ...)``, ``some x in input``, ``with input``)
means the whole input, and a call to a non-deterministic built-in disables caching.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

__all__ = ["NONDETERMINISTIC", "CacheKeyFn", "analyse", "make_key_fn"]

Path = tuple[str, ...]

# Built-ins whose result can differ between two evaluations on the same input and data.
NONDETERMINISTIC = (
    "time.now_ns",
    "rand.intn",
    "uuid.rfc4122",
    "uuid.parse",
    "http.send",
    "net.lookup_ip_addr",
    "opa.runtime",
    "crypto.",
    "io.jwt.",
)

_MISSING = object()


def _chain(node: Any) -> tuple[str | None, list[str | None], list[Any]]:
    """Flatten a RefDot/RefBrack chain: (root var name, keys (None = dynamic), dynamic exprs)."""
    keys: list[str | None] = []
    dynamic: list[Any] = []
    while isinstance(node, dict):
        if "RefDot" in node:
            ref = node["RefDot"]
            keys.append(str(ref["field"][1]))
            node = ref["refr"]
        elif "RefBrack" in node:
            ref = node["RefBrack"]
            index = ref["index"]
            if isinstance(index, dict) and "String" in index:
                keys.append(str(index["String"]["value"]))
            else:
                keys.append(None)
                dynamic.append(index)
            node = ref["refr"]
        elif "Var" in node:
            keys.reverse()
            return str(node["Var"]["value"]), keys, dynamic
        else:
            keys.reverse()
            return None, keys, [node, *dynamic]
    return None, [], dynamic


def _call_name(fcn: Any) -> str:
    root, keys, _ = _chain(fcn)
    return ".".join([root or "", *[k or "?" for k in keys]])


class _Walker:
    def __init__(self) -> None:
        self.paths: set[Path] = set()
        self.deterministic = True

    def visit(self, node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                self.visit(item)
            return
        if not isinstance(node, dict):
            return
        if "RefDot" in node or "RefBrack" in node:
            root, keys, dynamic = _chain(node)
            if root == "input":
                path: list[str] = []
                for k in keys:
                    if k is None:
                        break
                    path.append(k)
                self.paths.add(tuple(path))
            elif root is None:
                self.visit(dynamic[:1])  # the non-var root expression
            self.visit(dynamic[1:] if root is None else dynamic)
            return
        if "Var" in node and node["Var"].get("value") == "input":
            self.paths.add(())
            return
        if "Call" in node:
            name = _call_name(node["Call"]["fcn"])
            if any(name == n or (n.endswith(".") and name.startswith(n)) for n in NONDETERMINISTIC):
                self.deterministic = False
            self.visit(node["Call"].get("params", []))
            return
        for value in node.values():
            self.visit(value)


def _minimal(paths: Iterable[Path]) -> tuple[Path, ...]:
    """Drop every path that has a shorter recorded prefix (it is already covered)."""
    out: list[Path] = []
    for p in sorted(set(paths), key=len):
        if not any(p[: len(q)] == q for q in out):
            out.append(p)
    return tuple(sorted(out))


def analyse(ast_modules: list[dict[str, Any]]) -> tuple[Path, ...] | None:
    """The input paths the modules can read, or None when decisions must not be cached."""
    walker = _Walker()
    for module in ast_modules:
        walker.visit(module.get("ast", {}))
    if not walker.deterministic:
        return None
    paths = _minimal(walker.paths)
    if () in paths:
        return None  # reads the whole input: every decision is unique, caching is pointless
    return paths


class CacheKeyFn:
    """Projects an input onto the analysed paths and serialises it as a cache key."""

    def __init__(self, paths: tuple[Path, ...]) -> None:
        self.paths = paths

    def __call__(self, input: dict[str, Any]) -> str:
        parts: list[Any] = []
        for path in self.paths:
            value: Any = input
            for key in path:
                if isinstance(value, dict) and key in value:
                    value = value[key]
                else:
                    value = _MISSING
                    break
            parts.append(None if value is _MISSING else [value])
        return json.dumps(parts, sort_keys=True, separators=(",", ":"))


def make_key_fn(ast_json: str) -> CacheKeyFn | None:
    """The cache key for a compiled policy, or None when its decisions must not be cached.

    ``action.kind`` is always part of the key: the gateway validates a decision against the
    action kind (a "tool" route is malformed for code), so that check must see the real kind.
    """
    paths = analyse(json.loads(ast_json))
    if paths is None:
        return None
    return CacheKeyFn(_minimal([*paths, ("action", "kind")]))
