"""Isolation benchmark: the old shared-process sandbox against the one-interpreter-per-process one.

Run by hand (it prints markdown tables):

    .venv/bin/python bench/isolation_bench.py                  # 3 rounds, ~10-12 min on 2 cores
    .venv/bin/python bench/isolation_bench.py --quick          # 1 round, shorter phases
    .venv/bin/python bench/isolation_bench.py --old /tmp/old0  # the old tree (a git worktree)

Both trees ship a package named ``gateway``, so each measurement runs in a child process of its
own (``--child TREE``) with that tree first on ``sys.path``; the child prints one JSON line. The
parent interleaves the trees round by round (the order flips every round, so drift in machine
load hits both sides alike) and reports the median over rounds per configuration plus the
new/old ratio. Machines here are shared and noisy: read the ratios, not the absolute figures.

Configurations: ``old`` = the old tree's default shape ``SandboxSettings(workers=2, spares=2)``
(2 Deno processes, each with 2 ready isolates), ``new4`` = the new tree's default
``SandboxSettings(workers=4)`` (4 processes, one interpreter each), ``new2`` = ``workers=2``
(same process count as old). Each child measures, in this order:

* pool start: cold (new: an empty ``SWITCHBOARD_CACHE_DIR``, so the snapshot is made; old has no
  disk cache, every start makes its snapshots; first ``--cold-rounds`` rounds only) and warm
  (a second pool, cache present; the cache dir is kept per configuration between rounds);
* memory at idle: RSS (and PSS, which counts shared pages once) per Deno process and in total;
  per-run memory = total / isolated runs the pool can start at once without waiting for a new
  interpreter (old: workers x spares; new: workers);
* warm trivial run latency: ``1 + 1`` one at a time, the pool fully ready before each sample;
* isolated runs/s: 8 clients, no session, back to back, for a fixed duration;
* session run latency: one session, sequential runs;
* blast radius: an attacker loops a JS-heap bomb while a victim principal runs isolated runs
  (paced) and session runs (paced, with a counter that must survive between runs); victim
  latencies, failures and session resets are counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
NEW_TREE = HERE.parents[1]
DEFAULT_OLD_TREE = Path("/tmp/old0")
MIB = 1 << 20

BOMB = ("import pyodide_js\nJS = pyodide_js._module.constructor.constructor\n"
        "JS('const a = []; while (true) a.push(new Array(1e6).fill(1.5));')()")
COUNTER = "n = globals().get('n', 0) + 1\nn"
CONFIGS: dict[str, tuple[str, int]] = {"old": ("old", 2), "new4": ("new", 4), "new2": ("new", 2)}
LABELS = {"old": "old (w=2, spares=2)", "new4": "new (w=4)", "new2": "new (w=2)"}


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (as bench/sandbox_bench.py); nan for no samples."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


# ---- child: one tree, one pool shape --------------------------------------------------------


def _pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


class Child:
    def __init__(self, args: argparse.Namespace) -> None:
        # Imported here: the tree's gateway package is first on sys.path by now.
        import gateway
        from gateway.models import Limits
        from gateway.sandbox import RunRequest, SandboxPool, SandboxSettings

        self.args = args
        self.gateway_file = gateway.__file__
        self.Limits, self.RunRequest = Limits, RunRequest
        self.SandboxPool, self.SandboxSettings = SandboxPool, SandboxSettings
        self.old = args.child == "old"
        self.workers = args.workers
        self.spares = 2
        self.out: dict[str, Any] = {}

    def settings(self) -> Any:
        if self.old:
            return self.SandboxSettings(workers=self.workers, spares=self.spares)
        return self.SandboxSettings(workers=self.workers)

    def request(self, src: str, principal: str = "bench/agent", session: str | None = None,
                timeout_ms: int = 10000) -> Any:
        return self.RunRequest(source=src, inputs={},
                               limits=self.Limits(timeout_ms=timeout_ms, memory_mb=256),
                               principal_key=principal, session_id=session)

    @staticmethod
    async def host(op: str, kwargs: dict[str, Any]) -> Any:
        return None

    async def ready(self, pool: Any, timeout_s: float = 30.0) -> bool:
        """Every isolated-run slot holds a fresh, idle interpreter."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.old:
                stats = await pool.isolate_stats()
                if len(stats) == self.workers and all(
                        s["spares"] >= self.spares and s["creating"] == 0 for s in stats):
                    return True
            elif pool.stats()["idle"] >= self.workers:
                return True
            await asyncio.sleep(0.01)
        self.out.setdefault("anomalies", []).append(f"pool not ready within {timeout_s:.0f} s")
        return False

    async def start_pool(self) -> tuple[Any, float, float]:
        pool = self.SandboxPool(self.settings())
        t0 = time.perf_counter()
        await pool.start()
        started = time.perf_counter() - t0
        await self.ready(pool, 120.0)
        return pool, started, time.perf_counter() - t0

    async def main(self) -> dict[str, Any]:
        a = self.args
        self.out.update(tree=a.child, workers=self.workers, round=a.round,
                        gateway=self.gateway_file, load_start=os.getloadavg()[0])
        t_child = time.perf_counter()
        phases: dict[str, float] = {}
        if a.cold:
            pool, s, r = await self.start_pool()  # cold: empty snapshot cache (new tree)
            self.out.update(start_cold_s=s, ready_cold_s=r)
            await pool.close()
        pool, s, r = await self.start_pool()  # warm: snapshot cached (new tree)
        self.out.update(start_warm_s=s, ready_warm_s=r)
        phases["starts"] = time.perf_counter() - t_child
        try:
            for phase in (self.memory, self.warm_latency, self.throughput,
                          self.session_latency, self.blast):
                t0 = time.perf_counter()
                await phase(pool)
                phases[phase.__name__] = time.perf_counter() - t0
        finally:
            t0 = time.perf_counter()
            await pool.close()
            phases["close"] = time.perf_counter() - t0
        self.out.update(load_end=os.getloadavg()[0], child_s=time.perf_counter() - t_child,
                        phase_s=phases)
        return self.out

    async def memory(self, pool: Any) -> None:
        await pool.run(self.request("1 + 1"), self.host)  # every code path touched once
        await self.ready(pool)
        await asyncio.sleep(1.0)
        await self.ready(pool)
        stats = pool.stats()
        pids = [p for p in stats["pids"] if p]
        rss = [v for v in stats["rss_bytes"].values() if v]
        pss = [_pss_bytes(p) for p in pids]
        capacity = self.workers * (self.spares if self.old else 1)
        self.out.update(
            procs=len(rss), rss_per_proc_mib=[v / MIB for v in rss],
            rss_total_mib=sum(rss) / MIB, pss_total_mib=sum(pss) / MIB,
            capacity=capacity, rss_per_run_mib=sum(rss) / MIB / capacity,
            pss_per_run_mib=sum(pss) / MIB / capacity)

    async def warm_latency(self, pool: Any) -> None:
        xs = []
        for _ in range(self.args.samples):
            await self.ready(pool)
            t0 = time.perf_counter()
            await pool.run(self.request("1 + 1"), self.host)
            xs.append((time.perf_counter() - t0) * 1000)
        self.out.update(warm_p50_ms=pct(xs, 50), warm_p99_ms=pct(xs, 99))

    async def throughput(self, pool: Any) -> None:
        await self.ready(pool)
        ok, errors = 0, Counter[str]()
        stop = time.perf_counter() + self.args.seconds

        async def client() -> None:
            nonlocal ok
            while time.perf_counter() < stop:
                try:
                    await pool.run(self.request("1 + 1"), self.host)
                    ok += 1
                except Exception as exc:
                    errors[type(exc).__name__] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(8)))
        self.out.update(iso_rps=ok / (time.perf_counter() - t0), iso_rps_errors=dict(errors))

    async def session_latency(self, pool: Any) -> None:
        await pool.run(self.request("1 + 1", session="lat"), self.host)
        await self.ready(pool)  # new tree: the session's process is replaced in the pool
        xs = []
        for _ in range(self.args.samples * 2):
            t0 = time.perf_counter()
            await pool.run(self.request("1 + 1", session="lat"), self.host)
            xs.append((time.perf_counter() - t0) * 1000)
        self.out.update(session_p50_ms=pct(xs, 50), session_p99_ms=pct(xs, 99))

    async def blast(self, pool: Any) -> None:
        victim = "bench/victim"
        await pool.run(self.request(COUNTER, victim, "v"), self.host)
        await self.ready(pool)
        before = dict(pool.stats())
        stop = time.perf_counter() + self.args.blast_seconds
        attacker_outcomes: Counter[str] = Counter()
        iso: list[float] = []
        sess: list[float] = []
        iso_fail: Counter[str] = Counter()
        sess_fail: Counter[str] = Counter()
        resets = 0

        async def attacker() -> None:
            while time.perf_counter() < stop:
                try:
                    res = await pool.run(self.request(BOMB, "bench/attacker"), self.host)
                    attacker_outcomes["user_error" if not res.ok else "ok"] += 1
                except Exception as exc:
                    attacker_outcomes[getattr(exc, "code", type(exc).__name__)] += 1

        async def victim_iso() -> None:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    res = await pool.run(self.request("1 + 1", victim), self.host)
                    if res.result != 2:
                        iso_fail["wrong_result"] += 1
                    iso.append((time.perf_counter() - t0) * 1000)
                except Exception as exc:
                    iso_fail[getattr(exc, "code", type(exc).__name__)] += 1
                await asyncio.sleep(0.2)

        async def victim_session() -> None:
            nonlocal resets
            expect = 2
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    res = await pool.run(self.request(COUNTER, victim, "v"), self.host)
                    sess.append((time.perf_counter() - t0) * 1000)
                    if res.result != expect:
                        resets += 1  # the session's interpreter was lost: state is gone
                    expect = int(res.result) + 1
                except Exception as exc:
                    sess_fail[getattr(exc, "code", type(exc).__name__)] += 1
                await asyncio.sleep(0.1)

        await asyncio.gather(attacker(), victim_iso(), victim_session())
        after = pool.stats()
        self.out.update(
            blast_attacker_runs=sum(attacker_outcomes.values()),
            blast_attacker_outcomes=dict(attacker_outcomes),
            blast_iso_p50_ms=pct(iso, 50), blast_iso_p99_ms=pct(iso, 99),
            blast_iso_runs=len(iso) + sum(iso_fail.values()),
            blast_iso_failures=sum(iso_fail.values()), blast_iso_fail_kinds=dict(iso_fail),
            blast_sess_p50_ms=pct(sess, 50), blast_sess_p99_ms=pct(sess, 99),
            blast_sess_runs=len(sess) + sum(sess_fail.values()),
            blast_sess_failures=sum(sess_fail.values()), blast_sess_fail_kinds=dict(sess_fail),
            blast_sess_resets=resets,
            blast_respawns=after.get("respawns", 0) - before.get("respawns", 0))


def child_main(args: argparse.Namespace) -> None:
    tree = Path(args.tree).resolve()
    sys.path.insert(0, str(tree))
    out = asyncio.run(Child(args).main())
    if not Path(out["gateway"]).resolve().is_relative_to(tree):
        raise SystemExit(f"imported the wrong gateway: {out['gateway']} (wanted {tree})")
    print(json.dumps(out))


# ---- parent: interleave the trees, aggregate ---------------------------------------------


ROWS: list[tuple[str, str, str]] = [
    # (key, label, format)
    ("iso_rps", "isolated runs/s, 8 clients, `1 + 1`", ".2f"),
    ("warm_p50_ms", "warm trivial run p50, ms (pool ready before each)", ".2f"),
    ("warm_p99_ms", "warm trivial run p99, ms", ".2f"),
    ("session_p50_ms", "session run p50, ms", ".2f"),
    ("session_p99_ms", "session run p99, ms", ".2f"),
    ("procs", "Deno processes at idle", ".0f"),
    ("rss_proc_mib", "RSS per Deno process at idle, MiB (median)", ".0f"),
    ("rss_total_mib", "total Deno RSS at idle, MiB", ".0f"),
    ("pss_total_mib", "total Deno PSS at idle, MiB", ".0f"),
    ("capacity", "isolated runs startable at once (ready interpreters)", ".0f"),
    ("rss_per_run_mib", "RSS per concurrent isolated run, MiB", ".0f"),
    ("pss_per_run_mib", "PSS per concurrent isolated run, MiB", ".0f"),
    ("start_cold_s", "pool start, cold (no snapshot cache), s", ".2f"),
    ("ready_cold_s", "pool fully ready, cold, s", ".2f"),
    ("start_warm_s", "pool start, warm (cache present), s", ".2f"),
    ("ready_warm_s", "pool fully ready, warm, s", ".2f"),
    ("blast_iso_p50_ms", "blast: victim isolated run p50, ms", ".2f"),
    ("blast_iso_p99_ms", "blast: victim isolated run p99, ms", ".2f"),
    ("blast_iso_failures", "blast: victim isolated failures", ".0f"),
    ("blast_iso_runs", "blast: victim isolated runs attempted", ".0f"),
    ("blast_sess_p50_ms", "blast: victim session run p50, ms", ".2f"),
    ("blast_sess_p99_ms", "blast: victim session run p99, ms", ".2f"),
    ("blast_sess_failures", "blast: victim session failures", ".0f"),
    ("blast_sess_resets", "blast: victim session state lost (counter reset)", ".0f"),
    ("blast_sess_runs", "blast: victim session runs attempted", ".0f"),
    ("blast_attacker_runs", "blast: attacker heap bombs run", ".0f"),
    ("blast_respawns", "blast: Deno processes respawned", ".0f"),
]


def run_child(name: str, tree: Path, rnd: int, cache: Path,
              args: argparse.Namespace) -> dict[str, Any]:
    kind, workers = CONFIGS[name]
    cold = rnd < args.cold_rounds
    argv = [sys.executable, str(HERE), "--child", kind, "--tree", str(tree),
            "--workers", str(workers), "--round", str(rnd), "--samples", str(args.samples),
            "--seconds", str(args.seconds), "--blast-seconds", str(args.blast_seconds),
            "--cold", str(int(cold))]
    env = {k: v for k, v in os.environ.items()
           if k not in ("SWITCHBOARD_RUNTIME_DIR", "PYTHONPATH")}
    if cold:
        shutil.rmtree(cache, ignore_errors=True)  # empty: this child's first start is cold
    cache.mkdir(mode=0o700, exist_ok=True)
    env["SWITCHBOARD_CACHE_DIR"] = str(cache)  # one per config, kept between its rounds
    t0 = time.perf_counter()
    p = subprocess.run(argv, cwd=tree, env=env, capture_output=True, text=True,
                       timeout=args.child_timeout, check=False)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        tail = p.stderr[-3000:]
        print(f"child {name} round {rnd} failed (rc {p.returncode}):\n{tail}", file=sys.stderr)
        return {"failed": True, "wall_s": wall}
    out = dict(json.loads(p.stdout.strip().splitlines()[-1]))
    out["wall_s"] = wall
    out["rss_proc_mib"] = statistics.median(out["rss_per_proc_mib"])
    print(f"  round {rnd} {name}: {wall:.0f} s, load {out['load_start']:.1f}->"
          f"{out['load_end']:.1f}, {out['iso_rps']:.2f} runs/s, warm p50 "
          f"{out['warm_p50_ms']:.1f} ms, blast victim failures "
          f"{out['blast_iso_failures']}+{out['blast_sess_failures']}; phases "
          f"{ {k: round(v, 1) for k, v in out['phase_s'].items()} }", file=sys.stderr)
    return out


def median_of(results: list[dict[str, Any]], key: str) -> float | None:
    xs = [r[key] for r in results if not r.get("failed") and r.get(key) is not None
          and r[key] == r[key]]
    return statistics.median(xs) if xs else None


def cell(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def ratio(new: float | None, old: float | None) -> str:
    if new is None or old is None:
        return "n/a"
    if old == 0:
        return "—" if new == 0 else "∞"
    return f"{new / old:.2f}x"


def report(results: dict[str, list[dict[str, Any]]], names: list[str],
           meta: dict[str, Any]) -> None:
    news = [n for n in names if n != "old"]
    head = ["measure (median over rounds)", *(LABELS[n] for n in names)]
    if "old" in names:
        head += [f"{LABELS[n]} / old" for n in news]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for key, label, spec in ROWS:
        vals = {n: median_of(results[n], key) for n in names}
        row = [label, *(cell(vals[n], spec) for n in names)]
        if "old" in names:
            row += [ratio(vals[n], vals["old"]) for n in news]
        print("| " + " | ".join(row) + " |")
    print()
    print("Per round (runs/s; warm p50 ms; victim isolated failures/attempts; victim session "
          "failures/attempts/resets; child load avg start->end):\n")
    print("| round | config | runs/s | warm p50 | iso fail | sess fail/reset | load |")
    print("|---:|---|---:|---:|---|---|---|")
    for n in names:
        for r in results[n]:
            if r.get("failed"):
                print(f"| {r.get('round', '?')} | {LABELS[n]} | failed | | | | |")
                continue
            print(f"| {r['round']} | {LABELS[n]} | {r['iso_rps']:.2f} | {r['warm_p50_ms']:.2f}"
                  f" | {r['blast_iso_failures']}/{r['blast_iso_runs']}"
                  f" {r['blast_iso_fail_kinds'] or ''}"
                  f" | {r['blast_sess_failures']}/{r['blast_sess_runs']}/"
                  f"{r['blast_sess_resets']} {r['blast_sess_fail_kinds'] or ''}"
                  f" | {r['load_start']:.1f}->{r['load_end']:.1f} |")
    print()
    for k, v in meta.items():
        print(f"* {k}: {v}")


def parent_main(args: argparse.Namespace) -> None:
    old_tree = Path(args.old).resolve()
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    for n in names:
        if n not in CONFIGS:
            raise SystemExit(f"unknown config {n!r} (choose from {', '.join(CONFIGS)})")
    t0 = time.perf_counter()
    meta: dict[str, Any] = {"nproc": os.cpu_count(),
                            "load avg at start (1, 5, 15 min)": os.getloadavg(),
                            "rounds": args.rounds,
                            "settings": f"samples={args.samples}, throughput {args.seconds} s, "
                                        f"blast {args.blast_seconds} s, cold start measured in "
                                        f"the first {args.cold_rounds} round(s); the old tree "
                                        "has no snapshot cache (every start is its cold path)",
                            "old tree": str(old_tree), "new tree": str(NEW_TREE)}
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="isolation-bench-cache-") as caches:
        for rnd in range(args.rounds):
            order = names if rnd % 2 == 0 else names[::-1]
            for n in order:
                tree = old_tree if CONFIGS[n][0] == "old" else NEW_TREE
                r = run_child(n, tree, rnd, Path(caches) / n, args)
                r.setdefault("round", rnd)
                results[n].append(r)
    meta["load avg at end (1, 5, 15 min)"] = os.getloadavg()
    meta["wall time, s"] = f"{time.perf_counter() - t0:.0f}"
    anomalies = [f"{n} round {r.get('round')}: {a}" for n in names for r in results[n]
                 for a in r.get("anomalies", [])]
    anomalies += [f"{n} round {r.get('round')}: throughput errors {r['iso_rps_errors']}"
                  for n in names for r in results[n] if r.get("iso_rps_errors")]
    if anomalies:
        meta["anomalies"] = "; ".join(anomalies)
    report(results, names, meta)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"meta": meta, "results": results}, indent=1,
                                                  default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 round, shorter phases")
    ap.add_argument("--configs", default="old,new4,new2", help="comma list of old,new4,new2")
    ap.add_argument("--old", default=str(DEFAULT_OLD_TREE), help="the old tree (a worktree)")
    ap.add_argument("--samples", type=int, default=20, help="warm latency samples per child")
    ap.add_argument("--seconds", type=float, default=10.0, help="isolated throughput duration")
    ap.add_argument("--blast-seconds", type=float, default=10.0)
    ap.add_argument("--cold-rounds", type=int, default=1,
                    help="rounds that also measure a cold start (new: empty snapshot cache)")
    ap.add_argument("--child-timeout", type=float, default=300.0)
    ap.add_argument("--json-out", default="", help="also write every child's raw JSON here")
    ap.add_argument("--child", choices=("old", "new"), help=argparse.SUPPRESS)
    ap.add_argument("--tree", help=argparse.SUPPRESS)
    ap.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--cold", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args)
        return
    if args.quick:
        args.rounds, args.samples, args.seconds, args.blast_seconds = 1, 10, 5.0, 6.0
    parent_main(args)


if __name__ == "__main__":
    main()
