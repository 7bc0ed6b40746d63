"""Load generator: a mixed agent workload against a real gateway, on loopback only.

Starts the demo ledger and workspace and ``switchboard serve --config`` as subprocesses on
port 0 (so the gateway's RSS and its Deno children can be sampled from ``/proc``), then:

1. **overhead** — the same backend operation (``GET /accounts/{id}/balance``) called directly
   over HTTP (httpx, keep-alive) and as a tool call through the gateway (grpc.aio),
   interleaved one at a time, reported as p50/p95 and a ratio;
2. **mixed load** — ``--concurrency`` grpc.aio callers for ``--duration`` seconds or
   ``--max-requests`` calls (whichever comes first): tool calls, code runs with a host call,
   policy denials, searches and (optionally) payments, each checked for its expected outcome;
   throughput, p50/p95/p99 per kind, error counts, and RSS over time.

Run: ``.venv/bin/python bench/load.py`` (``--help`` for the knobs, ``--json FILE`` to keep the
raw numbers). ``bench/soak.py`` reuses this module for its several-minute run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for extra in (REPO, REPO / "tests"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import grpc  # noqa: E402
import httpx  # noqa: E402
import yaml  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from load_support import deno_descendants, rss_bytes  # noqa: E402

from gateway._proto.switchboard.v1 import gateway_pb2 as pb  # noqa: E402
from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc  # noqa: E402
from gateway.demo_stack import ServiceProcess, spawn_service, write_demo_config  # noqa: E402

__all__ = ["KINDS", "Recorder", "Stack", "mixed_load", "overhead", "percentile", "start_stack"]

KINDS = ("tool", "code", "deny", "search", "transfer")
DEFAULT_MIX = "tool=40,code=25,deny=15,search=15,transfer=5"
ACCOUNTS = ("A1", "A2", "A3", "A4")
CODE = ("from sdk import ledger\n"
        "b = ledger.get_balance(account=inputs['account'])\n"
        "b['balance']\n")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


# -- the stack -----------------------------------------------------------------------------


@dataclass
class Stack:
    state: Path
    ledger: ServiceProcess
    workspace: ServiceProcess
    gateway: ServiceProcess
    target: str

    @property
    def gateway_pid(self) -> int:
        return self.gateway.proc.pid


@contextlib.contextmanager
def start_stack(state: Path, *, workers: int = 2) -> Iterator[Stack]:
    """The demo backends and a gateway subprocess on free loopback ports, always stopped."""
    state.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    started: list[ServiceProcess] = []
    try:
        for name in ("ledger", "workspace"):
            started.append(spawn_service(
                name, [py, "-m", f"gateway.demo.{name}", "--host", "127.0.0.1", "--port", "0",
                       "--db", str(state / f"{name}.db")], log_file=state / f"{name}.log"))
        config = write_demo_config(state / "gateway.yaml", ledger_url=started[0].url,
                                   workspace_url=started[1].url, state=state)
        raw = yaml.safe_load(config.read_text())
        raw["sandbox"] = {"workers": workers}
        raw["max_concurrent_rpcs"] = 1024
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
        started.append(spawn_service(
            "gateway", [py, "-m", "gateway.cli", "serve", "--config", str(config)],
            log_file=state / "gateway.log", timeout=180))
        gw = started[2]
        yield Stack(state, started[0], started[1], gw, gw.url.removeprefix("grpc://"))
    finally:
        for svc in reversed(started):
            svc.stop(timeout=30)


async def wait_serving(channel: grpc.aio.Channel, timeout: float = 30.0) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while True:
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.aio.AioRpcError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


# -- measurement ---------------------------------------------------------------------------


@dataclass
class Recorder:
    """Latencies and outcomes per kind, plus RSS samples over time."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    ok: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    rss: list[dict[str, float]] = field(default_factory=list)
    transfers_ok: list[str] = field(default_factory=list)
    deno_pids: set[int] = field(default_factory=set)
    started: float = 0.0
    finished: float = 0.0

    def record(self, kind: str, ms: float, good: bool, detail: str = "") -> None:
        self.latencies[kind].append(ms)
        if good:
            self.ok[kind] += 1
        else:
            self.unexpected[f"{kind}: {detail[:80]}"] += 1
            self.examples.setdefault(kind, detail[:2000])

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    @property
    def errors(self) -> int:
        return sum(self.unexpected.values())


def sample_rss(pid: int, t0: float, seen: set[int] | None = None) -> dict[str, float]:
    denos = deno_descendants(pid)
    if seen is not None:
        seen.update(denos)
    return {"t": round(time.monotonic() - t0, 1), "gateway_mb": rss_bytes(pid) / 2**20,
            "deno_mb": sum(rss_bytes(p) for p in denos) / 2**20, "deno_n": len(denos)}


async def rss_sampler(pid: int, rec: Recorder, interval: float, stop: asyncio.Event) -> None:
    t0 = rec.started or time.monotonic()
    while not stop.is_set():
        rec.rss.append(sample_rss(pid, t0, rec.deno_pids))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


def _error_code(exc: grpc.aio.AioRpcError) -> str:
    for key, value in exc.trailing_metadata() or ():
        if key == "switchboard-error":
            with contextlib.suppress(ValueError):
                return str(json.loads(value).get("code", ""))
    return ""


async def one_call(stub: pb_grpc.GatewayStub, kind: str, rec: Recorder, rng: random.Random,
                   timeout: float) -> None:
    """Issue one call of ``kind``; record its latency and whether it had the expected outcome."""
    started = time.perf_counter()
    good, detail = False, ""
    try:
        if kind == "tool":
            req = pb.ExecuteRequest(request_id=uuid.uuid4().hex,
                                    tool_call=pb.ToolCall(name="ledger.get_balance"))
            account = rng.choice(ACCOUNTS)
            req.tool_call.arguments.update({"account": account})
            resp = await stub.Execute(req, metadata=md("dev-agent"), timeout=timeout)
            good = resp.result.struct_value["account"] == account
            detail = str(resp)
        elif kind == "code":
            run = pb.CodeRun(source=CODE)
            run.inputs.update({"account": rng.choice(ACCOUNTS)})
            resp = await stub.Execute(pb.ExecuteRequest(request_id=uuid.uuid4().hex,
                                                        code_run=run),
                                      metadata=md("dev-agent"), timeout=timeout)
            good = not resp.error.code and resp.host_calls == 1 and resp.result.HasField(
                "number_value")
            detail = f"{resp.error.code}: {resp.error.message}"
        elif kind == "deny":
            req = pb.ExecuteRequest(request_id=uuid.uuid4().hex,
                                    tool_call=pb.ToolCall(name="ledger.create_transfer"))
            req.tool_call.arguments.update({"from_account": "A1", "to_account": "A2",
                                            "amount": 1, "currency": "USD"})
            try:
                await stub.Execute(req, metadata=md("dev-agent"), timeout=timeout)
                detail = "a payment by a non-finance principal was allowed"
            except grpc.aio.AioRpcError as exc:
                good = (exc.code() == grpc.StatusCode.PERMISSION_DENIED
                        and _error_code(exc) == "policy_denied")
                detail = f"{exc.code().name} {_error_code(exc)} {exc.details()}"
        elif kind == "search":
            found = await stub.SearchOperations(
                pb.SearchOperationsRequest(query="send an email to a contact", limit=5),
                metadata=md("dev-agent"), timeout=timeout)
            good = any(op.name == "workspace.send_email" for op in found.operations)
            detail = str([op.name for op in found.operations])
        elif kind == "transfer":
            rid = f"load-{uuid.uuid4().hex}"
            req = pb.ExecuteRequest(request_id=rid,
                                    tool_call=pb.ToolCall(name="ledger.create_transfer"))
            req.tool_call.arguments.update({"from_account": "A1", "to_account": "A2",
                                            "amount": 0.01, "currency": "USD",
                                            "memo": "load test"})
            resp = await stub.Execute(req, metadata=md("dev-finance"), timeout=timeout)
            good = resp.result.struct_value["amount"] == 0.01 and not resp.replayed
            if good:
                rec.transfers_ok.append(rid)
            detail = str(resp)
        else:
            raise ValueError(kind)
    except grpc.aio.AioRpcError as exc:
        detail = f"{exc.code().name} {_error_code(exc)} {exc.details()}"
    rec.record(kind, (time.perf_counter() - started) * 1000, good, detail)


def parse_mix(text: str) -> dict[str, int]:
    mix = {}
    for part in text.split(","):
        kind, _, weight = part.partition("=")
        if kind.strip() not in KINDS:
            raise SystemExit(f"unknown kind {kind!r} in --mix (known: {', '.join(KINDS)})")
        mix[kind.strip()] = int(weight)
    return {k: w for k, w in mix.items() if w > 0}


async def mixed_load(stub: pb_grpc.GatewayStub, rec: Recorder, *, mix: dict[str, int],
                     concurrency: int, duration_s: float, max_requests: int,
                     timeout: float = 30.0, seed: int = 7) -> None:
    """``concurrency`` callers until ``duration_s`` passes or ``max_requests`` are issued."""
    kinds, weights = list(mix), list(mix.values())
    issued = 0
    deadline = time.monotonic() + duration_s
    rec.started = rec.started or time.monotonic()

    async def caller(i: int) -> None:
        nonlocal issued
        rng = random.Random(seed * 1000 + i)
        while time.monotonic() < deadline and issued < max_requests:
            issued += 1
            await one_call(stub, rng.choices(kinds, weights)[0], rec, rng, timeout)

    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    rec.finished = time.monotonic()


async def overhead(stub: pb_grpc.GatewayStub, ledger_url: str, n: int) -> dict[str, float]:
    """Direct HTTP vs through the gateway, same operation, interleaved, one at a time."""
    direct: list[float] = []
    via: list[float] = []
    async with httpx.AsyncClient(base_url=ledger_url, timeout=10) as http:
        for i in range(n + 20):
            account = ACCOUNTS[i % len(ACCOUNTS)]
            t = time.perf_counter()
            r = await http.get(f"/accounts/{account}/balance")
            r.raise_for_status()
            d = (time.perf_counter() - t) * 1000
            req = pb.ExecuteRequest(request_id=uuid.uuid4().hex,
                                    tool_call=pb.ToolCall(name="ledger.get_balance"))
            req.tool_call.arguments.update({"account": account})
            t = time.perf_counter()
            resp = await stub.Execute(req, metadata=md("dev-agent"), timeout=10)
            g = (time.perf_counter() - t) * 1000
            assert resp.result.struct_value["balance"] == r.json()["balance"]
            if i >= 20:  # the first calls warm connections and caches
                direct.append(d)
                via.append(g)
    return {
        "n": n,
        "direct_p50": percentile(direct, 50), "direct_p95": percentile(direct, 95),
        "gateway_p50": percentile(via, 50), "gateway_p95": percentile(via, 95),
        "ratio_p50": percentile(via, 50) / max(percentile(direct, 50), 1e-9),
        "overhead_ms_p50": percentile(via, 50) - percentile(direct, 50),
    }


# -- report --------------------------------------------------------------------------------


def report(rec: Recorder, over: dict[str, float] | None, args: argparse.Namespace) -> str:
    wall = max(rec.finished - rec.started, 1e-9)
    lines = [
        f"mixed load: {rec.total} calls in {wall:.1f} s = {rec.total / wall:.1f} calls/s, "
        f"concurrency {args.concurrency}, sandbox workers {args.workers}, "
        f"unexpected outcomes {rec.errors}",
        "",
        "| kind | calls | ok | unexpected | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    everything: list[float] = []
    for kind in KINDS:
        lat = rec.latencies.get(kind, [])
        if not lat:
            continue
        everything += lat
        bad = len(lat) - rec.ok[kind]
        lines.append(f"| {kind} | {len(lat)} | {rec.ok[kind]} | {bad} | {percentile(lat, 50):.1f} "
                     f"| {percentile(lat, 95):.1f} | {percentile(lat, 99):.1f} | {max(lat):.1f} |")
    lines.append(f"| **all** | {len(everything)} | {sum(rec.ok.values())} | {rec.errors} "
                 f"| {percentile(everything, 50):.1f} | {percentile(everything, 95):.1f} "
                 f"| {percentile(everything, 99):.1f} | {max(everything or [0]):.1f} |")
    if rec.unexpected:
        lines += ["", "unexpected outcomes:"] + [f"  {n} x {k}" for k, n in
                                                 rec.unexpected.most_common(10)]
    if rec.rss:
        lines += ["", "| t (s) | gateway RSS MB | Deno RSS MB (sum) | Deno processes |",
                  "|---:|---:|---:|---:|"]
        step = max(1, -(-len(rec.rss) // 12))
        shown = rec.rss[::step] + ([rec.rss[-1]] if (len(rec.rss) - 1) % step else [])
        for s in shown:
            lines.append(f"| {s['t']:.0f} | {s['gateway_mb']:.0f} | {s['deno_mb']:.0f} "
                         f"| {s['deno_n']:.0f} |")
    if over:
        lines += [
            "", f"gateway overhead, ledger.get_balance, {over['n']:.0f} sequential calls each:",
            "", "| path | p50 ms | p95 ms |", "|---|---:|---:|",
            f"| direct HTTP (httpx → ledger) | {over['direct_p50']:.2f} "
            f"| {over['direct_p95']:.2f} |",
            f"| through the gateway (grpc.aio → gateway → ledger) | {over['gateway_p50']:.2f} "
            f"| {over['gateway_p95']:.2f} |",
            "", f"ratio (p50 gateway / p50 direct): {over['ratio_p50']:.2f}x; "
            f"added latency p50: {over['overhead_ms_p50']:.2f} ms",
        ]
    return "\n".join(lines)


def build_parser(prog: str = "load.py") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=30.0, help="seconds of mixed load")
    p.add_argument("--max-requests", type=int, default=20000, help="cap on mixed-load calls")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent callers")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of unrecorded load first")
    p.add_argument("--workers", type=int, default=2, help="sandbox workers (config)")
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"weights per kind ({DEFAULT_MIX})")
    p.add_argument("--overhead-n", type=int, default=300, help="calls per path for overhead")
    p.add_argument("--rss-interval", type=float, default=1.0, help="seconds between samples")
    p.add_argument("--state", type=Path, default=None, help="state dir (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write raw numbers here")
    return p


async def run(args: argparse.Namespace, stack: Stack) -> tuple[Recorder, dict[str, float]]:
    async with grpc.aio.insecure_channel(stack.target) as channel:
        await wait_serving(channel)
        stub = pb_grpc.GatewayStub(channel)
        over = await overhead(stub, stack.ledger.url, args.overhead_n)
        mix = parse_mix(args.mix)
        if args.warmup > 0:
            await mixed_load(stub, Recorder(), mix=mix, concurrency=args.concurrency,
                             duration_s=args.warmup, max_requests=args.max_requests)
        rec = Recorder(started=time.monotonic())
        stop = asyncio.Event()
        sampler = asyncio.create_task(
            rss_sampler(stack.gateway_pid, rec, args.rss_interval, stop))
        try:
            await mixed_load(stub, rec, mix=mix, concurrency=args.concurrency,
                             duration_s=args.duration, max_requests=args.max_requests)
        finally:
            stop.set()
            await sampler
        rec.rss.append(sample_rss(stack.gateway_pid, rec.started, rec.deno_pids))
    return rec, over


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with contextlib.ExitStack() as es:
        state = args.state or Path(es.enter_context(tempfile.TemporaryDirectory(
            prefix="switchboard-load-")))
        print(f"starting ledger, workspace and gateway (state in {state}) ...", flush=True)
        with start_stack(state, workers=args.workers) as stack:
            rec, over = asyncio.run(run(args, stack))
        print(report(rec, over, args))
        if args.json:
            args.json.write_text(json.dumps({
                "args": {k: str(v) for k, v in vars(args).items()},
                "latencies": rec.latencies, "ok": rec.ok, "unexpected": rec.unexpected,
                "examples": rec.examples,
                "rss": rec.rss, "overhead": over, "cpus": os.cpu_count(),
            }, indent=1))
    return 1 if rec.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
