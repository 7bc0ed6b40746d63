"""Assign round 5's unseen-vendor intents to ``dev`` and ``holdout`` (docs/search-quality.md,
"Round 5").

Usage: .venv/bin/python bench/split_vendor_intents.py tests/data/search_intents_vendors.json
Run once by the intents' author after every intent is written: per catalog, a seeded shuffle
of the intents puts ceil(n / 2) of them in ``holdout`` and the rest in ``dev``, so neither the
author nor the tuning chooses which tasks are held out. Rewrites the file in place and prints
only counts.
"""

from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from pathlib import Path

SEED = 20261202


def assign(queries: list[dict[str, object]]) -> None:
    """Set every query's ``split`` in place (dev / holdout, ceil(n / 2) held out per catalog)."""
    by_catalog: dict[str, list[int]] = defaultdict(list)
    for i, q in enumerate(queries):
        by_catalog[str(q["catalog"])].append(i)
    for name, idx in by_catalog.items():
        order = list(idx)
        random.Random(f"{SEED}:{name}:split").shuffle(order)
        held = set(order[: (len(order) + 1) // 2])
        for i in idx:
            queries[i]["split"] = "holdout" if i in held else "dev"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: split_vendor_intents.py <intents.json>", file=sys.stderr)
        return 2
    path = Path(argv[0])
    data = json.loads(path.read_text())
    assign(data["queries"])
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    counts: dict[str, int] = defaultdict(int)
    for q in data["queries"]:
        counts[str(q["split"])] += 1
    print(dict(counts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
