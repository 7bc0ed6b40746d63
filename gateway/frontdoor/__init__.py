"""The front door's shared layer: what gRPC and MCP do the same way.

- :mod:`gateway.frontdoor.envelope` — the one envelope validator (request id, name, query,
  code source and argument bounds; built on :mod:`gateway.values`);
- :mod:`gateway.frontdoor.scope` — the one call scope (root span, identity, log context,
  outcome, audit record);
- :mod:`gateway.frontdoor.render` — the one outcome renderer (the model-facing result dict).

Each door keeps only its wire format and its status mapping: gRPC in
:mod:`gateway.interceptors`, :mod:`gateway.servicer` and :mod:`gateway.grpc_status`; MCP in
:mod:`gateway.mcp_server` and :mod:`gateway.mcp_errors`. See docs/front-door.md.
"""

from gateway.frontdoor.envelope import GRPC, MCP, Fields, recorded_request_id
from gateway.frontdoor.render import error_payload, outcome_payload
from gateway.frontdoor.scope import (
    CallScope,
    PrincipalCalls,
    call_scope,
    current_principal,
    returned,
    trace_id_of,
)

__all__ = [
    "GRPC",
    "MCP",
    "CallScope",
    "Fields",
    "PrincipalCalls",
    "call_scope",
    "current_principal",
    "error_payload",
    "outcome_payload",
    "recorded_request_id",
    "returned",
    "trace_id_of",
]
