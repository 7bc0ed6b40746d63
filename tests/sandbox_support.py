"""Shared helpers for the sandbox tests: a recording host-call handler and the demo SDK."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest_asyncio
from waiting import scaled

from gateway.errors import BackendError, PolicyDenied
from gateway.models import Limits
from gateway.sandbox import RunRequest, SandboxEvent, SandboxPool, SandboxSettings, SdkFunction

SENTINEL_ENV = "SWITCHBOARD_SANDBOX_TEST_SECRET"


# One pool per test process, shared by test_sandbox.py and test_sandbox_escapes.py (they load
# this module with `pytest_plugins`): starting Deno + Pyodide is the expensive part.
@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def sandbox_pool() -> AsyncIterator[SandboxPool]:
    os.environ[SENTINEL_ENV] = "hunter2"  # must never be visible inside the sandbox
    p = SandboxPool(SandboxSettings(workers=3))
    await p.start()
    await p.wait_full(scaled(300))  # the tests count on every process (start() waits for one)
    yield p
    await p.close()
    os.environ.pop(SENTINEL_ENV, None)

SDK = (
    SdkFunction(
        operation="ledger.get_balance",
        backend="ledger",
        function="get_balance",
        signature="get_balance(account: str) -> dict",
        doc="Get the balance of an account.\n\naccount: the account id, e.g. 'A1'.",
    ),
    SdkFunction(
        operation="ledger.create_transfer",
        backend="ledger",
        function="create_transfer",
        signature="create_transfer(source: str, target: str, amount: int, memo: str = '') -> dict",
        doc="Move money between accounts (compliance: dedicated tool only).",
    ),
    SdkFunction(
        operation="workspace.send_email",
        backend="workspace",
        function="send_email",
        signature="send_email(to: str, subject: str, body: str = '') -> dict",
        doc="Send an email from the agent's workspace mailbox.",
    ),
    SdkFunction(
        operation="workspace.fail",
        backend="workspace",
        function="fail",
        signature="fail() -> dict",
        doc="Always fails in the backend.",
    ),
)
SDK_REV = "test-rev-1"


@dataclass
class Host:
    """A real async host-call handler that records every call it serves."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    delay_s: float = 0.0

    async def __call__(self, operation: str, args: dict[str, Any]) -> Any:
        self.calls.append((operation, args))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if operation == "ledger.get_balance":
            return {"account": args["account"], "balance": 100 if args["account"] == "A1" else 7}
        if operation == "ledger.create_transfer":
            raise PolicyDenied(
                "ledger.create_transfer is compliance-tagged",
                reasons=["compliance operations go through the dedicated tool channel"],
            )
        if operation == "workspace.send_email":
            return {"sent": True, "to": args["to"]}
        if operation == "workspace.fail":
            raise BackendError("backend answered 500", details={"status": 500})
        if operation == "sdk.search":
            return [
                {"name": f.operation, "summary": f.doc.splitlines()[0], "signature": f.signature}
                for f in SDK
                if any(w in f.doc.lower() for w in str(args["query"]).lower().split())
            ][: int(args.get("limit", 10))]
        if operation == "sdk.describe":
            return {"name": args["name"], "found": any(f.operation == args["name"] for f in SDK)}
        raise AssertionError(f"unexpected operation {operation}")


@dataclass
class Events:
    items: list[SandboxEvent] = field(default_factory=list)

    async def __call__(self, event: SandboxEvent) -> None:
        self.items.append(event)

    def kinds(self) -> list[str]:
        return [e.kind for e in self.items]


def req(
    source: str,
    *,
    principal: str = "demo/agent-1",
    session: str | None = None,
    inputs: dict[str, Any] | None = None,
    timeout_ms: int = 60_000,  # generous: a loaded machine runs Pyodide several times slower
    memory_mb: int = 256,
    max_host_calls: int = 50,
    max_output_bytes: int = 65536,
    output_schema: dict[str, Any] | None = None,
    sdk: tuple[SdkFunction, ...] = SDK,
) -> RunRequest:
    return RunRequest(
        source=source,
        inputs=inputs or {},
        limits=Limits(
            timeout_ms=timeout_ms,
            memory_mb=memory_mb,
            max_host_calls=max_host_calls,
            max_output_bytes=max_output_bytes,
        ),
        principal_key=principal,
        session_id=session,
        sdk=sdk,
        sdk_revision=SDK_REV,
        output_schema=output_schema,
    )


# Reaching the Deno namespace from Python the way a hostile program would
# (docs/sandbox.md, "Security model").
JS_PRELUDE = """
import pyodide_js
from pyodide.ffi import run_sync
JS = pyodide_js._module.constructor.constructor
Deno = JS('return globalThis.Deno')()

def attempt(body, wait=False):
    try:
        value = JS(body)()
        if wait:
            value = run_sync(value)
        return 'allowed: ' + str(value)[:200]
    except BaseException as exc:
        return 'denied: ' + str(exc)[:300]
"""
