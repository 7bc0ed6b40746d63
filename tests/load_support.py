"""Helpers for the fault, hostile-input and isolation tests (and the load/soak benchmarks).

- ``/proc`` readers: children, descendants, RSS, CPU ticks, which processes are Deno;
- :func:`refused_port`: a loopback port that is bound but never listens (connects are refused);
- :class:`FaultyBackend`: a real HTTP server on port 0 that serves the demo ledger's OpenAPI
  document but answers its operations slowly or with garbage, counting every request;
- :func:`policy_copy`: the shipped Rego policy with edited tenant data, in a temp directory;
- :class:`GatewayProcess`: ``switchboard serve --config FILE`` as a real subprocess (so its
  Deno children can be found and killed through ``/proc``).

Everything binds loopback port 0; nothing here reaches the network.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import yaml
from waiting import scaled

REPO = Path(__file__).resolve().parent.parent

__all__ = [
    "FaultyBackend",
    "GatewayProcess",
    "alive",
    "children",
    "cpu_ticks",
    "deno_descendants",
    "descendants",
    "is_deno",
    "ledger_spec",
    "policy_copy",
    "refused_port",
    "rss_bytes",
    "wait_for",
]


# -- /proc ---------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all its threads), from ``/proc/PID/task/*/children``."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out.extend(int(p) for p in fh.read().split())
        except OSError:
            continue
    return sorted(set(out))


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first)."""
    seen: list[int] = []
    todo = children(pid)
    while todo:
        p = todo.pop(0)
        if p in seen:
            continue
        seen.append(p)
        todo.extend(children(p))
    return seen


def _status(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/status") as fh:
            return dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)
    except OSError:
        return {}


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (0 when it is gone)."""
    value = _status(pid).get("VmRSS", "0 kB").split()[0]
    return int(value) * 1024


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    state = _status(pid).get("State", "")
    return bool(state) and not state.startswith("Z")


def cpu_ticks(pid: int) -> int:
    """utime + stime of ``pid`` in clock ticks (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
    except OSError:
        return 0
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def is_deno(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv0 = fh.read().split(b"\0", 1)[0]
    except OSError:
        return False
    return os.path.basename(argv0) == b"deno"


def deno_descendants(pid: int) -> list[int]:
    """Live Deno processes anywhere below ``pid``."""
    return [p for p in descendants(pid) if is_deno(p) and alive(p)]


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy or ``timeout`` (times the load
    factor, see ``waiting.py``) passes; returns its last value."""
    deadline = time.monotonic() + scaled(timeout)
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# -- network faults ------------------------------------------------------------------------


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port bound but not listening: every connect gets ECONNREFUSED, and no other
    process can take the port while the context is open."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def ledger_spec() -> dict[str, Any]:
    """The demo ledger's OpenAPI document (importing the app touches no file)."""
    from gateway.demo.ledger import create_app

    spec: dict[str, Any] = create_app("/nonexistent/ledger.db").openapi()
    return spec


class FaultyBackend:
    """An HTTP backend that serves the ledger's OpenAPI document at ``/openapi.json`` and
    answers every other request according to ``mode``:

    - ``"slow"``: sleeps ``delay_s`` and then answers valid JSON;
    - ``"garbage"``: answers 200 with ``Content-Type: application/json`` and a non-JSON body.

    ``hits`` counts requests per ``METHOD path`` (without the OpenAPI fetch); ``answered``
    counts the slow answers once their delay is over (whether or not the client still waits),
    so a test can tell which came first: the gateway giving up or the backend answering.
    """

    def __init__(self, mode: str, *, delay_s: float = 5.0) -> None:
        self.mode = mode
        self.delay_s = delay_s
        self.hits: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self._lock = threading.Lock()
        spec = json.dumps(ledger_spec()).encode()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _answer(self, status: int, body: bytes) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (timeout): nothing to answer
                    pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if self.path.split("?")[0] == "/openapi.json":
                    self._answer(200, spec)
                    return
                key = f"{self.command} {self.path.split('?')[0]}"
                with owner._lock:
                    owner.hits[key] += 1
                if owner.mode == "slow":
                    time.sleep(owner.delay_s)
                    with owner._lock:
                        owner.answered[key] += 1
                    self._answer(200, b'{"account": "A1", "balance": 1.0, "currency": "USD", '
                                      b'"as_of": "2026-01-01T00:00:00Z"}')
                else:
                    self._answer(200, b"<html>\x00\xff not json at all {")

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name=f"faulty-{mode}")
        self._thread.start()

    def total(self) -> int:
        with self._lock:
            return sum(self.hits.values())

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# -- policy --------------------------------------------------------------------------------


def policy_copy(dest: Path, tenants: dict[str, Any],
                role_limits: dict[str, dict[str, Any]] | None = None) -> Path:
    """A copy of the shipped policy whose ``tenants`` data is replaced by ``tenants`` (and
    whose per-role limits gain ``role_limits``, e.g. ``{"patient": {"timeout_ms": 600000}}``)."""
    src = REPO / "policies"
    shutil.copytree(src, dest, dirs_exist_ok=True)
    data_file = dest / "switchboard" / "data.json"
    data = json.loads(data_file.read_text())
    data["tenants"] = tenants
    if role_limits:
        data["limits"]["roles"].update(role_limits)
    data_file.write_text(json.dumps(data, indent=2))
    return dest


# -- a gateway subprocess ------------------------------------------------------------------


class GatewayProcess:
    """``python -m gateway.cli serve --config FILE`` as a real child process."""

    def __init__(self, config: dict[str, Any], state: Path, *, timeout: float = 240.0) -> None:
        from gateway.demo_stack import spawn_service

        state.mkdir(parents=True, exist_ok=True)
        self.state = state
        self.config_file = state / "gateway.yaml"
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_file = state / "gateway.log"
        self.svc = spawn_service(
            "gateway", [sys.executable, "-m", "gateway.cli", "serve", "--config",
                        str(self.config_file)],
            log_file=self.log_file, timeout=scaled(timeout))
        self.target = self.svc.url.removeprefix("grpc://")
        self.pid = self.svc.proc.pid
        self.channel = grpc.insecure_channel(self.target)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def healthy(self, timeout: float = 30.0) -> bool:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    def stop(self) -> int:
        self.channel.close()
        return self.svc.stop(timeout=scaled(60))
