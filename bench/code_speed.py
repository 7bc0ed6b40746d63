"""Code-channel speed (issue 13): one command for the four figures, A/B against a base tree.

    .venv/bin/python bench/code_speed.py                              # this checkout, 1 round
    .venv/bin/python bench/code_speed.py --compare /tmp/base --rounds 2   # A/B, interleaved
    .venv/bin/python bench/code_speed.py --floor                      # + the bare-restore floor
    .venv/bin/python bench/code_speed.py --floor-only --compare /tmp/base  # floor: base vs this

The base tree is a ``git archive`` of the base commit with its own ``runtimes/node_modules``
(``npm ci`` in it, or a copy; never a symlink into a worktree)::

    mkdir /tmp/base && git archive f635ede gateway policies runtimes/supervisor.ts \\
        runtimes/worker.ts runtimes/sandbox_runner.py runtimes/package.json \\
        runtimes/package-lock.json | tar -x -C /tmp/base
    (cd /tmp/base/runtimes && npm ci --no-audit --no-fund)

Each measurement runs in a child process (``--child``) with the tree first on ``PYTHONPATH`` and
as its working directory, so the gateway subprocess (``python -m gateway.cli serve``, the demo
backends, ``bench/load.py``'s stack, ``sandbox.workers`` = ``--workers``) imports that tree.
Rounds alternate base / this (the order flips every round). Phases, in order, through gRPC:

* ``iso``: isolated runs (no session: a fresh interpreter each), ``--clients`` concurrent callers,
  back to back for ``--duration`` s → runs/s, and CPU-s per run = CPU of the gateway process and
  every descendant (its Deno processes, live and reaped) over the phase / runs;
* ``sess``: session runs, 4 sessions x 4 callers each, back to back → runs/s, CPU ms per run;
* ``warm``: sequential isolated ``1 + 1`` runs, ``--pause`` s apart (an idle interpreter is
  ready), on the otherwise loaded machine → p50/p99 ms;
* ``warm_load``: the same with two ``yes > /dev/null`` burners started by this bench (stopped by
  pid when the phase ends) → p50/p99 ms.

``--floor`` also measures, in a Deno process of its own (bench/restore_floor.ts), what a bare
restore costs: a new worker restoring Pyodide from the snapshot with the shared compiled module,
nothing else — CPU-s per restore of the whole process (all threads) and per thread kind. That is
the cost no scheduling can remove while each run gets a fresh isolate and interpreter. It runs
with V8's default GC and with the flags this tree ships (``gateway/sandbox/process.py``),
alternating, ``--floor-rounds`` rounds.
The load average is recorded before and after every phase; the machine is shared: read ratios.
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
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
TRIVIAL = "1 + 1"
TCK = os.sysconf("SC_CLK_TCK")


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


# ---- CPU of a process tree, from /proc ---------------------------------------------------------


def _stat(pid: int) -> tuple[int, float] | None:
    """(ppid, CPU seconds incl. reaped children) of one process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(f[1]), (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / TCK


def own_cpu(pid: int) -> float:
    """CPU seconds of one process itself (all its threads, no children)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            f = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(f[11]) + int(f[12])) / TCK


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and all its live descendants, each with its reaped children."""
    procs: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                procs[int(name)] = st
    keep, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in procs.items():
            if ppid == parent and pid not in keep:
                keep.add(pid)
                frontier.append(pid)
    return sum(procs[p][1] for p in keep if p in procs)


# ---- child: one tree, one gateway ----------------------------------------------------------------


async def _child(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "bench"))
    import grpc
    from load import md, start_stack, wait_serving

    from gateway._proto.switchboard.v1 import gateway_pb2 as pb
    from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc

    out: dict[str, Any] = {"tree": args.tree or str(REPO)}
    with tempfile.TemporaryDirectory(prefix="code-speed-") as tmp, \
            start_stack(Path(tmp), workers=args.workers) as stack:
        gw_pid = stack.gateway.proc.pid
        async with grpc.aio.insecure_channel(stack.target) as channel:
            await wait_serving(channel)
            stub = pb_grpc.GatewayStub(channel)

            async def run(session: str | None = None) -> float:
                code = pb.CodeRun(source=TRIVIAL)
                if session:
                    code.session_id = session
                t0 = time.perf_counter()
                resp = await stub.Execute(
                    pb.ExecuteRequest(request_id=str(uuid.uuid4()), code_run=code),
                    metadata=md("dev-agent"), timeout=120)
                if resp.error.code:
                    raise RuntimeError(f"code run failed: {resp.error.code} {resp.error.message}")
                return (time.perf_counter() - t0) * 1000

            async def settle() -> None:
                for _ in range(args.workers + 1):
                    await run()
                await asyncio.sleep(3.0)  # every process restores its next interpreter

            async def quiet(limit_s: float = 60.0) -> None:
                """Until the gateway's tree uses < 0.15 CPU-s in a second (processes that
                replace the ones sessions took have started), at most ``limit_s``."""
                end = time.monotonic() + limit_s
                while time.monotonic() < end:
                    cpu0 = tree_cpu(gw_pid)
                    await asyncio.sleep(1.0)
                    if tree_cpu(gw_pid) - cpu0 < 0.15:
                        return

            async def burst(name: str, callers: list[str | None]) -> None:
                n = 0
                load0 = os.getloadavg()[0]
                spy = _start_spy(args.spy, gw_pid, args.duration) if name == "sess" else None
                cpu0, gw0, t0 = tree_cpu(gw_pid), own_cpu(gw_pid), time.perf_counter()

                async def caller(session: str | None) -> None:
                    nonlocal n
                    while time.perf_counter() - t0 < args.duration:
                        await run(session)
                        n += 1

                await asyncio.gather(*(caller(s) for s in callers))
                wall = time.perf_counter() - t0
                cpu = tree_cpu(gw_pid) - cpu0
                gw = own_cpu(gw_pid) - gw0
                out[name] = {"n": n, "runs_s": n / wall, "cpu_s_per_run": cpu / max(1, n),
                             "gateway_cpu_s_per_run": gw / max(1, n),
                             "cpu_util": cpu / wall, "load": [load0, os.getloadavg()[0]]}
                if spy is not None:
                    spy.wait()

            async def series(name: str, burners: int) -> None:
                procs = [subprocess.Popen(["yes"], stdout=subprocess.DEVNULL)
                         for _ in range(burners)]
                try:
                    await asyncio.sleep(1.0 if burners else 0.0)
                    load0 = os.getloadavg()[0]
                    await run()
                    xs = []
                    for _ in range(args.warm_runs):
                        await asyncio.sleep(args.pause)
                        xs.append(await run())
                    out[name] = {"n": len(xs), "p50_ms": statistics.median(xs),
                                 "p99_ms": pct(xs, 99), "load": [load0, os.getloadavg()[0]],
                                 "burners": burners}
                finally:
                    for p in procs:
                        p.kill()
                        p.wait()

            phases = set(args.phases.split(","))
            if "iso" in phases:
                await settle()
                await burst("iso", [None] * args.clients)
            if "sess" in phases:
                sessions = [f"speed-{i}-{uuid.uuid4().hex[:6]}" for i in range(args.sessions)]
                for s in sessions:
                    await run(s)
                for _ in range(args.sess_warmup):  # tier-up of the session path, both sides
                    await asyncio.gather(*(run(s) for s in sessions))
                await quiet()  # the processes that replaced the sessions' have restored
                await burst("sess", [s for s in sessions for _ in range(args.per_session)])
            if "warm" in phases:
                await settle()
                await series("warm", 0)
            if "warm_load" in phases:
                await settle()
                await series("warm_load", 2)
    return out


def _start_spy(path: str, pid: int, duration: float) -> subprocess.Popen[bytes] | None:
    """py-spy (PY_SPY, else the venv's) over the gateway process for one phase, raw format;
    PY_SPY_RATE samples/s (200), PY_SPY_NATIVE=1 for native frames (slows the gateway ~10x)."""
    if not path:
        return None
    spy = os.environ.get("PY_SPY") or str(Path(sys.executable).parent / "py-spy")
    native = ["--native"] if os.environ.get("PY_SPY_NATIVE") else []
    return subprocess.Popen(
        [spy, "record", *native, "-r", os.environ.get("PY_SPY_RATE", "200"), "-f", "raw",
         "-o", path, "-p", str(pid), "-d", str(max(1, int(duration) - 1))],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


# ---- session runs on the pool itself (no gateway) -------------------------------------------


def _threads(pid: int) -> dict[str, float]:
    """CPU seconds per thread kind of one process (``/proc/<pid>/task``; digits dropped)."""
    out: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", encoding="ascii", errors="replace") as fh:
                raw = fh.read()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")].rstrip("0123456789-")
        f = raw.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(f[11]) + int(f[12])) / TCK
    return out


async def _pool_child(args: argparse.Namespace) -> dict[str, Any]:
    """``--pool-runs`` trivial session runs straight on a SandboxPool of this tree, one session
    after ``--pool-warmup`` untimed runs: CPU ms per run of the host (this process) and of the
    session's Deno process per thread kind (supervisor ``deno``, ``worker-*``, V8 background),
    and the worker's own run time (the ``done`` frame's ``ms``)."""
    root = Path(args.tree or REPO)
    sys.path.insert(0, str(root))
    import gateway.sandbox.pool as pool_mod
    from gateway.models import Limits
    from gateway.sandbox import RunRequest, SandboxPool, SandboxSettings, SdkFunction

    worker_ms: list[float] = []
    drive = pool_mod.drive

    async def timed_drive(*a: Any, **k: Any) -> dict[str, Any]:
        done: dict[str, Any] = await drive(*a, **k)
        worker_ms.append(float(done.get("ms") or 0.0))
        return done

    pool_mod.drive = timed_drive  # type: ignore[assignment]
    sdk = (SdkFunction("ledger.get_balance", "ledger", "get_balance",
                       "get_balance(account: str) -> dict", "Balance."),)

    async def host(op: str, kwargs: dict[str, Any]) -> Any:
        return {"balance": 1}

    def req() -> RunRequest:
        return RunRequest(source=TRIVIAL, inputs={}, limits=Limits(timeout_ms=10000),
                          principal_key="bench", session_id="s", sdk=sdk, sdk_revision="r1")

    pool = SandboxPool(SandboxSettings(workers=1, runtime_dir=root / "runtimes"))
    await pool.start()
    try:
        for _ in range(args.pool_warmup):
            await pool.run(req(), host)
        await asyncio.sleep(2.0)
        pid = pool._sessions[("bench", "s")].proc.pid
        assert pid is not None
        worker_ms.clear()
        th0, host0, load0 = _threads(pid), own_cpu(os.getpid()), os.getloadavg()[0]
        t0 = time.perf_counter()
        for _ in range(args.pool_runs):
            r = await pool.run(req(), host)
            assert r.ok and r.result == 2, r
        wall = time.perf_counter() - t0
        th = _threads(pid)
        n = args.pool_runs
        deno = {k: (v - th0.get(k, 0.0)) / n * 1e3 for k, v in th.items()}
        return {"runs_s": n / wall, "host_ms": (own_cpu(os.getpid()) - host0) / n * 1e3,
                "deno_ms": sum(deno.values()),
                "deno_threads_ms": {k: round(v, 3) for k, v in deno.items() if abs(v) > 1e-3},
                "worker_run_ms_p50": statistics.median(worker_ms),
                "load": [load0, os.getloadavg()[0]]}
    finally:
        await pool.close()


# ---- the bare-restore floor (Deno only) ---------------------------------------------------


def floor(restores: int, rounds: int, base: str = "") -> dict[str, Any]:
    """CPU per bare restore, interleaved round by round (fresh DENO_DIR per process). Without
    ``base``: V8's default GC against the flags this tree ships (same snapshot, same worker).
    With ``base``: the base tree's runtime (its worker.ts and runner, its own snapshot) against
    this tree's, both with this tree's flags; the base gets a copy of this restore_floor.ts in
    its ``bench/`` so the script is the same."""
    import shutil

    import deno

    sys.path.insert(0, str(REPO))
    from gateway.sandbox.process import _v8_flags
    from gateway.sandbox.snapshot import ensure_snapshot
    from gateway.sandbox.types import SandboxSettings

    settings = SandboxSettings()
    script = REPO / "bench" / "restore_floor.ts"
    variants: dict[str, tuple[str, Path]]
    if base:
        (Path(base) / "bench").mkdir(exist_ok=True)
        shutil.copy(script, Path(base) / "bench" / "restore_floor.ts")
        variants = {"base": (_v8_flags(settings), Path(base)), "this": (_v8_flags(settings), REPO)}
    else:
        variants = {
            "v8 default GC": (f"--v8-flags=--max-old-space-size={settings.v8_heap_mb},"
                              f"--wasm-max-mem-pages={settings.wasm_max_mem_pages}", REPO),
            "shipped flags": (_v8_flags(settings), REPO),
        }
    out: dict[str, Any] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="floor-") as tmp:
        snaps = {name: asyncio.run(ensure_snapshot(str(deno.find_deno_bin()), root / "runtimes",
                                                   settings, Path(tmp)))
                 for name, (_, root) in variants.items()}
        for rnd in range(rounds):
            names = list(variants) if rnd % 2 == 0 else list(reversed(variants))
            for name in names:
                flags, root = variants[name]
                argv = [str(deno.find_deno_bin()), "run", "--no-prompt", "--no-config",
                        "--no-lock", "--no-remote", "--no-npm", "--unstable-worker-options",
                        "--allow-all",  # the script reads /proc/self; workers keep the sandbox's
                        flags, str(root / "bench" / "restore_floor.ts"), str(snaps[name]),
                        str(restores)]
                env = {"DENO_DIR": str(Path(tmp) / f"deno-{rnd}-{len(out[name])}"),
                       "NO_COLOR": "1", "DENO_NO_UPDATE_CHECK": "1"}
                load0 = os.getloadavg()[0]
                res = subprocess.run(argv, capture_output=True, text=True, env=env, check=True,
                                     stdin=subprocess.DEVNULL)
                data: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
                data["load"] = [load0, os.getloadavg()[0]]
                out[name].append(data)
                print(f"floor {name} #{rnd + 1}: {json.dumps(data)}", file=sys.stderr, flush=True)
    return out


# ---- parent ------------------------------------------------------------------------------


def run_child(tree: str, args: argparse.Namespace) -> dict[str, Any]:
    if args.pool:
        cmd = [sys.executable, str(HERE), "--pool-child", "--pool-runs", str(args.pool_runs),
               "--pool-warmup", str(args.pool_warmup)]
        if tree:
            cmd += ["--tree", tree]
        res = subprocess.run(cmd, capture_output=True, text=True, cwd=tree or str(REPO))
        if res.returncode:
            raise SystemExit(f"pool child for {tree or REPO} failed:\n{res.stderr[-4000:]}")
        pool_data: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
        return pool_data
    cmd = [sys.executable, str(HERE), "--child", "--workers", str(args.workers),
           "--clients", str(args.clients), "--duration", str(args.duration),
           "--warm-runs", str(args.warm_runs), "--pause", str(args.pause),
           "--phases", args.phases, "--sessions", str(args.sessions),
           "--per-session", str(args.per_session), "--sess-warmup", str(args.sess_warmup),
           "--spy", args.spy]
    root = tree or str(REPO)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    env["SWITCHBOARD_POLICY_DIR"] = str(Path(root) / "policies")
    if tree:
        cmd += ["--tree", tree]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    if res.returncode:
        raise SystemExit(f"child for {root} failed:\n{res.stderr[-4000:]}")
    data: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return data


def table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    lines = ["| tree | isolated runs/s | CPU-s / isolated run | session runs/s | "
             "CPU ms / session run (gateway) | warm p50 ms (p99) | "
             "warm p50 ms under 2 burners (p99) | load (first → last phase) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    nan = {"runs_s": float("nan"), "cpu_s_per_run": float("nan"), "p50_ms": float("nan"),
           "p99_ms": float("nan"), "gateway_cpu_s_per_run": float("nan"), "load": [0.0, 0.0]}
    for label, r in rows:
        i, s, w, wl = (r.get(k, nan) for k in ("iso", "sess", "warm", "warm_load"))
        loads = [r[k]["load"] for k in ("iso", "sess", "warm", "warm_load") if k in r]
        lines.append(
            f"| {label} | {i['runs_s']:.2f} | {i['cpu_s_per_run']:.3f} | {s['runs_s']:.0f} | "
            f"{s['cpu_s_per_run'] * 1e3:.2f} ({s['gateway_cpu_s_per_run'] * 1e3:.2f}) | "
            f"{w['p50_ms']:.1f} ({w['p99_ms']:.1f}) | {wl['p50_ms']:.1f} ({wl['p99_ms']:.1f}) | "
            f"{loads[0][0]:.1f} → {loads[-1][1]:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", default="", help="A/B: alternate rounds with this base tree")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--workers", type=int, default=2, help="sandbox.workers of the gateway")
    ap.add_argument("--clients", type=int, default=8, help="concurrent isolated-run callers")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per throughput phase")
    ap.add_argument("--warm-runs", type=int, default=30)
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between warm runs")
    ap.add_argument("--phases", default="iso,sess,warm,warm_load",
                    help="comma-separated subset of iso,sess,warm,warm_load")
    ap.add_argument("--sessions", type=int, default=4, help="sessions of the sess phase")
    ap.add_argument("--per-session", type=int, default=4, help="callers per session")
    ap.add_argument("--sess-warmup", type=int, default=0,
                    help="untimed rounds of one run per session before the sess phase")
    ap.add_argument("--spy", default="", help="py-spy raw profile of the gateway in sess")
    ap.add_argument("--pool", action="store_true",
                    help="instead: one session's trivial runs straight on the pool, CPU per "
                         "run of host and Deno per thread kind (no gateway)")
    ap.add_argument("--pool-runs", type=int, default=3000)
    ap.add_argument("--pool-warmup", type=int, default=1200)
    ap.add_argument("--floor", action="store_true", help="also measure the bare-restore floor")
    ap.add_argument("--floor-restores", type=int, default=15)
    ap.add_argument("--floor-rounds", type=int, default=3)
    ap.add_argument("--floor-only", action="store_true", help="only the bare-restore floor")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--tree", default="", help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pool-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.floor_only:
        args.floor = True
        args.rounds = 0
    if args.child:
        print(json.dumps(asyncio.run(_child(args))))
        return
    if args.pool_child:
        print(json.dumps(asyncio.run(_pool_child(args))))
        return
    rows: list[tuple[str, dict[str, Any]]] = []
    for rnd in range(args.rounds):
        order = [("this", "")] + ([("base", args.compare)] if args.compare else [])
        if rnd % 2:
            order.reverse()
        for label, tree in order:
            data = run_child(tree, args)
            rows.append((f"{label} #{rnd + 1}", data))
            print(f"{label} #{rnd + 1}: {json.dumps(data)}", file=sys.stderr, flush=True)
    if rows and args.pool:
        print("| tree | runs/s | host CPU ms/run | Deno CPU ms/run | per thread kind | "
              "worker run p50 ms | load |\n|---|---:|---:|---:|---|---:|---|")
        for label, r in rows:
            print(f"| {label} | {r['runs_s']:.0f} | {r['host_ms']:.3f} | {r['deno_ms']:.3f} | "
                  f"{json.dumps(r['deno_threads_ms'])} | {r['worker_run_ms_p50']:.3f} | "
                  f"{r['load'][0]:.1f} → {r['load'][1]:.1f} |")
    elif rows:
        print(table(rows))
    if args.floor:
        fl = floor(args.floor_restores, args.floor_rounds,
                   args.compare if args.floor_only else "")
        print("\n| bare restore (runtimes/worker.ts in a new worker, nothing else) | CPU ms per "
              "restore, per round | median | wall p50 ms, per round |\n|---|---|---:|---|")
        for name, xs in fl.items():
            cpu = [x["cpu_ms_per_restore"] for x in xs]
            walls = ", ".join(f"{x['wall_ms_p50']:.0f}" for x in xs)
            print(f"| {name} | {', '.join(f'{c:.0f}' for c in cpu)} | "
                  f"{statistics.median(cpu):.0f} | {walls} |")
        (a, xa), (b, xb) = list(fl.items())
        ratios = [y["cpu_ms_per_restore"] / x["cpu_ms_per_restore"]
                  for x, y in zip(xa, xb, strict=True)]
        each = ", ".join(f"{r:.2f}x" for r in ratios)
        print(f"\n{b} / {a} CPU per restore, per round: {each} "
              f"(median {statistics.median(ratios):.2f}x)")
        rows.append(("floor", fl))
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()
