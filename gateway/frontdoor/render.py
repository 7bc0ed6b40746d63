"""The one outcome renderer: what a caller is told about an :class:`~gateway.models.Outcome`
or a refused call, as plain JSON. MCP sends it as the tool result (text + structured
content); gRPC copies the same values into ``ExecuteResponse`` / the ``switchboard-error``
trailer. Both therefore carry the same bounds: unpaired surrogates become U+FFFD, a NaN,
an infinity or nesting beyond the limit is ``result_invalid`` naming the path.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import ApprovalRequired, GatewayError
from gateway.models import Outcome
from gateway.values import clean_result, clean_text

__all__ = ["error_payload", "outcome_payload"]


def outcome_payload(outcome: Outcome) -> dict[str, Any]:
    """The model-facing result (the shape of ``ExecutionResult.to_model()`` plus ids): ``ok``,
    ``route``, then ``result`` / ``stdout`` / ``stderr`` / ``error`` / ``output_truncated`` /
    ``replayed`` when present, and ``trace_id``."""
    out: dict[str, Any] = {"ok": outcome.error is None, "route": outcome.decision.route}
    if outcome.result is not None:
        out["result"] = clean_result(outcome.result)
    if outcome.stdout:
        out["stdout"] = clean_text(outcome.stdout)
    if outcome.stderr:
        out["stderr"] = clean_text(outcome.stderr)
    if outcome.error:
        out["error"] = clean_result(outcome.error, "error")
    if outcome.output_truncated:
        out["output_truncated"] = True
    if outcome.replayed:
        out["replayed"] = True
    out["trace_id"] = outcome.trace_id
    return out


def error_payload(exc: GatewayError, trace_id: str) -> dict[str, Any]:
    """A refused call as data: ``{"ok": false, "error": {code, message, field?, details?},
    "trace_id"}``; an action held for approval also says ``status: approval_required`` and
    carries the approval (docs/approvals.md: held, not failed)."""
    out: dict[str, Any] = {"ok": False, "error": exc.to_dict(), "trace_id": trace_id}
    if exc.code == ApprovalRequired.code:
        out["status"] = ApprovalRequired.code
        out["approval"] = dict(exc.details)
    return out
