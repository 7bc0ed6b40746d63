"""Switchboard side by side with its peers, interleaved in one process tree, against the goals.

    make bench-peers                                   # install the peers (pinned; once)
    .venv/bin/python bench/peers.py --quick            # ~4-5 min on 2 cores
    .venv/bin/python bench/peers.py [--rounds 3] [--only tools|code] [--json out.json]

**Tool calls.** One fast backend (bench/toolcall_cpu.py's raw-asyncio HTTP/1.1 server, its own
process, fixed JSON, keep-alive: far faster than any gateway here, so it never bounds a
throughput figure — unlike the demo ledger's ~340 calls/s) is fronted by

* direct HTTP (httpx, the baseline),
* Switchboard over gRPC and over MCP (streamable HTTP, the official ``mcp`` client): one
  ``gateway.server.create_server`` gateway in a subprocess of its own (embedded policy, SQLite
  idempotency store, hash-chained audit file, JSON logs to a file — the shipped defaults),
* IBM ContextForge (``mcp-contextforge-gateway``, its own venv, ``mcpgateway`` = uvicorn, one
  worker, SQLite): the backend registered as a REST tool through its admin API, called through
  its MCP endpoint with the same ``mcp`` client.

Sequential latency: call by call, one call per path per iteration in a rotated order → p50/p99
and the added ms against the direct calls of the same iterations. Sequential CPU: per-gateway
blocks of calls, the CPU of the gateway's process tree (``/proc`` utime+stime of the process
and its children) per call. Concurrent phase: 32
callers per target (one gRPC channel; one MCP session per caller), targets alternating →
calls/s and CPU per call. Denials: Switchboard, 32 callers, a call its policy denies
(``dev-agent`` → ``ledger.create_transfer``). Startup: ``switchboard serve`` on the demo config
(demo backends already up) → health SERVING. Search: ``SearchOperations`` over GitHub's
api.github.com + GHES 3.17 specs (~2,200 operations, more than the goal's ~1,800).

**Code runs.** Switchboard over gRPC, isolated (a fresh interpreter per run, no session) and in
sessions; a fresh Deno + Pyodide process per run (cold ``loadPyodide``, the honest "fresh
isolate" baseline); smolagents' ``LocalPythonExecutor`` (its own venv; an AST interpreter in
the caller's process — no sandbox); ``@cloudflare/codemode``'s ``DynamicWorkerExecutor`` in
workerd (npm ``workerd``, ``--experimental`` for the Worker Loader binding; JavaScript, a fresh
dynamic Worker per run, driven over HTTP). CPU-s per run is the runner's process tree.

**Floors and what bounds each goal** (bench/peers_lib/, ``--skip floors`` / ``--skip
processes``), measured in the same run and interleaved with the rows above: a bare grpc.aio
unary echo server (its own process, the gateway's server options, the gateway call's bytes and
metadata) driven exactly as the gateway's gRPC tool calls, in the sequential and 32-caller
phases; the fast backend's own CPU per call; ``switchboard serve --processes 2`` (whole-tree
CPU) beside the one-process gateway, both over 8 channels, at 32 callers; a bare Deno + Pyodide
restore (bench/restore_floor.ts) and a session run straight on a ``SandboxPool`` (no gateway),
as rows of the code table. The goals table's last column, "what bounds it (measured)", is
computed from those rows (bench/peers_lib/bounds.py), never typed in.

The machine's load average is read before and after each family and printed with the results:
on a shared 2-core machine trust the ratios measured side by side, not absolute figures.
A peer that is not installed is skipped with the reason and the make command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "bench") not in sys.path:  # bench/peers_lib, bench/toolcall_cpu.py, …
    sys.path.insert(0, str(REPO / "bench"))

from peers_lib import bounds, floors, processes  # noqa: E402
from peers_lib.code_peers import (  # noqa: E402
    CODE_CALLERS,
    COMPUTE_PY,
    TRIVIAL_PY,
    codemode_missing,
    codemode_runner,
    cold_runner,
    smolagents_missing,
    smolagents_runner,
    throughput_row,
)
from peers_lib.contextforge import contextforge_missing, start_contextforge  # noqa: E402
from peers_lib.core import (  # noqa: E402
    Proc,
    Target,
    loadavg,
    pct,
    tree_cpu_s,
)
from peers_lib.tool_calls import (  # noqa: E402
    TOKEN_AGENT,
    TOKEN_FINANCE,
    Direct,
    McpTarget,
    RawHttp,
    SbGrpc,
    conc_phase,
    seq_phase,
)

INSTALL_HINT = "make bench-peers"
GITHUB_SPECS = ("api.github.com.json", "ghes-3.17.json")


# -- pure parts (tested in tests/test_bench_peers.py) -----------------------------------------


@dataclass(frozen=True)
class Goal:
    key: str  # where the measured value sits in the results' "goal_values"
    text: str
    target: float
    unit: str
    higher_is_better: bool


GOALS: tuple[Goal, ...] = (
    Goal("tool_added_p50_ms", "tool call p50 over direct HTTP, sequential", 1.0, "ms", False),
    Goal("tool_cpu_ms", "gateway CPU per tool call (32 callers)", 1.0, "ms", False),
    Goal("tool_calls_per_s", "tool calls/s at 32 concurrent callers", 1000.0, "/s", True),
    Goal("denials_per_s", "denials/s at 32 concurrent callers", 2000.0, "/s", True),
    Goal("isolated_runs_per_s", "isolated code runs/s (fresh interpreter each)", 15.0, "/s",
         True),
    Goal("warm_isolated_p50_ms", "warm isolated trivial run p50", 15.0, "ms", False),
    Goal("session_runs_per_s", "session code runs/s", 1000.0, "/s", True),
    Goal("serve_to_serving_s", "`switchboard serve` (demo) to SERVING", 3.0, "s", False),
    Goal("search_p50_ms", "SearchOperations p50 (~1,800+ operations)", 5.0, "ms", False),
)


def goal_verdict(goal: Goal, measured: float | None) -> tuple[str, str]:
    """(met?, by how much) for one goal; ``None`` is "not measured"."""
    if measured is None:
        return "not measured", "-"
    met = measured >= goal.target if goal.higher_is_better else measured <= goal.target
    if met:
        return "met", "-"
    if goal.higher_is_better:
        return "missed", f"{goal.target / measured:.1f}x short" if measured > 0 else "nothing"
    over = measured - goal.target
    return "missed", f"{measured / goal.target:.1f}x over ({over:+.2f} {goal.unit})"


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "/s":
        return f"{value:,.0f}/s" if value >= 100 else f"{value:.1f}/s"
    if unit == "ms":
        return f"{value:+.2f} ms" if value < 0 else f"{value:.2f} ms"
    return f"{value:.2f} {unit}"


def goals_table(values: dict[str, float | None],
                bound_values: dict[str, float | None] | None = None) -> str:
    """The goals, each with its verdict and what bounds it (computed from ``bound_values``, the
    floors' and rows' figures of the same run: bench/peers_lib/bounds.py)."""
    rows = []
    for g in GOALS:
        op = "≥" if g.higher_is_better else "≤"
        target = f"{op} {fmt_value(g.target, g.unit)}"
        if g.key == "tool_added_p50_ms":
            target = f"≤ +{g.target:g} ms"
        met, by = goal_verdict(g, values.get(g.key))
        rows.append([g.text, target, fmt_value(values.get(g.key), g.unit), met, by,
                     bounds.bound_text(g.key, g.target, bound_values or {})])
    return md_table(["goal (2 cores)", "target", "measured", "met?", "by how much",
                     "what bounds it (measured)"], rows)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return "-" if v is None else str(v)

    right = [all(_numeric(r[i]) for r in rows if cell(r[i]) != "-") and any(
        cell(r[i]) != "-" for r in rows) for i in range(len(headers))]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _numeric(v: Any) -> bool:
    s = str(v).replace(",", "").replace("+", "").replace("/s", "").replace(" ms", "")
    try:
        float(s)
    except ValueError:
        return False
    return True


def f2(v: float | None, spec: str = ".2f") -> str | None:
    return None if v is None else format(v, spec)


def tools_table(res: dict[str, Any]) -> str:
    seq, conc = res.get("seq", {}), res.get("conc", {})
    rows = []
    for name, label in TOOL_LABELS.items():
        s, c = seq.get(name), conc.get(name)
        if not s and not c:
            continue
        gw = name != "direct"  # every other row's CPU is its own process tree's
        added = s.get("added_p50_ms") if s and gw else None
        rate = None
        if c:
            rate = f"{c['calls_per_s']:,.0f}" + (f" ({c['errors']} err)" if c["errors"] else "")
        rows.append([label, f2(s and s["p50_ms"]), f2(s and s["p99_ms"]),
                     None if added is None else f"{added:+.2f}",
                     f2(s and s.get("cpu_ms_per_call")) if gw else "(backend)",
                     f2(c and c.get("cpu_ms_per_call")) if gw else "(backend)", rate,
                     f2(c and c.get("driver_cpu_util"))])
    return md_table(["path", "p50 ms (seq)", "p99 ms (seq)", "added p50 ms vs direct",
                     "CPU ms/call (seq)", "CPU ms/call (32 callers)", "calls/s (32 callers)",
                     "driver CPU, cores (32 callers)"], rows)


def code_table(res: dict[str, Any]) -> str:
    rows = []
    for r in res.get("runners", []):
        rows.append([r["label"], r["snippet"], r.get("n"), f2(r.get("runs_per_s"), ",.1f"),
                     f2(r.get("p50_ms")), f2(r.get("p99_ms")), f2(r.get("cpu_s_per_run"), ".4f"),
                     r.get("note", "")])
    return md_table(["runner", "snippet", "n", "runs/s", "p50 ms", "p99 ms", "CPU-s/run", "how"],
                    rows)


TOOL_LABELS = {
    "direct": "direct HTTP (httpx → fast backend)",
    "sb_grpc": "Switchboard, gRPC",
    "sb_mcp": "Switchboard, MCP (streamable HTTP)",
    "cf_mcp": "ContextForge, MCP (REST tool)",
    "sb_deny": "Switchboard, gRPC, denied by policy",
    "backend_raw": "fast backend alone (raw asyncio client; CPU: the backend's)",
    "echo_floor": "floor: bare grpc.aio unary echo (no gateway; CPU: the echo server's)",
    "sb_grpc_8ch": "Switchboard, gRPC, 1 process, 8 channels",
    "sb_p2": "Switchboard `serve --processes 2`, gRPC, 8 channels (whole tree's CPU)",
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer samples: ≤ 5 min in all")
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved rounds per family (default 3; 2 with --quick)")
    ap.add_argument("--only", choices=("tools", "code"), default=None)
    ap.add_argument("--json", default="", metavar="FILE", help="write every figure as JSON")
    ap.add_argument("--skip", action="append", default=[],
                    choices=("contextforge", "smolagents", "codemode", "cold", "startup",
                             "search", "floors", "processes"),
                    help="leave a runner out (repeatable); floors: the grpc.aio echo, the bare "
                         "restore and the pool-only session run; processes: the "
                         "`serve --processes 2` and 8-channel rows")
    ap.add_argument("--serve-switchboard", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rounds is None:
        args.rounds = 2 if args.quick else 3
    if args.rounds < 1:
        ap.error("--rounds must be ≥ 1")
    q = args.quick
    args.iterations = 60 if q else 200  # latency: call-by-call interleaved iterations
    args.cf_iterations = 15 if q else 40  # ContextForge is ~30x slower: in fewer of them
    args.block = 30 if q else 80  # CPU: sequential calls per gateway per round
    args.cf_block = 10 if q else 25
    args.duration = 3.0 if q else 8.0  # concurrent phase per target per round, s
    args.code_duration = 4.0 if q else 10.0
    args.warm_runs = 15 if q else 40
    args.session_runs = 60 if q else 200
    args.cold_runs = 1 if q else 4
    args.startup_runs = 1 if q else 2
    args.search_queries = 100 if q else 300
    args.floor_restores = 10 if q else 30  # bare restores per round (after 5 untimed)
    args.pool_runs = 300 if q else 2000  # session runs on the pool alone
    args.pool_warmup = 300 if q else 1000
    return args


# -- the Switchboard gateway subprocess -------------------------------------------------------


def serve_switchboard(raw: str) -> None:
    """``--serve-switchboard JSON``: a gateway on port 0 (gRPC + MCP); prints its ports as one
    JSON line, serves until stdin closes."""
    import logging
    from dataclasses import replace

    from gateway.audit import AuditSettings, configure_logging
    from gateway.config import McpSettings, embedded_defaults
    from gateway.models import BackendSettings
    from gateway.sandbox import SandboxSettings
    from gateway.server import create_server
    from gateway.tools import IdempotencySettings

    cfg = json.loads(raw)
    state = Path(cfg["state"])
    backends = [BackendSettings(name=b["name"], openapi=b["openapi"],
                                base_url=b.get("base_url")) for b in cfg["backends"]]
    settings = replace(
        embedded_defaults(state), listen="127.0.0.1:0", max_concurrent_rpcs=1024,
        sandbox=SandboxSettings(workers=cfg.get("workers", 4)),
        idempotency=IdempotencySettings(dsn=f"sqlite:///{state / 'idempotency.db'}"),
        audit=AuditSettings(file=state / "audit.jsonl", log_format="json"),
        mcp=McpSettings(enabled=True, listen="127.0.0.1:0"),
        backends=tuple(backends))
    sink = open(state / "gateway.log", "a")  # noqa: SIM115 - lives as long as the process
    configure_logging("json", "INFO", stream=sink)
    logging.getLogger("grpc").setLevel(logging.WARNING)

    async def main() -> None:
        server, port = await create_server(settings)
        print(json.dumps({"grpc": port, "mcp": server.mcp_port}), flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        await server.stop(grace=1.0)

    asyncio.run(main())


class Stack:
    """Every process this bench starts, stopped (by pid) on the way out."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[Proc] = []
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p))

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        self.procs.clear()

    def backend(self) -> tuple[Proc, str]:
        sys.path.insert(0, str(REPO / "bench"))
        from toolcall_cpu import _spec

        (self.tmp / "spec.json").write_text(json.dumps(_spec()))
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "bench" / "toolcall_cpu.py"), "--serve-backend",
             str(self.tmp / "spec.json")], stdout=subprocess.PIPE, text=True, env=self.env,
            stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        p = Proc("backend", proc)
        self.procs.append(p)
        return p, f"http://127.0.0.1:{int(proc.stdout.readline())}"

    def echo(self) -> Proc:
        """The echo floor's server process (bench/peers_lib/floors.py)."""
        env = dict(self.env, PYTHONPATH=os.pathsep.join((str(REPO / "bench"),
                                                         self.env["PYTHONPATH"])))
        proc = subprocess.Popen(floors.echo_argv(), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout is not None
        p = Proc("echo-floor", proc)
        self.procs.append(p)
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the grpc.aio echo floor did not start")
        p.info = json.loads(line)
        return p

    def serve_processes(self, backend_url: str, n: int) -> Proc:
        p = processes.start_serve(self.tmp / f"serve-p{n}", self.env, backend_url, n)
        self.procs.append(p)
        return p

    def switchboard(self, backends: list[dict[str, Any]], workers: int, name: str) -> Proc:
        state = self.tmp / name
        state.mkdir()
        raw = json.dumps({"state": str(state), "backends": backends, "workers": workers})
        proc = subprocess.Popen([sys.executable, __file__, "--serve-switchboard", raw],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env=self.env)
        assert proc.stdout is not None
        p = Proc(name, proc)
        self.procs.append(p)
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{name}: the gateway did not start (see {state}/gateway.log)")
        p.info = json.loads(line)
        return p


# -- startup and search (Switchboard only) ------------------------------------------------------


def measure_startup(stack: Stack, runs: int) -> dict[str, Any]:
    """`switchboard serve` on the demo config (demo ledger and workspace already running) →
    gRPC health SERVING, wall seconds; the sandbox snapshot is cached by the earlier gateway."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from gateway.demo_stack import spawn_service, write_demo_config

    state = stack.tmp / "startup"
    state.mkdir()
    py = sys.executable
    services = []
    try:
        for name in ("ledger", "workspace"):
            services.append(spawn_service(
                name, [py, "-m", f"gateway.demo.{name}", "--host", "127.0.0.1", "--port", "0",
                       "--db", str(state / f"{name}.db")], log_file=state / f"{name}.log",
                env=stack.env))
        config = write_demo_config(state / "gateway.yaml", ledger_url=services[0].url,
                                   workspace_url=services[1].url, state=state)
        times = []
        for i in range(runs):
            t0 = time.perf_counter()
            gw = spawn_service("gateway", [py, "-m", "gateway.cli", "serve", "--config",
                                           str(config)], log_file=state / f"gateway{i}.log",
                               timeout=180, env=stack.env)
            try:
                target = gw.url.removeprefix("grpc://")
                with grpc.insecure_channel(target) as ch:
                    stub = health_pb2_grpc.HealthStub(ch)
                    while True:
                        with suppress(grpc.RpcError):
                            if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status \
                                    == health_pb2.HealthCheckResponse.SERVING:
                                break
                        time.sleep(0.02)
                times.append(time.perf_counter() - t0)
            finally:
                gw.stop(timeout=30)
        return {"runs_s": [round(t, 2) for t in times], "serve_to_serving_s": min(times),
                "note": f"best of {runs}"}
    finally:
        for s in reversed(services):
            s.stop(timeout=30)


async def measure_search(port: int, pid: int, n: int) -> dict[str, Any]:
    import grpc

    from gateway._proto.switchboard.v1 import gateway_pb2 as pb
    from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc

    raw = json.loads((REPO / "tests" / "data" / "github_search_queries.json").read_text())
    queries = [q["query"] for q in raw["queries"] if q.get("catalog") == "github"]
    md = (("authorization", f"Bearer {TOKEN_AGENT}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.GatewayStub(ch)  # type: ignore[no-untyped-call]
        hits = 0
        for q in queries[:10]:
            await stub.SearchOperations(pb.SearchOperationsRequest(query=q, limit=5),
                                        metadata=md, timeout=60)
        # The search index and the sandbox's SDK docs are built after SERVING, in the
        # background: measure once the gateway's process tree is idle, not beside that build.
        settled_s = await settle(pid)
        lat = []
        c0 = tree_cpu_s(pid)
        for i in range(n):
            s = time.perf_counter()
            resp = await stub.SearchOperations(
                pb.SearchOperationsRequest(query=queries[i % len(queries)], limit=5),
                metadata=md, timeout=60)
            lat.append((time.perf_counter() - s) * 1e3)
            hits += bool(resp.operations)
        cpu = tree_cpu_s(pid) - c0
    return {"n": n, "p50_ms": statistics.median(lat), "p99_ms": pct(lat, 99),
            "cpu_ms_per_query": cpu / n * 1e3, "answered_with_results": hits,
            "idle_after_s": settled_s}


async def settle(pid: int, idle_cores: float = 0.05, window_s: float = 0.5,
                 limit_s: float = 120.0) -> float:
    """Wait until ``pid``'s process tree uses under ``idle_cores`` for two windows running
    (bounded by ``limit_s``); returns how long that took."""
    t0 = time.perf_counter()
    quiet = 0
    while quiet < 2 and time.perf_counter() - t0 < limit_s:
        c0 = tree_cpu_s(pid)
        await asyncio.sleep(window_s)
        quiet = quiet + 1 if (tree_cpu_s(pid) - c0) / window_s < idle_cores else 0
    return round(time.perf_counter() - t0, 2)


def github_backends() -> list[dict[str, Any]]:
    base = REPO / "runtimes" / "node_modules" / "@octokit" / "openapi" / "generated"
    names = ("github", "ghes")
    return [{"name": n, "openapi": str(base / s), "base_url": "http://127.0.0.1:9"}
            for n, s in zip(names, GITHUB_SPECS, strict=True) if (base / s).exists()]


def count_operations(backends: list[dict[str, Any]]) -> int:
    total = 0
    for b in backends:
        spec = json.loads(Path(b["openapi"]).read_text())
        total += sum(1 for item in spec.get("paths", {}).values() for m in item
                     if m in ("get", "put", "post", "delete", "patch", "head", "options"))
    return total


# -- the tools family ------------------------------------------------------------------------------


async def tools_family(args: argparse.Namespace, stack: Stack, out: dict[str, Any]) -> None:
    res: dict[str, Any] = {"load_before": loadavg(), "skipped": {}}
    out["tools"] = res
    be, url = stack.backend()
    ledger = [{"name": "ledger", "openapi": f"{url}/openapi.json", "base_url": url}]
    sb = stack.switchboard(ledger, workers=1, name="switchboard-tools")
    sb_mcp_url = f"http://127.0.0.1:{sb.info['mcp']}/mcp"
    # MCP lists only the dedicated tools the policy advertises (the demo policy: compliance
    # operations), but serves a call to any operation's tool name the policy routes to the tool
    # channel — as gRPC does. Same principal on both, so both do the same work.
    token = ""
    for candidate in (TOKEN_AGENT, TOKEN_FINANCE):
        probe = McpTarget("sb_mcp", sb_mcp_url, candidate, "ledger__get_balance",
                          {"account": "A1"}, sb.pid)
        await probe.open()
        try:
            ok = await probe.call()
        except Exception:
            ok = False
        await probe.close()
        if ok:
            token = candidate
            break
    res["principal_token"] = token or TOKEN_AGENT
    targets: list[Target] = [Direct(url), SbGrpc(sb.info["grpc"], sb.pid,
                                                 token=token or TOKEN_AGENT)]
    if token:
        targets.append(McpTarget("sb_mcp", sb_mcp_url, token, "ledger__get_balance",
                                 {"account": "A1"}, sb.pid))
    else:
        res["skipped"]["switchboard_mcp"] = "its MCP door refused ledger__get_balance for " \
            "every demo principal (policy change?)"
    reason = "skipped by --skip" if "contextforge" in args.skip else contextforge_missing()
    if reason is None:
        try:
            cf, cf_url, cf_token, cf_tool = start_contextforge(stack, url)
            res["contextforge"] = cf.info
            targets.append(McpTarget("cf_mcp", cf_url, cf_token, cf_tool, {}, cf.pid))
        except Exception as exc:
            reason = f"ContextForge failed to start: {exc}"
    if reason:
        res["skipped"]["contextforge"] = reason
        print(f"peers: skipping ContextForge — {reason} (install: {INSTALL_HINT})",
              file=sys.stderr, flush=True)
    echo: Proc | None = None
    if "floors" in args.skip:
        res["skipped"]["floors"] = "skipped by --skip"
    else:
        echo = stack.echo()
        targets.append(floors.EchoTarget(echo.info["grpc"], echo.pid, token or TOKEN_AGENT))
    for t in targets:
        await t.open()
    try:
        print("peers: tool calls, sequential …", file=sys.stderr, flush=True)
        res["seq"] = await seq_phase(targets, args.rounds,
                                     {"default": args.block, "cf_mcp": args.cf_block},
                                     args.iterations, {"cf_mcp": args.cf_iterations})
        print("peers: tool calls, 32 callers …", file=sys.stderr, flush=True)
        deny = SbGrpc(sb.info["grpc"], sb.pid, deny=True)
        extra: list[Target] = [deny, RawHttp(url, be.pid)]
        p2 = None
        if "processes" in args.skip:
            res["skipped"]["processes"] = "skipped by --skip"
        else:
            print("peers: tool calls — starting `serve --processes 2` …", file=sys.stderr,
                  flush=True)
            p2 = stack.serve_processes(url, 2)
            res["processes_idle_after_s"] = await settle(p2.pid)  # both sandbox pools up
            tok = token or TOKEN_AGENT
            extra += [SbGrpc(sb.info["grpc"], sb.pid, token=tok, channels=8,
                             name="sb_grpc_8ch"),
                      SbGrpc(p2.info["grpc"], p2.pid, token=tok, channels=8, name="sb_p2")]
        for t in extra:
            await t.open()
        res["conc"] = await conc_phase([*targets, *extra], args.rounds, args.duration)
        for t in extra:
            await t.close()
        if p2 is not None:
            p2.stop()
    finally:
        for t in reversed(targets):  # anyio's cancel scopes: close in reverse order
            with suppress(Exception):
                await t.close()
    res["goal_values"] = {}
    seq, conc = res["seq"], res["conc"]
    gv = res["goal_values"]
    gv["tool_added_p50_ms"] = seq["sb_grpc"]["added_p50_ms"]
    gv["tool_cpu_ms"] = conc["sb_grpc"]["cpu_ms_per_call"]
    gv["tool_calls_per_s"] = conc["sb_grpc"]["calls_per_s"]
    gv["denials_per_s"] = conc["sb_deny"]["calls_per_s"]
    res["backend_calls_per_s"] = conc["backend_raw"]["calls_per_s"]
    sb.stop()
    if echo is not None:
        echo.stop()
    if "search" not in args.skip:
        gh = github_backends()
        if gh:
            print("peers: SearchOperations …", file=sys.stderr, flush=True)
            sbs = stack.switchboard(gh + ledger, workers=1, name="switchboard-search")
            res["search"] = await measure_search(sbs.info["grpc"], sbs.pid, args.search_queries)
            res["search"]["operations"] = count_operations(gh) + 2
            gv["search_p50_ms"] = res["search"]["p50_ms"]
            sbs.stop()
        else:
            res["skipped"]["search"] = "runtimes/node_modules has no GitHub spec (make setup)"
    if "startup" not in args.skip:
        print("peers: serve → SERVING …", file=sys.stderr, flush=True)
        res["startup"] = measure_startup(stack, args.startup_runs)
        gv["serve_to_serving_s"] = res["startup"]["serve_to_serving_s"]
    be.stop()
    res["bound_values"] = bounds.tool_values(res, os.cpu_count() or 1)
    res["load_after"] = loadavg()


# -- the code family ------------------------------------------------------------------------


async def sb_code_runner(port: int, pid: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    import grpc

    from gateway._proto.switchboard.v1 import gateway_pb2 as pb
    from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.GatewayStub(ch)  # type: ignore[no-untyped-call]

        async def run(src: str, token: str = TOKEN_AGENT, session: str | None = None) -> None:
            code = pb.CodeRun(source=src)
            if session:
                code.session_id = session
            resp = await stub.Execute(pb.ExecuteRequest(request_id=str(uuid.uuid4()),
                                                        code_run=code),
                                      metadata=(("authorization", f"Bearer {token}"),),
                                      timeout=120)
            if resp.error.code:
                raise RuntimeError(f"{resp.error.code}: {resp.error.message}")

        rows = []
        await run(TRIVIAL_PY)
        # warm: a pause before each run so a fresh interpreter is ready (an agent thinking)
        lat = []
        c0 = tree_cpu_s(pid)
        for _ in range(args.warm_runs):
            await asyncio.sleep(0.4)
            s = time.perf_counter()
            await run(TRIVIAL_PY)
            lat.append((time.perf_counter() - s) * 1e3)
        rows.append({"label": "Switchboard, isolated, warm (spare ready)", "snippet": "trivial",
                     "n": len(lat), "p50_ms": statistics.median(lat), "p99_ms": pct(lat, 99),
                     "cpu_s_per_run": (tree_cpu_s(pid) - c0) / len(lat),
                     "note": "gRPC Execute, 0.4 s between runs", "key": "sb_warm"})
        rows.append(await throughput_row(
            "Switchboard, isolated, 8 callers", "trivial", pid, args.code_duration,
            [lambda: run(TRIVIAL_PY)] * CODE_CALLERS,
            "fresh interpreter per run, back to back", "sb_isolated"))
        sessions = [(TOKEN_AGENT if i % 2 == 0 else TOKEN_FINANCE, f"peers-{uuid.uuid4().hex[:8]}")
                    for i in range(CODE_CALLERS)]
        for tok, sid in sessions:
            await run(TRIVIAL_PY, tok, sid)

        def session_call(tok: str, sid: str, src: str) -> Callable[[], Awaitable[None]]:
            return lambda: run(src, tok, sid)

        # The isolated runs above used the pool's spares: the session rows start once the
        # refill is over (the tree idle), so their CPU is the session runs', not restores'.
        settled_s = await settle(pid)
        lat = []
        c0 = tree_cpu_s(pid)
        for _ in range(args.session_runs):
            s = time.perf_counter()
            await run(TRIVIAL_PY, *sessions[0])
            lat.append((time.perf_counter() - s) * 1e3)
        rows.append({"label": "Switchboard, session, sequential", "snippet": "trivial",
                     "n": len(lat), "p50_ms": statistics.median(lat), "p99_ms": pct(lat, 99),
                     "runs_per_s": len(lat) / (sum(lat) / 1e3),
                     "cpu_s_per_run": (tree_cpu_s(pid) - c0) / len(lat),
                     "note": f"one session, back to back (after {settled_s:.1f} s for the "
                             "spares' refill)", "key": "sb_session_seq"})
        rows.append(await throughput_row(
            "Switchboard, session, 8 callers", "trivial", pid, args.code_duration,
            [session_call(t, s, TRIVIAL_PY) for t, s in sessions],
            "8 sessions (2 principals), back to back", "sb_session"))
        rows.append(await throughput_row(
            "Switchboard, session, 8 callers", "loop 100k", pid, args.code_duration,
            [session_call(t, s, COMPUTE_PY) for t, s in sessions],
            "8 sessions, back to back", "sb_session_compute"))
        return rows


async def code_family(args: argparse.Namespace, stack: Stack, out: dict[str, Any]) -> None:
    res: dict[str, Any] = {"load_before": loadavg(), "skipped": {}, "runners": []}
    out["code"] = res
    be, url = stack.backend()
    print("peers: code runs — starting a Switchboard gateway (workers=4) …", file=sys.stderr,
          flush=True)
    sb = stack.switchboard([{"name": "ledger", "openapi": f"{url}/openapi.json",
                             "base_url": url}], workers=4, name="switchboard-code")
    await asyncio.sleep(3.0)  # let the pool fill its spares

    runners: list[tuple[str, Callable[[], Awaitable[list[dict[str, Any]]]]]] = []

    async def sb_rows() -> list[dict[str, Any]]:
        return await sb_code_runner(sb.info["grpc"], sb.pid, args)

    async def in_thread(fn: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        return await asyncio.to_thread(fn)

    runners.append(("switchboard", sb_rows))
    reason = "skipped by --skip" if "codemode" in args.skip else codemode_missing()
    if reason is None:
        runners.append(("codemode", lambda: codemode_runner(stack, args)))
    else:
        res["skipped"]["codemode"] = reason
    reason = "skipped by --skip" if "smolagents" in args.skip else smolagents_missing()
    if reason is None:
        runners.append(("smolagents", lambda: in_thread(lambda: smolagents_runner(
            args.code_duration / 2))))
    else:
        res["skipped"]["smolagents"] = reason
    if "cold" not in args.skip:
        runners.append(("cold", lambda: in_thread(lambda: cold_runner(args.cold_runs))))
    if "floors" in args.skip:
        res["skipped"]["floors"] = "skipped by --skip"
    else:
        cores = os.cpu_count() or 1

        async def restore_floor() -> list[dict[str, Any]]:
            return [await floors.restore_floor_row(stack.tmp, args.floor_restores, cores)]

        runners.append(("floor: bare restore", restore_floor))
        runners.append(("floor: pool session", lambda: in_thread(lambda: [floors.pool_floor_row(
            args.pool_runs, args.pool_warmup, stack.env)])))
    for name, why in res["skipped"].items():
        print(f"peers: skipping {name} — {why} (install: {INSTALL_HINT})", file=sys.stderr,
              flush=True)
    per: dict[str, list[list[dict[str, Any]]]] = {}
    for r in range(args.rounds if not args.quick else 1):
        order = runners[r % len(runners):] + runners[:r % len(runners)]
        for name, fn in order:
            print(f"peers: code runs — {name} (round {r + 1}) …", file=sys.stderr, flush=True)
            try:
                per.setdefault(name, []).append(await fn())
            except Exception as exc:
                res["skipped"][name] = f"failed: {exc}"
                print(f"peers: {name} failed: {exc}", file=sys.stderr, flush=True)
    for rounds in per.values():
        res["runners"].extend(merge_rounds(rounds))
    sb.stop()
    be.stop()
    by_key = {r["key"]: r for r in res["runners"]}
    gv: dict[str, float | None] = {}
    gv["isolated_runs_per_s"] = by_key.get("sb_isolated", {}).get("runs_per_s")
    gv["warm_isolated_p50_ms"] = by_key.get("sb_warm", {}).get("p50_ms")
    gv["session_runs_per_s"] = by_key.get("sb_session", {}).get("runs_per_s")
    res["goal_values"] = gv
    res["bound_values"] = bounds.code_values(res, os.cpu_count() or 1)
    res["load_after"] = loadavg()


def merge_rounds(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per key: the median of each figure over the rounds; n summed."""
    merged = []
    for i, first in enumerate(rounds[0]):
        same = [r[i] for r in rounds if len(r) > i and r[i]["key"] == first["key"]]
        row = dict(first)
        for k in ("runs_per_s", "p50_ms", "p99_ms", "cpu_s_per_run"):
            vals = [x[k] for x in same if x.get(k) is not None]
            row[k] = statistics.median(vals) if vals else None
        row["n"] = sum(x.get("n") or 0 for x in same)
        if len(same) > 1:
            row["note"] = f"{first.get('note', '')}; median of {len(same)} rounds".lstrip("; ")
        merged.append(row)
    return merged


# -- main -----------------------------------------------------------------------------------------


@contextmanager
def stack_in_tmp() -> Iterator[Stack]:
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        stack = Stack(Path(tmp))
        try:
            yield stack
        finally:
            stack.close()


def commit() -> str:
    p = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "gateway"],
                           capture_output=True, text=True).stdout.strip()
    return p.stdout.strip() + ("+dirty gateway/" if dirty else "")


def report(out: dict[str, Any]) -> str:
    parts = [f"# bench/peers.py — {out['started']} UTC, commit {out['commit']}, "
             f"{out['cpus']} CPUs, load average (1/5/15 min) {out['load_before']} → "
             f"{out['load_after']}", ""]
    values: dict[str, float | None] = {}
    bound_values: dict[str, float | None] = {}
    if "tools" in out:
        t = out["tools"]
        parts += [f"## Tool calls (load {t['load_before']} → {t.get('load_after')})", "",
                  tools_table(t), ""]
        if "backend_calls_per_s" in t:
            parts.append(f"Fast backend alone, 32 callers over HTTP: "
                         f"{t['backend_calls_per_s']:,.0f} calls/s (the ceiling no gateway "
                         f"figure reaches).")
        if "contextforge" in t:
            cf = t["contextforge"]
            parts.append(f"ContextForge {cf.get('version')} (`mcpgateway`: uvicorn, one "
                         f"worker, SQLite, rate limiting off) was healthy "
                         f"{cf.get('start_s', 0):.1f} s after its start.")
        if "search" in t:
            s = t["search"]
            parts.append(f"SearchOperations over {s['operations']:,} operations: p50 "
                         f"{s['p50_ms']:.2f} ms, p99 {s['p99_ms']:.2f} ms, "
                         f"{s['cpu_ms_per_query']:.2f} ms gateway CPU per query (n={s['n']}; "
                         f"measured once the gateway was idle, {s.get('idle_after_s', 0)} s "
                         "after the warm-up: the index is built after SERVING).")
        if "startup" in t:
            parts.append(f"`switchboard serve` (demo config) to SERVING: "
                         f"{t['startup']['runs_s']} s.")
        parts += [f"Skipped: {k} — {v}" for k, v in t.get("skipped", {}).items()]
        parts.append("")
        values.update(t.get("goal_values", {}))
        bound_values.update(t.get("bound_values", {}))
    if "code" in out:
        c = out["code"]
        parts += [f"## Code runs (load {c['load_before']} → {c.get('load_after')})", "",
                  code_table(c), ""]
        parts += [f"Skipped: {k} — {v}" for k, v in c.get("skipped", {}).items()]
        parts.append("")
        values.update(c.get("goal_values", {}))
        bound_values.update({k: v for k, v in c.get("bound_values", {}).items()
                             if v is not None or k not in bound_values})
    parts += ["## Goals", "", goals_table(values, bound_values), ""]
    return "\n".join(parts)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "commit": commit(),
        "cpus": os.cpu_count(), "python": platform.python_version(),
        "argv": sys.argv[1:], "load_before": loadavg()}
    t0 = time.perf_counter()
    with stack_in_tmp() as stack:
        if args.only in (None, "tools"):
            await tools_family(args, stack, out)
        if args.only in (None, "code"):
            await code_family(args, stack, out)
    out["load_after"] = loadavg()
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_switchboard:
        serve_switchboard(args.serve_switchboard)
        return 0
    out = asyncio.run(run(args))
    text = report(out)
    print(text)
    print(f"wall {out['wall_s']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
