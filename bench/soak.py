"""Soak: several minutes of mixed load against a real gateway; exit 1 on any problem.

Fails (exit code 1) on:
- any call with an unexpected outcome (errors, wrong results, a denial that was not denied);
- the gateway's RSS growing more than ``--rss-limit`` (default 10 %) from the end of the
  warm-up to the end of the run (each end is the median of several samples);
- lost or doubled effects: the ledger must hold exactly one transfer per payment the gateway
  reported as done, and re-sending those request ids must replay, not pay again;
- Deno processes still alive after the gateway shut down, or a non-zero gateway exit.

Run: ``.venv/bin/python bench/soak.py`` (``make soak``); ``--minutes`` sets the length (5).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import grpc
from load import (
    DEFAULT_MIX,
    Recorder,
    Stack,
    md,
    mixed_load,
    parse_mix,
    report,
    rss_sampler,
    sample_rss,
    start_stack,
    wait_serving,
)
from load_support import alive

from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="soak.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=5.0, help="total length incl. warm-up")
    p.add_argument("--warmup-minutes", type=float, default=None,
                   help="warm-up before the RSS baseline (default: 20%% of the run, max 1)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="sandbox workers (config)")
    p.add_argument("--mix", default=DEFAULT_MIX)
    p.add_argument("--rss-limit", type=float, default=0.10, help="allowed RSS growth (0.10)")
    p.add_argument("--deno-rss-limit", type=float, default=0.25,
                   help="allowed growth of the Deno processes' summed RSS (0.25): isolates are "
                        "created and dropped all the time, so it is noisier than the gateway's")
    p.add_argument("--json", type=Path, default=None, help="also write the RSS samples here")
    p.add_argument("--rss-interval", type=float, default=2.0)
    p.add_argument("--state", type=Path, default=None)
    return p


async def replay_check(stub: pb_grpc.GatewayStub, rids: list[str]) -> list[str]:
    """Re-send recorded payments: each must come back replayed."""
    problems = []
    for rid in rids:
        req = pb.ExecuteRequest(request_id=rid,
                                tool_call=pb.ToolCall(name="ledger.create_transfer"))
        req.tool_call.arguments.update({"from_account": "A1", "to_account": "A2",
                                        "amount": 0.01, "currency": "USD", "memo": "load test"})
        try:
            resp = await stub.Execute(req, metadata=md("dev-finance"), timeout=30)
            if not resp.replayed:
                problems.append(f"{rid}: retry was not a replay")
        except grpc.aio.AioRpcError as exc:
            problems.append(f"{rid}: retry failed: {exc.code().name} {exc.details()}")
    return problems


def ledger_check(db: Path, rids: list[str]) -> list[str]:
    """Exactly one ledger row per reported payment, none unaccounted for."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT idempotency_key FROM transfers WHERE memo = 'load test'"
                            ).fetchall()
    keys = [r[0] or "" for r in rows]
    problems = []
    if len(keys) != len(rids):
        problems.append(f"ledger has {len(keys)} load-test transfers, the gateway reported "
                        f"{len(rids)} done")
    if len(set(keys)) != len(keys):
        problems.append(f"{len(keys) - len(set(keys))} idempotency keys were applied twice")
    return problems


async def soak(args: argparse.Namespace, stack: Stack) -> tuple[Recorder, Recorder, list[str]]:
    total = args.minutes * 60
    warm = (args.warmup_minutes * 60 if args.warmup_minutes is not None
            else min(60.0, 0.2 * total))
    mix = parse_mix(args.mix)
    problems: list[str] = []
    async with grpc.aio.insecure_channel(stack.target) as channel:
        await wait_serving(channel)
        stub = pb_grpc.GatewayStub(channel)
        warmup = Recorder(started=time.monotonic())
        await mixed_load(stub, warmup, mix=mix, concurrency=args.concurrency, duration_s=warm,
                         max_requests=10**9)
        rec = Recorder(started=time.monotonic())
        stop = asyncio.Event()
        sampler = asyncio.create_task(
            rss_sampler(stack.gateway_pid, rec, args.rss_interval, stop))
        try:
            await mixed_load(stub, rec, mix=mix, concurrency=args.concurrency,
                             duration_s=max(total - warm, 10.0), max_requests=10**9)
        finally:
            stop.set()
            await sampler
        for _ in range(3):  # the end of the run, at rest
            rec.rss.append(sample_rss(stack.gateway_pid, rec.started, rec.deno_pids))
            await asyncio.sleep(args.rss_interval)
        paid = warmup.transfers_ok + rec.transfers_ok
        problems += await replay_check(stub, paid[-20:])
    problems += ledger_check(stack.state / "ledger.db", paid)
    return warmup, rec, problems


def rss_growth(rec: Recorder, key: str = "gateway_mb") -> tuple[float, float, float]:
    """Median of the first k samples vs the last k (k = 10 % of them, 3..10)."""
    k = max(3, min(10, len(rec.rss) // 10))
    first = statistics.median(s[key] for s in rec.rss[:k])
    last = statistics.median(s[key] for s in rec.rss[-k:])
    return first, last, last / max(first, 1e-9) - 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.duration, args.overhead_n = args.minutes * 60, 0
    problems: list[str] = []
    with contextlib.ExitStack() as es:
        state = args.state or Path(es.enter_context(tempfile.TemporaryDirectory(
            prefix="switchboard-soak-")))
        print(f"soak: {args.minutes:g} min, concurrency {args.concurrency}, mix {args.mix}, "
              f"state {state}", flush=True)
        started = time.monotonic()
        with start_stack(state, workers=args.workers) as stack:
            warmup, rec, problems = asyncio.run(soak(args, stack))
            gateway_proc = stack.gateway.proc
        rc = gateway_proc.returncode
        # start_stack stopped the gateway (SIGTERM, wait): its sandbox must be gone with it.
        time.sleep(1.0)
        leaked = sorted(p for p in rec.deno_pids if alive(p))
        elapsed = time.monotonic() - started
    print(report(rec, None, args))
    base, end, growth = rss_growth(rec)
    print(f"\nwarm-up: {warmup.total} calls, {warmup.errors} unexpected; "
          f"measured: {rec.total} calls, {rec.errors} unexpected; wall {elapsed / 60:.1f} min")
    print(f"gateway RSS after warm-up {base:.1f} MB -> end {end:.1f} MB ({growth:+.1%}, "
          f"limit {args.rss_limit:+.0%})")
    d_base, d_end, d_growth = rss_growth(rec, "deno_mb")
    print(f"Deno RSS (sum) after warm-up {d_base:.0f} MB -> end {d_end:.0f} MB "
          f"({d_growth:+.1%}, limit {args.deno_rss_limit:+.0%})")
    if args.json:
        args.json.write_text(json.dumps({"rss": rec.rss, "calls": rec.total,
                                         "unexpected": rec.unexpected}, indent=1))
    print(f"payments: {len(warmup.transfers_ok) + len(rec.transfers_ok)} done, ledger rows "
          f"checked; Deno processes seen: {len(rec.deno_pids)}, alive after shutdown: "
          f"{len(leaked)}; gateway exit code {rc}")
    if warmup.errors or rec.errors:
        problems.append(f"{warmup.errors + rec.errors} unexpected outcomes")
        for kind, example in {**warmup.examples, **rec.examples}.items():
            problems.append(f"  e.g. {kind}: {example[:300]}")
    if growth > args.rss_limit:
        problems.append(f"gateway RSS grew {growth:.1%} (> {args.rss_limit:.0%})")
    if d_growth > args.deno_rss_limit:
        problems.append(f"Deno RSS grew {d_growth:.1%} (> {args.deno_rss_limit:.0%})")
    if leaked:
        problems.append(f"Deno processes left after shutdown: {leaked}")
        for pid in leaked:
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
    if rc != 0:
        problems.append(f"gateway exited with {rc}")
    print("\nSOAK " + ("FAILED:\n  " + "\n  ".join(problems) if problems else "PASSED"))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
