"""Catalog benchmark: GitHub spec load time and memory, search latency, search quality.

Run by hand (prints a markdown table):  .venv/bin/python bench/catalog.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.catalog import Catalog, load_catalog_sync, operations_from_openapi  # noqa: E402
from gateway.models import BackendSettings  # noqa: E402

SPEC = ROOT / "runtimes/node_modules/@octokit/openapi/generated/api.github.com.json"
QUERIES = ROOT / "tests/data/github_search_queries.json"
GITHUB = BackendSettings(name="github", openapi=str(SPEC))
DEMO = [BackendSettings(name="ledger", app="gateway.demo.ledger:app"),
        BackendSettings(name="workspace", app="gateway.demo.workspace:app")]


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * 4096 / 2**20


def _median_ms(samples: list[tuple[float, float]]) -> str:
    wall = statistics.median(w for w, _ in samples) * 1000
    cpu = statistics.median(c for _, c in samples) * 1000
    return f"{wall:.0f} ms wall / {cpu:.0f} ms CPU"


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    now = _clock()
    return now[0] - start[0], now[1] - start[1]


def _quality(catalog: Catalog, which: str, split: str | None = None) -> tuple[float, float, int]:
    queries = [q for q in json.loads(QUERIES.read_text())["queries"] if q["catalog"] == which
               and (split is None or q.get("split") == split)]
    h1 = h5 = 0
    for q in queries:
        names = [op.name for op, _ in catalog.search(q["query"], limit=5)]
        h1 += names[:1] == [q["expected"]]
        h5 += q["expected"] in names
    return h1 / len(queries), h5 / len(queries), len(queries)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    rows: list[tuple[str, str]] = []
    parse: list[tuple[float, float]] = []
    build: list[tuple[float, float]] = []
    total: list[tuple[float, float]] = []
    for _ in range(args.repeat):
        gc.collect()
        start = _clock()
        spec = json.loads(SPEC.read_bytes())
        parse.append(_since(start))
        start = _clock()
        ops = operations_from_openapi(GITHUB, spec)
        build.append(_since(start))
        del spec, ops
        gc.collect()
        start = _clock()
        catalog = load_catalog_sync([GITHUB])
        total.append(_since(start))
        del catalog
    rows += [
        ("GitHub spec size", f"{SPEC.stat().st_size / 2**20:.1f} MiB JSON"),
        ("parse JSON (median)", _median_ms(parse)),
        ("operations_from_openapi (median)", _median_ms(build)),
        ("load_catalog_sync end to end, incl. revision + search index (median)",
         _median_ms(total)),
    ]

    gc.collect()
    rss0 = _rss_mb()
    tracemalloc.start()
    catalog = load_catalog_sync([GITHUB])
    gc.collect()
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    gc.collect()
    rows += [
        ("operations", str(len(catalog.operations))),
        ("Python heap peak while loading (tracemalloc)", f"{peak / 2**20:.0f} MiB"),
        ("Python heap retained by the catalog", f"{retained / 2**20:.0f} MiB"),
        ("process RSS growth", f"{_rss_mb() - rss0:.0f} MiB"),
    ]

    queries = [q["query"] for q in json.loads(QUERIES.read_text())["queries"]]
    lat = []
    for _ in range(20):
        for q in queries:
            t = time.perf_counter()
            catalog.search(q, limit=10)
            lat.append(time.perf_counter() - t)
    lat.sort()
    rows += [
        ("search latency over 1,223 ops (median)", f"{statistics.median(lat) * 1000:.2f} ms"),
        ("search latency (p99)", f"{lat[int(len(lat) * 0.99)] * 1000:.2f} ms"),
    ]
    g1, g5, gn = _quality(catalog, "github")
    dev1, dev5, devn = _quality(catalog, "github", "dev")
    ho1, ho5, hon = _quality(catalog, "github", "holdout")
    start = _clock()
    demo = load_catalog_sync(DEMO)
    demo_ms = _since(start)[1] * 1000
    d1, d5, dn = _quality(demo, "demo")
    rows += [
        (f"search quality, GitHub, all ({gn} labelled tasks)", f"hit@1 {g1:.2f}, hit@5 {g5:.2f}"),
        (f"  of which tuned-on 'dev' ({devn})", f"hit@1 {dev1:.2f}, hit@5 {dev5:.2f}"),
        (f"  of which never-tuned 'holdout' ({hon})", f"hit@1 {ho1:.2f}, hit@5 {ho5:.2f}"),
        (f"search quality, demo ({dn} labelled tasks)", f"hit@1 {d1:.2f}, hit@5 {d5:.2f}"),
        ("demo catalog from app entry points (first load, incl. import)",
         f"{demo_ms:.0f} ms CPU"),
    ]

    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
