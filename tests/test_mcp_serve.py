"""``switchboard serve`` with ``mcp.enabled``: one process serves gRPC and MCP from the same
event loop; an MCP client and a gRPC client see the same identity, policy and backends."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from waiting import scaled

from gateway.client import SwitchboardClient

REPO = Path(__file__).resolve().parents[1]
# "LISTENING grpc://HOST:PORT" then "LISTENING mcp http://HOST:PORT/mcp"
_LISTENING = re.compile(r"^LISTENING (?:(mcp) )?(grpc://)?(\S+)")


def start_serve(state: Path) -> tuple[subprocess.Popen[str], dict[str, str]]:
    config = {
        "listen": "127.0.0.1:0",
        "identity": {
            "tokens": {
                "dev-agent": {"id": "agent-1", "tenant": "demo", "roles": ["agent"]},
                "dev-finance": {"id": "finance-1", "tenant": "demo", "roles": ["agent", "finance"]},
            }
        },
        "backends": [
            {"name": "ledger", "app": "gateway.demo.ledger:app"},
            {"name": "workspace", "app": "gateway.demo.workspace:app"},
        ],
        "idempotency": {"dsn": f"sqlite:///{state / 'idempotency.db'}"},
        "audit": {"file": str(state / "audit.jsonl"), "log_format": "json"},
        "sandbox": {"workers": 1},
        "mcp": {"enabled": True, "listen": "127.0.0.1:0"},
    }
    cfg = state / "gateway.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "LEDGER_DB": str(state / "ledger.db"),
        "WORKSPACE_DB": str(state / "workspace.db"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg)],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    urls: dict[str, str] = {}
    log: list[str] = []
    try:
        for line in proc.stdout:
            log.append(line)
            m = _LISTENING.match(line)
            if m:
                urls["mcp" if m.group(1) else "grpc"] = m.group(3)
            if len(urls) == 2:
                break
    except BaseException:  # e.g. the test's timeout: never leak a running gateway
        proc.kill()
        proc.wait()
        raise
    if len(urls) != 2:
        proc.kill()
        pytest.fail("serve did not announce both listeners:\n" + "".join(log[-40:]))
    # keep draining so a chatty gateway never blocks on a full pipe
    threading.Thread(target=lambda: [None for _ in proc.stdout or ()], daemon=True).start()
    return proc, urls


async def test_mcp_and_grpc_from_one_serve_process(tmp_path: Path) -> None:
    proc, urls = start_serve(tmp_path)
    try:
        mcp_url, target = urls["mcp"], urls["grpc"]
        assert re.match(r"^http://127\.0\.0\.1:\d+/mcp$", mcp_url)
        code = "from sdk import ledger\nledger.get_balance(account='A4')['currency']"
        async with (
            httpx2.AsyncClient(headers={"Authorization": "Bearer dev-finance"}, timeout=60) as h,
            Client(streamable_http_client(mcp_url, http_client=h)) as mcp,  # type: ignore[arg-type]
        ):
            names = [t.name for t in (await mcp.list_tools()).tools]
            result = await mcp.call_tool("execute_code", {"code": code})
        # The meta-tools, then the dedicated tools the policy's `advertise` rule names for a
        # finance principal (the ledger's payments-tagged operations).
        assert names[:3] == ["search_operations", "describe_operation", "execute_code"]
        assert set(names[3:]) == {"ledger__create_transfer", "ledger__get_transfer",
                                  "ledger__list_transfers"}
        assert result.structured_content is not None
        assert result.structured_content["result"] == "EUR"
        with SwitchboardClient(target, "dev-finance", timeout=60) as sb:
            via_grpc = sb.manifest()
            res = sb.run_code(code)
        assert [t.name for t in via_grpc.tools] == names  # the same manifest on both doors
        assert res.result == "EUR"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code_ = proc.wait(scaled(60))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
    assert code_ == 0  # SIGTERM drains both listeners and exits cleanly
    with pytest.raises(httpx.ConnectError):
        httpx.post(mcp_url, json={}, timeout=5)
    # the MCP call's trace is in the audit file, readable with the same CLI as gRPC calls
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "audit",
            "show",
            result.structured_content["trace_id"],
            "--file",
            str(tmp_path / "audit.jsonl"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "mcp tools/call execute_code" in shown.stdout and "sandbox.run" in shown.stdout
    assert "finance-1" in shown.stdout
