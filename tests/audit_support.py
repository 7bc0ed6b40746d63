"""Builds the span trees the pipeline produces (same names and attributes), for audit tests.

Each helper plays one ``Execute`` call on a :class:`gateway.audit.Telemetry` tracer and
returns its trace id (hex). The lead's real pipeline emits the same shapes.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway.audit import attributes as A
from gateway.audit import json_attr, redact, safe_url
from gateway.audit.redact import DigestKey

__all__ = ["FINANCE", "simulate_code_run", "simulate_denial", "simulate_tool_call"]

FINANCE = {"id": "finance-1", "tenant": "demo", "roles": ["agent", "finance"]}
_KEY = DigestKey(b"k" * 32)  # the simulated gateway's digest key


def _root_attrs(principal: dict[str, Any], request_id: str) -> dict[str, Any]:
    return {
        A.RPC_SYSTEM: "grpc",
        A.RPC_SERVICE: "switchboard.v1.Gateway",
        A.RPC_METHOD: "Execute",
        A.TRANSPORT: "grpc",
        A.REQUEST_ID: request_id,
        A.PRINCIPAL_ID: principal["id"],
        A.TENANT: principal["tenant"],
        A.ROLES: principal["roles"],
    }


def _decide(
    tracer: trace.Tracer, route: str, decision_id: str, reasons: list[str], **extra: Any
) -> None:
    with tracer.start_as_current_span(A.SPAN_POLICY_DECIDE) as span:
        span.set_attributes(
            {
                A.ROUTE: route,
                A.DECISION_ID: decision_id,
                A.POLICY_REVISION: "rev-1",
                A.REASONS: reasons,
                **extra,
            }
        )


def _backend(tracer: trace.Tracer, operation: str, method: str, url: str, status: int) -> None:
    with tracer.start_as_current_span(
        A.backend_call_span_name(operation), kind=SpanKind.CLIENT
    ) as span:
        span.set_attributes(
            {
                A.HTTP_REQUEST_METHOD: method,
                A.URL_FULL: safe_url(url),
                A.SERVER_ADDRESS: "127.0.0.1",
                A.HTTP_RESPONSE_STATUS_CODE: status,
            }
        )


def simulate_tool_call(
    tracer: trace.Tracer,
    *,
    request_id: str = "req-tool-1",
    principal: dict[str, Any] = FINANCE,
    arguments: dict[str, Any] | None = None,
    mask: tuple[str, ...] = ("action.arguments.card_number",),
    context: Context | None = None,
) -> str:
    """``ledger.create_transfer`` through the dedicated-tool channel."""
    args = arguments or {"from": "A1", "to": "B2", "amount": 125, "card_number": "4111-1111"}
    op = "ledger.create_transfer"
    with tracer.start_as_current_span(
        A.SPAN_EXECUTE,
        context=context,
        kind=SpanKind.SERVER,
        attributes=_root_attrs(principal, request_id),
    ) as root:
        _decide(tracer, "tool", "dec-tool-1", ["compliance tag: payments"])
        with tracer.start_as_current_span(A.SPAN_IDEMPOTENCY) as idem:
            idem.set_attributes({A.IDEMPOTENCY_KEY_STATE: "new", A.REPLAYED: False})
        _backend(tracer, op, "POST", "http://user:pw@127.0.0.1:9/transfers?token=t0k", 201)
        root.set_attributes(
            {
                A.ACTION_KIND: "tool",
                A.OPERATION: op,
                A.GEN_AI_OPERATION_NAME: "execute_tool",
                A.GEN_AI_TOOL_NAME: op,
                A.GEN_AI_TOOL_CALL_ID: request_id,
                A.ROUTE: "tool",
                A.DECISION_ID: "dec-tool-1",
                A.POLICY_REVISION: "rev-1",
                A.REASONS: ["compliance tag: payments"],
                A.ARGUMENTS_HMAC: _KEY.digest(args),
                A.DIGEST_KEY_ID: _KEY.key_id,
                A.ARGUMENTS: json_attr(redact(args, mask, "action.arguments")),
                A.REPLAYED: False,
                A.OUTCOME: A.OUTCOME_OK,
                A.RPC_GRPC_STATUS_CODE: 0,
            }
        )
        root.set_status(Status(StatusCode.OK))
        return format(root.get_span_context().trace_id, "032x")


def simulate_code_run(
    tracer: trace.Tracer,
    *,
    request_id: str = "req-code-1",
    principal: dict[str, Any] = FINANCE,
    host_calls: tuple[str, ...] = ("ledger.get_balance", "workspace.list_files"),
) -> str:
    """A code run whose program makes ``host_calls``, each authorised by the policy."""
    source = "from sdk import ledger\nledger.get_balance(account='A1')\n"
    with tracer.start_as_current_span(
        A.SPAN_EXECUTE, kind=SpanKind.SERVER, attributes=_root_attrs(principal, request_id)
    ) as root:
        _decide(tracer, "code", "dec-code-1", ["default: code channel"])
        with tracer.start_as_current_span(A.SPAN_SANDBOX_RUN) as run:
            for i, op in enumerate(host_calls):
                with tracer.start_as_current_span(A.host_call_span_name(op)) as hc:
                    hc.set_attributes({A.OPERATION: op, A.ACTION_KIND: "host_call"})
                    _decide(
                        tracer,
                        "tool",
                        f"dec-host-{i}",
                        ["read-only"],
                        **{A.ACTION_KIND: "host_call", A.PARENT_DECISION_ID: "dec-code-1"},
                    )
                    _backend(tracer, op, "GET", f"http://127.0.0.1:9/{op}", 200)
                    hc.set_attribute(A.OUTCOME, A.OUTCOME_OK)
            run.set_attributes(
                {A.HOST_CALLS: len(host_calls), A.SANDBOX_EXIT: "ok", A.OUTPUT_BYTES: 12}
            )
        root.set_attributes(
            {
                A.ACTION_KIND: "code",
                A.ROUTE: "code",
                A.DECISION_ID: "dec-code-1",
                A.POLICY_REVISION: "rev-1",
                A.CODE_HMAC: _KEY.digest(source),
                A.DIGEST_KEY_ID: _KEY.key_id,
                A.CODE_BYTES: len(source),
                A.HOST_CALLS: len(host_calls),
                A.OUTCOME: A.OUTCOME_OK,
                A.RPC_GRPC_STATUS_CODE: 0,
            }
        )
        root.set_status(Status(StatusCode.OK))
        return format(root.get_span_context().trace_id, "032x")


def simulate_denial(
    tracer: trace.Tracer,
    *,
    request_id: str = "req-deny-1",
    principal: dict[str, Any] | None = None,
) -> str:
    """An agent without the finance role asks for a transfer: denied with reasons."""
    who = principal or {"id": "agent-1", "tenant": "demo", "roles": ["agent"]}
    reasons = ["ledger.create_transfer requires role finance"]
    with tracer.start_as_current_span(
        A.SPAN_EXECUTE, kind=SpanKind.SERVER, attributes=_root_attrs(who, request_id)
    ) as root:
        _decide(tracer, "deny", "dec-deny-1", reasons)
        root.set_attributes(
            {
                A.ACTION_KIND: "tool",
                A.OPERATION: "ledger.create_transfer",
                A.ROUTE: "deny",
                A.DECISION_ID: "dec-deny-1",
                A.POLICY_REVISION: "rev-1",
                A.REASONS: reasons,
                A.OUTCOME: "policy_denied",
                A.ERROR_TYPE: "policy_denied",
                A.RPC_GRPC_STATUS_CODE: 7,
            }
        )
        root.set_status(Status(StatusCode.ERROR, "policy_denied: " + reasons[0]))
        return format(root.get_span_context().trace_id, "032x")
