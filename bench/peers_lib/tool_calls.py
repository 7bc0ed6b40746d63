"""bench/peers.py's tool-call targets (direct HTTP, the fast backend alone, Switchboard over
gRPC — one channel or several — and MCP sessions) and its two phases: sequential (latency, call
by call interleaved; CPU in blocks) and concurrent (32 callers)."""

from __future__ import annotations

import asyncio
import copy
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from .core import Target, pct, tree_cpu_s

TOKEN_AGENT, TOKEN_FINANCE = "dev-agent", "dev-finance"
CALLERS = 32


# -- tool-call targets ---------------------------------------------------------------------------


class Direct(Target):
    name = "direct"

    def __init__(self, url: str) -> None:
        self.url = url

    async def open(self) -> None:
        import httpx

        self.http = httpx.AsyncClient(base_url=self.url)

    async def call(self) -> bool:
        r = await self.http.get("/accounts/A1/balance")
        return r.status_code == 200

    async def close(self) -> None:
        await self.http.aclose()


class RawHttp(Target):
    """The fast backend's own capacity: keep-alive GETs over raw asyncio streams (a client far
    cheaper than httpx, so the figure is the backend's, not the driver's)."""

    name = "backend_raw"

    def __init__(self, url: str, pid: int) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host, self.port, self.pid = host, int(port), pid
        self.req = (f"GET /accounts/A1/balance HTTP/1.1\r\nhost: {host}\r\n\r\n").encode()

    async def open(self) -> None:
        self.r, self.w = await asyncio.open_connection(self.host, self.port)

    async def call(self) -> bool:
        self.w.write(self.req)
        head = await self.r.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        await self.r.readexactly(length)
        return head.startswith(b"HTTP/1.1 200")

    async def close(self) -> None:
        self.w.close()

    @asynccontextmanager
    async def caller(self) -> AsyncIterator[Target]:
        other = RawHttp(f"http://{self.host}:{self.port}", self.pid or 0)
        await other.open()
        try:
            yield other
        finally:
            await other.close()


class SbGrpc(Target):
    def __init__(self, port: int, pid: int, deny: bool = False,
                 token: str = TOKEN_AGENT, channels: int = 1, name: str = "") -> None:
        self.port, self.pid, self.deny, self.token = port, pid, deny, token
        self.name = name or ("sb_deny" if deny else "sb_grpc")
        self.channels = channels
        self.channel: Any = None
        self.stubs: list[Any] = []
        self.turn = 0

    async def open(self) -> None:
        import grpc

        from gateway._proto.switchboard.v1 import gateway_pb2 as pb
        from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc

        self.pb, self.grpc = pb, grpc
        # More than one channel: one HTTP/2 connection each (a local subchannel pool each),
        # so `serve --processes N` (SO_REUSEPORT) can hand them to different children.
        opts = [("grpc.use_local_subchannel_pool", 1)] if self.channels > 1 else None
        self.chans = [grpc.aio.insecure_channel(f"127.0.0.1:{self.port}", options=opts)
                      for _ in range(self.channels)]
        self.channel = self.chans[0]
        self.stubs = [pb_grpc.GatewayStub(c)  # type: ignore[no-untyped-call]
                      for c in self.chans]
        self.stub = self.stubs[0]
        self.md = (("authorization", f"Bearer {self.token}"),)

    async def call(self) -> bool:
        req = self.pb.ExecuteRequest(request_id=str(uuid.uuid4()))
        if self.deny:
            req.tool_call.name = "ledger.create_transfer"
            req.tool_call.arguments.update({"from_account": "A1", "to_account": "A2",
                                            "amount": 1.5, "currency": "USD"})
        else:
            req.tool_call.name = "ledger.get_balance"
            req.tool_call.arguments.update({"account": "A1"})
        try:
            resp = await self.stub.Execute(req, metadata=self.md, timeout=60)
        except self.grpc.aio.AioRpcError as exc:  # a denial is PERMISSION_DENIED
            if self.deny and exc.code() == self.grpc.StatusCode.PERMISSION_DENIED:
                return True
            raise
        if resp.error.code:
            self.last_error = f"{resp.error.code}: {resp.error.message[:160]}"
        if self.deny:
            return bool(resp.error.code == "policy_denied")
        return not resp.error.code

    async def close(self) -> None:
        for c in self.chans:
            await c.close()

    @asynccontextmanager
    async def caller(self) -> AsyncIterator[Target]:
        """The callers take the channels in turn (all share one with a single channel)."""
        if self.channels == 1:
            yield self
            return
        other = copy.copy(self)
        other.stub = self.stubs[self.turn % len(self.stubs)]
        self.turn += 1
        yield other


class McpTarget(Target):
    """One MCP session (streamable HTTP, the official client) calling one tool."""

    def __init__(self, name: str, url: str, token: str, tool: str, args: dict[str, Any],
                 pid: int) -> None:
        self.name, self.url, self.token, self.tool, self.args = name, url, token, tool, args
        self.pid = pid
        self._stack: Any = None

    async def open(self) -> None:
        from contextlib import AsyncExitStack

        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        self._stack = AsyncExitStack()
        http = await self._stack.enter_async_context(httpx2.AsyncClient(
            headers={"Authorization": f"Bearer {self.token}"}, timeout=120))
        self.client = await self._stack.enter_async_context(
            Client(streamable_http_client(self.url, http_client=http)))  # type: ignore[arg-type]
        # As an agent does: list the tools once. A tool the server serves but does not list
        # (Switchboard lists only the dedicated tools its policy advertises) is marked known, or
        # the client would re-list the tools on every call to look for its output schema.
        listed = await self.tools()
        if self.tool and self.tool not in listed:
            with suppress(AttributeError):  # mcp 2.3's cache; a newer client may differ
                self.client.session._tool_output_schemas[self.tool] = None

    async def tools(self) -> list[str]:
        return [t.name for t in (await self.client.list_tools()).tools]

    async def call(self) -> bool:
        r = await self.client.call_tool(self.tool, self.args)
        if r.is_error:
            self.last_error = str(r.content[0].text if r.content else r)[:200]
        return not r.is_error

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()

    @asynccontextmanager
    async def caller(self) -> AsyncIterator[Target]:
        """An MCP session of its own, opened and closed in the caller's task."""
        other = McpTarget(self.name, self.url, self.token, self.tool, self.args, self.pid or 0)
        await other.open()
        try:
            yield other
        finally:
            await other.close()


async def seq_phase(targets: list[Target], rounds: int, blocks: dict[str, int],
                    iterations: int, sparse: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Latency: ``iterations`` rounds of one call per target, call by call in a rotated order,
    so every path's samples come from the same moments as direct HTTP's (a target in ``sparse``
    takes part in that many iterations, spread evenly); the added ms compare each target with
    the direct calls of the iterations it took part in. CPU: ``rounds`` rounds of blocks of
    sequential calls per target (``blocks``), the order rotated, the target's process tree's
    CPU over its blocks divided by their calls."""
    names = [t.name for t in targets]
    lat: dict[str, list[float]] = {n: [] for n in names}
    paired: dict[str, list[float]] = {n: [] for n in names}  # direct's, same iterations
    bad: dict[str, int] = dict.fromkeys(names, 0)
    for t in targets:  # warm-up: connections, caches, sessions
        for _ in range(5):
            await t.call()
    for i in range(iterations):
        order = targets[i % len(targets):] + targets[:i % len(targets)]
        took: dict[str, float] = {}
        for t in order:
            want = sparse.get(t.name)
            if want and i % max(1, iterations // want) != 0:
                continue
            s = time.perf_counter()
            ok = await t.call()
            took[t.name] = (time.perf_counter() - s) * 1e3
            bad[t.name] += not ok
        for name, ms in took.items():
            lat[name].append(ms)
            if "direct" in took:
                paired[name].append(took["direct"])
    cpu: dict[str, float] = dict.fromkeys(names, 0.0)
    calls: dict[str, int] = dict.fromkeys(names, 0)
    gateways = [t for t in targets if t.pid and t.name != "direct"]
    for r in range(rounds):
        order = gateways[r % len(gateways):] + gateways[:r % len(gateways)] if gateways else []
        for t in order:
            assert t.pid
            c0 = tree_cpu_s(t.pid)
            for _ in range(blocks.get(t.name, blocks["default"])):
                bad[t.name] += not await t.call()
                calls[t.name] += 1
            cpu[t.name] += tree_cpu_s(t.pid) - c0
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        samples = lat[name]
        row: dict[str, Any] = {"n": len(samples), "p50_ms": statistics.median(samples),
                               "p99_ms": pct(samples, 99), "unexpected": bad[name]}
        if name != "direct" and paired[name]:
            row["direct_p50_same_iterations_ms"] = statistics.median(paired[name])
            row["added_p50_ms"] = row["p50_ms"] - row["direct_p50_same_iterations_ms"]
        if calls[name]:
            row["cpu_ms_per_call"] = cpu[name] / calls[name] * 1e3
            row["cpu_calls"] = calls[name]
        out[name] = row
    return out


async def conc_run(target: Target, callers: int, duration: float) -> dict[str, Any]:
    """``callers`` callers, each in its own task (an MCP session each), started together once
    every one is connected and warm; calls/s over the phase and CPU per call of the target."""
    tally = {"done": 0, "errors": 0, "ready": 0}
    example: list[str] = []
    lat: list[float] = []
    opening = asyncio.Lock()
    all_ready, go = asyncio.Event(), asyncio.Event()
    stop = [0.0]

    def arrived() -> None:
        tally["ready"] += 1
        if tally["ready"] == callers:
            all_ready.set()

    async def caller() -> None:
        try:
            async with opening:  # one session opens at a time (as agents arrive), not 32 at once
                cm = target.caller()
                c = await cm.__aenter__()
        except Exception as exc:
            tally["errors"] += 1
            example.append(f"caller failed to connect: {exc!r}"[:200])
            arrived()
            return
        here = False
        try:
            await c.call()  # warm
            here = True
            arrived()
            await go.wait()
            while time.perf_counter() < stop[0]:
                s = time.perf_counter()
                try:
                    ok = await c.call()
                except Exception as exc:  # counted, the phase goes on
                    ok = False
                    c.last_error = repr(exc)[:200]
                tally["done" if ok else "errors"] += 1
                if ok:
                    lat.append(time.perf_counter() - s)
                else:
                    example.append(c.last_error or "unexpected result")
        except Exception as exc:
            tally["errors"] += 1
            example.append(f"caller failed: {exc!r}"[:200])
            if not here:
                arrived()
        finally:
            with suppress(Exception):
                await cm.__aexit__(None, None, None)

    tasks = [asyncio.create_task(caller()) for _ in range(callers)]
    await all_ready.wait()
    c0 = tree_cpu_s(target.pid) if target.pid else 0.0
    d0 = time.process_time()
    t0 = time.perf_counter()
    stop[0] = t0 + duration
    go.set()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - t0
    cpu = (tree_cpu_s(target.pid) - c0) if target.pid else None
    driver = time.process_time() - d0
    n = tally["done"]
    calls = max(1, n + tally["errors"])
    return {"n": n, "errors": tally["errors"], "wall_s": wall, "calls_per_s": n / wall,
            "cpu_ms_per_call": None if cpu is None else cpu / calls * 1e3,
            "driver_cpu_ms_per_call": driver / calls * 1e3,
            "driver_cpu_util": driver / wall, "error_example": example[0] if example else "",
            "p50_ms": statistics.median(lat) * 1e3 if lat else None}


async def conc_phase(targets: list[Target], rounds: int, duration: float
                     ) -> dict[str, dict[str, Any]]:
    per: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    for r in range(rounds):
        order = targets if r % 2 == 0 else list(reversed(targets))
        for t in order:
            per[t.name].append(await conc_run(t, CALLERS, duration))
    out = {}
    for name, runs in per.items():
        n = sum(x["n"] for x in runs)
        wall = sum(x["wall_s"] for x in runs)
        cpus = [x["cpu_ms_per_call"] for x in runs if x["cpu_ms_per_call"] is not None]
        out[name] = {"n": n, "errors": sum(x["errors"] for x in runs), "wall_s": wall,
                     "calls_per_s": n / wall,
                     "driver_cpu_util": max(x["driver_cpu_util"] for x in runs),
                     "driver_cpu_ms_per_call": statistics.median(
                         x["driver_cpu_ms_per_call"] for x in runs),
                     "p50_ms": statistics.median([x["p50_ms"] for x in runs if x["p50_ms"]]
                                                 or [0.0]),
                     "error_example": next((x["error_example"] for x in runs
                                            if x["error_example"]), ""),
                     "per_round_calls_per_s": [round(x["calls_per_s"], 1) for x in runs],
                     "cpu_ms_per_call": statistics.median(cpus) if cpus else None}
    return out


