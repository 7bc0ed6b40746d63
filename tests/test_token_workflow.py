"""The data-heavy token workflow, run for real: seeded demo backends as subprocesses, a real
``switchboard serve`` with its sandbox, the classic agent's tool results the backends' own
responses, the code agent's result the gateway's own reply. Token counts, never wall-clock."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import switchboard_tokenbench as tb


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tb.HeavyStack]:
    with tb.heavy_stack(tmp_path_factory.mktemp("heavy")) as running:
        yield running


def _flagged(data: tb.HeavyData) -> set[str]:
    totals: dict[str, int] = {}
    for _id, src, _dst, cents, _cur, _memo, created in data.transfers:
        if tb.HEAVY_SINCE <= created < tb.HEAVY_UNTIL:
            totals[src] = totals.get(src, 0) + cents
    return {a for a, cents in totals.items() if cents > tb.HEAVY_THRESHOLD * 100}


def test_dataset_is_deterministic_and_flags_the_same_accounts_at_every_size() -> None:
    small, again, big = tb.heavy_dataset(100), tb.heavy_dataset(100), tb.heavy_dataset(2000)
    assert small == again
    in_month = [t for t in big.transfers if tb.HEAVY_SINCE <= t[6] < tb.HEAVY_UNTIL]
    assert len(in_month) == 2000 and len(big.transfers) == 3000
    assert len({t[0] for t in big.transfers}) == 3000  # unique ids
    flagged = {f"C{i + 1:03d}" for i in tb.HEAVY_FLAGGED}
    assert _flagged(small) == _flagged(big) == flagged
    assert len({c[0] for c in big.contacts}) == tb.HEAVY_ACCOUNTS


def test_classic_context_carries_every_row_code_context_none(stack: tb.HeavyStack) -> None:
    from gateway.catalog import load_catalog_sync
    from gateway.client import SwitchboardClient
    from gateway.models import BackendSettings

    data = tb.heavy_dataset(150)
    tb.seed_heavy(stack.state / "ledger.db", stack.state / "workspace.db", data)
    catalog = load_catalog_sync([
        BackendSettings(name="ledger", openapi=f"{stack.ledger_url}/openapi.json"),
        BackendSettings(name="workspace", openapi=f"{stack.workspace_url}/openapi.json"),
    ])
    assert "ledger.export_transfers" in catalog
    classic, answer = tb.classic_heavy_transcript(
        tb.classic_tools(catalog.operations), stack.ledger_url, stack.workspace_url)
    with SwitchboardClient(stack.target, stack.token, timeout=120) as sb:
        manifest = list(sb.manifest("openai").formatted)
        code, result = tb.code_heavy_transcript(sb, manifest)
    assert result == answer and answer.startswith("Emailed 5 owners: C004 ")
    month = [t[0] for t in data.transfers if tb.HEAVY_SINCE <= t[6] < tb.HEAVY_UNTIL]
    october = [t[0] for t in data.transfers if t[6] < tb.HEAVY_SINCE]
    classic_text, code_text = json.dumps(classic.messages), json.dumps(code.messages)
    assert all(t in classic_text for t in month)  # the model read every row of the month
    assert not any(t in classic_text for t in october)  # and the API's date filter held
    # The code agent's context: the task, its program and the one-line result. The ids in the
    # emails (three per flagged account) appear nowhere in it.
    assert not any(t in code_text for t in month)
    assert [m["role"] for m in code.messages] == ["system", "user", "assistant", "tool",
                                                  "assistant"]
    reply = json.loads(code.messages[3]["content"])
    assert reply["ok"] is True and reply["result"] == answer


def test_code_side_is_flat_classic_side_grows_and_the_saving_at_2000_rows(
    stack: tb.HeavyStack,
) -> None:
    rows = tb.run_heavy_workflow(stack, (100, 400, tb.HEAVY_DOC_SIZE))
    assert [r["size"] for r in rows] == [100, 400, tb.HEAVY_DOC_SIZE]
    for r in rows:
        assert r["agree"], (r["answer"], r["result"])
        assert set(r) >= {"classic", "code", "discover", "floor", "rows_total"}
        assert r["code"]["calls"] == 2 and r["discover"]["calls"] == 4
        assert r["classic"]["calls"] >= 3
        assert r["classic"]["input"] > r["floor"] > r["code"]["input"]
    code = [r["code"]["input"] for r in rows]
    classic = [r["classic"]["input"] for r in rows]
    # The code side does not grow with the data (a digit or two of the totals may differ) ...
    assert max(code) - min(code) <= 10
    assert max(r["code"]["output"] for r in rows) == min(r["code"]["output"] for r in rows)
    # ... the classic side grows at least linearly with the rows it has to read.
    assert classic[0] < classic[1] < classic[2]
    per_row = (classic[1] - classic[0]) / 300
    assert per_row > 60  # each row is read on at least one later model call
    doc = rows[-1]
    saving = 100 * (doc["classic"]["input"] - doc["code"]["input"]) / doc["classic"]["input"]
    assert saving >= 98.7, saving
    lines = tb.render_heavy(rows)
    assert any(line.startswith(f"| {tb.HEAVY_DOC_SIZE:,} |") for line in lines)
    assert any("--workflow data-heavy" in line for line in lines)


def test_main_writes_its_own_section(
    stack: tb.HeavyStack, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--workflow data-heavy --out`` fills its own markers and leaves the rest alone."""
    out = tmp_path / "agents.md"
    out.write_text(f"# A\n\n{tb.MARK_BEGIN}\nold\n{tb.MARK_END}\n")

    def fake(sizes: Any, state: Any = None) -> str:
        return "\n".join(tb.render_heavy(tb.run_heavy_workflow(stack, sizes))) + "\n"

    monkeypatch.setattr(tb, "run_heavy_report", fake)
    assert tb.main(["--workflow", "data-heavy", "--sizes", "100", "--out", str(out)]) == 0
    text = out.read_text()
    assert f"{tb.MARK_BEGIN}\nold\n{tb.MARK_END}\n" in text  # the demo section is untouched
    assert text.count(tb.HEAVY_BEGIN) == 1 and "| 100 |" in text
