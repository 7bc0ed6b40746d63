"""Times smolagents' LocalPythonExecutor on the snippets it is given; run in the smolagents venv
(``.cache/peers/smolagents-venv``, ``make bench-peers``) by bench/peers.py, which reads the one
JSON line it prints.

    python smolagents_runner.py SECONDS '{"trivial": "1 + 1", ...}'

Each snippet: a fresh ``LocalPythonExecutor`` is created once (as an agent does), warmed with one
run, then run back to back for SECONDS (at least 2 runs). The executor interprets the code's AST
in this very process: no isolate, no process boundary.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any


def main() -> None:
    from smolagents.local_python_executor import LocalPythonExecutor

    seconds = float(sys.argv[1])
    snippets: dict[str, str] = json.loads(sys.argv[2])
    out: dict[str, Any] = {}
    for name, src in snippets.items():
        executor = LocalPythonExecutor(additional_authorized_imports=[])
        executor.send_tools({})
        executor(src)  # warm-up
        lat: list[float] = []
        cpu0, wall0 = time.process_time(), time.perf_counter()
        while len(lat) < 2 or time.perf_counter() - wall0 < seconds:
            t = time.perf_counter()
            executor(src)
            lat.append(time.perf_counter() - t)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        out[name] = {"n": len(lat), "p50_ms": statistics.median(lat) * 1e3,
                     "p99_ms": sorted(lat)[min(len(lat) - 1, int(0.99 * len(lat)))] * 1e3,
                     "runs_per_s": len(lat) / wall, "cpu_s_per_run": cpu / len(lat)}
    import smolagents

    print(json.dumps({"version": smolagents.__version__, "results": out}), flush=True)


if __name__ == "__main__":
    main()
