"""Every operation of one labelled catalog, a line each (for writing and checking labels).

Usage: .venv/bin/python bench/list_operations.py <catalog> [word ...]
Prints name, method, path and summary of each operation of ``search_eval.CATALOGS[catalog]``
in name order, or only those whose line contains every given word (case-insensitive). A plain
listing: no ranking is involved, so an intent's author can look for operations that answer a
task equally without seeing what the search would return.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search_eval import CATALOGS

from gateway.catalog import load_catalog_sync


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in CATALOGS:
        print(f"usage: list_operations.py <{'|'.join(CATALOGS)}> [word ...]", file=sys.stderr)
        return 2
    words = [w.lower() for w in argv[1:]]
    for op in sorted(load_catalog_sync(CATALOGS[argv[0]]).operations, key=lambda o: o.name):
        line = f"{op.name}\t{op.method}\t{op.path}\t{' '.join(op.summary.split())}"
        if all(w in line.lower() for w in words):
            print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
