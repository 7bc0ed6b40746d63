"""The code channel: Python run in Pyodide inside locked-down Deno processes, with an SDK bridge.

See docs/sandbox.md for the security model. Public API: :class:`SandboxPool` and the data
types it takes and returns.
"""

from gateway.sandbox.pool import SandboxPool, default_runtime_dir, start_sandbox, stop_sandbox
from gateway.sandbox.types import (
    EventCallback,
    HostCall,
    RunRequest,
    RunResult,
    SandboxEvent,
    SandboxSettings,
    SdkFunction,
    principal_key,
)

__all__ = [
    "EventCallback",
    "HostCall",
    "RunRequest",
    "RunResult",
    "SandboxEvent",
    "SandboxPool",
    "SandboxSettings",
    "SdkFunction",
    "default_runtime_dir",
    "principal_key",
    "start_sandbox",
    "stop_sandbox",
]
