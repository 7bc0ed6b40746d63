"""Token-economy benchmark: classic tool schemas vs Switchboard's manifest and code channel.

Usage: .venv/bin/python bench/tokens.py [--out docs/agents.md] [--live HOST:PORT]
       .venv/bin/python bench/tokens.py --workflow data-heavy [--sizes 200,1000,2000,5000]
(``switchboard bench tokens`` runs the same code: :func:`switchboard_tokenbench.main`, the
``switchboard-tokenbench`` package in bench/tokenbench, which ``make setup`` installs). Prints
a markdown report; ``--out`` also writes it into that file between ``<!-- tokenbench:... -->``
markers; ``--live`` runs the demo program on a running gateway and counts its real output;
``--workflow data-heavy`` seeds the demo ledger with N transfers, starts the backends and a
gateway, and measures the classic agent against one ``execute_code`` on that data.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    try:
        from switchboard_tokenbench import main
    except ImportError:
        print("bench/tokens.py: switchboard-tokenbench is not installed; run `make setup` or "
              "`pip install -e bench/tokenbench`", file=sys.stderr)
        raise SystemExit(2) from None
    raise SystemExit(main())
