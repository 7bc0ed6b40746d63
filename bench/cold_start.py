"""Cold start: ``switchboard serve`` from exec to the health service answering SERVING.

    .venv/bin/python bench/cold_start.py [--rounds 3] [--profile DIR]
    .venv/bin/python bench/cold_start.py --kinds demo --restarts 6 --compare /tmp/base

Two catalogs: the demo (the embedded defaults: two in-process FastAPI apps) and a large one,
GitHub's api.github.com + GHEC specs from runtimes/node_modules/@octokit/openapi/generated/
(~2,000 operations, 27 MB of JSON). Each round starts a fresh process with an empty cache
directory (``SWITCHBOARD_CACHE_DIR``: a first start) and then again with the cache it left (a
restart: nothing changed). The clock runs from ``Popen`` to the first ``Health/Check`` that
answers SERVING (polled every 20 ms). ``--profile DIR`` also writes a cProfile of each start.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "runtimes/node_modules/@octokit/openapi/generated"
# Readiness (the gateway service), not liveness (""): SERVING there means calls can be served.
READINESS = "switchboard.v1.Gateway"


def _config(tmp: Path, kind: str) -> Path | None:
    if kind == "demo":
        return None
    path = tmp / "github.yaml"
    path.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:0",
        "backends": [{"name": "github", "openapi": str(SPECS / "api.github.com.json"),
                      "base_url": "http://127.0.0.1:9"},
                     {"name": "ghec", "openapi": str(SPECS / "ghec.json"),
                      "base_url": "http://127.0.0.1:9"}],
        "idempotency": {"dsn": f"sqlite:///{tmp / 'idempotency.db'}"},
        "audit": {"file": str(tmp / "audit.jsonl"), "log_format": "json"},
        "sandbox": {"workers": 1},
    }))
    return path


def start_once(kind: str, tmp: Path, cache: Path, profile: Path | None,
               tree: str = "") -> dict[str, Any]:
    config = _config(tmp, kind)
    cmd = [sys.executable]
    if profile is not None:
        cmd += ["-m", "cProfile", "-o", str(profile)]
    cmd += ["-m", "gateway.cli", "serve", "--listen", "127.0.0.1:0"]
    if config is not None:
        cmd += ["--config", str(config)]
    env = dict(os.environ, SWITCHBOARD_CACHE_DIR=str(cache),
               PYTHONPATH=os.pathsep.join(p for p in (tree, str(ROOT)) if p))
    if tree:
        env["SWITCHBOARD_POLICY_DIR"] = str(Path(tree) / "policies")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=tmp, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        t_listen = time.perf_counter() - t0
        assert line.startswith("LISTENING grpc://"), line
        target = line.split("grpc://", 1)[1].strip()
        with grpc.insecure_channel(target) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                try:
                    r = stub.Check(health_pb2.HealthCheckRequest(service=READINESS), timeout=2)
                    if r.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                time.sleep(0.02)
        t_serving = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(60)
    return {"listening_s": t_listen, "serving_s": t_serving}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kinds", default="demo,github")
    ap.add_argument("--profile", default="", help="write cProfile output of each start here")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--compare", default="",
                    help="A/B: also start the gateway of this tree (e.g. a git archive of the "
                         "base), interleaved with this checkout's")
    ap.add_argument("--restarts", type=int, default=0,
                    help="instead of rounds: one first start per tree (to fill its cache), then "
                         "this many restarts per tree, alternating the trees (order flips)")
    args = ap.parse_args()
    results: dict[str, list[dict[str, Any]]] = {}
    load = [os.getloadavg()[0]]
    trees = [("base", args.compare), ("this", "")] if args.compare else [("this", "")]
    if args.restarts:
        with tempfile.TemporaryDirectory(prefix="cold-") as t:
            for kind in args.kinds.split(","):
                for label, tree in trees:
                    (Path(t) / label / kind).mkdir(parents=True)
                    got = start_once(kind, Path(t) / label / kind, Path(t) / label / kind / "c",
                                     None, tree)
                    results.setdefault(f"{label}: {kind} first", []).append(got)
                for r in range(args.restarts):
                    for label, tree in (trees if r % 2 == 0 else list(reversed(trees))):
                        got = start_once(kind, Path(t) / label / kind,
                                         Path(t) / label / kind / "c", None, tree)
                        key = f"{label}: {kind} restart"
                        results.setdefault(key, []).append(got)
                        print(f"{key} #{r + 1}: {got['serving_s']:.2f} s", file=sys.stderr)
        args.rounds = 0
    for r in range(args.rounds):
        for kind in args.kinds.split(","):
            for label, tree in trees:
                with tempfile.TemporaryDirectory(prefix="cold-") as t:
                    tmp = Path(t)
                    cache = tmp / "cache"
                    for phase in ("first", "restart"):
                        prof = (Path(args.profile) / f"{label}-{kind}-{phase}-{r}.prof"
                                if args.profile else None)
                        if prof is not None:
                            prof.parent.mkdir(parents=True, exist_ok=True)
                        got = start_once(kind, tmp, cache, prof, tree)
                        key = f"{label}: {kind} {phase}"
                        results.setdefault(key, []).append(got)
                        print(f"{key} #{r + 1}: {got['serving_s']:.2f} s", file=sys.stderr)
    load.append(os.getloadavg()[0])
    if args.json:
        print(json.dumps({"results": results, "load": load}))
        return
    print("| catalog, start | serve → SERVING s (each round) | median s |")
    print("|---|---|---:|")
    for key, rows in results.items():
        each = ", ".join(f"{x['serving_s']:.2f}" for x in rows)
        print(f"| {key} | {each} | {statistics.median(x['serving_s'] for x in rows):.2f} |")
    print(f"load average (1 min) {load[0]:.2f} → {load[1]:.2f}")


if __name__ == "__main__":
    main()
