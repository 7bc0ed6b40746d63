"""Pick the idempotency store named by a DSN: ``sqlite:///path`` (embedded default),
``postgresql://...`` or ``redis://...`` (shared by several replicas; need the optional
``psycopg`` / ``redis`` packages)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from gateway.errors import ConfigError
from gateway.tools.idempotency import IdempotencySettings, IdempotencyStore
from gateway.tools.sqlite_store import SQLiteIdempotencyStore

__all__ = ["open_idempotency_store"]


def _sqlite_path(dsn: str) -> Path:
    # sqlite:///relative/path.db (against the cwd) or sqlite:////absolute/path.db
    rest = dsn[len("sqlite://"):]
    if not rest.startswith("/") or rest == "/":
        raise ConfigError(f"idempotency dsn {dsn!r}: expected sqlite:///PATH",
                          field="idempotency.dsn")
    path = rest[1:]
    return Path(path) if path.startswith("/") else Path.cwd() / path


def open_idempotency_store(settings: IdempotencySettings) -> IdempotencyStore:
    scheme = urlsplit(settings.dsn).scheme
    if scheme == "sqlite":
        return SQLiteIdempotencyStore(_sqlite_path(settings.dsn))
    if scheme in ("postgresql", "postgres"):
        from gateway.tools.postgres_store import PostgresIdempotencyStore

        return PostgresIdempotencyStore(settings.dsn)
    if scheme in ("redis", "rediss", "unix"):
        from gateway.tools.redis_store import RedisIdempotencyStore

        return RedisIdempotencyStore(settings.dsn)
    raise ConfigError(f"idempotency dsn {settings.dsn!r}: unsupported scheme {scheme!r} "
                      "(use sqlite:///PATH, postgresql://... or redis://...)",
                      field="idempotency.dsn")
