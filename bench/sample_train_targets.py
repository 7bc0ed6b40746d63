"""Pick the target operations of the ``train`` intents (docs/search-quality.md, "Round 4").

Usage: .venv/bin/python bench/sample_train_targets.py > /tmp/targets.tsv
A seeded random sample per spec (more for larger specs); prints catalog, operation name,
method, path and summary, from which a person writes one task per operation. Reads only the
specs, never a labelled intent.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_eval import CATALOGS

from gateway.catalog import load_catalog_sync

SEED = 20261201
PER_SPEC = {"github": 30, "ghec": 25, "ghes": 20, "twilio": 30, "rclone": 20, "figma": 20,
            "dialogporten": 15}


def main() -> int:
    for name, k in PER_SPEC.items():
        ops = sorted(load_catalog_sync(CATALOGS[name]).operations, key=lambda o: o.name)
        rng = random.Random(f"{SEED}:{name}")
        for op in rng.sample(ops, k):
            summary = " ".join(op.summary.split())
            print(f"{name}\t{op.name}\t{op.method}\t{op.path}\t{summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
