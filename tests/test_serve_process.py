"""`switchboard serve` as a real process: SIGTERM drains in-flight calls, exits 0, and leaves
no Deno process behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import yaml
from gateway_support import code_request, md
from waiting import scaled, wait_until_sync

from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc
from gateway.demo_stack import spawn_service, write_demo_config

# Prints first, so the test knows the run is in flight (not merely sent) before SIGTERM.
BUSY = ("import time\nprint('started', flush=True)\nt = time.time()\n"
        "while time.time() - t < 1.5:\n    pass\n'finished'")


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
    raw["sandbox"] = {"workers": 1}
    cfg.write_text(yaml.safe_dump(raw))
    gw = spawn_service("gateway", [sys.executable, "-m", "gateway.cli", "serve", "--config",
                                   str(cfg)], log_file=tmp_path / "gw.log",
                     timeout=scaled(240))
    try:
        target = gw.url.removeprefix("grpc://")
        deno = {p for p in _descendants(gw.proc.pid)}
        assert deno, "the sandbox pool should have started Deno processes"
        result: dict[str, Any] = {}
        started = threading.Event()
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.GatewayStub(channel)

            def call() -> None:
                try:
                    for event in stub.ExecuteStream(code_request(BUSY, timeout_ms=5000),
                                                    metadata=md("dev-agent"),
                                                    timeout=scaled(120)):
                        kind = event.WhichOneof("event")
                        if kind == "stdout_line":
                            started.set()
                        elif kind == "response":
                            result["response"] = event.response
                except grpc.RpcError as err:  # pragma: no cover - reported below
                    result["error"] = err
                finally:
                    started.set()  # never leave the test waiting on a call that ended

            worker = threading.Thread(target=call)
            worker.start()
            assert started.wait(scaled(120)), "the run never started"
            assert not result, f"the call ended before SIGTERM: {result}"
            gw.proc.send_signal(signal.SIGTERM)  # the run is in flight: it printed
            worker.join(scaled(120))
            assert not worker.is_alive(), "the in-flight call hung after SIGTERM"
        assert "error" not in result, result
        assert result["response"].result.string_value == "finished"
        assert gw.proc.wait(scaled(120)) == 0
        wait_until_sync(lambda: not any(_alive(p) for p in deno), 60, interval=0.1,
                        what="Deno processes outlived the gateway")
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
    raw["sandbox"] = {"workers": 1}
    raw["mcp"] = {"enabled": True, "listen": "127.0.0.1:0"}
    cfg.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            stdin=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        # The LISTENING lines, in order; log lines (a warning, say) may come before them.
        lines: list[str] = []
        for _ in range(200):
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("LISTENING "):
                lines.append(line)
                if len(lines) == 2:
                    break
        assert len(lines) == 2, lines
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
        assert proc.wait(scaled(120)) == 0
