"""Building the policy input and redacting it for the decision log."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from gateway.maskpath import credential_paths
from gateway.maskpath import redact as mask_redact
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


# Same path language as the audit trail (gateway/maskpath.py: ``**``, globs, style-blind
# keys), and the same credential-key backstop over the arguments.
_BACKSTOP = credential_paths("action.arguments")


def redact(value: Any, mask: Sequence[str]) -> Any:
    """A copy of ``value`` with every path in ``mask`` replaced by ``"[redacted]"``.

    Paths are dot-separated keys (``action.arguments.card_number``); ``*`` matches every key or
    list element, ``**`` any number of levels, a number indexes a list; keys match whatever
    their case and ``_``/``-``/camelCase style. Credential keys under ``action.arguments`` are
    redacted whatever the mask. Missing paths are ignored; the input is not mutated
    (untouched branches are shared, touched ones copied).
    """
    return mask_redact(value, [*mask, *_BACKSTOP], "", REDACTED)
