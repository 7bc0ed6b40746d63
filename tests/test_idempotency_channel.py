"""ToolChannel against a real HTTP backend: validation first, replay, concurrent duplicates,
conflicts, recorded failures, unknown outcomes and their resolution."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tools_support import PRINCIPAL, Backend, Scripted, free_port_refusing, op, serve_backend
from waiting import wait_until

from gateway.errors import (
    BackendError,
    BackendUnavailable,
    DuplicateInFlight,
    IdempotencyConflict,
    InvalidRequest,
    OutcomeUnknown,
    OutputInvalid,
    SchemaInvalid,
)
from gateway.models import BackendSettings, Operation, Parameter, Principal
from gateway.tools import (
    BackendClient,
    IdempotencySettings,
    Reconciler,
    RetryPolicy,
    ToolChannel,
    idempotency_key,
)
from gateway.tools.sqlite_store import SQLiteIdempotencyStore

PAY_SCHEMA = {"type": "object", "properties": {"amount": {"type": "number", "minimum": 0.01},
                                               "to": {"type": "string"}},
              "required": ["amount", "to"]}
PAY_PARAMS = (Parameter("amount", "body"), Parameter("to", "body"))
SETTINGS = IdempotencySettings(lease_s=5.0, wait_s=2.0)


def pay(name: str = "pay", output: dict[str, Any] | None = None) -> Operation:
    return op(name, "POST", schema=PAY_SCHEMA, params=PAY_PARAMS, output=output)


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    with serve_backend() as b:
        yield b


class Rig:
    def __init__(self, backend: Backend, tmp: Path) -> None:
        self.backend, self.tmp = backend, tmp
        self.store = SQLiteIdempotencyStore(tmp / "idem.db")
        self.clients: list[BackendClient] = []

    def channel(self, *, base_url: str | None = None, aware: bool = False,
                settings: IdempotencySettings = SETTINGS, timeout_ms: int = 2000,
                **kw: Any) -> ToolChannel:
        client = BackendClient(
            {"svc": BackendSettings(name="svc", base_url=base_url or self.backend.url,
                                    timeout_ms=timeout_ms)},
            retry=RetryPolicy(base_delay_s=0.01, max_delay_s=0.02),
            idempotency_aware={"svc"} if aware else ())
        self.clients.append(client)
        return ToolChannel(client, self.store, settings=settings, **kw)

    async def close(self) -> None:
        for c in self.clients:
            await c.aclose()
        await self.store.aclose()


@pytest.fixture
async def rig(backend: Backend, tmp_path: Path) -> AsyncIterator[Rig]:
    backend.reset()
    r = Rig(backend, tmp_path)
    yield r
    await r.close()


ARGS = {"amount": 10.0, "to": "A2"}


async def run(ch: ToolChannel, operation: Operation, args: dict[str, Any] = ARGS,
              rid: str = "req-1", principal: Principal = PRINCIPAL):  # type: ignore[no-untyped-def]
    return await ch.execute(operation, args, request_id=rid, principal=principal, strict=True)


async def test_retry_returns_recorded_outcome(rig: Rig) -> None:
    ch = rig.channel()
    first = await run(ch, pay())
    assert not first.replayed and first.result["echo"]["json"] == {"amount": 10.0, "to": "A2"}
    key = first.result["echo"]["headers"]["idempotency-key"]
    assert key == idempotency_key(PRINCIPAL, "req-1") and len(key) == 64
    again = await run(rig.channel(), pay(), {"amount": 10, "to": "A2"})  # 10 == 10.0
    assert again.replayed and again.result == first.result
    assert rig.backend.hits["pay"] == 1
    recorded = await ch.recorded(PRINCIPAL, "req-1")
    assert recorded is not None and recorded.result == first.result and recorded.error is None


async def test_invalid_arguments_never_reach_backend_or_store(rig: Rig) -> None:
    ch = rig.channel()
    with pytest.raises(SchemaInvalid) as exc:
        await run(ch, pay(), {"amount": -5, "to": "A2"})
    assert exc.value.message == "arguments.amount: -5 is less than the minimum of 0.01"
    with pytest.raises(SchemaInvalid) as exc:
        await run(ch, pay(), {**ARGS, "note": "x"})
    assert exc.value.field == "arguments.note"
    assert rig.backend.hits["pay"] == 0
    assert await rig.store.get(idempotency_key(PRINCIPAL, "req-1")) is None
    with pytest.raises(InvalidRequest):
        await run(ch, pay(), rid="")


async def test_concurrent_duplicates_one_effect(rig: Rig) -> None:
    rig.backend.script("pay", Scripted(201, {"id": "T1"}, delay_s=0.3))
    channels = [rig.channel(), rig.channel()]  # two "replicas" sharing the store
    outs = await asyncio.gather(*(run(channels[i % 2], pay()) for i in range(10)))
    assert rig.backend.hits["pay"] == 1
    assert [o.result for o in outs] == [{"id": "T1"}] * 10
    assert sorted(o.replayed for o in outs) == [False] + [True] * 9


async def test_concurrent_duplicate_gives_up_after_wait(rig: Rig) -> None:
    rig.backend.script("pay", Scripted(201, {"id": "T1"}, delay_s=1.0))
    ch = rig.channel(settings=IdempotencySettings(wait_s=0.2))
    first = asyncio.create_task(run(ch, pay()))
    # The first call holds the claim once it reached the backend (a condition, not a sleep).
    await wait_until(lambda: rig.backend.hits["pay"] == 1, what="the first call in flight")
    with pytest.raises(DuplicateInFlight) as exc:
        await run(ch, pay())
    assert exc.value.code == "duplicate_in_flight" and exc.value.field == "request_id"
    assert (await first).result == {"id": "T1"}
    assert rig.backend.hits["pay"] == 1


async def test_same_request_id_different_arguments_conflicts(rig: Rig) -> None:
    ch = rig.channel()
    await run(ch, pay())
    with pytest.raises(IdempotencyConflict) as exc:
        await run(ch, pay(), {"amount": 11, "to": "A2"})
    assert exc.value.details["operation"] == "svc.pay"
    with pytest.raises(IdempotencyConflict):
        await run(ch, pay("refund"))  # same args, other operation
    other = Principal(id="agent-2", tenant="demo")
    assert not (await run(ch, pay(), principal=other)).replayed  # keys are per principal
    assert rig.backend.hits["pay"] == 2


async def test_recorded_failure_is_replayed(rig: Rig) -> None:
    rig.backend.script("pay", Scripted(409, {"error": {"message": "insufficient funds"}}))
    ch = rig.channel()
    with pytest.raises(BackendError) as first:
        await run(ch, pay())
    with pytest.raises(BackendError) as again:
        await run(ch, pay())
    assert again.value.message == first.value.message
    assert again.value.details["status"] == 409 and again.value.details["replayed"] is True
    assert "replayed" not in first.value.details
    assert rig.backend.hits["pay"] == 1
    rec = await ch.recorded(PRINCIPAL, "req-1")
    assert rec is not None and rec.error is not None and rec.error["code"] == "backend_error"


async def test_output_mismatch_reported_and_recorded(rig: Rig) -> None:
    rig.backend.script("pay", Scripted(201, {"id": 42}))
    typed = pay(output={"type": "object", "properties": {"id": {"type": "string"}}})
    ch = rig.channel()
    for _ in range(2):
        with pytest.raises(OutputInvalid) as exc:
            await run(ch, typed)
        assert exc.value.field == "result.id"
    assert rig.backend.hits["pay"] == 1  # the effect happened once; not re-sent


async def test_unreachable_backend_releases_the_claim(rig: Rig) -> None:
    with pytest.raises(BackendUnavailable) as exc:
        await run(rig.channel(base_url=free_port_refusing()), pay())
    assert exc.value.details["may_have_applied"] is False
    assert await rig.store.get(idempotency_key(PRINCIPAL, "req-1")) is None
    assert not (await run(rig.channel(), pay())).replayed  # a clean retry once it is back
    assert rig.backend.hits["pay"] == 1


async def test_503_not_applied_retry_sends_again(rig: Rig) -> None:
    # 503 means "not acted on": the client may retry it even for a POST (3 attempts here)
    rig.backend.script("pay", *[Scripted(503, {"detail": "maintenance"})] * 3)
    ch = rig.channel()
    with pytest.raises(BackendError) as exc:
        await run(ch, pay())
    assert exc.value.details["attempts"] == 3 and exc.value.details["may_have_applied"] is False
    assert await rig.store.get(idempotency_key(PRINCIPAL, "req-1")) is None
    assert (await run(ch, pay())).result["echo"]["json"] == ARGS
    assert rig.backend.hits["pay"] == 4


async def test_timeout_without_reconciler_is_outcome_unknown(rig: Rig) -> None:
    rig.backend.script("pay", Scripted(201, {"id": "T1"}, delay_s=0.6))
    ch = rig.channel(timeout_ms=150)
    with pytest.raises(BackendUnavailable) as exc:
        await run(ch, pay())
    assert exc.value.details["outcome"] == "unknown"
    for _ in range(2):
        with pytest.raises(OutcomeUnknown) as unknown:
            await run(ch, pay())
        assert unknown.value.code == "outcome_unknown" and unknown.value.field == "request_id"
    await asyncio.sleep(0.6)
    assert rig.backend.hits["pay"] == 1  # never sent twice


async def test_timeout_with_key_aware_backend_resends_same_key(rig: Rig) -> None:
    # Declared idempotency-aware: the client itself retries the timed-out POST (3 attempts),
    # and a later retry of the request re-sends with the same key: the backend deduplicates.
    rig.backend.script("pay", *[Scripted(201, {"id": "T1"}, delay_s=0.6)] * 3)
    ch = rig.channel(timeout_ms=150, aware=True)
    with pytest.raises(BackendUnavailable) as exc:
        await run(ch, pay())
    assert exc.value.details["attempts"] == 3
    rig.backend.script("pay", Scripted(201, {"id": "T1"}))
    out = await run(ch, pay())
    assert out.result == {"id": "T1"} and rig.backend.hits["pay"] == 4
    keys = {r["headers"]["idempotency-key"] for r in rig.backend.requests}
    assert keys == {idempotency_key(PRINCIPAL, "req-1")}


def lookup_op() -> Operation:
    return op("lookup", "GET", params=(Parameter("idempotency_key", "query"),))


async def test_reconciler_finds_earlier_effect(rig: Rig) -> None:
    key = idempotency_key(PRINCIPAL, "req-1")
    rig.backend.script("pay", Scripted(201, {"id": "T1"}, delay_s=0.5))
    rig.backend.script("lookup", Scripted(200, [{"id": "T0", "idempotency_key": "other"},
                                                {"id": "T1", "idempotency_key": key}]))
    ch = rig.channel(timeout_ms=100, reconcilers={"svc.pay": Reconciler(lookup_op())})
    with pytest.raises(BackendUnavailable):
        await run(ch, pay())
    out = await run(ch, pay())
    assert out.replayed and out.result == {"id": "T1", "idempotency_key": key}
    assert rig.backend.requests[-1]["query"] == [("idempotency_key", key)]
    again = await run(ch, pay())  # now recorded: no further lookups
    assert again.replayed and rig.backend.hits["lookup"] == 1 and rig.backend.hits["pay"] == 1


async def test_reconciler_not_found_waits_to_settle_then_resends(rig: Rig) -> None:
    rig.backend.script("pay", Scripted(502, {"detail": "upstream reset"}))
    rig.backend.script("lookup", Scripted(200, []), Scripted(200, []))
    ch = rig.channel(reconcilers={"svc.pay": Reconciler(lookup_op())}, settle_s=0.3)
    with pytest.raises(BackendError):
        await run(ch, pay())
    out = await run(ch, pay())
    assert not out.replayed and out.result["echo"]["json"] == ARGS
    assert rig.backend.hits["lookup"] == 2 and rig.backend.hits["pay"] == 2


async def test_reconciler_not_settled_within_wait_is_in_flight(rig: Rig) -> None:
    rig.backend.script("pay", Scripted(502, {}))
    rig.backend.script("lookup", Scripted(200, []))
    ch = rig.channel(reconcilers={"svc.pay": Reconciler(lookup_op())}, settle_s=30,
                     settings=IdempotencySettings(wait_s=0.1))
    with pytest.raises(BackendError):
        await run(ch, pay())
    with pytest.raises(DuplicateInFlight) as exc:
        await run(ch, pay())
    assert exc.value.details["retry_after_s"] > 25
    assert rig.backend.hits["pay"] == 1


async def test_cancelled_mid_call_leaves_an_unknown_outcome(rig: Rig) -> None:
    rig.backend.script("pay", Scripted(201, {"id": "T1"}, delay_s=1.5))
    ch = rig.channel()
    task = asyncio.create_task(run(ch, pay()))
    # Cancel once the call is at the backend (it holds the answer for 1.5 s).
    await wait_until(lambda: rig.backend.hits["pay"] == 1, what="the call in flight")
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    rec = await rig.store.get(idempotency_key(PRINCIPAL, "req-1"))
    assert rec is not None and rec.state == "pending" and rec.owner == "" and rec.attempts == 1
    with pytest.raises(OutcomeUnknown):
        await run(ch, pay())
    await asyncio.sleep(0.3)
    assert rig.backend.hits["pay"] == 1


def test_discover_reconcilers_pairs_post_with_keyed_lookup() -> None:
    from tools_support import CREATE_TRANSFER, LIST_TRANSFERS

    from gateway.tools import discover_reconcilers

    unrelated = op("other", "POST", "/payouts", backend="ledger")
    found = discover_reconcilers([LIST_TRANSFERS, CREATE_TRANSFER, unrelated, lookup_op()])
    assert found == {"ledger.create_transfer": Reconciler(LIST_TRANSFERS, "idempotency_key")}


async def test_non_json_arguments_rejected_before_anything(rig: Rig) -> None:
    loose = op("loose", "POST", schema={"type": "object"}, params=(Parameter("x", "body"),))
    with pytest.raises(InvalidRequest) as exc:
        await run(rig.channel(), loose, {"x": float("nan")})
    assert exc.value.field == "arguments"
    assert rig.backend.hits["loose"] == 0


async def test_lease_kept_alive_by_heartbeat_during_a_long_call(rig: Rig) -> None:
    rig.backend.script("pay", Scripted(201, {"id": "T1"}, delay_s=2.5))
    short = IdempotencySettings(lease_s=0.6, wait_s=0.1)
    owner = rig.channel(settings=short, timeout_ms=5000)
    first = asyncio.create_task(run(owner, pay()))
    await asyncio.sleep(1.4)  # > 2 leases: only the heartbeat keeps the claim
    rec = await rig.store.get(idempotency_key(PRINCIPAL, "req-1"))
    assert rec is not None and rec.owner == owner.owner and rec.lease_until > time.time()
    with pytest.raises(DuplicateInFlight):
        await run(rig.channel(settings=short), pay())
    assert (await first).result == {"id": "T1"}
    assert rig.backend.hits["pay"] == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=8)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.text(max_size=6), json_values, max_size=5))
def test_fingerprint_ignores_key_order_and_int_float_spelling(args: dict[str, Any]) -> None:
    from gateway.tools.channel import fingerprint

    reordered = dict(reversed(list(args.items())))
    as_floats = {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v
                 for k, v in args.items()}
    assert fingerprint(pay(), args) == fingerprint(pay(), reordered)
    assert fingerprint(pay(), args) == fingerprint(pay(), as_floats)
    assert fingerprint(pay(), args) != fingerprint(pay(), {**args, "\x00extra": 1})
    assert fingerprint(pay(), args) != fingerprint(pay("refund"), args)


async def test_reads_skip_the_store_and_read_again_on_retry(rig: Rig) -> None:
    """A GET has no effect to keep at most once: no record, no replay, no conflict."""
    ch = rig.channel()
    read = op("look", "GET")
    first = await run(ch, read, {})
    assert not first.replayed and first.result["echo"]["method"] == "GET"
    assert "idempotency-key" not in first.result["echo"]["headers"]
    assert await rig.store.get(idempotency_key(PRINCIPAL, "req-1")) is None
    again = await run(ch, read, {})
    assert not again.replayed and rig.backend.hits["look"] == 2
    # The same request_id may still be used for a payment afterwards: the read left nothing.
    paid = await run(ch, pay())
    assert not paid.replayed and rig.backend.hits["pay"] == 1


async def test_concurrent_payments_share_commits_and_each_takes_effect_once(rig: Rig) -> None:
    ch = rig.channel()
    outs = await asyncio.gather(*(run(ch, pay(), rid=f"req-{i}") for i in range(24)))
    assert not any(o.replayed for o in outs) and rig.backend.hits["pay"] == 24
    for i in range(24):
        rec = await rig.store.get(idempotency_key(PRINCIPAL, f"req-{i}"))
        assert rec is not None and rec.state == "done" and rec.attempts == 1
    again = await asyncio.gather(*(run(ch, pay(), rid=f"req-{i}") for i in range(24)))
    assert all(o.replayed for o in again) and rig.backend.hits["pay"] == 24
