"""The code-run peers of bench/peers.py (a fresh Deno + Pyodide process per run, smolagents'
LocalPythonExecutor, @cloudflare/codemode in workerd) and the throughput row every code runner
shares."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .core import Proc, ProcHost, free_port, pct, tree_cpu_s

REPO = Path(__file__).resolve().parents[2]
PEERS = REPO / "bench" / "peers"
CACHE = REPO / ".cache" / "peers"
SMOL_VENV = CACHE / "smolagents-venv"
WORKERD = PEERS / "node_modules" / "@cloudflare" / "workerd-linux-64" / "bin" / "workerd"
CODEMODE_DIST = PEERS / "node_modules" / "@cloudflare" / "codemode" / "dist"
ACORN = PEERS / "node_modules" / "acorn" / "dist" / "acorn.mjs"
CODE_CALLERS = 8
TRIVIAL_PY = "1 + 1"
COMPUTE_PY = "sum(i * i for i in range(100_000))"
TRIVIAL_JS = "async () => 1 + 1"
COMPUTE_JS = "async () => { let s = 0; for (let i = 0; i < 100000; i++) s += i * i; return s; }"


async def throughput_row(label: str, snippet: str, pid: int | None, duration: float,
                         callers: list[Callable[[], Awaitable[Any]]], note: str, key: str,
                         cpu_fn: Callable[[], float] | None = None) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0
    stop = time.perf_counter() + duration

    async def caller(fn: Callable[[], Awaitable[Any]]) -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            s = time.perf_counter()
            try:
                await fn()
            except Exception:
                errors += 1
                continue
            lat.append((time.perf_counter() - s) * 1e3)

    cpu = cpu_fn or (lambda: tree_cpu_s(pid) if pid else 0.0)
    c0 = cpu()
    t0 = time.perf_counter()
    await asyncio.gather(*(caller(fn) for fn in callers))
    wall = time.perf_counter() - t0
    used = cpu() - c0
    n = len(lat)
    return {"label": label, "snippet": snippet, "n": n, "errors": errors,
            "runs_per_s": n / wall, "p50_ms": statistics.median(lat) if lat else None,
            "p99_ms": pct(lat, 99) if lat else None,
            "cpu_s_per_run": used / n if n else None,
            "note": note + (f"; {errors} errors" if errors else ""), "key": key}


def cold_runner(runs: int) -> list[dict[str, Any]]:
    """A fresh Deno + cold loadPyodide per run (bench/sandbox_bench.py's COLD_JS)."""
    import deno

    sys.path.insert(0, str(REPO / "bench"))
    from sandbox_bench import COLD_JS

    from gateway.sandbox import default_runtime_dir

    assets = default_runtime_dir() / "node_modules" / "pyodide"
    rows = []
    with tempfile.TemporaryDirectory(prefix="peers-cold-") as tmp:
        script = Path(tmp) / "cold.mjs"
        script.write_text(COLD_JS % {"pyodide": (assets / "pyodide.mjs").as_uri(),
                                     "assets": str(assets)})
        argv = [str(deno.find_deno_bin()), "run", "--no-prompt", "--no-config", "--no-lock",
                "--no-remote", f"--allow-read={assets},{script}", str(script)]
        env = {"DENO_DIR": str(Path(tmp) / "deno"), "NO_COLOR": "1",
               "PATH": os.environ.get("PATH", "")}
        subprocess.run([*argv, TRIVIAL_PY], capture_output=True, env=env, check=True,
                       stdin=subprocess.DEVNULL)  # warms the page cache and Deno's cache
        lat = []
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        for _ in range(runs):
            s = time.perf_counter()
            p = subprocess.run([*argv, TRIVIAL_PY], capture_output=True, text=True, env=env,
                               stdin=subprocess.DEVNULL, check=True)
            json.loads(p.stdout.strip().splitlines()[-1])
            lat.append((time.perf_counter() - s) * 1e3)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        rows.append({"label": "fresh Deno + Pyodide process per run", "snippet": "trivial",
                     "n": runs, "p50_ms": statistics.median(lat), "p99_ms": pct(lat, 99),
                     "runs_per_s": runs / (sum(lat) / 1e3), "cpu_s_per_run": cpu / runs,
                     "note": "spawn deno, cold loadPyodide, run, exit; sequential",
                     "key": "cold"})
    return rows


def smolagents_missing() -> str | None:
    if not (SMOL_VENV / "bin" / "python").exists():
        return f"smolagents is not installed in {SMOL_VENV.relative_to(REPO)}"
    return None


def smolagents_runner(seconds: float) -> list[dict[str, Any]]:
    snippets = {"trivial": TRIVIAL_PY, "loop 100k": COMPUTE_PY}
    p = subprocess.run([str(SMOL_VENV / "bin" / "python"), str(PEERS / "smolagents_runner.py"),
                        str(seconds), json.dumps(snippets)], capture_output=True, text=True,
                       check=True, stdin=subprocess.DEVNULL, timeout=600)
    data = json.loads(p.stdout.strip().splitlines()[-1])
    rows = []
    for name, r in data["results"].items():
        rows.append({"label": f"smolagents {data['version']} LocalPythonExecutor",
                     "snippet": name, **r,
                     "note": "AST interpreter in the caller's process (no sandbox), "
                             "sequential", "key": f"smol_{name}"})
    return rows


def codemode_missing() -> str | None:
    if not WORKERD.exists() or not (CODEMODE_DIST / "index.js").exists():
        return "workerd / @cloudflare/codemode are not installed in bench/peers/node_modules"
    return None


def codemode_config(work: Path, port: int) -> Path:
    """A workerd config: the host Worker + codemode's dist modules + acorn, and a Worker
    Loader binding (``LOADER``) for codemode's DynamicWorkerExecutor."""
    mods = [("worker.js", PEERS / "codemode_worker.js")]
    mods += [(f"codemode/{f.name}", f) for f in sorted(CODEMODE_DIST.glob("*.js"))]
    mods.append(("codemode/acorn", ACORN))  # workerd resolves the bare "acorn" beside its importer
    (work / "m").mkdir()
    lines = []
    for i, (name, src) in enumerate(mods):
        local = work / "m" / f"{i}.js"
        shutil.copyfile(src, local)
        lines.append(f'    (name = "{name}", esModule = embed "m/{i}.js")')
    config = work / "config.capnp"
    config.write_text(
        'using Workerd = import "/workerd/workerd.capnp";\n'
        "const config :Workerd.Config = (\n"
        '  services = [ (name = "main", worker = .w) ],\n'
        f'  sockets = [ (name = "http", address = "127.0.0.1:{port}", http = (), '
        'service = "main") ],\n);\n'
        "const w :Workerd.Worker = (\n  modules = [\n" + ",\n".join(lines) + "\n  ],\n"
        '  compatibilityDate = "2025-06-01",\n  compatibilityFlags = ["nodejs_compat"],\n'
        '  bindings = [ (name = "LOADER", workerLoader = ()) ],\n);\n')
    return config


async def codemode_runner(stack: ProcHost, args: argparse.Namespace) -> list[dict[str, Any]]:
    import httpx

    work = Path(tempfile.mkdtemp(prefix="codemode-", dir=stack.tmp))  # one per round
    port = free_port()
    config = codemode_config(work, port)
    log = (work / "workerd.log").open("w")
    proc = subprocess.Popen([str(WORKERD), "serve", "--experimental", str(config)], cwd=work,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    p = Proc("workerd", proc)  # type: ignore[arg-type]
    stack.procs.append(p)
    version = subprocess.run([str(WORKERD), "--version"], capture_output=True,
                             text=True).stdout.strip()
    rows = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            deadline = time.monotonic() + 60
            while True:
                try:
                    r = await http.get("/", params={"code": TRIVIAL_JS})
                    break
                except httpx.TransportError as exc:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"workerd did not start; see {work}/workerd.log"
                                           ) from exc
                    await asyncio.sleep(0.1)
            if r.json().get("result") != 2:
                raise RuntimeError(f"codemode answered {r.text[:200]}")

            async def run(code: str) -> None:
                resp = await http.get("/", params={"code": code})
                if resp.json().get("error"):
                    raise RuntimeError(resp.json()["error"])

            for snippet, code in (("trivial (JS)", TRIVIAL_JS), ("loop 100k (JS)", COMPUTE_JS)):
                lat = []
                c0 = tree_cpu_s(p.pid)
                for _ in range(args.session_runs):
                    s = time.perf_counter()
                    await run(code)
                    lat.append((time.perf_counter() - s) * 1e3)
                rows.append({"label": f"codemode DynamicWorkerExecutor, {version}",
                             "snippet": snippet, "n": len(lat),
                             "p50_ms": statistics.median(lat), "p99_ms": pct(lat, 99),
                             "runs_per_s": len(lat) / (sum(lat) / 1e3),
                             "cpu_s_per_run": (tree_cpu_s(p.pid) - c0) / len(lat),
                             "note": "fresh dynamic Worker per run, HTTP from this process, "
                                     "sequential", "key": f"codemode_seq_{snippet.split()[0]}"})
            rows.append(await throughput_row(
                f"codemode DynamicWorkerExecutor, {version}, 8 callers",
                "trivial (JS)", p.pid, args.code_duration,
                [lambda: run(TRIVIAL_JS)] * CODE_CALLERS, "fresh dynamic Worker per run",
                "codemode"))
    finally:
        p.stop()
    return rows


