"""Nothing a run can reach persists beyond it or is shared (review round 3, finding 2).

A run reaches the worker's JS global scope and the Deno namespace through ``pyodide_js``
(docs/sandbox.md). Deno offers stores that need no permission: the Web Cache API persists under
``$DENO_DIR/location_data``, a ``data:`` import fills the module-analysis and code caches there,
``BroadcastChannel`` reaches every isolate of the process, and ``Deno[Deno.internal].core``
hands out raw ops. Two layers hold: the worker seals those APIs before user code runs
(runtimes/worker.ts ``sealGlobals``), and a serving process's DENO_DIR cannot exist
(gateway/sandbox/process.py ``sealed_deno_dir``) — so even an API that escapes the first layer
(a fresh isolate from ``node:worker_threads``) has nowhere to write.

One process (``workers=1``): every run below lands on the same Deno process, one after another,
as consecutive runs of different principals do in production.
"""

# ruff: noqa: E501
from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from waiting import scaled

from gateway.errors import SandboxCrashed, SandboxTimeout
from gateway.sandbox import SandboxPool, SandboxSettings, principal_key
from gateway.sandbox.process import sealed_deno_dir
from tests.sandbox_support import JS_PRELUDE, Host, req

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]

WRITER = principal_key("demo", "dev-agent")
READER = principal_key("demo", "dev-finance")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool() -> AsyncIterator[SandboxPool]:
    p = SandboxPool(SandboxSettings(workers=1, queue_timeout_s=240))
    await p.start()
    await p.wait_full(scaled(300))
    yield p
    await p.close()


def _tree(root: Path) -> dict[str, tuple[str, int, str]]:
    """Every path under ``root`` (sockets come and go with processes: not counted) with its
    kind, size and content digest."""
    out: dict[str, tuple[str, int, str]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_socket():
            continue
        if path.is_dir():
            out[str(path.relative_to(root))] = ("dir", 0, "")
        else:
            data = path.read_bytes()
            out[str(path.relative_to(root))] = ("file", len(data), hashlib.sha256(data).hexdigest())
    return out


def _private_dir(pool: SandboxPool) -> Path:
    tmp = pool._tmp  # the pool's 0700 directory: the only place its processes may touch
    assert tmp is not None
    return tmp


# Runs as a JS async function; returns a JSON report of what each probe did.
PROBES_JS = r"""
const M = MARKER;
const report = {};
const probe = async (name, f) => {
  try { report[name] = 'allowed: ' + String(await f()).slice(0, 300); }
  catch (e) { report[name] = 'denied: ' + String(e).slice(0, 300); }
};
const g = globalThis;
await probe('caches', async () => { const c = await caches.open('r3'); await c.put('http://x/k', new Response(M)); return 'stored'; });
await probe('caches-descriptor', () => JSON.stringify(Object.getOwnPropertyDescriptor(g, 'caches')));
await probe('caches-redefine', () => { Object.defineProperty(g, 'caches', { get() { return 1; } }); return typeof g.caches; });
await probe('caches-delete', () => String(delete g.caches) + ' ' + typeof g.caches);
await probe('cachestorage-proto', () => { const d = Object.getOwnPropertyNames(g.CacheStorage.prototype); return d.join(','); });
await probe('broadcast', () => { const b = new BroadcastChannel('r3'); b.postMessage(M); return 'posted'; });
await probe('indexedDB', () => typeof indexedDB.open);
await probe('localStorage', () => { localStorage.setItem('r3', M); return 'stored'; });
await probe('sessionStorage', () => { sessionStorage.setItem('r3', M); return 'stored'; });
await probe('locks', async () => JSON.stringify(await navigator.locks.query()));
await probe('locks-proto-getter', async () => { const d = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(navigator), 'locks'); return JSON.stringify(await d.get.call(navigator).query()); });
await probe('gpu', async () => String(await navigator.gpu.requestAdapter()));
await probe('storage', async () => String(await navigator.storage.persist()));
await probe('deno-internal', () => Object.keys(Deno[Deno.internal].core.ops).join(','));
await probe('deno-internal-symbols', () => Object.getOwnPropertySymbols(Deno).map((s) => typeof Deno[s]).join(','));
await probe('deno-internal-restore', () => { Deno[Deno.internal] = {}; return typeof Deno[Deno.internal]; });
await probe('nested-worker', () => { new Worker('data:text/javascript,1', { type: 'module' }); return 'started'; });
await probe('data-import', async () => (await import('data:text/javascript,export default ' + JSON.stringify(M))).default);
await probe('data-import-ts', async () => (await import('data:application/typescript,export const v: string = ' + JSON.stringify(M))).v);
await probe('node-fs', async () => { (await import('node:fs')).writeFileSync('/tmp/r3-' + M, M); return 'wrote'; });
await probe('node-sqlite-file', async () => { const m = await import('node:sqlite'); new m.DatabaseSync('/tmp/r3.db').exec('create table t(x)'); return 'wrote'; });
await probe('node-v8-flags', async () => { (await import('node:v8')).setFlagsFromString('--allow-natives-syntax'); return 'set'; });
await probe('builtin-bc', async () => { const m = process.getBuiltinModule('worker_threads'); const b = new m.BroadcastChannel('r3'); b.postMessage(M); b.close(); return 'posted'; });
// A fresh isolate, with unsealed globals: its Cache API has nowhere to write.
await probe('node-worker-caches', async () => {
  const { Worker } = await import('node:worker_threads');
  const src = "const { parentPort, workerData } = require('node:worker_threads');" +
    "(async () => { try { const c = await caches.open('r3'); await c.put('http://x/k', new Response(workerData)); parentPort.postMessage('stored'); }" +
    " catch (e) { parentPort.postMessage('denied: ' + e); } })();";
  const w = new Worker(src, { eval: true, workerData: M });
  return await new Promise((res) => { w.on('message', (m) => { w.terminate(); res(m); }); w.on('error', (e) => res('error: ' + e)); setTimeout(() => res('no answer'), 20000); });
});
return JSON.stringify(report);
"""

READ_JS = r"""
const report = {};
const probe = async (name, f) => {
  try { report[name] = String(await f()).slice(0, 300); }
  catch (e) { report[name] = 'denied: ' + String(e).slice(0, 300); }
};
await probe('caches', async () => { const r = await (await caches.open('r3')).match('http://x/k'); return r ? await r.text() : ''; });
await probe('localStorage', () => localStorage.getItem('r3'));
await probe('node-worker-caches', async () => {
  const { Worker } = await import('node:worker_threads');
  const src = "const { parentPort } = require('node:worker_threads');" +
    "(async () => { try { const r = await (await caches.open('r3')).match('http://x/k'); parentPort.postMessage(r ? await r.text() : ''); }" +
    " catch (e) { parentPort.postMessage('denied: ' + e); } })();";
  const w = new Worker(src, { eval: true });
  return await new Promise((res) => { w.on('message', (m) => { w.terminate(); res(m); }); w.on('error', (e) => res('error: ' + e)); setTimeout(() => res('no answer'), 20000); });
});
// Whatever is still broadcasting in this process (node's BroadcastChannel is not sealed).
await probe('builtin-bc', async () => {
  const m = process.getBuiltinModule('worker_threads');
  const b = new m.BroadcastChannel('r3');
  const got = [];
  b.onmessage = (e) => got.push(String(e.data));
  await new Promise((r) => setTimeout(r, 1500));
  b.close();
  return got.join('|');
});
return JSON.stringify(report);
"""


def _js_run(body: str, marker: str = "") -> str:
    return JS_PRELUDE + (
        "import json\n"
        f"body = {body!r}.replace('MARKER', json.dumps({marker!r}))\n"
        "result = json.loads(run_sync(JS('return (async () => {' + body + '})()')()))\n")


async def _report(pool: SandboxPool, source: str, principal: str) -> dict[str, str]:
    # Room for the fresh isolate a node:worker_threads Worker is (below 1 GiB, that Worker
    # ends the run: out of memory).
    r = await pool.run(req(source, principal=principal, timeout_ms=120_000, memory_mb=1024),
                       Host())
    assert r.ok, r.error
    assert isinstance(r.result, dict)
    return r.result


async def test_a_hostile_run_leaves_nothing_on_disk_or_for_the_next_principal(
        pool: SandboxPool) -> None:
    private = _private_dir(pool)
    before = _tree(private)
    marker = "R3-PERSIST-5f0c1e"
    wrote = await _report(pool, _js_run(PROBES_JS, marker), WRITER)
    # The sealed APIs are gone and stay gone.
    for name in ("caches", "broadcast", "indexedDB", "localStorage", "sessionStorage", "locks",
                 "locks-proto-getter", "gpu", "storage", "deno-internal", "nested-worker",
                 "caches-redefine", "cachestorage-proto"):
        assert wrote[name].startswith("denied:"), (name, wrote[name])
    assert wrote["caches-descriptor"] == (
        'allowed: {"writable":false,"enumerable":false,"configurable":false}'), wrote
    assert wrote["caches-delete"] == "allowed: false undefined", wrote
    assert wrote["deno-internal-symbols"] == "allowed: undefined", wrote
    assert wrote["deno-internal-restore"] == "allowed: undefined", wrote
    # Permission-checked stores stay refused.
    for name in ("node-fs", "node-sqlite-file"):
        assert wrote[name].startswith("denied:"), (name, wrote[name])
    # What is not sealed has nowhere to write: a fresh isolate's Cache API fails.
    assert "Failed to create cache storage directory" in wrote["node-worker-caches"], wrote
    # Later runs of another principal, on the same process, see none of it.
    for _ in range(2):
        seen = await _report(pool, _js_run(READ_JS), READER)
        assert marker not in json.dumps(seen), seen
    # Not one byte under the pool's private directory changed: DENO_DIR was never created.
    assert _tree(private) == before
    stop = private / "no-deno-dir"
    assert stop.is_file() and stop.stat().st_size == 0
    assert not sealed_deno_dir(private).exists()


BROADCAST_UNTIL_KILLED = JS_PRELUDE + """
JS('''
  const m = process.getBuiltinModule('worker_threads');
  const b = new m.BroadcastChannel('r3');
  setInterval(() => b.postMessage('R3-BC-LEAK'), 1);
''')()
import time
while True:
    time.sleep(0.001)
    run_sync(JS('return new Promise((r) => setTimeout(r, 1))')())
"""


async def test_a_broadcast_to_the_next_run_is_never_received(pool: SandboxPool) -> None:
    """node:worker_threads' BroadcastChannel cannot be sealed from JS; it reaches isolates of
    one process only, and a run's worker is terminated before the next one starts: a run that
    broadcasts until it is killed reaches no later run (the kill -> start window included)."""
    with pytest.raises(SandboxTimeout):
        await pool.run(req(BROADCAST_UNTIL_KILLED, principal=WRITER, timeout_ms=3000), Host())
    seen = await _report(pool, _js_run(READ_JS), READER)
    assert "R3-BC-LEAK" not in seen["builtin-bc"], seen


async def test_sealed_globals_do_not_break_ordinary_code(pool: SandboxPool) -> None:
    """What Pyodide and honest code use still works after sealing: Python, JS interop,
    timers, text codecs, crypto, structured clone."""
    source = JS_PRELUDE + """
import hashlib
v = JS('return [typeof setTimeout, typeof TextEncoder, typeof crypto.getRandomValues, '
       'typeof structuredClone, typeof caches, typeof Worker]')()
result = [list(v), hashlib.sha256(b'x').hexdigest()[:8]]
"""
    r = await pool.run(req(source, principal=READER), Host())
    assert r.ok, r.error
    assert r.result[0] == ["function", "function", "function", "function", "undefined", "undefined"]


# ---- the review's leads: other ways one run reached a later one, or hung -------------------

STDERR_MARKER = "R3-STDERR-8d1f"


async def test_a_runs_stderr_never_reaches_a_later_callers_error(pool: SandboxPool) -> None:
    """The process's stderr tail (kept to recognise V8 OOM) spanned every run it served and was
    copied into SandboxCrashed.details: a channel to the next principal whose run crashed."""
    write = JS_PRELUDE + (
        f"JS(\"console.error('{STDERR_MARKER}'); "
        f"Deno.stderr.writeSync(new TextEncoder().encode('{STDERR_MARKER}'))\")()\n"
        "result = 'written'\n")
    r = await pool.run(req(write, principal=WRITER), Host())
    assert r.ok and r.result == "written", r.error
    # The process that ran it now holds the marker in its stderr tail; it dies (as a process
    # does when a later run crashes it) and its death is what every run on it is told.
    (proc,) = [p for p in pool._slots if p is not None]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(60)
    while STDERR_MARKER not in proc.stderr_tail():
        assert loop.time() < deadline, "the run's stderr never reached the process's tail"
        await asyncio.sleep(0.05)
    await proc._die(None)
    assert isinstance(proc.death, SandboxCrashed)
    assert STDERR_MARKER not in json.dumps(proc.death.to_dict(), default=str)
    await pool.wait_full(scaled(300))  # the crashed process is replaced


class _HugeResult(Host):
    async def __call__(self, operation: str, args: dict[str, Any]) -> Any:
        self.calls.append((operation, args))
        return {"blob": "x" * (17 * 1024 * 1024)}  # past the 16 MiB host -> sandbox frame


async def test_a_host_call_result_too_large_for_the_channel_is_answered(
        pool: SandboxPool) -> None:
    """A reply past MAX_FRAME made proc.send raise outside _serve_call's try: the call was never
    answered and the run waited for its deadline. Now the code gets resource_exhausted, and
    the run (with a deadline far off) finishes on its own."""
    source = (
        "from sdk import ledger, SdkError\n"
        "try:\n"
        "    ledger.get_balance(account='A1')\n"
        "    result = 'answered with the value?'\n"
        "except SdkError as e:\n"
        "    result = [e.code, ledger.get_balance is not None]\n")
    host = _HugeResult()
    r = await pool.run(req(source, principal=READER, timeout_ms=600_000), host)
    assert r.ok, r.error
    assert r.result == ["resource_exhausted", True]
    assert len(host.calls) == 1


LEAVE_A_NODE_WORKER = JS_PRELUDE + r"""
JS('''
  const { Worker } = process.getBuiltinModule('worker_threads');
  const src = "const m = require('node:worker_threads'); const b = new m.BroadcastChannel('r3');" +
    "setInterval(() => b.postMessage('R3-ORPHAN'), 5);";
  globalThis.__orphan = new Worker(src, { eval: true });
''')()
# It is alive: this run hears it (so the later run's silence means something).
heard = run_sync(JS('''return new Promise((resolve) => {
  const m = process.getBuiltinModule('worker_threads');
  const b = new m.BroadcastChannel('r3');
  b.onmessage = (e) => { b.close(); resolve(String(e.data)); };
  setTimeout(() => { b.close(); resolve('nothing'); }, 30000);
})''')())
result = heard
"""


async def test_a_worker_started_by_a_run_does_not_outlive_it(pool: SandboxPool) -> None:
    """A node:worker_threads Worker (not sealed: a fresh isolate) left running when its run
    ends normally is terminated with the run's worker: a later run hears nothing from it."""
    r = await pool.run(req(LEAVE_A_NODE_WORKER, principal=WRITER, memory_mb=1024), Host())
    assert r.ok and r.result == "R3-ORPHAN", (r.result, r.error)
    seen = await _report(pool, _js_run(READ_JS), READER)
    assert "R3-ORPHAN" not in seen["builtin-bc"], seen
