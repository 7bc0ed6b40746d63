"""The SDK of a real-sized catalog in the sandbox: complete, built lazily, sent once per
process and revision, installed ahead of each fresh interpreter, and never carried from one run
to the next (real Deno processes, real Pyodide; one process, so every run meets the same one)."""

# ruff: noqa: E402
from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

pytest.register_assert_rewrite("tests.sandbox_support")

import pytest_asyncio
from waiting import wait_until

from gateway.errors import SandboxCrashed
from gateway.sandbox import RunRequest, SandboxPool, SandboxSettings, SdkFunction
from gateway.sandbox.process import DenoProcess
from gateway.sandbox.sdk_text import sdk_text
from tests.sandbox_support import req

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(300)]

# 2,000 functions over 5 backends: the size of a catalog with a few real vendor specs.
BIG = tuple(
    SdkFunction(operation=f"vendor{b}.op_{i}", backend=f"vendor{b}", function=f"op_{i}",
                signature=f"op_{i}(owner: str, repo: str, *, page: int = 1) -> dict",
                doc=f"Operation {i} of vendor {b}.\n\n" + "Some description. " * 20)
    for b in range(5) for i in range(400))
BIG_REV = "big-rev-1"
OTHER = (SdkFunction(operation="ledger.only_in_r2", backend="ledger", function="only_in_r2",
                     signature="only_in_r2() -> dict", doc="Exists in revision r2 only."),)
OTHER_REV = "other-rev-2"


class EchoHost:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, operation: str, args: dict[str, Any]) -> Any:
        self.calls.append((operation, args))
        return {"op": operation, "args": args}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool() -> AsyncIterator[SandboxPool]:
    p = SandboxPool(SandboxSettings(workers=1))
    await p.start()
    yield p
    await p.close()


@pytest.fixture
def frames(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """(rev, carried SDK text) of every run frame the host sends."""
    seen: list[tuple[str, bool]] = []
    send = DenoProcess.send

    def spy(self: DenoProcess, msg: dict[str, Any]) -> None:
        if msg.get("t") == "run":
            seen.append((str(msg["rev"]), msg["sdk"] is not None))
        send(self, msg)

    monkeypatch.setattr(DenoProcess, "send", spy)
    return seen


def big(source: str, **kw: Any) -> RunRequest:
    return replace(req(source, sdk=BIG, **kw), sdk_revision=BIG_REV)


async def test_a_big_sdk_is_complete_and_built_on_first_use(pool: SandboxPool) -> None:
    host = EchoHost()
    res = await pool.run(big(
        "import sdk, inspect\n"
        "from sdk.vendor1 import *\n"
        "r = {'dir': len([n for n in dir(sdk.vendor4) if n.startswith('op_')]),\n"
        "     'all': len(sdk.vendor4.__all__),\n"
        "     'built_untouched': sum(1 for n in vars(sdk.vendor3) if n.startswith('op_')),\n"
        "     'call': sdk.vendor4.op_399('o', 'r', page=2),\n"
        "     'same': sdk.vendor0.op_7 is sdk.vendor0.op_7,\n"
        "     'star': callable(op_250) and op_250.__module__ == 'sdk.vendor1',\n"
        "     'params': list(inspect.signature(sdk.vendor2.op_3).parameters)}\n"
        "try:\n    sdk.vendor0.op_400\nexcept AttributeError as e:\n    r['missing'] = str(e)\n"
        "help(sdk.vendor4.op_399)\n"
        "help(sdk.vendor4)\n"
        "r"), host)
    assert res.ok, res.error
    r = res.result
    assert r["dir"] == 400 and r["all"] == 400
    assert r["built_untouched"] == 0  # nothing of a backend the code never touched was built
    assert r["call"] == {"op": "vendor4.op_399", "args": {"owner": "o", "repo": "r", "page": 2}}
    assert r["same"] is True and r["star"] is True
    assert r["params"] == ["owner", "repo", "page"]
    assert "sdk.vendor0" in r["missing"] and "op_400" in r["missing"]
    assert "op_399(owner: str, repo: str, *, page: int = 1) -> dict" in res.stdout
    assert "Help on sdk.vendor4:" in res.stdout and "... and 375 more" in res.stdout
    assert host.calls == [("vendor4.op_399", {"owner": "o", "repo": "r", "page": 2})]


async def test_the_sdk_text_crosses_the_socket_once_per_process_and_revision(
        pool: SandboxPool, frames: list[tuple[str, bool]]) -> None:
    host = EchoHost()
    # Whichever test of the module ran first in this worker (if any): the process has the
    # revision after this run.
    await pool.run(big("1"), host)
    frames.clear()
    pids = [p.pid for p in pool._slots if p is not None]
    for _ in range(3):
        res = await pool.run(big("import sdk\nsdk.vendor0.op_1('a', 'b')"), host)
        assert res.ok and res.result == {"op": "vendor0.op_1", "args": {"owner": "a", "repo": "b"}}
    assert [p.pid for p in pool._slots if p is not None] == pids  # the same process throughout
    assert frames == [(BIG_REV, False)] * 3
    # Another revision reaches the very next run, and nothing of the old one is left.
    other = replace(req("import sdk\n(hasattr(sdk, 'vendor0'), sdk.ledger.only_in_r2())",
                        sdk=OTHER), sdk_revision=OTHER_REV)
    res = await pool.run(other, host)
    assert res.ok and res.result == [False, {"op": "ledger.only_in_r2", "args": {}}], res.error
    res = await pool.run(big("import sdk\n(hasattr(sdk, 'ledger'), len(dir(sdk.vendor3)) > 400)"),
                         host)
    assert res.ok and res.result == [False, True], res.error
    assert frames[3:] == [(OTHER_REV, True), (BIG_REV, True)]


async def test_a_run_cannot_reach_the_sdk_of_the_next_run(pool: SandboxPool) -> None:
    host = EchoHost()
    res = await pool.run(big(
        "import sdk, sys, _sandbox_runner as m\n"
        "sdk.marker = 1\n"
        "sdk.vendor0.op_1 = lambda *a, **k: 'pwned'\n"
        "sys.modules['sdk.vendor0'].__getattr__ = lambda name: 'pwned'\n"
        "m._state['rev'] = 'forged'\n"
        "m.install_sdk('{\"backends\": []}')\n"
        "'done'"), host)
    assert res.ok and res.result == "done", res.error
    res = await pool.run(big(
        "import sdk\n"
        "(hasattr(sdk, 'marker'), sdk.vendor0.op_1('x', 'y'), sdk.vendor0.op_2('x', 'y'))"), host)
    assert res.ok, res.error
    assert res.result == [False, {"op": "vendor0.op_1", "args": {"owner": "x", "repo": "y"}},
                          {"op": "vendor0.op_2", "args": {"owner": "x", "repo": "y"}}]


async def test_sessions_get_the_sdk_and_keep_it(
        pool: SandboxPool, frames: list[tuple[str, bool]]) -> None:
    host = EchoHost()
    for n in range(2):
        res = await pool.run(big(f"import sdk\nx{n} = sdk.vendor2.op_{n}('o', 'r')\nx{n}['op']",
                                 session="sdk-session"), host)
        assert res.ok and res.result == f"vendor2.op_{n}", res.error
    assert [has_text for _, has_text in frames] == [True, False]  # a new session, then its own


async def test_a_new_process_is_sent_the_text_again(
        pool: SandboxPool, frames: list[tuple[str, bool]]) -> None:
    host = EchoHost()
    res = await pool.run(big("1"), host)
    assert res.ok
    proc = next(p for p in pool._slots if p is not None)
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    await wait_until(lambda: any(p is not None and p is not proc and p.ready and not p.dead
                                 for p in pool._slots), timeout_s=120,
                     what="the killed process replaced by a ready one")
    res = await pool.run(big("import sdk\nsdk.vendor1.op_5('o', 'r')['op']"), host)
    assert res.ok and res.result == "vendor1.op_5", res.error
    assert frames[-1] == (BIG_REV, True)


async def test_a_run_frame_without_text_for_an_unknown_revision_fails_closed(
        pool: SandboxPool) -> None:
    """The host sends no text only for a revision it sent this process; if that bookkeeping
    were ever wrong, the supervisor refuses the run instead of running it with another SDK."""
    host = EchoHost()
    await pool.run(big("1"), host)
    await wait_until(lambda: any(p is not None and p.ready for p in pool._slots),
                     timeout_s=120, what="a ready process")
    proc = next(p for p in pool._slots if p is not None and p.ready)
    proc.sdk_rev = "never-sent"
    stale = replace(req("import sdk\nsdk.ledger.only_in_r2()", sdk=OTHER),
                    sdk_revision="never-sent")
    with pytest.raises(SandboxCrashed):
        await pool.run(stale, host)
    assert host.calls == []
    res = await pool.run(big("import sdk\nsdk.vendor0.op_0('o', 'r')['op']"), host)
    assert res.ok and res.result == "vendor0.op_0", res.error


async def test_the_sdk_text_lists_a_short_help_per_backend_and_the_last_duplicate_wins(
) -> None:
    fns = [SdkFunction(operation=f"b.f{i}", backend="b", function=f"f{i}",
                       signature=f"f{i}() -> dict", doc=f"Does {i}.\nMore.") for i in range(30)]
    fns.append(SdkFunction(operation="b.f3-v2", backend="b", function="f3",
                           signature="f3(x: int) -> dict", doc="The second f3."))
    data = json.loads(sdk_text(fns))
    (backend,) = data["backends"]
    assert backend["name"] == "b"
    names = [name for name, _ in backend["functions"]]
    assert len(names) == 30 and names[-1] == "f3" and "f3" not in names[:-1]
    assert json.loads(backend["functions"][-1][1])["operation"] == "b.f3-v2"
    assert backend["doc"].count("() -> dict") == 25  # the first 25: f3 moved past them
    assert "f25() -> dict" in backend["doc"] and "f3(x: int)" not in backend["doc"]
    assert "f0() -> dict\n      Does 0." in backend["doc"] and "... and 5 more" in backend["doc"]
