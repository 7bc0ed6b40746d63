"""What an isolated run pays for its SDK, by catalog size: A/B against a base tree, interleaved.

    .venv/bin/python bench/sdk_install.py --compare /tmp/base --rounds 2 --functions 2000,20

Each measurement is a child process with the tree first on ``sys.path``: one ``SandboxPool``
(``workers=1``) of that tree, an SDK of N synthetic functions (signatures and docs the size of a
real vendor spec's), ``--runs`` sequential isolated runs of one SDK call, each started once the
process has restored its next interpreter. Per run: wall ms from ``pool.run`` to its result, and
CPU of the host process plus the whole Deno process (every thread) from one run's start to the
next's, i.e. the run plus the restore after it. The base tree is a ``git archive`` of the base
commit with ``runtimes/node_modules`` beside it (bench/code_speed.py says how).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TCK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        f = fh.read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / TCK


async def _child(tree: Path, n: int, runs: int) -> dict[str, Any]:
    sys.path.insert(0, str(tree))
    from gateway.models import Limits
    from gateway.sandbox import RunRequest, SandboxPool, SandboxSettings, SdkFunction

    per = max(1, n // 5)
    sdk = tuple(
        SdkFunction(operation=f"vendor{i // per}.op_{i}", backend=f"vendor{i // per}",
                    function=f"op_{i}",
                    signature=f"op_{i}(owner: str, repo: str, *, per_page: int = 30, "
                              "page: int = 1, state: str | None = None) -> dict",
                    doc=f"Operation {i}.\n\n" + "A sentence of its description. " * 20)
        for i in range(n))

    async def host(op: str, kwargs: dict[str, Any]) -> Any:
        return {"ok": True}

    def req() -> RunRequest:
        return RunRequest(source="import sdk\nsdk.vendor0.op_0('o', 'r')", inputs={},
                          limits=Limits(timeout_ms=120_000), principal_key="bench", sdk=sdk,
                          sdk_revision=f"bench-{n}")

    pool = SandboxPool(SandboxSettings(workers=1, runtime_dir=tree / "runtimes"))
    await pool.start()

    async def ready_pid(recycles: int = -1) -> int:
        """The process's pid once it has restored its next interpreter (``recycles``: the
        pool's count before the last run; the restore after it must have ended)."""
        while True:
            procs = [p for p in pool._slots if p is not None and p.ready and not p.dead]
            if (procs and procs[0].pid is not None
                    and pool.stats()["recycles"] > recycles):
                await asyncio.sleep(0.2)  # let the restore's background threads settle
                return procs[0].pid
            await asyncio.sleep(0.02)

    try:
        recycles = pool.stats()["recycles"]
        r = await pool.run(req(), host)  # untimed: the process's first run of this revision
        assert r.ok, r.error
        walls: list[float] = []
        cpus: list[float] = []
        pid = await ready_pid(recycles)
        mark = _cpu(pid) + time.process_time()
        for _ in range(runs):
            recycles = pool.stats()["recycles"]
            t0 = time.perf_counter()
            r = await pool.run(req(), host)
            walls.append((time.perf_counter() - t0) * 1e3)
            assert r.ok, r.error
            new_pid = await ready_pid(recycles)
            if new_pid != pid:
                raise RuntimeError("the sandbox process was replaced during the bench")
            now = _cpu(pid) + time.process_time()
            cpus.append((now - mark) * 1e3)
            mark = now
        return {"n": n, "wall_p50_ms": statistics.median(walls), "wall_max_ms": max(walls),
                "cpu_ms_per_run": statistics.median(cpus), "load": os.getloadavg()[0]}
    finally:
        await pool.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", default="", help="base tree to alternate with")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--functions", default="2000,20", help="SDK sizes, comma-separated")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        tree, n = args.child.rsplit(":", 1)
        print(json.dumps(asyncio.run(_child(Path(tree), int(n), args.runs))))
        return
    trees = [("this", str(REPO))] + ([("base", args.compare)] if args.compare else [])
    rows = []
    for rnd in range(args.rounds):
        order = trees if rnd % 2 == 0 else trees[::-1]
        for n in (int(x) for x in args.functions.split(",")):
            for label, tree in order:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", f"{tree}:{n}", "--runs", str(args.runs)],
                    cwd=tree, capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append((label, rnd + 1, row))
                print(f"{label} #{rnd + 1}: {json.dumps(row)}", file=sys.stderr, flush=True)
    print("| tree | round | SDK functions | isolated run p50 ms (max) | CPU ms per isolated run "
          "(run + restore) | load |\n|---|---:|---:|---:|---:|---:|")
    for label, rnd, r in rows:
        print(f"| {label} | {rnd} | {r['n']} | {r['wall_p50_ms']:.1f} ({r['wall_max_ms']:.0f}) | "
              f"{r['cpu_ms_per_run']:.0f} | {r['load']:.1f} |")


if __name__ == "__main__":
    main()
