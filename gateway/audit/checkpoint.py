"""Signed audit checkpoints: an Ed25519 signature over an audit file's (seq, hash) at a point.

The hash chain alone shows an edited or deleted line, but not a file rewritten from some point
on with fresh hashes, nor a file cut short. A checkpoint pins the chain: it is the signed
``(seq, hash)`` of the file's last record when it was taken, appended to the sidecar
``<file>.checkpoints`` (JSON lines). ``verify --public-key`` checks every checkpoint's
signature and that the file still holds that record with that hash — so an edit, a deletion,
a rewrite or a truncation of anything up to the last checkpoint is detected. Records after the
last checkpoint are only as good as the chain (the report counts them).

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
    "generate_key",
    "sign_checkpoint",
    "verify_checkpoints",
]


def checkpoint_path(audit_file: Path) -> Path:
    return audit_file.with_name(audit_file.name + ".checkpoints")


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


def sign_checkpoint(audit_file: Path, key_file: Path) -> dict[str, Any]:
    """Sign the file's last intact record and append the checkpoint to the sidecar. A torn last
    line (a write in progress) is left for the next checkpoint; a chain broken before that is
    refused (a checkpoint never blesses a broken file)."""
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
    with open(checkpoint_path(audit_file), "a", encoding="utf-8") as fh:
        fh.write(json.dumps(entry, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return entry


@dataclass(frozen=True)
class CheckpointReport:
    ok: bool
    checkpoints: int
    last_seq: int  # the seq the newest valid checkpoint pins (0: none)
    unsigned_after: int  # records past it, covered by the chain only
    problems: tuple[str, ...] = ()


def verify_checkpoints(audit_file: Path, public_key_file: Path) -> CheckpointReport:
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
        for lineno, line in enumerate(sidecar.read_text().splitlines(), start=1):
            try:
                entry = json.loads(line)
                seq, hash_ = int(entry["seq"]), str(entry["hash"])
                payload = _payload(str(entry["file"]), seq, hash_, str(entry["signed_at"]))
                public.verify(base64.b64decode(entry["signature"]), payload)
            except InvalidSignature:
                problems.append(f"checkpoint line {lineno}: bad signature (forged or edited, or "
                                f"signed by another key than {key_id})")
                continue
            except (ValueError, KeyError, TypeError):
                problems.append(f"checkpoint line {lineno}: not a checkpoint record")
                continue
            if entry["file"] != audit_file.name:
                problems.append(f"checkpoint line {lineno}: signed for {entry['file']!r}")
                continue
            entries.append(entry)
            found = records.get(seq)
            if found is None:
                problems.append(f"checkpoint seq {seq} ({entry['signed_at']}): the record is "
                                "gone (file truncated or records deleted)")
            elif found != hash_:
                problems.append(f"checkpoint seq {seq} ({entry['signed_at']}): the record "
                                "differs from the signed one (edited or rewritten)")
        if not entries and not problems:
            problems.append(f"no checkpoints in {sidecar.name}")
    last = max((int(e["seq"]) for e in entries), default=0)
    unsigned = sum(1 for s in records if s > last)
    return CheckpointReport(not problems, len(entries), last, unsigned, tuple(problems))
