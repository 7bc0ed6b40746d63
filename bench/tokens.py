"""Token-economy benchmark: classic tool schemas vs Switchboard's manifest and code channel.

Usage: .venv/bin/python bench/tokens.py [--out docs/agents.md] [--live HOST:PORT]
(``switchboard bench tokens`` runs the same code: :func:`gateway.tokenbench.main`). Prints a
markdown report; ``--out`` also writes it into that file between ``<!-- tokenbench:... -->``
markers; ``--live`` runs the demo program on a running gateway and counts its real output.
"""

from __future__ import annotations

from gateway.tokenbench import main

if __name__ == "__main__":
    raise SystemExit(main())
