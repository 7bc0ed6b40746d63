"""What bench/peers.py and its floors share: process-tree CPU from /proc, the started-process
handle and the tool-call target interface."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

CLK_TCK = os.sysconf("SC_CLK_TCK")


def pct(xs: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest rank."""
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


# -- process-tree CPU ---------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid`` and every live descendant (plus the reaped children they waited
    for): utime + stime + cutime + cstime from /proc."""
    kids = _children()
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])
        todo.extend(kids.get(p, ()))
    return total / CLK_TCK


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            with suppress(OSError):
                if self.proc.stdin:
                    self.proc.stdin.close()
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class ProcHost(Protocol):
    """What a runner needs of bench/peers.py's ``Stack``: a temp dir, the processes to stop."""

    tmp: Path
    procs: list[Proc]


class Target:
    name = ""
    pid: int | None = None
    last_error = ""

    async def open(self) -> None: ...

    async def call(self) -> bool:  # True: the expected outcome
        raise NotImplementedError

    async def close(self) -> None: ...

    @asynccontextmanager
    async def caller(self) -> AsyncIterator[Target]:
        """A caller of this target for the concurrent phase: itself (one shared connection)."""
        yield self

