"""Building the policy input and redacting it for the decision log."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from typing import Any

from gateway.models import Operation, Principal

__all__ = ["REDACTED", "build_input", "redact"]

REDACTED = "[redacted]"


def build_input(
    *,
    principal: Principal,
    kind: str,
    operation: Operation | None,
    operation_name: str,
    arguments: dict[str, Any] | None = None,
    source_sha256: str | None = None,
    parent_decision_id: str | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The exact JSON document Rego sees as ``input`` (docs/policy.md, "Contract with the
    gateway").

    ``operation`` is None when the name is not in the catalog: Rego then sees ``operation: {}``
    and ``action.operation`` still carries the requested name, so the deny can name it.
    """
    action: dict[str, Any] = {"kind": kind, "operation": operation_name}
    if arguments is not None:
        action["arguments"] = arguments
    if source_sha256 is not None:
        action["source_sha256"] = source_sha256
    if parent_decision_id is not None:
        action["parent_decision_id"] = parent_decision_id
    return {
        "principal": principal.to_input(),
        "action": action,
        "operation": operation.to_input() if operation is not None else {},
        "context": {"time_ns": time.time_ns(), "labels": dict(labels or {})},
    }


_LEAF: dict[str, Any] = {}


@functools.lru_cache(maxsize=256)
def _trie(mask: tuple[str, ...]) -> dict[str, Any]:
    """The mask as a tree of path segments; a path ending at a node makes it a leaf."""
    root: dict[str, Any] = {}
    for path in mask:
        parts = [p for p in path.split(".") if p]
        if not parts:
            continue
        node = root
        for part in parts[:-1]:
            child = node.get(part)
            if child is _LEAF:
                break  # a shorter path already redacts this whole subtree
            node = node.setdefault(part, {})
        else:
            node[parts[-1]] = _LEAF
    return root


def _apply(value: Any, node: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] | None = None
        for key, child in node.items():
            targets = value.keys() if key == "*" else ((key,) if key in value else ())
            for k in targets:
                new = REDACTED if child is _LEAF else _apply(value[k], child)
                if new is not value[k]:
                    if out is None:
                        out = dict(value)
                    out[k] = new
        return value if out is None else out
    if isinstance(value, list):
        items: list[Any] | None = None
        for key, child in node.items():
            if key == "*":
                idx: range | tuple[int, ...] = range(len(value))
            elif key.isdigit() and int(key) < len(value):
                idx = (int(key),)
            else:
                continue
            for i in idx:
                new = REDACTED if child is _LEAF else _apply(value[i], child)
                if new is not value[i]:
                    if items is None:
                        items = list(value)
                    items[i] = new
        return value if items is None else items
    return value


def redact(value: Any, mask: Sequence[str]) -> Any:
    """A copy of ``value`` with every dotted path in ``mask`` replaced by ``"[redacted]"``.

    Paths are dot-separated keys (``action.arguments.card_number``); ``*`` matches every key or
    list element, a number indexes a list. Missing paths are ignored; the input is not mutated
    (untouched branches are shared, touched ones copied).
    """
    if not mask:
        return value
    return _apply(value, _trie(tuple(mask)))
