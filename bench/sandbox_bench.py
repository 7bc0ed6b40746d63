"""Sandbox benchmark: the warm pool vs a fresh Deno + Pyodide process per run vs smolagents.

Run by hand (it prints a markdown table):

    .venv/bin/python bench/sandbox_bench.py            # ~2 minutes on 2 cores
    .venv/bin/python bench/sandbox_bench.py --quick    # fewer samples

All three run in this one process tree on the same snippets:

* pool: gateway.sandbox.SandboxPool (Deno processes holding one interpreter each, restored from
  a cached snapshot). "fresh isolate" runs get a new V8 isolate + interpreter each (the default:
  no session); "session" runs reuse one interpreter (a process of its own) bound to one
  principal.
* cold: what pydantic's mcp-run-python does per execution (its package cannot start here: its
  Deno code imports from JSR), reproduced with the same Deno and Pyodide: start Deno, cold
  ``loadPyodide``, run, print the result, exit.
* smolagents: ``LocalPythonExecutor`` (an AST interpreter in this Python process, weak isolation).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.models import Limits
from gateway.sandbox import (
    RunRequest,
    SandboxPool,
    SandboxSettings,
    SdkFunction,
    default_runtime_dir,
)

SNIPPETS = {
    "trivial": "1 + 1",
    "loop 100k": "sum(i * i for i in range(100_000))",
    "json": "import json\nlen(json.dumps([{'id': i, 'name': str(i)} for i in range(2000)]))",
}
SDK = (SdkFunction("ledger.get_balance", "ledger", "get_balance",
                   "get_balance(account: str) -> dict", "Balance of an account."),)
SDK_SNIPPET = "from sdk import ledger\nledger.get_balance(account='A1')['balance']"

COLD_JS = """
import { loadPyodide } from "%(pyodide)s";
const t0 = performance.now();
const py = await loadPyodide({ indexURL: "%(assets)s/", jsglobals: {} });
const out = py.runPython(Deno.args[0]);
const ms = performance.now() - t0;
console.log(JSON.stringify({ result: String(out), ms, rss: Deno.memoryUsage().rss }));
"""


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def fmt(xs: list[float]) -> tuple[str, str]:
    return f"{pct(xs, 50):.2f}", f"{pct(xs, 99):.2f}"


async def host(op: str, args: dict[str, Any]) -> Any:
    return {"account": args.get("account"), "balance": 100}


def request(src: str, session: str | None = None, principal: str = "bench/agent") -> RunRequest:
    return RunRequest(source=src, inputs={}, limits=Limits(timeout_ms=10000),
                      principal_key=principal, session_id=session, sdk=SDK,
                      sdk_revision="bench")


async def timed(n: int, fn: Callable[[], Awaitable[Any]],
                before: Callable[[], Awaitable[Any]] | None = None) -> list[float]:
    out = []
    for _ in range(n):
        if before is not None:
            await before()
        t0 = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def pool_ready(pool: SandboxPool) -> None:
    """Wait until every process of the pool is idle with a fresh interpreter (bounded: 10 s)."""
    for _ in range(1000):
        if pool.stats()["idle"] >= pool.settings.workers:
            return
        await asyncio.sleep(0.01)


async def throughput(seconds: float, clients: int, fn: Callable[[int], Awaitable[Any]]) -> float:
    done = 0
    stop = time.perf_counter() + seconds

    async def client(i: int) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await fn(i)
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return done / (time.perf_counter() - t0)


async def bench_pool(
    args: argparse.Namespace, rows: list[list[str]], facts: dict[str, Any]
) -> None:
    pool = SandboxPool(SandboxSettings(workers=3))
    t0 = time.perf_counter()
    await pool.start()
    facts[f"pool start ({pool.settings.workers} processes, s)"] = (
        f"{time.perf_counter() - t0:.2f}")
    await asyncio.sleep(1.0)
    try:
        for name, src in [*SNIPPETS.items(), ("1 SDK host call", SDK_SNIPPET)]:
            await pool.run(request(src), host)
            # Warm latency: one run at a time, each with every process idle and ready.
            fresh = await timed(args.runs, lambda s=src: pool.run(request(s), host),
                                before=lambda: pool_ready(pool))
            rows.append(["pool, fresh isolate per run", name, *fmt(fresh)])
            sess = await timed(args.runs * 2, lambda s=src: pool.run(request(s, "b"), host))
            rows.append(["pool, session (same interpreter)", name, *fmt(sess)])
        back = await timed(args.runs, lambda: pool.run(request("1 + 1"), host))
        rows.append(["pool, fresh isolate, back-to-back (no pause)", "trivial", *fmt(back)])
        secs = args.seconds
        facts["pool fresh-isolate runs/s (8 clients)"] = (
            f"{await throughput(secs, 8, lambda i: pool.run(request('1 + 1'), host)):.1f}")
        # One principal per session (a principal has at most max_sessions_per_principal), each
        # session a process of its own: open them first, so the rate is of runs, not of starts.
        for i in range(8):
            await pool.run(request("1 + 1", f"s{i}", f"bench/agent{i}"), host)
        await pool_ready(pool)
        facts["pool session runs/s (8 clients, 8 sessions)"] = f"""{await throughput(
            secs, 8, lambda i: pool.run(request('1 + 1', f's{i}', f'bench/agent{i}'), host)):.0f}"""
        rss = [v for v in pool.stats()["rss_bytes"].values() if v]
        facts["pool RSS per Deno process (idle + session processes), MiB"] = ", ".join(
            f"{v / 2**20:.0f}" for v in rss)
        # Marginal RSS of one more session (its own process; the pool replaces it): open 6.
        await pool_ready(pool)
        before = sum(pool.stats()["rss_bytes"].values())
        for i in range(6):
            await pool.run(request("x = 1", f"rss{i}", f"bench/rss{i}"), host)
        await pool_ready(pool)
        after = sum(pool.stats()["rss_bytes"].values())
        facts["pool RSS per extra session (a process), MiB"] = f"{(after - before) / 6 / 2**20:.0f}"
    finally:
        await pool.close()


def bench_cold(args: argparse.Namespace, rows: list[list[str]], facts: dict[str, Any]) -> None:
    import deno

    rt = default_runtime_dir()
    assets = rt / "node_modules" / "pyodide"
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "cold.mjs"
        script.write_text(COLD_JS % {"pyodide": (assets / "pyodide.mjs").as_uri(),
                                     "assets": str(assets)})
        argv = [str(deno.find_deno_bin()), "run", "--no-prompt", "--no-config", "--no-lock",
                "--no-remote", f"--allow-read={assets},{script}", str(script)]
        env = {"DENO_DIR": str(Path(tmp) / "deno"), "NO_COLOR": "1"}

        def once(src: str) -> dict[str, Any]:
            p = subprocess.run([*argv, src], capture_output=True, text=True, env=env,
                               stdin=subprocess.DEVNULL, check=True)
            return dict(json.loads(p.stdout.strip().splitlines()[-1]))

        once("1")  # warm the OS page cache and Deno's transpile cache, as a fair start
        for name, src in SNIPPETS.items():
            if name != "trivial" and args.quick:
                continue
            times, rss = [], []
            for _ in range(args.cold_runs):
                t0 = time.perf_counter()
                r = once(src)
                times.append((time.perf_counter() - t0) * 1000)
                rss.append(r["rss"])
            rows.append(["fresh Deno + Pyodide process per run", name, *fmt(times)])
            facts.setdefault("cold process RSS at exit, MiB",
                             f"{statistics.median(rss) / 2**20:.0f}")
        t0 = time.perf_counter()
        n = 2 * max(2, args.cold_runs // 2)

        async def parallel() -> None:
            sem = asyncio.Semaphore(2)

            async def one() -> None:
                async with sem:
                    await asyncio.to_thread(once, "1 + 1")

            await asyncio.gather(*(one() for _ in range(n)))

        asyncio.run(parallel())
        facts["fresh process runs/s (2 at a time)"] = f"{n / (time.perf_counter() - t0):.2f}"


def bench_smolagents(args: argparse.Namespace, rows: list[list[str]],
                     facts: dict[str, Any]) -> None:
    from smolagents.local_python_executor import LocalPythonExecutor

    def make() -> Any:
        ex = LocalPythonExecutor(additional_authorized_imports=["json"])
        ex.send_tools({"get_balance": lambda account: {"account": account, "balance": 100}})
        return ex

    ex = make()
    snippets = [*SNIPPETS.items(), ("1 SDK host call", "get_balance(account='A1')['balance']")]
    for name, src in snippets:
        ex(src)
        times: list[float] = []
        budget = time.perf_counter() + 10.0  # slow snippets: at least 5 samples, about 10 s
        while len(times) < args.runs * 2 and (len(times) < 5 or time.perf_counter() < budget):
            t0 = time.perf_counter()
            ex(src)
            times.append((time.perf_counter() - t0) * 1000)
        rows.append(["smolagents LocalPythonExecutor (in-process)", name, *fmt(times)])
    fresh = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        make()("1 + 1")
        fresh.append((time.perf_counter() - t0) * 1000)
    rows.append(["smolagents, new executor per run", "trivial", *fmt(fresh)])
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds:
        ex("1 + 1")
        n += 1
    rate = n / (time.perf_counter() - t0)
    facts["smolagents runs/s (1 thread; the GIL bounds it)"] = f"{rate:.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--cold-runs", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.runs, args.cold_runs, args.seconds = 20, 3, 2.0
    rows: list[list[str]] = []
    facts: dict[str, Any] = {"cpus": os.cpu_count(), "load avg at start": os.getloadavg()[0]}
    asyncio.run(bench_pool(args, rows, facts))
    bench_cold(args, rows, facts)
    bench_smolagents(args, rows, facts)
    warm = next(float(r[2]) for r in rows if r[0] == "pool, fresh isolate per run"
                and r[1] == "trivial")
    cold = next(float(r[2]) for r in rows if r[0].startswith("fresh Deno") and r[1] == "trivial")
    facts["cold / warm p50, trivial (fresh isolate)"] = f"{cold / warm:.0f}x"
    print("| runner | snippet | p50 ms | p99 ms |\n|---|---|---:|---:|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print("\n| measure | value |\n|---|---|")
    for k, v in facts.items():
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
