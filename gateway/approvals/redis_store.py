"""Approvals on Redis, beside the shared idempotency records (same URL, own keys): each
approval is one JSON string under ``switchboard:approval:id:<id>``, found by its action key
(``…:key:<key>``) and listed per tenant (a sorted set by creation time). Every transition is
an optimistic ``WATCH``/``MULTI`` transaction, so replicas racing to consume an approval
cannot both win. Durable across a Redis restart only with Redis persistence (AOF)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

from gateway.approvals.store import ApprovalRecord
from gateway.errors import ConfigError

__all__ = ["RedisApprovalStore"]

_P = "switchboard:approval:"


def _load(raw: bytes | str | None) -> ApprovalRecord | None:
    if raw is None:
        return None
    data = json.loads(raw)
    data["reasons"], data["roles"] = tuple(data["reasons"]), tuple(data["roles"])
    return ApprovalRecord(**data)


def _dump(rec: ApprovalRecord) -> str:
    return json.dumps(asdict(rec), separators=(",", ":"))


class RedisApprovalStore:
    """:class:`~gateway.approvals.store.ApprovalStore` over Redis."""

    def __init__(self, url: str) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError as exc:
            raise ConfigError("approvals on redis://… need the optional 'redis' package",
                              field="idempotency.dsn") from exc
        self._redis: Any = aioredis.from_url(url)

    async def create(self, record: ApprovalRecord) -> ApprovalRecord:
        from redis.exceptions import WatchError

        key_name = _P + "key:" + record.key
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key_name)
                    existing = await pipe.get(key_name)
                    if existing is not None:
                        await pipe.unwatch()
                        found = await self.get(existing.decode()
                                               if isinstance(existing, bytes) else existing)
                        assert found is not None
                        return found
                    pipe.multi()
                    pipe.set(_P + "id:" + record.id, _dump(record))
                    pipe.set(key_name, record.id)
                    pipe.zadd(_P + "tenant:" + record.tenant, {record.id: record.created_at})
                    await pipe.execute()
                    return record
                except WatchError:
                    continue

    async def by_key(self, key: str) -> ApprovalRecord | None:
        approval_id = await self._redis.get(_P + "key:" + key)
        if approval_id is None:
            return None
        return await self.get(approval_id.decode() if isinstance(approval_id, bytes)
                              else approval_id)

    async def get(self, approval_id: str) -> ApprovalRecord | None:
        return _load(await self._redis.get(_P + "id:" + approval_id))

    async def list(self, tenant: str, state: str | None, limit: int) -> list[ApprovalRecord]:
        now = time.time()
        ids = await self._redis.zrevrange(_P + "tenant:" + tenant, 0, -1)
        found = []
        for raw_id in ids:
            rec = await self.get(raw_id.decode() if isinstance(raw_id, bytes) else raw_id)
            if rec is not None and (not state or rec.effective_state(now) == state):
                found.append(rec)
                if len(found) >= limit:
                    break
        return found

    async def _change(self, approval_id: str,
                      fn: Callable[[ApprovalRecord], ApprovalRecord | None]) -> bool:
        from redis.exceptions import WatchError

        name = _P + "id:" + approval_id
        async with self._redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(name)
                    rec = _load(await pipe.get(name))
                    new = fn(rec) if rec is not None else None
                    if new is None:
                        await pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.set(name, _dump(new))
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    async def decide(self, approval_id: str, *, approve: bool, by: str, comment: str,
                     now: float) -> bool:
        def change(r: ApprovalRecord) -> ApprovalRecord | None:
            if r.state != "pending" or r.expires_at <= now:
                return None
            return replace(r, state="approved" if approve else "rejected", decided_by=by,
                           decided_at=now, comment=comment)
        return await self._change(approval_id, change)

    async def consume(self, approval_id: str, now: float) -> bool:
        def change(r: ApprovalRecord) -> ApprovalRecord | None:
            if r.state != "approved" or r.expires_at <= now:
                return None
            return replace(r, state="consumed", consumed_at=now)
        return await self._change(approval_id, change)

    async def expire(self, approval_id: str, now: float) -> None:
        def change(r: ApprovalRecord) -> ApprovalRecord | None:
            if r.state not in ("pending", "approved") or r.expires_at > now:
                return None
            return replace(r, state="expired")
        await self._change(approval_id, change)

    async def record_call(self, run_key: str, index: int, digest: str, result: Any) -> None:
        await self._redis.hsetnx(_P + "run:" + run_key, str(index),
                                 json.dumps([digest, result], separators=(",", ":")))

    async def run_calls(self, run_key: str) -> dict[int, tuple[str, Any]]:
        raw = await self._redis.hgetall(_P + "run:" + run_key)
        out: dict[int, tuple[str, Any]] = {}
        for k, v in raw.items():
            digest, result = json.loads(v)
            out[int(k)] = (str(digest), result)
        return out

    async def aclose(self) -> None:
        await self._redis.aclose()
