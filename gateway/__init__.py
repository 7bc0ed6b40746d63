"""Switchboard: a policy-routing gRPC gateway for AI agents.

The request flow, one module per stage: a door — gRPC (``interceptors`` + ``servicer``) or
MCP (``mcp_server``) — parses its wire format and enters the shared ``frontdoor`` (envelope
validator, call scope: span, identity, log context, outcome, audit; outcome renderer) →
``pipeline`` → ``policy`` (Rego decides the
route) → ``tools`` (validated, exactly-once backend calls) or ``sandbox`` (Pyodide in Deno,
with SDK host calls back through the policy) → ``audit`` (OpenTelemetry spans, hash-chained log).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
