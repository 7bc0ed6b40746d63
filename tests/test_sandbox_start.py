"""A Deno supervisor that connects before ``create_subprocess_exec`` has returned (it happens on
a busy machine) is accepted once its pid can be checked, not turned away — which used to
leave the process unconnected until the start timed out."""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import deno
import pytest
from waiting import scaled, wait_until

from gateway.sandbox import SandboxSettings, default_runtime_dir
from gateway.sandbox import process as process_mod
from gateway.sandbox.process import deno_command
from gateway.sandbox.snapshot import ensure_snapshot

# Deno + Pyodide starting on a busy 2-core machine can take minutes: generous deadlines, and a
# hang guard above both of them.
EARLY_S = 180.0  # how long the parent is held back, waiting for the child to connect
START_S = 180.0  # the start itself, once spawn has returned


@pytest.mark.timeout(scaled(EARLY_S + START_S) + 60)


async def test_child_connecting_before_spawn_returns_is_accepted(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = asyncio.create_subprocess_exec
    connected_early: list[bool] = []

    async def slow_spawn(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        proc = await real(*args, **kwargs)
        # Hold the parent back until the child has connected (a condition, not a sleep: under
        # load the child can take far longer than usual to get there).
        try:
            await wait_until(lambda: getattr(dp, "_early", None) is not None, EARLY_S,
                             interval=0.1, what="the child connecting before spawn returned")
            connected_early.append(True)
        except AssertionError:
            pass  # reported below, after start() had its chance
        return proc

    monkeypatch.setattr(process_mod.asyncio, "create_subprocess_exec", slow_spawn)
    tmp = Path(tempfile.mkdtemp(prefix="sb-start-"))
    os.chmod(tmp, 0o700)
    sock = tmp / f"p0-{uuid.uuid4().hex[:8]}.sock"
    settings = SandboxSettings()
    snap = await ensure_snapshot(str(deno.find_deno_bin()), default_runtime_dir(), settings, tmp)
    argv = deno_command(str(deno.find_deno_bin()), default_runtime_dir(), sock, snap, settings)
    dp = process_mod.DenoProcess(0, argv, sock, process_mod.sealed_deno_dir(tmp),
                                 settings.process_data_limit_mb)
    try:
        await dp.start(scaled(max(settings.start_timeout_s, START_S)))
        assert connected_early == [True]  # the race really happened in this test
        assert dp.ready and not dp.dead
    finally:
        await dp.close()
