"""Dedicated-tool channel benchmarks (run by hand; prints a markdown table).

    .venv/bin/python bench/tools_bench.py [--n 400] [--postgres] [--redis]

Measures, against a real HTTP backend on loopback (uvicorn in a thread): argument validation,
a bare backend call, the full channel (validate → claim → call → record → check) on the
SQLite store (WAL, synchronous=FULL) and optionally PostgreSQL/Redis, a replayed retry, and
throughput with 32 concurrent distinct requests. The channel's own cost is the difference
between "channel" and "bare call".
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import structlog  # noqa: E402
import tools_support as ts  # noqa: E402

from gateway.models import BackendSettings  # noqa: E402
from gateway.tools import (  # noqa: E402
    BackendClient,
    IdempotencySettings,
    IdempotencyStore,
    ToolChannel,
    open_idempotency_store,
    validate_arguments,
)

ARGS = {"from_account": "A1", "to_account": "A2", "amount": 12.5, "currency": "USD",
        "memo": "bench"}
OP = ts.op("create_transfer", "POST", schema=ts.TRANSFER_SCHEMA,
           params=ts.CREATE_TRANSFER.parameters)


def row(name: str, samples: list[float]) -> str:
    s = sorted(samples)
    p50 = statistics.median(s)
    p99 = s[min(len(s) - 1, int(len(s) * 0.99))]
    return f"| {name} | {len(s)} | {p50 * 1e3:.3f} | {p99 * 1e3:.3f} | {len(s) / sum(s):,.0f} |"


async def timed(n: int, fn: Callable[[int], Awaitable[Any]]) -> list[float]:
    out = []
    for i in range(n):
        t = time.perf_counter()
        await fn(i)
        out.append(time.perf_counter() - t)
    return out


async def bench_store(label: str, store: IdempotencyStore, client: BackendClient,
                      n: int) -> list[str]:
    channel = ToolChannel(client, store, settings=IdempotencySettings())
    run = uuid.uuid4().hex[:8]

    async def execute(i: int) -> Any:
        return await channel.execute(OP, ARGS, request_id=f"{run}-{i}", principal=ts.PRINCIPAL,
                                     strict=True)

    await execute(-1)  # warm up

    async def store_only(i: int) -> None:
        key = f"{run}-store-{i}"
        await store.begin(key, "fp", OP.name, owner=channel.owner, lease_s=30, ttl_s=60)
        await store.mark_sent(key, channel.owner)
        await store.complete(key, channel.owner, {"result": {"id": i}}, 60)

    rows = [row(f"{label} store only: claim + mark-sent + complete", await timed(n, store_only)),
            row(f"channel, {label} store", await timed(n, execute)),
            row(f"replayed retry, {label} store", await timed(n, execute))]
    batch = 32
    started = time.perf_counter()
    for b in range(n // batch):
        await asyncio.gather(*(execute(10_000 + b * batch + j) for j in range(batch)))
    elapsed = time.perf_counter() - started
    done = (n // batch) * batch
    rows.append(f"| channel, {label} store, 32 concurrent | {done} | - | - | "
                f"{done / elapsed:,.0f} |")
    return rows


async def main(n: int, postgres: bool, redis: bool) -> None:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))
    validate: list[float] = []
    for _ in range(n * 5):
        t = time.perf_counter()
        validate_arguments(OP, ARGS, strict=True)
        validate.append(time.perf_counter() - t)
    lines = ["| step | n | p50 ms | p99 ms | per s (sequential) |", "|---|---|---|---|---|",
             row("validate_arguments (strict, cached)", validate)]
    with ts.serve_backend() as backend, tempfile.TemporaryDirectory() as tmp:
        backend.script("create_transfer")
        client = BackendClient({"svc": BackendSettings(name="svc", base_url=backend.url)})
        await client.call(OP, ARGS)
        lines.append(row("bare BackendClient.call (HTTP round trip)",
                         await timed(n, lambda i: client.call(OP, ARGS))))
        sqlite = open_idempotency_store(IdempotencySettings(dsn=f"sqlite:///{tmp}/idem.db"))
        lines += await bench_store("SQLite", sqlite, client, n)
        await sqlite.aclose()
        if postgres:
            with ts.postgres_server() as dsn:
                if dsn is None:
                    lines.append("| PostgreSQL | not installed | | | |")
                else:
                    pg = open_idempotency_store(IdempotencySettings(dsn=dsn))
                    lines += await bench_store("PostgreSQL", pg, client, n)
                    await pg.aclose()
        if redis:
            with ts.redis_server() as url:
                if url is None:
                    lines.append("| Redis | not installed | | | |")
                else:
                    rs = open_idempotency_store(IdempotencySettings(dsn=url))
                    lines += await bench_store("Redis", rs, client, n)
                    await rs.aclose()
        await client.aclose()
    print("\n".join(lines))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--postgres", action="store_true")
    parser.add_argument("--redis", action="store_true")
    a = parser.parse_args()
    asyncio.run(main(a.n, a.postgres, a.redis))
