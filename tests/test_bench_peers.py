"""bench/peers.py's pure parts: argument parsing, goal verdicts and table rendering. No peer is
installed or started here and nothing is timed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def peers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "bench" / "peers.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_quick_defaults_and_flags(peers: ModuleType) -> None:
    quick = peers.parse_args(["--quick"])
    full = peers.parse_args([])
    assert quick.rounds == 2 and full.rounds == 3
    assert quick.duration < full.duration and quick.block < full.block
    assert quick.iterations < full.iterations and quick.cf_iterations < quick.iterations
    args = peers.parse_args(["--rounds", "5", "--only", "code", "--json", "o.json",
                             "--skip", "contextforge", "--skip", "cold"])
    assert (args.rounds, args.only, args.json) == (5, "code", "o.json")
    assert args.skip == ["contextforge", "cold"]
    with pytest.raises(SystemExit):
        peers.parse_args(["--only", "everything"])
    with pytest.raises(SystemExit):
        peers.parse_args(["--rounds", "0"])


def test_goal_verdicts(peers: ModuleType) -> None:
    goals = {g.key: g for g in peers.GOALS}
    rate, latency = goals["tool_calls_per_s"], goals["warm_isolated_p50_ms"]
    assert peers.goal_verdict(rate, 1200.0) == ("met", "-")
    assert peers.goal_verdict(rate, 250.0) == ("missed", "4.0x short")
    assert peers.goal_verdict(latency, 10.0) == ("met", "-")
    assert peers.goal_verdict(latency, 30.0) == ("missed", "2.0x over (+15.00 ms)")
    assert peers.goal_verdict(latency, None) == ("not measured", "-")
    assert peers.goal_verdict(rate, 0.0) == ("missed", "nothing")


def test_goals_table_lists_every_goal(peers: ModuleType) -> None:
    table = peers.goals_table({"tool_added_p50_ms": 2.5, "denials_per_s": 2500.0})
    lines = table.splitlines()
    assert len(lines) == 2 + len(peers.GOALS)
    assert "| tool call p50 over direct HTTP, sequential | ≤ +1 ms | 2.50 ms | missed |" in table
    assert "2,500/s | met |" in table
    assert table.count("not measured") == len(peers.GOALS) - 2


def test_tables_render_present_rows_only(peers: ModuleType) -> None:
    res = {
        "seq": {"direct": {"p50_ms": 1.0, "p99_ms": 2.0},
                "sb_grpc": {"p50_ms": 3.5, "p99_ms": 9.0, "cpu_ms_per_call": 2.0,
                            "added_p50_ms": 2.5}},
        "conc": {"sb_grpc": {"calls_per_s": 300.0, "errors": 0, "cpu_ms_per_call": 3.0},
                 "sb_deny": {"calls_per_s": 900.0, "errors": 0, "cpu_ms_per_call": 1.5}},
    }
    table = peers.tools_table(res)
    assert "ContextForge" not in table  # not measured: no row
    assert "| Switchboard, gRPC | 3.50 | 9.00 | +2.50 | 2.00 | 3.00 | 300 | - |" in table
    assert "denied by policy" in table
    code = peers.code_table({"runners": [{"label": "x", "snippet": "trivial", "n": 3,
                                          "runs_per_s": 12.0, "p50_ms": 5.0, "p99_ms": 7.0,
                                          "cpu_s_per_run": 0.1, "note": "n"}]})
    assert "| x | trivial | 3 | 12.0 | 5.00 | 7.00 | 0.1000 | n |" in code


def test_merge_rounds_takes_medians(peers: ModuleType) -> None:
    rows = [[{"key": "a", "label": "a", "n": 2, "runs_per_s": r, "p50_ms": r, "p99_ms": r,
              "cpu_s_per_run": None, "note": "x"}] for r in (1.0, 5.0, 3.0)]
    (merged,) = peers.merge_rounds(rows)
    assert merged["runs_per_s"] == 3.0 and merged["n"] == 6 and merged["cpu_s_per_run"] is None
    assert merged["note"] == "x; median of 3 rounds"


def test_pct_nearest_rank(peers: ModuleType) -> None:
    xs = [float(i) for i in range(1, 101)]
    assert peers.pct(xs, 50) in (50.0, 51.0) and peers.pct(xs, 99) == 99.0
    assert peers.pct([4.0], 99) == 4.0


def test_missing_peers_are_reported_with_a_reason(peers: ModuleType, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers, "CF_VENV", peers.REPO / "no-such-venv")
    monkeypatch.setattr(peers, "SMOL_VENV", peers.REPO / "no-such-venv")
    monkeypatch.setattr(peers, "WORKERD", tmp_path / "workerd")
    assert "not installed" in peers.contextforge_missing()
    assert "not installed" in peers.smolagents_missing()
    assert "not installed" in peers.codemode_missing()
    assert peers.INSTALL_HINT == "make bench-peers"


def test_codemode_config_embeds_every_module(peers: ModuleType, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    dist = tmp_path / "dist"
    dist.mkdir()
    for name in ("index.js", "shared-x.js"):
        (dist / name).write_text("export {};\n")
    (tmp_path / "acorn.mjs").write_text("export {};\n")
    monkeypatch.setattr(peers, "CODEMODE_DIST", dist)
    monkeypatch.setattr(peers, "ACORN", tmp_path / "acorn.mjs")
    work = tmp_path / "work"
    work.mkdir()
    config = peers.codemode_config(work, 18787).read_text()
    assert 'address = "127.0.0.1:18787"' in config
    assert 'workerLoader = ()' in config
    for name in ("worker.js", "codemode/index.js", "codemode/shared-x.js", "codemode/acorn"):
        assert f'(name = "{name}", esModule = embed "m/' in config
