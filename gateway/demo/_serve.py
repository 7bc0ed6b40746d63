"""The one runner shared by the demo services: bind (port 0 allowed), announce the bound
address on stdout so a parent process can find it, serve with uvicorn, stop cleanly on SIGTERM.

Kept in one place so the ledger and the workspace start, announce and stop the same way."""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import uvicorn
from fastapi import FastAPI

__all__ = ["SQLiteStore", "add_healthz", "base_parser", "run_main", "serve"]


class SQLiteStore:
    """A SQLite file in WAL mode, initialised lazily on first use.

    Lazy so that importing a service module (``module:app`` entry points, ``app.openapi()``)
    never touches the file system; a connection per unit of work so FastAPI's thread pool can
    use it without sharing connections across threads.
    """

    def __init__(self, path: str | Path, init: Callable[[sqlite3.Connection], None]) -> None:
        self.path = Path(path)
        self._init = init
        self._ready = False
        self._lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _ensure(self) -> None:
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    self._init(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            finally:
                conn.close()
            self._ready = True

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode; use ``transaction`` for atomic writes."""
        self._ensure()
        conn = self._connect()
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT``: writers are serialised, failures roll back."""
        with self.connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")


def base_parser(prog: str, default_db: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=f"Run the {prog} demo service.")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default loopback)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one")
    parser.add_argument("--db", default=default_db, help="SQLite file (created and seeded)")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level")
    return parser


def add_healthz(app: FastAPI, store: SQLiteStore) -> None:
    """``GET /healthz`` (not in the OpenAPI): the service answers and its database opens."""

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        with store.connect() as conn:
            conn.execute("SELECT 1")
        return {"status": "ok"}


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: without it small JSON answers stall ~40 ms on delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(app: FastAPI, host: str, port: int, *, log_level: str = "warning") -> None:
    """Bind first (so the real port is known), print ``LISTENING http://HOST:PORT``, then serve
    until SIGINT/SIGTERM (uvicorn drains in-flight requests before exiting)."""
    sock = _bind(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(app, log_level=log_level, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    # Announce only once the socket is listening: connections queue in the backlog until
    # uvicorn accepts them, so a client may connect as soon as it reads this line.
    sys.stdout.write(f"LISTENING http://{shown}:{bound}\n")
    sys.stdout.flush()
    # uvicorn drains on SIGINT/SIGTERM, then re-raises the signal to the handler it found.
    # This handler asks the server to stop (also when the signal lands before uvicorn has
    # installed its own) and so turns a graceful stop into a clean exit status 0.
    def _stop(*_: object) -> None:
        server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    finally:
        sock.close()


def run_main(
    argv: Sequence[str] | None,
    parser: argparse.ArgumentParser,
    make_app: Callable[[argparse.Namespace], FastAPI],
) -> int:
    args = parser.parse_args(argv)
    serve(make_app(args), args.host, args.port, log_level=args.log_level)
    return 0
