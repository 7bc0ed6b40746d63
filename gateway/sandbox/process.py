"""One sandbox Deno process: its command line (the permission boundary), its socket, its frames.

A process holds one interpreter at a time and serves one run at a time, so it is the unit of
isolation and of accounting: the host caps what it may allocate with RLIMIT_DATA (a kernel
limit sandboxed code cannot reach or raise), and whatever a run does to its process — crash it,
exhaust its memory, flood or break the protocol — ends that run only.

The host listens on a Unix socket in a private 0700 directory and accepts exactly one
connection, from the child's own pid (SO_PEERCRED). Frames are declared in
:mod:`gateway.sandbox.protocol`. The process's stdout and stderr are drained and never parsed
as protocol: sandboxed code can write to them. stdin is /dev/null.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import resource
import socket
import struct
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.errors import SandboxCrashed, SandboxError, SandboxMemory
from gateway.sandbox.protocol import (
    MAX_CALL_ARGS,
    MAX_FRAME,
    MAX_INBOUND_FRAME,
    MAX_RUN_CALL_ARGS,
    decode_frame,
)
from gateway.sandbox.types import SandboxSettings

__all__ = ["DenoProcess", "deno_command", "sealed_deno_dir", "snapshot_command"]

log = logging.getLogger(__name__)
MIB = 1024 * 1024
# How a process that ran out of memory says so on stderr: V8 ("Fatal JavaScript out of memory",
# "heap limit", "allocation failed") and Rust's allocator, which aborts the process with
# "memory allocation of N bytes failed" (a Blob, a structured clone: Deno's own buffers).
_OOM_MARKERS = re.compile(r"out of memory|heap limit|allocation failed"
                          r"|memory allocation of \d+ bytes failed")
_BASE_FLAGS = ("run", "--no-prompt", "--no-config", "--no-lock", "--no-remote", "--no-npm",
               "--unstable-worker-options")
# A serving process keeps no V8 code cache (it would be written to DENO_DIR, which is sealed).
_SERVE_FLAGS = (*_BASE_FLAGS, "--no-code-cache")


# Measured (bench/code_speed.py --floor, docs/benchmarks.md "Code channel speed"): restoring an
# interpreter allocates tens of MiB of short-lived JS objects in the new isolate. With V8's default
# 1-16 MiB semi-spaces that is a dozen scavenges per restore, each run in parallel on V8's worker
# threads; GC on the isolate's own thread cuts the CPU of a restore by ~10 % (all threads
# counted) on 2 cores, where parallel GC only adds contention. A 64 MiB young generation
# (--min-semi-space-size=64) saved a little more but broke the memory limit's promise: code
# that catches MemoryError at the limit then had V8 itself abort the process
# (tests/security/test_sandbox_containment.py::test_a_caught_memory_error_stays_within_the_limit).
_GC_FLAGS = ("--single-threaded-gc",)


def _v8_flags(settings: SandboxSettings) -> str:
    return ("--v8-flags=" + ",".join((
        f"--max-old-space-size={settings.v8_heap_mb}",
        f"--wasm-max-mem-pages={settings.wasm_max_mem_pages}",
        *_GC_FLAGS)))


def deno_command(
    deno: str, runtime_dir: Path, sock: Path, snapshot: Path, settings: SandboxSettings
) -> list[str]:
    """The narrowest command line that works: read Pyodide's assets, the worker and the
    snapshot, talk on one Unix socket, nothing else (no env, write, run, ffi, sys, imports)."""
    assets = runtime_dir / "node_modules" / "pyodide"
    reads = [assets, runtime_dir / "worker.ts", snapshot, sock]
    cfg = {"socket": str(sock), "snapshot": str(snapshot), "maxHostFrame": MAX_FRAME,
           "maxOutFrame": MAX_INBOUND_FRAME, "maxCallArgs": MAX_CALL_ARGS,
           "maxRunArgs": MAX_RUN_CALL_ARGS}
    return [
        deno, *_SERVE_FLAGS,
        "--allow-read=" + ",".join(str(p) for p in reads),
        f"--allow-write={sock}",
        f"--allow-net=unix:{sock}",
        _v8_flags(settings),
        str(runtime_dir / "supervisor.ts"),
        json.dumps(cfg),
    ]


def snapshot_command(
    deno: str, runtime_dir: Path, out: Path, settings: SandboxSettings
) -> list[str]:
    """Cold-load Pyodide with our runner and write its memory snapshot to ``out`` (no user code
    ever runs in this process)."""
    assets = runtime_dir / "node_modules" / "pyodide"
    reads = [assets, runtime_dir / "worker.ts", runtime_dir / "sandbox_runner.py"]
    return [
        deno, *_BASE_FLAGS,
        "--allow-read=" + ",".join(str(p) for p in reads),
        f"--allow-write={out}",
        _v8_flags(settings),
        str(runtime_dir / "supervisor.ts"),
        json.dumps({"mode": "snapshot", "out": str(out)}),
    ]


def deno_env(deno_dir: Path) -> dict[str, str]:
    return {"DENO_DIR": str(deno_dir), "NO_COLOR": "1", "DENO_NO_UPDATE_CHECK": "1"}


def sealed_deno_dir(private: Path) -> Path:
    """A DENO_DIR that cannot exist: a path under a regular file in ``private`` (the pool's
    0700 directory). Deno writes there without asking for a permission — the Web Cache API's
    ``location_data``, the code and module-analysis caches a ``data:`` import fills — so a
    serving process gets one no run can store a byte in, even as root (ENOTDIR, which no
    permission bit lifts); Deno then keeps its caches in memory, for that process only."""
    stop = private / "no-deno-dir"
    if not stop.is_file():
        stop.write_bytes(b"")  # raises if something else is in the way
    return stop / "deno"


def _is_sealed(deno_dir: Path) -> bool:
    return deno_dir.parent.is_file()


class DenoProcess:
    """A supervisor process and its channel. A run registers a queue to receive its frames."""

    def __init__(self, index: int, argv: Sequence[str], sock: Path, deno_dir: Path,
                 data_limit_mb: int) -> None:
        self.index = index
        self._argv = list(argv)
        self._sock = sock
        self._deno_dir = deno_dir
        self._hard_limit = data_limit_mb * MIB
        self._data_limit = -1  # the RLIMIT_DATA soft limit last set (-1: not yet)
        self._proc: asyncio.subprocess.Process | None = None
        self._server: asyncio.Server | None = None
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._connected: asyncio.Future[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._stderr_tail: deque[bytes] = deque(maxlen=32)
        self._ready: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._early: tuple[asyncio.StreamReader, asyncio.StreamWriter, int] | None = None
        self.ready = False  # connected, and an idle interpreter is waiting
        self.sdk_rev: str | None = None  # the SDK revision whose text the supervisor holds
        self.dead = False
        self.death: SandboxError | None = None
        self.start_ms = 0
        self.active = 0
        self.exited = asyncio.Event()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self, timeout_s: float) -> None:
        """Spawn, accept the child's connection, wait for its first interpreter."""
        if not _is_sealed(self._deno_dir):  # docs/sandbox.md: nothing a run does persists
            raise SandboxError(f"refusing to serve with a DENO_DIR that can hold data: "
                               f"{self._deno_dir} (use sealed_deno_dir)")
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        self.sdk_rev = None
        self._connected = loop.create_future()
        with contextlib.suppress(FileNotFoundError):
            self._sock.unlink()
        self._server = await asyncio.start_unix_server(
            self._on_connect, path=str(self._sock), limit=MAX_INBOUND_FRAME + 4
        )
        os.chmod(self._sock, 0o600)
        self._proc = await asyncio.create_subprocess_exec(
            *self._argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=deno_env(self._deno_dir),
            start_new_session=True,
        )
        # Before any user code can run: the hard ceiling on what this process may allocate.
        self.set_data_limit(None)
        if self._early is not None:
            early, self._early = self._early, None
            self._accept(*early)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._tasks.append(asyncio.create_task(self._drain(self._proc.stdout, False)))
        self._tasks.append(asyncio.create_task(self._drain(self._proc.stderr, True)))
        self._tasks.append(asyncio.create_task(self._watch_exit()))
        try:
            await asyncio.wait_for(asyncio.shield(self._connected), timeout_s)
            hello = await asyncio.wait_for(self._read_frame(), timeout_s)
            if hello.get("t") != "hello":
                raise SandboxCrashed("sandbox process spoke out of turn")
            self._tasks.append(asyncio.create_task(self._read_loop()))
            await self.wait_ready(max(1.0, timeout_s - (time.monotonic() - t0)))
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.kill()
            raise SandboxCrashed(
                f"sandbox process did not start: {type(exc).__name__}",
                details={"stderr": self.stderr_tail()},
            ) from None
        except SandboxError as exc:  # it died while starting (or its interpreter failed)
            await self.kill()
            raise SandboxCrashed(f"sandbox process did not start: {exc}"[:500],
                                 details={"stderr": self.stderr_tail()}) from None
        except BaseException:
            await self.kill()
            raise
        self.start_ms = int((time.monotonic() - t0) * 1000)

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait for the process to report an idle interpreter (after start or recycle)."""
        msg = await asyncio.wait_for(self._ready.get(), timeout_s)
        if msg["t"] != "ready":
            raise SandboxCrashed(f"sandbox interpreter failed to start: {msg.get('reason')!s:.300}")
        self.ready = True

    async def recycle(self, timeout_s: float) -> None:
        """Restore the memory allowance, then have the process start a fresh interpreter."""
        self.ready = False
        self.set_data_limit(None)
        self.send({"t": "recycle"})
        await self.wait_ready(timeout_s)

    def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        peer_pid = -1
        with contextlib.suppress(OSError):
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            peer_pid = struct.unpack("3i", creds)[0]
        connected = self._connected
        if connected is None or connected.done():
            writer.close()
            return
        if self._proc is None:
            # The child connected before create_subprocess_exec returned (it can, on a busy
            # machine): hold the connection until its pid can be checked.
            if self._early is not None:
                writer.close()
                return
            self._early = (reader, writer, peer_pid)
            return
        self._accept(reader, writer, peer_pid)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                peer_pid: int) -> None:
        connected = self._connected
        if connected is None or connected.done() or self._proc is None \
                or peer_pid != self._proc.pid:
            writer.close()
            return
        self._reader, self._writer = reader, writer
        connected.set_result(None)
        # One connection per process, ever: stop listening and remove the path.
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(OSError):
            self._sock.unlink()

    async def _read_frame(self) -> dict[str, Any]:
        assert self._reader is not None
        head = await self._reader.readexactly(4)
        (size,) = struct.unpack(">I", head)
        if size > MAX_INBOUND_FRAME:
            raise SandboxCrashed("oversized frame from the sandbox process")
        return decode_frame(await self._reader.readexactly(size))

    async def _read_loop(self) -> None:
        try:
            while True:
                msg = await self._read_frame()
                kind = msg["t"]
                if kind == "log":
                    log.info("sandbox process %d: %.500s", self.index, msg.get("msg"))
                elif kind in ("ready", "init_failed"):
                    self._ready.put_nowait(msg)
                elif kind != "hello":
                    queue = self._queues.get(str(msg.get("id")))
                    if queue is not None:
                        queue.put_nowait(msg)
        except SandboxCrashed as exc:
            await self._die(exc)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            await self._die(None)

    async def _drain(self, stream: asyncio.StreamReader, keep: bool) -> None:
        # Never parsed: the sandbox can write here. Keep a small tail of stderr for diagnosis.
        with contextlib.suppress(Exception):
            while True:
                chunk = await stream.read(65536)
                if not chunk:
                    return
                if keep:
                    self._stderr_tail.append(chunk[-2048:])

    async def _watch_exit(self) -> None:
        assert self._proc is not None
        await self._proc.wait()
        await asyncio.sleep(0.05)  # let the drains catch the last stderr lines
        self._gone()

    def forget_stderr(self) -> None:
        """A run starts: what earlier runs wrote to stderr must not decide how this one's end
        is reported (sandboxed code writes there: console.error("out of memory") in one
        principal's run made a later crash of another's, on the same process, SandboxMemory)."""
        self._stderr_tail.clear()

    def stderr_tail(self) -> str:
        return b"".join(self._stderr_tail)[-4096:].decode("utf-8", "replace")

    async def _die(self, cause: SandboxError | None) -> None:
        if self.dead:
            return
        self._settle(cause)
        await self.kill()

    def _settle(self, cause: SandboxError | None) -> None:
        """Mark the process dead and wake everyone waiting on it. Synchronous, so that no
        cancellation can leave it half done (the first caller's cause wins)."""
        if self.dead:
            return
        self.dead = True
        self.ready = False
        tail = self.stderr_tail()
        if cause is None:
            if _OOM_MARKERS.search(tail.lower()):
                cause = SandboxMemory("the sandbox process ran out of memory")
            else:
                # The tail is for the operator's log only, never for the caller: sandboxed code
                # writes there (console.error), and it spans every run this process served —
                # another principal's earlier run included.
                log.warning("sandbox process %d exited; stderr tail: %.4000r", self.index, tail)
                cause = SandboxCrashed("the sandbox process exited")
        self.death = cause
        if self._connected is not None and not self._connected.done():
            self._connected.set_exception(cause)  # a start waiting for the child's connection
            self._connected.exception()  # retrieved: a start that gave up must not log it
        for queue in self._queues.values():
            queue.put_nowait({"t": "_dead"})
        self._ready.put_nowait({"t": "init_failed", "reason": str(cause)})

    def _gone(self) -> None:
        """Release the channel and its tasks and set :attr:`exited`, which the pool respawns
        on. Called by whichever path sees the end first (the exit watcher, :meth:`kill`); it
        is synchronous and idempotent, so a path cancelled half-way (say, a kill from a
        recycle cancelling a read loop that was dying) can never leave ``exited`` unset."""
        self._settle(None)
        if self._writer is not None:
            self._writer.close()
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(OSError):
            self._sock.unlink()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current and not task.done():
                task.cancel()
        self.exited.set()

    def register(self, run_id: str) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._queues[run_id] = queue
        self.active += 1
        if self.dead:
            queue.put_nowait({"t": "_dead"})
        return queue

    def unregister(self, run_id: str) -> None:
        if self._queues.pop(run_id, None) is not None:
            self.active -= 1

    async def query_stats(self, timeout_s: float = 5.0) -> dict[str, Any]:
        """The supervisor's own view: whether it holds an interpreter, ready, busy."""
        query_id = f"stats-{id(self)}-{time.monotonic_ns()}"
        queue = self.register(query_id)
        try:
            self.send({"t": "stats", "id": query_id})
            msg = await asyncio.wait_for(queue.get(), timeout_s)
        finally:
            self.unregister(query_id)
        if msg.get("t") != "stats":
            raise SandboxCrashed("the sandbox process did not report its state")
        return {k: msg[k] for k in ("worker", "ready", "busy")}

    def send(self, msg: dict[str, Any]) -> None:
        """Queue a frame; never blocks (the supervisor reads promptly or gets killed)."""
        if self.dead or self._writer is None:
            return
        body = json.dumps(msg, separators=(",", ":")).encode()
        if len(body) > MAX_FRAME:
            raise SandboxError("frame too large for the sandbox channel")
        try:
            self._writer.write(struct.pack(">I", len(body)) + body)
        except (ConnectionError, RuntimeError):
            return

    # ---- memory: RLIMIT_DATA, set from outside ---------------------------------------------

    def vm_data(self) -> int:
        """Bytes of private writable memory the process has mapped (what RLIMIT_DATA counts)."""
        return self._status_kb("VmData:") * 1024

    def rss_bytes(self) -> int:
        """Resident memory of the whole process, from /proc."""
        return self._status_kb("VmRSS:") * 1024

    def _status_kb(self, key: str) -> int:
        pid = self.pid
        if pid is None or self.dead:
            return 0
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith(key):
                        return int(line.split()[1])
        except (OSError, ValueError):
            return 0
        return 0

    def set_data_limit(self, soft: int | None) -> None:
        """Cap the process's private writable memory at ``soft`` bytes (None: the process
        ceiling). The kernel refuses allocations past it: a wasm grow fails (MemoryError), an
        ArrayBuffer fails (RangeError), a V8 heap that cannot grow aborts this process only."""
        pid = self.pid
        if pid is None or self.dead:
            return
        value = self._hard_limit if soft is None else min(self._hard_limit, soft)
        if value == self._data_limit:
            return  # already in force (a session's runs all get the same limit)
        try:
            resource.prlimit(pid, resource.RLIMIT_DATA, (value, self._hard_limit))
        except ProcessLookupError:
            return
        except OSError as exc:  # never run without the limit: the process is unusable
            raise SandboxCrashed(f"cannot limit the sandbox process's memory: {exc}") from None
        # Only this host sets it: the process itself cannot (no ffi, sys or run permission).
        self._data_limit = value

    async def kill(self) -> None:
        """SIGKILL the process and release everything; idempotent. If this is cancelled while
        it waits for the process, the exit watcher (which nothing but :meth:`_gone` cancels)
        still finishes the job when the process is reaped."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._proc.wait(), 5)
        self._gone()

    async def close(self) -> None:
        self._settle(SandboxCrashed("the sandbox process was closed"))
        await self.kill()
