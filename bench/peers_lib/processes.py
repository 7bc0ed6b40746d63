"""``switchboard serve --processes N`` as a subprocess tree for bench/peers.py (the supervisor
and its N children on one port, SO_REUSEPORT; each child with its own audit file, one SQLite
idempotency store), as bench/toolcall_cpu.py ``--processes N`` runs it. Its CPU is the whole
tree's, from /proc."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from .core import Proc

TOKENS = {
    "dev-agent": {"id": "agent-1", "tenant": "demo", "roles": ["agent"]},
    "dev-finance": {"id": "finance-1", "tenant": "demo", "roles": ["agent", "finance"]},
}


def serve_config(state: Path, backend_url: str, processes: int) -> dict[str, Any]:
    return {
        "listen": "127.0.0.1:0",
        "max_concurrent_rpcs": 1024,
        "server": {"processes": processes},
        "identity": {"tokens": TOKENS},
        "backends": [{"name": "ledger", "openapi": f"{backend_url}/openapi.json",
                      "base_url": backend_url}],
        "idempotency": {"dsn": f"sqlite:///{state / 'idempotency.db'}"},
        "audit": {"file": str(state / "audit.jsonl"), "log_format": "json"},
        "sandbox": {"workers": 1},
    }


def start_serve(state: Path, env: dict[str, str], backend_url: str, processes: int) -> Proc:
    """Starts the tree and returns once it printed ``LISTENING grpc://…`` (``info["grpc"]``)."""
    import yaml

    state.mkdir(parents=True, exist_ok=True)
    config = state / "gateway.yaml"
    config.write_text(yaml.safe_dump(serve_config(state, backend_url, processes)))
    log = (state / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config",
                             str(config), "--processes", str(processes)],
                            stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                            text=True, env=env, cwd=str(state))
    p = Proc(f"serve-p{processes}", proc)
    assert proc.stdout is not None
    port = 0
    for line in proc.stdout:
        if line.startswith("LISTENING grpc://"):
            port = int(line.rsplit(":", 1)[1])
            break
    if not port:
        p.stop()
        tail = (state / "serve.log").read_text()[-1500:]
        raise RuntimeError(f"serve --processes {processes} did not listen: {tail}")
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    p.info = {"grpc": port, "processes": processes}
    return p
