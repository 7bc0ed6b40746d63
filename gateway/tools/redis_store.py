"""A shared idempotency store on Redis, for several gateway replicas.

Each record is one JSON string under ``switchboard:idem:<key>``; every change is an optimistic
``WATCH``/``MULTI`` transaction, so two replicas racing for a key cannot both claim it. Recorded
outcomes expire natively (``PX`` = ``ttl_s``); intents never expire on their own. Exactly-once
across a Redis restart needs Redis persistence (AOF, ``appendfsync always`` for no loss).
Needs the optional ``redis`` (redis-py 5+) package.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from gateway.errors import ConfigError
from gateway.tools.idempotency import BeginResult, IdempotencyRecord, owner_alive

__all__ = ["RedisIdempotencyStore"]

_PREFIX = "switchboard:idem:"
_DELETE = object()
# fn(record or None, now) -> (new record | None (unchanged) | _DELETE, value to return)
Change = Callable[[IdempotencyRecord | None, float], tuple[Any, Any]]


def _load(raw: bytes | str | None) -> IdempotencyRecord | None:
    if raw is None:
        return None
    data = json.loads(raw)
    return IdempotencyRecord(**data)


class RedisIdempotencyStore:
    """:class:`~gateway.tools.idempotency.IdempotencyStore` over Redis (``redis://``,
    ``rediss://`` or ``unix://`` URLs)."""

    def __init__(self, url: str) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:
            raise ConfigError("idempotency dsn redis://… needs the optional 'redis' package",
                              field="idempotency.dsn") from exc
        self._redis: Any = aioredis.from_url(url)

    async def _change(self, key: str, fn: Change) -> Any:
        from redis.exceptions import WatchError

        name = _PREFIX + key
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(name)
                    now = time.time()
                    rec = _load(await pipe.get(name))
                    if rec is not None and rec.state == "done" and rec.expires_at <= now:
                        rec = None
                    new, out = fn(rec, now)
                    if new is None:
                        await pipe.unwatch()
                        return out
                    pipe.multi()
                    if new is _DELETE:
                        pipe.delete(name)
                    else:
                        assert isinstance(new, IdempotencyRecord)
                        ttl_ms = max(1, int((new.expires_at - now) * 1000))
                        pipe.set(name, json.dumps(asdict(new), separators=(",", ":")),
                                 px=ttl_ms if new.state == "done" else None)
                    await pipe.execute()
                    return out
                except WatchError:
                    continue  # someone changed the record meanwhile: decide again

    async def begin(self, key: str, fingerprint: str, operation: str, *, owner: str,
                    lease_s: float, ttl_s: float, send: bool = False) -> BeginResult:
        def sent(rec: IdempotencyRecord, now: float) -> tuple[Any, Any]:
            if send and rec.attempts == 0:  # the claim counts the attempt (one write)
                return replace(rec, attempts=1, last_sent_at=now), BeginResult(True, rec, True)
            return rec, BeginResult(True, rec)

        def claim(rec: IdempotencyRecord | None, now: float) -> tuple[Any, Any]:
            if rec is None:
                return sent(IdempotencyRecord(key, fingerprint, operation, "pending", owner,
                                              now + lease_s, 0, None, None, now, now + ttl_s),
                            now)
            if rec.fingerprint != fingerprint or rec.state == "done":
                return None, BeginResult(False, rec)
            if rec.lease_until > now and (not rec.owner or owner_alive(rec.owner) is not False):
                return None, BeginResult(False, rec)
            return sent(replace(rec, owner=owner, lease_until=now + lease_s), now)

        result: BeginResult = await self._change(key, claim)
        return result

    async def _owned(self, key: str, owner: str,
                     edit: Callable[[IdempotencyRecord, float], Any]) -> bool:
        def fn(rec: IdempotencyRecord | None, now: float) -> tuple[Any, Any]:
            if rec is None or rec.owner != owner or rec.state != "pending":
                return None, False
            return edit(rec, now), True

        ok: bool = await self._change(key, fn)
        return ok

    async def mark_sent(self, key: str, owner: str) -> bool:
        return await self._owned(key, owner, lambda r, now: replace(
            r, attempts=r.attempts + 1, last_sent_at=now))

    async def heartbeat(self, key: str, owner: str, lease_s: float) -> bool:
        return await self._owned(key, owner, lambda r, now: replace(r, lease_until=now + lease_s))

    async def complete(self, key: str, owner: str, outcome: dict[str, Any],
                       ttl_s: float) -> bool:
        return await self._owned(key, owner, lambda r, now: replace(
            r, state="done", owner="", outcome=outcome, expires_at=now + ttl_s))

    async def abandon(self, key: str, owner: str, *, retract_attempt: bool,
                      hold_s: float = 0.0) -> None:
        def edit(rec: IdempotencyRecord, now: float) -> Any:
            attempts = max(rec.attempts - 1, 0) if retract_attempt else rec.attempts
            if retract_attempt and attempts == 0:
                return _DELETE
            return replace(rec, attempts=attempts, owner="", lease_until=now + hold_s)

        await self._owned(key, owner, edit)

    async def get(self, key: str) -> IdempotencyRecord | None:
        rec = _load(await self._redis.get(_PREFIX + key))
        if rec is not None and rec.state == "done" and rec.expires_at <= time.time():
            return None
        return rec

    async def forget(self, key: str) -> bool:
        return bool(await self._redis.delete(_PREFIX + key))

    async def purge(self) -> int:
        """Outcomes expire by themselves; drop never-sent intents whose lease ran out."""
        count = 0
        async for name in self._redis.scan_iter(match=_PREFIX + "*", count=500):
            key = (name.decode() if isinstance(name, bytes) else name)[len(_PREFIX):]

            def fn(rec: IdempotencyRecord | None, now: float) -> tuple[Any, Any]:
                stale = (rec is not None and rec.state == "pending" and rec.attempts == 0
                         and rec.lease_until <= now and rec.expires_at <= now)
                return (_DELETE, 1) if stale else (None, 0)

            count += await self._change(key, fn)
        return count

    async def aclose(self) -> None:
        await self._redis.aclose()
