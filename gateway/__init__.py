"""Switchboard: a policy-routing gRPC gateway for AI agents.

The request flow, one module per stage: ``interceptors`` (identity, request id, trace span)
→ ``servicer`` (thin protobuf translation) → ``pipeline`` → ``policy`` (Rego decides the
route) → ``tools`` (validated, exactly-once backend calls) or ``sandbox`` (Pyodide in Deno,
with SDK host calls back through the policy) → ``audit`` (OpenTelemetry spans, hash-chained log).
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
