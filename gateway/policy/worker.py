"""The policy worker: a process that evaluates Rego for one gateway process, one rule at a time.

regorus holds the GIL for a whole evaluation and has no time limit, so a slow rule evaluated
in the gateway would stall every caller of it. Here it stalls only this process, which the
gateway kills (SIGKILL) once a decision overruns its deadline; a crash (a Rust panic that
aborts, a segfault, OOM) ends this process only. Frames: :mod:`.worker_protocol`.

Run as a script (``python gateway/policy/worker.py PARENT_PID``), not with ``-m``: the gateway
package is never imported, so a worker starts fast and small. It exits when its stdin reaches
EOF (the gateway closed it, or died) and, on Linux, when the process that started it dies
(PR_SET_PDEATHSIG), even in the middle of an evaluation that never reads stdin again.

:func:`evaluate_rule`, :func:`compile_engine`, :func:`probe_engine`, :func:`clean_error` and
:func:`engine_failure` are also what the in-process evaluator (``policy check``/``test``)
uses: one set of error texts for both.

Loading a revision is checked here too (``check``: compile + probe, under the same deadline as
a decision, scaled): a revision that is slow to compile or probe, or that crashes the engine,
costs this process, never the gateway's.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import regorus

if __package__:
    from .worker_protocol import GATEWAY_FRAMES, MAX_FRAME, FrameError, FrameReader, encode
else:  # run as a script: the sibling module, without the gateway package
    from worker_protocol import (  # type: ignore[import-not-found,no-redef]
        GATEWAY_FRAMES,
        MAX_FRAME,
        FrameError,
        FrameReader,
        encode,
    )

__all__ = ["REVISIONS_KEPT", "RuleFailed", "clean_error", "compile_engine", "engine_failure",
           "evaluate_rule", "main", "probe_engine"]

REVISIONS_KEPT = 2  # compiled revisions a worker keeps: the serving one and the one before


class RuleFailed(Exception):
    """The rule has no value; ``str()`` is the fail-closed reason."""


def engine_failure(exc: BaseException) -> bool:
    """True for errors an engine call may raise, including pyo3's PanicException (a Rust
    panic, which derives from BaseException); False for interpreter/task control flow."""
    if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
        return False
    # No asyncio import here (it would cost a worker ~9 MiB): without it, no task exists.
    aio = sys.modules.get("asyncio")
    return aio is None or not isinstance(exc, aio.CancelledError)


def clean_error(exc: BaseException) -> str:
    """regorus messages end in a Rust backtrace; keep the part a human needs."""
    text = str(exc).split("Stack backtrace:", 1)[0].strip()
    return re.sub(r"\n\s*\n", "\n", text) or type(exc).__name__


def evaluate_rule(engine: regorus.Engine, input: Any, rule: str) -> Any:
    """The rule's value (None when undefined or null); RuleFailed with the reason otherwise.
    ``input`` must be what orjson can write (the caller checks: see Evaluator.evaluate)."""
    try:
        engine.set_input(input)
        # eval_rule, not eval_rule_as_json: the JSON variant renders undefined as the
        # string "<undefined>", and the native one is ~25 % faster.
        return engine.eval_rule(rule)
    except Exception as exc:
        if "not a valid rule path" in str(exc):  # no module defines the rule
            raise RuleFailed(f"{rule} is undefined: no policy file defines it") from exc
        raise RuleFailed(f"policy evaluation failed: {clean_error(exc)}") from exc
    except BaseException as exc:  # pyo3 PanicException derives from BaseException
        if not engine_failure(exc):
            raise
        raise RuleFailed(f"policy engine panicked: {clean_error(exc)}") from exc


def compile_engine(modules: Any, data: Any) -> regorus.Engine:
    """A regorus Engine holding ``modules`` (``[(relative path, source), ...]``) and ``data``;
    RuleFailed with a readable reason (``<file>: ...`` or ``data: ...``) when they do not
    compile."""
    engine = regorus.Engine()
    for name, source in modules:
        with _failing_as(name):
            engine.add_policy(name, source)
    with _failing_as("data"):
        engine.add_data(data)
    return engine


@contextlib.contextmanager
def _failing_as(what: str) -> Iterator[None]:
    """An engine error inside as RuleFailed (``<what>: reason``); any other error propagates."""
    try:
        yield
    except BaseException as exc:  # pyo3 PanicException derives from BaseException
        if not engine_failure(exc):
            raise
        raise RuleFailed(f"{what}: {clean_error(exc)}") from exc


def probe_engine(engine: regorus.Engine, probe_input: Any, entrypoint: str) -> tuple[bool, Any]:
    """Evaluate every package once, as OPA compiles every rule up front; return (defined,
    value) of ``entrypoint`` on ``probe_input``. RuleFailed (``<rule or package>: ...``) when
    a rule errs: regorus only reports unsafe variables, unknown functions and similar errors
    for rules it evaluates, so a broken rule the entrypoint does not reach would otherwise be
    accepted. A missing entrypoint is *not* an error (OPA loads such a bundle and answers
    undefined)."""
    engine.set_input(probe_input)
    with _failing_as(entrypoint):
        # eval_query, not eval_rule: eval_rule raises "not a valid rule path" for a rule no
        # module defines and returns None for both undefined and null; eval_query answers []
        # when undefined.
        results = engine.eval_query(entrypoint).get("result", [])
    for package in engine.get_packages():
        with _failing_as(package):
            engine.eval_query(package)
    if not results:
        return False, None
    return True, results[0]["expressions"][0]["value"]


def _compile(frame: dict[str, Any]) -> regorus.Engine | str:
    """An engine for a ``load`` frame, or why the worker could not build one."""
    try:
        return compile_engine(frame["modules"], frame["data"])
    except RuleFailed as exc:
        return f"the policy worker could not compile revision {frame['rev']}: {exc}"


def _check(frame: dict[str, Any]) -> dict[str, Any]:
    """The answer to a ``check``: compile, probe, and the AST (for the gateway's cache key);
    nothing is kept (a ``load`` follows if the revision is to serve)."""
    try:
        engine = compile_engine(frame["modules"], frame["data"])
        defined, value = probe_engine(engine, frame["probe_input"], frame["entrypoint"])
        ast = engine.get_ast_as_json()
    except RuleFailed as exc:
        return {"t": "error", "id": frame["id"], "error": str(exc),
                "cpu_ns": time.thread_time_ns()}
    except BaseException as exc:  # get_ast_as_json may fail as any engine call may
        if not engine_failure(exc):
            raise
        return {"t": "error", "id": frame["id"], "error": clean_error(exc),
                "cpu_ns": time.thread_time_ns()}
    return {"t": "checked", "id": frame["id"], "defined": defined, "value": value, "ast": ast,
            "cpu_ns": time.thread_time_ns()}


def _answer(engines: dict[str, regorus.Engine | str], frame: dict[str, Any]) -> dict[str, Any]:
    engine = engines.get(frame["rev"])
    if engine is None:
        return {"t": "error", "id": frame["id"],
                "error": f"the policy worker has not loaded revision {frame['rev']}",
                "cpu_ns": time.thread_time_ns()}
    if isinstance(engine, str):
        return {"t": "error", "id": frame["id"], "error": engine,
                "cpu_ns": time.thread_time_ns()}
    try:
        value = evaluate_rule(engine, frame["input"], frame["rule"])
    except RuleFailed as exc:
        return {"t": "error", "id": frame["id"], "error": str(exc),
                "cpu_ns": time.thread_time_ns()}
    return {"t": "value", "id": frame["id"], "value": value, "cpu_ns": time.thread_time_ns()}


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def serve(in_fd: int, out_fd: int) -> int:
    """Answer frames until stdin's EOF (0) or a broken frame (3)."""
    reader = FrameReader(GATEWAY_FRAMES, MAX_FRAME)
    engines: dict[str, regorus.Engine | str] = {}
    _write(out_fd, encode({"t": "ready", "pid": os.getpid(), "cpu_ns": time.thread_time_ns()}))
    while True:
        chunk = os.read(in_fd, 1 << 20)
        if not chunk:
            return 0
        try:
            for frame in reader.feed(chunk):
                if frame["t"] == "load":
                    rev = frame["rev"]
                    known = engines.pop(rev, None)
                    engines[rev] = _compile(frame) if known is None else known
                    while len(engines) > REVISIONS_KEPT:
                        del engines[next(iter(engines))]
                elif frame["t"] == "check":
                    _write(out_fd, encode(_check(frame)))
                else:
                    _write(out_fd, encode(_answer(engines, frame)))
        except FrameError as exc:
            print(f"policy worker: {exc}", file=sys.stderr)
            return 3


def _die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    if parent and os.getppid() != parent:  # it died before the prctl
        os._exit(0)


def main(argv: list[str]) -> int:
    _die_with_parent(int(argv[1]) if len(argv) > 1 else 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the gateway's to handle
    out_fd = os.dup(1)
    os.dup2(2, 1)  # anything printed goes to the log, never into the protocol
    return serve(0, out_fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
