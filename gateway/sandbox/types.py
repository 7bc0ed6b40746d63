"""The sandbox's public data types: what the pipeline hands in and what it gets back."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.models import Limits

__all__ = [
    "EventCallback",
    "HostCall",
    "RunRequest",
    "RunResult",
    "SandboxEvent",
    "SandboxSettings",
    "SdkFunction",
    "principal_key",
]


@dataclass(frozen=True)
class SandboxSettings:
    """How the pool is shaped. Every field has a safe default."""

    workers: int = 4  # Deno processes for isolated runs: each holds ONE interpreter at a time
    deno_path: str | None = None  # default: deno.find_deno_bin()
    runtime_dir: Path | None = None  # default: the repo's runtimes/ (SWITCHBOARD_RUNTIME_DIR)
    max_sessions: int = 16  # live sessions in this gateway; each holds a process of its own
    max_sessions_per_principal: int = 4  # a principal's sessions never evict another's
    session_idle_s: float = 300.0
    v8_heap_mb: int = 256  # --max-old-space-size, per isolate (JS heap, not wasm)
    wasm_max_mem_pages: int = 8192  # 64 KiB pages: hard wasm memory cap per isolate (512 MiB)
    # RLIMIT_DATA ceiling per process, MiB. Counts V8's writable reservations (~1 GiB for an
    # idle interpreter) as well as memory in use; each run gets its baseline + memory_mb.
    process_data_limit_mb: int = 6144
    max_result_bytes: int = 1 << 20  # JSON of the returned value (at most 2 MiB)
    start_timeout_s: float = 120.0  # process start: first interpreter (and the snapshot)
    queue_timeout_s: float = 30.0  # longest a run waits for an idle process before failing
    # Runs of one principal waiting for a process at once; more fail at once (ResourceExhausted).
    # Waiting principals are served in turn, so a flood from one cannot starve the others.
    max_queued_per_principal: int = 64
    kill_grace_s: float = 2.0  # past the run's deadline, the host kills an unresponsive process
    recycle_timeout_s: float = 60.0  # a fresh interpreter after a run, else the process goes
    snapshot_dir: Path | None = None  # default: $SWITCHBOARD_CACHE_DIR or ~/.cache/switchboard
    deno_dir: Path | None = None  # default: a private temp dir per pool


@dataclass(frozen=True)
class SdkFunction:
    """One backend operation as an SDK function inside the sandbox."""

    operation: str  # "ledger.get_balance"
    backend: str  # "ledger"  -> `from sdk import ledger`
    function: str  # "get_balance" -> ledger.get_balance(account="A1")
    signature: str  # "get_balance(account: str) -> dict"
    doc: str  # summary/description + parameter docs, for help()

    def to_json(self) -> dict[str, str]:
        return {
            "operation": self.operation,
            "backend": self.backend,
            "function": self.function,
            "signature": self.signature,
            "doc": self.doc,
        }


@dataclass(frozen=True)
class RunRequest:
    source: str
    inputs: dict[str, Any]  # bound as global `inputs`
    limits: Limits  # from the policy decision
    principal_key: str  # who runs it (see principal_key()): a realm never serves two keys
    session_id: str | None = None  # REPL-like session (variables survive) for this principal
    sdk: tuple[SdkFunction, ...] = ()
    sdk_revision: str = ""  # cache key for the sdk tuple (the catalog revision)
    output_schema: dict[str, Any] | None = None


def principal_key(tenant: str, principal_id: str, roles: Sequence[str] | None = None) -> str:
    """An unambiguous key for a principal: no choice of tenant and id collides with another.

    With ``roles``, the role set is part of the key: a session belongs to the principal *and
    the authority it ran with*, so a token of the same subject with other roles (fewer, after
    a revocation) never reaches the state (fetched data, variables) built under the first."""
    if roles is None:
        return json.dumps([tenant, principal_id], separators=(",", ":"))
    return json.dumps([tenant, principal_id, sorted(set(roles))], separators=(",", ":"))


# Serves one SDK call. It may also have a ``refused(operation, error)`` method: called for a
# call the pool refuses before ``host_call`` sees it (budget, unknown operation, bad JSON),
# so it can be recorded all the same.
HostCall = Callable[[str, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class SandboxEvent:
    kind: Literal["stdout", "stderr", "host_call"]
    data: dict[str, Any]  # {"line": str} or {"operation", "outcome", "duration_ms"}


EventCallback = Callable[[SandboxEvent], Awaitable[None]]


@dataclass
class RunResult:
    ok: bool  # False when user code raised (error holds it)
    result: Any  # last expression value or `result` global, JSON-safe
    stdout: str  # capped at limits.max_output_bytes (stdout and stderr together)
    stderr: str
    error: dict[str, Any] | None  # {"type", "message", "traceback"} for user-code errors
    host_calls: int
    duration_ms: float
    output_truncated: bool = False
