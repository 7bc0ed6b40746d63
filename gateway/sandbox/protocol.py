"""Every frame of the sandbox wire protocol, its fields, units and size limits.

Three hops, one name per concept (runtimes/PROTOCOL.md tells the whole story):

    host (this package) ──Unix socket──▶ supervisor (runtimes/supervisor.ts, main thread)
                                            ──postMessage──▶ worker (runtimes/worker.ts + Pyodide)

On the socket a frame is a 4-byte big-endian length then that many bytes of UTF-8 JSON, an
object whose ``t`` names the frame. The host trusts nothing the process sends: every inbound
frame is checked here (type, fields, sizes) and a frame that fails ends that process's run as
``SandboxCrashed`` — the process holds no other run, so nobody else is affected.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import SandboxCrashed
from gateway.values import loads_bounded

__all__ = [
    "HOST_FRAMES",
    "MAX_CALLS_IN_FLIGHT",
    "MAX_CALL_ARGS",
    "MAX_FRAME",
    "MAX_INBOUND_FRAME",
    "MAX_OPERATION",
    "MAX_REPLY_OVERHEAD",
    "MAX_RUN_CALL_ARGS",
    "PROCESS_FRAMES",
    "check_inbound",
    "decode_frame",
]

# Host → supervisor: the largest frame the host will write (source + inputs + SDK of a run).
MAX_FRAME = 16 * 1024 * 1024
# Supervisor → host: nothing honest comes near this (a result is capped at max_result_bytes).
MAX_INBOUND_FRAME = 8 * 1024 * 1024
MAX_OPERATION = 256  # characters of a host call's operation name
MAX_CALL_ARGS = 1024 * 1024  # characters of a host call's JSON arguments
MAX_RUN_CALL_ARGS = 8 * 1024 * 1024  # characters of all host-call arguments of one run
MAX_CALLS_IN_FLIGHT = 8  # host calls of one run awaiting an answer at once
MAX_REPLY_OVERHEAD = 64 * 1024  # error text and flags around a result of max_result_bytes

# Frames the host sends, with their fields (all required unless noted).
HOST_FRAMES: dict[str, tuple[str, ...]] = {
    # Run one program on the idle interpreter. timeoutMs: ms from receipt; maxOut: bytes of
    # stdout+stderr; maxResult: bytes of result JSON; maxCalls: host-call budget; session: keep
    # the interpreter afterwards; sdk: JSON list of SDK functions, or null for the revision
    # `rev` whose text this process was sent before (it keeps the latest revision's text and
    # restores every new interpreter with it installed).
    "run": ("id", "source", "inputs", "sdk", "rev", "session", "timeoutMs", "maxOut",
            "maxResult", "maxCalls"),
    "host_result": ("id", "call", "reply"),  # reply: JSON {ok, value | error}
    "cancel": ("id",),  # terminate the run's interpreter now
    "recycle": (),  # memory allowance restored: start a fresh interpreter
    "stats": ("id",),
}

# Frames the process sends, with the fields the host reads.
PROCESS_FRAMES: dict[str, tuple[str, ...]] = {
    "hello": ("pid", "snapshotBytes"),  # first frame after connecting
    "ready": ("startMs",),  # an interpreter is restored and idle (after start or recycle)
    "init_failed": ("reason",),  # the interpreter could not start
    # one line of stdout/stderr (stream: "stdout"|"stderr"), or a piece of one: optional
    # `more` (true: the line goes on in the stream's next event; a frame holds ≤ 256 Ki chars)
    "event": ("id", "stream", "line"),
    "host_call": ("id", "call", "op", "args"),  # call: int ≥ 1, unique per run
    # status: ok | fatal | timeout | cancelled | crashed | violation; reply (ok/fatal): the
    # runner's JSON {ok, result, error, memory_error}; dropped: a session lost its interpreter
    "done": ("id", "status"),
    "stats": ("id", "worker", "ready", "busy"),
    "log": ("msg",),
}

_STR_LIMITS = {"op": MAX_OPERATION, "args": MAX_CALL_ARGS, "id": 128, "reason": 4096,
               "msg": 4096, "stream": 6}


def decode_frame(body: bytes) -> dict[str, Any]:
    """Parse one inbound frame body; SandboxCrashed if it is not a JSON object with a known t.
    Bounded (``values.loads_bounded``): nesting, numbers and syntax all fail as ValueError."""
    try:
        msg = loads_bounded(body)
    except ValueError:
        raise SandboxCrashed("unreadable frame from the sandbox process") from None
    if not isinstance(msg, dict) or msg.get("t") not in PROCESS_FRAMES:
        raise SandboxCrashed("malformed frame from the sandbox process")
    return check_inbound(msg)


def check_inbound(msg: dict[str, Any]) -> dict[str, Any]:
    """Field presence, types and string sizes of an inbound frame (limits above)."""
    kind = msg["t"]
    for name in PROCESS_FRAMES[kind]:
        if name not in msg:
            raise SandboxCrashed(f"sandbox frame {kind!r} lacks {name!r}")
    for name, limit in _STR_LIMITS.items():
        value = msg.get(name)
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            raise SandboxCrashed(f"sandbox frame {kind!r} has a bad {name!r}")
    if kind == "host_call" and (type(msg["call"]) is not int or msg["call"] < 1):
        raise SandboxCrashed("sandbox host call has a bad call id")
    if kind == "event" and (msg["stream"] not in ("stdout", "stderr")
                            or not isinstance(msg["line"], str)
                            or not isinstance(msg.get("more", False), bool)):
        raise SandboxCrashed("malformed output event from the sandbox")
    return msg
