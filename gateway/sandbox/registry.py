"""Which replica holds a code session: a claim in the shared store, so a misrouted run fails loudly.

A session lives in one gateway's memory (its interpreter is a process there). Behind a load
balancer a session's run can land on another replica; without a shared record that replica would
silently start a fresh interpreter and the agent's variables would vanish. So each replica claims
the session in the store the idempotency records use (SQLite per pod, PostgreSQL or Redis shared):

* a live claim by another replica ⇒ ``session_elsewhere`` (route the run to that replica);
* a claim whose holder is gone (crashed, restarted, lease run out) ⇒ ``session_lost``, once: the
  claim passes to this replica and the next run starts a fresh session;
* a session that ended normally (expired, evicted, closed) gives its claim back: the id is free.

The claim is an idempotency record (owner = this replica, lease renewed by runs); the "attempts"
counter marks a claim that was in use, so a takeover is told apart from a first use.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Protocol

from gateway.errors import SessionElsewhere, SessionLost

__all__ = ["ClaimStore", "SessionRegistry"]

_FINGERPRINT = "sandbox-session-v1"
_OPERATION = "sandbox.session"


class ClaimStore(Protocol):
    """The part of the idempotency store a registry uses (gateway.tools.IdempotencyStore)."""

    async def begin(self, key: str, fingerprint: str, operation: str, *, owner: str,
                    lease_s: float, ttl_s: float) -> Any: ...

    async def mark_sent(self, key: str, owner: str) -> bool: ...

    async def heartbeat(self, key: str, owner: str, lease_s: float) -> bool: ...

    async def abandon(self, key: str, owner: str, *, retract_attempt: bool,
                      hold_s: float = 0.0) -> None: ...


class SessionRegistry:
    """Claims code sessions for one replica (``owner``) in a shared store."""

    def __init__(self, store: ClaimStore, owner: str, lease_s: float) -> None:
        self._store = store
        self._owner = owner
        self._lease_s = lease_s
        self._renewed: dict[str, float] = {}

    @staticmethod
    def key(principal_key: str, session_id: str) -> str:
        digest = hashlib.sha256(f"{principal_key}\0{session_id}".encode()).hexdigest()
        return f"sandbox-session:{digest}"

    async def claim(self, principal_key: str, session_id: str) -> None:
        """Claim a session this replica does not hold; SessionElsewhere / SessionLost if not."""
        key = self.key(principal_key, session_id)
        got = await self._store.begin(key, _FINGERPRINT, _OPERATION, owner=self._owner,
                                      lease_s=self._lease_s, ttl_s=self._lease_s * 4)
        record = got.record
        if not got.claimed and record.owner == self._owner:
            return  # ours already (another run of this session is starting it here)
        if not got.claimed:
            raise SessionElsewhere(
                "this code session is held by another gateway replica: send its runs there",
                field="session_id", details={"held_until": round(record.lease_until, 3)})
        self._renewed[key] = time.monotonic()
        if record.attempts == 0:
            await self._store.mark_sent(key, self._owner)  # in use from now on
        else:
            # Taken over from a holder that is gone: its interpreter and variables are lost.
            raise SessionLost(
                "this code session was lost with the replica that held it; the next run with "
                "this session_id starts a fresh session", field="session_id")

    async def touch(self, principal_key: str, session_id: str) -> None:
        """Renew the claim of a session this replica holds (at most every lease/3)."""
        key = self.key(principal_key, session_id)
        if time.monotonic() - self._renewed.get(key, 0.0) < self._lease_s / 3:
            return
        if not await self._store.heartbeat(key, self._owner, self._lease_s):
            self._renewed.pop(key, None)
            raise SessionLost("this code session's claim passed to another replica",
                              field="session_id")
        self._renewed[key] = time.monotonic()

    async def release(self, principal_key: str, session_id: str) -> None:
        """The session ended normally: free its id."""
        key = self.key(principal_key, session_id)
        self._renewed.pop(key, None)
        await self._store.abandon(key, self._owner, retract_attempt=True)
