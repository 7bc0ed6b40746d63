"""Drop ``train`` intents that nearly duplicate a held-out or dev one (docs/search-quality.md,
"Round 4").

Usage: .venv/bin/python bench/train_overlap.py [--drop]
A train intent is a near-duplicate of a held-out intent when their normalised texts are equal,
or when they share a label (any expected operation) and the token Jaccard of their texts is
>= 0.6. Prints only counts, never a held-out text or which train intent matched; ``--drop``
rewrites the train file without the matches. Dev duplicates are dropped too, so that no task
counts twice in dev + train.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_eval import QUERY_FILES, TRAIN_FILE, expected

JACCARD = 0.6


def _norm(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def near_duplicates(train: Sequence[dict[str, object]],
                    held: Sequence[dict[str, object]]) -> set[int]:
    """Train indices that nearly duplicate a held-out intent."""
    out: set[int] = set()
    for i, t in enumerate(train):
        tw = _norm(str(t["query"]))
        for h in held:
            hw = _norm(str(h["query"]))
            if tw == hw:
                out.add(i)
                break
            if t["catalog"] == h["catalog"] and set(expected(t)) & set(expected(h)):
                a, b = set(tw), set(hw)
                if len(a & b) / max(len(a | b), 1) >= JACCARD:
                    out.add(i)
                    break
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    labelled = [q for path in QUERY_FILES for q in json.loads(path.read_text())["queries"]]
    held = [q for q in labelled if q["split"] == "holdout"]
    dev = [q for q in labelled if q["split"] == "dev"]
    doc = json.loads(TRAIN_FILE.read_text())
    train = doc["queries"]
    same_label = sum(1 for t in train for h in held
                     if t["catalog"] == h["catalog"] and set(expected(t)) & set(expected(h)))
    dup_held = near_duplicates(train, held)
    dup_dev = near_duplicates(train, dev)
    dup = dup_held | dup_dev
    print(f"train {len(train)}, held-out {len(held)}, (train, held-out) pairs sharing a label "
          f"{same_label}, near-duplicates of held-out {len(dup_held)}, of dev {len(dup_dev)}")
    if args == ["--drop"] and dup:
        doc["queries"] = [t for i, t in enumerate(train) if i not in dup]
        TRAIN_FILE.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"dropped {len(dup)}; train now {len(doc['queries'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
