"""Everything the sandbox sends is parsed by one bounded parser (round 3 finding 6).

``values.loads_bounded`` parses frames, results and host-call arguments; every refusal (too
deep, bad syntax, NaN, a number that overflows, an integer past the digit limit) is one
ValueError, never a RecursionError. A frame or result it refuses is a protocol violation:
``sandbox_crashed``, and the session ends. Lone surrogates still parse (they become U+FFFD in
the result, as documented).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import grpc
import pytest
from gateway_support import code_request, error_of, md
from google.protobuf import json_format
from waiting import scaled

from gateway._proto.switchboard.v1 import gateway_pb2 as pb
from gateway.errors import InvalidRequest, SandboxCrashed
from gateway.sandbox.protocol import decode_frame
from gateway.sandbox.runs import CallState, Output, _host_arguments, result_of
from gateway.values import MAX_DEPTH, MAX_WIRE_DEPTH, UnreadableJson, loads_bounded

pytestmark = pytest.mark.timeout(600)


def _arrays(depth: int) -> str:
    return "[" * depth + "]" * depth


def _objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


REFUSED = {
    "deep-arrays": _arrays(100_000),
    "deep-objects": _objects(100_000),
    "just-too-deep-arrays": _arrays(MAX_WIRE_DEPTH + 1),
    "just-too-deep-objects": '{"a":' * MAX_WIRE_DEPTH + "[]" + "}" * MAX_WIRE_DEPTH,
    "deep-then-wide": "[" + ",".join([_arrays(MAX_WIRE_DEPTH)] * 50) + "]",
    "huge-integer": "1" * 5000,
    "overflowing-float": "1e400",
    "negative-overflow": "[-1e999]",
    "nan": "[NaN]",
    "infinity": '{"x": -Infinity}',
    "truncated": '{"ok": true, "result": [1, 2',
    "bad-escape": '"\\x"',
    "trailing": "{} {}",
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_loads_bounded_refuses_with_one_error_type(name: str) -> None:
    text = REFUSED[name]
    for form in (text, text.encode()):
        with pytest.raises(UnreadableJson):
            loads_bounded(form)


def test_loads_bounded_accepts_what_json_accepts_within_the_bound() -> None:
    assert loads_bounded(_arrays(MAX_WIRE_DEPTH)) is not None
    assert loads_bounded('{"a":' * (MAX_WIRE_DEPTH - 1) + "[]" + "}" * (MAX_WIRE_DEPTH - 1))
    # brackets inside strings are not nesting
    assert loads_bounded(json.dumps(["[" * 10000, "{" * 10000])) == ["[" * 10000, "{" * 10000]
    assert loads_bounded('"x\\ud800y"') == "x\ud800y"  # lone surrogate: parsed, cleaned later
    assert loads_bounded("1" * 4000) == int("1" * 4000)
    assert loads_bounded("[1e308, -0.0, 2.5]") == [1e308, -0.0, 2.5]
    assert loads_bounded(b'{"t": "log", "msg": "hi"}') == {"t": "log", "msg": "hi"}
    assert loads_bounded(_arrays(10), max_depth=10) == loads_bounded(_arrays(10))
    with pytest.raises(UnreadableJson) as info:
        loads_bounded(_arrays(11), max_depth=10)
    assert info.value.too_deep


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_frame_that_does_not_parse_is_a_crash(name: str) -> None:
    body = ('{"t": "log", "msg": "x", "extra": ' + REFUSED[name] + "}").encode()
    with pytest.raises(SandboxCrashed):
        decode_frame(body)


def _counters() -> dict[str, int]:
    return {k: 0 for k in ("ok", "user_errors", "crashes", "timeouts", "memory")}


async def _result(reply: str) -> Any:
    return await result_of({"status": "ok", "reply": reply}, Output(budget=100),
                           CallState(limit=1, allowed=set()), 1.0, 1000, 64, None, _counters())


@pytest.mark.parametrize("name", sorted(REFUSED))
async def test_a_result_that_does_not_parse_is_a_crash(name: str) -> None:
    for reply in ('{"ok": true, "result": ' + REFUSED[name] + "}", REFUSED[name]):
        with pytest.raises(SandboxCrashed):
            await _result(reply)


async def test_a_result_with_lone_surrogates_still_parses() -> None:
    run = await _result('{"ok": true, "result": {"\\ud800k": ["a\\udc00b"]}}')
    assert run.ok and run.result == {"\ud800k": ["a\udc00b"]}


@pytest.mark.parametrize(("text", "deep"), [
    ('{"a": ' + _arrays(100_000) + "}", True),
    ('{"a": ' + _arrays(MAX_DEPTH + 1) + "}", False),  # check_input's own bound
    ('{"a": NaN}', False), ('{"a": 1e400}', False), ('{"a": ' + "9" * 5000 + "}", False),
])
def test_host_call_arguments_stay_data_errors_for_the_code(text: str, deep: bool) -> None:
    """Arguments are the code's data, not the protocol: a refusal is invalid_request the code
    can catch (as before), never a RecursionError."""
    with pytest.raises(InvalidRequest) as info:
        _host_arguments(text)
    assert (info.value.field or "").startswith("arguments")
    if deep:
        assert info.value.details == {"max_depth": MAX_DEPTH}


# -- end to end: the session that sent it is ended --------------------------------------------

_JS = ("import pyodide_js\nfrom pyodide.ffi import run_sync\n"
       "F = pyodide_js._module.constructor.constructor\n")


def _forged_done(reply_expr: str) -> str:
    """Code that posts its own ``done`` frame carrying ``reply_expr`` (a Python expression)."""
    return _JS + (
        "import json, time\n"
        "g = F('return globalThis')()\n"
        f"reply = {reply_expr}\n"
        "g.postMessage(g.JSON.parse(json.dumps({'t': 'done', 'reply': reply, "
        "'truncated': False, 'fatal': False, 'ms': 1})))\n"
        "time.sleep(1)\n")


FORGED = {
    "deep-objects": "'{\"ok\": true, \"result\": ' + '{\"a\":' * 100000 + '1' + '}' * 100000 "
                    "+ '}'",
    "deep-error": "'{\"ok\": false, \"error\": ' + '[' * 100000 + ']' * 100000 + '}'",
    "huge-number": "'{\"ok\": true, \"result\": ' + '7' * 6000 + '}'",
    "overflow": "'{\"ok\": true, \"result\": [1e999]}'",
}


@pytest.mark.parametrize("name", sorted(FORGED))
def test_a_forged_result_ends_the_session(gateway: Any, name: str) -> None:
    session = f"forged-{uuid.uuid4().hex[:12]}"
    stub = gateway.stub

    def run(source: str) -> pb.ExecuteResponse:
        resp: pb.ExecuteResponse = stub.Execute(
            code_request(source, session_id=session), metadata=md("dev-agent"),
            timeout=scaled(120))
        return resp

    assert json_format.MessageToDict(run("secret = 41\nsecret + 1").result) == 42
    with pytest.raises(grpc.RpcError) as info:
        run(_forged_done(FORGED[name]))
    assert error_of(info.value)["code"] == "sandbox_crashed", error_of(info.value)
    # The session was ended: its variables are gone (a fresh interpreter), and it still works.
    fresh = run("'secret' in globals()")
    assert json_format.MessageToDict(fresh.result) is False
