"""The hash-chained audit file: chaining, tamper detection, restarts, crashes, concurrency."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gateway.audit import (
    GENESIS,
    AuditLog,
    AuditSettings,
    digest,
    setup_telemetry,
    verify_chain,
)
from gateway.audit.chain import record_hash
from gateway.errors import ConfigError

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, n: int, **kw: object) -> None:
    log = AuditLog(path, **kw)  # type: ignore[arg-type]
    for i in range(n):
        log.append({"name": f"span-{i}", "attributes": {"i": i}})
    log.close()


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines(keepends=True)


def test_records_are_chained(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 5)
    recs = [json.loads(line) for line in _lines(path)]
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5]
    assert recs[0]["prev_hash"] == GENESIS
    for prev, rec in itertools.pairwise(recs):
        assert rec["prev_hash"] == prev["hash"]
    assert all(record_hash(r) == r["hash"] for r in recs)
    report = verify_chain(path)
    assert report.ok and report.records == 5 and report.last_hash == recs[-1]["hash"]
    assert oct(path.stat().st_mode & 0o777) == "0o600"


@pytest.mark.parametrize(
    ("victim", "expect"),
    [(0, "seq 1 deleted"), (2, "seq 3 deleted"), (3, "seq 4 deleted")],
)
def test_deleted_line_is_detected(tmp_path: Path, victim: int, expect: str) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 6)
    lines = _lines(path)
    del lines[victim]
    path.write_text("".join(lines))
    report = verify_chain(path)
    assert not report.ok
    assert report.line == victim + 1
    assert expect in report.reason


def test_deleted_range_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 8)
    lines = _lines(path)
    del lines[2:5]
    path.write_text("".join(lines))
    report = verify_chain(path)
    assert (report.ok, report.line) == (False, 3)
    assert "seq 3..5 deleted" in report.reason


def test_edited_line_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 5)
    lines = _lines(path)
    rec = json.loads(lines[2])
    rec["attributes"]["i"] = 999  # still valid JSON, still has its old hash
    lines[2] = json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n"
    path.write_text("".join(lines))
    report = verify_chain(path)
    assert (report.ok, report.line, report.records) == (False, 3, 2)
    assert "edited" in report.reason


def test_edit_with_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    """An editor who also recomputes the line's hash is caught by the following record."""
    path = tmp_path / "audit.jsonl"
    _write(path, 5)
    lines = _lines(path)
    rec = json.loads(lines[1])
    rec["attributes"]["i"] = 999
    rec["hash"] = record_hash(rec)
    lines[1] = json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n"
    path.write_text("".join(lines))
    report = verify_chain(path)
    assert (report.ok, report.line) == (False, 3)


def test_reordered_lines_are_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 6)
    lines = _lines(path)
    lines[2], lines[3] = lines[3], lines[2]
    path.write_text("".join(lines))
    report = verify_chain(path)
    assert (report.ok, report.line) == (False, 3)
    assert "reordered" in report.reason


def test_garbage_line_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 3)
    with path.open("a") as fh:
        fh.write("not json\n")
    report = verify_chain(path)
    assert (report.ok, report.line, report.records) == (False, 4, 3)


def test_chain_continues_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _write(path, 3)
    _write(path, 2)
    recs = [json.loads(line) for line in _lines(path)]
    assert [r["seq"] for r in recs] == [1, 2, 3, 4, 5]
    assert recs[3]["prev_hash"] == recs[2]["hash"]
    assert verify_chain(path).ok


def test_restart_after_torn_write(tmp_path: Path) -> None:
    """A crash mid-line: the fragment is isolated, new records chain from the last good one,
    and verify reports the torn record (a lost record is an audit event)."""
    path = tmp_path / "audit.jsonl"
    _write(path, 3)
    with path.open("a") as fh:
        fh.write('{"name":"half')
    _write(path, 2)
    lines = _lines(path)
    assert lines[3] == '{"name":"half\n'
    assert json.loads(lines[4])["prev_hash"] == json.loads(lines[2])["hash"]
    report = verify_chain(path)
    assert (report.ok, report.line) == (False, 4)
    assert "torn" in report.reason


def test_restart_with_long_records(tmp_path: Path) -> None:
    """The tail reader crosses its 64 KiB chunk boundary."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path)
    for i in range(3):
        log.append({"blob": "x" * 100_000, "i": i})
    log.close()
    _write(path, 1)
    assert verify_chain(path).ok and verify_chain(path).records == 4


def test_second_writer_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = AuditLog(path)
    try:
        with pytest.raises(ConfigError) as err:
            setup_telemetry(AuditSettings(file=path))
        assert err.value.field == "audit.file"
    finally:
        first.close()
    AuditLog(path).close()  # released on close


def test_concurrent_appends_keep_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync="never")
    barrier = threading.Barrier(8)

    def worker(t: int) -> None:
        barrier.wait()
        for i in range(200):
            log.append({"thread": t, "i": i})

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    log.close()
    report = verify_chain(path)
    assert report.ok and report.records == 1600


@pytest.mark.parametrize("policy", ["always", "interval", "never"])
def test_fsync_policies(tmp_path: Path, policy: str) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync=policy, fsync_interval_s=0.01)  # type: ignore[arg-type]
    log.append({"a": 1})
    log.append({"a": 2}, sync=True)
    log.flush()
    log.close()
    log.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        log.append({"a": 3})
    assert verify_chain(path).records == 2


_CHILD = """
import sys, time
from pathlib import Path
from gateway.audit import AuditSettings, setup_telemetry
tel = setup_telemetry(AuditSettings(file=Path(sys.argv[1]), fsync="never"))
for i in range(40):
    with tel.tracer.start_as_current_span("switchboard.v1.Gateway/Execute"):
        with tel.tracer.start_as_current_span("policy.decide"):
            pass
print("ready", flush=True)
time.sleep(60)
"""


def test_records_survive_sigkill(tmp_path: Path) -> None:
    """Written synchronously before the span ends: a killed gateway loses nothing it reported."""
    path = tmp_path / "audit.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    report = verify_chain(path)
    assert report.ok and report.records == 80
    _write(path, 1)  # the lock died with the process; the chain continues
    assert verify_chain(path).records == 81


def test_any_text_is_recorded_and_round_trips(tmp_path: Path) -> None:
    """Non-ASCII and even lone surrogates (possible from lax JSON input) never lose a record."""
    tel = setup_telemetry(AuditSettings(file=tmp_path / "audit.jsonl", fsync="never"))
    odd = {"name": "é ü 中文 🙂", "lone": "x\ud800y", "nul": "a\x00b"}
    with tel.tracer.start_as_current_span("switchboard.v1.Gateway/Execute", attributes=odd):
        pass
    tel.shutdown()
    raw = (tmp_path / "audit.jsonl").read_bytes()
    assert raw.isascii()
    assert verify_chain(tmp_path / "audit.jsonl").ok
    assert json.loads(raw)["attributes"] == odd
    assert digest("x\ud800y").startswith("sha256:")


_FULL_DISK = """
import resource, signal, sys
from pathlib import Path
from gateway.audit import AuditLog
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
path = Path(sys.argv[1])
log = AuditLog(path, fsync="never")
log.append({"i": 0})
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + 300, hard))
failed = 0
for i in range(1, 4):
    try:
        log.append({"i": i, "pad": "x" * 200})
    except OSError:
        failed += 1
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
log.append({"i": 99})
log.close()
print(failed)
"""


def test_disk_full_mid_record_does_not_corrupt_the_next(tmp_path: Path) -> None:
    """A write cut short (here EFBIG from RLIMIT_FSIZE) leaves one torn line, and the records
    after it are intact and chained to the last complete record."""
    path = tmp_path / "audit.jsonl"
    out = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert int(out.stdout) >= 2  # the first oversize write is partial, later ones fail outright
    lines = path.read_text().splitlines()
    first, torn, last = json.loads(lines[0]), lines[1], json.loads(lines[-1])
    assert len(lines) == 3 and first["i"] == 0 and last["i"] == 99
    assert last["prev_hash"] == first["hash"] and last["seq"] == 2
    with pytest.raises(ValueError):
        json.loads(torn)
    report = verify_chain(path)
    assert (report.ok, report.line) == (False, 2)


_FULL_DISK_TELEMETRY = """
import json, resource, signal, sys
from pathlib import Path
from gateway.audit import AuditSettings, setup_telemetry
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
path = Path(sys.argv[1])
tel = setup_telemetry(AuditSettings(file=path, fsync="never"))
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
with tel.tracer.start_as_current_span("lost"):
    pass  # must not raise into the call
during = tel.audit_error
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
with tel.tracer.start_as_current_span("kept"):
    pass
after = tel.audit_error
tel.shutdown()
print(json.dumps({"during": during, "after": after}))
"""


def test_write_failure_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    out = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_TELEMETRY, str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    state = json.loads(out.stdout.splitlines()[-1])
    assert "File too large" in state["during"] and state["after"] == ""
    assert "audit_write_failed" in out.stdout + out.stderr  # logged (structlog default: stdout)
    report = verify_chain(path)
    assert report.ok and report.records == 1
    assert json.loads(path.read_text())["name"] == "kept"


def test_fast_canonical_text_is_the_reference_text(tmp_path: Path) -> None:
    """The writer's orjson shortcut gives json.dumps's canonical text exactly (or falls back to
    it): values where the two libraries format differently are covered, and every record
    written verifies."""
    import random

    from gateway.audit.chain import _canonical, _canonical_fast

    rnd = random.Random(13)
    values: list[object] = [0.0, -0.0, 1.0, 1e-5, 2.5e-5, 9.99e-5, 1e-4, 1e15, 1e16, 1e17,
                            5e-324, 1.7976931348623157e308, 2**63 - 1, -(2**63), 2**64, 10**30,
                            "0.00001", "x\x7fy", "\x00\x1f\n\t\"\\", "é", "\ud800", "日本",
                            None, True, False, [], {}, float("nan"), float("inf"), 1e-4,
                            9.999999999999998e15, (1.5, "t")]
    for _ in range(20_000):
        exp = rnd.uniform(-25, 25)
        values.append(rnd.random() * 10**exp * rnd.choice((1, -1)))
        values.append(round(rnd.random() * 10**rnd.randint(-6, 6), rnd.randint(0, 8)))
        values.append("".join(chr(rnd.randrange(0, 0x80)) for _ in range(rnd.randint(0, 6))))
        values.append(rnd.uniform(1e-4, 1e16) if rnd.random() < 0.5 else rnd.uniform(-1, 1))
    log = AuditLog(tmp_path / "a.jsonl")
    for i in range(0, len(values), 7):
        chunk = values[i:i + 7]
        record = {"attributes": {f"k{j}": v for j, v in enumerate(chunk)}, "list": chunk,
                  "Z": 1, "a": {"é": 1, "b": [chunk[0]]}}
        assert _canonical_fast(record) == _canonical(record), record
        log.append(record)
    log.close()
    assert verify_chain(tmp_path / "a.jsonl").ok


def test_fast_canonical_path_is_taken_for_ordinary_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hex ids and digests ("…3e…") hold digit-then-e pairs: they must not push an ordinary
    span record onto the json.dumps path (only a number token with an exponent may)."""
    from gateway.audit import chain

    slow: list[object] = []
    reference = chain._canonical
    monkeypatch.setattr(chain, "_canonical", lambda rec: slow.append(rec) or reference(rec))
    record = {"trace_id": "3e" * 16, "span_id": "1e2e3e4e5e6e7e8e", "duration_ms": 1.25,
              "prev_hash": "sha256:" + "9e" * 32, "attributes": {"n": 3, "x": [1.5, 2]}}
    assert chain._canonical_fast(record) == reference(record)
    assert slow == []
    for tricky in (1e-5, 2.5e-5, 1e16, -1e-7, float("nan"), float("inf"), -float("inf")):
        assert chain._canonical_fast({"a": [tricky]}) == reference({"a": [tricky]})
    assert len(slow) == 7
