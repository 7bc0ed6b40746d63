"""The floors under Switchboard's figures, measured in the same bench/peers.py run:

* a bare grpc.aio unary echo server (its own process, the gateway's server options, no
  interceptor, no protobuf, no work), driven like the gateway's tool calls: the floor for any
  gRPC front door in Python on this machine;
* a bare Deno + Pyodide restore (bench/restore_floor.ts: a new worker restoring the snapshot with
  the shared compiled module, nothing else): what each fresh interpreter costs;
* a session run straight on a ``SandboxPool`` (bench/code_speed.py ``--pool-child``: no gateway,
  no gRPC), so the gateway's share of a session run is the difference.

``python -m peers_lib.floors --serve-echo`` (``bench/`` on ``PYTHONPATH``) is the echo server's
process.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from .core import Target

REPO = Path(__file__).resolve().parents[2]
ECHO_SERVICE, ECHO_NAME = "bench.Echo", "Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/{ECHO_NAME}"
MAX_CONCURRENT_RPCS = 1024  # as bench/peers.py's gateway


def echo_server_options() -> list[tuple[str, int]]:
    """The channel options ``gateway.server.create_server`` gives its server (one process)."""
    from gateway.config import Settings

    limit = Settings().max_message_bytes
    return [("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit), ("grpc.so_reuseport", 0)]


async def start_echo_server(listen: str = "127.0.0.1:0") -> tuple[Any, int]:
    """A grpc.aio server whose one unary method returns its request bytes; (server, port)."""
    import grpc

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    server = grpc.aio.server(options=echo_server_options(),
                             maximum_concurrent_rpcs=MAX_CONCURRENT_RPCS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        ECHO_SERVICE, {ECHO_NAME: grpc.unary_unary_rpc_method_handler(echo)}),))
    port = server.add_insecure_port(listen)
    await server.start()
    return server, port


def serve_echo() -> None:
    """The echo server's process: prints ``{"grpc": port}``, serves until stdin closes."""

    async def main() -> None:
        server, port = await start_echo_server()
        print(json.dumps({"grpc": port}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.stop(grace=1.0)

    asyncio.run(main())


def echo_argv() -> list[str]:
    return [sys.executable, "-m", "peers_lib.floors", "--serve-echo"]


def echo_payload() -> bytes:
    """The bytes of the gateway's tool call (``ledger.get_balance``), so the echo carries what a
    gateway call carries."""
    import uuid

    from gateway._proto.switchboard.v1 import gateway_pb2 as pb

    req = pb.ExecuteRequest(request_id=str(uuid.uuid4()))
    req.tool_call.name = "ledger.get_balance"
    req.tool_call.arguments.update({"account": "A1"})
    return bytes(req.SerializeToString())


class EchoTarget(Target):
    """The echo floor driven as bench/peers.py drives the gateway's gRPC tool calls: one channel,
    the gateway call's bytes and bearer metadata, a 60 s deadline."""

    name = "echo_floor"

    def __init__(self, port: int, pid: int, token: str) -> None:
        self.port, self.pid, self.token = port, pid, token
        self.channel: Any = None

    async def open(self) -> None:
        import grpc

        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.echo = self.channel.unary_unary(ECHO_METHOD)
        self.payload = echo_payload()
        self.md = (("authorization", f"Bearer {self.token}"),)

    async def call(self) -> bool:
        got = await self.echo(self.payload, metadata=self.md, timeout=60)
        if got != self.payload:
            self.last_error = f"echo answered {len(got)} bytes, not {len(self.payload)}"
        return bool(got == self.payload)

    async def close(self) -> None:
        if self.channel is not None:
            await self.channel.close()

    @asynccontextmanager
    async def caller(self) -> AsyncIterator[Target]:
        yield self  # one shared channel, as the gateway's gRPC target


# -- the bare restore -------------------------------------------------------------------------


async def restore_floor_row(tmp: Path, restores: int, cores: int) -> dict[str, Any]:
    """bench/restore_floor.ts in a Deno process of its own with the flags the sandbox ships:
    CPU-s per restore of the whole process (all threads), the wall time of one."""
    import deno

    from gateway.sandbox.pool import default_runtime_dir
    from gateway.sandbox.process import _v8_flags
    from gateway.sandbox.snapshot import ensure_snapshot
    from gateway.sandbox.types import SandboxSettings

    settings = SandboxSettings()
    deno_bin = str(deno.find_deno_bin())
    snap = await ensure_snapshot(deno_bin, default_runtime_dir(), settings, tmp)
    deno_dir = tmp / f"deno-floor-{time.monotonic_ns()}"
    argv = [deno_bin, "run", "--no-prompt", "--no-config", "--no-lock", "--no-remote",
            "--no-npm", "--unstable-worker-options",
            "--allow-all",  # the script reads /proc/self; its workers keep the sandbox's
            _v8_flags(settings), str(REPO / "bench" / "restore_floor.ts"), str(snap),
            str(restores)]
    env = {"DENO_DIR": str(deno_dir), "NO_COLOR": "1", "DENO_NO_UPDATE_CHECK": "1"}
    p = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, env=env,
                                check=True, stdin=subprocess.DEVNULL, timeout=600)
    data: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    cpu_s = float(data["cpu_ms_per_restore"]) / 1e3
    wall = float(data["wall_ms_p50"])
    ceiling = cores / cpu_s if cpu_s > 0 else None
    return {"label": "floor: bare Deno + Pyodide restore (no gateway, no run)", "snippet": "-",
            "n": int(data["restores"]), "runs_per_s": 1e3 / wall if wall else None,
            "p50_ms": wall, "p99_ms": None, "cpu_s_per_run": cpu_s,
            "note": "bench/restore_floor.ts: new worker + snapshot restore, sequential"
                    + (f"; its CPU permits ≤ {ceiling:.1f}/s on {cores} cores" if ceiling
                       else ""),
            "key": "floor_restore"}


# -- a session run on the pool alone ------------------------------------------------------------


def pool_floor_row(runs: int, warmup: int, env: dict[str, str]) -> dict[str, Any]:
    """``runs`` trivial session runs on a SandboxPool in a process of its own (after ``warmup``
    untimed ones): CPU ms per run of that host process + the session's Deno process."""
    cmd = [sys.executable, str(REPO / "bench" / "code_speed.py"), "--pool-child",
           "--pool-runs", str(runs), "--pool-warmup", str(warmup)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO), env=env,
                       stdin=subprocess.DEVNULL, timeout=600)
    if p.returncode:
        raise RuntimeError(f"the pool child failed: {p.stderr[-600:]}")
    data: dict[str, Any] = json.loads(p.stdout.strip().splitlines()[-1])
    cpu_ms = float(data["host_ms"]) + float(data["deno_ms"])
    return {"label": "floor: session run on the sandbox pool alone (no gateway)",
            "snippet": "trivial", "n": runs, "runs_per_s": float(data["runs_s"]),
            "p50_ms": None, "p99_ms": None, "cpu_s_per_run": cpu_ms / 1e3,
            "host_cpu_ms": float(data["host_ms"]), "deno_cpu_ms": float(data["deno_ms"]),
            "worker_run_ms_p50": float(data["worker_run_ms_p50"]),
            "note": f"one session, sequential, in-process host; CPU: host "
                    f"{data['host_ms']:.2f} + Deno {data['deno_ms']:.2f} ms",
            "key": "floor_pool_session"}


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve-echo"]:
        serve_echo()
    else:
        sys.exit(f"usage: {os.path.basename(__file__)} --serve-echo")
