"""Pick the target operations of round 5's unseen-vendor intents (docs/search-quality.md,
"Round 5").

Usage: .venv/bin/python bench/sample_vendor_targets.py > /tmp/vendor-targets.tsv
A seeded random sample per spec (more for larger specs) over the eight vendors of
``search_eval.VENDOR_SPECS``; prints catalog, operation name, method, path, summary and the
start of the description, from which a person writes one task per operation. Reads only the
specs, never a labelled intent or a ranking.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_eval import CATALOGS

from gateway.catalog import load_catalog_sync

SEED = 20261202
PER_SPEC = {"stripe": 30, "zoom": 25, "sendgrid": 25, "digitalocean": 25, "box": 25,
            "square": 25, "slack": 25, "asana": 20}


def _one_line(text: str, words: int) -> str:
    return " ".join(text.split()[:words])


def main() -> int:
    for name, k in PER_SPEC.items():
        ops = sorted(load_catalog_sync(CATALOGS[name]).operations, key=lambda o: o.name)
        rng = random.Random(f"{SEED}:{name}")
        for op in rng.sample(ops, k):
            print(f"{name}\t{op.name}\t{op.method}\t{op.path}\t{_one_line(op.summary, 40)}\t"
                  f"{_one_line(op.description, 40)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
