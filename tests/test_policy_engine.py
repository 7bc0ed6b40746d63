"""The embedded engine on the shipped policy: routing semantics, decision ids/revisions, the
decision log with masks applied, and fail-closed denies for every kind of policy problem."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import policy_support as ps
import pytest
import structlog

from gateway.errors import PolicyError
from gateway.policy import (
    EmbeddedPolicyEngine,
    PolicyEngine,
    PolicySettings,
    build_input,
    create_policy_engine,
    redact,
)

# A regorus Engine dropped on a thread other than its creator's is an "unraisable" error:
# make it fail the test, so thread affinity is checked, not just hoped for.
pytestmark = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(autouse=True)
def _decision_lines_at_info(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests read the `policy.decision` line of every decision: log it at info (as
    `audit.decision_log_level: info` does) whatever an earlier test configured."""
    import logging

    import gateway.audit.logs

    monkeypatch.setattr(gateway.audit.logs, "_decision_level", logging.INFO)


@pytest.fixture
async def engine() -> AsyncIterator[EmbeddedPolicyEngine]:
    eng = EmbeddedPolicyEngine(PolicySettings(path=ps.POLICY_DIR, reload=False))
    await eng.start()
    yield eng
    await eng.close()


tool, host_call, code_run = ps.tool, ps.host_call, ps.code_run


async def test_engine_satisfies_protocol(engine: EmbeddedPolicyEngine) -> None:
    assert isinstance(engine, PolicyEngine)
    assert engine.revision.startswith("sha256:") and len(engine.revision) == 23


async def test_transfer_from_code_names_the_tool(engine: EmbeddedPolicyEngine) -> None:
    for principal in (ps.AGENT, ps.FINANCE):
        d = await engine.decide(host_call(principal, "ledger.create_transfer", amount=5))
        assert d.route == "deny" and not d.error_code
        assert d.reasons == (
            "ledger.create_transfer is a dedicated tool: call it with tool_call, not from code",
        )


async def test_transfer_tool_needs_finance(engine: EmbeddedPolicyEngine) -> None:
    d = await engine.decide(tool(ps.AGENT, "ledger.create_transfer", amount=5))
    assert d.route == "deny"
    assert any("requires the role finance" in r for r in d.reasons)
    d = await engine.decide(tool(ps.FINANCE, "ledger.create_transfer", amount=5))
    assert d.route == "tool" and d.allowed
    assert "idempotency.required" in d.obligations


async def test_reads_go_through_code_or_tool(engine: EmbeddedPolicyEngine) -> None:
    assert (await engine.decide(host_call(ps.AGENT, "ledger.get_balance"))).route == "code"
    assert (await engine.decide(tool(ps.AGENT, "ledger.list_accounts"))).route == "tool"
    assert (await engine.decide(code_run(ps.AGENT))).route == "code"


async def test_unknown_operation_and_tenant_denied(engine: EmbeddedPolicyEngine) -> None:
    d = await engine.decide(tool(ps.FINANCE, "ledger.drop_everything"))
    assert d.route == "deny" and "unknown operation" in d.reasons[0]
    from gateway.models import Principal

    stranger = Principal(id="s", tenant="acme", roles=("agent", "finance"))
    d = await engine.decide(host_call(stranger, "ledger.get_balance"))
    assert d.route == "deny" and any('unknown tenant "acme"' in r for r in d.reasons)


async def test_limits_per_role(engine: EmbeddedPolicyEngine) -> None:
    agent = await engine.decide(code_run(ps.AGENT))
    finance = await engine.decide(code_run(ps.FINANCE))
    assert (agent.limits.timeout_ms, agent.limits.max_host_calls) == (5000, 50)
    assert (finance.limits.timeout_ms, finance.limits.max_host_calls) == (10000, 200)
    assert finance.limits.max_output_bytes == 65536


async def test_ids_and_revision_filled(engine: EmbeddedPolicyEngine) -> None:
    a = await engine.decide(code_run(ps.AGENT))
    b = await engine.decide(code_run(ps.AGENT))
    assert a.decision_id and b.decision_id and a.decision_id != b.decision_id
    assert a.policy_revision == engine.revision


async def test_decision_log_redacts_mask(engine: EmbeddedPolicyEngine) -> None:
    inp = tool(
        ps.FINANCE,
        "ledger.create_transfer",
        from_account="ACC-111",
        to_account="ACC-222",
        amount=5,
        card_number="4111",
    )
    with structlog.testing.capture_logs() as logs:
        d = await engine.decide(inp)
    events = [e for e in logs if e["event"] == "policy.decision"]
    assert len(events) == 1
    ev = events[0]
    assert ev["decision_id"] == d.decision_id and ev["policy_revision"] == engine.revision
    assert ev["route"] == "tool" and ev["latency_ms"] >= 0
    args = ev["input"]["action"]["arguments"]
    assert args == {
        "from_account": "[redacted]",
        "to_account": "[redacted]",
        "amount": 5,
        "card_number": "[redacted]",
    }
    assert inp["action"]["arguments"]["from_account"] == "ACC-111"  # caller's input untouched
    assert ev["result"]["limits"]["timeout_ms"] == 10000


def test_redact_paths() -> None:
    value = {"a": {"b": 1, "c": [{"d": 1, "e": 2}, {"d": 3}]}, "x": "keep"}
    out = redact(value, ["a.b", "a.c.*.d", "missing.path", "a.c.5.d"])
    assert out == {
        "a": {"b": "[redacted]", "c": [{"d": "[redacted]", "e": 2}, {"d": "[redacted]"}]},
        "x": "keep",
    }
    assert value["a"]["b"] == 1
    assert redact(value, ["a"]) == {"a": "[redacted]", "x": "keep"}
    assert redact([1, 2], ["1"]) == [1, "[redacted]"]
    # A shorter path wins whatever the order; "*" covers every key or element.
    assert (
        redact(value, ["a.b", "a"])
        == redact(value, ["a", "a.b"])
        == {"a": "[redacted]", "x": "keep"}
    )
    assert redact({"k": {"p": 1, "q": 2}}, ["k.*"]) == {"k": {"p": "[redacted]", "q": "[redacted]"}}
    assert redact(value, []) is value


def test_build_input_shape() -> None:
    inp = tool(ps.FINANCE, "ledger.create_transfer", amount=1)
    assert inp["principal"] == {"id": "finance-1", "tenant": "demo", "roles": ["agent", "finance"]}
    assert inp["action"] == {
        "kind": "tool",
        "operation": "ledger.create_transfer",
        "arguments": {"amount": 1},
    }
    assert inp["operation"]["tags"] == ["compliance", "payments"]
    assert isinstance(inp["context"]["time_ns"], int) and inp["context"]["labels"] == {}
    unknown = build_input(principal=ps.AGENT, kind="tool", operation=None, operation_name="x.y")
    assert unknown["operation"] == {} and "arguments" not in unknown["action"]


# ---------------------------------------------------------------------------------------------
# Fail closed: every way the policy can fail to decide is a deny with error_code policy_error.

DECISION_OK = '{"route": "code", "reasons": ["ok"]}'


def policy_dir(tmp_path: Path, body: str) -> Path:
    root = tmp_path / "p"
    (root / "switchboard").mkdir(parents=True)
    src = "package switchboard.routing\n\nimport rego.v1\n\n" + textwrap.dedent(body)
    (root / "switchboard" / "routing.rego").write_text(src)
    return root


async def decide_with(root: Path, inp: dict[str, Any] | None = None) -> Any:
    eng = create_policy_engine(PolicySettings(path=root, reload=False))
    await eng.start()
    try:
        with structlog.testing.capture_logs() as logs:
            d = await eng.decide(inp or code_run(ps.AGENT))
        assert [e["error_code"] for e in logs if e["event"] == "policy.decision"] == [
            d.error_code or None
        ]
        return d
    finally:
        await eng.close()


@pytest.mark.parametrize(
    ("label", "body", "reason"),
    [
        (
            "engine error",
            "n := input.principal.id + 1\n"
            'decision := {"route": "code", "reasons": [sprintf("%d", [n])]}\n',
            "evaluation failed",
        ),
        ("undefined", f"decision := {DECISION_OK} if input.never\n", "undefined"),
        ("null", "decision := null\n", "undefined"),
        ("not an object", 'decision := "allow"\n', "must be an object"),
        ("bad route", 'decision := {"route": "allow", "reasons": []}\n', "decision.route"),
        (
            "reasons not strings",
            'decision := {"route": "code", "reasons": [1]}\n',
            "decision.reasons",
        ),
        (
            "negative limit",
            'decision := {"route": "code", "reasons": [], "limits": {"timeout_ms": -1}}\n',
            "limits.timeout_ms",
        ),
        (
            "bool limit",
            'decision := {"route": "code", "reasons": [], "limits": {"memory_mb": true}}\n',
            "limits.memory_mb",
        ),
        (
            "tool route for code",
            'decision := {"route": "tool", "reasons": []}\n',
            "not valid for a code action",
        ),
    ],
)
async def test_fail_closed(tmp_path: Path, label: str, body: str, reason: str) -> None:
    d = await decide_with(policy_dir(tmp_path, body))
    assert d.route == "deny", label
    assert d.error_code == "policy_error"
    assert reason in d.reasons[0]
    assert d.mask == ("action.arguments",)  # nothing known about secrets: redact all arguments
    assert d.decision_id and d.policy_revision


async def test_well_formed_minimal_policy_is_allowed(tmp_path: Path) -> None:
    d = await decide_with(policy_dir(tmp_path, f"decision := {DECISION_OK}\n"))
    assert d.route == "code" and not d.error_code and d.reasons == ("ok",)


async def test_set_valued_reasons_accepted(tmp_path: Path) -> None:
    body = 'r contains "b"\nr contains "a"\ndecision := {"route": "deny", "reasons": r}\n'
    d = await decide_with(policy_dir(tmp_path, body))
    assert d.route == "deny" and d.reasons == ("a", "b") and not d.error_code


async def test_non_object_input_denies(engine: EmbeddedPolicyEngine) -> None:
    for bad in (None, [1], "x"):
        d = await engine.decide(bad)  # type: ignore[arg-type]
        assert d.route == "deny" and d.error_code == "policy_error"


async def test_not_started_denies() -> None:
    eng = create_policy_engine(PolicySettings(path=ps.POLICY_DIR, reload=False))
    d = await eng.decide(code_run(ps.AGENT))
    assert d.route == "deny" and d.error_code == "policy_error"


async def test_start_rejects_broken_policy(tmp_path: Path) -> None:
    eng = create_policy_engine(
        PolicySettings(path=policy_dir(tmp_path, "decision := {\n"), reload=False)
    )
    with pytest.raises(PolicyError):
        await eng.start()
    missing = create_policy_engine(PolicySettings(path=tmp_path / "nope", reload=False))
    with pytest.raises(PolicyError, match="does not exist"):
        await missing.start()


async def test_env_overrides_default_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = policy_dir(tmp_path, f"decision := {DECISION_OK}\n")
    monkeypatch.setenv("SWITCHBOARD_POLICY_DIR", str(root))
    eng = create_policy_engine(PolicySettings(reload=False))
    await eng.start()
    try:
        assert (await eng.decide(code_run(ps.AGENT))).reasons == ("ok",)
    finally:
        await eng.close()


async def test_other_thread_gets_its_own_engine(engine: EmbeddedPolicyEngine) -> None:
    import asyncio

    want = await engine.decide(tool(ps.FINANCE, "ledger.create_transfer"))
    got = await asyncio.to_thread(
        lambda: asyncio.run(engine.decide(tool(ps.FINANCE, "ledger.create_transfer")))
    )
    assert got.route == want.route == "tool" and got.reasons == want.reasons


async def test_decide_span_attributes(
    engine: EmbeddedPolicyEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A private SDK provider (tests may use the SDK; gateway/policy only uses the API), patched
    # in so no global tracer provider is touched.
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from gateway.policy import decisionlog

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(decisionlog, "tracer", provider.get_tracer("switchboard.policy"))
    monkeypatch.setattr("gateway.policy.embedded.tracer", provider.get_tracer("switchboard.policy"))
    d = await engine.decide(tool(ps.AGENT, "ledger.create_transfer"))
    (span,) = exporter.get_finished_spans()
    assert span.name == "policy.decide"
    assert span.attributes is not None
    assert span.attributes["switchboard.decision_id"] == d.decision_id
    assert span.attributes["switchboard.route"] == "deny"
    assert span.attributes["switchboard.policy_revision"] == engine.revision


def test_engine_panic_fails_closed() -> None:
    """A Rust panic inside regorus (here: using an Engine from a foreign thread, which pyo3
    turns into PanicException, a BaseException) is a fail-closed deny, not a crash."""
    import threading

    from gateway.policy.bundle import load_bundle
    from gateway.policy.embedded import Evaluator

    ev = Evaluator(load_bundle(ps.POLICY_DIR), cache_size=0)
    foreign = ev._engine()  # this thread's engine, used below from another thread
    ev._engine = lambda: foreign  # type: ignore[method-assign]
    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(ev.decide(code_run(ps.AGENT))))
    worker.start()
    worker.join()
    (d,) = out
    assert d.route == "deny" and d.error_code == "policy_error"
    assert "panicked" in d.reasons[0]
