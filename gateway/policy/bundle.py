"""Reading a policy directory the way ``opa run DIR`` does, and compiling it with regorus.

A bundle is every ``*.rego`` file plus every ``data.json`` / ``data.yaml`` under the root; a
data file's directory (relative to the root) is its path under ``data``, as in OPA. Test files
(``*_test.rego``) are loaded only for ``policy test``/``check`` so editing a test never changes
the serving revision.

A directory that is gone, or holds no ``.rego`` file with content, is :class:`NoPolicy` (what
the files say: nothing, so every decision is denied), not a load *error* (which keeps the
previous revision). An empty (zero-byte or whitespace-only) file counts as absent: a ``.rego``
says no rules, a data file no data.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import regorus
import yaml

from gateway.errors import PolicyError

from .base import ENTRYPOINT, PROBE_INPUT, NoPolicy
from .worker import RuleFailed, clean_error, compile_engine, engine_failure, probe_engine

__all__ = [
    "UNDEFINED",
    "Bundle",
    "Snapshot",
    "clean_error",
    "engine_failure",
    "load_bundle",
    "new_engine",
    "probe",
    "snapshot",
]

_DATA_NAMES = ("data.json", "data.yaml", "data.yml")


def _files(root: Path, with_tests: bool) -> list[Path]:
    """Bundle files under ``root``, following symlinked directories (a Kubernetes ConfigMap
    volume exposes its entries as symlinks into ``..data/``) and skipping dot-entries."""
    out = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop: walk each real directory once
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith(".") or not p.is_file():
                continue
            is_test = name.endswith("_test.rego")
            if (p.suffix == ".rego" and (with_tests or not is_test)) or name in _DATA_NAMES:
                out.append(p)
    return sorted(out)


Snapshot = tuple[tuple[str, str, int, int, int, int, int], ...]


def snapshot(root: Path, with_tests: bool = False) -> Snapshot:
    """Cheap change detector for hot reload, per bundle file: path, the real path it resolves
    to, device, inode, mtime, ctime and size.

    mtime and size alone miss a symlink swap (``..data`` pointed elsewhere, or the policy
    directory's own symlink) to files of the same size whose mtime was preserved or forged
    (``cp -p``, ``touch -r``): the real path and inode change then, and ctime cannot be set
    from user space. An empty or vanished directory is the empty snapshot.
    """
    out = []
    for p in _files(root, with_tests):
        try:
            st = p.stat()
            real = os.path.realpath(p)
        except OSError:
            continue
        out.append((str(p), real, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns,
                    st.st_size))
    return tuple(out)


def _merge(target: dict[str, Any], path: tuple[str, ...], value: Any, origin: str) -> None:
    node = target
    for part in path:
        nxt = node.setdefault(part, {})
        if not isinstance(nxt, dict):
            raise PolicyError(f"{origin}: data path {'.'.join(path)} conflicts with a value")
        node = nxt
    if not isinstance(value, dict):
        raise PolicyError(f"{origin}: a data file must hold a JSON/YAML object")
    for k, v in value.items():
        if k in node:
            raise PolicyError(f"{origin}: data key {'.'.join((*path, k))} defined twice")
        node[k] = v


@dataclass(frozen=True)
class Bundle:
    """The loaded text of a policy directory; ``revision`` is its content hash."""

    root: Path
    modules: tuple[tuple[str, str], ...]  # (relative path, source)
    data: dict[str, Any] = field(hash=False)
    revision: str

    def build_engine(self) -> regorus.Engine:
        """A fresh regorus Engine holding this bundle (thread-affine: use where created)."""
        return new_engine(self.modules, self.data)


def load_bundle(root: Path, *, with_tests: bool = False) -> Bundle:
    """Read and hash every policy/data file; raise PolicyError on unreadable or bad data, and
    :class:`NoPolicy` when there is no policy at all (no directory, no non-empty ``.rego``)."""
    if not root.is_dir():
        raise NoPolicy(f"policy directory {root} does not exist")
    digest = hashlib.sha256()
    modules: list[tuple[str, str]] = []
    data: dict[str, Any] = {}
    for p in _files(root, with_tests):
        rel = p.relative_to(root).as_posix()
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise PolicyError(f"{rel}: cannot read: {exc}") from exc
        digest.update(rel.encode() + b"\0" + raw + b"\0")
        if not raw.strip():
            continue  # an emptied file says nothing: no rules, no data (it is in the revision)
        if p.suffix == ".rego":
            try:
                modules.append((rel, raw.decode("utf-8")))
            except UnicodeDecodeError as exc:
                raise PolicyError(f"{rel}: not UTF-8: {exc}") from exc
            continue
        try:
            value = json.loads(raw) if p.suffix == ".json" else yaml.safe_load(raw)
        except (ValueError, yaml.YAMLError) as exc:
            raise PolicyError(f"{rel}: invalid data file: {exc}") from exc
        except RecursionError:
            raise PolicyError(f"{rel}: invalid data file: nested too deeply") from None
        _merge(data, p.parent.relative_to(root).parts, value or {}, rel)
    if not any(not name.endswith("_test.rego") for name, _ in modules):
        raise NoPolicy(f"no .rego policy files (with content) under {root}")
    return Bundle(
        root=root,
        modules=tuple(modules),
        data=data,
        revision="sha256:" + digest.hexdigest()[:16],
    )


def new_engine(modules: tuple[tuple[str, str], ...], data: dict[str, Any]) -> regorus.Engine:
    """Compile modules + data into a regorus Engine; PolicyError with a readable message
    (the worker's texts: :func:`.worker.compile_engine`)."""
    try:
        return compile_engine(modules, data)
    except RuleFailed as exc:
        raise PolicyError(str(exc)) from exc


UNDEFINED: Any = object()  # what probe() returns for an undefined entrypoint


def probe(engine: regorus.Engine) -> Any:
    """Evaluate every package once, as OPA compiles every rule up front; return the
    entrypoint's value for :data:`PROBE_INPUT` (:data:`UNDEFINED` when it is undefined,
    including when no rule defines it); PolicyError when a rule errs
    (:func:`.worker.probe_engine`, which a worker runs for the gateway's ``check``).
    A missing entrypoint is *not* an error here: OPA compiles such a bundle and answers every
    query with undefined, so it is loaded (and then denies everything) rather than rejected.
    """
    try:
        defined, value = probe_engine(engine, PROBE_INPUT, ENTRYPOINT)
    except RuleFailed as exc:
        raise PolicyError(str(exc)) from exc
    return value if defined else UNDEFINED
