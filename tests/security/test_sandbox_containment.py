"""Containment of hostile code, tried the way an attacker would (review classes 1, 2, 3, 9).

* nothing writable is shared between interpreters (the snapshot, typed arrays, the process);
* memory limits cover everything a run allocates (wasm, JS heap, ArrayBuffers) and are enforced
  by the kernel (RLIMIT_DATA set from the host), so a run cannot commit past its ``memory_mb``;
* the blast radius of a run is its own process: while it crashes, bombs memory or breaks the
  wire protocol, other principals' runs and sessions carry on with zero failures;
* per-principal session quotas and an unambiguous principal key.

Sandboxed code reaches the worker's JS global scope and the Deno namespace through
``pyodide_js`` (docs/sandbox.md), so every attack here goes straight for them.
"""

# ruff: noqa: E402, E501
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

pytest.register_assert_rewrite("tests.sandbox_support")

from waiting import scaled

from gateway.errors import ResourceExhausted, SandboxCrashed, SandboxMemory, SandboxTimeout
from gateway.sandbox import SandboxPool, SandboxSettings, principal_key
from tests.sandbox_support import JS_PRELUDE, Host, req

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]

MIB = 1024 * 1024
ATTACKER = principal_key("demo", "attacker")
VICTIM = principal_key("demo", "victim")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool() -> AsyncIterator[SandboxPool]:
    # Generous queueing: on a loaded machine process starts are slow, and a victim that waits
    # for an idle process must not be mistaken for one the attack hurt.
    p = SandboxPool(SandboxSettings(workers=3, max_sessions=6, max_sessions_per_principal=2,
                                    session_idle_s=600, queue_timeout_s=240))
    await p.start()
    await p.wait_full(scaled(300))  # the attacks need every process (start() waits for one)
    yield p
    await p.close()


async def _wait_idle(pool: SandboxPool, n: int, timeout_s: float = 120.0) -> None:
    """Wait until n processes are idle (recycled or respawned) — a condition, not a sleep."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while pool.stats()["idle"] < n:
        assert loop.time() < deadline, pool.stats()
        await asyncio.sleep(0.05)


# ---- class 1: nothing writable is shared --------------------------------------------------------

TAMPER_SNAPSHOT = JS_PRELUDE + """
snap = pyodide_js._api.config._loadSnapshot
kind = JS('return (s) => [Object.prototype.toString.call(s.buffer), s.length]')()(snap)
JS('return (s) => { for (let i = 0; i < s.length; i += 4096) s[i] = 0x5A; s.set([83,66,80,87,78], 64) }')()(snap)
list(kind)
"""

READ_SNAPSHOT = JS_PRELUDE + """
snap = pyodide_js._api.config._loadSnapshot
seen = JS('return (s) => { let z = 0; for (let i = 0; i < s.length; i += 4096) if (s[i] === 0x5A) z++; '
          'return [z, String.fromCharCode(...s.slice(64, 69)), '
          'Object.prototype.toString.call(s.buffer)] }')()(snap)
list(seen)
"""


async def test_snapshot_writes_never_reach_another_interpreter(pool: SandboxPool) -> None:
    """The review's critical break: the snapshot was one SharedArrayBuffer posted to every
    worker, so a write by one principal ran in every later interpreter of that process."""
    r = await pool.run(req(TAMPER_SNAPSHOT, principal=ATTACKER), Host())
    assert r.ok, r.error
    assert r.result[0] == "[object ArrayBuffer]"  # a private buffer, not a SharedArrayBuffer
    await _wait_idle(pool, 3)
    # Ten later runs (on every process, including the one the attacker used) restore cleanly
    # from untouched bytes: no marker, and the interpreter works.
    for _ in range(10):
        seen = await pool.run(req(READ_SNAPSHOT, principal=VICTIM), Host())
        assert seen.ok, seen.error
        pages = int(seen.result[0])
        assert seen.result[1] != "SBPWN" and pages < 100, seen.result
        assert seen.result[2] == "[object ArrayBuffer]"


async def test_no_shared_memory_is_reachable_from_the_interpreter(pool: SandboxPool) -> None:
    """The memory sandboxed code can reach — the snapshot it was restored from, the wasm heap,
    and whatever hangs off the worker's global scope — is never a SharedArrayBuffer (the only
    kind of memory two isolates can both write)."""
    src = JS_PRELUDE + """
JS('''return (api) => {
  const shared = (v) => v instanceof SharedArrayBuffer ||
    (ArrayBuffer.isView(v) && v.buffer instanceof SharedArrayBuffer);
  const found = [];
  const known = {
    "_api.config._loadSnapshot": () => api._api.config._loadSnapshot,
    "_module.HEAPU8": () => api._module.HEAPU8,
    "_module.wasmMemory.buffer": () => api._module.wasmMemory && api._module.wasmMemory.buffer,
  };
  for (const [name, get] of Object.entries(known)) {
    let v; try { v = get(); } catch (e) { continue; }
    if (shared(v)) found.push(name);
  }
  const seen = new Set(); const stack = [[globalThis, "globalThis"]]; let steps = 0;
  while (stack.length && steps++ < 20000) {
    const [v, path] = stack.pop();
    if (v === null || (typeof v !== "object" && typeof v !== "function") || seen.has(v)) continue;
    seen.add(v);
    if (shared(v)) { found.push(path); continue; }
    if (ArrayBuffer.isView(v) || v instanceof ArrayBuffer) continue;
    let keys = [];
    try { keys = Array.isArray(v) ? [] : Reflect.ownKeys(v).slice(0, 500); } catch (e) { continue; }
    for (const k of keys) {
      let child; try { child = v[k]; } catch (e) { continue; }
      stack.push([child, (path + "." + String(k)).slice(-160)]);
    }
  }
  return found.join(";");
}''')()(pyodide_js)
"""
    r = await pool.run(req(src, principal=ATTACKER, timeout_ms=60000), Host())
    assert r.ok, r.error
    assert r.result == "", f"shared memory reachable at {r.result}"


# ---- class 2: memory limits cover everything ----------------------------------------------------

ARRAYBUFFER_BOMB = JS_PRELUDE + """
JS('''return () => { const bs = []; for (let i = 0; i < 30; i++) {
  const b = new Uint8Array(100 * 1024 * 1024); b.fill(1); bs.push(b); } return bs.length }''')()()
"""
STRING_BOMB = JS_PRELUDE + """
JS('''return () => { const a = []; const td = new TextDecoder();
  const u = new Uint8Array(1 << 20).fill(120);
  for (let i = 0; i < 4000; i++) a.push(td.decode(u) + i); return a.length }''')()()
"""
WASM_BOMB = "blocks = []\nwhile True:\n    blocks.append(bytearray(32 * 1024 * 1024))\n"
JS_HEAP_BOMB = JS_PRELUDE + (
    "JS('const a = []; while (true) a.push(new Array(1e6).fill(1.5));')()")


async def _peak_rss(pool: SandboxPool, stop: asyncio.Event, peaks: dict[int, int]) -> None:
    while not stop.is_set():
        for pid, rss in pool.stats()["rss_bytes"].items():
            peaks[pid] = max(peaks.get(pid, 0), rss)
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("name,source", [
    ("arraybuffer", ARRAYBUFFER_BOMB), ("string", STRING_BOMB), ("wasm", WASM_BOMB),
    ("js-heap", JS_HEAP_BOMB)])
async def test_every_kind_of_memory_is_capped(pool: SandboxPool, name: str, source: str) -> None:
    """3 GiB of ArrayBuffers once committed under memory_mb=256 and returned OK. Every kind of
    allocation now ends as sandbox_memory (or, for a V8 heap abort, the crash of the run's own
    process), and the process's resident memory stays within baseline + limit + slack."""
    await _wait_idle(pool, 3)
    before = max(pool.stats()["rss_bytes"].values())
    stop, peaks = asyncio.Event(), {}
    watcher = asyncio.create_task(_peak_rss(pool, stop, peaks))
    try:
        with pytest.raises((SandboxMemory, SandboxCrashed)) as info:
            await pool.run(req(source, principal=ATTACKER, memory_mb=256, timeout_ms=60000),
                           Host())
    finally:
        stop.set()
        await watcher
    if name in ("arraybuffer", "wasm"):  # a V8 heap abort is seen as its process's death
        assert isinstance(info.value, SandboxMemory), info.value
    # Sampled every 10 ms: the kernel refuses allocations past the limit, so the peak stays
    # below the baseline plus the 256 MiB allowance plus V8's own bookkeeping slack.
    assert max(peaks.values()) < before + 256 * MIB + 160 * MIB, (name, before, peaks)
    r = await pool.run(req("'after'", principal=VICTIM), Host())
    assert r.ok and r.result == "after"


async def test_a_caught_memory_error_stays_within_the_limit(pool: SandboxPool) -> None:
    src = ("blocks = []\ntry:\n    while True:\n        blocks.append(bytearray(2**24))\n"
           "except MemoryError:\n    pass\nlen(blocks)")
    r = await pool.run(req(src, principal=ATTACKER, memory_mb=128, timeout_ms=30000), Host())
    # Refused by the kernel at the limit; code that handles MemoryError goes on within it.
    # (The restored interpreter's own free heap, ~30 MiB, is part of its baseline.)
    assert r.ok and 0 < r.result * 16 <= 128 + 32, r.result


# ---- class 3: the blast radius of a run is its own process -------------------------------------

def _post(frame_js: str) -> str:
    return JS_PRELUDE + f"JS({('globalThis.postMessage(' + frame_js + ')')!r})()\nimport time\ntime.sleep(3)"


ATTACKS: dict[str, str] = {
    # a host-call frame over 16 MiB: once forwarded unchecked, it ended the whole process
    "oversized-call": _post("{t: 'call', call: 1, op: 'ledger.get_balance', args: 'x'.repeat(17 * 1024 * 1024)}"),
    "oversized-result": _post("{t: 'done', reply: 'r'.repeat(12 * 1024 * 1024), truncated: false}"),
    "unknown-frame": _post("{t: 'pwn', id: 'someone-else'}"),
    "not-a-frame": _post("'just a string'"),
    "bad-call-id": _post("{t: 'call', call: -1, op: 'x', args: '{}'}"),
    "call-flood": JS_PRELUDE + "JS('for (let i = 1; i < 100000; i++) globalThis.postMessage("
                               "{t: \"call\", call: i, op: \"ledger.get_balance\", args: \"{}\"}); "
                               "')()\nimport time\ntime.sleep(3)",
    "output-flood": JS_PRELUDE + "JS('for (let i = 0; i < 200000; i++) globalThis.postMessage("
                                 "{t: \"out\", stream: \"stdout\", line: \"spam\"});')()\n'x'",
    "js-heap": JS_HEAP_BOMB,
    "arraybuffer": ARRAYBUFFER_BOMB,
    "deno-exit": JS_PRELUDE + "JS('Deno.exit(7)')()\nimport time\ntime.sleep(5)",
    "infinite-loop": "while True: pass",
}

VICTIM_WORK = "from sdk import ledger\nsum(ledger.get_balance(account='A1')['balance'] for _ in range(3))"


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_one_bad_run_fails_alone(pool: SandboxPool, attack: str) -> None:
    """While each attack runs, another principal's session and isolated runs all succeed, and
    the session keeps its state afterwards."""
    await _wait_idle(pool, 2)
    session = f"victim-{attack}"
    r = await pool.run(req("state = 41\nstate", principal=VICTIM, session=session), Host())
    assert r.ok and r.result == 41
    bad = asyncio.create_task(pool.run(
        req(ATTACKS[attack], principal=ATTACKER, timeout_ms=6000, memory_mb=256,
            max_output_bytes=4096), Host()))
    failures: list[BaseException] = []
    ok = {"isolated": 0, "session": 0}
    while not bad.done() or ok["session"] < 2:
        for kind, coro in (
                ("isolated", pool.run(req(VICTIM_WORK, principal=VICTIM), Host())),
                ("session", pool.run(req("state += 1\nstate", principal=VICTIM, session=session),
                                     Host()))):
            try:
                res = await coro
                assert res.ok, res.error
                ok[kind] += 1
            except BaseException as exc:  # any failure of the victim counts
                failures.append(exc)
        if ok["session"] > 200:
            break
    outcome: Any
    try:
        outcome = await bad
    except BaseException as exc:
        outcome = exc
    assert failures == [], f"innocent runs failed during {attack}: {failures[:3]}"
    final = await pool.run(req("state", principal=VICTIM, session=session), Host())
    assert final.ok and final.result == 41 + ok["session"], (final.result, ok)
    # The attacker's own run got a clear outcome: a sandbox error or its own truncated data.
    if attack in ("output-flood",):
        # Its output is cut at max_output_bytes; on a busy machine the 200,000 frames may
        # outlast its own 6 s deadline first — either way it ends, and only it.
        assert isinstance(outcome, SandboxTimeout) or (
            not isinstance(outcome, BaseException) and outcome.output_truncated), outcome
    else:
        assert isinstance(outcome, SandboxCrashed | SandboxMemory | SandboxTimeout), outcome


async def test_protocol_violations_name_the_break(pool: SandboxPool) -> None:
    with pytest.raises(SandboxCrashed, match="protocol"):
        await pool.run(req(ATTACKS["oversized-call"], principal=ATTACKER), Host())
    host = Host()
    with pytest.raises(SandboxCrashed, match="protocol"):
        await pool.run(req(ATTACKS["call-flood"], principal=ATTACKER, max_host_calls=5), host)
    assert len(host.calls) <= 6  # the budget plus the one refused past it, never the flood


# ---- class 9: sessions --------------------------------------------------------------------------

async def test_one_principal_cannot_evict_another_s_sessions(pool: SandboxPool) -> None:
    r = await pool.run(req("mine = 'victim'\nmine", principal=VICTIM, session="keep"), Host())
    assert r.ok
    for i in range(6):  # more sessions than the per-principal quota (2) and the global cap (6)
        with contextlib.suppress(ResourceExhausted):
            await pool.run(req(f"x = {i}", principal=ATTACKER, session=f"s{i}"), Host())
    assert sum(1 for k in pool._sessions if k[0] == ATTACKER) <= 2
    still = await pool.run(req("mine", principal=VICTIM, session="keep"), Host())
    assert still.ok and still.result == "victim"


class Gate(Host):
    """A host whose calls wait until the test opens the gate: runs stay busy on a condition."""

    def __init__(self) -> None:
        super().__init__()
        self.open = asyncio.Event()
        self.waiting = 0

    async def __call__(self, operation: str, args: dict[str, Any]) -> Any:
        self.waiting += 1
        await self.open.wait()
        return await super().__call__(operation, args)


async def test_a_busy_quota_is_a_clear_error(pool: SandboxPool) -> None:
    gate = Gate()
    busy = "from sdk import ledger\nledger.get_balance(account='A1')['balance']"
    hold = [asyncio.create_task(pool.run(req(busy, principal=ATTACKER, session=f"busy{i}",
                                             timeout_ms=600_000), gate)) for i in range(2)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 240
    while gate.waiting < 2:  # both sessions are running, blocked in a host call
        assert loop.time() < deadline, pool.stats()
        assert not any(t.done() for t in hold), [t.result() for t in hold if t.done()]
        await asyncio.sleep(0.02)
    with pytest.raises(ResourceExhausted) as info:
        await pool.run(req("1", principal=ATTACKER, session="third"), Host())
    assert info.value.field == "session_id"
    gate.open.set()
    for task in hold:
        r = await task
        assert r.ok and r.result == 100


async def test_concurrent_session_starts_respect_the_quota(pool: SandboxPool) -> None:
    """Quota checks and creation race across the await for a process: counted as pending."""
    results = await asyncio.gather(*(
        pool.run(req("import time\ntime.sleep(1)", principal=ATTACKER, session=f"race{i}"),
                 Host()) for i in range(5)), return_exceptions=True)
    assert sum(1 for k in pool._sessions if k[0] == ATTACKER) <= 2
    assert any(isinstance(r, ResourceExhausted) for r in results), results


async def test_principal_keys_are_unambiguous() -> None:
    assert principal_key("a/b", "c") != principal_key("a", "b/c")
    assert principal_key("a", "b") != principal_key("a\"", "b")
    assert principal_key("t", "x") == principal_key("t", "x")


async def test_an_honest_oversized_call_is_a_user_error_not_a_violation(pool: SandboxPool) -> None:
    """Only forged frames break the protocol: the SDK refuses an oversized call itself."""
    host = Host()
    src = "from sdk import workspace\nworkspace.send_email(to='a@b.c', subject='s', body='x' * (2 * 1024 * 1024))"
    r = await pool.run(req(src, principal=VICTIM), host)
    assert not r.ok and r.error is not None and r.error.get("code") == "resource_exhausted"
    assert host.calls == []
