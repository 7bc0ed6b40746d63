"""One run on one process: the frames it exchanges, its output and host-call budgets, its result.

Everything the process sends is untrusted: frames were checked by the protocol module, output
is capped here again, host calls are counted and allow-listed here, and the result is parsed
and checked here. User-code errors come back as data; anything else raises a SandboxError.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonschema
from referencing.exceptions import Unresolvable

from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ResourceExhausted,
    SandboxCrashed,
    SandboxError,
    SandboxMemory,
    SandboxTimeout,
)
from gateway.sandbox.process import DenoProcess
from gateway.sandbox.protocol import MAX_CALLS_IN_FLIGHT, MAX_FRAME
from gateway.sandbox.types import EventCallback, HostCall, RunResult, SandboxEvent
from gateway.schemas import (
    SchemaTooCostly,
    UnsafePattern,
    check_untrusted,
    untrusted_validator,
    validate_untrusted,
)
from gateway.values import MAX_DEPTH, UnreadableJson, check_input, loads_bounded

__all__ = ["CallState", "Output", "clean_error", "drive", "output_validator", "result_of"]

log = logging.getLogger(__name__)
# What the sandbox says when an allocation was refused (RLIMIT_DATA, wasm or V8 limits).
_MEMORY_TEXT = ("array buffer allocation failed", "out of memory", "memoryerror",
                "cannot allocate memory", "allocation failed")


@dataclass
class Output:
    budget: int
    used: int = 0
    truncated: bool = False
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    # Per stream, the pieces of a line still arriving (events with ``more``).
    pieces: dict[str, list[str]] = field(default_factory=dict)

    def add(self, stream: str, line: str, more: bool = False) -> str | None:
        """Add a line, or a piece of one (``more``: the line goes on in the stream's next
        event), within the byte budget; returns the whole line once it is complete and kept
        (None while it is not, or if nothing of it was kept)."""
        if self.truncated:
            return None
        data = line.encode("utf-8", "replace")
        pieces = self.pieces.setdefault(stream, [])
        # Room for the line's newline is kept while a line is open, so it always fits.
        if self.used + len(data) + 1 > self.budget:
            self.truncated = True
            room = self.budget - self.used - 1
            self.used = self.budget
            if room > 0:
                pieces.append(data[:room].decode("utf-8", "ignore"))
            return self._complete(stream)
        self.used += len(data) + (0 if more else 1)
        pieces.append(line)
        return None if more else self._complete(stream)

    def _complete(self, stream: str) -> str | None:
        pieces = self.pieces.pop(stream, None)
        if not pieces:
            return None
        line = "".join(pieces)
        (self.stderr if stream == "stderr" else self.stdout).append(line)
        return line

    def finish(self) -> None:
        """A line whose last piece never came (the run ended first) is kept as it is."""
        for stream in list(self.pieces):
            self._complete(stream)


@dataclass
class CallState:
    limit: int
    allowed: frozenset[str] | set[str]
    count: int = 0


async def drive(
    proc: DenoProcess,
    run_id: str,
    queue: asyncio.Queue[dict[str, Any]],
    timeout_ms: int,
    kill_grace_s: float,
    out: Output,
    calls: CallState,
    host_call: HostCall,
    on_event: EventCallback | None,
    counters: dict[str, int],
) -> dict[str, Any]:
    """Serve one run's frames until its ``done`` frame; returns it."""
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_ms / 1000 + kill_grace_s
    received = 0
    try:
        while True:
            msg = None
            if loop.time() < deadline:
                try:
                    msg = queue.get_nowait()
                except asyncio.QueueEmpty:
                    # One timer per wait and no task (asyncio.wait_for wraps the get in one).
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout_at(deadline):
                            msg = await queue.get()
            if msg is None:
                # The supervisor did not end the run on time: the process is unresponsive.
                await proc.kill()
                raise SandboxTimeout(f"code ran longer than {timeout_ms} ms")
            kind = msg["t"]
            if kind == "event":
                await _on_output(msg, out, on_event)
            elif kind == "host_call":
                # The supervisor already enforces these; a process that breaks them anyway is
                # not the supervisor we started.
                received += 1
                if received > calls.limit + 1 or len(tasks) >= MAX_CALLS_IN_FLIGHT:
                    raise SandboxCrashed("host calls past the budget or too many in flight")
                task = asyncio.create_task(
                    _serve_call(proc, run_id, msg, calls, host_call, on_event, counters))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            elif kind == "done":
                if tasks:
                    # Calls the code did not wait for may already be at their backend:
                    # finish them within the run's deadline, so each effect is audited with
                    # its real outcome instead of being cut off as "cancelled".
                    await asyncio.wait(set(tasks), timeout=max(0.0, deadline - loop.time()))
                return msg
            elif kind == "_dead":
                raise proc.death or SandboxCrashed("the sandbox process exited")
    finally:
        for task in tasks:
            task.cancel()


async def _on_output(msg: dict[str, Any], out: Output, on_event: EventCallback | None) -> None:
    stream: Literal["stdout", "stderr"] = "stderr" if msg["stream"] == "stderr" else "stdout"
    line = msg["line"]
    if len(line) > max(1, out.budget):
        raise SandboxCrashed("an output line larger than the run's output budget")
    kept = out.add(stream, line, msg.get("more") is True)
    if kept is not None and on_event is not None:
        await on_event(SandboxEvent(kind=stream, data={"line": kept}))


async def _serve_call(
    proc: DenoProcess,
    run_id: str,
    msg: dict[str, Any],
    calls: CallState,
    host_call: HostCall,
    on_event: EventCallback | None,
    counters: dict[str, int],
) -> None:
    call_id, op = msg["call"], msg["op"]
    t0 = time.perf_counter()
    outcome = "ok"
    try:
        calls.count += 1
        counters["host_calls"] += 1
        try:
            if calls.count > calls.limit:
                raise ResourceExhausted(
                    f"host-call budget of {calls.limit} calls is spent", field="max_host_calls")
            if op not in calls.allowed:
                raise InvalidRequest(f"no such SDK operation: {op[:200]}", field="operation")
            args = _host_arguments(msg["args"])
        except GatewayError as exc:
            _record_refusal(host_call, op, exc)
            raise
        value = await host_call(op, args)
        body = json.dumps({"ok": True, "value": value}, allow_nan=False)
    except GatewayError as exc:
        outcome = exc.code
        body = json.dumps({"ok": False, "error": exc.to_dict()}, default=str)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("host call %.200s failed", op)
        outcome = "internal"
        body = json.dumps({"ok": False, "error": {
            "code": "internal", "message": "the host call failed"}})
    try:
        proc.send({"t": "host_result", "id": run_id, "call": call_id, "reply": body})
    except SandboxError:
        # A reply the channel cannot carry (a backend's result past MAX_FRAME): the call is
        # still answered, now, instead of leaving the run waiting until its deadline.
        outcome = "resource_exhausted"
        too_big = ResourceExhausted(
            f"the result of {op[:200]} is too large for the sandbox channel "
            f"({len(body)} bytes of JSON)", field="result",
            details={"max_bytes": MAX_FRAME})
        proc.send({"t": "host_result", "id": run_id, "call": call_id,
                   "reply": json.dumps({"ok": False, "error": too_big.to_dict()})})
    if on_event is not None:
        await on_event(SandboxEvent(kind="host_call", data={
            "operation": op, "outcome": outcome,
            "duration_ms": round((time.perf_counter() - t0) * 1000, 3)}))


def _record_refusal(host_call: HostCall, op: str, error: GatewayError) -> None:
    """A call refused here never reaches ``host_call``; its ``refused`` hook, when it has one
    (the pipeline's host bridge: a ``host_call`` span), still records it, so every call the
    code makes is in the audit trail, not only the ones that got through."""
    hook = getattr(host_call, "refused", None)
    if callable(hook):
        try:
            hook(op, error)
        except Exception:  # recording must not change the answer the code gets
            log.exception("recording a refused host call failed")


def _host_arguments(text: Any) -> dict[str, Any]:
    """A host call's keyword arguments, held to the front door's JSON rules (finite numbers,
    no unpaired surrogates, bounded depth: ``values.check_input``) before anything — the
    policy engine, a digest, a backend — sees them. The code is untrusted: its JSON is too."""
    if not isinstance(text, str):
        raise InvalidRequest("SDK arguments are not JSON", field="arguments")
    try:
        args = loads_bounded(text)
    except UnreadableJson as exc:
        if exc.too_deep:
            raise InvalidRequest(f"arguments: nested more than {MAX_DEPTH} levels deep",
                                 field="arguments", details={"max_depth": MAX_DEPTH}) from None
        raise InvalidRequest(f"SDK arguments are not JSON ({exc})"[:300],
                             field="arguments") from None
    if not isinstance(args, dict):
        raise InvalidRequest("SDK arguments must be keyword arguments", field="arguments")
    check_input(args, "arguments")  # 1e400 parses to inf without passing parse_constant
    return args


async def result_of(
    done: dict[str, Any],
    out: Output,
    calls: CallState,
    duration_ms: float,
    timeout_ms: int,
    memory_mb: int,
    validator: jsonschema.protocols.Validator | None,
    counters: dict[str, int],
) -> RunResult:
    """The RunResult of a ``done`` frame, or the SandboxError it stands for. The caller's
    ``output_schema`` is evaluated in a thread, under its work budget (gateway/schemas.py):
    however costly, it holds up no other caller."""
    status = done.get("status")
    reason = str(done.get("reason") or "")[:2000]
    if status == "timeout":
        counters["timeouts"] += 1
        raise SandboxTimeout(f"code ran longer than {timeout_ms} ms")
    if status == "violation":
        counters["crashes"] += 1
        raise SandboxCrashed(f"the sandbox broke the protocol: {reason}")
    if status == "crashed" and any(m in reason.lower() for m in _MEMORY_TEXT):
        counters["memory"] += 1
        raise SandboxMemory(f"code used more than {memory_mb} MiB")
    if status not in ("ok", "fatal"):
        counters["crashes"] += 1
        raise SandboxCrashed(f"the sandbox worker failed: {reason or status}")
    try:
        # Bounded: a reply nested past MAX_WIRE_DEPTH, an overflowing number, bad syntax are
        # all ValueError — the worker broke the protocol, whatever it sent.
        reply = loads_bounded(str(done.get("reply")))
        ok = reply["ok"]
        error = reply.get("error")
        if not isinstance(ok, bool) or not (error is None or isinstance(error, dict)):
            raise ValueError("bad reply shape")
    except (ValueError, KeyError, TypeError):
        counters["crashes"] += 1
        raise SandboxCrashed("the sandbox sent a malformed result") from None
    if not ok and _is_memory_error(reply):
        counters["memory"] += 1
        raise SandboxMemory(f"code used more than {memory_mb} MiB")
    if status == "fatal":
        counters["crashes"] += 1
        message = str((error or {}).get("message", ""))[:2000]
        raise SandboxCrashed(f"the sandbox interpreter failed: {message}")
    result = reply.get("result") if ok else None
    if ok and validator is not None:
        try:
            problems = await asyncio.to_thread(validate_untrusted, validator, result)
        except (UnsafePattern, Unresolvable, SchemaTooCostly) as exc:
            # A pattern or reference was refused up front (belt and braces); a schema too
            # costly for this result fails the run as the schema's error, never the gateway.
            ok, result, problems = False, None, []
            error = {"type": "OutputSchemaError", "traceback": "", "path": "",
                     "message": f"output_schema cannot be applied: {exc}"}
        if problems:
            ok, result = False, None
            first = problems[0]
            error = {"type": "OutputSchemaError", "traceback": "",
                     "message": f"result does not match output_schema: {first.message}",
                     "path": "/".join(str(p) for p in first.absolute_path)}
    counters["ok" if ok else "user_errors"] += 1
    out.finish()
    return RunResult(
        ok=ok, result=result,
        stdout="".join(line + "\n" for line in out.stdout),
        stderr="".join(line + "\n" for line in out.stderr),
        error=clean_error(error) if not ok else None,
        host_calls=calls.count, duration_ms=round(duration_ms, 3),
        output_truncated=out.truncated or bool(done.get("truncated")),
    )


def _is_memory_error(reply: dict[str, Any]) -> bool:
    """An uncaught refusal of memory: MemoryError in Python, or a JS allocation failure seen
    through pyodide_js. Only the run's own error code depends on it (it cannot widen a limit)."""
    if reply.get("memory_error"):
        return True
    error = reply.get("error") or {}
    text = f"{error.get('type', '')} {error.get('message', '')}".lower()[:4096]
    return any(m in text for m in _MEMORY_TEXT)


def output_validator(schema: dict[str, Any] | None) -> jsonschema.protocols.Validator | None:
    if schema is None:
        return None
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise InvalidRequest(f"output_schema is not a valid JSON Schema: {exc.message}",
                             field="output_schema") from None
    except RecursionError:
        raise InvalidRequest("output_schema is nested too deep to check",
                             field="output_schema") from None
    # The caller's schema: no reference outside itself (never fetched), no pattern that
    # could backtrack (evaluated on RE2), every keyword metered — gateway/schemas.py.
    check_untrusted(schema, "output_schema")
    return untrusted_validator(schema)


def clean_error(error: Any) -> dict[str, Any]:
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
