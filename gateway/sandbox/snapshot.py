"""The Pyodide memory snapshot: made once per runtime version, cached on disk, read privately.

Cold-loading Pyodide costs ~2 s of CPU; restoring from a snapshot ~0.1 s. The snapshot is made
in a process of its own that never runs user code, keyed by everything it depends on (the Deno
binary, Pyodide's files, our runner and worker, the V8 flags), written atomically, and read by
each sandbox process into its own memory. It is wasm memory only and holds no secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
import uuid
from pathlib import Path

from gateway.errors import SandboxCrashed
from gateway.sandbox.process import _v8_flags, deno_env, snapshot_command
from gateway.sandbox.types import SandboxSettings

__all__ = ["ensure_snapshot", "snapshot_key"]

_MIN_BYTES = 1 << 20  # a real snapshot is ~30 MB; anything tiny is a failed write


def snapshot_key(deno: str, runtime_dir: Path, settings: SandboxSettings) -> str:
    """Digest of every input the snapshot depends on: a change to any of them makes a new one."""
    h = hashlib.sha256(b"switchboard-snapshot-v2\0")
    for path in (Path(deno), runtime_dir / "node_modules" / "pyodide" / "pyodide.asm.wasm",
                 runtime_dir / "node_modules" / "pyodide" / "python_stdlib.zip"):
        st = path.stat()
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    for path in (runtime_dir / "node_modules" / "pyodide" / "package.json",
                 runtime_dir / "worker.ts", runtime_dir / "supervisor.ts",
                 runtime_dir / "sandbox_runner.py"):
        h.update(path.read_bytes())
    h.update(_v8_flags(settings).encode())  # every V8 flag the processes run with
    return h.hexdigest()[:32]


def _private_dir(path: Path) -> bool:
    """True if ``path`` is (or can be made) a directory only we can write."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.stat()
    except OSError:
        return False
    return (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
            and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def default_cache_dir() -> Path:
    env = os.environ.get("SWITCHBOARD_CACHE_DIR")
    if env:
        return Path(env) / "sandbox"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "switchboard" / "sandbox"


async def ensure_snapshot(deno: str, runtime_dir: Path, settings: SandboxSettings,
                          private_tmp: Path) -> Path:
    """The snapshot file for this runtime: from the cache if present, else made now.

    The cache is used only if it is a directory that only this user can write; otherwise the
    snapshot is made in the pool's private temp directory (and not kept)."""
    cache = Path(settings.snapshot_dir) if settings.snapshot_dir else default_cache_dir()
    if not _private_dir(cache):
        cache = private_tmp
    target = cache / f"pyodide-{snapshot_key(deno, runtime_dir, settings)}.snap"
    with contextlib.suppress(OSError):
        if target.stat().st_size >= _MIN_BYTES:
            return target
    tmp = cache / f".{target.name}.{uuid.uuid4().hex[:8]}.tmp"
    argv = snapshot_command(deno, runtime_dir, tmp, settings)
    deno_dir = Path(settings.deno_dir or (private_tmp / "deno_dir"))
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=deno_env(deno_dir), start_new_session=True)
    try:
        _, err = await asyncio.wait_for(proc.communicate(), settings.start_timeout_s)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    try:
        ok = proc.returncode == 0 and tmp.stat().st_size >= _MIN_BYTES
    except OSError:
        ok = False
    if not ok:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise SandboxCrashed("could not make the Pyodide snapshot",
                             details={"stderr": err[-2000:].decode("utf-8", "replace")})
    os.chmod(tmp, 0o600)
    os.replace(tmp, target)  # atomic: concurrent pools each write their own tmp, last one wins
    return target
