"""Hostile programs: every escape attempt is contained, and the next run is a clean slate.

The attacker model is docs/sandbox.md's: sandboxed code reaches the JS global scope and the Deno
namespace (through ``pyodide_js``), so these tests go straight for ``Deno.*``.
"""

# ruff: noqa: E402
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

# The shared fixtures module is also a plugin (below): have its asserts rewritten first.
pytest.register_assert_rewrite("tests.sandbox_support")

from gateway.errors import SandboxCrashed, SandboxMemory, SandboxTimeout
from gateway.sandbox import SandboxPool, SandboxSettings, default_runtime_dir
from gateway.sandbox.process import deno_command
from tests.sandbox_support import JS_PRELUDE, SENTINEL_ENV, Host, req

pytest_plugins = ("tests.sandbox_support",)
pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]


@pytest.fixture
def pool(sandbox_pool: SandboxPool) -> SandboxPool:
    return sandbox_pool


CLEAN_CHECK = JS_PRELUDE + """
import sys, builtins, json
checks = {
    'object_prototype': bool(JS('return ({}).polluted === undefined')()),
    'global_this': bool(JS('return globalThis.__poison === undefined')()),
    'array_proto': bool(JS('return [1,2].map(x => x * 2).join() === "2,4"')()),
    'json_module': json.dumps([1]) == '[1]',
    'sys_modules': 'poisoned_mod' not in sys.modules and sys.modules['json'] is json,
    'builtins': type(builtins.print).__name__ == 'builtin_function_or_method'
                and not hasattr(builtins, 'pwned'),
    'globals': 'pwned' not in globals(),
    'files': not __import__('os').path.exists('/tmp/left-behind'),
}
checks
"""


async def assert_clean(pool: SandboxPool, principal: str = "demo/victim") -> None:
    r = await pool.run(req(CLEAN_CHECK, principal=principal), Host())
    assert r.ok, r.error
    assert r.result == dict.fromkeys(r.result, True) and len(r.result) == 8


async def attempt(pool: SandboxPool, body: str, *, wait: bool = False, **kw: Any) -> str:
    src = JS_PRELUDE + f"attempt({body!r}, wait={wait})"
    r = await pool.run(req(src, principal="demo/attacker", **kw), Host())
    assert r.ok, r.error
    assert isinstance(r.result, str)
    return r.result


def assert_denied(outcome: str, *, capability: str | None = None) -> None:
    assert outcome.startswith("denied: "), outcome
    if capability:
        assert f"Requires {capability} access" in outcome or "NotCapable" in outcome, outcome


# ---- the command line is the boundary --------------------------------------------------------


async def test_command_line_is_narrow(tmp_path: Path) -> None:
    rt = default_runtime_dir()
    argv = deno_command("/bin/deno", rt, tmp_path / "s.sock", tmp_path / "p.snap",
                        SandboxSettings())
    flags = [a for a in argv if a.startswith("--")]
    assert {"--no-prompt", "--no-config", "--no-lock", "--no-remote", "--no-npm"} <= set(flags)
    allow = {a.split("=")[0] for a in flags if a.startswith("--allow")}
    assert allow == {"--allow-read", "--allow-write", "--allow-net"}
    read = next(a for a in flags if a.startswith("--allow-read=")).split("=", 1)[1].split(",")
    assert set(read) == {str(rt / "node_modules" / "pyodide"), str(rt / "worker.ts"),
                         str(tmp_path / "p.snap"), str(tmp_path / "s.sock")}
    assert f"--allow-write={tmp_path / 's.sock'}" in flags
    assert f"--allow-net=unix:{tmp_path / 's.sock'}" in flags
    v8 = next(a for a in flags if a.startswith("--v8-flags="))
    assert "--max-old-space-size=" in v8 and "--wasm-max-mem-pages=" in v8
    # Restore-cost flags (docs/benchmarks.md, "Code channel speed"): GC only, no capability.
    v8_flags = set(v8.split("=", 1)[1].split(","))
    assert "--single-threaded-gc" in v8_flags
    # A bigger young generation made V8 abort at the memory limit instead of letting the
    # code's MemoryError through: never ship it.
    assert not any(f.startswith("--min-semi-space-size") for f in v8_flags)


async def test_snapshot_key_covers_every_v8_flag(tmp_path: Path) -> None:
    from dataclasses import replace

    from gateway.sandbox import snapshot

    rt = default_runtime_dir()
    base = SandboxSettings()
    keys = {snapshot.snapshot_key("/bin/sh", rt, s)
            for s in (base, replace(base, v8_heap_mb=128), replace(base, wasm_max_mem_pages=4096))}
    assert len(keys) == 3
    orig = snapshot._v8_flags
    try:
        snapshot._v8_flags = lambda s: orig(s) + ",--no-opt"  # type: ignore[assignment]
        assert snapshot.snapshot_key("/bin/sh", rt, base) not in keys
    finally:
        snapshot._v8_flags = orig  # type: ignore[assignment]


# ---- file system -----------------------------------------------------------------------------


async def test_host_files_are_unreadable(pool: SandboxPool) -> None:
    outcome = await attempt(pool, "return Deno.readTextFileSync('/etc/passwd')")
    assert_denied(outcome, capability="read")
    supervisor = str(default_runtime_dir() / "supervisor.ts")
    assert_denied(await attempt(pool, f"return Deno.readTextFileSync({supervisor!r})"),
                  capability="read")
    outcome = await attempt(pool, "return [...Deno.readDirSync('/')].length")
    assert_denied(outcome, capability="read")
    # Python's own file system is Pyodide's in-memory one: the host's files are not there.
    r = await pool.run(req("import os\n(os.path.exists('/etc/passwd'), os.path.exists('/work'))"),
                       Host())
    assert r.result == [False, False]
    await assert_clean(pool)


async def test_host_files_are_unwritable(pool: SandboxPool, tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    assert_denied(await attempt(pool, f"Deno.writeTextFileSync({str(target)!r}, 'x')"),
                  capability="write")
    assert_denied(await attempt(pool, "return Deno.makeTempDirSync()"), capability="write")
    assert not target.exists()
    # Writes into the in-memory FS stay in that interpreter.
    r = await pool.run(req("open('/tmp/left-behind', 'w').write('x')"), Host())
    assert r.ok
    await assert_clean(pool)


# ---- network ----------------------------------------------------------------------------------


async def test_network_is_denied(pool: SandboxPool) -> None:
    accepted: list[int] = []

    async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    try:
        assert_denied(await attempt(pool, f"return fetch({url!r})", wait=True), capability="net")
        assert_denied(await attempt(
            pool, f"return Deno.connect({{hostname: '127.0.0.1', port: {port}}})", wait=True),
            capability="net")
        assert_denied(await attempt(pool, "return Deno.listen({port: 0})"), capability="net")
        assert_denied(await attempt(
            pool, "return Deno.connect({transport: 'unix', path: '/tmp/x.sock'})", wait=True))
        assert_denied(await attempt(
            pool, "return new WebSocket('ws://127.0.0.1:1/')"), capability="net")
        src = ("from pyodide.http import pyfetch\nfrom pyodide.ffi import run_sync\n"
               f"try:\n    run_sync(pyfetch({url!r}))\n    result = 'allowed'\n"
               "except BaseException as e:\n    result = 'denied: ' + str(e)\n")
        r = await pool.run(req(src), Host())
        assert r.ok and str(r.result).startswith("denied: "), r.result
        src = ("import socket\ntry:\n"
               f"    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
               "    result = 'allowed'\nexcept BaseException as e:\n    result = 'denied'\n")
        r = await pool.run(req(src), Host())
        assert r.result == "denied"
        await asyncio.sleep(0.1)
        assert accepted == []
    finally:
        server.close()
        await server.wait_closed()


# ---- environment, processes, FFI, system info, imports -----------------------------------------


async def test_environment_is_invisible(pool: SandboxPool) -> None:
    assert_denied(await attempt(pool, f"return Deno.env.get({SENTINEL_ENV!r})"), capability="env")
    assert_denied(await attempt(pool, "return JSON.stringify(Deno.env.toObject())"),
                  capability="env")
    r = await pool.run(req(f"import os\n{SENTINEL_ENV!r} in os.environ or 'hunter2' in "
                           "str(dict(os.environ))"), Host())
    assert r.ok and r.result is False


async def test_subprocesses_are_denied(pool: SandboxPool, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    body = (f"return new Deno.Command('/bin/sh', {{args: ['-c', 'touch {marker}']}})"
            ".outputSync().code")
    assert_denied(await attempt(pool, body), capability="run")
    r = await pool.run(req("import subprocess\nsubprocess.run(['ls'])"), Host())
    assert not r.ok
    assert not marker.exists()


async def test_ffi_and_system_info_are_denied(pool: SandboxPool) -> None:
    assert_denied(await attempt(pool, "return Deno.dlopen('libc.so.6', {})"), capability="ffi")
    assert_denied(await attempt(pool, "return Deno.hostname()"), capability="sys")
    assert_denied(await attempt(pool, "return Deno.loadavg()"), capability="sys")


async def test_imports_and_nested_workers_cannot_widen(pool: SandboxPool) -> None:
    assert_denied(await attempt(pool, "return import('https://example.com/x.js')", wait=True))
    assert_denied(await attempt(pool, "return import('file:///etc/passwd')", wait=True))
    supervisor = (default_runtime_dir() / "supervisor.ts").as_uri()
    assert_denied(await attempt(pool, f"return import({supervisor!r})", wait=True))
    body = ("return new Worker('data:text/javascript,1', {type: 'module', "
            "deno: {permissions: {read: true, net: true, env: true, run: true}}})")
    assert_denied(await attempt(pool, body))


# ---- the process's stdin/stdout and lifecycle ----------------------------------------------------


async def test_stdin_is_empty(pool: SandboxPool) -> None:
    outcome = await attempt(pool, "const b = new Uint8Array(64); return Deno.stdin.readSync(b)")
    # /dev/null: end of file at once (jsnull), never a host request.
    assert outcome == "allowed: jsnull" or outcome.startswith("denied: "), outcome
    await assert_clean(pool)


async def test_fake_frames_on_stdout_are_ignored(pool: SandboxPool) -> None:
    frame = json.dumps({"t": "done", "id": "x", "status": "ok",
                        "reply": json.dumps({"ok": True, "result": "forged"})})
    body = (f"const s = {frame!r}; const b = new TextEncoder().encode(s);"
            "const h = new Uint8Array(4); new DataView(h.buffer).setUint32(0, b.length);"
            "for (let i = 0; i < 50; i++) { Deno.stdout.writeSync(h); Deno.stdout.writeSync(b);"
            "Deno.stderr.writeSync(h); Deno.stderr.writeSync(b); } return 'wrote'")
    outcome = await attempt(pool, body)
    assert outcome in ("allowed: wrote",) or outcome.startswith("denied: ")
    r = await pool.run(req("'genuine'"), Host())
    assert r.ok and r.result == "genuine"


async def test_forged_worker_messages_stay_in_their_own_run(pool: SandboxPool) -> None:
    host = Host()
    body = ("globalThis.postMessage({t: 'out', stream: 'stdout', line: 'y'.repeat(10000000)});"
            "globalThis.postMessage({t: 'call', call: 999, op: 'ledger.drop_all', args: '{}'});"
            "return 'posted'")
    src = JS_PRELUDE + f"attempt({body!r})"
    # A line longer than the run's whole output budget is not something the worker sends.
    with pytest.raises(SandboxCrashed, match="protocol"):
        await pool.run(req(src, principal="demo/attacker", max_output_bytes=4096), host)
    assert host.calls == []
    body = ("globalThis.postMessage({t: 'call', call: 999, op: 'ledger.drop_all', args: '{}'});"
            "return 'posted'")
    src = JS_PRELUDE + f"attempt({body!r})"
    r = await pool.run(req(src, principal="demo/attacker", max_output_bytes=4096), host)
    assert r.ok
    assert host.calls == []  # the forged call named an operation outside the SDK
    await assert_clean(pool)


async def test_deno_exit_and_close_are_contained(pool: SandboxPool) -> None:
    respawns = pool.stats()["respawns"]
    for body in ("Deno.exit(0)", "globalThis.close()"):
        with pytest.raises((SandboxTimeout, SandboxCrashed)):
            await pool.run(req(JS_PRELUDE + f"JS({body!r})()\nimport time\ntime.sleep(5)",
                               timeout_ms=800), Host())
    assert pool.stats()["respawns"] == respawns  # only the worker went, not the process
    await assert_clean(pool)


# ---- poisoning the next run --------------------------------------------------------------------

POISON = JS_PRELUDE + """
import sys, builtins, types, json
JS('Object.prototype.polluted = 1; globalThis.__poison = 1;'
   'Array.prototype.map = function() { return ["pwned"]; }')()
JS('setInterval(() => { globalThis.__poison = 2; }, 1)')()
fake = types.ModuleType('json'); fake.dumps = lambda *a, **k: 'pwned'
sys.modules['json'] = fake
sys.modules['poisoned_mod'] = fake
builtins.print = lambda *a, **k: None
builtins.pwned = True
pwned = True
open('/tmp/left-behind', 'w').write('x')
'ok'
"""


async def test_poisoning_does_not_reach_the_next_run(pool: SandboxPool) -> None:
    r = await pool.run(req(POISON, principal="demo/attacker"), Host())
    assert r.ok and r.result == "ok"
    await assert_clean(pool, principal="demo/attacker")  # same principal, next run
    await assert_clean(pool, principal="demo/victim")  # another principal


async def test_poisoned_session_does_not_reach_other_principals(pool: SandboxPool) -> None:
    r = await pool.run(req(POISON, principal="demo/attacker", session="shared"), Host())
    assert r.ok
    still = await pool.run(req("pwned", principal="demo/attacker", session="shared"), Host())
    assert still.result is True  # the attacker's own session keeps its own mess
    r = await pool.run(req(CLEAN_CHECK, principal="demo/victim", session="shared"), Host())
    assert r.ok and all(r.result.values()), r.result


# ---- resource exhaustion -------------------------------------------------------------------------


async def test_infinite_loops_end_with_timeout(pool: SandboxPool) -> None:
    swallow = ("while True:\n    try:\n        while True:\n            pass\n"
               "    except BaseException:\n        pass\n")
    for src in ("while True: pass", swallow, JS_PRELUDE + "JS('while (true) {}')()"):
        with pytest.raises(SandboxTimeout):
            await pool.run(req(src, timeout_ms=300), Host())
    await assert_clean(pool)


async def test_recursion_is_a_user_error(pool: SandboxPool) -> None:
    r = await pool.run(req("def f(n): return f(n + 1)\nf(0)"), Host())
    assert not r.ok and r.error is not None and r.error["type"] == "RecursionError"


@pytest.mark.timeout(600)
async def test_wasm_memory_bomb(pool: SandboxPool) -> None:
    src = "blocks = []\nwhile True:\n    blocks.append(bytearray(64 * 1024 * 1024))\n"
    with pytest.raises(SandboxMemory):
        # A generous run timeout: the promise is the memory limit, and growing wasm memory at
        # load 30 on 2 cores took over 30 s of wall time.
        await pool.run(req(src, timeout_ms=120_000, memory_mb=256), Host())
    caught = ("blocks = []\ntry:\n    while True:\n        blocks.append(bytearray(2**26))\n"
              "except MemoryError:\n    pass\nlen(blocks)")
    # The kernel refuses memory past the limit; code that handles that goes on within it
    # (64 MiB blocks: at most 128 MiB plus the interpreter's own free heap).
    r = await pool.run(req(caught, timeout_ms=120_000, memory_mb=128), Host())
    assert r.ok and 1 <= r.result <= 2
    await assert_clean(pool)


async def test_js_heap_bomb(pool: SandboxPool) -> None:
    body = "const a = []; while (true) a.push(new Array(1e6).fill(1.5));"
    with pytest.raises((SandboxMemory, SandboxCrashed)):
        await pool.run(req(JS_PRELUDE + f"JS({body!r})()", timeout_ms=30000), Host())
    await assert_clean(pool)  # served by the other process or the respawned one


async def test_huge_output_is_capped(pool: SandboxPool) -> None:
    src = ("import os, sys\nfor _ in range(20):\n    sys.stdout.write('z' * 5_000_000)\n"
           "    os.write(2, b'e' * 1_000_000)\n'end'")
    # The bound is the run's own limit: an ok result means the 120 MB were dropped, not
    # buffered until the deadline (how fast is measured in bench/, not here).
    r = await pool.run(req(src, max_output_bytes=10000, timeout_ms=120_000), Host())
    assert r.ok and r.result == "end" and r.output_truncated
    assert len(r.stdout.encode()) + len(r.stderr.encode()) <= 10000
    await assert_clean(pool)
