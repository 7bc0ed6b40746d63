"""Every frame between the gateway and its policy worker processes (PROTOCOL.md tells why).

A frame is a 4-byte big-endian length, then that many bytes of one JSON object (written with
orjson) whose ``t`` names the frame. The gateway writes frames to the worker's stdin and reads
the worker's answers from its stdout; stderr is the worker's log and is never parsed.

This module imports nothing but the standard library and orjson: the worker runs it without
importing the ``gateway`` package (a worker starts in ~0.1 s and costs ~20 MiB, not 40).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

import orjson

__all__ = [
    "GATEWAY_FRAMES",
    "MAX_FRAME",
    "MAX_WORKER_FRAME",
    "WORKER_FRAMES",
    "FrameError",
    "FrameReader",
    "encode",
    "encode_eval",
]

# Gateway -> worker: the largest frame the gateway writes (a bundle's sources and data, or one
# decision's input; the gRPC envelope limits keep inputs far below this).
MAX_FRAME = 256 * 1024 * 1024
# Worker -> gateway: a rule's value (a decision, or advertise over the whole catalog).
MAX_WORKER_FRAME = 64 * 1024 * 1024

# Frames the gateway sends, with their fields (all required).
GATEWAY_FRAMES: dict[str, tuple[str, ...]] = {
    # Compile a bundle and keep it under its revision (the worker keeps its 2 newest). No
    # answer: a bundle that does not compile in the worker makes every eval of it an error.
    "load": ("rev", "modules", "data"),  # modules: [[relative path, source], ...]
    # Evaluate one rule of a loaded revision on an input. id: int, unique per worker; rule: a
    # full rule path (data.switchboard.routing.decision or ...advertise).
    "eval": ("id", "rev", "rule", "input"),
    # Check a revision before it serves: compile it, probe entrypoint on probe_input (and
    # every package once), answer ``checked`` or ``error``; nothing is kept. Under the same
    # deadline discipline as an eval (a budget of LOAD_FACTOR x timeout_ms), so a revision
    # slow to compile or probe, or one that crashes the engine, costs a worker, not the
    # gateway.
    "check": ("id", "rev", "modules", "data", "probe_input", "entrypoint"),
}

# Frames the worker sends, with their fields.
# cpu_ns: the worker's CPU time (its one thread's, as /proc/PID/schedstat counts it) when it
# wrote the frame; the gateway counts a request's CPU budget from it (idle in between).
WORKER_FRAMES: dict[str, tuple[str, ...]] = {
    "ready": ("pid", "cpu_ns"),  # first frame: imports done, reading frames
    "value": ("id", "value", "cpu_ns"),  # the rule's value; null when undefined (None)
    "error": ("id", "error", "cpu_ns"),  # why the rule has no value: the reason, verbatim
    # A check passed: whether the entrypoint is defined on the probe input, its value (null
    # when undefined), the AST as regorus writes it (get_ast_as_json: the cache key's source).
    "checked": ("id", "defined", "value", "ast", "cpu_ns"),
}

_HEADER = struct.Struct(">I")


class FrameError(Exception):
    """A frame that breaks this protocol (size, JSON, type, fields): the peer is broken."""


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset):  # a Rego set: its members, sorted as the parser does
        return sorted(value, key=str)
    raise TypeError(f"{type(value).__name__} is not JSON")


def encode(frame: dict[str, Any]) -> bytes:
    """One frame, header included. Rego values orjson cannot write (integers beyond 64 bits)
    fall back to the standard library's JSON."""
    try:
        body = orjson.dumps(frame, default=_json_default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        body = json.dumps(frame, default=_json_default).encode()
    return _HEADER.pack(len(body)) + body


def encode_eval(request_id: int, revision: str, rule: str, input_json: bytes) -> bytes:
    """An ``eval`` frame around an input already written as JSON (the caller's orjson check,
    so the input's depth limit is the engine's, not one less)."""
    body = b"".join((b'{"t":"eval","id":', str(request_id).encode(), b',"rev":',
                     orjson.dumps(revision), b',"rule":', orjson.dumps(rule),
                     b',"input":', input_json, b"}"))
    return _HEADER.pack(len(body)) + body


class FrameReader:
    """Splits a byte stream into checked frames (``frames`` names the kinds it accepts)."""

    def __init__(self, frames: dict[str, tuple[str, ...]], limit: int) -> None:
        self._frames = frames
        self._limit = limit
        self._buffer = bytearray()

    def feed(self, data: bytes) -> Iterator[dict[str, Any]]:
        """Every complete frame in what arrived so far; FrameError on a broken one."""
        buf = self._buffer
        buf += data
        while len(buf) >= 4:
            (size,) = _HEADER.unpack_from(buf)
            if size > self._limit:
                raise FrameError(f"a frame of {size} bytes exceeds {self._limit}")
            if len(buf) < 4 + size:
                return
            body = bytes(buf[4:4 + size])
            del buf[:4 + size]
            yield self._check(body)

    def _check(self, body: bytes) -> dict[str, Any]:
        try:
            frame = orjson.loads(body)
        except orjson.JSONDecodeError:
            try:
                frame = json.loads(body)  # the fallback encoding (big integers)
            except ValueError:
                raise FrameError("a frame is not JSON") from None
        if not isinstance(frame, dict) or frame.get("t") not in self._frames:
            raise FrameError("a frame is not an object of a known kind")
        missing = [f for f in self._frames[frame["t"]] if f not in frame]
        if missing:
            raise FrameError(f"frame {frame['t']!r} lacks {missing[0]!r}")
        if "id" in frame and type(frame["id"]) is not int:
            raise FrameError(f"frame {frame['t']!r} has a bad id")
        return frame
