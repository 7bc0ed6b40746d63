"""The sandbox pool: Deno processes with one interpreter each, sessions, and memory limits.

Each process (runtimes/supervisor.ts) holds one Pyodide interpreter at a time, restored from a
private copy of a memory snapshot. A run without a session takes an idle process; when it ends
the interpreter is terminated and the process starts a fresh one, so every run gets a fresh V8
isolate and interpreter and no run ever shares a process with another. A session takes a process
for itself (bound to one principal) until it ends. Before each run the host caps the process's
memory with RLIMIT_DATA (its baseline plus the run's ``memory_mb``), from outside the isolate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import (
    ConfigError,
    InvalidRequest,
    ResourceExhausted,
    SandboxError,
    SessionLost,
)
from gateway.sandbox.process import MIB, DenoProcess, deno_command, sealed_deno_dir
from gateway.sandbox.protocol import MAX_INBOUND_FRAME, MAX_REPLY_OVERHEAD
from gateway.sandbox.registry import SessionRegistry
from gateway.sandbox.runs import CallState, Output, drive, output_validator, result_of
from gateway.sandbox.sdk_text import sdk_text
from gateway.sandbox.snapshot import ensure_snapshot
from gateway.sandbox.types import EventCallback, HostCall, RunRequest, RunResult, SandboxSettings

__all__ = ["SandboxPool", "default_runtime_dir", "start_sandbox", "stop_sandbox"]

log = logging.getLogger(__name__)
_DISCOVERY = frozenset({"sdk.search", "sdk.describe"})
_SESSION_ID_MAX = 128
_LOST_SESSIONS_KEPT = 1024  # sessions whose process ended between runs, remembered to say so


def default_runtime_dir() -> Path:
    env = os.environ.get("SWITCHBOARD_RUNTIME_DIR")
    if env:
        return Path(env).resolve()
    return (Path(__file__).resolve().parents[2] / "runtimes").resolve()


@dataclass
class _Session:
    proc: DenoProcess
    key: tuple[str, str]
    base: int  # the process's VmData with the session's fresh interpreter, bytes
    rev: str | None = None
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False


def _handed(fut: asyncio.Future[DenoProcess]) -> bool:
    return fut.done() and not fut.cancelled() and fut.exception() is None


def start_sandbox(settings: SandboxSettings) -> tuple[SandboxPool, asyncio.Task[None]]:
    """A pool with its :meth:`SandboxPool.start` already under way in the background (call in
    a running loop): ``serve`` starts it before importing the rest of the gateway, so the Deno
    processes boot while the gateway's own modules load; await the task for the outcome."""
    pool = SandboxPool(settings)
    return pool, asyncio.create_task(pool.start(), name="sandbox-start")


async def stop_sandbox(started: tuple[SandboxPool, asyncio.Task[None]]) -> None:
    """Undo :func:`start_sandbox` whatever state its start is in: cancel the start, let it
    finish, close the pool (every process it started)."""
    pool, start = started
    start.cancel()
    with contextlib.suppress(BaseException):
        await start
    await pool.close()


class SandboxPool:
    """Isolated Pyodide interpreters for the code channel, one per process."""

    def __init__(self, settings: SandboxSettings, registry: SessionRegistry | None = None) -> None:
        self.settings = settings
        self._registry = registry  # where sessions are claimed across replicas (None: nowhere)
        # Path() also accepts the plain strings a YAML config gives.
        self._runtime_dir = Path(settings.runtime_dir or default_runtime_dir()).resolve()
        self._deno = settings.deno_path or ""
        self._slots: list[DenoProcess | None] = [None] * max(1, settings.workers)
        self._idle: deque[DenoProcess] = deque()
        # Runs waiting for a process, per principal key; a freed process goes to the principals
        # in turn (the first in line, who then moves to the back), never first come first served:
        # a principal with a hundred runs queued delays another's one run by one run, not 100.
        self._waiters: OrderedDict[str, deque[asyncio.Future[DenoProcess]]] = OrderedDict()
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._session_procs: set[DenoProcess] = set()
        # Sessions whose process ended while no run of theirs was in flight: nobody was told,
        # so their next run fails once with session_lost instead of silently starting afresh.
        self._lost: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._pending: dict[str, int] = {}
        self._tmp: Path | None = None
        self._snapshot: Path | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._started = False
        self._starting = False
        self._spawned = 0
        self._filled = asyncio.Event()  # every slot has had its first start attempt
        self._sdk_cache: dict[str, str] = {}
        self._allowed_cache: dict[str, tuple[tuple[Any, ...], frozenset[str]]] = {}
        self._counters: dict[str, int] = dict.fromkeys(
            ("runs", "ok", "user_errors", "timeouts", "memory", "crashes", "cancelled",
             "host_calls", "respawns", "recycles", "sessions_created", "sessions_expired",
             "sessions_evicted"), 0)

    def bind_registry(self, registry: SessionRegistry) -> None:
        """Set where sessions are claimed, when it is opened after the pool started (before
        the first run: the server binds it before it serves)."""
        self._registry = registry

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Make (or reuse) the snapshot, then start processes until one is ready (the rest start
        in the background, one after another); fails if none comes up."""
        if self._started or self._starting:
            return
        self._starting = True
        try:
            await self._start()
        finally:
            self._starting = False
        self._started = True

    async def _start(self) -> None:
        if not self._deno:
            import deno  # the PyPI package that ships the binary

            self._deno = str(deno.find_deno_bin())
        if not os.access(self._deno, os.X_OK):
            raise ConfigError(f"deno binary is not executable: {self._deno}", field="deno_path")
        for name in ("supervisor.ts", "worker.ts", "sandbox_runner.py",
                     "node_modules/pyodide/pyodide.asm.wasm"):
            if not (self._runtime_dir / name).is_file():
                raise ConfigError(f"sandbox runtime file missing: {self._runtime_dir / name}",
                                  field="runtime_dir")
        if self.settings.max_result_bytes * 2 + MAX_REPLY_OVERHEAD > MAX_INBOUND_FRAME:
            raise ConfigError("max_result_bytes is larger than the sandbox channel allows",
                              field="sandbox.max_result_bytes")
        self._tmp = Path(tempfile.mkdtemp(prefix="switchboard-sandbox-"))
        os.chmod(self._tmp, 0o700)
        try:
            self._snapshot = await ensure_snapshot(self._deno, self._runtime_dir, self.settings,
                                                   self._tmp)
        except BaseException:
            await self.close()
            raise
        # SERVING needs one interpreter, not all of them: start the processes one at a time
        # until one is ready, return, and start the rest in the background one after another
        # (each after the previous one's first restore, so they do not all compete for the
        # CPU with each other and with the gateway's own start). Runs only ever go to ready
        # processes (``_idle``); one arriving before any is ready waits in ``_acquire``.
        errors: list[BaseException] = []
        first = None
        for i in range(len(self._slots)):
            try:
                await self._spawn(i)
            except Exception as exc:
                log.warning("sandbox process %d failed to start: %s", i, exc)
                errors.append(exc)
                continue
            first = i
            break
        if first is None:
            await self.close()
            raise errors[0]
        for i in range(first):
            self._spawn_later(i, 1.0)
        if first + 1 < len(self._slots):
            self._bg(self._fill(range(first + 1, len(self._slots))))
        else:
            self._filled.set()
        self._bg(self._reaper())

    async def close(self) -> None:
        """Kill every Deno process and background task; idempotent."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for queue in self._waiters.values():
            for fut in queue:
                if not fut.done():
                    fut.set_exception(SandboxError("the sandbox pool is closed"))
        procs = {p for p in self._slots if p is not None} | self._session_procs
        for proc in procs:
            await proc.close()
        self._idle.clear()
        self._sessions.clear()
        self._session_procs.clear()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _bg(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _new_process(self, index: int) -> DenoProcess:
        assert self._tmp is not None and self._snapshot is not None
        self._spawned += 1
        sock = self._tmp / f"p{index}-{uuid.uuid4().hex[:8]}.sock"
        deno_dir = sealed_deno_dir(self._tmp)  # settings.deno_dir is the snapshot build's
        argv = deno_command(self._deno, self._runtime_dir, sock, self._snapshot, self.settings)
        proc = DenoProcess(index, argv, sock, deno_dir, self.settings.process_data_limit_mb)
        await proc.start(self.settings.start_timeout_s)
        return proc

    async def _spawn(self, index: int) -> None:
        proc = await self._new_process(index)
        if self._closing:
            await proc.close()
            return
        self._slots[index] = proc
        self._bg(self._watch(proc))
        self._release(proc)

    async def _watch(self, proc: DenoProcess) -> None:
        await proc.exited.wait()
        with contextlib.suppress(ValueError):
            self._idle.remove(proc)
        if self._closing:
            return
        if proc in self._session_procs:
            self._session_procs.discard(proc)
            for key, sess in list(self._sessions.items()):
                if sess.proc is proc:
                    if not sess.lock.locked():  # a run in flight gets the error itself
                        self._lost[key] = str(proc.death or "the process exited")
                        self._lost.move_to_end(key)
                        while len(self._lost) > _LOST_SESSIONS_KEPT:
                            self._lost.popitem(last=False)
                    sess.closed = True
                    self._sessions.pop(key, None)
                    if self._registry is not None:
                        self._bg(self._release_claim(key))
            return
        if self._slots[proc.index] is proc:
            self._slots[proc.index] = None
            self._counters["respawns"] += 1
            log.info("sandbox process %d exited (%s); respawning", proc.index, proc.death)
            self._spawn_later(proc.index, 0.0)

    async def _fill(self, indexes: range) -> None:
        """Start the processes the pool did not wait for, one after another."""
        for i in indexes:
            if self._closing:
                return
            try:
                await self._spawn(i)
            except Exception as exc:
                log.warning("sandbox process %d failed to start: %s", i, exc)
                self._spawn_later(i, 1.0)
        self._filled.set()

    async def wait_full(self, timeout_s: float) -> None:
        """Wait until the background start has tried every process and all of them are alive
        (for tests and benchmarks that need the whole pool; serving never waits for it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        await asyncio.wait_for(self._filled.wait(), timeout_s)
        while self.stats()["alive"] < len(self._slots):
            if loop.time() >= deadline:
                raise TimeoutError("the sandbox pool did not reach its full size")
            await asyncio.sleep(0.05)

    def _spawn_later(self, index: int, delay: float) -> None:
        async def again() -> None:
            backoff = delay
            while not self._closing:
                await asyncio.sleep(backoff)
                try:
                    await self._spawn(index)
                    return
                except Exception as exc:
                    log.warning("sandbox process %d respawn failed: %s", index, exc)
                    backoff = min(10.0, max(0.5, backoff * 2))

        self._bg(again())

    async def _reaper(self) -> None:
        period = max(0.05, min(5.0, self.settings.session_idle_s / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for sess in list(self._sessions.values()):
                idle = now - sess.last_used
                if idle >= self.settings.session_idle_s and not sess.lock.locked():
                    self._drop_session(sess)
                    self._counters["sessions_expired"] += 1

    # ---- idle processes ---------------------------------------------------------------------

    def _release(self, proc: DenoProcess) -> None:
        """An idle process with a fresh interpreter: hand it to the waiting principal whose
        turn it is, else park it."""
        if proc.dead or not proc.ready:
            return
        while self._waiters:
            principal, queue = next(iter(self._waiters.items()))
            fut = None
            while queue:
                head = queue.popleft()
                if not head.done():
                    fut = head
                    break
            if queue:
                self._waiters.move_to_end(principal)  # the others come first next time
            else:
                del self._waiters[principal]
            if fut is not None:
                fut.set_result(proc)
                return
        self._idle.append(proc)

    async def _acquire(self, principal: str) -> DenoProcess:
        while self._idle:
            proc = self._idle.popleft()
            if not proc.dead and proc.ready:
                return proc
        if self._closing:
            raise SandboxError("the sandbox pool is closed")
        queue = self._waiters.setdefault(principal, deque())
        if len(queue) >= self.settings.max_queued_per_principal:  # live waiters only (_forget)
            raise ResourceExhausted(
                "too many of this principal's code runs are waiting for a sandbox process",
                details={"max_queued_per_principal": self.settings.max_queued_per_principal})
        fut: asyncio.Future[DenoProcess] = asyncio.get_running_loop().create_future()
        queue.append(fut)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.settings.queue_timeout_s)
        except TimeoutError:
            if _handed(fut):
                return fut.result()
            fut.cancel()
            self._forget(principal, fut)
            raise ResourceExhausted("no sandbox process became free in time",
                                    details={"queue_timeout_s": self.settings.queue_timeout_s}
                                    ) from None
        except asyncio.CancelledError:
            if _handed(fut):
                self._release(fut.result())  # handed over just as we gave up: pass it on
            fut.cancel()
            self._forget(principal, fut)
            raise

    def _forget(self, principal: str, fut: asyncio.Future[DenoProcess]) -> None:
        """Drop a waiter that gave up (so a principal's queue holds only live waiters)."""
        queue = self._waiters.get(principal)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(fut)
        if not queue:
            del self._waiters[principal]

    async def _recycle(self, proc: DenoProcess) -> None:
        """After an isolated run: a fresh interpreter in the same process, or a new process."""
        if proc.dead:
            return
        try:
            await proc.recycle(self.settings.recycle_timeout_s)
        except (SandboxError, TimeoutError) as exc:
            log.warning("sandbox process %d could not recycle: %s", proc.index, exc)
            await proc.kill()  # _watch respawns it
            return
        self._counters["recycles"] += 1
        self._release(proc)

    # ---- sessions ---------------------------------------------------------------------------

    def _drop_session(self, sess: _Session) -> None:
        if self._sessions.get(sess.key) is sess:
            del self._sessions[sess.key]
        if not sess.closed:
            sess.closed = True
            self._session_procs.discard(sess.proc)
            self._bg(sess.proc.close())
            if self._registry is not None and not self._closing:
                self._bg(self._release_claim(sess.key))

    async def _release_claim(self, key: tuple[str, str]) -> None:
        assert self._registry is not None
        try:
            await self._registry.release(*key)
        except Exception as exc:  # the claim then runs out with its lease
            log.warning("could not release a sandbox session claim: %s", exc)

    def _make_room(self, key: tuple[str, str]) -> None:
        """Enforce the session quotas. Only the requesting principal's own idle sessions are
        ever evicted: one principal can never push out another's."""
        own = [s for k, s in self._sessions.items() if k[0] == key[0]]
        pending = self._pending.get(key[0], 0)  # sessions of this principal being created
        full_own = len(own) + pending >= self.settings.max_sessions_per_principal
        full_all = len(self._sessions) + sum(self._pending.values()) >= self.settings.max_sessions
        if not (full_own or full_all):
            return
        idle = [s for s in own if not s.lock.locked()]
        if not idle:
            scope = "this principal's" if full_own else "the gateway's"
            raise ResourceExhausted(f"{scope} sandbox sessions are all in use",
                                    field="session_id",
                                    details={"max_sessions": self.settings.max_sessions,
                                             "max_sessions_per_principal":
                                                 self.settings.max_sessions_per_principal})
        self._drop_session(min(idle, key=lambda s: s.last_used))
        self._counters["sessions_evicted"] += 1

    async def _session(self, key: tuple[str, str]) -> _Session:
        lost = self._lost.pop(key, None)
        if lost is not None:
            raise SessionLost(f"this code session's process ended between its runs ({lost}); "
                              "its state is gone, and the next run with this session_id "
                              "starts a fresh session", field="session_id")
        sess = self._sessions.get(key)
        if sess is not None and not sess.closed:
            if self._registry is not None:
                try:
                    await self._registry.touch(*key)
                except SessionLost:
                    self._drop_session(sess)  # another replica holds the id now
                    raise
            return sess
        self._make_room(key)
        if self._registry is not None:
            # Held by another replica, or lost with one: say so rather than start afresh.
            await self._registry.claim(*key)
        self._pending[key[0]] = self._pending.get(key[0], 0) + 1  # counted until registered
        try:
            proc = await self._acquire(key[0])
        finally:
            self._pending[key[0]] -= 1
            if not self._pending[key[0]]:
                del self._pending[key[0]]
        sess = self._sessions.get(key)  # another run may have created it meanwhile
        if sess is not None and not sess.closed:
            self._release(proc)
            return sess
        # The process leaves the isolated pool for good; its slot gets a new process.
        if self._slots[proc.index] is proc:
            self._slots[proc.index] = None
            self._spawn_later(proc.index, 0.0)
        self._session_procs.add(proc)
        sess = _Session(proc=proc, key=key, base=proc.vm_data())
        self._sessions[key] = sess
        self._counters["sessions_created"] += 1
        return sess

    # ---- runs -------------------------------------------------------------------------------

    async def run(
        self, req: RunRequest, host_call: HostCall, on_event: EventCallback | None = None
    ) -> RunResult:
        """Run one program. User-code errors come back as data; infrastructure as errors."""
        if not self._started or self._closing:
            raise SandboxError("the sandbox pool is not running")
        if not req.principal_key:
            raise InvalidRequest("a run needs a principal_key", field="principal_key")
        if req.session_id is not None and not 0 < len(req.session_id) <= _SESSION_ID_MAX:
            raise InvalidRequest("session_id must be 1 to 128 characters", field="session_id")
        try:
            inputs = json.dumps(req.inputs, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"inputs are not JSON: {exc}", field="inputs") from None
        # Checking a caller's schema against the metaschema is linear in its size, which can be
        # megabytes: in a thread, like its evaluation (gateway/schemas.py).
        validator = (await asyncio.to_thread(output_validator, req.output_schema)
                     if req.output_schema is not None else None)
        self._counters["runs"] += 1
        if req.session_id is None:
            proc = await self._acquire(req.principal_key)
            try:
                return await self._run_on(proc, None, req, inputs, host_call, on_event, validator)
            finally:
                self._bg(self._recycle(proc))
        key = (req.principal_key, req.session_id)
        sess = await self._session(key)
        async with sess.lock:
            if sess.closed:
                # It ended while this run waited for the run before it (that run failed,
                # or the process died): this code expects its state, so say it is gone
                # rather than run it in a fresh interpreter.
                raise SessionLost(
                    "this code session ended while this run waited for it (an earlier run "
                    "of it failed, or its process ended); its state is gone, and the next "
                    "run with this session_id starts a fresh session", field="session_id")
            sess.last_used = time.monotonic()
            try:
                return await self._run_on(sess.proc, sess, req, inputs, host_call,
                                          on_event, validator)
            finally:
                sess.last_used = time.monotonic()

    async def _run_on(
        self,
        proc: DenoProcess,
        sess: _Session | None,
        req: RunRequest,
        inputs: str,
        host_call: HostCall,
        on_event: EventCallback | None,
        validator: Any,
    ) -> RunResult:
        limits = req.limits
        run_id = uuid.uuid4().hex
        t0 = time.perf_counter()
        out = Output(budget=max(0, limits.max_output_bytes))
        calls = CallState(limit=limits.max_host_calls, allowed=self._allowed(req))
        # The SDK text (a whole catalog: MiBs) crosses the socket once per process and revision;
        # the supervisor keeps it and restores each new interpreter with it installed.
        rev = req.sdk_revision
        send_sdk = (not rev or (proc.sdk_rev != rev if sess is None else sess.rev != rev))
        # The memory this run may allocate, enforced by the kernel: baseline + memory_mb.
        base = sess.base if sess is not None else proc.vm_data()
        proc.set_data_limit(base + max(1, limits.memory_mb) * MIB)
        proc.forget_stderr()  # only this run's stderr may say it ran out of memory
        queue = proc.register(run_id)
        try:
            try:
                proc.send({
                    "t": "run", "id": run_id, "source": req.source, "inputs": inputs,
                    "sdk": self._sdk_json(req) if send_sdk else None, "rev": req.sdk_revision,
                    "session": sess is not None, "timeoutMs": max(1, limits.timeout_ms),
                    "maxOut": out.budget, "maxResult": self.settings.max_result_bytes,
                    "maxCalls": max(0, limits.max_host_calls),
                })
            except SandboxError:
                raise InvalidRequest("source and inputs are too large for the sandbox",
                                     field="inputs") from None
            if send_sdk:
                proc.sdk_rev = rev
            done = await drive(proc, run_id, queue, limits.timeout_ms, self.settings.kill_grace_s,
                               out, calls, host_call, on_event, self._counters)
        except asyncio.CancelledError:
            self._counters["cancelled"] += 1
            proc.send({"t": "cancel", "id": run_id})
            self._end_session(sess)
            raise
        except SandboxError as exc:
            # The host caught the process misbehaving (or it died): whatever it is still
            # running is not to be trusted, and it must not serve another run.
            self._count_error(exc)
            self._end_session(sess)
            await proc.kill()
            raise
        except Exception:
            # e.g. the on_event consumer failed: stop the run rather than leave it running.
            proc.send({"t": "cancel", "id": run_id})
            self._end_session(sess)
            raise
        finally:
            proc.unregister(run_id)
        if sess is not None and done.get("status") != "ok":
            self._end_session(sess)
        elif sess is not None and send_sdk:
            sess.rev = req.sdk_revision
        try:
            return await result_of(done, out, calls, (time.perf_counter() - t0) * 1000,
                             limits.timeout_ms, limits.memory_mb, validator, self._counters)
        except SandboxError:
            self._end_session(sess)
            raise

    def _end_session(self, sess: _Session | None) -> None:
        if sess is not None:
            self._drop_session(sess)

    def _count_error(self, exc: SandboxError) -> None:
        name = {"sandbox_timeout": "timeouts", "sandbox_memory": "memory"}.get(exc.code, "crashes")
        self._counters[name] += 1

    def _allowed(self, req: RunRequest) -> frozenset[str]:
        """The operations a run may call: its SDK's and discovery (per SDK revision, cached)."""
        hit = self._allowed_cache.get(req.sdk_revision) if req.sdk_revision else None
        if hit is not None and hit[0] is req.sdk:
            return hit[1]
        allowed = frozenset(f.operation for f in req.sdk) | _DISCOVERY
        if req.sdk_revision:
            if len(self._allowed_cache) > 16:
                self._allowed_cache.clear()
            self._allowed_cache[req.sdk_revision] = (req.sdk, allowed)
        return allowed

    def _sdk_json(self, req: RunRequest) -> str:
        if req.sdk_revision and req.sdk_revision in self._sdk_cache:
            return self._sdk_cache[req.sdk_revision]
        text = sdk_text(req.sdk)
        if req.sdk_revision:
            if len(self._sdk_cache) > 16:
                self._sdk_cache.clear()
            self._sdk_cache[req.sdk_revision] = text
        return text

    # ---- introspection ------------------------------------------------------------------------

    def _procs(self) -> list[DenoProcess]:
        return [p for p in self._slots if p is not None] + list(self._session_procs)

    async def isolate_stats(self) -> list[dict[str, Any]]:
        """Per live process, the supervisor's own view (interpreter present, ready, busy)."""
        procs = [p for p in self._procs() if not p.dead]
        return list(await asyncio.gather(*(p.query_stats() for p in procs)))

    def stats(self) -> dict[str, Any]:
        procs = self._procs()
        return {
            **self._counters,
            "processes": len(self._slots),
            "alive": sum(1 for p in self._slots if p is not None and not p.dead),
            "starting": not self._filled.is_set(),  # the background start is still running
            "idle": len(self._idle),
            "active_runs": sum(p.active for p in procs),
            "sessions": len(self._sessions),
            "spawned": self._spawned,
            "rss_bytes": {p.pid: p.rss_bytes() for p in procs if p.pid is not None},
            "pids": [p.pid for p in procs],
        }
