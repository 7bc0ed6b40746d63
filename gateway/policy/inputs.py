"""Building the policy input and redacting it for the decision log."""

from __future__ import annotations

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
    """The exact JSON document Rego sees as ``input`` (DESIGN.md, "Policy input").

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


def _redact_path(value: Any, parts: list[str]) -> Any:
    if not parts:
        return REDACTED
    head, rest = parts[0], parts[1:]
    if isinstance(value, dict):
        if head == "*":
            return {k: _redact_path(v, rest) for k, v in value.items()}
        if head in value:
            out = dict(value)
            out[head] = _redact_path(value[head], rest)
            return out
        return value
    if isinstance(value, list):
        if head == "*":
            return [_redact_path(v, rest) for v in value]
        if head.isdigit() and int(head) < len(value):
            out_list = list(value)
            out_list[int(head)] = _redact_path(value[int(head)], rest)
            return out_list
    return value


def redact(value: Any, mask: Sequence[str]) -> Any:
    """A copy of ``value`` with every dotted path in ``mask`` replaced by ``"[redacted]"``.

    Paths are dot-separated keys (``action.arguments.card_number``); ``*`` matches every key or
    list element, a number indexes a list. Missing paths are ignored; the input is not mutated
    (untouched branches are shared, touched ones copied).
    """
    out = value
    for path in mask:
        parts = [p for p in path.split(".") if p]
        if parts:
            out = _redact_path(out, parts)
    return out
