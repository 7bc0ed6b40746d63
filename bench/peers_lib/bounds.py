"""The goals table's "what bounds it (measured)" column: text computed from the floors and
rows of the same bench/peers.py run (no figure in here is typed in by hand). Pure: tested in
tests/test_bench_peers.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Values = dict[str, float | None]


def _get(d: dict[str, Any] | None, *path: str) -> float | None:
    cur: Any = d
    for k in path:
        if not isinstance(cur, dict):
            return None
        cur = cur.get(k)
    return float(cur) if isinstance(cur, int | float) else None


def tool_values(res: dict[str, Any], cores: int) -> Values:
    """The tools family's figures the bounds use (``None``: not measured in this run)."""
    seq, conc = res.get("seq", {}), res.get("conc", {})
    v: Values = {"cores": float(cores)}
    v["echo_p50_ms"] = _get(seq, "echo_floor", "p50_ms")
    v["echo_added_p50_ms"] = _get(seq, "echo_floor", "added_p50_ms")
    v["gw_added_p50_ms"] = _get(seq, "sb_grpc", "added_p50_ms")
    for name, key in (("echo_floor", "echo"), ("sb_grpc", "gw"), ("sb_deny", "deny"),
                      ("backend_raw", "backend"), ("sb_grpc_8ch", "p1"), ("sb_p2", "p2")):
        v[f"{key}_cpu_ms"] = _get(conc, name, "cpu_ms_per_call")
        v[f"{key}_driver_cpu_ms"] = _get(conc, name, "driver_cpu_ms_per_call")
        v[f"{key}_calls_per_s"] = _get(conc, name, "calls_per_s")
    v["search_cpu_ms"] = _get(res, "search", "cpu_ms_per_query")
    return v


def code_values(res: dict[str, Any], cores: int) -> Values:
    by_key = {r["key"]: r for r in res.get("runners", [])}
    v: Values = {"cores": float(cores)}
    v["restore_cpu_s"] = _get(by_key, "floor_restore", "cpu_s_per_run")
    v["restore_wall_ms"] = _get(by_key, "floor_restore", "p50_ms")
    v["pool_cpu_s"] = _get(by_key, "floor_pool_session", "cpu_s_per_run")
    v["pool_runs_per_s"] = _get(by_key, "floor_pool_session", "runs_per_s")
    v["iso_cpu_s"] = _get(by_key, "sb_isolated", "cpu_s_per_run")
    v["warm_p50_ms"] = _get(by_key, "sb_warm", "p50_ms")
    v["session_seq_cpu_s"] = _get(by_key, "sb_session_seq", "cpu_s_per_run")
    v["session_cpu_s"] = _get(by_key, "sb_session", "cpu_s_per_run")
    return v


def _need(v: Values, *keys: str) -> list[float] | None:
    vals = [v.get(k) for k in keys]
    if any(x is None for x in vals):
        return None
    return [float(x) for x in vals]  # type: ignore[arg-type]


def _ceiling(cores: float, cpu_ms: float) -> str:
    return f"≤ {cores * 1e3 / cpu_ms:,.0f}/s on {cores:g} cores" if cpu_ms > 0 else "no bound"


def _tool_p50(v: Values, target: float) -> list[str]:
    out = []
    if (x := _need(v, "echo_p50_ms", "echo_added_p50_ms")) is not None:
        p50, added = x
        out.append(f"grpc.aio echo alone: p50 {p50:.2f} ms ({added:+.2f} ms vs direct HTTP, "
                   "same iterations)")
        if (g := v.get("gw_added_p50_ms")) is not None:
            out.append(f"the gateway's own work adds {g - added:+.2f} ms over the echo")
    return out


def _tool_cpu(v: Values, target: float) -> list[str]:
    out = []
    if (x := _need(v, "echo_cpu_ms")) is not None:
        out.append(f"grpc.aio echo alone: {x[0]:.2f} ms CPU/call = {x[0] / target * 100:.0f} % "
                   f"of the {target:g} ms budget")
        if (g := v.get("gw_cpu_ms")) is not None:
            out.append(f"gateway adds {g - x[0]:.2f} ms")
    if (p := _need(v, "p2_cpu_ms")) is not None:
        out.append(f"`serve --processes 2` tree: {p[0]:.2f} ms/call")
    return out


def _per_call_sum(v: Values, key: str, with_backend: bool) -> list[str]:
    parts = [f"{key}_cpu_ms", f"{key}_driver_cpu_ms"] + (["backend_cpu_ms"] if with_backend
                                                          else [])
    if (x := _need(v, "cores", *parts)) is None:
        return []
    cores, *ms = x
    names = ["gateway", "driver", "backend"][:len(ms)]
    terms = " + ".join(f"{n} {m:.2f}" for n, m in zip(names, ms, strict=True))
    return [f"CPU per call: {terms} = {sum(ms):.2f} ms → {_ceiling(cores, sum(ms))} as driven"]


def _tool_rate(v: Values, target: float) -> list[str]:
    out = _per_call_sum(v, "gw", with_backend=True)
    if (e := _need(v, "echo_calls_per_s")) is not None:
        out.append(f"echo floor measured {e[0]:,.0f}/s")
    if (p := _need(v, "p1_calls_per_s", "p2_calls_per_s")) is not None and p[0] > 0:
        one, two = p
        cores = ""
        if (c := _need(v, "p2_cpu_ms")) is not None:
            cores = f", tree {c[0] * two / 1e3:.2f} cores"
        out.append(f"`serve --processes 2`: {two:,.0f}/s = {two / one:.2f}x 1 process "
                   f"({one:,.0f}/s, both 8 channels{cores})")
    return out


def _denials(v: Values, target: float) -> list[str]:
    out = _per_call_sum(v, "deny", with_backend=False)
    if (e := _need(v, "echo_calls_per_s")) is not None:
        out.append(f"echo floor measured {e[0]:,.0f}/s")
    return out


def _isolated(v: Values, target: float) -> list[str]:
    out = []
    if (x := _need(v, "cores", "restore_cpu_s")) is not None and x[1] > 0:
        cores, cpu = x
        out.append(f"a bare restore is {cpu:.3f} CPU-s → ≤ {cores / cpu:.1f} runs/s on "
                   f"{cores:g} cores")
        if (i := v.get("iso_cpu_s")) is not None and i > 0:
            out.append(f"a gateway isolated run {i:.3f} CPU-s (the restore {cpu / i * 100:.0f} "
                       "% of it)")
    return out


def _warm(v: Values, target: float) -> list[str]:
    out = []
    if (x := _need(v, "echo_p50_ms", "pool_runs_per_s")) is not None and x[1] > 0:
        echo, rate = x
        run_ms = 1e3 / rate
        out.append(f"floors: gRPC echo p50 {echo:.2f} ms + a run on the pool alone "
                   f"{run_ms:.2f} ms (mean) = {echo + run_ms:.2f} ms")
    if (r := v.get("restore_wall_ms")) is not None:
        out.append(f"a run that finds no spare ready waits for a restore: {r:.0f} ms wall "
                   "(bare, p50)")
    return out


def _serving(v: Values, target: float) -> list[str]:
    if (r := v.get("restore_wall_ms")) is None:
        return []
    return [f"SERVING waits for the first sandbox process: its snapshot restore alone is "
            f"{r / 1e3:.2f} s wall (bare, p50) of the {target:g} s"]


def _session(v: Values, target: float) -> list[str]:
    out = []
    if (x := _need(v, "cores", "pool_cpu_s")) is not None and x[1] > 0:
        cores, pool = x
        out.append(f"a session run on the pool alone: {pool * 1e3:.2f} ms CPU → "
                   f"{_ceiling(cores, pool * 1e3)}")
        for key, how in (("session_seq_cpu_s", "sequential"), ("session_cpu_s", "8 callers")):
            if (g := v.get(key)) is not None and g > 0:
                out.append(f"gateway share of a session run ({how}) {(g - pool) * 1e3:.2f} of "
                           f"{g * 1e3:.2f} ms ({(g - pool) / g * 100:.0f} %)")
    return out


def _search(v: Values, target: float) -> list[str]:
    out = []
    if (c := v.get("search_cpu_ms")) is not None:
        out.append(f"{c:.2f} ms gateway CPU per query")
    if (e := v.get("echo_p50_ms")) is not None:
        out.append(f"gRPC echo p50 {e:.2f} ms of it")
    return out


BOUNDS: dict[str, Callable[[Values, float], list[str]]] = {
    "tool_added_p50_ms": _tool_p50,
    "tool_cpu_ms": _tool_cpu,
    "tool_calls_per_s": _tool_rate,
    "denials_per_s": _denials,
    "isolated_runs_per_s": _isolated,
    "warm_isolated_p50_ms": _warm,
    "session_runs_per_s": _session,
    "serve_to_serving_s": _serving,
    "search_p50_ms": _search,
}


def bound_text(key: str, target: float, values: Values) -> str:
    """What bounds goal ``key`` (target ``target``), from this run's figures; ``-`` if none
    of the figures it needs were measured."""
    fn = BOUNDS.get(key)
    parts = fn(values, target) if fn else []
    return "; ".join(parts) if parts else "-"
