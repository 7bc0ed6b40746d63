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


def drive(port: int, backend: int, seq: int, count: int, duration: float) -> None:
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
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{backend}") as http:
            stub = pb_grpc.GatewayStub(channel)
            meta = {"get": (("authorization", f"Bearer {TOKEN_GET}"),),
                    "post": (("authorization", f"Bearer {TOKEN_POST}"),)}

            async def gw(kind: str) -> None:
                await stub.Execute(request(kind), metadata=meta[kind], timeout=30)

            async def direct(kind: str) -> None:
                if kind == "get":
                    r = await http.get("/accounts/A1/balance")
                else:
                    r = await http.post("/transfers", json={"from_account": "A1",
                                                           "to_account": "A2", "amount": 1.5})
                r.raise_for_status()

            for kind in ("get", "post"):  # warm up both paths (connections, caches)
                for _ in range(50):
                    await gw(kind)
                    await direct(kind)
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
            for kind in ("get", "post"):
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
        print("result " + json.dumps(results), flush=True)

    asyncio.run(main())


# -- the gateway (this process) --------------------------------------------------------------


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from dataclasses import replace

    from gateway.audit import AuditSettings
    from gateway.config import embedded_defaults
    from gateway.models import BackendSettings
    from gateway.sandbox import SandboxSettings
    from gateway.tools import IdempotencySettings

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (args.tree, str(REPO), os.environ.get("PYTHONPATH")) if p))
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
    driver = subprocess.Popen(
        [sys.executable, __file__, "--drive", str(started["port"]), str(bport),
         str(args.seq), str(args.count), str(args.duration)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    assert driver.stdin is not None and driver.stdout is not None
    marks: dict[str, tuple[float, float]] = {}
    out: dict[str, Any] = {"load_before": os.getloadavg()}
    profiler = None
    for line in driver.stdout:
        if line.startswith("mark "):
            name = line.split()[1]
            if args.profile and name == args.profile_phase:
                profiler = _start_profile(loop)
            marks[name] = (time.process_time(), time.perf_counter())
            if profiler is not None and name == f"{args.profile_phase}_end":
                _stop_profile(loop, profiler, args.profile)
                profiler = None
            driver.stdin.write("ok\n")
            driver.stdin.flush()
        elif line.startswith("result "):
            out.update(json.loads(line[7:]))
    assert driver.wait(60) == 0, "the driver failed"
    for phase in ("idle", "seq_get", "seq_post", "conc_get", "conc_post"):
        cpu = marks[f"{phase}_end"][0] - marks[phase][0]
        out[phase]["cpu_ms_per_call"] = cpu / max(1, out[phase]["n"]) * 1e3
        out[phase]["cpu_util"] = cpu / (marks[f"{phase}_end"][1] - marks[phase][1])
    out["load_after"] = os.getloadavg()
    asyncio.run_coroutine_threadsafe(started["server"].stop(grace=1.0), loop).result(60)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
    log_sink.close()
    return out


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
        lines.append(f"| {label} | idle 2 s | 0 | - | {r['idle']['cpu_util']:.3f} | | | | |")
        for phase in ("seq_get", "seq_post", "conc_get", "conc_post"):
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
                    choices=("seq_get", "seq_post", "conc_get", "conc_post"))
    ap.add_argument("--json", action="store_true", help="print the raw result as JSON")
    ap.add_argument("--serve-backend", default="", help=argparse.SUPPRESS)
    ap.add_argument("--drive", nargs=5, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_backend:
        serve_backend(args.serve_backend)
        return
    if args.drive:
        p, b, s, c, d = args.drive
        drive(int(p), int(b), int(s), int(c), float(d))
        return
    if args.compare:
        rows: list[tuple[str, dict[str, Any]]] = []
        common = ["--seq", str(args.seq), "--count", str(args.count),
                  "--duration", str(args.duration), "--json"]
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
