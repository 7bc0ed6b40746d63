"""Waiting in tests: on a condition, with a deadline sized for a loaded machine.

A test never asserts how fast something happened — speed is measured in ``bench/``. It checks
the outcome and the order of events; where it must wait, it waits for a condition, and the
deadline only turns a hang into a failure. Deadlines here are generous (a 2-core box at load
average 10 runs everything several times slower); ``SWITCHBOARD_TEST_LOAD_FACTOR`` (a number,
default 1) multiplies them all for an even slower machine.

- :func:`scaled`: a deadline in seconds, times the load factor;
- :func:`bound`: a generous upper bound for something a configured limit ends (the limit plus
  a scaled slack) — the only kind of duration bound a test may assert;
- :func:`wait_until` (async) and :func:`wait_until_sync`: poll a predicate until it returns
  something truthy, return that value, or fail with ``what`` once the deadline passed;
- :func:`wait_for_listening`: the address a ``switchboard serve`` child prints once it listens.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["LOAD_FACTOR", "bound", "scaled", "wait_for_listening", "wait_until",
           "wait_until_sync"]


def _load_factor() -> float:
    raw = os.environ.get("SWITCHBOARD_TEST_LOAD_FACTOR", "").strip()
    try:
        return max(1.0, float(raw)) if raw else 1.0
    except ValueError:
        return 1.0


LOAD_FACTOR = _load_factor()
DEFAULT_TIMEOUT_S = 120.0


def scaled(seconds: float) -> float:
    """``seconds`` times the load factor: the deadline to give a wait."""
    return seconds * LOAD_FACTOR


def bound(limit_s: float, slack_s: float = 60.0) -> float:
    """A generous upper bound for something that a configured limit of ``limit_s`` ends: the
    limit itself plus ``slack_s`` (scaled) for a busy machine. Asserting ``elapsed < bound(..)``
    still catches a limit that is ignored (a hang until some far longer deadline)."""
    return limit_s + scaled(slack_s)


def wait_until_sync(pred: Callable[[], T], timeout_s: float = DEFAULT_TIMEOUT_S,
                    interval: float = 0.05, what: str = "") -> T:
    """Call ``pred`` until it returns something truthy and return it; ``AssertionError`` once
    ``scaled(timeout_s)`` passed (the predicate is always tried once more at the deadline)."""
    deadline = time.monotonic() + scaled(timeout_s)
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {scaled(timeout_s):.0f} s: {what or pred}")
        time.sleep(interval)


async def wait_until(pred: Callable[[], Any], timeout_s: float = DEFAULT_TIMEOUT_S,
                     interval: float = 0.05, what: str = "") -> Any:
    """The async :func:`wait_until_sync`; ``pred`` may be a plain or an async callable."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(timeout_s)
    while True:
        value = pred()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"not within {scaled(timeout_s):.0f} s: {what or pred}")
        await asyncio.sleep(interval)


def wait_for_listening(proc: subprocess.Popen[str], log: Path, what: str = "serve",
                       timeout_s: float = 240.0) -> str:
    """``host:port`` from the ``LISTENING grpc://`` line a serve child prints on stdout; then
    keeps draining stdout (a chatty server never blocks on a full pipe). Fails with the tail
    of ``log`` (its stderr) if it exits first or the scaled deadline passes (the default is
    above the sandbox's own start limit)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + scaled(timeout_s)
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("LISTENING grpc://"):
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return line.split("grpc://", 1)[1].strip()
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"{what} did not start: {log.read_text()[-3000:]}")
