"""Policy benchmarks (run by hand; prints markdown tables).

    .venv/bin/python bench/policy_bench.py              # decisions/s, p50/p99: embedded vs OPA
    .venv/bin/python bench/policy_bench.py --semantics  # semantics table + latency per engine

The OPA REST path runs against tests/policy_support.OpaRestServer (OPA's REST Data API on
loopback, evaluating the same policies/ with regorus: no OPA binary is installable here), so
it measures the gateway's client path (HTTP + JSON + aiohttp), not OPA's evaluator.
regopy and opa-eval are optional, measurement-only candidates: absent ones are skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import policy_support as ps  # noqa: E402
import structlog  # noqa: E402

try:  # the gateway's log serializer (absent from trees before issue 13: plain json.dumps)
    from gateway.audit.logs import render_json
except ImportError:  # pragma: no cover - A/B against an older tree
    render_json = json.dumps  # type: ignore[assignment]
from gateway.models import Principal  # noqa: E402
from gateway.policy import PolicySettings, create_policy_engine  # noqa: E402
from gateway.policy.base import ENTRYPOINT  # noqa: E402
from gateway.policy.bundle import load_bundle  # noqa: E402
from gateway.policy.embedded import Evaluator  # noqa: E402


def quiet_json_log() -> None:
    """Decision log rendered to JSON (the real cost) but written to /dev/null."""
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            # the gateway's serializer (gateway/audit/logs.py)
            structlog.processors.JSONRenderer(serializer=render_json),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=open(os.devnull, "w")),  # noqa: SIM115
        cache_logger_on_first_use=True,
    )


def workload(n: int, seed: int = 7) -> list[dict[str, Any]]:
    """A realistic mix: reads from code dominate, some tools, transfers, denies, code runs."""
    rnd = random.Random(seed)
    principals = [ps.AGENT, ps.FINANCE, Principal(id="agent-2", tenant="demo", roles=("agent",))]
    out = []
    for i in range(n):
        p = rnd.choice(principals)
        r = rnd.random()
        args = {"account": f"ACC-{rnd.randint(1, 10**6)}", "amount": rnd.randint(1, 10**5)}
        if r < 0.55:
            out.append(
                ps.host_call(
                    p,
                    rnd.choice(
                        ["ledger.get_balance", "ledger.list_accounts", "workspace.send_email"]
                    ),
                    **args,
                )
            )
        elif r < 0.75:
            out.append(
                ps.tool(p, rnd.choice(["ledger.list_accounts", "ledger.create_transfer"]), **args)
            )
        elif r < 0.85:
            out.append(ps.host_call(p, "ledger.create_transfer", **args))
        elif r < 0.95:
            out.append(ps.code_run(p))
        else:
            out.append(ps.tool(p, f"ledger.unknown_{i % 5}", **args))
        out[-1]["context"]["time_ns"] = time.time_ns() + i
    return out


def pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


def row(name: str, samples_us: list[float], wall_s: float, extra: str = "") -> str:
    n = len(samples_us)
    return (
        f"| {name} | {n} | {n / wall_s:,.0f} | {statistics.median(samples_us):,.1f} | "
        f"{pct(samples_us, 0.99):,.1f} | {extra} |"
    )


def time_sync(
    fn: Callable[[dict[str, Any]], Any], inputs: list[dict[str, Any]]
) -> tuple[list[float], float]:
    samples = []
    start = time.perf_counter()
    for inp in inputs:
        t = time.perf_counter()
        fn(inp)
        samples.append((time.perf_counter() - t) * 1e6)
    return samples, time.perf_counter() - start


async def time_async(
    engine: Any, inputs: list[dict[str, Any]], concurrency: int
) -> tuple[list[float], float]:
    samples: list[float] = []
    queue = list(reversed(inputs))

    async def worker() -> None:
        while queue:
            inp = queue.pop()
            t = time.perf_counter()
            d = await engine.decide(inp)
            samples.append((time.perf_counter() - t) * 1e6)
            assert not d.error_code, d.reasons

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, time.perf_counter() - start


async def bench_decisions(n: int, n_opa: int, concurrency: int) -> None:
    quiet_json_log()
    bundle = load_bundle(ps.POLICY_DIR)
    inputs = workload(n)
    print(
        f"Shipped policy {bundle.revision}; {n} inputs (mixed workload, unique arguments/time).\n"
    )
    print("| path | decisions | decisions/s | p50 µs | p99 µs | notes |")
    print("|---|---:|---:|---:|---:|---|")

    plain = Evaluator(bundle, cache_size=0)
    time_sync(plain.evaluate, inputs[:200])  # warm-up
    s, w = time_sync(plain.evaluate, inputs)
    print(row("regorus eval only (set_input + eval_rule)", s, w, "no parse, log or cache"))

    cached = Evaluator(bundle)
    s, w = time_sync(cached.decide, inputs)
    print(row("embedded Evaluator.decide, cache", s, w, f"{cached.cache_hits / n:.1%} hits"))

    for cache, label in ((True, "cache"), (False, "no cache")):
        eng = create_policy_engine(PolicySettings(path=ps.POLICY_DIR, reload=False))
        await eng.start()
        if not cache:
            eng._evaluator = Evaluator(bundle, cache_size=0)  # type: ignore[attr-defined]
        await time_async(eng, inputs[:200], 1)
        s, w = await time_async(eng, inputs, 1)
        print(row(f"embedded decide() full path, {label}", s, w, "ids + span + JSON decision log"))
        await eng.close()

    server = ps.OpaRestServer().start()
    try:
        for conc in (1, concurrency):
            eng = create_policy_engine(
                PolicySettings(engine="opa", opa_url=server.url, timeout_ms=2000)
            )
            await eng.start()
            await time_async(eng, inputs[:100], conc)
            s, w = await time_async(eng, inputs[:n_opa], conc)
            print(
                row(f"opa REST decide(), {conc} in flight", s, w, "loopback, regorus-backed server")
            )
            await eng.close()
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# Semantics table across candidate engines (each in a child process: regopy can segfault).


def semantics_worker(engine_name: str, start: int) -> None:
    run = ps.available_engines()[engine_name]
    cases = ps.load_cases()
    for i in range(start, len(cases)):
        got = run(cases[i])
        if got[0] == "error":  # keep the message line, drop source excerpts
            lines = [ln for ln in str(got[1]).splitlines() if "error" in ln.lower()]
            shown = "error: " + (lines[-1].strip() if lines else str(got[1]))[:90]
        else:
            shown = f"{got[0]} {json.dumps(got[1])}"[:90]
        print(json.dumps({"i": i, "ok": ps.agrees(cases[i], got), "got": shown}), flush=True)


def run_table(engine_name: str) -> dict[str, Any]:
    cases = ps.load_cases()
    results: dict[int, dict[str, Any]] = {}
    start = 0
    while start < len(cases):
        proc = subprocess.run(
            [sys.executable, __file__, "--_worker", engine_name, str(start)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                rec = json.loads(line)
                results[rec["i"]] = rec
        done = max(results, default=start - 1)
        if proc.returncode != 0:
            results[done + 1] = {
                "i": done + 1,
                "ok": False,
                "got": f"crash (exit {proc.returncode})",
            }
            done += 1
        start = done + 1
    return {"cases": cases, "results": results}


def shipped_latency(engine_name: str, inputs: list[dict[str, Any]]) -> tuple[float, list[str]]:
    """Median µs per decision of the shipped policy, and its decisions (for agreement)."""
    bundle = load_bundle(ps.POLICY_DIR)
    src = dict(bundle.modules)["switchboard/routing.rego"]
    decisions: list[str] = []
    if engine_name == "regorus":
        ev = Evaluator(bundle, cache_size=0)
        call = ev.evaluate
    elif engine_name == "regopy":
        import regopy

        rego = regopy.Interpreter()
        rego.add_module("routing.rego", src)
        rego.add_data(bundle.data)

        def call(inp: dict[str, Any]) -> Any:
            rego.set_input(inp)
            out = str(rego.query(ENTRYPOINT))
            return json.loads(out)["expressions"][0] if out.startswith("{") else out
    elif engine_name == "regorus RVM (experimental)":
        import regorus

        data = json.dumps(bundle.data)
        program = regorus.Program.compile_from_modules(data, [("routing.rego", src)], [ENTRYPOINT])
        vm = regorus.Rvm()
        vm.load_program(program)
        vm.set_data_json(data)

        def call(inp: dict[str, Any]) -> Any:
            vm.set_input_json(json.dumps(inp))
            return json.loads(vm.execute())
    else:
        import tempfile

        import opa_eval

        tmp = Path(tempfile.mkdtemp()) / "routing.rego"
        tmp.write_text(src)
        ev2 = opa_eval.OpaEval(str(tmp), json.dumps(bundle.data), ENTRYPOINT)

        def call(inp: dict[str, Any]) -> Any:
            return json.loads(ev2.evaluate(json.dumps(inp)))

    samples = []
    for inp in inputs:
        t = time.perf_counter()
        try:
            value = call(inp)
        except Exception as exc:
            value = f"error: {exc}"[:80]
        samples.append((time.perf_counter() - t) * 1e6)
        decisions.append(json.dumps(value, sort_keys=True, default=lambda v: sorted(v)))
    return statistics.median(samples), decisions


def bench_semantics() -> None:
    engines = list(ps.available_engines())
    print(f"Semantics table: {len(ps.load_cases())} cases (tests/policy_semantics_cases.yaml)\n")
    print("| engine | agree | disagree / error / crash (case: got) |")
    print("|---|---:|---|")
    for name in engines:
        table = run_table(name)
        bad = [r for r in table["results"].values() if not r["ok"]]
        detail = "; ".join(f"{table['cases'][r['i']]['name']}: {r['got']}" for r in bad[:12])
        print(f"| {name} | {len(table['cases']) - len(bad)}/{len(table['cases'])} | {detail} |")
    inputs = workload(300, seed=11)
    print("\nShipped policy, per-decision latency and agreement with regorus (300 inputs):\n")
    print("| engine | p50 µs / decision | decisions identical to regorus |")
    print("|---|---:|---:|")
    _, reference = shipped_latency("regorus", inputs)
    for name in [*engines, "regorus RVM (experimental)"]:
        try:
            median, decisions = shipped_latency(name, inputs)
        except Exception as exc:
            print(f"| {name} | - | cannot load the shipped policy: {str(exc)[:100]} |")
            continue
        same = sum(a == b for a, b in zip(decisions, reference, strict=True))
        print(f"| {name} | {median:,.1f} | {same}/{len(inputs)} |")


async def bench_ratio(n: int, rounds: int, telemetry: bool) -> None:
    """decide() uncached over the raw engine, interleaved: blocks of the same inputs run
    through ``Evaluator.evaluate`` (set_input + eval_rule) and through the engine's full
    ``decide()`` (no cache: ids, parse, span, JSON decision log) alternately, so a noisy
    neighbour hits both alike; CPU time (``time.process_time``) per decision and the ratio.
    ``--telemetry``: with a real gateway TracerProvider and audit file (the policy.decide span
    exported as in the gateway) instead of no provider."""
    import tempfile

    quiet_json_log()
    bundle = load_bundle(ps.POLICY_DIR)
    inputs = workload(n)
    raw = Evaluator(bundle, cache_size=0)
    eng = create_policy_engine(PolicySettings(path=ps.POLICY_DIR, reload=False))
    await eng.start()
    eng._evaluator = Evaluator(bundle, cache_size=0)  # type: ignore[attr-defined]
    tmp = tempfile.TemporaryDirectory()
    span_ctx: Any = None
    if telemetry:
        from gateway.audit import AuditSettings, setup_telemetry

        tel = setup_telemetry(AuditSettings(file=Path(tmp.name) / "audit.jsonl"))
        span_ctx = tel.tracer
    for inp in inputs[:200]:  # warm-up both
        raw.evaluate(inp)
        await eng.decide(inp)
    cpu = {"raw": 0.0, "decide": 0.0}
    load = [os.getloadavg()[0]]
    for r in range(rounds):
        for label in (("raw", "decide") if r % 2 == 0 else ("decide", "raw")):
            t0 = time.process_time()
            if label == "raw":
                for inp in inputs:
                    raw.evaluate(inp)
            elif span_ctx is not None:
                with span_ctx.start_as_current_span("execute"):  # routes spans to `tel`
                    for inp in inputs:
                        await eng.decide(inp)
            else:
                for inp in inputs:
                    await eng.decide(inp)
            cpu[label] += time.process_time() - t0
    load.append(os.getloadavg()[0])
    per = {k: v / (n * rounds) * 1e6 for k, v in cpu.items()}
    print("| path | CPU µs/decision | ratio |")
    print("|---|---:|---:|")
    print(f"| regorus eval only (set_input + eval_rule) | {per['raw']:.1f} | 1.00 |")
    print(f"| embedded decide(), no cache{' + span exported to audit file' if telemetry else ''}"
          f" | {per['decide']:.1f} | {per['decide'] / per['raw']:.2f} |")
    print(f"{n} inputs x {rounds} interleaved rounds; load average (1 min) "
          f"{load[0]:.2f} → {load[1]:.2f}")
    await eng.close()
    tmp.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, default=5000, help="decisions per embedded measurement")
    ap.add_argument("--n-opa", type=int, default=2000, help="decisions per OPA REST measurement")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--semantics", action="store_true", help="run the semantics table instead")
    ap.add_argument("--ratio", action="store_true",
                    help="decide() uncached over the raw engine, interleaved CPU time")
    ap.add_argument("--rounds", type=int, default=6, help="--ratio: interleaved rounds")
    ap.add_argument("--telemetry", action="store_true",
                    help="--ratio: a real TracerProvider and audit file (span exported)")
    ap.add_argument("--_worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        semantics_worker(args._worker[0], int(args._worker[1]))
    elif args.semantics:
        bench_semantics()
    elif args.ratio:
        asyncio.run(bench_ratio(args.n, args.rounds, args.telemetry))
    else:
        asyncio.run(bench_decisions(args.n, args.n_opa, args.concurrency))


if __name__ == "__main__":
    main()
