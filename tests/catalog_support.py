"""Helpers for the catalog and demo-backend tests: run a demo service as a real subprocess on
a free loopback port and find its address from the ``LISTENING`` line it prints."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from waiting import scaled

__all__ = ["GITHUB_SPEC", "QUERIES", "DemoService", "demo_service"]

ROOT = Path(__file__).resolve().parent.parent
GITHUB_SPEC = ROOT / "runtimes/node_modules/@octokit/openapi/generated/api.github.com.json"
QUERIES = Path(__file__).resolve().parent / "data/github_search_queries.json"


@dataclass
class DemoService:
    proc: subprocess.Popen[str]
    url: str
    db: Path

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=timeout)


def _read_listening(proc: subprocess.Popen[str], deadline: float) -> str:
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            if line.startswith("LISTENING "):
                return line.split(" ", 1)[1].strip()
            if not line and proc.poll() is not None:
                break
        elif proc.poll() is not None:
            break
    err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
    raise RuntimeError(f"demo service did not start (rc={proc.poll()}): {err[-2000:]}")


@contextmanager
def demo_service(
    module: str, db: Path, *extra: str, env: dict[str, str] | None = None
) -> Iterator[DemoService]:
    """``python -m gateway.demo.<module> --port 0 --db DB``; stopped (SIGTERM) on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", f"gateway.demo.{module}", "--host", "127.0.0.1", "--port", "0",
         "--db", str(db), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )
    service = None
    try:
        url = _read_listening(proc, time.monotonic() + scaled(120))
        service = DemoService(proc, url, db)
        httpx.get(f"{url}/healthz", timeout=30).raise_for_status()
        yield service
    finally:
        if service is not None:
            service.stop()
        elif proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
