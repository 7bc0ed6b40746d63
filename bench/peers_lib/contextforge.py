"""IBM ContextForge for bench/peers.py: its venv (``make bench-peers``), started on a free port
with a SQLite DB and the fast backend registered as a REST tool."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from contextlib import suppress
from pathlib import Path

from .core import Proc, ProcHost, free_port

REPO = Path(__file__).resolve().parents[2]
CF_VENV = REPO / ".cache" / "peers" / "contextforge-venv"


def contextforge_missing() -> str | None:
    if not (CF_VENV / "bin" / "mcpgateway").exists():
        return f"ContextForge is not installed in {CF_VENV.relative_to(REPO)}"
    return None


def start_contextforge(stack: ProcHost, backend_url: str) -> tuple[Proc, str, str, str]:
    """ContextForge on a free port with a SQLite DB, the fast backend registered as a REST
    tool; returns (process, MCP url, bearer token, tool name)."""
    import httpx

    home = stack.tmp / "contextforge"
    home.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({
        "HOME": str(home), "DATABASE_URL": f"sqlite:///{home / 'mcp.db'}",
        "JWT_SECRET_KEY": secrets.token_hex(32), "AUTH_ENCRYPTION_SECRET": secrets.token_hex(32),
        "PLATFORM_ADMIN_EMAIL": "admin@example.com",
        "PLATFORM_ADMIN_PASSWORD": "Bp-" + secrets.token_hex(12) + "!",
        "DEFAULT_USER_PASSWORD": "Bp-" + secrets.token_hex(12) + "!",
        "SSRF_ALLOW_LOCALHOST": "true",  # the backend is on loopback
        # Its default rate limit (100 MCP requests a minute per user) would be the figure
        # measured; this measures the gateway's capacity instead.
        "RATE_LIMITING_ENABLED": "false",
        "MCPGATEWAY_UI_ENABLED": "false", "MCPGATEWAY_ADMIN_API_ENABLED": "true",
    })
    log = (home / "contextforge.log").open("w")
    proc = subprocess.Popen([str(CF_VENV / "bin" / "mcpgateway"), "--host", "127.0.0.1",
                             "--port", str(port)], cwd=home, env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    p = Proc("contextforge", proc)
    stack.procs.append(p)
    base = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            raise RuntimeError(
                f"ContextForge exited {proc.returncode}; see {home}/contextforge.log")
        with suppress(httpx.HTTPError):
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        if time.monotonic() > deadline:
            raise RuntimeError("ContextForge did not become healthy in 300 s")
        time.sleep(0.25)
    p.info["start_s"] = time.perf_counter() - t0
    token = subprocess.run(
        [str(CF_VENV / "bin" / "python"), "-m", "mcpgateway.utils.create_jwt_token",
         "-u", "admin@example.com", "--admin", "--exp", "240"], cwd=home, env=env,
        capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    r = httpx.post(f"{base}/tools", headers={"Authorization": f"Bearer {token}"}, timeout=60,
                   json={"tool": {"name": "get_balance", "integration_type": "REST",
                                  "request_type": "GET",
                                  "url": f"{backend_url}/accounts/A1/balance",
                                  "input_schema": {"type": "object", "properties": {}}}})
    r.raise_for_status()
    version = subprocess.run([str(CF_VENV / "bin" / "python"), "-c",
                              "import mcpgateway; print(mcpgateway.__version__)"], env=env,
                             capture_output=True, text=True).stdout.strip()
    p.info["version"] = version
    return p, f"{base}/mcp/", token, str(r.json()["name"])


