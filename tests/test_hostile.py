"""Hostile input against the assembled gateway (in-process, real gRPC on a port-0 socket).

Property-based (hypothesis, bounded examples) and hand-made hostile requests: malformed and
corrupted protobuf on a raw channel, invalid UTF-8, huge strings, deeply nested JSON,
schema-violating arguments, oversized code and messages. Each gets a clear error (a stable
``switchboard-error`` code, or gRPC's own status for bytes that are not a request at all)
or a correct result within a bounded time, and the gateway keeps serving afterwards.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from gateway_support import code_request, error_of, md, tool_request
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import errors as errs
from gateway._proto.switchboard.v1 import gateway_pb2 as pb

pytestmark = pytest.mark.timeout(240)

EXECUTE = "/switchboard.v1.Gateway/Execute"
CALL_TIMEOUT = 20.0
# Every stable code the gateway may put in ``switchboard-error``.
KNOWN_CODES = {"internal"} | {
    cls.code for cls in vars(errs).values()
    if isinstance(cls, type) and issubclass(cls, errs.GatewayError)
}
# Bytes that do not parse: the interceptor turns the deserializer's failure into
# invalid_request (see test_undecodable_request_is_invalid_argument).
UNDECODABLE = {grpc.StatusCode.INVALID_ARGUMENT}
HYPOTHESIS = settings(
    max_examples=40, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def assert_serving(gateway: Any) -> None:
    """Health SERVING and a real call still works."""
    health = health_pb2_grpc.HealthStub(gateway.channel)
    resp = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
    ok = gateway.stub.Execute(tool_request("ledger.get_balance", {"account": "A1"}),
                              metadata=md("dev-agent"), timeout=CALL_TIMEOUT)
    assert ok.result.struct_value["account"] == "A1"


def raw_execute(gateway: Any, payload: bytes, token: str = "dev-agent",
                ) -> tuple[grpc.StatusCode, bytes | None, dict[str, Any], float]:
    """Send ``payload`` as the serialized request of Execute, no client-side checks."""
    call = gateway.channel.unary_unary(EXECUTE, request_serializer=None,
                                       response_deserializer=None)
    started = time.monotonic()
    try:
        out = call(payload, metadata=md(token), timeout=CALL_TIMEOUT)
        return grpc.StatusCode.OK, out, {}, time.monotonic() - started
    except grpc.RpcError as exc:
        return exc.code(), None, error_of(exc), time.monotonic() - started


def decodes(payload: bytes) -> bool:
    """Whether ``payload`` parses as an ExecuteRequest at all (same upb limits as the server)."""
    try:
        pb.ExecuteRequest.FromString(payload)
    except DecodeError:
        return False
    return True


def check_clear(status: grpc.StatusCode, body: bytes | None, err: dict[str, Any],
                elapsed: float, *, decodable: bool = True) -> None:
    """The answer to a hostile request: a response or a stable gateway error; never a timeout
    or an unmapped crash. Bytes that are not an ExecuteRequest at all are refused by gRPC
    before the gateway's code runs (see ``test_undecodable_request_is_invalid_argument``)."""
    assert status != grpc.StatusCode.DEADLINE_EXCEEDED, "hostile request hung"
    assert elapsed < CALL_TIMEOUT
    if not decodable:
        assert status in UNDECODABLE, (status, err)
        return
    if status == grpc.StatusCode.OK:
        assert body is not None
        pb.ExecuteResponse.FromString(body)  # a well-formed response
        return
    assert "code" in err, f"{status} without a switchboard-error code"
    assert err["code"] in KNOWN_CODES, err
    assert err["code"] != "internal", f"unmapped internal error: {err}"


# -- malformed protobuf --------------------------------------------------------------------


@HYPOTHESIS
@given(payload=st.binary(max_size=2048))
def test_random_bytes_get_a_clear_answer(gateway: Any, payload: bytes) -> None:
    check_clear(*raw_execute(gateway, payload), decodable=decodes(payload))


def _valid_requests() -> list[bytes]:
    tool = tool_request("ledger.get_balance", {"account": "A1"}, request_id="fuzz-tool")
    code = code_request("x = 6 * 7\nx", inputs={"a": [1, 2, {"b": "c"}]})
    return [tool.SerializeToString(), code.SerializeToString()]


@HYPOTHESIS
@given(which=st.sampled_from([0, 1]), cut=st.integers(min_value=0, max_value=200),
       flips=st.lists(st.tuples(st.integers(min_value=0, max_value=200),
                                st.integers(min_value=1, max_value=255)), max_size=4))
def test_corrupted_requests_get_a_clear_answer(gateway: Any, which: int, cut: int,
                                               flips: list[tuple[int, int]]) -> None:
    data = bytearray(_valid_requests()[which])
    for pos, mask in flips:
        if data:
            data[pos % len(data)] ^= mask
    payload = bytes(data[: max(cut, 1)] if cut < len(data) else data)
    check_clear(*raw_execute(gateway, payload), decodable=decodes(payload))


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    key = (number << 3) | 2
    length = len(payload)
    varint = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        if length:
            varint.append(byte | 0x80)
        else:
            varint.append(byte)
            break
    return bytes([key]) + bytes(varint) + payload


def test_invalid_utf8_in_code_is_refused(gateway: Any) -> None:
    source = b"print('caf\xc3')\n\xff\xfe result = 1"
    payload = _field(1, b"utf8-probe") + _field(3, _field(1, source))
    status, _body, err, elapsed = raw_execute(gateway, payload)
    assert status != grpc.StatusCode.OK
    check_clear(status, None, err, elapsed, decodable=decodes(payload))
    assert_serving(gateway)


def test_invalid_utf8_in_tool_name_is_refused(gateway: Any) -> None:
    payload = _field(1, b"utf8-name") + _field(2, _field(1, b"ledger.\xffget_balance"))
    status, _body, err, elapsed = raw_execute(gateway, payload)
    assert status != grpc.StatusCode.OK
    check_clear(status, None, err, elapsed, decodable=decodes(payload))


@pytest.mark.parametrize("payload", [
    b"\x00",
    b"\x0a\x05ab",  # truncated length-delimited field
    _field(1, b"r") + _field(3, _field(1, b"print('\xff')")),  # invalid UTF-8 in the source
], ids=["zero-tag", "truncated", "invalid-utf8"])
def test_undecodable_request_is_invalid_argument(gateway: Any, payload: bytes) -> None:
    assert not decodes(payload)
    status, _body, err, _elapsed = raw_execute(gateway, payload)
    assert status == grpc.StatusCode.INVALID_ARGUMENT, (status, err)
    assert err.get("code") == "invalid_request", err


# -- sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["argument", "tool_name", "describe"])
def test_errors_about_huge_input_stay_small(gateway: Any, case: str) -> None:
    expected: tuple[grpc.StatusCode, str, str]
    with pytest.raises(grpc.RpcError) as info:
        if case == "argument":
            expected = (grpc.StatusCode.INVALID_ARGUMENT, "schema_invalid", "arguments.account")
            gateway.stub.Execute(tool_request("ledger.get_balance", {"account": "A" * 1_000_000}),
                                 metadata=md("dev-agent"), timeout=CALL_TIMEOUT)
        elif case == "tool_name":
            # Over MAX_NAME_LENGTH (256): refused before any lookup or suggestion work.
            expected = (grpc.StatusCode.INVALID_ARGUMENT, "invalid_request", "tool_call.name")
            gateway.stub.Execute(tool_request("ledger." + "y" * 100_000, {}),
                                 metadata=md("dev-agent"), timeout=CALL_TIMEOUT)
        else:
            expected = (grpc.StatusCode.INVALID_ARGUMENT, "invalid_request", "name")
            gateway.stub.DescribeOperation(pb.DescribeOperationRequest(name="x" * 100_000),
                                           metadata=md("dev-agent"), timeout=CALL_TIMEOUT)
    err = error_of(info.value)
    assert info.value.code() == expected[0], (info.value.details()[:200], err)
    assert err.get("code") == expected[1], err
    if expected[2]:
        assert err.get("field") == expected[2], err
    assert len(json.dumps(err)) < 8192
    assert_serving(gateway)


def test_large_inputs_to_code_are_a_correct_result(gateway: Any) -> None:
    req = code_request("len(inputs['blob'])", inputs={"blob": "x" * 1_000_000})
    resp = gateway.stub.Execute(req, metadata=md("dev-agent"), timeout=CALL_TIMEOUT)
    assert resp.result.number_value == 1_000_000


def test_code_over_the_source_limit_is_invalid_request(gateway: Any) -> None:
    source = "x = 1\n" * 60_000  # 360 kB, over the 256 KiB source limit
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.Execute(code_request(source), metadata=md("dev-agent"), timeout=CALL_TIMEOUT)
    err = error_of(info.value)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert err["code"] == "invalid_request", err
    assert err["field"] == "code_run.source", err
    assert_serving(gateway)


def test_message_over_max_message_bytes_is_resource_exhausted(gateway: Any) -> None:
    limit = gateway.settings.max_message_bytes
    req = code_request("1", inputs={"blob": "y" * (limit + 1024)})
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.Execute(req, metadata=md("dev-agent"), timeout=CALL_TIMEOUT)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_serving(gateway)


def test_hostile_request_ids_are_invalid_request(gateway: Any) -> None:
    for rid in ("x" * 129, "semi;colon", "new\nline", "ünï"):
        with pytest.raises(grpc.RpcError) as info:
            gateway.stub.Execute(tool_request("ledger.get_balance", {"account": "A1"},
                                              request_id=rid),
                                 metadata=md("dev-agent"), timeout=CALL_TIMEOUT)
        err = error_of(info.value)
        assert err["code"] == "invalid_request" and err["field"] == "request_id", (rid, err)


# -- deep JSON -----------------------------------------------------------------------------


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = {"k": value} if i % 2 else [value]
    return value


def _nested_struct_bytes(depth: int) -> bytes:
    """A serialized ``google.protobuf.Struct`` ``{account: "A1", junk: {k: {k: ... "leaf"}}}``
    with ``depth`` JSON levels, built by hand: the protobuf library will not build one deeper
    than its own recursion limit, a hostile client will."""
    value = _field(3, b"leaf")  # Value.string_value
    for _ in range(depth):
        entry = _field(1, b"k") + _field(2, value)  # Struct.fields map entry
        value = _field(5, _field(1, entry))  # Value.struct_value = Struct{fields: [entry]}
    account = _field(1, _field(1, b"account") + _field(2, _field(3, b"A1")))
    junk = _field(1, _field(1, b"junk") + _field(2, value))
    return account + junk


@pytest.mark.parametrize("depth", [5, 20, 40, 200, 5000])
def test_deeply_nested_arguments(gateway: Any, depth: int) -> None:
    """Extra arguments nested ``depth`` levels: the (non-strict) call is served and the junk
    ignored, or — beyond protobuf's nesting limit — the request is refused, fast."""
    payload = (_field(1, f"deep-{depth}".encode())
               + _field(2, _field(1, b"ledger.get_balance") + _field(2, _nested_struct_bytes(
                   depth))))
    decodable = decodes(payload)
    status, body, err, elapsed = raw_execute(gateway, payload)
    check_clear(status, body, err, elapsed, decodable=decodable)
    if decodable:
        assert status == grpc.StatusCode.OK, err
        assert body is not None
        assert pb.ExecuteResponse.FromString(body).result.struct_value["account"] == "A1"
    else:
        assert depth > 20  # shallow JSON must always get through
    assert_serving(gateway)


def test_deep_json_inputs_to_code(gateway: Any) -> None:
    req = code_request("d = inputs['d']\nn = 0\nwhile isinstance(d, (dict, list)):\n"
                       "    d = d['k'] if isinstance(d, dict) else d[0]\n    n += 1\nn",
                       inputs={"d": _nested(20)})
    resp = gateway.stub.Execute(req, metadata=md("dev-agent"), timeout=CALL_TIMEOUT)
    assert resp.result.number_value == 20


# -- schema violations ---------------------------------------------------------------------


def _transfer_count(backends: dict[str, Any]) -> int:
    db = Path(backends["ledger"].proc.args[-1])
    with sqlite3.connect(db) as conn:
        # The demo ledger creates its tables on first use: none yet means no transfer yet.
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'transfers'").fetchone() is None:
            return 0
        return int(conn.execute("SELECT COUNT(*) FROM transfers").fetchone()[0])


_json_scalars = st.one_of(st.none(), st.booleans(), st.text(max_size=20),
                          st.integers(min_value=-10**6, max_value=10**6),
                          st.floats(allow_nan=False, allow_infinity=False, width=32))
_bad_amount = st.one_of(st.none(), st.booleans(), st.text(max_size=30),
                        st.floats(max_value=0.0, allow_nan=False, allow_infinity=False),
                        st.floats(min_value=1e10, max_value=1e15),
                        st.lists(_json_scalars, max_size=3),
                        st.dictionaries(st.text(max_size=5), _json_scalars, max_size=3))


@HYPOTHESIS
@given(amount=_bad_amount,
       from_account=st.one_of(st.just("A1"), st.text(max_size=40), st.integers(), st.none()),
       extra=st.dictionaries(st.text(min_size=1, max_size=10).filter(
           lambda k: k not in {"from_account", "to_account", "amount", "currency", "memo"}),
           _json_scalars, max_size=2))
def test_schema_violating_transfers_never_reach_the_ledger(
        gateway: Any, backends: dict[str, Any], amount: Any, from_account: Any,
        extra: dict[str, Any]) -> None:
    before = _transfer_count(backends)
    args = {"from_account": from_account, "to_account": "A2", "amount": amount,
            "currency": "USD", **extra}
    with pytest.raises(grpc.RpcError) as info:
        gateway.stub.Execute(tool_request("ledger.create_transfer", args),
                             metadata=md("dev-finance"), timeout=CALL_TIMEOUT)
    err = error_of(info.value)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err
    assert err["code"] == "schema_invalid", err
    assert err["field"].startswith("arguments"), err
    assert _transfer_count(backends) == before


@HYPOTHESIS
@given(args=st.dictionaries(st.text(max_size=12), st.recursive(
    _json_scalars, lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=12), max_size=4))
def test_arbitrary_arguments_get_a_clear_answer(gateway: Any, args: dict[str, Any]) -> None:
    req = tool_request("workspace.send_email", args)
    status, body, err, elapsed = raw_execute(gateway, req.SerializeToString())
    check_clear(status, body, err, elapsed)
    if status != grpc.StatusCode.OK:
        assert err.get("code") in {"schema_invalid", "backend_error"}, err


@settings(HYPOTHESIS, max_examples=12)
@given(source=st.text(max_size=300))
def test_arbitrary_code_text_gets_a_clear_answer(gateway: Any, source: str) -> None:
    req = code_request(source)
    status, body, err, elapsed = raw_execute(gateway, req.SerializeToString())
    check_clear(status, body, err, elapsed)
    if status != grpc.StatusCode.OK:
        assert err.get("code") in {"invalid_request", "sandbox_timeout"}, err


def test_gateway_still_serving_after_the_onslaught(gateway: Any) -> None:
    assert_serving(gateway)
    resp = gateway.stub.Execute(code_request("from sdk import ledger\n"
                                             "ledger.get_balance(account='A3')['account']"),
                                metadata=md("dev-agent"), timeout=CALL_TIMEOUT)
    assert resp.result.string_value == "A3"
