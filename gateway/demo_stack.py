"""``switchboard demo``: start the demo backends and the gateway as real processes on free
ports, run the example agent against them, and stop everything it started."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import yaml

__all__ = ["ServiceProcess", "run_demo", "spawn_service", "write_demo_config"]

REPO = Path(__file__).resolve().parent.parent
_LISTENING = re.compile(r"^LISTENING (\S+)")


class ServiceProcess:
    """A child process that announced ``LISTENING <url>`` on stdout."""

    def __init__(self, name: str, proc: subprocess.Popen[str], url: str) -> None:
        self.name = name
        self.proc = proc
        self.url = url

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def spawn_service(name: str, cmd: Sequence[str], *, env: dict[str, str] | None = None,
                  timeout: float = 90.0, log_file: Path | None = None) -> ServiceProcess:
    """Start ``cmd`` and wait until it prints ``LISTENING <url>``; its other output goes to
    ``log_file`` (or is discarded), so a chatty child never blocks on a full pipe."""
    proc = subprocess.Popen(
        list(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    found: list[str] = []
    ready = threading.Event()
    sink = log_file.open("a") if log_file else None

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            m = _LISTENING.match(line)
            if m and not ready.is_set():
                found.append(m.group(1))
                ready.set()
            elif sink is not None:
                sink.write(line)
                sink.flush()
        ready.set()
        if sink is not None:
            sink.close()

    threading.Thread(target=pump, name=f"{name}-stdout", daemon=True).start()
    try:
        ready.wait(timeout)
    except BaseException:  # interrupted (Ctrl-C, a test timeout): do not leave it running
        proc.kill()
        proc.wait()
        raise
    if not found:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{name} did not start (exit code {proc.returncode}); see {log_file}")
    return ServiceProcess(name, proc, found[0])


def write_demo_config(path: Path, *, ledger_url: str, workspace_url: str, state: Path) -> Path:
    """The demo gateway's config: the embedded principals and the two running backends."""
    config = {
        "listen": "127.0.0.1:0",
        "identity": {"tokens": {
            "dev-agent": {"id": "agent-1", "tenant": "demo", "roles": ["agent"]},
            "dev-finance": {"id": "finance-1", "tenant": "demo", "roles": ["agent", "finance"]},
            "dev-approver": {"id": "approver-1", "tenant": "demo", "roles": ["approver"]},
        }},
        "backends": [
            {"name": "ledger", "openapi": f"{ledger_url}/openapi.json", "base_url": ledger_url},
            {"name": "workspace", "openapi": f"{workspace_url}/openapi.json",
             "base_url": workspace_url},
        ],
        "idempotency": {"dsn": f"sqlite:///{(state / 'idempotency.db').resolve()}"},
        "audit": {"file": str((state / "audit.jsonl").resolve()), "log_format": "json"},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.contextmanager
def demo_services(state: Path) -> Iterator[dict[str, ServiceProcess]]:
    """The ledger, the workspace and the gateway, started in order and always stopped."""
    state.mkdir(parents=True, exist_ok=True)
    log = state / "services.log"
    py = sys.executable
    started: dict[str, ServiceProcess] = {}
    try:
        for name in ("ledger", "workspace"):
            started[name] = spawn_service(
                name, [py, "-m", f"gateway.demo.{name}", "--host", "127.0.0.1", "--port", "0",
                       "--db", str(state / f"{name}.db")], log_file=log)
        config = write_demo_config(state / "gateway.yaml", ledger_url=started["ledger"].url,
                                   workspace_url=started["workspace"].url, state=state)
        started["gateway"] = spawn_service(
            "gateway", [py, "-m", "gateway.cli", "serve", "--config", str(config)],
            log_file=log, timeout=180)  # above the sandbox's own 120 s start limit
        yield started
    finally:
        for svc in reversed(list(started.values())):
            svc.stop()


def run_demo(state_dir: Path) -> int:
    """Start everything, run ``examples/agent.py``, print its report, stop everything."""
    t0 = time.perf_counter()
    with demo_services(state_dir) as services:
        target = services["gateway"].url.removeprefix("grpc://")
        print(f"demo: ledger {services['ledger'].url}, workspace {services['workspace'].url}, "
              f"gateway {target} (ready in {time.perf_counter() - t0:.1f}s)", flush=True)
        agent = REPO / "examples" / "agent.py"
        rc = subprocess.call([sys.executable, str(agent), "--target", target],
                             stdin=subprocess.DEVNULL)
    audit = (state_dir / "audit.jsonl").resolve()
    print(f"demo: stopped all services; audit trail in {audit}")
    print(f"      inspect a call: switchboard audit show <trace_id> --file {audit}")
    return rc
