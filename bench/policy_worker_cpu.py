"""CPU and latency of one uncached embedded ``decide()``, the policy workers' CPU included.

    .venv/bin/python bench/policy_worker_cpu.py [--tree DIR] [--n 2000]

``bench/policy_bench.py --ratio`` counts this process's CPU only; since decisions are
evaluated in policy worker processes, a cache miss's CPU is split between the gateway and a
worker. This runs the policy_bench workload through ``decide()`` with the cache off (as its
``no cache`` rows), sequentially, and reports per decision: the gateway's CPU
(``time.process_time``), the workers' CPU (``/proc/PID/stat`` utime + stime, 10 ms ticks:
use n >= 1000), their sum, and p50/p99 latency. ``--tree DIR`` imports ``gateway`` from DIR
(e.g. ``git archive main | tar -x -C /tmp/base``: a tree without workers reports 0 for them).
Run both trees alternately for an A/B: the machine's load moves between runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # replaced (see the "replaced" column): its CPU is lost
            continue
        total += (int(fields[11]) + int(fields[12])) / _TICK
    return total


async def _run(tree: Path, n: int) -> None:
    import policy_bench as pb
    import policy_support as ps

    from gateway.policy import PolicySettings, create_policy_engine
    from gateway.policy.bundle import load_bundle
    from gateway.policy.embedded import Evaluator

    pb.quiet_json_log()
    bundle = load_bundle(ps.POLICY_DIR)
    inputs = pb.workload(n)
    eng: Any = create_policy_engine(PolicySettings(path=ps.POLICY_DIR, reload=False))
    await eng.start()
    eng._evaluator = Evaluator(bundle, cache_size=0)
    for inp in inputs[:200]:  # warm-up
        await eng.decide(inp)
    workers = getattr(eng, "workers", None)
    pids: list[int] = workers.pids if workers is not None else []
    latencies = []
    load0 = os.getloadavg()[0]
    cpu0, workers0 = time.process_time(), _cpu_s(pids)
    for inp in inputs:
        start = time.perf_counter()
        await eng.decide(inp)
        latencies.append(time.perf_counter() - start)
    gateway, worker = time.process_time() - cpu0, _cpu_s(pids) - workers0
    latencies.sort()
    print(f"| {tree} | {gateway / n * 1e6:.0f} | {worker / n * 1e6:.0f} | "
          f"{(gateway + worker) / n * 1e6:.0f} | {latencies[n // 2] * 1e6:.0f} | "
          f"{latencies[int(n * 0.99)] * 1e6:.0f} | {getattr(workers, 'replaced', '-')} | "
          f"{load0:.1f} → {os.getloadavg()[0]:.1f} |")
    await eng.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    ap.add_argument("--n", type=int, default=2000)
    args = ap.parse_args()
    tree = args.tree.resolve()
    sys.path[:0] = [str(tree), str(tree / "tests"), str(tree / "bench")]
    asyncio.run(_run(tree, args.n))


if __name__ == "__main__":
    main()
