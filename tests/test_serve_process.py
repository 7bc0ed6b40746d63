"""`switchboard serve` as a real process: SIGTERM drains in-flight calls, exits 0, and leaves
no Deno process behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import yaml
from gateway_support import code_request, md

from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc
from gateway.demo_stack import spawn_service, write_demo_config

BUSY = "import time\nt = time.time()\nwhile time.time() - t < 1.5:\n    pass\n'finished'"


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.add(child)
            todo.append(child)
    return out


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def test_sigterm_drains_in_flight_calls(backends: dict[str, Any], tmp_path: Path) -> None:
    cfg = write_demo_config(tmp_path / "gw.yaml", ledger_url=backends["ledger"].url,
                            workspace_url=backends["workspace"].url, state=tmp_path)
    raw = yaml.safe_load(cfg.read_text())
    raw["sandbox"] = {"workers": 1, "spares": 1}
    cfg.write_text(yaml.safe_dump(raw))
    gw = spawn_service("gateway", [sys.executable, "-m", "gateway.cli", "serve", "--config",
                                   str(cfg)], log_file=tmp_path / "gw.log")
    try:
        target = gw.url.removeprefix("grpc://")
        deno = {p for p in _descendants(gw.proc.pid)}
        assert deno, "the sandbox pool should have started Deno processes"
        result: dict[str, Any] = {}
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.GatewayStub(channel)

            def call() -> None:
                try:
                    result["response"] = stub.Execute(code_request(BUSY, timeout_ms=5000),
                                                      metadata=md("dev-agent"), timeout=30)
                except grpc.RpcError as err:  # pragma: no cover - reported below
                    result["error"] = err

            worker = threading.Thread(target=call)
            worker.start()
            time.sleep(0.5)  # the run is in flight
            gw.proc.send_signal(signal.SIGTERM)
            worker.join(30)
        assert "error" not in result, result
        assert result["response"].result.string_value == "finished"
        assert gw.proc.wait(30) == 0
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in deno) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in deno), "Deno processes outlived the gateway"
    finally:
        gw.stop()


def test_serve_starts_the_mcp_front_door(backends: dict[str, Any], tmp_path: Path) -> None:
    import asyncio

    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    cfg = write_demo_config(tmp_path / "gw.yaml", ledger_url=backends["ledger"].url,
                            workspace_url=backends["workspace"].url, state=tmp_path)
    raw = yaml.safe_load(cfg.read_text())
    raw["sandbox"] = {"workers": 1, "spares": 1}
    raw["mcp"] = {"enabled": True, "listen": "127.0.0.1:0"}
    cfg.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
        assert lines[0].startswith("LISTENING grpc://127.0.0.1:")
        assert lines[1].startswith("LISTENING mcp http://127.0.0.1:")
        url = lines[1].split()[-1]

        async def list_tools() -> set[str]:
            headers = {"Authorization": "Bearer dev-finance"}
            async with (
                httpx2.AsyncClient(headers=headers, timeout=60) as http,
                Client(streamable_http_client(url, http_client=http)) as client,  # type: ignore[arg-type]
            ):
                return {t.name for t in (await client.list_tools()).tools}

        names = asyncio.run(list_tools())
        assert {"search_operations", "describe_operation", "execute_code"} <= names
        assert any("create_transfer" in n for n in names)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
