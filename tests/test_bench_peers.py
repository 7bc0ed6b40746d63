"""bench/peers.py's pure parts (argument parsing, goal verdicts, table rendering, the "what bounds
it" text) and its bench/peers_lib pieces that need no peer: the echo floor's server answering
its target, the `serve --processes` config, channel rotation. No peer is installed or started
here and nothing is timed."""

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
    from peers_lib import code_peers, contextforge  # on sys.path once bench/peers.py loaded

    monkeypatch.setattr(contextforge, "CF_VENV", peers.REPO / "no-such-venv")
    monkeypatch.setattr(code_peers, "SMOL_VENV", peers.REPO / "no-such-venv")
    monkeypatch.setattr(code_peers, "WORKERD", tmp_path / "workerd")
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
    from peers_lib import code_peers

    monkeypatch.setattr(code_peers, "CODEMODE_DIST", dist)
    monkeypatch.setattr(code_peers, "ACORN", tmp_path / "acorn.mjs")
    work = tmp_path / "work"
    work.mkdir()
    config = code_peers.codemode_config(work, 18787).read_text()
    assert 'address = "127.0.0.1:18787"' in config
    assert 'workerLoader = ()' in config
    for name in ("worker.js", "codemode/index.js", "codemode/shared-x.js", "codemode/acorn"):
        assert f'(name = "{name}", esModule = embed "m/' in config


# -- the floors, the processes row and the "what bounds it" column (bench/peers_lib) ----------


def test_new_skip_names_parse(peers: ModuleType) -> None:
    args = peers.parse_args(["--quick", "--skip", "floors", "--skip", "processes"])
    assert args.skip == ["floors", "processes"]
    full = peers.parse_args([])
    assert args.floor_restores < full.floor_restores and args.pool_runs < full.pool_runs


TOOL_RES = {
    "seq": {"direct": {"p50_ms": 1.0, "p99_ms": 2.0},
            "sb_grpc": {"p50_ms": 3.0, "p99_ms": 5.0, "added_p50_ms": 2.0},
            "echo_floor": {"p50_ms": 0.8, "p99_ms": 1.2, "added_p50_ms": -0.2}},
    "conc": {"sb_grpc": {"calls_per_s": 300.0, "errors": 0, "cpu_ms_per_call": 2.5,
                         "driver_cpu_ms_per_call": 1.0},
             "sb_deny": {"calls_per_s": 500.0, "errors": 0, "cpu_ms_per_call": 1.5,
                         "driver_cpu_ms_per_call": 0.5},
             "echo_floor": {"calls_per_s": 2000.0, "errors": 0, "cpu_ms_per_call": 0.4,
                            "driver_cpu_ms_per_call": 0.3},
             "backend_raw": {"calls_per_s": 9000.0, "errors": 0, "cpu_ms_per_call": 0.1,
                             "driver_cpu_ms_per_call": 0.1},
             "sb_grpc_8ch": {"calls_per_s": 320.0, "errors": 0, "cpu_ms_per_call": 2.5,
                             "driver_cpu_ms_per_call": 1.0},
             "sb_p2": {"calls_per_s": 400.0, "errors": 0, "cpu_ms_per_call": 3.0,
                       "driver_cpu_ms_per_call": 1.0}},
    "search": {"cpu_ms_per_query": 1.25},
}
CODE_RES = {"runners": [
    {"key": "floor_restore", "cpu_s_per_run": 0.25, "p50_ms": 200.0},
    {"key": "floor_pool_session", "cpu_s_per_run": 0.002, "runs_per_s": 500.0},
    {"key": "sb_isolated", "cpu_s_per_run": 0.5},
    {"key": "sb_warm", "p50_ms": 20.0},
    {"key": "sb_session_seq", "cpu_s_per_run": 0.004},
    {"key": "sb_session", "cpu_s_per_run": 0.005},
]}


def _bounds(peers: ModuleType) -> dict[str, str]:
    b = peers.bounds
    values = {**b.tool_values(TOOL_RES, 2), **b.code_values(CODE_RES, 2)}
    return {g.key: b.bound_text(g.key, g.target, values) for g in peers.GOALS}


def test_bounds_text_is_computed_from_the_rows(peers: ModuleType) -> None:
    got = _bounds(peers)
    # echo 0.4 ms of the 1 ms budget; the gateway's 2.5 ms is 2.1 ms more
    assert "echo alone: 0.40 ms CPU/call = 40 % of the 1 ms budget; gateway adds 2.10 ms" \
        in got["tool_cpu_ms"]
    assert "`serve --processes 2` tree: 3.00 ms/call" in got["tool_cpu_ms"]
    assert "p50 0.80 ms (-0.20 ms vs direct HTTP" in got["tool_added_p50_ms"]
    assert "adds +2.20 ms over the echo" in got["tool_added_p50_ms"]
    # 2.5 + 1.0 + 0.1 = 3.6 ms on 2 cores → ≤ 556/s; p2 400 vs p1 320 = 1.25x, 1.2 cores
    assert "gateway 2.50 + driver 1.00 + backend 0.10 = 3.60 ms → ≤ 556/s on 2 cores" \
        in got["tool_calls_per_s"]
    assert "echo floor measured 2,000/s" in got["tool_calls_per_s"]
    assert "400/s = 1.25x 1 process (320/s, both 8 channels, tree 1.20 cores)" \
        in got["tool_calls_per_s"]
    assert "gateway 1.50 + driver 0.50 = 2.00 ms → ≤ 1,000/s on 2 cores" in got["denials_per_s"]
    # 0.25 CPU-s per restore → 8 runs/s on 2 cores; half of the gateway's 0.5 CPU-s run
    assert "a bare restore is 0.250 CPU-s → ≤ 8.0 runs/s on 2 cores" in got["isolated_runs_per_s"]
    assert "(the restore 50 % of it)" in got["isolated_runs_per_s"]
    assert "echo p50 0.80 ms + a run on the pool alone 2.00 ms (mean) = 2.80 ms" \
        in got["warm_isolated_p50_ms"]
    assert "pool alone: 2.00 ms CPU → ≤ 1,000/s on 2 cores" in got["session_runs_per_s"]
    assert "(sequential) 2.00 of 4.00 ms (50 %)" in got["session_runs_per_s"]
    assert "(8 callers) 3.00 of 5.00 ms (60 %)" in got["session_runs_per_s"]
    assert got["search_p50_ms"].startswith("1.25 ms gateway CPU per query")
    assert "waits for a restore: 200 ms wall" in got["warm_isolated_p50_ms"]
    assert "restore alone is 0.20 s wall (bare, p50) of the 3 s" in got["serve_to_serving_s"]


def test_bounds_text_follows_the_numbers(peers: ModuleType) -> None:
    res = {**TOOL_RES, "conc": {**TOOL_RES["conc"], "echo_floor": {
        **TOOL_RES["conc"]["echo_floor"], "cpu_ms_per_call": 0.6}}}
    b = peers.bounds
    text = b.bound_text("tool_cpu_ms", 1.0, b.tool_values(res, 2))
    assert "0.60 ms CPU/call = 60 % of the 1 ms budget; gateway adds 1.90 ms" in text
    text = b.bound_text("tool_cpu_ms", 0.5, b.tool_values(res, 2))
    assert "= 120 % of the 0.5 ms budget" in text


def test_bounds_without_floors_say_nothing(peers: ModuleType) -> None:
    b = peers.bounds
    values = {**b.tool_values({"seq": {}, "conc": {}}, 2), **b.code_values({}, 2)}
    assert all(b.bound_text(g.key, g.target, values) == "-" for g in peers.GOALS)
    table = peers.goals_table({}, values)
    assert "what bounds it (measured)" in table.splitlines()[0]


def test_goals_table_carries_the_bounds(peers: ModuleType) -> None:
    b = peers.bounds
    values = {**b.tool_values(TOOL_RES, 2), **b.code_values(CODE_RES, 2)}
    table = peers.goals_table({"tool_cpu_ms": 2.5}, values)
    row = next(line for line in table.splitlines() if line.startswith("| gateway CPU per"))
    assert "| 2.50 ms | missed | 2.5x over (+1.50 ms) | grpc.aio echo alone: 0.40 ms" in row


def test_tools_table_shows_the_new_rows(peers: ModuleType) -> None:
    table = peers.tools_table(TOOL_RES)
    assert "| floor: bare grpc.aio unary echo (no gateway; CPU: the echo server's) | 0.80 |" \
        in table
    assert "| Switchboard `serve --processes 2`, gRPC, 8 channels (whole tree's CPU) | - | - " \
        "| - | - | 3.00 | 400 |" in table
    assert "1 process, 8 channels" in table


def test_serve_config_for_processes(peers: ModuleType, tmp_path: Path) -> None:
    cfg = peers.processes.serve_config(tmp_path, "http://127.0.0.1:9", 2)
    assert cfg["server"] == {"processes": 2}
    assert cfg["backends"][0]["openapi"] == "http://127.0.0.1:9/openapi.json"
    assert set(cfg["identity"]["tokens"]) == {peers.TOKEN_AGENT, peers.TOKEN_FINANCE}


def test_echo_floor_server_answers(peers: ModuleType) -> None:
    """The echo floor's server (the gateway's server options) returns the request's bytes to
    the target that drives it, with the bearer metadata a gateway call carries."""
    import asyncio

    floors = peers.floors
    opts = dict(floors.echo_server_options())
    assert opts["grpc.so_reuseport"] == 0 and opts["grpc.max_receive_message_length"] > 1024

    async def main() -> None:
        server, port = await floors.start_echo_server()
        target = floors.EchoTarget(port, 0, peers.TOKEN_AGENT)
        try:
            await target.open()
            assert await target.call() and await target.call()
            assert len(target.payload) > 10 and target.last_error == ""
            await target.close()
        finally:
            await server.stop(None)

    asyncio.run(main())


def test_channels_rotate_over_callers(peers: ModuleType) -> None:
    import asyncio

    async def main() -> None:
        t = peers.SbGrpc(1, 0, channels=3, name="x")
        await t.open()
        try:
            seen = []
            for _ in range(4):
                async with t.caller() as c:
                    seen.append(c.stub)
            assert seen[0] is t.stubs[0] and seen[1] is t.stubs[1] and seen[3] is t.stubs[0]
            assert len({id(s) for s in seen}) == 3
        finally:
            await t.close()

    asyncio.run(main())
