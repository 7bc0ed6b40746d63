"""Search quality over labelled intents on real specs: the catalog's BM25F vs plain BM25.

Usage: .venv/bin/python bench/search_eval.py
Labelled sets: tests/data/github_search_queries.json (api.github.com + demo) and
tests/data/search_intents.json (GHEC, GHES 3.19, rclone, Dialogporten). For each catalog and
split (dev / holdout) prints hit@1, hit@5 of the gateway's search (``Catalog.search``) and of
a plain BM25 baseline (k1 1.2, b 0.75, one bag of words over name, summary, description, tags
and parameter names; lower-case alphanumeric tokens, no stemming, no query expansion, no
field weights).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.catalog import Catalog, load_catalog_sync
from gateway.models import BackendSettings, Operation

ROOT = Path(__file__).resolve().parents[1]
MODULES = ROOT / "runtimes" / "node_modules"
QUERY_FILES = (ROOT / "tests/data/github_search_queries.json",
               ROOT / "tests/data/search_intents.json")
CATALOGS: dict[str, list[BackendSettings]] = {
    "github": [BackendSettings(
        name="github", openapi=str(MODULES / "@octokit/openapi/generated/api.github.com.json"))],
    "ghec": [BackendSettings(
        name="github", openapi=str(MODULES / "@octokit/openapi/generated/ghec.json"))],
    "ghes": [BackendSettings(
        name="github", openapi=str(MODULES / "@octokit/openapi/generated/ghes-3.19.json"))],
    "rclone": [BackendSettings(
        name="rclone", openapi=str(MODULES / "rclone-openapi/openapi.json"))],
    "dialogporten": [BackendSettings(
        name="dialogporten",
        openapi=str(MODULES / "@digdir/dialogporten-schema/swagger.verified.json"))],
    "demo": [BackendSettings(name="ledger", app="gateway.demo.ledger:app"),
             BackendSettings(name="workspace", app="gateway.demo.workspace:app")],
}
_STOP = frozenset([
    "a", "an", "the", "of", "to", "in", "on", "for", "and", "or", "is", "are", "be", "by",
    "with", "from", "as", "at", "it", "this", "that", "all", "any", "my", "our", "your",
])


def _terms(text: str) -> list[str]:
    return [t for t in re.findall(r"[a-z0-9]+", text.lower()) if t not in _STOP]


class PlainBM25:
    """The baseline: Okapi BM25 over one document per operation."""

    def __init__(self, ops: Sequence[Operation], k1: float = 1.2, b: float = 0.75) -> None:
        self.ops = list(ops)
        self.k1, self.b = k1, b
        self.docs = [Counter(_terms(" ".join([
            op.name.replace("_", " ").replace(".", " "), op.summary, op.description,
            " ".join(op.tags), " ".join(p.name.replace("_", " ") for p in op.parameters)])))
            for op in self.ops]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg = sum(self.lengths) / max(len(self.docs), 1)
        df: Counter[str] = Counter()
        for d in self.docs:
            df.update(d.keys())
        n = len(self.docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}

    def search(self, query: str, limit: int = 10) -> list[Operation]:
        terms = _terms(query)
        scored = []
        for i, d in enumerate(self.docs):
            s = 0.0
            for t in terms:
                tf = d.get(t, 0)
                if tf:
                    norm = self.k1 * (1 - self.b + self.b * self.lengths[i] / self.avg)
                    s += self.idf[t] * tf * (self.k1 + 1) / (tf + norm)
            if s > 0:
                scored.append((s, i))
        scored.sort(key=lambda x: (-x[0], self.ops[x[1]].name))
        return [self.ops[i] for _, i in scored[:limit]]


def load_queries() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in QUERY_FILES:
        out += json.loads(path.read_text())["queries"]
    return out


def evaluate(name: str, catalog: Catalog | None = None) -> dict[str, dict[str, Any]]:
    """``{"<ranker>/<split>": {"n", "hit@1", "hit@5"}}`` for one catalog, splits dev,
    holdout and all, rankers ``switchboard`` and ``bm25``."""
    catalog = catalog or load_catalog_sync(CATALOGS[name])
    baseline = PlainBM25(catalog.operations)
    queries = [q for q in load_queries() if q["catalog"] == name]
    missing = [q["expected"] for q in queries if q["expected"] not in catalog]
    if missing:
        raise ValueError(f"{name}: labelled operations not in the catalog: {missing}")
    results: dict[str, dict[str, Any]] = {}
    for ranker in ("switchboard", "bm25"):
        ranks: dict[str, list[int | None]] = {"dev": [], "holdout": [], "all": []}
        for q in queries:
            if ranker == "switchboard":
                names = [op.name for op, _ in catalog.search(q["query"], limit=5)]
            else:
                names = [op.name for op in baseline.search(q["query"], limit=5)]
            rank = names.index(q["expected"]) + 1 if q["expected"] in names else None
            ranks[q["split"]].append(rank)
            ranks["all"].append(rank)
        for split, rs in ranks.items():
            n = len(rs)
            results[f"{ranker}/{split}"] = {
                "n": n,
                "hit@1": sum(r == 1 for r in rs) / n if n else 0.0,
                "hit@5": sum(r is not None for r in rs) / n if n else 0.0,
            }
    return results


def main() -> int:
    print("| catalog | split | queries | BM25F hit@1 | BM25F hit@5 | plain BM25 hit@1 | "
          "plain BM25 hit@5 |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in CATALOGS:
        r = evaluate(name)
        for split in ("dev", "holdout", "all"):
            s, b = r[f"switchboard/{split}"], r[f"bm25/{split}"]
            print(f"| {name} | {split} | {s['n']} | {s['hit@1']:.2f} | {s['hit@5']:.2f} | "
                  f"{b['hit@1']:.2f} | {b['hit@5']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
