"""Run the real gateway in-process for tests: its own event loop in a background thread,
real demo backends as uvicorn subprocesses, a real gRPC channel on a port-0 socket."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import yaml
from waiting import scaled

from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway._proto.switchboard.v1 import gateway_pb2_grpc as pb_grpc
from gateway.audit import AuditSettings
from gateway.config import Settings, embedded_defaults
from gateway.demo_stack import ServiceProcess, spawn_service, write_demo_config
from gateway.models import BackendSettings
from gateway.sandbox import SandboxSettings
from gateway.server import GatewayServer, create_server
from gateway.tools import IdempotencySettings


class RunningGateway:
    """A gateway served from a background thread; ``stub`` talks to it over real gRPC."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.server: GatewayServer | None = None
        self.port = 0
        ready = threading.Event()
        self.error: BaseException | None = None

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.server, self.port = self.loop.run_until_complete(create_server(settings))
            except BaseException as exc:  # surfaced to the test
                self.error = exc
            ready.set()
            if self.error is None:
                self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="gateway", daemon=True)
        self.thread.start()
        # Starting Deno + Pyodide on a busy machine can take minutes.
        assert ready.wait(scaled(300)), "the gateway did not start"
        if self.error is not None:
            raise self.error
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = pb_grpc.GatewayStub(self.channel)

    def call(self, coro: Any, timeout: float = 60) -> Any:
        """Run a coroutine on the gateway's loop (for inspecting its internals)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.channel.close()
        if self.server is not None:
            self.call(self.server.stop(grace=2.0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(scaled(60))


async def serve_lifespan(receive: Any, send: Any) -> None:
    """The ASGI lifespan protocol for a bare test app: start up, then wait for shutdown."""
    while (await receive())["type"] != "lifespan.shutdown":
        await send({"type": "lifespan.startup.complete"})
    await send({"type": "lifespan.shutdown.complete"})


def md(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def tool_request(name: str, arguments: dict[str, Any], request_id: str | None = None,
                 ) -> pb.ExecuteRequest:
    req = pb.ExecuteRequest(request_id=request_id or str(uuid.uuid4()),
                            tool_call=pb.ToolCall(name=name))
    req.tool_call.arguments.update(arguments)
    return req


def code_request(source: str, *, session_id: str | None = None, timeout_ms: int = 0,
                 inputs: dict[str, Any] | None = None) -> pb.ExecuteRequest:
    run = pb.CodeRun(source=source, timeout_ms=timeout_ms)
    if session_id:
        run.session_id = session_id
    if inputs:
        run.inputs.update(inputs)
    return pb.ExecuteRequest(request_id=str(uuid.uuid4()), code_run=run)


def error_of(err: grpc.RpcError) -> dict[str, Any]:
    trailers = dict(err.trailing_metadata() or ())  # type: ignore[attr-defined]
    payload: dict[str, Any] = json.loads(trailers.get("switchboard-error", "{}"))
    payload["trace_id"] = trailers.get("switchboard-trace-id", "")
    return payload


@contextmanager
def demo_backends(state: Path) -> Iterator[dict[str, ServiceProcess]]:
    """The ledger and workspace demo services as real uvicorn subprocesses on free ports."""
    started: dict[str, ServiceProcess] = {}
    try:
        for name in ("ledger", "workspace"):
            started[name] = spawn_service(
                name, [sys.executable, "-m", f"gateway.demo.{name}", "--host", "127.0.0.1",
                       "--port", "0", "--db", str(state / f"{name}.db")],
                log_file=state / f"{name}.log", timeout=scaled(120))
        yield started
    finally:
        for svc in started.values():
            svc.stop()


def gateway_settings(state: Path, backends: dict[str, ServiceProcess], **overrides: Any,
                     ) -> Settings:
    base = embedded_defaults(state)
    # One Deno process with one spare isolate is plenty for a test module and starts faster.
    overrides.setdefault("sandbox", SandboxSettings(workers=1))
    overrides.setdefault("idempotency",
                         IdempotencySettings(dsn=f"sqlite:///{state / 'idempotency.db'}"))
    overrides.setdefault("audit", AuditSettings(file=state / "audit.jsonl", log_format="json"))
    overrides.setdefault("backends", tuple(
        BackendSettings(name=n, openapi=f"{s.url}/openapi.json", base_url=s.url)
        for n, s in backends.items()))
    return replace(base, listen="127.0.0.1:0", **overrides)


def mcp_endpoint(gateway: RunningGateway) -> Iterator[str]:
    """The gateway's MCP endpoint URL for a fixture to yield from: the one ``serve`` started,
    or one started here on the gateway's own event loop over its pipeline and authenticator
    (stopped when the fixture ends)."""
    from gateway.mcp_server import McpHandle, create_mcp_app, start_mcp_server

    server = gateway.server
    assert server is not None
    if server.mcp_port:
        yield f"http://127.0.0.1:{server.mcp_port}/mcp"
        return

    async def start() -> McpHandle:
        return await start_mcp_server(
            create_mcp_app(server.pipeline, server.authenticator), "127.0.0.1:0")

    handle: McpHandle = gateway.call(start())
    try:
        yield handle.url
    finally:
        gateway.call(handle.stop(grace=2.0))


def serve_demo_gateway(backends: dict[str, Any], state: Path, **sections: Any) -> ServiceProcess:
    """A real ``switchboard serve`` subprocess over the demo backends (one sandbox process),
    with ``sections`` replacing those of the demo config: for attacks that may crash it."""
    cfg = write_demo_config(state / "gw.yaml", ledger_url=backends["ledger"].url,
                            workspace_url=backends["workspace"].url, state=state)
    raw = yaml.safe_load(cfg.read_text())
    raw["sandbox"] = {"workers": 1}
    raw.update(sections)
    cfg.write_text(yaml.safe_dump(raw))
    return spawn_service(
        "gateway", [sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg)],
        log_file=state / "gw.log", timeout=scaled(300))


def serve_with_second_tenant(backends: dict[str, Any], state: Path, policies: Path,
                             tokens: dict[str, dict[str, Any]]) -> ServiceProcess:
    """:func:`serve_demo_gateway` with tenant ``acme`` added to a copy of ``policies`` (the
    demo backends allowed) and ``tokens`` added to the demo identities: for attacks across
    tenants."""
    copy = state / "policies"
    shutil.copytree(policies, copy)
    data_file = copy / "switchboard" / "data.json"
    data = json.loads(data_file.read_text())
    data["tenants"]["acme"] = {"backends": ["ledger", "workspace"]}
    data_file.write_text(json.dumps(data))
    cfg = write_demo_config(state / "ids.yaml", ledger_url=backends["ledger"].url,
                            workspace_url=backends["workspace"].url, state=state)
    identity = yaml.safe_load(cfg.read_text())["identity"]
    identity["tokens"].update(tokens)
    return serve_demo_gateway(backends, state, identity=identity,
                              policy={"path": str(copy), "reload": False})
