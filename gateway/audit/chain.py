"""The local audit file: append-only JSONL where every record carries the hash of the one before.

Each line is one record: its canonical JSON (sorted keys, no spaces, ASCII, non-ASCII as
JSON escapes) with ``hash`` appended last. ``prev_hash`` is the
``hash`` of the previous line (``GENESIS`` for the first), and ``hash`` is the SHA-256 of the
record's canonical JSON *without* its ``hash`` key, so deleting, editing or reordering a line
breaks the chain at that point. ``seq`` counts records from 1 and survives restarts (the
writer reads the last line on open), which lets ``verify`` say *what* happened.

Durability: every record is written with one ``write(2)`` on an ``O_APPEND`` descriptor before
``append`` returns, so a crashed or killed gateway loses nothing it reported. ``fsync`` policy:
``"always"`` syncs each record before returning; ``"interval"`` (default) syncs from a
background thread at most ``fsync_interval_s`` after a write and on flush/close (a power loss
can cost that window); ``"never"`` leaves it to the OS. One writer per file, enforced with an
exclusive ``flock``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from gateway.errors import ConfigError

__all__ = [
    "GENESIS",
    "AuditLog",
    "ChainReport",
    "FsyncPolicy",
    "iter_records",
    "record_hash",
    "verify_chain",
]

GENESIS = "sha256:" + "0" * 64
FsyncPolicy = Literal["always", "interval", "never"]
_TAIL_CHUNK = 64 * 1024


def _canonical(record: dict[str, Any]) -> str:
    # ASCII with \u escapes: any Python str (even a lone surrogate from sloppy JSON input)
    # serialises, and the text round-trips exactly through json.loads for verification.
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _odd_float(record: dict[str, Any]) -> bool:
    """Does ``record`` hold a float that orjson may write differently from ``json.dumps``?

    ``json.dumps`` writes ``float.__repr__``: positional in [1e-4, 1e16), an exponent outside
    it (``1e-05``, ``1e+16``) and ``NaN``/``Infinity`` — where orjson writes ``1e-5``,
    ``0.00001``, ``1e16`` or ``null``. Zero and every float in that range read the same in both
    (tests/test_audit_chain.py checks it over 60,000 values). Walking the record is ~10x
    cheaper than searching the serialised text for such tokens."""
    stack: list[Any] = [record]
    while stack:
        node = stack.pop()
        for value in node.values() if type(node) is dict else node:
            kind = type(value)
            if kind is float:
                if value != 0.0 and not 1e-4 <= abs(value) < 1e16:  # NaN fails both tests
                    return True
            elif kind is dict or kind is list or kind is tuple:
                stack.append(value)
    return False


def _canonical_fast(record: dict[str, Any]) -> str:
    """:func:`_canonical`'s exact text, at about a third of its cost when it can be: orjson
    with sorted keys, used only when its output is ASCII without DEL (which json escapes) and
    the record holds no float the two write differently (:func:`_odd_float`). ``verify``
    always recomputes with :func:`_canonical`, so a file never depends on this shortcut."""
    if _odd_float(record):
        return _canonical(record)
    try:
        out = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):  # e.g. an int over 64 bits
        return _canonical(record)
    if not out.isascii() or b"\x7f" in out:
        return _canonical(record)
    return out.decode("ascii")


def record_hash(record: dict[str, Any]) -> str:
    """``sha256:<hex>`` of the record's canonical JSON without its ``hash`` key."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return "sha256:" + hashlib.sha256(_canonical(body).encode("ascii")).hexdigest()


def _last_lines(fd: int, size: int) -> tuple[list[bytes], bool]:
    """Up to the last two complete lines (newest last) and whether the file ends mid-line."""
    if size == 0:
        return [], False
    buf = b""
    pos = size
    while pos > 0 and buf.count(b"\n") < 3:
        step = min(_TAIL_CHUNK, pos)
        pos -= step
        buf = os.pread(fd, step, pos) + buf
    torn = not buf.endswith(b"\n")
    lines = buf.split(b"\n")
    if not torn:
        lines = lines[:-1]
    complete = lines[:-1] if torn else lines
    if pos > 0 and complete:
        complete = complete[1:]  # the first piece may be a partial line
    return complete[-2:], torn


class AuditLog:
    """Thread-safe, single-process writer of the hash-chained audit file."""

    def __init__(
        self, path: Path, fsync: FsyncPolicy = "interval", fsync_interval_s: float = 1.0
    ) -> None:
        self.path = Path(path)
        self._policy: FsyncPolicy = fsync
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise ConfigError(
                f"audit file {self.path} is already open by another writer",
                field="audit.file",
            ) from None
        self._prev, self._seq = self._recover()
        self._dirty = False
        self._closed = False
        self._torn = False
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        if fsync == "interval":
            self._syncer = threading.Thread(
                target=self._sync_loop, args=(fsync_interval_s,), name="audit-fsync", daemon=True
            )
            self._syncer.start()

    def _recover(self) -> tuple[str, int]:
        """Continue the chain from the last record; isolate a torn last line."""
        size = os.fstat(self._fd).st_size
        rfd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            lines, torn = _last_lines(rfd, size)
        finally:
            os.close(rfd)
        if torn:
            # A crash mid-write left a partial line: end it so the next record starts clean.
            # `verify` still reports it — a torn record is a lost record.
            os.write(self._fd, b"\n")
        for raw in reversed(lines):
            try:
                last = json.loads(raw)
                return str(last["hash"]), int(last["seq"])
            except (ValueError, KeyError, TypeError):
                continue
        return GENESIS, 0

    @property
    def last_hash(self) -> str:
        return self._prev

    @property
    def seq(self) -> int:
        return self._seq

    def append(self, record: dict[str, Any], *, sync: bool = False) -> dict[str, Any]:
        """Chain, write and return ``record`` (a copy with ``seq``, ``prev_hash``, ``hash``)."""
        with self._lock:
            if self._closed:
                raise ValueError("audit log is closed")
            rec = {k: v for k, v in record.items() if k != "hash"}
            rec["seq"] = self._seq + 1
            rec["prev_hash"] = self._prev
            body = _canonical_fast(rec)
            rec["hash"] = "sha256:" + hashlib.sha256(body.encode("ascii")).hexdigest()
            # The line is the hashed body with "hash" appended last (one serialization).
            data = (body[:-1] + ',"hash":"' + rec["hash"] + '"}\n').encode("ascii")
            self._write(data)
            self._prev, self._seq = rec["hash"], rec["seq"]
            if sync or self._policy == "always":
                os.fsync(self._fd)
            else:
                self._dirty = True
            return rec

    def _write(self, data: bytes) -> None:
        prefix = 1 if self._torn else 0
        if prefix:  # a previous write was cut short: end that fragment first
            data = b"\n" + data
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            # If part of this record reached the file, the next write starts with a newline so
            # the next record is not glued to the fragment. The chain continues from the last
            # complete record; verify reports the fragment as a lost record.
            written = len(data) - len(view)
            if written > prefix:
                self._torn = True
            elif written == prefix == 1:
                self._torn = False
            raise
        self._torn = False

    def flush(self) -> None:
        """fsync now (records are already in the OS; this makes them survive a power loss)."""
        with self._lock:
            if not self._closed and self._policy != "never":
                os.fsync(self._fd)
                self._dirty = False

    def _sync_loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            with self._lock:
                if self._closed:
                    return
                dirty, self._dirty = self._dirty, False
                fd = self._fd
            if dirty:
                with contextlib.suppress(OSError):
                    os.fsync(fd)

    def close(self) -> None:
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join()
        with self._lock:
            if self._closed:
                return
            if self._policy != "never":
                os.fsync(self._fd)
            self._closed = True
            os.close(self._fd)  # releases the flock


def iter_records(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str]]:
    """(line number, parsed record or None if unparseable, raw line) for each line."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.rstrip("\n")
            try:
                rec = json.loads(line)
            except ValueError:
                yield lineno, None, line
                continue
            yield lineno, rec if isinstance(rec, dict) else None, line


def _seen_later(path: Path, after_line: int, seqs: set[int]) -> bool:
    for lineno, rec, _raw in iter_records(path):
        if lineno > after_line and rec is not None and rec.get("seq") in seqs:
            return True
    return False


@dataclass(frozen=True)
class ChainReport:
    """Outcome of :func:`verify_chain`; ``line`` is the first broken line (1-based)."""

    ok: bool
    records: int
    last_seq: int
    last_hash: str
    line: int = 0
    reason: str = ""


def _problem(
    path: Path, lineno: int, rec: dict[str, Any] | None, prev_hash: str, prev_seq: int
) -> str:
    """Why this line breaks the chain, or "" if it continues it."""
    if rec is None:
        return "not a valid JSON record (torn write or edited line)"
    try:
        seq, stated, back = int(rec["seq"]), str(rec["hash"]), str(rec["prev_hash"])
    except (KeyError, TypeError, ValueError):
        return "record lacks seq/prev_hash/hash (edited line)"
    if record_hash(rec) != stated:
        return f"record seq {seq} was edited (its hash does not match its content)"
    if back != prev_hash:
        if seq > prev_seq + 1:
            gap = range(prev_seq + 1, seq)
            missing = f"seq {gap[0]}" + (f"..{gap[-1]}" if len(gap) > 1 else "")
            if _seen_later(path, lineno, set(gap)):
                return f"record {missing} appears later in the file (reordered)"
            return f"record(s) {missing} deleted before this line (chain broken)"
        if seq <= prev_seq:
            return f"record seq {seq} is out of order after seq {prev_seq} (reordered)"
        return f"record seq {seq} does not chain to the previous line"
    if seq != prev_seq + 1:
        return f"record seq {seq} follows seq {prev_seq} (sequence tampered)"
    return ""


def verify_chain(path: Path) -> ChainReport:
    """Walk the file and stop at the first record that breaks the chain."""
    prev_hash, prev_seq, count = GENESIS, 0, 0
    for lineno, rec, _raw in iter_records(path):
        problem = _problem(path, lineno, rec, prev_hash, prev_seq)
        if problem or rec is None:
            return ChainReport(False, count, prev_seq, prev_hash, lineno, problem)
        prev_hash, prev_seq, count = str(rec["hash"]), int(rec["seq"]), count + 1
    return ChainReport(True, count, prev_seq, prev_hash)
