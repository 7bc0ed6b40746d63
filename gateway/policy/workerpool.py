"""The gateway's side of its policy workers: a few processes, one decision each at a time,
a deadline per decision, and a replacement for every worker that overran it or died.

A worker that spends ``timeout_ms`` of CPU on one decision is killed (SIGKILL: the evaluation
holds its GIL and never looks up), so its caller gets a fail-closed deny and the next decision
a fresh worker; a worker that dies (crash, OOM) fails its decision the same way. The budget is
CPU time, not wall time, so that a worker that merely waited for a core on a busy machine is
not killed for it (measured at load 14 on 2 cores: 1 in 4000 ordinary decisions took over
500 ms of wall time); :data:`WALL_FACTOR` times ``timeout_ms`` of wall time ends it anyway.
Waiting for a free worker is bounded separately, by the same factor (first come, first served):
a burst of cache misses queues instead of failing, and a worker is never killed for time its
caller spent queued. The deadline is armed with the request, not by the caller, so a
caller that goes away (a cancelled RPC) still gets its worker killed if the rule never ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import structlog

from gateway.errors import PolicyError

from .base import ENTRYPOINT, PROBE_INPUT
from .bundle import UNDEFINED, Bundle, clean_error
from .worker_protocol import (
    MAX_WORKER_FRAME,
    WORKER_FRAMES,
    FrameError,
    FrameReader,
    encode,
    encode_eval,
)

__all__ = ["LOAD_FACTOR", "WALL_FACTOR", "WORKER_SCRIPT", "Checked", "LoadAborted",
           "PolicyWorkers", "input_json", "worker_command"]

_log = structlog.get_logger("switchboard.policy")

WORKER_SCRIPT = Path(__file__).with_name("worker.py")
START_TIMEOUT_S = 60.0  # for a worker's ready frame: its imports, on a loaded machine
CLOSE_GRACE_S = 5.0  # for workers to exit on stdin's EOF before they are killed
RESPAWN_BACKOFF_S = (0.0, 0.2, 1.0, 2.0, 5.0)
# A decision waits at most this many times timeout_ms for a free worker, and its evaluation
# lasts at most this many times timeout_ms of wall time however little CPU it got (then: deny).
WALL_FACTOR = 10
# Checking a revision (compile + probe, in a worker) may spend this many times timeout_ms of
# CPU (compiling is more than one decision), and WALL_FACTOR times that of wall time.
LOAD_FACTOR = 10


# regorus errors carry a Rust backtrace when RUST_BACKTRACE is set: its first capture loads
# debug symbols (~0.2 s, more on a busy machine, once per worker), and clean_error drops it.
_NO_ERROR_BACKTRACE = {"RUST_LIB_BACKTRACE": "0"}


def worker_command() -> list[str]:
    """How a worker is started: this interpreter, the worker script, this process's pid."""
    return [sys.executable, str(WORKER_SCRIPT), str(os.getpid())]


def input_json(input: Any) -> bytes:
    """The input as JSON, or PolicyError: regorus takes the process down (SIGSEGV) on a string
    with an unpaired surrogate instead of raising, so an engine only ever sees what orjson can
    write (no lone surrogates, integers within 64 bits, depth <= 255, string keys)."""
    try:
        return orjson.dumps(input)
    except TypeError as exc:
        raise PolicyError(f"the policy input is not valid JSON: {clean_error(exc)}") from None


def _cpu_time_s(pid: int) -> float | None:
    """A process's CPU time in seconds, from /proc (None where there is none: the deadline
    is then wall time)."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


class _Lost(Exception):
    """The worker is gone (``str()`` says how) before it answered."""


class LoadAborted(PolicyError):
    """A revision's check ended without the engine's verdict: it overran its budget, its
    worker died (a crash while compiling), or no worker could take it. The revision is
    refused all the same (fail closed); ``retry`` is True when it never reached a worker
    (nothing was learned about the revision: trying again is cheap)."""

    def __init__(self, message: str, *, retry: bool = False) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass(frozen=True)
class Checked:
    """What a worker's ``check`` of a revision found: the entrypoint's value on the probe
    input (:data:`.bundle.UNDEFINED` when undefined) and the AST as JSON (the cache key's
    source)."""

    value: Any
    ast: str


def _exit_text(code: int | None) -> str:
    if code is None:
        return "it closed its output"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


class _Worker(asyncio.SubprocessProtocol):
    """One worker process: its pipes, its one request in flight, its deadline timer."""

    def __init__(self, pool: PolicyWorkers) -> None:
        loop = asyncio.get_running_loop()
        self.pool = pool
        self.loop = loop
        self.reader = FrameReader(WORKER_FRAMES, MAX_WORKER_FRAME)
        self.transport: asyncio.SubprocessTransport | None = None
        self.pid = 0
        self.ready: asyncio.Future[bool] = loop.create_future()  # False: it died first
        self.exited: asyncio.Future[None] = loop.create_future()
        self.request: asyncio.Future[dict[str, Any]] | None = None
        self.request_id = 0
        self.timer: asyncio.TimerHandle | None = None
        self.cpu_ns = 0  # the worker's own CPU time, as of its last frame
        self.started = 0.0  # loop time the request was sent
        self.revision = ""  # the newest revision sent to it
        self.alive = True

    # -- asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.SubprocessTransport)
        self.transport = transport
        self.pid = transport.get_pid()

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        if fd != 1 or not self.alive:
            return
        try:
            for frame in self.reader.feed(data if isinstance(data, bytes) else data.encode()):
                self._frame(frame)
        except FrameError as exc:
            self.kill(f"it broke the protocol: {exc}")

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1 and self.alive:  # its exit usually follows at once, and says more
            self.loop.call_later(1.0, self.kill, _exit_text(None))

    def connection_lost(self, exc: Exception | None) -> None:
        self.release_transport()  # exited and every pipe closed
        self.pool.dying.discard(self)

    def release_transport(self) -> None:
        """Close the transport (a no-op once it is): one left to the garbage collector after
        its loop closed raises from ``__del__``."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def process_exited(self) -> None:
        code = self.transport.get_returncode() if self.transport is not None else None
        self._lost(_exit_text(code))
        if not self.exited.done():
            self.exited.set_result(None)

    # -- frames
    def _frame(self, frame: dict[str, Any]) -> None:
        cpu = frame.get("cpu_ns")
        if type(cpu) is int:
            self.cpu_ns = cpu
        if frame["t"] == "ready":
            if not self.ready.done():
                self.ready.set_result(True)
            return
        request = self.request
        if request is None or frame["id"] != self.request_id:
            raise FrameError("an answer to no request")
        self.request = None
        if self.timer is not None:
            self.timer.cancel()
        if not request.done():  # a caller that went away cancelled it
            request.set_result(frame)
        self.pool.release(self)

    def load(self, revision: str, frame: bytes) -> None:
        self.revision = revision
        self._write(frame)

    def evaluate(self, bundle: Bundle, rule: str, input: bytes,
                 timeout_s: float) -> asyncio.Future[dict[str, Any]]:
        """Send one eval (the bundle first if this worker has not had it); the future holds
        the answer frame, or raises TimeoutError (the worker was killed) or _Lost."""
        if self.revision != bundle.revision:
            self.load(bundle.revision, self.pool.load_frame(bundle))
        return self._request(
            lambda rid: encode_eval(rid, bundle.revision, rule, input), timeout_s)

    def check(self, bundle: Bundle, timeout_s: float) -> asyncio.Future[dict[str, Any]]:
        """Send one ``check`` of ``bundle`` (compile + probe, nothing kept), under the same
        deadline as an eval with a budget of ``timeout_s``."""
        return self._request(lambda rid: encode({
            "t": "check", "id": rid, "rev": bundle.revision,
            "modules": [list(m) for m in bundle.modules], "data": bundle.data,
            "probe_input": PROBE_INPUT, "entrypoint": ENTRYPOINT}), timeout_s)

    def _request(self, frame: Callable[[int], bytes],
                 timeout_s: float) -> asyncio.Future[dict[str, Any]]:
        """Send ``frame(id)`` as this worker's one request, its deadline armed now."""
        self.request_id += 1
        request: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.request = request
        self.started = self.loop.time()
        self.timer = self.loop.call_later(timeout_s, self._expire, timeout_s)
        self._write(frame(self.request_id))
        return request

    def _write(self, data: bytes) -> None:
        if self.transport is None or not self.alive:
            return
        stdin = self.transport.get_pipe_transport(0)
        if isinstance(stdin, asyncio.WriteTransport) and not stdin.is_closing():
            stdin.write(data)

    def _expire(self, timeout_s: float) -> None:
        """The request's wall time reached its CPU budget: kill the worker if it spent the
        budget computing (or the wall cap passed), else look again when it could have."""
        spent = _cpu_time_s(self.pid)
        if spent is not None:
            left = timeout_s - (spent - self.cpu_ns / 1e9)
            cap = self.started + WALL_FACTOR * timeout_s - self.loop.time()
            if left > 0 and cap > 0:
                self.timer = self.loop.call_later(min(max(left, timeout_s / 20), cap),
                                                  self._expire, timeout_s)
                return
        request, self.request = self.request, None
        if request is not None and not request.done():
            request.set_exception(TimeoutError())
        self.kill("it overran a decision's deadline")

    # -- ending
    def kill(self, why: str) -> None:
        if self.transport is not None:
            with contextlib.suppress(ProcessLookupError):
                self.transport.kill()
        self._lost(why)

    def _lost(self, why: str) -> None:
        if not self.alive:
            return
        self.alive = False
        if self.timer is not None:
            self.timer.cancel()
        if not self.ready.done():
            self.ready.set_result(False)
        request, self.request = self.request, None
        if request is not None and not request.done():
            request.set_exception(_Lost(why))
        self.pool.lost(self, why)

    def close_input(self) -> None:
        if self.transport is not None:
            stdin = self.transport.get_pipe_transport(0)
            if stdin is not None:
                stdin.close()


class PolicyWorkers:
    """``size`` worker processes for one gateway process; ``evaluate`` is the whole API."""

    def __init__(self, size: int, timeout_ms: int) -> None:
        self.size = max(1, size)
        self.timeout_ms = max(1, timeout_ms)
        self.command = worker_command()
        self.start_error: str | None = None  # why the last start failed; None once one did
        self.replaced = 0  # workers started after the first ones (after a kill or a death)
        self._workers: set[_Worker] = set()
        # Workers lost (killed, exited) whose process and pipes are not all closed yet:
        # close() waits for them, so no transport outlives the loop.
        self.dying: set[_Worker] = set()
        # Last in, first out: the worker that answered last takes the next request, so under
        # light load one worker stays warm in the CPU caches instead of each taking turns.
        self._idle: asyncio.LifoQueue[_Worker] = asyncio.LifoQueue()
        self._frame: tuple[str, bytes] = ("", b"")
        self._respawner: asyncio.Task[None] | None = None
        self._closed = False
        self._started = False

    @property
    def pids(self) -> list[int]:
        return sorted(w.pid for w in self._workers)

    @property
    def unavailable(self) -> str | None:
        """None while a worker runs; else why none does (readiness: NOT_SERVING)."""
        if self._workers:
            return None
        return f"no policy worker is running: {self.start_error or 'one is starting'}"

    async def start(self) -> None:
        """Start the workers; one that cannot start is logged and retried in the background
        (``unavailable`` says why while none runs), never raised."""
        await asyncio.gather(*(self._spawn() for _ in range(self.size)))
        self._started = True
        self._ensure_respawner()

    def load_frame(self, bundle: Bundle) -> bytes:
        if self._frame[0] != bundle.revision:
            self._frame = (bundle.revision, encode({
                "t": "load", "rev": bundle.revision,
                "modules": [list(m) for m in bundle.modules], "data": bundle.data}))
        return self._frame[1]

    def load(self, bundle: Bundle) -> None:
        """Send a (new) revision to every worker now, so it is compiled before it is needed."""
        frame = self.load_frame(bundle)
        for worker in self._workers:
            worker.load(bundle.revision, frame)

    async def evaluate(self, bundle: Bundle, rule: str, input: bytes) -> Any:
        """The rule's value for ``input`` (JSON) on ``bundle``; PolicyError with the
        fail-closed reason when there is none (the policy's error, a deadline, a death)."""
        if not self._workers and self.start_error is not None:
            raise PolicyError(self.unavailable or "no policy worker is running")
        wait_ms = WALL_FACTOR * self.timeout_ms
        try:
            worker = await asyncio.wait_for(self._acquire(), wait_ms / 1000)
        except TimeoutError:
            raise PolicyError(f"no policy worker was free within {wait_ms} ms") from None
        try:
            frame = await worker.evaluate(bundle, rule, input, self.timeout_ms / 1000)
        except TimeoutError:
            raise PolicyError(f"the policy did not decide within {self.timeout_ms} ms (its "
                              "worker was stopped and is being replaced)") from None
        except _Lost as exc:
            raise PolicyError(f"the policy worker exited during the decision ({exc}); a new "
                              "one is starting") from None
        if frame["t"] == "error":
            raise PolicyError(str(frame["error"]))
        if frame["t"] != "value":
            raise PolicyError(f"the policy worker answered a decision with a {frame['t']!r} "
                              "frame")
        return frame["value"]

    async def check(self, bundle: Bundle) -> Checked:
        """Compile and probe ``bundle`` in a worker (never in this process) before it serves.

        PolicyError with the engine's reason when it does not compile or its probe errs;
        :class:`LoadAborted` when the check overran ``LOAD_FACTOR`` x ``timeout_ms`` of CPU
        (the worker is killed and replaced, as for a decision), the worker died while
        checking (a crash in the engine), or no worker was free or running. Either way the
        revision is refused."""
        if not self._workers and self.start_error is not None:
            raise LoadAborted(self.unavailable or "no policy worker is running", retry=True)
        budget_ms = LOAD_FACTOR * self.timeout_ms
        wait_ms = WALL_FACTOR * self.timeout_ms
        try:
            worker = await asyncio.wait_for(self._acquire(), wait_ms / 1000)
        except TimeoutError:
            raise LoadAborted(f"no policy worker was free within {wait_ms} ms to check "
                              f"revision {bundle.revision}", retry=True) from None
        try:
            frame = await worker.check(bundle, budget_ms / 1000)
        except TimeoutError:
            raise LoadAborted(
                f"revision {bundle.revision} did not compile and probe within {budget_ms} ms "
                "(its worker was stopped and is being replaced)") from None
        except _Lost as exc:
            raise LoadAborted(f"the policy worker exited while compiling and probing revision "
                              f"{bundle.revision} ({exc}); a new one is starting") from None
        if frame["t"] == "error":
            raise PolicyError(str(frame["error"]))
        if frame["t"] != "checked" or not isinstance(frame["ast"], str):
            raise LoadAborted(f"the policy worker answered a check of revision "
                              f"{bundle.revision} with a {frame['t']!r} frame")
        return Checked(frame["value"] if frame["defined"] else UNDEFINED, frame["ast"])

    async def _acquire(self) -> _Worker:
        while True:
            worker = await self._idle.get()
            if worker.alive:
                return worker

    def release(self, worker: _Worker) -> None:
        if worker.alive and not self._closed:
            self._idle.put_nowait(worker)

    def lost(self, worker: _Worker, why: str) -> None:
        if worker.transport is not None and not worker.transport.is_closing():
            self.dying.add(worker)  # close() waits for it (one killed mid-spawn included)
        if worker not in self._workers:
            return
        self._workers.discard(worker)
        if self._closed:
            return
        _log.error("policy.worker_lost", pid=worker.pid, reason=why)
        self._ensure_respawner()

    def _ensure_respawner(self) -> None:
        if self._started and not self._closed and len(self._workers) < self.size and (
                self._respawner is None or self._respawner.done()):
            self._respawner = asyncio.get_running_loop().create_task(
                self._respawn(), name="policy-worker-respawn")

    async def _respawn(self) -> None:
        failures = 0
        while not self._closed and len(self._workers) < self.size:
            await asyncio.sleep(RESPAWN_BACKOFF_S[min(failures, len(RESPAWN_BACKOFF_S) - 1)])
            if await self._spawn():
                self.replaced += 1
                failures = 0
            else:
                failures += 1

    async def _spawn(self) -> bool:
        loop = asyncio.get_running_loop()
        worker: _Worker | None = None
        why = ""
        try:
            _, worker = await loop.subprocess_exec(
                lambda: _Worker(self), *self.command, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=None, env={**os.environ, **_NO_ERROR_BACKTRACE})
            if not await asyncio.wait_for(asyncio.shield(worker.ready), START_TIMEOUT_S):
                why = "it exited before it was ready"
        except (OSError, TimeoutError) as exc:
            why = str(exc) or type(exc).__name__
        except BaseException:  # cancelled by close(): no worker may outlive its pool
            if worker is not None:
                worker.kill("the engine is closed")
            raise
        if why:
            if worker is not None:
                worker.kill("it did not start")
            self.start_error = f"a policy worker did not start: {why}"
            _log.error("policy.worker_start_failed", error=self.start_error)
            return False
        assert worker is not None
        if self._closed:
            worker.kill("the engine is closed")
            return False
        self.start_error = None
        self._workers.add(worker)
        if self._frame[0]:
            worker.load(*self._frame)
        self._idle.put_nowait(worker)
        return True

    async def close(self) -> None:
        """Stop every worker: stdin's EOF ends it; one still busy after the grace is killed."""
        self._closed = True
        if self._respawner is not None:
            self._respawner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._respawner
        workers = list(self._workers)
        for worker in workers:
            worker.close_input()
        exits = [w.exited for w in workers]
        if exits:
            _, pending = await asyncio.wait(exits, timeout=CLOSE_GRACE_S)
            for worker in workers:
                if not worker.exited.done():
                    worker.kill("it did not exit on close")
            if pending:
                await asyncio.wait(pending, timeout=CLOSE_GRACE_S)
        dying = [w for w in self.dying if not w.exited.done()]
        if dying:
            await asyncio.wait([w.exited for w in dying], timeout=CLOSE_GRACE_S)
        for worker in [*workers, *self.dying]:
            worker.release_transport()
        self._workers.clear()
        self.dying.clear()
