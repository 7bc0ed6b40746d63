"""``serve --processes N``: N gateway processes on one port, under one supervising parent.

One Python process cannot use more than one core for the gateway's own work (the GIL), so the
supervisor starts N children, each a complete ``switchboard serve`` bound to the same address
with ``SO_REUSEPORT`` (the kernel spreads new connections across the listening children). What
each child keeps and shares:

* **idempotency**: the shared store (``idempotency.dsn``) — SQLite in WAL mode is safe across
  processes (gateway/tools/sqlite_store.py), as are PostgreSQL and Redis; exactly-once holds
  across the children as it does across replicas;
* **audit**: one hash-chained file per child, ``<stem>.<index><suffix>`` (``audit.jsonl`` →
  ``audit.0.jsonl``, ``audit.1.jsonl``, …), as replicas have one each; ``switchboard audit
  verify|show`` take them all (a directory or a glob). A restarted child continues its file;
* **sessions**: a gRPC channel is one HTTP/2 connection, so it stays on one child; a call that
  lands on another child (a new connection) meets the cross-replica session claim in the
  store (``session_elsewhere`` / ``session_lost``, docs/sandbox.md), as with replicas;
* **MCP**: served by child 0 only (its HTTP port is not shared).

The supervisor binds the address first (so ``:0`` picks one port for all), prints
``LISTENING grpc://HOST:PORT`` once every child announced it, restarts a child that exits
(with a back-off), and on SIGTERM/SIGINT forwards SIGTERM to every child, which drains its
calls (``serve``'s grace) before it exits. Children get ``PR_SET_PDEATHSIG`` so a SIGKILLed
supervisor takes them along.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from gateway.config import Settings
from gateway.values import split_listen

__all__ = ["child_audit_file", "child_settings", "supervise"]

log = structlog.get_logger("switchboard.supervisor")
INDEX_ENV = "SWITCHBOARD_PROCESS_INDEX"
STOP_GRACE_S = 30.0  # per child after SIGTERM (serve itself drains for 10 s), then SIGKILL
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


def child_audit_file(path: Path, index: int) -> Path:
    """The audit file of child ``index``: ``audit.jsonl`` → ``audit.<index>.jsonl``."""
    return path.with_name(f"{path.stem}.{index}{path.suffix}")


def child_settings(settings: Settings, index: int, listen: str) -> Settings:
    """What child ``index`` of a multi-process gateway serves with: the shared address, its
    own audit file (and checkpoint export file), MCP only on child 0."""
    audit = settings.audit
    if audit.file is not None:
        export = audit.checkpoint_export
        if export is not None and not export.is_dir():
            export = child_audit_file(export, index)
        audit = replace(audit, file=child_audit_file(audit.file, index),
                        checkpoint_export=export)
    mcp = settings.mcp if index == 0 else replace(settings.mcp, enabled=False)
    return replace(settings, listen=listen, audit=audit, mcp=mcp)


def reserve(listen: str) -> tuple[socket.socket, str]:
    """Bind (not listen) ``listen`` with SO_REUSEPORT: ``:0`` becomes one concrete port for
    every child, and the port is held while children restart. A bound socket that does not
    listen takes no connections."""
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return sock, f"{shown}:{bound}"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _Child:
    def __init__(self, index: int, argv: list[str], *, wants_mcp: bool) -> None:
        self.index = index
        self.argv = argv
        self.wants_mcp = wants_mcp and index == 0  # child 0 also announces its MCP address
        self.proc: asyncio.subprocess.Process | None = None
        self.listening: asyncio.Future[list[str]] | None = None
        self.restarts = 0
        self.reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        env = dict(os.environ, **{INDEX_ENV: str(self.index)})
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
            env=env, preexec_fn=_die_with_parent)
        self.listening = asyncio.get_running_loop().create_future()
        self.reader = asyncio.create_task(self._read(self.proc, self.listening))

    async def _read(self, proc: asyncio.subprocess.Process,
                    listening: asyncio.Future[list[str]]) -> None:
        assert proc.stdout is not None
        lines: list[str] = []
        while True:
            raw = await proc.stdout.readline()
            if not raw:
                break
            line = raw.decode(errors="replace").rstrip("\n")
            if line.startswith("LISTENING ") and not listening.done():
                lines.append(line)
                if line.startswith("LISTENING mcp") or not self.wants_mcp:
                    listening.set_result(lines)
            elif line:
                print(line, flush=True)
        if not listening.done():
            listening.set_exception(RuntimeError(
                f"gateway process {self.index} exited before it was listening"))


async def supervise(settings: Settings, processes: int, *, config: str | None) -> int:
    """Run ``processes`` children of ``switchboard serve`` on one port until SIGTERM/SIGINT."""
    sock, listen = reserve(settings.listen)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    base = [sys.executable, "-m", "gateway.cli", "serve", "--listen", listen,
            "--processes", str(processes)]
    if config:
        base += ["--config", config]
    children = [_Child(i, [*base, "--process-index", str(i)], wants_mcp=settings.mcp.enabled)
                for i in range(processes)]
    try:
        for child in children:
            await child.start()
        started: asyncio.Future[list[list[str]]] = asyncio.ensure_future(
            asyncio.gather(*(c.listening for c in children if c.listening)))
        stop_wait: asyncio.Future[Any] = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({started, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if stopping.is_set():
            started.cancel()
            return await _stop(children)
        stop_wait.cancel()
        first = started.result()[0]  # RuntimeError when a child exited before listening
        for line in first:
            print(line if not line.startswith("LISTENING grpc://")
                  else f"LISTENING grpc://{listen}", flush=True)
        log.info("supervisor.serving", listen=listen, processes=processes,
                 pids=[c.proc.pid for c in children if c.proc])
        return await _watch(children, stopping)
    except RuntimeError as exc:
        log.error("supervisor.start_failed", error=str(exc))
        await _stop(children)
        return 1
    finally:
        sock.close()


async def _watch(children: list[_Child], stopping: asyncio.Event) -> int:
    """Restart children that exit on their own until asked to stop."""
    waits: dict[asyncio.Future[Any], _Child] = {}

    def track(child: _Child) -> None:
        assert child.proc is not None
        waits[asyncio.ensure_future(child.proc.wait())] = child

    for child in children:
        track(child)
    stop_wait: asyncio.Future[Any] = asyncio.ensure_future(stopping.wait())
    while True:
        done, _ = await asyncio.wait([*waits, stop_wait], return_when=asyncio.FIRST_COMPLETED)
        if stopping.is_set():
            return await _stop(children)
        for fut in done:
            child = waits.pop(fut)
            delay = RESTART_BACKOFF_S[min(child.restarts, len(RESTART_BACKOFF_S) - 1)]
            log.error("supervisor.child_exited", index=child.index, code=fut.result(),
                      restart_in_s=delay)
            child.restarts += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
            if stopping.is_set():
                return await _stop(children)
            await child.start()
            track(child)


async def _stop(children: list[_Child]) -> int:
    """SIGTERM every child (each drains), wait, SIGKILL what outlives the grace."""
    procs = [c.proc for c in children if c.proc is not None and c.proc.returncode is None]
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)

    async def reap(proc: asyncio.subprocess.Process) -> None:
        try:
            await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    await asyncio.gather(*(reap(p) for p in procs))
    log.info("supervisor.stopped", processes=len(children))
    return 0
