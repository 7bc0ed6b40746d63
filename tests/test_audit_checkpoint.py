"""Signed audit checkpoints: `switchboard audit verify --public-key` detects edits, deletions,
rewrites with fresh hashes and truncation of anything up to the last checkpoint; with
`--checkpoints EXTERNAL` (the exported copy) also a sidecar cut back or rolled back."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

import pytest

from gateway.audit import AuditSettings
from gateway.audit.chain import GENESIS, AuditLog, record_hash
from gateway.audit.checkpoint import generate_key, latest_checkpoint, sign_checkpoint
from gateway.audit.telemetry import setup_telemetry
from gateway.cli import main
from gateway.config import parse_settings
from gateway.errors import ConfigError
from gateway.server import _checkpoint, _checkpoint_forever


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


# --- External checkpoints: a copy the attacker of the audit volume cannot rewrite ----------


def sign(audit: Path, key: Path, *extra: str) -> None:
    assert main(["audit", "checkpoint", str(audit), "--key", str(key), *extra]) == 0


def verify_ext(audit: Path, pub: Path, external: Path,
               capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(["audit", "verify", str(audit), "--public-key", str(pub),
               "--checkpoints", str(external)])
    return rc, capsys.readouterr().out


@pytest.fixture()
def exported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path, Path]:
    """Three checkpoints (seq 3, 6, 9), each also exported to a directory on "another volume"."""
    audit = tmp_path / "vol" / "audit.jsonl"
    key = tmp_path / "keys" / "audit.key"
    worm = tmp_path / "worm"
    worm.mkdir()
    assert main(["audit", "keygen", str(key)]) == 0
    for start in (0, 3, 6):
        write(audit, 3, start=start)
        sign(audit, key, "--export", str(worm))
    capsys.readouterr()
    assert (worm / "audit.jsonl.checkpoints").read_text().count("\n") == 3
    return audit, key.with_name("audit.key.pub"), worm


def test_exported_copy_verifies(exported: tuple[Path, Path, Path],
                                capsys: pytest.CaptureFixture[str]) -> None:
    audit, pub, worm = exported
    write(audit, 2, start=9)
    rc, out = verify_ext(audit, pub, worm, capsys)
    assert rc == 0, out
    assert "external copy: 3 checkpoints" in out and "up to seq 9" in out
    assert "2 records after the last exported checkpoint" in out
    # The export file itself works as well as its directory.
    rc, out = verify_ext(audit, pub, worm / "audit.jsonl.checkpoints", capsys)
    assert rc == 0, out


def test_truncation_with_dropped_checkpoints_needs_the_external_copy(
        exported: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    audit, pub, worm = exported
    sidecar = audit.with_name("audit.jsonl.checkpoints")
    # Cut the tail back to seq 4 and drop the sidecar's checkpoints past it (seq 6 and 9).
    lines = audit.read_text().splitlines()
    audit.write_text("\n".join(lines[:4]) + "\n")
    sidecar.write_text(sidecar.read_text().splitlines()[0] + "\n")
    rc, out = verify(audit, pub, capsys)
    assert rc == 0 and "up to seq 3; 1 records after" in out  # the local view is consistent
    rc, out = verify_ext(audit, pub, worm, capsys)
    assert rc == 1
    assert "TAMPERED" in out and "external checkpoint seq 9" in out and "the record is gone" in out
    assert "the local checkpoints miss 2 the external copy has (seq 6, 9" in out


def test_an_older_sidecar_put_back_is_detected(tmp_path: Path, exported: tuple[Path, Path, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    audit, pub, worm = exported
    sidecar = audit.with_name("audit.jsonl.checkpoints")
    lines = audit.read_text().splitlines()
    old_sidecar = sidecar.read_text().splitlines()[:2]  # a backup from when seq 6 was newest
    # Rewrite seq 7.. with fresh hashes and put the older (validly signed) sidecar back.
    records = [json.loads(x) for x in lines]
    records[7]["attributes"] = {"i": 999}
    rewrite(audit, records)
    sidecar.write_text("\n".join(old_sidecar) + "\n")
    rc, out = verify(audit, pub, capsys)
    assert rc == 0  # without the external copy: consistent
    rc, out = verify_ext(audit, pub, worm, capsys)
    assert rc == 1
    assert "external checkpoint seq 9" in out and "differs from the signed one" in out
    assert "the local checkpoints miss 1 the external copy has (seq 9;" in out
    # A deleted sidecar is reported the same way.
    sidecar.unlink()
    rc, out = verify_ext(audit, pub, worm, capsys)
    assert rc == 1 and "is missing" in out and "the local checkpoints miss 3" in out


def test_external_copy_problems(exported: tuple[Path, Path, Path], tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    audit, pub, worm = exported
    ext = worm / "audit.jsonl.checkpoints"
    # A forged external entry is not trusted.
    entry = json.loads(ext.read_text().splitlines()[-1])
    entry["seq"] = 2
    with open(ext, "a") as fh:
        fh.write(json.dumps(entry) + "\n")
    rc, out = verify_ext(audit, pub, worm, capsys)
    assert rc == 1 and "bad signature" in out
    # An external copy without this file's checkpoints proves nothing: not OK.
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out = verify_ext(audit, pub, empty, capsys)
    assert rc == 1 and "no external checkpoints" in out
    # --checkpoints needs --public-key.
    assert main(["audit", "verify", str(audit), "--checkpoints", str(worm)]) == 2


def test_print_latest_as_one_json_line(exported: tuple[Path, Path, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """What cron/CI ships: `audit checkpoint --print` -> one line; collected lines verify."""
    audit, pub, _worm = exported
    assert main(["audit", "checkpoint", "--print", str(audit)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    latest = json.loads(out)
    assert latest["seq"] == 9 and latest["file"] == "audit.jsonl" and latest["signature"]
    shipped = tmp_path / "shipped.jsonl"
    shipped.write_text(out)
    write(audit, 1, start=9)
    assert main(["audit", "checkpoint", "--print", "--key", str(pub.with_suffix("")),
                 str(audit)]) == 0
    line = capsys.readouterr().out
    assert json.loads(line)["seq"] == 10
    with open(shipped, "a") as fh:
        fh.write(line)
    rc, out = verify_ext(audit, pub, shipped, capsys)
    assert rc == 0 and "external copy: 2 checkpoints" in out and "up to seq 10" in out
    # Nothing to print: an error, not an empty line.
    bare = tmp_path / "bare.jsonl"
    write(bare, 1)
    assert main(["audit", "checkpoint", "--print", str(bare)]) == 1
    assert capsys.readouterr().out == ""


def test_export_failure_keeps_the_local_checkpoint(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    write(audit, 2)
    generate_key(tmp_path / "k")
    with pytest.raises(OSError, match="not exported to"):
        sign_checkpoint(audit, tmp_path / "k", export=tmp_path / "no" / "such" / "dir" / "x")
    assert latest_checkpoint(audit) is not None  # the sidecar has it
    # An export directory that is not mounted: no file is created in its place.
    with pytest.raises(OSError, match="no such directory"):
        sign_checkpoint(audit, tmp_path / "k", export=tmp_path / "worm")
    assert not (tmp_path / "worm").exists()
    # A file export (with a suffix) is created on first use.
    sign_checkpoint(audit, tmp_path / "k", export=tmp_path / "export.jsonl")
    assert json.loads((tmp_path / "export.jsonl").read_text())["seq"] == 2


def test_config_key(tmp_path: Path) -> None:
    settings = parse_settings(
        {"audit": {"file": "state/audit.jsonl", "checkpoint_key_file": "keys/audit.key",
                   "checkpoint_export": "/mnt/worm/switchboard/"}}, base_dir=tmp_path)
    assert settings.audit.checkpoint_export == Path("/mnt/worm/switchboard")
    rel = parse_settings({"audit": {"checkpoint_export": "export/cps.jsonl"}}, base_dir=tmp_path)
    assert rel.audit.checkpoint_export == tmp_path / "export" / "cps.jsonl"
    assert parse_settings({}, base_dir=tmp_path).audit.checkpoint_export is None
    with pytest.raises(ConfigError):
        parse_settings({"audit": {"checkpoint_export": 3}}, base_dir=tmp_path)


def test_gateway_signer_writes_to_the_export(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The gateway's periodic signer (gateway/server.py) and its shutdown checkpoint append
    to audit.checkpoint_export; the result verifies against that copy."""
    key = tmp_path / "keys" / "audit.key"
    generate_key(key)
    worm = tmp_path / "worm"
    worm.mkdir()
    settings = AuditSettings(file=tmp_path / "state" / "audit.jsonl", log_format="json",
                             checkpoint_key_file=key, checkpoint_export=worm,
                             checkpoint_interval_s=0.05)
    telemetry = setup_telemetry(settings)
    ext = worm / "audit.jsonl.checkpoints"

    async def run() -> None:
        signer = asyncio.create_task(_checkpoint_forever(telemetry, settings))
        try:
            for i in range(3):
                with telemetry.tracer.start_as_current_span(f"call-{i}"):
                    pass
                deadline = time.monotonic() + 30
                while (latest_checkpoint(settings.file) or {}).get("seq", 0) < i + 1:
                    assert time.monotonic() < deadline, "no checkpoint signed"
                    await asyncio.sleep(0.02)
        finally:
            signer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await signer

    try:
        asyncio.run(run())
        with telemetry.tracer.start_as_current_span("last"):
            pass
        telemetry.force_flush()
    finally:
        telemetry.shutdown()
    _checkpoint(settings)  # what GatewayServer.stop does after the last flush
    exported_seqs = [json.loads(x)["seq"] for x in ext.read_text().splitlines()]
    assert exported_seqs[-1] == 4 and set(exported_seqs) >= {1, 2, 3, 4}
    rc, out = verify_ext(settings.file, key.with_name("audit.key.pub"), worm, capsys)
    assert rc == 0, out
    assert "0 records after the last exported checkpoint" in out
