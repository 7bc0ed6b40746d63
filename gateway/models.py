"""Plain data shared by the pipeline stages: who is calling, what the policy decided, what an
operation is. Kept free of I/O so every stage can import it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["Action", "ApprovalRequirement", "BackendSettings", "CodeAction", "Decision", "Limits",
           "Operation", "Outcome", "Parameter", "Principal", "Route", "ToolAction"]

Route = Literal["tool", "code", "deny"]


@dataclass(frozen=True)
class Principal:
    id: str
    tenant: str
    roles: tuple[str, ...] = ()

    def to_input(self) -> dict[str, Any]:
        return {"id": self.id, "tenant": self.tenant, "roles": list(self.roles)}


@dataclass(frozen=True)
class Limits:
    timeout_ms: int = 5000
    memory_mb: int = 256
    max_host_calls: int = 50
    max_output_bytes: int = 65536


@dataclass(frozen=True)
class ApprovalRequirement:
    """The policy's ``require_approval`` obligation: the action may run only once a principal
    holding one of ``roles`` (not the requester) approved this exact action (docs/approvals.md)."""

    reasons: tuple[str, ...]
    roles: tuple[str, ...]
    expires_s: int = 3600


@dataclass(frozen=True)
class Decision:
    route: Route
    reasons: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    obligations: tuple[str, ...] = ()
    mask: tuple[str, ...] = ()
    decision_id: str = ""
    policy_revision: str = ""
    # Set when the decision is a fail-closed deny caused by a policy problem, not by a rule.
    error_code: str = ""
    # The ``require_approval`` obligation, when the policy attached one (only on allows).
    approval: ApprovalRequirement | None = None
    # The policy's ``validation``: "strict" rejects every argument field the schema does not
    # declare, at any depth (gateway/tools/validation.py); "standard" applies the schema as is.
    validation: Literal["standard", "strict"] = "standard"

    @property
    def allowed(self) -> bool:
        return self.route != "deny"

    @property
    def strict(self) -> bool:
        """Arguments are validated strictly: the policy said so for this action."""
        return self.validation == "strict"


@dataclass(frozen=True)
class Parameter:
    """One argument of an operation and where it goes in the HTTP request."""

    name: str
    location: Literal["path", "query", "header", "body"]
    required: bool = False
    wire_name: str = ""  # the name on the wire when it differs (headers, body properties)


@dataclass(frozen=True)
class Operation:
    """One callable backend operation, as the catalog knows it."""

    name: str  # "<backend>.<snake_case operationId>"
    backend: str
    operation_id: str
    summary: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()
    method: str = "GET"
    path: str = "/"
    input_schema: dict[str, Any] = field(default_factory=dict)
    output_schema: dict[str, Any] | None = None
    parameters: tuple[Parameter, ...] = ()
    # The JSON body is the single argument ``body`` instead of flattened properties.
    body_as_argument: bool = False

    @property
    def short_name(self) -> str:
        return self.name.split(".", 1)[1]

    def to_input(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backend": self.backend,
            "tags": list(self.tags),
            "method": self.method,
            "path": self.path,
        }


@dataclass(frozen=True)
class BackendSettings:
    """One backend from the config: where its operations are described and how to reach it.

    Exactly one of ``openapi`` (a file path or http(s) URL of an OpenAPI 3.0/3.1 document) or
    ``app`` (a Python entry point ``module:attr`` naming an ASGI app, whose ``openapi()`` gives
    the spec and which is called in-process unless ``base_url`` is set) is given.
    """

    name: str
    openapi: str | None = None
    app: str | None = None
    base_url: str | None = None
    timeout_ms: int = 5000
    retries: int = 2
    # Extra tags per operation short name, e.g. {"create_transfer": ["compliance"]}.
    tags: dict[str, list[str]] = field(default_factory=dict)
    # Static headers sent to the backend (credentials: never logged, never traced).
    headers: dict[str, str] = field(default_factory=dict)
    # The backend deduplicates requests by their Idempotency-Key header (as Stripe does), so
    # a write whose outcome is unknown may be re-sent with the same key.
    idempotency_keys: bool = False


# --- the front door's action and outcome types ------------------------------------------
# What either door (gRPC, MCP) parses its request into, and what the pipeline answers; see
# docs/front-door.md.

@dataclass(frozen=True)
class ToolAction:
    request_id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    # Set when the door made the request id up (MCP without one): where the caller's own
    # would go. A decision with ``idempotency.required`` then refuses the call (a made-up key
    # deduplicates nothing across the caller's retries).
    generated_id_field: str = ""


@dataclass(frozen=True)
class CodeAction:
    request_id: str
    source: str
    inputs: dict[str, Any] = field(default_factory=dict)
    timeout_ms: int = 0
    session_id: str | None = None
    output_schema: dict[str, Any] | None = None
    labels: dict[str, str] = field(default_factory=dict)


Action = ToolAction | CodeAction


@dataclass
class Outcome:
    decision: Decision
    result: Any = None
    stdout: str = ""
    stderr: str = ""
    error: dict[str, Any] | None = None
    trace_id: str = ""
    replayed: bool = False
    host_calls: int = 0
    output_truncated: bool = False
