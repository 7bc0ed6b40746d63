"""Audit trail cost: what a call pays for its spans, and how fast the file is read back.

Run: .venv/bin/python bench/audit_bench.py [--calls 3000]
Prints a markdown table (docs/audit.md keeps the last measured one).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from audit_support import simulate_tool_call
from otlp_receiver import OtlpReceiver

from gateway.audit import AuditSettings, read_trace, setup_telemetry, verify_chain

SPANS_PER_CALL = 6


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_calls(settings: AuditSettings, calls: int) -> tuple[float, float, float]:
    """(median µs, p99 µs, calls/s) for a 6-span tool call."""
    tel = setup_telemetry(settings)
    for i in range(50):
        simulate_tool_call(tel.tracer, request_id=f"warm-{i}")
    samples = []
    t0 = time.perf_counter()
    for i in range(calls):
        s = time.perf_counter()
        simulate_tool_call(tel.tracer, request_id=f"r-{i}")
        samples.append((time.perf_counter() - s) * 1e6)
    total = time.perf_counter() - t0
    tel.shutdown(timeout_ms=2000)
    return statistics.median(samples), _pct(samples, 0.99), calls / total


def timed(fn: Callable[[], object]) -> float:
    s = time.perf_counter()
    fn()
    return time.perf_counter() - s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)  # the hung-collector rows
    tmp = Path(tempfile.mkdtemp(prefix="audit-bench-"))
    rows: list[tuple[str, str]] = []

    # Baseline: spans go nowhere (no exporter at all).
    med, p99, rate = bench_calls(AuditSettings(file=None), args.calls)
    rows.append(
        ("call, no exporters (SDK span cost only)", f"{med:.0f} µs / {p99:.0f} µs / {rate:,.0f}")
    )
    for policy in ("never", "interval", "always"):
        n = args.calls if policy != "always" else max(200, args.calls // 10)
        med, p99, rate = bench_calls(
            AuditSettings(file=tmp / f"{policy}.jsonl", fsync=policy),
            n,  # type: ignore[arg-type]
        )
        rows.append(
            (f"call, audit file fsync={policy}", f"{med:.0f} µs / {p99:.0f} µs / {rate:,.0f}")
        )
    with OtlpReceiver() as rx:
        med, p99, rate = bench_calls(
            AuditSettings(file=tmp / "otlp.jsonl", otlp_endpoint=rx.endpoint), args.calls
        )
    rows.append(
        ("call, file + OTLP gRPC to a live receiver", f"{med:.0f} µs / {p99:.0f} µs / {rate:,.0f}")
    )
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    endpoint = f"http://127.0.0.1:{hole.getsockname()[1]}"
    med, p99, rate = bench_calls(
        AuditSettings(file=tmp / "hole.jsonl", otlp_endpoint=endpoint), args.calls
    )
    rows.append(
        ("call, file + OTLP to a hung collector", f"{med:.0f} µs / {p99:.0f} µs / {rate:,.0f}")
    )
    tel = setup_telemetry(
        AuditSettings(file=tmp / "hole2.jsonl", otlp_endpoint=endpoint, otlp_timeout_s=30)
    )
    simulate_tool_call(tel.tracer)
    rows.append(
        (
            "shutdown(timeout_ms=1000), hung collector",
            f"{timed(lambda: tel.shutdown(timeout_ms=1000)):.2f} s",
        )
    )
    hole.close()

    big = tmp / "never.jsonl"
    report = verify_chain(big)
    records = report.records
    size_mb = big.stat().st_size / 1e6
    took = timed(lambda: verify_chain(big))
    rows.append(
        (
            f"audit verify, {records:,} records ({size_mb:.1f} MB)",
            f"{took:.2f} s ({records / took:,.0f} records/s)",
        )
    )
    took = timed(lambda: read_trace(big, "0" * 32))
    rows.append(("audit show lookup (scan), same file", f"{took * 1000:.0f} ms"))
    rows.append(
        (
            "bytes per 6-span call in the file",
            f"{big.stat().st_size / (records / SPANS_PER_CALL):,.0f}",
        )
    )

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{os.cpu_count()} cores, load average {load}; {args.calls} calls per row\n")
    print("| what | median / p99 per call / calls/s (or as noted) |")
    print("|---|---|")
    for what, value in rows:
        print(f"| {what} | {value} |")


if __name__ == "__main__":
    main()
