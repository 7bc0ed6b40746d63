"""Test helpers for the dedicated-tool channel: a scriptable HTTP backend (uvicorn on port 0 in
a thread), the demo ledger as a real subprocess, hand-built operations, and a tiny
gateway-like process (``python tests/tools_support.py call ...``) for the kill-and-retry test."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import uvicorn  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

from gateway.models import BackendSettings, Operation, Parameter, Principal  # noqa: E402

PRINCIPAL = Principal(id="agent-1", tenant="demo", roles=("agent", "finance"))


# ---------------------------------------------------------------- scriptable backend


@dataclass
class Scripted:
    status: int = 200
    body: Any = None  # JSON value, or bytes sent raw
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    content_type: str = "application/json"


class Backend:
    """Every request to ``/s/{name}`` pops the next :class:`Scripted` answer for ``name``
    (default: 200 echoing the request). All requests are recorded for assertions."""

    def __init__(self) -> None:
        self.scripts: dict[str, deque[Scripted]] = defaultdict(deque)
        self.requests: list[dict[str, Any]] = []
        self.hits: Counter[str] = Counter()
        self.url = ""
        self._lock = threading.Lock()

    def script(self, name: str, *answers: Scripted) -> None:
        with self._lock:
            self.scripts[name].extend(answers)

    def reset(self) -> None:
        with self._lock:
            self.scripts.clear()
            self.requests.clear()
            self.hits.clear()

    async def _handle(self, request: Request) -> Response:
        name = request.path_params["name"]
        raw = await request.body()
        seen = {
            "name": name, "method": request.method, "path": request.scope["raw_path"].decode(),
            "query": list(request.query_params.multi_items()),
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "json": json.loads(raw) if raw else None,
        }
        with self._lock:
            self.requests.append(seen)
            self.hits[name] += 1
            answer = self.scripts[name].popleft() if self.scripts[name] else Scripted()
        if answer.delay_s:
            await asyncio.sleep(answer.delay_s)
        if isinstance(answer.body, bytes):
            return Response(answer.body, answer.status, headers=answer.headers,
                            media_type=answer.content_type)
        body = answer.body if answer.body is not None else {"echo": seen}
        if answer.status == 204:
            return Response(status_code=204, headers=answer.headers)
        return JSONResponse(body, answer.status, headers=answer.headers)

    def app(self) -> Starlette:
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]
        return Starlette(routes=[
            Route("/s/{name}", self._handle, methods=methods),
            Route("/s/{name}/{rest:path}", self._handle, methods=methods),
        ])


@contextmanager
def serve_backend() -> Iterator[Backend]:
    """Serve a fresh :class:`Backend` over real HTTP on 127.0.0.1, port 0, in a thread."""
    backend = Backend()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    backend.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(backend.app(), log_level="error", lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])),
                              daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield backend
    finally:
        server.should_exit = True
        thread.join(5)
        sock.close()


def free_port_refusing() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}"


def op(name: str, method: str = "GET", path: str | None = None, *,
       params: tuple[Parameter, ...] = (), schema: dict[str, Any] | None = None,
       output: dict[str, Any] | None = None, backend: str = "svc",
       body_as_argument: bool = False) -> Operation:
    return Operation(
        name=f"{backend}.{name}", backend=backend, operation_id=name, method=method,
        path=path or f"/s/{name}", input_schema=schema or {"type": "object"},
        output_schema=output, parameters=params, body_as_argument=body_as_argument)


# ---------------------------------------------------------------- the demo ledger

TRANSFER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "from_account": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,32}$"},
        "to_account": {"type": "string", "pattern": r"^[A-Za-z0-9_-]{1,32}$"},
        "amount": {"type": "number", "minimum": 0.01, "maximum": 1_000_000_000},
        "currency": {"type": "string", "enum": ["USD", "EUR", "GBP"], "default": "USD"},
        "memo": {"type": ["string", "null"], "maxLength": 140},
    },
    "required": ["from_account", "to_account", "amount"],
}
TRANSFER_OUT: dict[str, Any] = {
    "type": "object",
    "properties": {"id": {"type": "string"}, "amount": {"type": "number"},
                   "idempotency_key": {"type": ["string", "null"]}},
    "required": ["id", "from_account", "to_account", "amount", "currency", "created_at"],
}
CREATE_TRANSFER = Operation(
    name="ledger.create_transfer", backend="ledger", operation_id="create_transfer",
    method="POST", path="/transfers", tags=("payments", "compliance"),
    input_schema=TRANSFER_SCHEMA, output_schema=TRANSFER_OUT,
    parameters=tuple(Parameter(n, "body", required=n in TRANSFER_SCHEMA["required"])
                     for n in TRANSFER_SCHEMA["properties"]))
LIST_TRANSFERS = Operation(
    name="ledger.list_transfers", backend="ledger", operation_id="list_transfers",
    method="GET", path="/transfers",
    input_schema={"type": "object", "properties": {"account": {"type": "string"},
                                                   "idempotency_key": {"type": "string"},
                                                   "limit": {"type": "integer"}}},
    parameters=(Parameter("account", "query"), Parameter("idempotency_key", "query"),
                Parameter("limit", "query")))


@dataclass
class Ledger:
    url: str
    db: Path
    proc: subprocess.Popen[str]

    def transfers(self) -> list[dict[str, Any]]:
        import sqlite3

        with sqlite3.connect(self.db) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(r) for r in conn.execute("SELECT * FROM transfers ORDER BY rowid")]


def read_listening(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("LISTENING "):
            return line.split()[1]
        if not line and proc.poll() is not None:
            break
    raise RuntimeError(f"process did not announce its address (rc={proc.poll()})")


@contextmanager
def run_ledger(db: Path, *, respond_delay_ms: int = 0) -> Iterator[Ledger]:
    env = {**os.environ, "LEDGER_RESPOND_DELAY_MS": str(respond_delay_ms)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.demo.ledger", "--host", "127.0.0.1", "--port", "0",
         "--db", str(db)], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    try:
        url = read_listening(proc)
        import httpx

        httpx.get(f"{url}/healthz", timeout=10).raise_for_status()  # creates and seeds the db
        yield Ledger(url, db, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------- a gateway-like process


async def _call(args: argparse.Namespace) -> dict[str, Any]:
    from gateway.errors import GatewayError
    from gateway.tools import (
        BackendClient,
        IdempotencySettings,
        Reconciler,
        ToolChannel,
        open_idempotency_store,
    )

    settings = IdempotencySettings(dsn=f"sqlite:///{args.store}", wait_s=args.wait_s)
    client = BackendClient({"ledger": BackendSettings(name="ledger", base_url=args.ledger,
                                                      timeout_ms=args.timeout_ms)})
    store = open_idempotency_store(settings)
    reconcilers = {CREATE_TRANSFER.name: Reconciler(LIST_TRANSFERS)} if args.reconcile else {}
    channel = ToolChannel(client, store, settings=settings, reconcilers=reconcilers)
    try:
        out = await channel.execute(CREATE_TRANSFER, json.loads(args.arguments),
                                    request_id=args.request_id, principal=PRINCIPAL, strict=True)
        return {"result": out.result, "replayed": out.replayed}
    except GatewayError as exc:
        return {"error": exc.to_dict()}
    finally:
        await client.aclose()
        await store.aclose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run one ToolChannel call, print the outcome")
    sub = parser.add_subparsers(dest="cmd", required=True)
    call = sub.add_parser("call")
    call.add_argument("--ledger", required=True)
    call.add_argument("--store", required=True)
    call.add_argument("--request-id", required=True)
    call.add_argument("--arguments", required=True)
    call.add_argument("--reconcile", action="store_true")
    call.add_argument("--timeout-ms", type=int, default=10_000)
    call.add_argument("--wait-s", type=float, default=5.0)
    args = parser.parse_args(argv)
    print("STARTED", flush=True)
    print("OUTCOME " + json.dumps(asyncio.run(_call(args))), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


# ---------------------------------------------------------------- a throwaway PostgreSQL


def _pg_bin(name: str) -> str | None:
    import glob
    import shutil

    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@contextmanager
def postgres_server() -> Iterator[str | None]:
    """A DSN for a real PostgreSQL: ``SWITCHBOARD_TEST_POSTGRES_DSN`` if set, else a private
    cluster on a Unix socket (no TCP port) in a temp dir; None when no server is installed."""
    if os.environ.get("SWITCHBOARD_TEST_POSTGRES_DSN"):
        yield os.environ["SWITCHBOARD_TEST_POSTGRES_DSN"]
        return
    initdb, postgres = _pg_bin("initdb"), _pg_bin("postgres")
    if not initdb or not postgres:
        yield None
        return
    import pwd
    import shutil
    import tempfile

    user: dict[str, Any] = {}
    base = Path(tempfile.mkdtemp(prefix="sb-pg-"))
    if os.geteuid() == 0:  # postgres refuses to run as root
        pw = pwd.getpwnam("postgres")
        os.chown(base, pw.pw_uid, pw.pw_gid)
        user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    data, sock = base / "data", base
    proc: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([initdb, "-D", str(data), "-A", "trust", "-U", "switchboard",
                        "--no-sync", "-E", "UTF8"], check=True, capture_output=True, **user)
        proc = subprocess.Popen(
            [postgres, "-D", str(data), "-k", str(sock), "-c", "listen_addresses=",
             "-F", "-p", "5432"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **user)
        deadline = time.monotonic() + 30
        ready = [_pg_bin("pg_isready") or "pg_isready", "-q", "-h", str(sock), "-p", "5432"]
        while subprocess.run(ready).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start: {proc.stderr.read()!r}"
                                   if proc.stderr else "postgres did not start")
            time.sleep(0.05)
        yield f"postgresql://switchboard@/postgres?host={sock}"
    finally:
        if proc is not None:
            proc.send_signal(2)  # SIGINT: fast shutdown
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def redis_server() -> Iterator[str | None]:
    """A URL for a real Redis: ``SWITCHBOARD_TEST_REDIS_URL`` if set, else a private
    ``redis-server`` on a Unix socket (no TCP port); None when none is installed."""
    import shutil
    import tempfile

    if os.environ.get("SWITCHBOARD_TEST_REDIS_URL"):
        yield os.environ["SWITCHBOARD_TEST_REDIS_URL"]
        return
    binary = shutil.which("redis-server")
    if not binary:
        yield None
        return
    base = Path(tempfile.mkdtemp(prefix="sb-redis-"))
    sock = base / "redis.sock"
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no",
         "--dir", str(base)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)
