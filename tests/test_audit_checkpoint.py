"""Signed audit checkpoints: `switchboard audit verify --public-key` detects edits, deletions,
rewrites with fresh hashes and truncation of anything up to the last checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.audit.chain import GENESIS, AuditLog, record_hash
from gateway.cli import main


def write(path: Path, n: int, start: int = 0) -> None:
    log = AuditLog(path, fsync="never")
    try:
        for i in range(start, start + n):
            log.append({"name": f"span-{i}", "trace_id": f"{i:032x}", "attributes": {"i": i}})
    finally:
        log.close()


@pytest.fixture()
def signed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    audit = tmp_path / "audit.jsonl"
    write(audit, 5)
    assert main(["audit", "keygen", str(tmp_path / "keys" / "audit.key")]) == 0
    assert main(["audit", "checkpoint", str(audit), "--key",
                 str(tmp_path / "keys" / "audit.key")]) == 0
    capsys.readouterr()
    return audit, tmp_path / "keys" / "audit.key.pub"


def verify(audit: Path, pub: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["audit", "verify", str(audit), "--public-key", str(pub)])
    return rc, capsys.readouterr().out


def rewrite(audit: Path, lines: list[dict[str, object]]) -> None:
    """Rewrite the file with a fresh, internally consistent chain (what an attacker with
    write access but without the signing key can do)."""
    prev, out = GENESIS, []
    for seq, rec in enumerate(lines, start=1):
        body = {k: v for k, v in rec.items() if k not in ("hash", "prev_hash", "seq")}
        body.update(seq=seq, prev_hash=prev)
        body["hash"] = prev = record_hash(body)
        out.append(json.dumps(body, sort_keys=True, separators=(",", ":")))
    audit.write_text("\n".join(out) + "\n")


def test_intact_and_appended(signed: tuple[Path, Path],
                             capsys: pytest.CaptureFixture[str]) -> None:
    audit, pub = signed
    rc, out = verify(audit, pub, capsys)
    assert rc == 0 and "1 signed checkpoints valid, up to seq 5; 0 records after" in out
    write(audit, 2, start=5)
    rc, out = verify(audit, pub, capsys)
    assert rc == 0 and "2 records after the last checkpoint" in out


def test_rewritten_chain_is_detected(signed: tuple[Path, Path],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    audit, pub = signed
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    records[1]["attributes"] = {"i": 999}
    rewrite(audit, records)
    assert main(["audit", "verify", str(audit)]) == 0  # the chain alone cannot tell
    capsys.readouterr()
    rc, out = verify(audit, pub, capsys)
    assert rc == 1 and "seq 5" in out and "differs from the signed one" in out


def test_truncation_and_deletion_are_detected(signed: tuple[Path, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    audit, pub = signed
    lines = audit.read_text().splitlines()
    audit.write_text("\n".join(lines[:3]) + "\n")  # cut the tail: still a valid chain
    rc, out = verify(audit, pub, capsys)
    assert rc == 1 and "the record is gone" in out
    rewrite(audit, [json.loads(x) for x in lines[:2] + lines[3:]])  # delete one, re-chain
    rc, out = verify(audit, pub, capsys)
    assert rc == 1 and "TAMPERED" in out


def test_forged_checkpoint_and_wrong_key(signed: tuple[Path, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    audit, pub = signed
    sidecar = audit.with_name("audit.jsonl.checkpoints")
    entry = json.loads(sidecar.read_text())
    entry["seq"] = 3
    sidecar.write_text(json.dumps(entry) + "\n")
    rc, out = verify(audit, pub, capsys)
    assert rc == 1 and "bad signature" in out
    assert main(["audit", "keygen", str(tmp_path / "other.key")]) == 0
    capsys.readouterr()
    rc, out = verify(audit, tmp_path / "other.key.pub", capsys)
    assert rc == 1 and "bad signature" in out


def test_no_checkpoint_fails_verification_with_a_key(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    audit = tmp_path / "audit.jsonl"
    write(audit, 2)
    main(["audit", "keygen", str(tmp_path / "k")])
    capsys.readouterr()
    rc, out = verify(audit, tmp_path / "k.pub", capsys)
    assert rc == 1 and "no checkpoints" in out
