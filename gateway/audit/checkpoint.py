"""Signed audit checkpoints: an Ed25519 signature over an audit file's (seq, hash) at a point.

The hash chain alone shows an edited or deleted line, but not a file rewritten from some point
on with fresh hashes, nor a file cut short. A checkpoint pins the chain: it is the signed
``(seq, hash)`` of the file's last record when it was taken, appended to the sidecar
``<file>.checkpoints`` (JSON lines). ``verify --public-key`` checks every checkpoint's
signature and that the file still holds that record with that hash — so an edit, a deletion,
a rewrite or a truncation of anything up to the last checkpoint is detected. Records after the
last checkpoint are only as good as the chain (the report counts them).

Someone who can write both the file and its sidecar can cut the tail *and* drop the later
checkpoints, or put back an older sidecar. Against that, every checkpoint can also be appended
to an export (``audit.checkpoint_export``: a file, or a directory holding
``<file>.checkpoints``, on another volume / a WORM mount), or printed as one JSON line
(``latest_checkpoint``) for cron/CI to ship elsewhere; ``verify_checkpoints(..., external=)``
then requires every external checkpoint to be satisfied by the file and present in the sidecar.

The private key is a PEM (PKCS#8) Ed25519 key in a file (``switchboard audit keygen``); only
its public half is needed to verify.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit.chain import iter_records, verify_chain

__all__ = [
    "CheckpointReport",
    "checkpoint_path",
    "export_path",
    "generate_key",
    "latest_checkpoint",
    "sign_checkpoint",
    "verify_checkpoints",
]


def checkpoint_path(audit_file: Path) -> Path:
    return audit_file.with_name(audit_file.name + ".checkpoints")


def export_path(export: Path, audit_file: Path) -> Path:
    """Where the checkpoints of ``audit_file`` go in ``export``: a directory holds one
    ``<file>.checkpoints`` per audit file; anything else is the file itself (one file may
    collect several audit files' checkpoints: each names its file). To be created by the
    signer, an export file needs a suffix (``.jsonl``, ``.checkpoints``): a missing path
    without one is taken for a missing directory (an unmounted volume) and refused."""
    return export / checkpoint_path(audit_file).name if export.is_dir() else export


def _append_line(path: Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def latest_checkpoint(audit_file: Path) -> dict[str, Any] | None:
    """The newest checkpoint in the sidecar as stored (unverified: the verifier checks it), or
    None when there is none."""
    sidecar = checkpoint_path(audit_file)
    if not sidecar.is_file():
        return None
    for line in reversed(sidecar.read_text(encoding="utf-8").splitlines()):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "signature" in entry:
            return entry
    return None


def _payload(file: str, seq: int, hash_: str, signed_at: str) -> bytes:
    return json.dumps({"file": file, "seq": seq, "hash": hash_, "signed_at": signed_at},
                      sort_keys=True, separators=(",", ":")).encode()


def _key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key(private_file: Path) -> Path:
    """Write a new Ed25519 key (mode 0600) and its public half beside it (``.pub``)."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    private_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public = private_file.with_name(private_file.name + ".pub")
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return public


def _load_private(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: not an Ed25519 private key")
    return key


def _load_public(path: Path) -> Ed25519PublicKey:
    data = path.read_bytes()
    try:
        key: Any = serialization.load_pem_public_key(data)
    except ValueError:
        key = _load_private(path).public_key()  # the private key file verifies too
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


def sign_checkpoint(audit_file: Path, key_file: Path, *,
                    export: Path | None = None) -> dict[str, Any]:
    """Sign the file's last intact record and append the checkpoint to the sidecar, then to
    ``export`` (see :func:`export_path`) when given. A torn last line (a write in progress) is
    left for the next checkpoint; a chain broken before that is refused (a checkpoint never
    blesses a broken file). An export that fails raises ``OSError`` after the sidecar got the
    checkpoint (the next one is exported again, and covers this one)."""
    report = verify_chain(audit_file)
    if not report.ok:
        lines = sum(1 for _ in iter_records(audit_file))
        if report.line != lines:
            raise ValueError(f"{audit_file}: hash chain broken at line {report.line} "
                             f"({report.reason}); not signing")
    if report.last_seq == 0:
        raise ValueError(f"{audit_file}: no records to sign")
    key = _load_private(key_file)
    signed_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    payload = _payload(audit_file.name, report.last_seq, report.last_hash, signed_at)
    entry = {"file": audit_file.name, "seq": report.last_seq, "hash": report.last_hash,
             "signed_at": signed_at, "key_id": _key_id(key.public_key()),
             "signature": base64.b64encode(key.sign(payload)).decode()}
    line = json.dumps(entry, sort_keys=True)
    _append_line(checkpoint_path(audit_file), line)
    if export is not None:
        target = export_path(export, audit_file)
        try:
            if not target.exists() and not target.suffix:
                # A directory that is not there (an unmounted volume): never create a file
                # in its place on whatever disk is underneath.
                raise FileNotFoundError(f"no such directory {export}")
            _append_line(target, line)
        except OSError as exc:
            raise OSError(f"checkpoint seq {entry['seq']} signed into "
                          f"{checkpoint_path(audit_file).name} but not exported to {target}: "
                          f"{exc}") from exc
    return entry


@dataclass(frozen=True)
class CheckpointReport:
    ok: bool
    checkpoints: int
    last_seq: int  # the seq the newest valid checkpoint pins (0: none)
    unsigned_after: int  # records past it, covered by the chain only
    problems: tuple[str, ...] = ()
    # With an external copy (``external=``): its valid checkpoints for this file, the seq the
    # newest pins, and the records past it (the window an attacker with write access to the
    # audit volume can still cut or rewrite undetected); local checkpoints not exported (yet).
    external: int | None = None
    external_last_seq: int = 0
    unexported_after: int = 0
    local_only: int = 0


def _identity(entry: dict[str, Any]) -> tuple[int, str, str]:
    return int(entry["seq"]), str(entry["hash"]), str(entry["signature"])


def _read_signed(path: Path, what: str, audit_name: str, public: Ed25519PublicKey,
                 key_id: str, problems: list[str], *,
                 foreign_ok: bool = False) -> list[dict[str, Any]]:
    """The validly signed checkpoints of ``audit_name`` in ``path``; a problem for each bad
    line. ``foreign_ok``: checkpoints of other files are skipped (a shared export file)."""
    entries: list[dict[str, Any]] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if foreign_ok and not line.strip():
            continue
        try:
            entry = json.loads(line)
            seq, hash_ = int(entry["seq"]), str(entry["hash"])
            payload = _payload(str(entry["file"]), seq, hash_, str(entry["signed_at"]))
            public.verify(base64.b64decode(entry["signature"]), payload)
        except InvalidSignature:
            problems.append(f"{what} line {lineno}: bad signature (forged or edited, or "
                            f"signed by another key than {key_id})")
            continue
        except (ValueError, KeyError, TypeError):
            problems.append(f"{what} line {lineno}: not a checkpoint record")
            continue
        if entry["file"] != audit_name:
            if not foreign_ok:
                problems.append(f"{what} line {lineno}: signed for {entry['file']!r}")
            continue
        entries.append(entry)
    return entries


def _check_against(entries: list[dict[str, Any]], records: dict[int, str], prefix: str,
                   problems: list[str]) -> None:
    for entry in entries:
        seq, hash_ = int(entry["seq"]), str(entry["hash"])
        found = records.get(seq)
        if found is None:
            problems.append(f"{prefix}checkpoint seq {seq} ({entry['signed_at']}): the record is "
                            "gone (file truncated or records deleted)")
        elif found != hash_:
            problems.append(f"{prefix}checkpoint seq {seq} ({entry['signed_at']}): the record "
                            "differs from the signed one (edited or rewritten)")


def _seqs(entries: list[dict[str, Any]]) -> str:
    seqs = sorted({int(e["seq"]) for e in entries})
    shown = ", ".join(map(str, seqs[:5])) + (f", ... ({len(seqs)} in all)" if len(seqs) > 5
                                             else "")
    newest = max(entries, key=lambda e: int(e["seq"]))
    return f"seq {shown}; the newest signed {newest['signed_at']}"


def verify_checkpoints(audit_file: Path, public_key_file: Path, *,
                       external: Path | None = None) -> CheckpointReport:
    """Check the sidecar's checkpoints against the file; with ``external`` (an exported copy:
    a file, or a directory holding ``<file>.checkpoints``), also require every external
    checkpoint to be satisfied by the file and present in the sidecar (a sidecar cut back or
    replaced by an older one is detected, and so is a tail cut past an exported checkpoint)."""
    public = _load_public(public_key_file)
    key_id = _key_id(public)
    records: dict[int, str] = {}
    for _n, rec, _raw in iter_records(audit_file):
        if rec is not None and isinstance(rec.get("seq"), int):
            records.setdefault(int(rec["seq"]), str(rec.get("hash")))
    sidecar = checkpoint_path(audit_file)
    problems: list[str] = []
    entries: list[dict[str, Any]] = []
    if not sidecar.is_file():
        problems.append(f"no checkpoints ({sidecar.name} is missing)")
    else:
        entries = _read_signed(sidecar, "checkpoint", audit_file.name, public, key_id, problems)
        _check_against(entries, records, "", problems)
        if not entries and not problems:
            problems.append(f"no checkpoints in {sidecar.name}")
    last = max((int(e["seq"]) for e in entries), default=0)
    unsigned = sum(1 for s in records if s > last)
    if external is None:
        return CheckpointReport(not problems, len(entries), last, unsigned, tuple(problems))

    ext_file = export_path(external, audit_file)
    ext: list[dict[str, Any]] = []
    if not ext_file.is_file():
        problems.append(f"no external checkpoints ({ext_file} is missing)")
    else:
        ext = _read_signed(ext_file, f"external {ext_file}", audit_file.name, public, key_id,
                           problems, foreign_ok=True)
        if not ext:
            problems.append(f"the external copy {ext_file} has no checkpoints for "
                            f"{audit_file.name}")
    _check_against(ext, records, "external ", problems)
    local_ids = {_identity(e) for e in entries}
    ext_ids = {_identity(e) for e in ext}
    missing = list({_identity(e): e for e in ext if _identity(e) not in local_ids}.values())
    if missing:
        problems.append(f"the local checkpoints miss {len(missing)} the external copy has "
                        f"({_seqs(missing)}): {sidecar.name} was cut back, replaced or deleted")
    ext_last = max((int(e["seq"]) for e in ext), default=0)
    return CheckpointReport(
        not problems, len(entries), last, unsigned, tuple(problems), external=len(ext),
        external_last_seq=ext_last, unexported_after=sum(1 for s in records if s > ext_last),
        local_only=sum(1 for e in entries if _identity(e) not in ext_ids))
