"""The sandbox pool: warm Deno processes, sessions, limits, and the host side of the SDK bridge.

Each process (runtimes/supervisor.ts) keeps spare Web Workers restored from a Pyodide snapshot.
A run without a session takes a spare and the worker is terminated afterwards, so every run gets
a fresh V8 isolate and interpreter; a session keeps its worker, bound to one principal_key.
Everything the sandbox sends is untrusted: frames are validated, output is capped here again,
host calls are counted here, and anything malformed ends the run as ``SandboxCrashed``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import jsonschema

from gateway.errors import (
    ConfigError,
    GatewayError,
    InvalidRequest,
    ResourceExhausted,
    SandboxCrashed,
    SandboxError,
    SandboxMemory,
    SandboxTimeout,
)
from gateway.sandbox.process import DenoProcess, deno_command
from gateway.sandbox.types import (
    EventCallback,
    HostCall,
    RunRequest,
    RunResult,
    SandboxEvent,
    SandboxSettings,
)

__all__ = ["SandboxPool", "default_runtime_dir"]

log = logging.getLogger(__name__)
_DISCOVERY = frozenset({"sdk.search", "sdk.describe"})


def default_runtime_dir() -> Path:
    env = os.environ.get("SWITCHBOARD_RUNTIME_DIR")
    if env:
        return Path(env).resolve()
    return (Path(__file__).resolve().parents[2] / "runtimes").resolve()


@dataclass
class _Session:
    proc: DenoProcess
    sid: str
    rev: str | None = None
    last_used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False


@dataclass
class _Output:
    budget: int
    used: int = 0
    truncated: bool = False
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def add(self, stream: str, line: str) -> str | None:
        """Append a line within the byte budget; returns what was kept (None if nothing)."""
        if self.truncated:
            return None
        size = len(line.encode("utf-8", "replace")) + 1
        if self.used + size > self.budget:
            self.truncated = True
            room = self.budget - self.used - 1
            self.used = self.budget
            if room <= 0:
                return None
            line = line.encode("utf-8", "replace")[:room].decode("utf-8", "ignore")
        else:
            self.used += size
        (self.stderr if stream == "stderr" else self.stdout).append(line)
        return line


class SandboxPool:
    """Warm, isolated Pyodide interpreters for the code channel."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        # Path() also accepts the plain strings a YAML config gives.
        self._runtime_dir = Path(settings.runtime_dir or default_runtime_dir()).resolve()
        self._deno = settings.deno_path or ""
        self._procs: list[DenoProcess | None] = [None] * max(1, settings.workers)
        self._sessions: dict[tuple[str, str], _Session] = {}
        self._tmp: Path | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._started = False
        self._starting = False
        self._proc_ready = asyncio.Event()
        self._rr = itertools.count()
        self._sdk_cache: dict[str, str] = {}
        self._counters: dict[str, int] = dict.fromkeys(
            ("runs", "ok", "user_errors", "timeouts", "memory", "crashes", "cancelled",
             "host_calls", "respawns", "sessions_created", "sessions_expired",
             "sessions_evicted"), 0)

    # ---- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every process (snapshot + spares) concurrently; fails if none comes up."""
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
        self._tmp = Path(tempfile.mkdtemp(prefix="switchboard-sandbox-"))
        os.chmod(self._tmp, 0o700)
        results = await asyncio.gather(
            *(self._spawn(i) for i in range(len(self._procs))), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if len(errors) == len(results):
            await self.close()
            raise errors[0]
        for i, r in enumerate(results):
            if isinstance(r, BaseException):
                log.warning("sandbox process %d failed to start: %s", i, r)
                self._spawn_later(i, 1.0)
        self._bg(self._reaper())

    async def close(self) -> None:
        """Kill every Deno process and background task; idempotent."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for proc in self._procs:
            if proc is not None:
                await proc.close()
        self._sessions.clear()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _bg(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _spawn(self, index: int) -> None:
        assert self._tmp is not None
        sock = self._tmp / f"p{index}-{uuid.uuid4().hex[:8]}.sock"
        deno_dir = Path(self.settings.deno_dir or (self._tmp / "deno_dir"))
        argv = deno_command(self._deno, self._runtime_dir, sock, self.settings)
        proc = DenoProcess(index, argv, sock, deno_dir)
        await proc.start(self.settings.start_timeout_s)
        if self._closing:
            await proc.close()
            return
        self._procs[index] = proc
        self._proc_ready.set()
        self._bg(self._watch(proc))

    async def _watch(self, proc: DenoProcess) -> None:
        await proc.exited.wait()
        if self._closing:
            return
        for key, sess in list(self._sessions.items()):
            if sess.proc is proc:
                sess.closed = True
                self._sessions.pop(key, None)
        if self._procs[proc.index] is proc:
            self._procs[proc.index] = None
        self._counters["respawns"] += 1
        log.warning("sandbox process %d exited (%s); respawning", proc.index, proc.death)
        self._spawn_later(proc.index, 0.0)

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
            for key, sess in list(self._sessions.items()):
                idle = now - sess.last_used
                if idle >= self.settings.session_idle_s and not sess.lock.locked():
                    self._drop_session(key, sess)
                    self._counters["sessions_expired"] += 1

    def _drop_session(self, key: tuple[str, str], sess: _Session) -> None:
        if self._sessions.get(key) is sess:
            del self._sessions[key]
        if not sess.closed:
            sess.closed = True
            sess.proc.send({"t": "close_session", "sid": sess.sid})

    async def _pick(self) -> DenoProcess:
        deadline = time.monotonic() + self.settings.queue_timeout_s
        while True:
            live = [p for p in self._procs if p is not None and p.ready and not p.dead]
            if live:
                n = next(self._rr)
                return min(live, key=lambda p: (p.active, (p.index - n) % len(self._procs)))
            if self._closing:
                raise SandboxError("the sandbox pool is closed")
            self._proc_ready.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SandboxCrashed("no sandbox process is available")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._proc_ready.wait(), remaining)

    def _session_for(self, key: tuple[str, str], proc: DenoProcess) -> _Session:
        if len(self._sessions) >= self.settings.max_sessions:
            idle = [(s.last_used, k, s) for k, s in self._sessions.items() if not s.lock.locked()]
            if not idle:
                raise ResourceExhausted("too many active sandbox sessions")
            _, old_key, old = min(idle, key=lambda t: t[0])
            self._drop_session(old_key, old)
            self._counters["sessions_evicted"] += 1
        sess = _Session(proc=proc, sid=uuid.uuid4().hex)
        self._sessions[key] = sess
        self._counters["sessions_created"] += 1
        return sess

    # ---- runs -----------------------------------------------------------------------------

    async def run(
        self, req: RunRequest, host_call: HostCall, on_event: EventCallback | None = None
    ) -> RunResult:
        """Run one program. User-code errors come back as data; infrastructure as errors."""
        if not self._started or self._closing:
            raise SandboxError("the sandbox pool is not running")
        if not req.principal_key:
            raise InvalidRequest("a run needs a principal_key", field="principal_key")
        validator = _output_validator(req.output_schema)
        self._counters["runs"] += 1
        if req.session_id is None:
            proc = await self._pick()
            return await self._run_on(proc, None, req, host_call, on_event, validator)
        key = (req.principal_key, req.session_id)
        while True:
            sess = self._sessions.get(key)
            if sess is None or sess.closed:
                proc = await self._pick()
                sess = self._sessions.get(key)  # another run may have created it meanwhile
                if sess is None or sess.closed:
                    sess = self._session_for(key, proc)
            async with sess.lock:
                if sess.closed:
                    continue  # expired or its process died while we waited: start a new one
                sess.last_used = time.monotonic()
                try:
                    return await self._run_on(sess.proc, sess, req, host_call, on_event,
                                              validator)
                finally:
                    sess.last_used = time.monotonic()

    async def _run_on(
        self,
        proc: DenoProcess,
        sess: _Session | None,
        req: RunRequest,
        host_call: HostCall,
        on_event: EventCallback | None,
        validator: jsonschema.protocols.Validator | None,
    ) -> RunResult:
        limits = req.limits
        run_id = uuid.uuid4().hex
        t0 = time.perf_counter()
        out = _Output(budget=max(0, limits.max_output_bytes))
        calls = _CallState(limit=limits.max_host_calls,
                           allowed={f.operation for f in req.sdk} | _DISCOVERY)
        send_sdk = sess is None or sess.rev != req.sdk_revision or not req.sdk_revision
        try:
            inputs = json.dumps(req.inputs, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"inputs are not JSON: {exc}", field="inputs") from None
        queue = proc.register(run_id)
        try:
            self._send_run(proc, run_id, sess, req, inputs, send_sdk, out.budget)
        except SandboxError:
            proc.unregister(run_id)
            raise InvalidRequest("source and inputs are too large for the sandbox",
                                 field="inputs") from None
        done: dict[str, Any] | None = None
        tasks: set[asyncio.Task[None]] = set()
        try:
            started = False
            deadline = time.monotonic() + self.settings.queue_timeout_s
            while done is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 and not started:
                    # Saturated, not broken: give the place in the queue back, kill nothing.
                    proc.send({"t": "cancel", "id": run_id})
                    self._forget(sess, req)
                    raise ResourceExhausted("no sandbox isolate became free in time",
                                            details={"queue_timeout_s":
                                                     self.settings.queue_timeout_s})
                if remaining <= 0:
                    raise TimeoutError
                try:
                    msg = await asyncio.wait_for(queue.get(), remaining)
                except TimeoutError:
                    continue
                kind = msg["t"]
                if kind == "started":
                    started = True
                    deadline = (time.monotonic() + limits.timeout_ms / 1000
                                + self.settings.kill_grace_s)
                elif kind == "event":
                    await self._on_output(msg, out, on_event)
                elif kind == "host_call":
                    task = asyncio.create_task(
                        self._serve_call(proc, run_id, msg, calls, host_call, on_event))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                elif kind == "done":
                    done = msg
                elif kind == "_dead":
                    raise proc.death or SandboxCrashed("the sandbox process exited")
        except TimeoutError:
            # The supervisor did not end the run on time: the process is unresponsive.
            self._counters["timeouts"] += 1
            self._forget(sess, req)
            await proc.kill()
            raise SandboxTimeout(f"code ran longer than {limits.timeout_ms} ms") from None
        except asyncio.CancelledError:
            self._counters["cancelled"] += 1
            proc.send({"t": "cancel", "id": run_id})
            self._forget(sess, req)
            raise
        except SandboxError as exc:
            self._count_error(exc)
            self._forget(sess, req)
            raise
        except Exception:
            # e.g. the on_event consumer failed: stop the run rather than leave it running.
            proc.send({"t": "cancel", "id": run_id})
            self._forget(sess, req)
            raise
        finally:
            proc.unregister(run_id)
            for task in tasks:
                task.cancel()
        duration = (time.perf_counter() - t0) * 1000
        if sess is not None:
            if done.get("dropped"):
                self._forget(sess, req)
            elif send_sdk:
                sess.rev = req.sdk_revision
        return self._finish(done, out, calls, duration, limits.timeout_ms, limits.memory_mb,
                            validator)

    def _send_run(self, proc: DenoProcess, run_id: str, sess: _Session | None, req: RunRequest,
                  inputs: str, send_sdk: bool, budget: int) -> None:
        limits = req.limits
        proc.send({
            "t": "run", "id": run_id, "sid": sess.sid if sess else None,
            "source": req.source, "inputs": inputs,
            "sdk": self._sdk_json(req) if send_sdk else None, "rev": req.sdk_revision,
            "timeoutMs": max(1, limits.timeout_ms), "maxOut": budget,
            "memoryMb": max(1, limits.memory_mb), "maxResult": self.settings.max_result_bytes,
        })

    def _count_error(self, exc: SandboxError) -> None:
        name = {"sandbox_timeout": "timeouts", "sandbox_memory": "memory"}.get(exc.code, "crashes")
        self._counters[name] += 1

    def _forget(self, sess: _Session | None, req: RunRequest) -> None:
        if sess is not None and req.session_id is not None:
            self._drop_session((req.principal_key, req.session_id), sess)

    def _sdk_json(self, req: RunRequest) -> str:
        if req.sdk_revision and req.sdk_revision in self._sdk_cache:
            return self._sdk_cache[req.sdk_revision]
        text = json.dumps([f.to_json() for f in req.sdk])
        if req.sdk_revision:
            if len(self._sdk_cache) > 16:
                self._sdk_cache.clear()
            self._sdk_cache[req.sdk_revision] = text
        return text

    async def _on_output(
        self, msg: dict[str, Any], out: _Output, on_event: EventCallback | None
    ) -> None:
        stream: Literal["stdout", "stderr"] = (
            "stderr" if msg.get("stream") == "stderr" else "stdout")
        line = msg.get("line")
        if not isinstance(line, str):
            raise SandboxCrashed("malformed output event from the sandbox")
        kept = out.add(stream, line)
        if kept is not None and on_event is not None:
            await on_event(SandboxEvent(kind=stream, data={"line": kept}))

    async def _serve_call(
        self,
        proc: DenoProcess,
        run_id: str,
        msg: dict[str, Any],
        calls: _CallState,
        host_call: HostCall,
        on_event: EventCallback | None,
    ) -> None:
        call_id, op = msg.get("call"), msg.get("op")
        t0 = time.perf_counter()
        outcome = "ok"
        reply: dict[str, Any]
        try:
            if not isinstance(op, str) or not isinstance(call_id, int):
                raise InvalidRequest("malformed host call")
            calls.count += 1
            self._counters["host_calls"] += 1
            if calls.count > calls.limit:
                raise ResourceExhausted(
                    f"host-call budget of {calls.limit} calls is spent", field="max_host_calls")
            if op not in calls.allowed:
                raise InvalidRequest(f"no such SDK operation: {op[:200]}", field="operation")
            args = json.loads(str(msg.get("args")))
            if not isinstance(args, dict):
                raise InvalidRequest("SDK arguments must be keyword arguments")
            value = await host_call(op, args)
            reply = {"ok": True, "value": value}
            body = json.dumps(reply, allow_nan=False)
        except GatewayError as exc:
            outcome = exc.code
            body = json.dumps({"ok": False, "error": exc.to_dict()}, default=str)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("host call %s failed", op)
            outcome = "internal"
            body = json.dumps({"ok": False, "error": {
                "code": "internal", "message": "the host call failed"}})
        proc.send({"t": "host_result", "id": run_id, "call": call_id, "reply": body})
        if on_event is not None:
            await on_event(SandboxEvent(kind="host_call", data={
                "operation": op if isinstance(op, str) else "?", "outcome": outcome,
                "duration_ms": round((time.perf_counter() - t0) * 1000, 3)}))

    def _finish(
        self,
        done: dict[str, Any],
        out: _Output,
        calls: _CallState,
        duration: float,
        timeout_ms: int,
        memory_mb: int,
        validator: jsonschema.protocols.Validator | None,
    ) -> RunResult:
        status = done.get("status")
        if status == "timeout":
            self._counters["timeouts"] += 1
            raise SandboxTimeout(f"code ran longer than {timeout_ms} ms")
        if status != "ok":
            self._counters["crashes"] += 1
            reason = str(done.get("reason") or done.get("reply") or status)[:2000]
            raise SandboxCrashed(f"the sandbox worker failed: {reason}")
        try:
            reply = json.loads(str(done.get("reply")))
            ok = reply["ok"]
            error = reply.get("error")
            if not isinstance(ok, bool) or not (error is None or isinstance(error, dict)):
                raise ValueError("bad reply shape")
        except (ValueError, KeyError, TypeError):
            self._counters["crashes"] += 1
            raise SandboxCrashed("the sandbox sent a malformed result") from None
        heap = done.get("heap")
        over = isinstance(heap, int | float) and heap > memory_mb * 1024 * 1024
        if over or reply.get("memory_error"):
            self._counters["memory"] += 1
            raise SandboxMemory(f"code used more than {memory_mb} MiB",
                                details={"heap_bytes": heap})
        result = reply.get("result") if ok else None
        if ok and validator is not None:
            problems = sorted(validator.iter_errors(result), key=lambda e: list(e.path))
            if problems:
                ok, result = False, None
                first = problems[0]
                error = {"type": "OutputSchemaError", "traceback": "",
                         "message": f"result does not match output_schema: {first.message}",
                         "path": "/".join(str(p) for p in first.absolute_path)}
        self._counters["ok" if ok else "user_errors"] += 1
        return RunResult(
            ok=ok, result=result,
            stdout="".join(line + "\n" for line in out.stdout),
            stderr="".join(line + "\n" for line in out.stderr),
            error=_clean_error(error) if not ok else None,
            host_calls=calls.count, duration_ms=round(duration, 3),
            output_truncated=out.truncated or bool(done.get("truncated")),
        )

    async def isolate_stats(self) -> list[dict[str, Any]]:
        """Per live process, the supervisor's counts (workers, spares, sessions, runs)."""
        procs = [p for p in self._procs if p is not None and p.ready and not p.dead]
        return list(await asyncio.gather(*(p.query_stats() for p in procs)))

    def stats(self) -> dict[str, Any]:
        procs = [p for p in self._procs if p is not None]
        return {
            **self._counters,
            "processes": len(self._procs),
            "alive": sum(1 for p in procs if p.ready and not p.dead),
            "active_runs": sum(p.active for p in procs),
            "sessions": len(self._sessions),
            "rss_bytes": {p.index: p.rss_bytes() for p in procs},
            "pids": [p.pid for p in procs],
        }


@dataclass
class _CallState:
    limit: int
    allowed: set[str]
    count: int = 0


def _output_validator(schema: dict[str, Any] | None) -> jsonschema.protocols.Validator | None:
    if schema is None:
        return None
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidRequest(f"output_schema is not a valid JSON Schema: {exc.message}",
                             field="output_schema") from None
    return cls(schema)


def _clean_error(error: Any) -> dict[str, Any]:
    """Keep only string fields of bounded size from the sandbox's error report."""
    if not isinstance(error, dict):
        return {"type": "Error", "message": "unknown error", "traceback": ""}
    out: dict[str, Any] = {}
    for key in ("type", "message", "traceback", "code", "path"):
        value = error.get(key)
        if isinstance(value, str):
            out[key] = value[:20000]
    out.setdefault("type", "Error")
    out.setdefault("message", "")
    out.setdefault("traceback", "")
    return out
