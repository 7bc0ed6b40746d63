"""Containment, round 4: what a run's own objects can do to the code channel's bookkeeping.

Most of it is ordinary user code — no reach into ``pyodide_js`` or the runner's internals —
so every failure must come back as the run's own data (docs/sandbox.md: "user-code errors come
back as data, infrastructure errors raise"), and a session must survive it. Before round 4:

* an exception whose ``__str__`` raises, whose class's metaclass redefines ``__name__``, or an
  ``SdkError`` subclass with a non-string ``code`` made the runner's own error report raise:
  the interpreter was declared fatal, the run raised ``SandboxCrashed`` and its session ended;
  so did a ``sys.stdout`` whose ``flush`` raises ``SystemExit`` (the runner only caught
  ``Exception`` there);
* a result nested deeper than the host's parser accepts (513+ levels), or holding an integer
  past Python's digit limit (after ``sys.set_int_max_str_digits(0)``), was serialised by the
  runner as is, refused by the host as a malformed frame: ``SandboxCrashed``, session ended;
* output within ``max_output_bytes`` whose JSON escaping is larger than the channel's frame
  (control characters are 6 bytes each as ``\\u0001``) was a protocol violation;
* a Blob bomb (Deno's own Rust heap) was capped but reported as a plain crash, and the stderr
  tail that classifies a process's death spanned every run the process served: one
  principal's ``console.error("out of memory")`` made another's later crash SandboxMemory.

Held, pinned here: interpreter hooks (``sys.monitoring``, ``sys.setprofile``) that break the
runner fail only their own run and session; an asyncio task left running in a session never
reaches the host between runs.

Each test also checks the promise around it: the session's state is intact afterwards, and
the runs are counted as user errors, not crashes.
"""

# ruff: noqa: E402
from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

pytest.register_assert_rewrite("tests.sandbox_support")

from waiting import scaled

from gateway.errors import SandboxCrashed, SandboxError, SandboxMemory
from gateway.sandbox import RunResult, SandboxPool, SandboxSettings, principal_key
from tests.sandbox_support import JS_PRELUDE, Events, Host, req

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(600)]

ATTACKER = principal_key("demo", "round4-attacker")
OTHER = principal_key("demo", "round4-other")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool() -> AsyncIterator[SandboxPool]:
    p = SandboxPool(SandboxSettings(workers=2, max_sessions=8, max_sessions_per_principal=4,
                                    session_idle_s=600, queue_timeout_s=240))
    await p.start()
    await p.wait_full(scaled(300))
    yield p
    await p.close()


async def _in_a_session(pool: SandboxPool, source: str, **kw: object) -> RunResult:
    """Run ``source`` in a fresh session that holds a secret, then check the session lived."""
    session = f"r4-{uuid.uuid4().hex[:12]}"
    first = await pool.run(req("secret = 'kept-41'\n1", principal=ATTACKER, session=session),
                           Host())
    assert first.ok, first.error
    crashes = pool.stats()["crashes"]
    r = await pool.run(req(source, principal=ATTACKER, session=session, **kw),  # type: ignore[arg-type]
                       Host())
    assert pool.stats()["crashes"] == crashes, "a user-code failure was counted as a crash"
    after = await pool.run(req("secret", principal=ATTACKER, session=session), Host())
    assert after.ok and after.result == "kept-41", (after.result, after.error)
    return r


# ---- the runner's error report runs the code's own methods --------------------------------------

HOSTILE_ERRORS = {
    "str-raises": (
        "class E(Exception):\n"
        "    def __str__(self):\n"
        "        raise ValueError('no str for you')\n"
        "raise E()", "E"),
    "str-returns-a-non-string": (
        "class E(Exception):\n"
        "    def __str__(self):\n"
        "        return 42\n"
        "raise E()", "E"),
    "metaclass-name": (
        "class M(type):\n"
        "    @property\n"
        "    def __name__(cls):\n"
        "        return object()\n"
        "class E(Exception, metaclass=M):\n"
        "    pass\n"
        "raise E('x')", "E"),
    "metaclass-name-raises": (
        "class M(type):\n"
        "    @property\n"
        "    def __name__(cls):\n"
        "        raise SystemExit('from __name__')\n"
        "class E(Exception, metaclass=M):\n"
        "    pass\n"
        "raise E('x')", "E"),
    "sdk-error-code-object": (
        "import sdk\n"
        "e = sdk.SdkError('c', 'm')\n"
        "e.code = object()\n"
        "raise e", "SdkError"),
    "traceback-property": (
        "class E(Exception):\n"
        "    @property\n"
        "    def __traceback__(self):\n"
        "        raise KeyboardInterrupt\n"
        "raise E('x')", "E"),
    "class-claims-memory-error": (
        "class E(Exception):\n"
        "    @property\n"
        "    def __class__(self):\n"
        "        raise SystemExit('from __class__')\n"
        "raise E('x')", "E"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_ERRORS))
async def test_an_exception_that_fights_its_own_report_is_a_user_error(
        pool: SandboxPool, name: str) -> None:
    source, type_name = HOSTILE_ERRORS[name]
    r = await _in_a_session(pool, source)
    assert not r.ok and r.error is not None, r
    assert r.error["type"] == type_name, r.error
    assert all(isinstance(r.error[k], str) for k in ("type", "message", "traceback"))
    if "code" in r.error:
        assert isinstance(r.error["code"], str)


async def test_a_stream_whose_flush_raises_system_exit_is_not_fatal(pool: SandboxPool) -> None:
    source = ("import sys\n"
              "class W:\n"
              "    def write(self, s):\n"
              "        return len(s)\n"
              "    def flush(self):\n"
              "        raise SystemExit(3)\n"
              "sys.stdout = W()\n"
              "sys.stderr = W()\n"
              "'returned'")
    r = await _in_a_session(pool, source)
    assert r.ok and r.result == "returned", (r.result, r.error)


# ---- results the host's parser would refuse -----------------------------------------------------

async def test_a_result_nested_past_the_wire_bound_comes_back_as_repr(pool: SandboxPool) -> None:
    r = await _in_a_session(pool, "x = []\nfor _ in range(600):\n    x = [x]\nx")
    assert r.ok, r.error
    assert isinstance(r.result, dict) and r.result["type"] == "list"
    assert r.result["repr"].startswith("[" * 600)


async def test_a_result_nested_objects_past_the_wire_bound_comes_back_as_repr(
        pool: SandboxPool) -> None:
    # Mixed objects and arrays: each level counts once (not twice for "{[" nor zero times).
    r = await _in_a_session(
        pool, "x = 1\nfor i in range(513):\n    x = {'a': x} if i % 2 else [x]\nx")
    assert r.ok, r.error
    assert isinstance(r.result, dict) and r.result["type"] == "list", r.result  # i = 512: a list
    assert r.result["repr"].startswith("[{'a': [{'a': ")


async def test_a_result_just_within_the_wire_bound_is_json(pool: SandboxPool) -> None:
    r = await pool.run(req("x = 1\nfor i in range(511):\n    x = {'a': x} if i % 2 else [x]\nx",
                           principal=OTHER), Host())
    assert r.ok, r.error
    depth, value = 0, r.result
    while isinstance(value, dict | list):
        value = value["a"] if isinstance(value, dict) else value[0]
        depth += 1
    assert depth == 511 and value == 1


async def test_strings_full_of_brackets_are_not_nesting(pool: SandboxPool) -> None:
    r = await pool.run(req("['[' * 5000, '{' * 5000, '\"' + '[' * 600]", principal=OTHER), Host())
    assert r.ok and r.result == ["[" * 5000, "{" * 5000, '"' + "[" * 600], r.error


async def test_an_integer_past_the_host_digit_limit_is_not_a_crash(pool: SandboxPool) -> None:
    # The code lifts its own interpreter's digit limit; the host's stays: the value comes back
    # as its repr (a string), and the code's own setting is left as it was.
    source = ("import sys\n"
              "sys.set_int_max_str_digits(0)\n"
              "big = 10 ** 5000\n"
              "result = {'n': big}\n")
    r = await _in_a_session(pool, source)
    assert r.ok, r.error
    assert isinstance(r.result, dict) and r.result["type"] == "dict"
    assert "1" + "0" * 5000 in r.result["repr"]
    session = f"r4-{uuid.uuid4().hex[:12]}"
    await pool.run(req("import sys\nsys.set_int_max_str_digits(0)\n10 ** 5000\nNone",
                       principal=ATTACKER, session=session), Host())
    kept = await pool.run(req("import sys\nsys.get_int_max_str_digits()", principal=ATTACKER,
                              session=session), Host())
    assert kept.ok and kept.result == 0, (kept.result, kept.error)


async def test_an_integer_within_the_digit_limit_is_still_json(pool: SandboxPool) -> None:
    r = await pool.run(req("10 ** 4000", principal=OTHER), Host())
    assert r.ok and r.result == 10 ** 4000, r.error


async def test_rebinding_sys_does_not_defeat_the_digit_limit(pool: SandboxPool) -> None:
    source = ("import sys\n"
              "sys.set_int_max_str_digits(0)\n"
              "sys.set_int_max_str_digits = lambda n: None\n"
              "sys.get_int_max_str_digits = lambda: 0\n"
              "[10 ** 6000]")
    r = await _in_a_session(pool, source)
    assert r.ok and isinstance(r.result, dict) and r.result["type"] == "list", r.result


# ---- output within budget, whatever its JSON escaping costs ------------------------------------

async def test_output_that_escapes_six_fold_is_delivered_whole(pool: SandboxPool) -> None:
    # 3 MB of control characters is 18 MB as JSON (\u0001 each): past the channel's 8 MiB
    # frame if sent as one event. Within max_output_bytes, it must arrive, byte for byte.
    events = Events()
    session = f"r4-{uuid.uuid4().hex[:12]}"
    await pool.run(req("secret = 'kept-41'", principal=ATTACKER, session=session), Host())
    r = await pool.run(req("print('\\x01' * 3_000_000)\n'printed'", principal=ATTACKER,
                           session=session, max_output_bytes=3_200_000), Host(), events)
    assert r.ok and r.result == "printed", (r.result, r.error)
    assert not r.output_truncated
    assert r.stdout == "\x01" * 3_000_000 + "\n"
    # Streamed as one line, as before: pieces are joined before the consumer sees them.
    assert [len(e.data["line"]) for e in events.items if e.kind == "stdout"] == [3_000_000]
    after = await pool.run(req("secret", principal=ATTACKER, session=session), Host())
    assert after.ok and after.result == "kept-41", after.error


async def test_a_long_line_of_surrogate_pairs_is_never_split_inside_a_character(
        pool: SandboxPool) -> None:
    # 300,000 emoji are 600,000 UTF-16 units: more than one piece, and every piece boundary
    # falls where a pair could be split.
    r = await pool.run(req("import sys\nprint('\\U0001F600' * 300_000, file=sys.stderr)",
                           principal=OTHER, max_output_bytes=1_300_000), Host())
    assert r.ok, r.error
    assert not r.output_truncated
    assert r.stderr == "\U0001F600" * 300_000 + "\n"


@pytest.mark.parametrize(("budget", "truncated"), [(300_001, False), (300_000, True)])
async def test_the_byte_budget_is_exact_across_pieces(
        pool: SandboxPool, budget: int, truncated: bool) -> None:
    r = await pool.run(req("print('a' * 300_000)\nprint('b')", principal=OTHER,
                           max_output_bytes=budget), Host())
    assert r.ok, r.error
    assert r.output_truncated is True  # 'b' never fits
    assert len(r.stdout.encode()) <= budget
    if truncated:
        assert r.stdout == "a" * 299_999 + "\n"
    else:
        assert r.stdout == "a" * 300_000 + "\n"


async def test_interleaved_streams_keep_their_own_lines(pool: SandboxPool) -> None:
    source = ("import sys\n"
              "sys.stdout.write('x' * 400_000)\n"
              "print('err-line', file=sys.stderr)\n"
              "sys.stdout.write('y' * 10 + '\\n')\n"
              "print('tail')")
    r = await pool.run(req(source, principal=OTHER, max_output_bytes=1_000_000), Host())
    assert r.ok, r.error
    assert r.stdout == "x" * 400_000 + "y" * 10 + "\ntail\n"
    assert r.stderr == "err-line\n"


# ---- memory outside the JS heap and wasm, and whose stderr decides the verdict -----------------

BLOB_BOMB = JS_PRELUDE + """
JS('const chunk = new Uint8Array(16 << 20).fill(7); const a = [];'
   'for (let i = 0; i < 4096; i++) a.push(new Blob([chunk])); return a.length')()
"""


async def test_a_blob_bomb_is_capped_and_reported_as_memory(pool: SandboxPool) -> None:
    # Blob bytes live in Deno's own (Rust) heap: RLIMIT_DATA refuses them too, and Rust's
    # allocator then aborts the process with "memory allocation of N bytes failed" — which
    # was reported as a plain crash ("the sandbox process exited"), not as the memory limit.
    memory = pool.stats()["memory"]
    with pytest.raises(SandboxMemory):
        await pool.run(req(BLOB_BOMB, principal=ATTACKER, memory_mb=256), Host())
    assert pool.stats()["memory"] == memory + 1
    r = await pool.run(req("6 * 7", principal=OTHER), Host())
    assert r.ok and r.result == 42


FAKE_OOM = JS_PRELUDE + """
JS('console.error("Fatal JavaScript out of memory: heap limit; allocation failed"); return 1')()
"""


async def test_an_earlier_runs_stderr_does_not_decide_a_later_runs_error() -> None:
    """One process (so both runs land on it): the attacker writes V8's out-of-memory words to
    the process's stderr; the victim's next run on that process dies for another reason (its
    process is killed during a host call). Before round 4 the victim got SandboxMemory: the
    stderr tail that classifies a death spanned every run the process had served."""
    p = SandboxPool(SandboxSettings(workers=1, queue_timeout_s=240))
    await p.start()
    try:
        r = await p.run(req(FAKE_OOM, principal=ATTACKER), Host())
        assert r.ok, r.error

        async def kill_mid_call(operation: str, args: dict[str, object]) -> object:
            proc = p._slots[0]
            assert proc is not None and proc.pid is not None
            os.kill(proc.pid, signal.SIGKILL)
            await asyncio.sleep(0.2)
            return {"balance": 1}

        with pytest.raises(SandboxError) as info:
            await p.run(req("import sdk\nsdk.ledger.get_balance(account='A1')",
                            principal=OTHER), kill_mid_call)
        assert not isinstance(info.value, SandboxMemory), info.value
        assert isinstance(info.value, SandboxCrashed), info.value
    finally:
        await p.close()


# ---- interpreter hooks, and tasks left behind in a session -------------------------------------

# Hooks that fire in the runner's own frames after the code is done. The code owns its
# interpreter, so it can break the runner this way (like os._exit): that run raises and its
# session ends. The promise held here is the blast radius: nobody else notices.
HOOKS = {
    "sys.monitoring": (
        "import sys\n"
        "m = sys.monitoring\n"
        "m.use_tool_id(3, 'sabotage')\n"
        "def cb(code, offset):\n"
        "    if code.co_filename != '<code>':\n"
        "        raise RuntimeError('sabotage')\n"
        "m.register_callback(3, m.events.PY_START, cb)\n"
        "m.set_events(3, m.events.PY_START)\n"
        "x = 1"),
    "setprofile-on-return": (
        "import sys\n"
        "def p(frame, event, arg):\n"
        "    if event == 'return' and frame.f_code.co_name == 'run':\n"
        "        raise RuntimeError('sabotage')\n"
        "sys.setprofile(p)\n"
        "x = 1"),
}


@pytest.mark.parametrize("name", sorted(HOOKS))
async def test_hooks_that_break_the_runner_fail_only_their_own_run(
        pool: SandboxPool, name: str) -> None:
    victim = f"r4-victim-{uuid.uuid4().hex[:8]}"
    attacker = f"r4-hooks-{uuid.uuid4().hex[:8]}"
    for principal, session in ((OTHER, victim), (ATTACKER, attacker)):
        r = await pool.run(req("secret = 'kept-41'", principal=principal, session=session),
                           Host())
        assert r.ok, r.error
    with pytest.raises(SandboxCrashed):
        await pool.run(req(HOOKS[name], principal=ATTACKER, session=attacker), Host())
    # Its session ended (the next run with the id starts afresh, without the hooks) ...
    fresh = await pool.run(req("'secret' in globals()", principal=ATTACKER, session=attacker),
                           Host())
    assert fresh.ok and fresh.result is False, (fresh.result, fresh.error)
    # ... and the other principal's session and isolated runs never noticed.
    kept = await pool.run(req("secret", principal=OTHER, session=victim), Host())
    assert kept.ok and kept.result == "kept-41", kept.error
    r = await pool.run(req("6 * 7", principal=OTHER), Host())
    assert r.ok and r.result == 42


LEAVE_A_TASK = """
import asyncio, sdk
tries = []
async def keep_calling():
    for _ in range(20):
        await asyncio.sleep(0.02)
        try:
            sdk.ledger.get_balance(account='A1')
            tries.append('reached')
        except BaseException as exc:
            tries.append(type(exc).__name__)
task = asyncio.ensure_future(keep_calling())
'left running'
"""


async def test_a_task_left_running_in_a_session_never_calls_the_host_between_runs(
        pool: SandboxPool) -> None:
    """The task's calls while no run is active find no host channel (an SdkError it can
    catch) and reach nobody; the session is not ended by an idle worker speaking."""
    session = f"r4-task-{uuid.uuid4().hex[:8]}"
    host = Host()
    r = await pool.run(req(LEAVE_A_TASK, principal=ATTACKER, session=session), host)
    assert r.ok and r.result == "left running", r.error
    calls_by_runs = len(host.calls)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + scaled(120)
    while True:  # poll with runs of the session itself until the task has finished
        poll = await pool.run(req("[task.done(), list(tries)]", principal=ATTACKER,
                                  session=session), Host())
        assert poll.ok, poll.error
        done, tries = poll.result
        if done:
            break
        assert loop.time() < deadline, tries
    assert len(tries) == 20
    # No call ever reached the run's host handler after that run returned.
    assert len(host.calls) == calls_by_runs == 0


# ---- the gateway keeps serving, and other principals never notice -------------------------------

async def test_other_principals_are_served_throughout(pool: SandboxPool) -> None:
    events = Events()
    r = await pool.run(req("print('hello')\n6 * 7", principal=OTHER), Host(), events)
    assert r.ok and r.result == 42 and r.stdout == "hello\n"
    assert [e.data["line"] for e in events.items] == ["hello"]
