"""The sandbox pool end to end: real Deno processes, real Pyodide, a real async host handler."""

# ruff: noqa: E402
from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

# The shared fixtures module is also a plugin (below): have its asserts rewritten first.
pytest.register_assert_rewrite("tests.sandbox_support")

from waiting import scaled, wait_until

from gateway.errors import (
    ConfigError,
    InvalidRequest,
    SandboxCrashed,
    SandboxError,
    SandboxTimeout,
)
from gateway.sandbox import SandboxPool, SandboxSettings
from tests.sandbox_support import Events, Host, req

pytest_plugins = ("tests.sandbox_support",)
pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]


@pytest.fixture
def pool(sandbox_pool: SandboxPool) -> SandboxPool:
    return sandbox_pool


async def assert_no_leaked_workers(pool: SandboxPool) -> None:
    """Every live process is idle with a fresh interpreter: none is left running a run."""
    stats: list[dict[str, int]] = []

    async def all_idle() -> bool:
        nonlocal stats
        try:
            stats = await pool.isolate_stats()
        except TimeoutError:  # a supervisor slow to answer (busy machine): ask again
            return False
        return bool(stats) and all(not s["busy"] and s["worker"] and s["ready"] for s in stats)

    try:
        await wait_until(all_idle, interval=0.1)
    except AssertionError:
        raise AssertionError(f"leaked workers: {stats}") from None


async def some_run_is_executing(pool: SandboxPool) -> None:
    """Wait until a supervisor reports its interpreter busy: the run really is executing (on a
    loaded machine getting there can take far longer than any fixed sleep)."""
    async def busy() -> bool:
        try:
            return any(s["busy"] for s in await pool.isolate_stats())
        except TimeoutError:  # a supervisor slow to answer (busy machine): ask again
            return False

    await wait_until(busy, interval=0.1, what="a run executing in the sandbox")


# ---- results --------------------------------------------------------------------------------


async def test_last_expression_is_the_result(pool: SandboxPool) -> None:
    r = await pool.run(req("x = 20\nx * 2 + 2"), Host())
    assert r.ok and r.result == 42 and r.error is None and r.host_calls == 0
    assert r.duration_ms > 0


async def test_result_variable_and_inputs(pool: SandboxPool) -> None:
    r = await pool.run(req("result = {'sum': sum(inputs['xs'])}", inputs={"xs": [1, 2, 3]}), Host())
    assert r.ok and r.result == {"sum": 6}


async def test_non_json_result_comes_back_as_repr(pool: SandboxPool) -> None:
    r = await pool.run(req("{1, 2}"), Host())
    assert r.ok and r.result == {"repr": "{1, 2}", "type": "set"}
    r = await pool.run(req("float('nan')"), Host())
    assert r.ok and r.result == {"repr": "nan", "type": "float"}


async def test_user_error_is_data_with_traceback(pool: SandboxPool) -> None:
    r = await pool.run(req("def f():\n    raise ValueError('boom')\nf()"), Host())
    assert not r.ok and r.result is None
    assert r.error is not None and r.error["type"] == "ValueError"
    assert r.error["message"] == "boom"
    assert 'File "<code>", line 2, in f' in r.error["traceback"]
    assert "_sandbox_runner" not in r.error["traceback"]


async def test_syntax_error_and_system_exit_are_data(pool: SandboxPool) -> None:
    r = await pool.run(req("def ("), Host())
    assert not r.ok and r.error is not None and r.error["type"] == "SyntaxError"
    r = await pool.run(req("import sys\nsys.exit(3)"), Host())
    assert not r.ok and r.error is not None and r.error["type"] == "SystemExit"
    r = await pool.run(req("raise KeyboardInterrupt"), Host())
    assert not r.ok and r.error is not None and r.error["type"] == "KeyboardInterrupt"


# What pyodide.code.eval_code returns for each (the runner's own _eval must agree with it).
_EVAL_CASES = [
    ("1 + 1", 2),
    ("1 + 1;", None),  # a trailing semicolon quiets the last expression
    ("1 + 1 ; # a comment", None),
    ("1 + 1 # a comment;", 2),  # the ; is in the comment
    ("'a;'", "a;"),  # the ; is in a string
    ("x = 3", None),
    ("", None),
    ("# only a comment", None),
    ("  a = 1\n  a + 1\n", 2),  # dedented
    ("s = '''a\n   \nb'''\ns", "a\n\nb"),  # dedent also empties a whitespace-only line
    ("def g(a: int): pass\nrepr(g.__annotations__)", "{'a': <class 'int'>}"),  # no future flags
    ("[i for i in range(3)]", [0, 1, 2]),
]


@pytest.mark.parametrize(("source", "value"), _EVAL_CASES)
async def test_last_expression_rules_match_eval_code(pool: SandboxPool, source: str,
                                                     value: object) -> None:
    r = await pool.run(req(source), Host())
    assert r.ok and r.result == value, r


async def test_error_in_the_last_expression_points_at_its_line(pool: SandboxPool) -> None:
    r = await pool.run(req("x = 1\n\n\n(x / 0)"), Host())
    assert not r.ok and r.error is not None and r.error["type"] == "ZeroDivisionError"
    assert 'File "<code>", line 4, in <module>' in r.error["traceback"]
    assert "_sandbox_runner" not in r.error["traceback"]
    r = await pool.run(req("await x"), Host())
    assert not r.ok and r.error is not None and r.error["type"] == "SyntaxError"


async def test_stdout_and_stderr_are_captured(pool: SandboxPool) -> None:
    events = Events()
    src = "import sys\nprint('one')\nprint('two', file=sys.stderr)\nprint('three')\n5"
    r = await pool.run(req(src), Host(), events)
    assert r.ok and r.result == 5
    assert r.stdout == "one\nthree\n" and r.stderr == "two\n"
    assert [(e.kind, e.data["line"]) for e in events.items] == [
        ("stdout", "one"), ("stderr", "two"), ("stdout", "three")]
    assert not r.output_truncated


async def test_output_is_capped(pool: SandboxPool) -> None:
    r = await pool.run(req("for i in range(100000): print(i)\n'done'", max_output_bytes=1000),
                       Host())
    assert r.ok and r.result == "done"
    assert r.output_truncated
    assert len(r.stdout.encode()) + len(r.stderr.encode()) <= 1000
    assert r.stdout.startswith("0\n1\n2\n")
    # One enormous line is cut, not buffered whole.
    r = await pool.run(req("print('x' * 5_000_000)\n1", max_output_bytes=2048), Host())
    assert r.ok and r.output_truncated and 0 < len(r.stdout) <= 2048
    # The cap counts UTF-8 bytes, and never splits a character.
    r = await pool.run(req("for _ in range(50): print('é€' * 20)", max_output_bytes=300), Host())
    assert r.ok and r.output_truncated
    assert 0 < len(r.stdout.encode()) <= 300 and "\ufffd" not in r.stdout


async def test_result_size_is_bounded(pool: SandboxPool) -> None:
    r = await pool.run(req("'x' * 3_000_000"), Host())
    assert not r.ok and r.error is not None and r.error["type"] == "ResultTooLarge"


async def test_output_schema(pool: SandboxPool) -> None:
    schema = {"type": "object", "required": ["total"],
              "properties": {"total": {"type": "integer"}}}
    r = await pool.run(req("{'total': 3}", output_schema=schema), Host())
    assert r.ok and r.result == {"total": 3}
    r = await pool.run(req("{'total': 'three'}", output_schema=schema), Host())
    assert not r.ok and r.error is not None and r.error["type"] == "OutputSchemaError"
    assert r.error["path"] == "total"
    with pytest.raises(InvalidRequest) as info:
        await pool.run(req("1", output_schema={"type": 17}), Host())
    assert info.value.field == "output_schema"


async def test_inputs_must_be_json(pool: SandboxPool) -> None:
    with pytest.raises(InvalidRequest):
        await pool.run(req("1", inputs={"x": object()}), Host())
    with pytest.raises(InvalidRequest) as info:
        await pool.run(req("1", inputs={"x": "y" * (17 << 20)}), Host())
    assert info.value.field == "inputs" and pool.stats()["active_runs"] == 0


# ---- SDK bridge -----------------------------------------------------------------------------


async def test_sdk_calls_look_synchronous(pool: SandboxPool) -> None:
    host, events = Host(), Events()
    src = (
        "from sdk import ledger\n"
        "a = ledger.get_balance(account='A1')\n"
        "b = ledger.get_balance('B2')\n"  # positional arguments bind by the signature
        "print('total', a['balance'] + b['balance'])\n"
        "a['balance'] + b['balance']"
    )
    r = await pool.run(req(src), host, events)
    assert r.ok and r.result == 107 and r.host_calls == 2
    assert host.calls == [("ledger.get_balance", {"account": "A1"}),
                          ("ledger.get_balance", {"account": "B2"})]
    assert r.stdout == "total 107\n"
    calls = [e.data for e in events.items if e.kind == "host_call"]
    assert [c["operation"] for c in calls] == ["ledger.get_balance"] * 2
    assert all(c["outcome"] == "ok" and c["duration_ms"] >= 0 for c in calls)
    # Events arrive in program order: both host calls before the print.
    assert events.kinds() == ["host_call", "host_call", "stdout"]


async def test_wrong_arguments_fail_locally(pool: SandboxPool) -> None:
    host = Host()
    r = await pool.run(req("from sdk import ledger\nledger.get_balance(acct='A1')"), host)
    assert not r.ok and r.error is not None and r.error["type"] == "TypeError"
    assert host.calls == []


async def test_denied_call_raises_catchable_sdk_error(pool: SandboxPool) -> None:
    src = (
        "import sdk\nfrom sdk import ledger\n"
        "try:\n"
        "    ledger.create_transfer('A1', 'B2', 5)\n"
        "except sdk.SdkError as e:\n"
        "    result = {'code': e.code, 'reasons': e.details.get('reasons')}\n"
    )
    r = await pool.run(req(src), Host())
    assert r.ok
    assert r.result == {"code": "policy_denied",
                        "reasons": ["compliance operations go through the dedicated tool channel"]}
    r = await pool.run(req("from sdk import workspace\nworkspace.fail()"), Host())
    assert not r.ok and r.error is not None and r.error["type"] == "SdkError"
    assert r.error["code"] == "backend_error"


async def test_host_call_budget(pool: SandboxPool) -> None:
    host, events = Host(), Events()
    src = "from sdk import ledger\nfor i in range(10):\n    ledger.get_balance(account='A1')"
    r = await pool.run(req(src, max_host_calls=3), host, events)
    assert not r.ok and r.error is not None and r.error.get("code") == "resource_exhausted"
    assert len(host.calls) == 3 and r.host_calls == 4
    outcomes = [e.data["outcome"] for e in events.items if e.kind == "host_call"]
    assert outcomes == ["ok", "ok", "ok", "resource_exhausted"]


async def test_operations_outside_the_sdk_are_refused(pool: SandboxPool) -> None:
    # Hostile code can call the host function directly with any name; the pool refuses it.
    host = Host()
    src = (
        "import _sandbox_runner as r, sdk\n"
        "try:\n    r._call('ledger.delete_everything', {})\n"
        "except sdk.SdkError as e:\n    result = e.code\n"
    )
    r = await pool.run(req(src), host)
    assert r.ok and r.result == "invalid_request" and host.calls == []


async def test_help_and_search(pool: SandboxPool) -> None:
    host = Host()
    src = (
        "import sdk\nfrom sdk import workspace\n"
        "help(workspace)\nhelp(workspace.send_email)\n"
        "sdk.search('email', limit=5)"
    )
    r = await pool.run(req(src), host)
    assert r.ok, r.error
    assert "send_email(to: str, subject: str, body: str = '') -> dict" in r.stdout
    assert "Send an email from the agent's workspace mailbox." in r.stdout
    assert r.result == [{"name": "workspace.send_email",
                         "summary": "Send an email from the agent's workspace mailbox.",
                         "signature": "send_email(to: str, subject: str, body: str = '') -> dict"}]
    # help() needed no host round trip; search needed exactly one.
    assert [c[0] for c in host.calls] == ["sdk.search"]
    r = await pool.run(req("import sdk\nsdk.describe('ledger.get_balance')"), host)
    assert r.ok and r.result == {"name": "ledger.get_balance", "found": True}


async def test_concurrent_runs_are_isolated(pool: SandboxPool) -> None:
    src = (
        "import sys\nsys.modules.setdefault('marker', [])\n"
        "sys.modules['marker'].append(inputs['i'])\nlist(sys.modules['marker'])"
    )
    results = await asyncio.gather(*(pool.run(req(src, inputs={"i": i}, principal=f"t/p{i % 3}"),
                                              Host()) for i in range(6)))
    assert [r.result for r in results] == [[i] for i in range(6)]


# ---- sessions -------------------------------------------------------------------------------


async def test_session_keeps_variables(pool: SandboxPool) -> None:
    r1 = await pool.run(req("counter = 1\nimport json\ncounter", session="s-keep"), Host())
    r2 = await pool.run(req("counter += 1\ncounter", session="s-keep"), Host())
    r3 = await pool.run(req("json.dumps([counter])", session="s-keep"), Host())
    assert (r1.result, r2.result, r3.result) == (1, 2, "[2]")


async def test_session_is_per_principal_and_fresh_runs_see_nothing(pool: SandboxPool) -> None:
    await pool.run(req("secret = 'alpha'", session="shared-id", principal="demo/a"), Host())
    other = await pool.run(req("'secret' in globals()", session="shared-id", principal="demo/b"),
                           Host())
    fresh = await pool.run(req("'secret' in globals()", principal="demo/a"), Host())
    mine = await pool.run(req("secret", session="shared-id", principal="demo/a"), Host())
    assert other.result is False and fresh.result is False and mine.result == "alpha"


async def test_result_variable_does_not_leak_between_session_runs(pool: SandboxPool) -> None:
    r1 = await pool.run(req("result = 5", session="s-result"), Host())
    r2 = await pool.run(req("x = 1", session="s-result"), Host())
    assert r1.result == 5 and r2.result is None


async def test_session_survives_user_errors(pool: SandboxPool) -> None:
    await pool.run(req("v = [1]", session="s-err"), Host())
    bad = await pool.run(req("v.append(2)\n1/0", session="s-err"), Host())
    after = await pool.run(req("v", session="s-err"), Host())
    assert not bad.ok and bad.error is not None and bad.error["type"] == "ZeroDivisionError"
    assert after.result == [1, 2]


async def test_session_timeout_drops_the_session(pool: SandboxPool) -> None:
    await pool.run(req("kept = 1", session="s-timeout"), Host())
    with pytest.raises(SandboxTimeout):
        await pool.run(req("while True: pass", session="s-timeout", timeout_ms=300), Host())
    r = await pool.run(req("'kept' in globals()", session="s-timeout"), Host())
    assert r.ok and r.result is False


# ---- limits and recovery --------------------------------------------------------------------


async def test_infinite_loop_times_out_and_pool_keeps_serving(pool: SandboxPool) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(SandboxTimeout) as info:
        await pool.run(req("while True: pass", timeout_ms=400), Host())
    elapsed = loop.time() - t0
    assert info.value.code == "sandbox_timeout"
    assert elapsed >= 0.35  # never before its budget (how long after depends on the machine)
    r = await pool.run(req("1 + 1"), Host())
    assert r.ok and r.result == 2
    await assert_no_leaked_workers(pool)


async def test_slow_host_call_counts_against_the_deadline(pool: SandboxPool) -> None:
    with pytest.raises(SandboxTimeout):
        await pool.run(req("from sdk import ledger\nledger.get_balance('A1')", timeout_ms=300),
                       Host(delay_s=2.0))


async def test_cancel_stops_the_run(pool: SandboxPool) -> None:
    before = pool.stats()["cancelled"]
    task = asyncio.create_task(pool.run(req("while True: pass", timeout_ms=600_000), Host()))
    await some_run_is_executing(pool)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.stats()["cancelled"] == before + 1
    r = await pool.run(req("'ok'"), Host())
    assert r.result == "ok"
    assert pool.stats()["active_runs"] == 0
    await assert_no_leaked_workers(pool)


async def test_killed_process_is_replaced(pool: SandboxPool) -> None:
    respawns = pool.stats()["respawns"]
    task = asyncio.create_task(pool.run(req("while True: pass", timeout_ms=600_000), Host()))
    await some_run_is_executing(pool)
    victims = [p for p in pool._procs() if p.active]
    assert len(victims) == 1
    os.kill(victims[0].pid or 0, signal.SIGKILL)
    with pytest.raises(SandboxCrashed):
        await task
    # The other process keeps serving at once; the dead one comes back in the background.
    r = await pool.run(req("'still here'"), Host())
    assert r.result == "still here"
    await wait_until(lambda: pool.stats()["alive"] == 3, interval=0.1, what="the respawn")
    assert pool.stats()["alive"] == 3 and pool.stats()["respawns"] == respawns + 1


async def test_stats(pool: SandboxPool) -> None:
    for _ in range(2):
        await pool.run(req("1"), Host())
    s = pool.stats()
    assert s["processes"] == 3 and s["runs"] >= 2 and s["ok"] >= 2
    assert all(v > 50_000_000 for v in s["rss_bytes"].values())


# ---- small pools for idle expiry, session limits and shutdown --------------------------------


async def test_session_eviction_and_close() -> None:
    small = SandboxPool(SandboxSettings(workers=1, session_idle_s=600, max_sessions=2,
                                        max_sessions_per_principal=2))
    await small.start()
    try:
        for name in ("one", "two", "three"):
            await small.run(req(f"{name} = 1", session=name), Host())
        # The third session evicted the least recently used idle one.
        assert small.stats()["sessions_evicted"] == 1 and small.stats()["sessions"] == 2
        r = await small.run(req("'three' in globals()", session="three"), Host())
        assert r.result is True
        r = await small.run(req("'one' in globals()", session="one"), Host())
        assert r.result is False
        pids = [p for p in small.stats()["pids"] if p]
    finally:
        await small.close()
    assert len(pids) >= 2  # the two sessions' own processes (and the pool's, if respawned)
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_idle_sessions_expire() -> None:
    small = SandboxPool(SandboxSettings(workers=1, session_idle_s=1.5))
    await small.start()
    try:
        await small.run(req("kept = 1", session="idle"), Host())
        await wait_until(lambda: not small.stats()["sessions"], interval=0.1,
                         what="the idle session expiring")
        assert small.stats()["sessions_expired"] >= 1
        r = await small.run(req("'kept' in globals()", session="idle"), Host())
        assert r.result is False
    finally:
        await small.close()


async def test_failing_event_consumer_stops_the_run(pool: SandboxPool) -> None:
    async def broken(event: object) -> None:
        raise RuntimeError("client went away")

    with pytest.raises(RuntimeError):
        await pool.run(req("print('x')\nwhile True: pass", timeout_ms=600_000), Host(), broken)
    r = await pool.run(req("'next'"), Host())
    assert r.result == "next" and pool.stats()["active_runs"] == 0
    await assert_no_leaked_workers(pool)


async def test_bad_configuration_is_a_config_error(tmp_path: Path) -> None:
    not_exec = tmp_path / "deno"
    not_exec.write_text("#!/bin/sh\n")
    with pytest.raises(ConfigError) as info:
        await SandboxPool(SandboxSettings(deno_path=str(not_exec))).start()
    assert info.value.field == "deno_path"
    with pytest.raises(ConfigError) as info:
        await SandboxPool(SandboxSettings(runtime_dir=tmp_path)).start()
    assert info.value.field == "runtime_dir"
    with pytest.raises(SandboxError):  # never started: refuses instead of hanging
        await SandboxPool(SandboxSettings()).run(req("1"), Host())


async def test_deno_processes_die_with_the_host(tmp_path: Path) -> None:
    # If the gateway is SIGKILLed (no close()), its Deno processes see EOF and exit.
    script = tmp_path / "host.py"
    script.write_text(
        "import asyncio, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from gateway.sandbox import SandboxPool, SandboxSettings\n"
        "async def main():\n"
        "    p = SandboxPool(SandboxSettings(workers=1))\n"
        "    await p.start()\n"
        "    print(p.stats()['pids'][0], flush=True)\n"
        "    await asyncio.sleep(600)\n"
        "asyncio.run(main())\n"
    )
    host = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stdout=asyncio.subprocess.PIPE)
    assert host.stdout is not None
    line = await asyncio.wait_for(host.stdout.readline(), scaled(240))
    deno_pid = int(line)
    os.kill(deno_pid, 0)  # alive
    host.kill()
    await host.wait()
    def gone() -> bool:
        try:
            os.kill(deno_pid, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        await wait_until(gone, 60, interval=0.1)
    except AssertionError:
        os.kill(deno_pid, signal.SIGKILL)
        raise AssertionError("the Deno process outlived its host") from None
