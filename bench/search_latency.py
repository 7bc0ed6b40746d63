"""In-process ranking cost of ``SearchIndex.search``: this tree against a git commit's
``gateway/catalog/search.py``, interleaved (docs/search-quality.md, "Round 4").

Usage: .venv/bin/python bench/search_latency.py [--base COMMIT] [--rounds 3] [--repeat 5]
Index: a mixed catalog of ~2,200 operations (GHEC, Twilio, rclone, Dialogporten, Figma and
the first 300 GHES operations by name). Queries: the dev and train intents (no held-out
text is read). Per round and version: thread CPU time of each ``search(query, 10)``, p50 /
p90 in ms; index build CPU time in s. Rounds alternate base / new.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_eval as se

from gateway.catalog import load_catalog_sync
from gateway.catalog import search as current
from gateway.models import Operation

ROOT = Path(__file__).resolve().parents[1]


def base_module(commit: str) -> ModuleType:
    text = subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:gateway/catalog/search.py"],
                          check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "search_base.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("search_base", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mixed_operations() -> list[Operation]:
    ops: list[Operation] = []
    for name in ("ghec", "twilio", "rclone", "dialogporten", "figma"):
        ops += load_catalog_sync(se.CATALOGS[name]).operations
    ops += sorted(load_catalog_sync(se.CATALOGS["ghes"]).operations, key=lambda o: o.name)[:300]
    return ops


def measure(module: ModuleType, ops: list[Operation], queries: list[str],
            repeat: int) -> tuple[float, float, float]:
    t0 = time.thread_time()
    index = module.SearchIndex(ops)
    build = time.thread_time() - t0
    times = []
    for _ in range(repeat):
        for q in queries:
            t = time.thread_time()
            index.search(q, 10)
            times.append(time.thread_time() - t)
    times.sort()
    return (statistics.median(times) * 1000, times[int(len(times) * 0.9)] * 1000, build)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default="4a8d93b")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    base = base_module(args.base)
    ops = mixed_operations()
    queries = [q["query"] for q in se.load_queries() if q["split"] in se.TUNED]
    print(f"{len(ops)} operations, {len(queries)} queries x {args.repeat}")
    for r in range(args.rounds):
        for label, module in ((f"base {args.base}", base), ("this tree", current)):
            p50, p90, build = measure(module, ops, queries, args.repeat)
            print(f"round {r + 1} {label}: p50 {p50:.3f} ms, p90 {p90:.3f} ms, "
                  f"index build {build:.2f} s CPU", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
