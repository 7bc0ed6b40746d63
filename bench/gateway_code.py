"""Code-channel latency through the whole gateway (gRPC, identity, policy, sandbox, audit),
side by side with a fresh Deno + Pyodide process per execution in the same run.

    .venv/bin/python bench/gateway_code.py [--runs 40] [--cold-runs 5]

"Warm" runs leave a pause between calls so a spare isolate is ready (the steady state of an
agent that thinks between tool calls); back-to-back fresh runs measure the isolate refill rate
instead; session runs reuse one interpreter per (principal, session).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import md, start_stack
from sandbox_bench import COLD_JS

from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc
from gateway.sandbox import default_runtime_dir

TRIVIAL = "1 + 1"
HOST_CALL = "from sdk import ledger\nledger.get_balance(account='A1')['account']"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def run_code(stub: pb_grpc.GatewayStub, src: str, session: str | None = None) -> float:
    run = pb.CodeRun(source=src)
    if session:
        run.session_id = session
    t0 = time.perf_counter()
    resp = stub.Execute(pb.ExecuteRequest(request_id=str(uuid.uuid4()), code_run=run),
                        metadata=md("dev-agent"), timeout=60)
    took = (time.perf_counter() - t0) * 1000
    if resp.error.code:
        raise RuntimeError(f"code run failed: {resp.error.code} {resp.error.message}")
    return took


def series(n: int, pause: float, fn: Callable[[], float]) -> list[float]:
    fn()  # one unrecorded warm-up
    out = []
    for _ in range(n):
        if pause:
            time.sleep(pause)
        out.append(fn())
    return out


def cold_process(runs: int) -> list[float]:
    import deno

    assets = default_runtime_dir() / "node_modules" / "pyodide"
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "cold.mjs"
        script.write_text(COLD_JS % {"pyodide": (assets / "pyodide.mjs").as_uri(),
                                     "assets": str(assets)})
        argv = [str(deno.find_deno_bin()), "run", "--no-prompt", "--no-config", "--no-lock",
                "--no-remote", f"--allow-read={assets},{script}", str(script), TRIVIAL]
        env = {"DENO_DIR": str(Path(tmp) / "deno"), "NO_COLOR": "1"}
        out = []
        for i in range(runs + 1):
            t0 = time.perf_counter()
            p = subprocess.run(argv, capture_output=True, text=True, env=env,
                               stdin=subprocess.DEVNULL, check=True)
            json.loads(p.stdout.strip().splitlines()[-1])
            if i:  # the first run warms the page cache and Deno's transpile cache
                out.append((time.perf_counter() - t0) * 1000)
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--cold-runs", type=int, default=5)
    parser.add_argument("--pause", type=float, default=0.5,
                        help="seconds between warm runs, so a spare isolate is ready")
    args = parser.parse_args()
    rows: list[tuple[str, list[float]]] = []
    with tempfile.TemporaryDirectory() as tmp, start_stack(Path(tmp)) as stack, \
            grpc.insecure_channel(stack.target) as channel:
        stub = pb_grpc.GatewayStub(channel)
        time.sleep(2.0)  # let the pool fill its spares
        sid = f"bench-{uuid.uuid4().hex[:8]}"
        rows.append(("gateway, fresh isolate, warm (spare ready), trivial",
                     series(args.runs, args.pause, lambda: run_code(stub, TRIVIAL))))
        rows.append(("gateway, fresh isolate, warm, 1 SDK host call",
                     series(args.runs, args.pause, lambda: run_code(stub, HOST_CALL))))
        rows.append(("gateway, session, back-to-back, trivial",
                     series(args.runs, 0, lambda: run_code(stub, TRIVIAL, sid))))
        rows.append(("gateway, session, back-to-back, 1 SDK host call",
                     series(args.runs, 0, lambda: run_code(stub, HOST_CALL, sid))))
        rows.append(("gateway, fresh isolate, back-to-back (refill-bound), trivial",
                     series(args.runs // 2, 0, lambda: run_code(stub, TRIVIAL))))
    rows.append(("fresh Deno + Pyodide process per execution, trivial",
                 cold_process(args.cold_runs)))
    print("| path | n | p50 ms | p99 ms |\n|---|---:|---:|---:|")
    for name, xs in rows:
        print(f"| {name} | {len(xs)} | {statistics.median(xs):.1f} | {pct(xs, 0.99):.1f} |")
    warm = statistics.median(rows[0][1])
    cold = statistics.median(rows[-1][1])
    print(f"\nfresh process / warm gateway run (p50, trivial): {cold / warm:.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
