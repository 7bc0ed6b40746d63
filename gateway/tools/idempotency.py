"""The idempotency store contract: intent before the backend call, outcome after it.

A record moves ``pending`` (claimed by an owner under a lease, or ownerless after an attempt
whose outcome is unknown) → ``done`` (outcome recorded, replayed to every retry). Owners are
identified by host boot id + PID namespace + pid + process start time, so on the same machine a
crashed owner is recognised at once instead of after its lease runs out.
"""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

__all__ = [
    "BeginResult",
    "IdempotencyRecord",
    "IdempotencySettings",
    "IdempotencyStore",
    "new_owner_id",
    "owner_alive",
]


@dataclass(frozen=True)
class IdempotencySettings:
    dsn: str = "sqlite:///state/idempotency.db"  # relative paths resolve against the cwd
    lease_s: float = 30.0  # how long an in-flight record blocks duplicates without a heartbeat
    wait_s: float = 5.0  # a concurrent duplicate waits this long, then gets DuplicateInFlight
    ttl_s: float = 86400.0  # how long a recorded outcome is replayed


@dataclass(frozen=True)
class IdempotencyRecord:
    key: str
    fingerprint: str
    operation: str
    state: Literal["pending", "done"]
    owner: str  # "" when nobody is working on it (an attempt with an unknown outcome)
    lease_until: float  # wall-clock seconds
    attempts: int  # attempts that may have reached the backend
    last_sent_at: float | None
    outcome: dict[str, Any] | None  # {"result": ...} or {"error": {...}}
    created_at: float
    expires_at: float


@dataclass(frozen=True)
class BeginResult:
    claimed: bool  # True: the caller now owns the record and must complete or abandon it
    record: IdempotencyRecord  # as found/created, before ``send`` counted an attempt
    sent: bool = False  # ``begin(send=True)`` also counted the attempt (no mark_sent needed)


class IdempotencyStore(Protocol):
    """Durable, cross-process idempotency records. All methods are atomic."""

    async def begin(
        self, key: str, fingerprint: str, operation: str, *, owner: str, lease_s: float,
        ttl_s: float, send: bool = False,
    ) -> BeginResult:
        """Claim ``key`` (new, or pending whose owner is gone) or return the existing record.

        A record with a different fingerprint is never claimed. ``send``: when the claimed
        record has no attempt yet, also count the one about to go to the backend — the claim
        and :meth:`mark_sent` in one durable commit (``sent`` says it happened; a record with
        earlier attempts is only claimed, so the caller can find out what they did first).
        """
        ...

    async def mark_sent(self, key: str, owner: str) -> bool:
        """Note that an attempt is about to go to the backend (may take effect from now on)."""
        ...

    async def heartbeat(self, key: str, owner: str, lease_s: float) -> bool:
        """Extend the lease; False when ownership was lost."""
        ...

    async def complete(
        self, key: str, owner: str, outcome: dict[str, Any], ttl_s: float
    ) -> bool:
        """Record the final outcome; False when ownership was lost (the outcome is not stored)."""
        ...

    async def abandon(
        self, key: str, owner: str, *, retract_attempt: bool, hold_s: float = 0.0
    ) -> None:
        """Give the record up without an outcome.

        ``retract_attempt``: the last marked attempt certainly did not reach the backend; if no
        attempt remains the record is deleted (a retry starts afresh). Otherwise the record
        stays, ownerless, blocking duplicates for ``hold_s`` more seconds, then claimable by a
        retry that must first find out what happened.
        """
        ...

    async def get(self, key: str) -> IdempotencyRecord | None: ...

    async def forget(self, key: str) -> bool:
        """Operator action: drop a record (e.g. after reconciling an unknown outcome by hand)."""
        ...

    async def purge(self) -> int:
        """Drop expired outcomes and stale never-sent intents; returns how many."""
        ...

    async def aclose(self) -> None: ...


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> str | None:
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    # Field 22 (starttime) counted after the parenthesised command name, which may hold spaces.
    fields = stat.rsplit(")", 1)[-1].split()
    if len(fields) <= 19 or fields[0] in ("Z", "X"):  # a zombie has finished running
        return None
    return fields[19]


def _machine() -> str:
    boot = _read("/proc/sys/kernel/random/boot_id") or socket.gethostname()
    try:
        pidns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pidns = socket.gethostname()
    return f"{boot}|{pidns}"


def new_owner_id() -> str:
    """``machine/pid/start/nonce``: unique per channel, checkable for liveness on this host."""
    pid = os.getpid()
    return f"{_machine()}/{pid}/{_start_ticks(pid) or '?'}/{secrets.token_hex(4)}"


def owner_alive(owner: str) -> bool | None:
    """True/False when ``owner`` runs on this machine (same pid namespace); None if unknowable."""
    try:
        machine, pid_s, start, _nonce = owner.rsplit("/", 3)
        pid = int(pid_s)
    except ValueError:
        return None
    if machine != _machine() or start == "?":
        return None
    ticks = _start_ticks(pid)
    return ticks is not None and ticks == start
