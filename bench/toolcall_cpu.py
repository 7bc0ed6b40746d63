"""Gateway CPU per dedicated tool call, its latency over direct HTTP, and its throughput.

    .venv/bin/python bench/toolcall_cpu.py [--seq 400] [--count 4000] [--duration 10]
    .venv/bin/python bench/toolcall_cpu.py --compare DIR [--rounds 2]   # A/B, interleaved

Three processes on loopback: a **fast backend** (a raw asyncio HTTP/1.1 server answering fixed
JSON, keep-alive; far faster than the gateway, so it is never the bottleneck), the **gateway**
(``gateway.server.create_server`` in this process, its event loop in a background thread) and a
**driver** (a subprocess: grpc.aio callers and an httpx client for the direct-HTTP baseline).
The backend serves an OpenAPI spec with one GET (``ledger.get_balance``) and one POST
(``ledger.create_transfer``, a compliance operation: strict schema, exactly-once).

Gateway CPU per call is this process's CPU time (``time.process_time()``: every thread, gRPC's
C core included) over a phase, divided by the gateway calls of that phase — nothing subtracted
(idle background work of the gateway during the phase is in it). Phases:

* ``seq``: sequential calls, gateway and direct HTTP interleaved one by one → p50s and the
  difference (the direct calls cost the gateway nothing);
* ``conc``: 32 concurrent gRPC callers, bounded by ``--count`` calls and ``--duration`` s →
  calls/s and CPU per call.

``--tree DIR`` imports ``gateway`` (and the policy) from DIR instead of this checkout, e.g. a
``git archive`` of the base commit; ``--compare DIR`` alternates rounds of this checkout and
DIR in fresh processes and prints both side by side. ``--profile FILE`` runs cProfile over the
phase (``--profile-phase``, default
``conc_get``; the gateway's event-loop thread only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TOKEN_GET, TOKEN_POST = "dev-agent", "dev-finance"
BALANCE = {"account": "A1", "balance": 1000.0, "currency": "USD",
           "as_of": "2026-12-01T00:00:00+00:00"}
TRANSFER = {"id": "T1", "from_account": "A1", "to_account": "A2", "amount": 1.5,
            "currency": "USD", "memo": None, "idempotency_key": None,
            "created_at": "2026-12-01T00:00:00+00:00"}


# -- the fast backend (its own process) ------------------------------------------------------


def _spec() -> dict[str, Any]:
    from gateway.demo.ledger import app

    full: dict[str, Any] = app.openapi()
    paths = full["paths"]
    full["paths"] = {"/accounts/{account}/balance": paths["/accounts/{account}/balance"],
                     "/transfers": {"post": paths["/transfers"]["post"]}}
    return full


def serve_backend(spec_file: str) -> None:
    spec = Path(spec_file).read_bytes()

    def response(status: str, body: bytes) -> bytes:
        return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n").encode() + body

    answers = {
        b"GET /openapi.json": response("200 OK", spec),
        b"GET /accounts/": response("200 OK", json.dumps(BALANCE).encode()),
        b"POST /transfers": response("201 Created", json.dumps(TRANSFER).encode()),
    }
    not_found = response("404 Not Found", b'{"detail":"not found"}')

    class Http(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.t = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while True:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buf[:end]
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if len(self.buf) < end + 4 + length:
                    return
                self.buf = self.buf[end + 4 + length:]
                first = head.split(b"\r\n", 1)[0]
                out = next((a for prefix, a in answers.items() if first.startswith(prefix)),
                           not_found)
                self.t.write(out)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Http, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    asyncio.run(main())


# -- the driver (its own process) ------------------------------------------------------------


def drive(port: int, backend: int, seq: int, count: int, duration: float,
          channels: int = 1, phases: str = "full") -> None:
    import grpc
    import httpx

    from gateway._proto.switchboard.v1 import gateway_pb2 as pb
    from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc

    def mark(name: str) -> None:
        print(f"mark {name}", flush=True)
        assert sys.stdin.readline().strip() == "ok"

    def request(kind: str) -> pb.ExecuteRequest:
        req = pb.ExecuteRequest(request_id=str(uuid.uuid4()))
        if kind == "get":
            req.tool_call.name = "ledger.get_balance"
            req.tool_call.arguments.update({"account": "A1"})
        else:
            req.tool_call.name = "ledger.create_transfer"
            req.tool_call.arguments.update({"from_account": "A1", "to_account": "A2",
                                            "amount": 1.5, "currency": "USD"})
        return req

    async def main() -> None:
        results: dict[str, Any] = {}
        # One HTTP/2 connection per channel (a local subchannel pool each): several channels
        # reach several processes of `serve --processes N` (SO_REUSEPORT spreads connections).
        chans = [grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                           options=[("grpc.use_local_subchannel_pool", 1)])
                 for _ in range(channels)]
        stubs = [pb_grpc.GatewayStub(c) for c in chans]
        echoes = [c.unary_unary("/bench.Echo/Echo") for c in chans]
        turn = [0]
        if phases == "echo":
            await _echo_phases(echoes, count, duration, mark, results)
            for c in chans:
                await c.close()
            print("result " + json.dumps(results), flush=True)
            return
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{backend}") as http:
            meta = {"get": (("authorization", f"Bearer {TOKEN_GET}"),),
                    "post": (("authorization", f"Bearer {TOKEN_POST}"),),
                    # the agent may not move money: the policy denies it (PERMISSION_DENIED)
                    "deny": (("authorization", f"Bearer {TOKEN_GET}"),)}

            async def gw(kind: str) -> None:
                turn[0] += 1
                stub = stubs[turn[0] % len(stubs)]
                try:
                    await stub.Execute(request("post" if kind == "deny" else kind),
                                       metadata=meta[kind], timeout=30)
                except grpc.aio.AioRpcError as exc:
                    if kind != "deny" or exc.code() != grpc.StatusCode.PERMISSION_DENIED:
                        raise
                else:
                    if kind == "deny":
                        raise AssertionError("the policy allowed the agent's transfer")

            async def direct(kind: str) -> None:
                if kind == "get":
                    r = await http.get("/accounts/A1/balance")
                else:
                    r = await http.post("/transfers", json={"from_account": "A1",
                                                           "to_account": "A2", "amount": 1.5})
                r.raise_for_status()

            for kind in ("get", "post"):  # warm up both paths (connections, caches)
                for _ in range(max(50, 4 * channels)):
                    await gw(kind)
                    await direct(kind)
                    await gw("deny")
            mark("idle")  # what the gateway burns doing nothing (in every phase's figure)
            await asyncio.sleep(2.0)
            mark("idle_end")
            results["idle"] = {"n": 0}
            for kind in ("get", "post"):
                gw_lat: list[float] = []
                http_lat: list[float] = []
                mark(f"seq_{kind}")
                for _ in range(seq):
                    t = time.perf_counter()
                    await gw(kind)
                    gw_lat.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    await direct(kind)
                    http_lat.append(time.perf_counter() - t)
                mark(f"seq_{kind}_end")
                results[f"seq_{kind}"] = {"n": seq, "gw_p50_ms": statistics.median(gw_lat) * 1e3,
                                          "http_p50_ms": statistics.median(http_lat) * 1e3}
            for kind in ("get", "post", "deny"):
                tally = {"done": 0, "errors": 0}

                async def caller(kind: str, stop_at: float, tally: dict[str, int]) -> None:
                    while tally["done"] + tally["errors"] < count and \
                            time.perf_counter() < stop_at:
                        try:
                            await gw(kind)
                            tally["done"] += 1
                        except grpc.RpcError:
                            tally["errors"] += 1

                mark(f"conc_{kind}")
                t0 = time.perf_counter()
                await asyncio.gather(*(caller(kind, t0 + duration, tally) for _ in range(32)))
                wall = time.perf_counter() - t0
                mark(f"conc_{kind}_end")
                done = tally["done"]
                results[f"conc_{kind}"] = {"n": done, "errors": tally["errors"],
                                           "wall_s": wall, "calls_per_s": done / wall}
        for c in chans:
            await c.close()
        print("result " + json.dumps(results), flush=True)

    asyncio.run(main())


async def _echo_phases(echoes: list[Any], count: int, duration: float, mark: Any,
                       results: dict[str, Any]) -> None:
    """The floor: a bare grpc.aio unary echo (bytes in, bytes out, no protobuf, no work)."""
    import grpc

    payload = b"x" * 200
    for e in echoes:
        for _ in range(50):
            await e(payload, timeout=30)
    mark("idle")
    await asyncio.sleep(1.0)
    mark("idle_end")
    results["idle"] = {"n": 0}
    lat: list[float] = []
    mark("seq_echo")
    for _ in range(400):
        t = time.perf_counter()
        await echoes[0](payload, timeout=30)
        lat.append(time.perf_counter() - t)
    mark("seq_echo_end")
    results["seq_echo"] = {"n": 400, "gw_p50_ms": statistics.median(lat) * 1e3,
                           "http_p50_ms": 0.0}
    tally = {"done": 0, "errors": 0}
    turn = [0]

    async def caller(stop_at: float) -> None:
        while tally["done"] + tally["errors"] < count and time.perf_counter() < stop_at:
            turn[0] += 1
            try:
                await echoes[turn[0] % len(echoes)](payload, timeout=30)
                tally["done"] += 1
            except grpc.RpcError:
                tally["errors"] += 1

    mark("conc_echo")
    t0 = time.perf_counter()
    await asyncio.gather(*(caller(t0 + duration) for _ in range(32)))
    wall = time.perf_counter() - t0
    mark("conc_echo_end")
    results["conc_echo"] = {"n": tally["done"], "errors": tally["errors"], "wall_s": wall,
                            "calls_per_s": tally["done"] / wall}


# -- the gateway (this process, or `serve --processes N` subprocesses) ---------------------


PHASES = ("idle", "seq_get", "seq_post", "conc_get", "conc_post", "conc_deny")
ECHO_PHASES = ("idle", "seq_echo", "conc_echo")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import replace

    from gateway.audit import AuditSettings
    from gateway.config import embedded_defaults
    from gateway.models import BackendSettings
    from gateway.sandbox import SandboxSettings
    from gateway.tools import IdempotencySettings

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (args.tree, str(REPO), os.environ.get("PYTHONPATH")) if p))
    if args.floor:
        return _run_floor(env, args)
    with tempfile.TemporaryDirectory(prefix="toolcall-cpu-") as tmp:
        state = Path(tmp)
        (state / "spec.json").write_text(json.dumps(_spec()))
        backend = subprocess.Popen(
            [sys.executable, __file__, "--serve-backend", str(state / "spec.json")],
            stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert backend.stdout is not None
            bport = int(backend.stdout.readline())
            url = f"http://127.0.0.1:{bport}"
            if args.processes:
                return _run_serve(env, bport, url, args, state)
            settings = replace(
                embedded_defaults(state), listen="127.0.0.1:0",
                sandbox=SandboxSettings(workers=1),
                idempotency=IdempotencySettings(dsn=f"sqlite:///{state / 'idempotency.db'}"),
                audit=AuditSettings(file=state / "audit.jsonl", log_format="json"),
                backends=(BackendSettings(name="ledger", openapi=f"{url}/openapi.json",
                                          base_url=url),))
            return _run_gateway(settings, env, bport, args, state)
        finally:
            backend.terminate()
            backend.wait(10)


def _tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and every live descendant, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, IndexError, ValueError):
            continue
    return total


def _run_serve(env: dict[str, str], bport: int, url: str, args: argparse.Namespace,
               state: Path) -> dict[str, Any]:
    """``switchboard serve --processes N`` as a subprocess (the supervisor and its children,
    each with its own audit file, one SQLite store); CPU is the whole process tree's."""
    import yaml

    config = state / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "listen": "127.0.0.1:0",
        "server": {"processes": args.processes},
        "identity": {"tokens": {
            TOKEN_GET: {"id": "agent-1", "tenant": "demo", "roles": ["agent"]},
            TOKEN_POST: {"id": "finance-1", "tenant": "demo", "roles": ["agent", "finance"]}}},
        "backends": [{"name": "ledger", "openapi": f"{url}/openapi.json", "base_url": url}],
        "idempotency": {"dsn": f"sqlite:///{state / 'idempotency.db'}"},
        "audit": {"file": str(state / "audit.jsonl"), "log_format": "json"},
        "sandbox": {"workers": 1},
    }))
    log = open(state / "serve.log", "w")  # noqa: SIM115
    serve = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config",
                              str(config)], stdout=subprocess.PIPE, stderr=log, text=True,
                             env=env, cwd=str(state))
    try:
        assert serve.stdout is not None
        port = 0
        for line in serve.stdout:
            if line.startswith("LISTENING grpc://"):
                port = int(line.rsplit(":", 1)[1])
                break
        assert port, (state / "serve.log").read_text()[-2000:]
        threading.Thread(target=serve.stdout.read, daemon=True).start()
        return _drive_and_mark(env, port, bport, args, lambda: _tree_cpu(serve.pid), PHASES)
    finally:
        serve.terminate()
        serve.wait(60)
        log.close()


def _run_floor(env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    """A bare grpc.aio server in this process whose one method echoes its bytes: what gRPC
    itself costs per unary call on this machine (the bound under the gateway's figure)."""
    import grpc

    loop = asyncio.new_event_loop()
    started: dict[str, Any] = {}
    ready = threading.Event()

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def start() -> None:
        server = grpc.aio.server()
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)}),))
        started["port"] = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        started["server"] = server

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(start())
        finally:
            ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(60)
    try:
        return _drive_and_mark(env, started["port"], 0, args, time.process_time, ECHO_PHASES,
                               mode="echo")
    finally:
        asyncio.run_coroutine_threadsafe(started["server"].stop(None), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _drive_and_mark(env: dict[str, str], port: int, bport: int, args: argparse.Namespace,
                    cpu: Any, phases: tuple[str, ...], *,
                    loop: asyncio.AbstractEventLoop | None = None,
                    mode: str = "full") -> dict[str, Any]:
    driver = subprocess.Popen(
        [sys.executable, __file__, "--drive", str(port), str(bport),
         str(args.seq), str(args.count), str(args.duration), str(args.channels), mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert driver.stdin is not None and driver.stdout is not None
    marks: dict[str, tuple[float, float]] = {}
    out: dict[str, Any] = {"load_before": os.getloadavg(), "processes": args.processes or 0,
                           "channels": args.channels}
    profiler = None
    spy: subprocess.Popen[bytes] | None = None
    for line in driver.stdout:
        if line.startswith("mark "):
            name = line.split()[1]
            if loop is not None and args.profile and name == args.profile_phase:
                profiler = _start_profile(loop)
            if args.spy and name == args.profile_phase:
                spy = _start_spy(args.spy)
            if spy is not None and name == f"{args.profile_phase}_end":
                _stop_spy(spy)
                spy = None
            marks[name] = (cpu(), time.perf_counter())
            if loop is not None and profiler is not None and \
                    name == f"{args.profile_phase}_end":
                _stop_profile(loop, profiler, args.profile)
                profiler = None
            driver.stdin.write("ok\n")
            driver.stdin.flush()
        elif line.startswith("result "):
            out.update(json.loads(line[7:]))
    assert driver.wait(60) == 0, "the driver failed"
    for phase in phases:
        used = marks[f"{phase}_end"][0] - marks[phase][0]
        out[phase]["cpu_ms_per_call"] = used / max(1, out[phase]["n"]) * 1e3
        out[phase]["cpu_util"] = used / (marks[f"{phase}_end"][1] - marks[phase][1])
    out["load_after"] = os.getloadavg()
    return out


def _run_gateway(settings: Any, env: dict[str, str], bport: int, args: argparse.Namespace,
                 state: Path) -> dict[str, Any]:
    import logging

    from gateway.server import create_server

    loop = asyncio.new_event_loop()
    started: dict[str, Any] = {}
    ready = threading.Event()

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            started["server"], started["port"] = loop.run_until_complete(create_server(settings))
        finally:
            ready.set()
        loop.run_forever()

    # The serve command logs to stderr; keep the same cost but not the noise on the terminal.
    log_sink = open(state / "gateway.log", "w")  # noqa: SIM115
    from gateway.audit import configure_logging

    configure_logging("json", "INFO", stream=log_sink)
    logging.getLogger("grpc").setLevel(logging.WARNING)
    thread = threading.Thread(target=run, name="gateway", daemon=True)
    thread.start()
    assert ready.wait(600) and "server" in started, "the gateway did not start"
    try:
        return _drive_and_mark(env, started["port"], bport, args, time.process_time, PHASES,
                               loop=loop)
    finally:
        asyncio.run_coroutine_threadsafe(started["server"].stop(grace=1.0), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(30)
        log_sink.close()


def _start_spy(path: str) -> subprocess.Popen[bytes]:
    """py-spy (``$PY_SPY``, else ``py-spy`` on PATH) sampling this whole process — every
    thread; C code is charged to the Python frame that called it) for one phase, raw stacks."""
    spy = subprocess.Popen(
        [os.environ.get("PY_SPY", "py-spy"), "record", "--pid", str(os.getpid()), "-r", "250",
         "-f", "raw", "-o", path], stdout=subprocess.DEVNULL)
    time.sleep(1.0)  # attached before the phase's calls start
    return spy


def _stop_spy(spy: subprocess.Popen[bytes]) -> None:
    import signal

    spy.send_signal(signal.SIGINT)
    spy.wait(60)


def _start_profile(loop: asyncio.AbstractEventLoop) -> Any:
    import cProfile

    prof = cProfile.Profile()
    loop.call_soon_threadsafe(prof.enable)
    return prof


def _stop_profile(loop: asyncio.AbstractEventLoop, prof: Any, path: str) -> None:
    done = threading.Event()

    def stop() -> None:
        prof.disable()
        done.set()

    loop.call_soon_threadsafe(stop)
    done.wait(30)
    prof.dump_stats(path)


# -- reporting -------------------------------------------------------------------------------


def _table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    lines = ["| tree | phase | n | gateway CPU ms/call | CPU util | p50 gw ms | p50 HTTP ms "
             "| p50 overhead ms | calls/s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for label, r in rows:
        lines.append(f"| {label} | idle | 0 | - | {r['idle']['cpu_util']:.3f} | | | | |")
        for phase in ("seq_get", "seq_post", "conc_get", "conc_post", "conc_deny",
                      "seq_echo", "conc_echo"):
            if phase not in r:
                continue
            p = r[phase]
            if phase.startswith("seq"):
                lat = (f"{p['gw_p50_ms']:.2f} | {p['http_p50_ms']:.2f} | "
                       f"{p['gw_p50_ms'] - p['http_p50_ms']:+.2f} | ")
                rate = ""
            else:
                lat = " |  |  | "
                rate = f"{p['calls_per_s']:,.0f}" + (f" ({p['errors']} err)" if p["errors"] else "")
            lines.append(f"| {label} | {phase} | {p['n']} | {p['cpu_ms_per_call']:.2f} | "
                         f"{p['cpu_util']:.2f} | {lat}{rate} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seq", type=int, default=400, help="sequential calls per kind")
    ap.add_argument("--count", type=int, default=4000, help="concurrent phase: max calls")
    ap.add_argument("--duration", type=float, default=10.0, help="concurrent phase: max s")
    ap.add_argument("--tree", default="", help="import gateway from this directory")
    ap.add_argument("--compare", default="", help="A/B: alternate rounds with this tree")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--profile", default="", help="cProfile one phase (gateway thread) to FILE")
    ap.add_argument("--profile-phase", default="conc_get",
                    choices=("seq_get", "seq_post", "conc_get", "conc_post", "conc_deny"))
    ap.add_argument("--spy", default="",
                    help="py-spy the gateway process over --profile-phase to FILE (raw "
                         "stacks; $PY_SPY names the binary). Its CPU is the spy's, not in "
                         "the phase's figure only while attaching")
    ap.add_argument("--json", action="store_true", help="print the raw result as JSON")
    ap.add_argument("--processes", type=int, default=0,
                    help="run `switchboard serve --processes N` as subprocesses instead of the "
                         "in-process gateway (CPU: the whole process tree)")
    ap.add_argument("--channels", type=int, default=1,
                    help="gRPC channels (connections) the driver spreads its callers over")
    ap.add_argument("--floor", action="store_true",
                    help="measure a bare grpc.aio unary echo server instead of the gateway")
    ap.add_argument("--serve-backend", default="", help=argparse.SUPPRESS)
    ap.add_argument("--drive", nargs=7, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_backend:
        serve_backend(args.serve_backend)
        return
    if args.drive:
        p, b, s, c, d, ch, mode = args.drive
        drive(int(p), int(b), int(s), int(c), float(d), int(ch), mode)
        return
    if args.compare:
        rows: list[tuple[str, dict[str, Any]]] = []
        common = ["--seq", str(args.seq), "--count", str(args.count),
                  "--duration", str(args.duration), "--channels", str(args.channels),
                  "--json"] + (["--processes", str(args.processes)] if args.processes else [])
        for i in range(args.rounds):
            for label, tree in (("base", args.compare), ("this", "")):
                cmd = [sys.executable, __file__, *common] + (["--tree", tree] if tree else [])
                res = subprocess.run(cmd, capture_output=True, text=True, check=True)
                data = json.loads(res.stdout.strip().splitlines()[-1])
                rows.append((f"{label} #{i + 1}", data))
                print(f"{label} #{i + 1}: load {data['load_before']} → {data['load_after']}",
                      file=sys.stderr, flush=True)
        print(_table(rows))
        for label, r in rows:
            print(f"{label}: load average {r['load_before'][0]:.2f} → {r['load_after'][0]:.2f}")
        return
    if args.tree:
        sys.path.insert(0, args.tree)
        os.environ.setdefault("SWITCHBOARD_POLICY_DIR", str(Path(args.tree) / "policies"))
    result = measure(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(_table([("this" if not args.tree else args.tree, result)]))
        print(f"load average {result['load_before']} → {result['load_after']}")


if __name__ == "__main__":
    main()
