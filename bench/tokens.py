"""Token-economy benchmark: classic tool schemas vs Switchboard's manifest and code channel.

Usage: .venv/bin/python bench/tokens.py [--out docs/agents.md] [--live HOST:PORT]
(``switchboard bench tokens`` runs the same thing). Prints a markdown report; with ``--out`` it
also writes it into that file between ``<!-- tokenbench:begin/end -->`` markers. With
``--live`` the demo program runs on a running gateway and its real output is counted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.tokenbench import DEMO_CODE, GITHUB_SPEC, QUERY_SET, run_token_bench


def _live_result(target: str, token: str) -> Any:
    from gateway.client import SwitchboardClient

    with SwitchboardClient(target, token) as sb:
        res = sb.run_code(DEMO_CODE)
    if not res.ok:
        raise SystemExit(f"demo program failed on {target}: {res.error}")
    return res.result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="switchboard bench tokens", description=__doc__)
    parser.add_argument("--out", type=Path, help="write the report into this markdown file")
    parser.add_argument("--spec", type=Path, default=GITHUB_SPEC, help="GitHub OpenAPI file")
    parser.add_argument("--queries", type=Path, default=QUERY_SET, help="labelled query set")
    parser.add_argument("--live", metavar="HOST:PORT", help="run the demo program on a gateway")
    parser.add_argument("--token", default="dev-agent", help="bearer token for --live")
    args = parser.parse_args(argv)
    result = _live_result(args.live, args.token) if args.live else None
    sys.stdout.write(
        run_token_bench(args.out, spec=args.spec, queries=args.queries, code_result=result)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
