"""Switchboard's Python client: sync and asyncio, over the gateway's gRPC API.

Installable on its own (``pip install switchboard-client``): it needs only grpcio and protobuf,
never the gateway server, its sandbox (Deno) or its HTTP stack::

    from switchboard_client import SwitchboardClient, SwitchboardError

    with SwitchboardClient("127.0.0.1:50051", token="dev-agent") as sb:
        tools = sb.manifest("openai").formatted        # hand these to the model
        reply = sb.dispatch(call.name, call.arguments)  # JSON for the model

The generated protobuf/gRPC stubs of the whole API (``Gateway`` and ``ApprovalsService``) ship
in ``switchboard_client._proto`` for programs that talk to the RPCs directly.
"""

from __future__ import annotations

from switchboard_client.client import AsyncSwitchboardClient, SwitchboardClient
from switchboard_client.client_types import (
    DEFAULT_TIMEOUT_S,
    DESCRIBE_OPERATION,
    ERROR_METADATA_KEY,
    EXECUTE_CODE,
    SEARCH_OPERATIONS,
    Decision,
    ExecutionResult,
    Limits,
    Manifest,
    OperationInfo,
    OperationMatch,
    StreamEvent,
    SwitchboardError,
    ToolDef,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DESCRIBE_OPERATION",
    "ERROR_METADATA_KEY",
    "EXECUTE_CODE",
    "SEARCH_OPERATIONS",
    "AsyncSwitchboardClient",
    "Decision",
    "ExecutionResult",
    "Limits",
    "Manifest",
    "OperationInfo",
    "OperationMatch",
    "StreamEvent",
    "SwitchboardClient",
    "SwitchboardError",
    "ToolDef",
]
