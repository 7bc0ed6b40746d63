"""``switchboard audit show|verify``: read the local audit file back for an auditor.

``show`` renders one trace as an indented span tree with offsets, durations, status and the
attributes that answer who / what / why allowed / what happened. ``verify`` walks the hash
chain. Both print and return an exit code; the lead's ``gateway/cli.py`` calls them.

Several replicas write several files (one writer per file, each its own chain): both commands
take any number of files, directories (their ``*.jsonl``) or glob patterns. ``show`` finds the
trace in whichever files hold it; ``verify`` checks each file as its own chain and reports
each.
"""

from __future__ import annotations

import glob
import json
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from gateway.audit import attributes as A
from gateway.audit.chain import ChainReport, iter_records, verify_chain
from gateway.audit.terminal import escape_lines, escape_text

__all__ = [
    "audit_files",
    "cli_audit_checkpoint",
    "cli_audit_show",
    "cli_audit_verify",
    "normalize_trace_id",
    "read_trace",
    "render_trace",
    "trace_ids",
]

_TRACE_ID = re.compile(r"^[0-9a-f]{32}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")
_FIRST = [
    A.PRINCIPAL_ID, A.TENANT, A.ROLES, A.TRANSPORT, A.REQUEST_ID, A.SESSION_ID, A.ACTION_KIND,
    A.OPERATION, A.GEN_AI_TOOL_NAME, A.ROUTE, A.REASONS, A.DECISION_ID, A.PARENT_DECISION_ID,
    A.POLICY_REVISION, A.OUTCOME, A.ERROR_TYPE, A.ERROR_FIELD, A.REPLAYED, A.HOST_CALLS,
    A.HTTP_REQUEST_METHOD, A.URL_FULL, A.HTTP_RESPONSE_STATUS_CODE, A.RPC_GRPC_STATUS_CODE,
]  # fmt: skip
_MAX_VALUE = 160


def normalize_trace_id(value: str) -> str:
    """32 lowercase hex digits from a trace id or a whole ``traceparent``; "" if neither."""
    text = value.strip().lower()
    m = _TRACEPARENT.match(text)
    if m:
        return m.group(1)
    return text if _TRACE_ID.match(text) else ""


def _root_of(rec: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    while rec.get("parent_span_id") in by_id and rec["span_id"] not in seen:
        seen.add(rec["span_id"])
        rec = by_id[rec["parent_span_id"]]
    return rec


def _tenant_of(tree: list[dict[str, Any]], root: dict[str, Any]) -> str | None:
    root_tenant = root.get("attributes", {}).get(A.TENANT)
    if root_tenant is not None:
        return str(root_tenant)
    found = {str(r["attributes"][A.TENANT]) for r in tree if A.TENANT in r.get("attributes", {})}
    return found.pop() if len(found) == 1 else None


AuditPaths = Path | str | Sequence[Path | str]


def audit_files(paths: AuditPaths) -> list[Path]:
    """The files named by ``paths``: a file as given (even if missing, for the caller to
    report), a directory as its ``*.jsonl`` files, a glob pattern (``audit-*.jsonl``) as its
    matches; in order, each once."""
    items = [paths] if isinstance(paths, Path | str) else list(paths)
    found: dict[Path, None] = {}
    for item in items:
        path = Path(item)
        if path.is_dir():
            found.update((f, None) for f in sorted(path.glob("*.jsonl")) if f.is_file())
        elif not path.exists() and glob.has_magic(str(item)):
            found.update((Path(f), None) for f in sorted(glob.glob(str(item))))
        else:
            found[path] = None
    return list(found)


def _read_spans(file: Path, tid: str) -> list[dict[str, Any]]:
    needle = f'"trace_id":"{tid}"'
    spans: list[dict[str, Any]] = []
    with open(file, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if needle not in line:  # cheap filter: records are canonical JSON
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and rec.get("trace_id") == tid:
                spans.append(rec)
    return spans


def read_trace(file: AuditPaths, trace_id: str, tenant: str | None = None) -> list[dict[str, Any]]:
    """The records of one trace (sorted by start), optionally only the calls of ``tenant``.

    ``file`` may be several files (or directories, globs: see :func:`audit_files`), e.g. one
    per replica: the trace's records are gathered from all of them.

    A trace id can be shared by several calls (the agent propagates its own trace), so the
    tenant filter works per local call tree: a tree is visible when its root span (or, if the
    root has none, all its spans) carry ``switchboard.tenant == tenant``; unattributed trees
    (e.g. unauthenticated calls) are visible only without a filter.
    """
    tid = normalize_trace_id(trace_id)
    if not tid:
        return []
    spans: list[dict[str, Any]] = []
    for path in audit_files(file):
        if path.is_file():
            spans.extend(_read_spans(path, tid))
    spans.sort(key=lambda r: (r.get("start_ns", 0), r.get("seq", 0)))
    if tenant is None:
        return spans
    by_id = {r["span_id"]: r for r in spans}
    trees: dict[str, list[dict[str, Any]]] = {}
    for rec in spans:
        trees.setdefault(_root_of(rec, by_id)["span_id"], []).append(rec)
    visible = {rid for rid, tree in trees.items() if _tenant_of(tree, by_id[rid]) == tenant}
    return [r for r in spans if _root_of(r, by_id)["span_id"] in visible]


def _fmt_ms(ms: float) -> str:
    return f"{ms / 1000:.3f} s" if ms >= 1000 else f"{ms:.3f} ms"


def _fmt_value(value: Any) -> str:
    if isinstance(value, list):
        text = "[" + ", ".join(_fmt_value(v) for v in value) + "]"
    elif isinstance(value, str):
        text = value
    else:
        text = str(value).lower() if isinstance(value, bool) else str(value)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def _detail_lines(rec: dict[str, Any]) -> list[str]:
    attrs: dict[str, Any] = rec.get("attributes", {})
    keys = [k for k in _FIRST if k in attrs] + sorted(k for k in attrs if k not in _FIRST)
    lines = [f"{k.removeprefix('switchboard.')}: {_fmt_value(attrs[k])}" for k in keys]
    status = rec.get("status", {})
    if status.get("message"):
        lines.append(f"status message: {_fmt_value(status['message'])}")
    for ev in rec.get("events", []):
        ea = ev.get("attributes", {})
        summary = ea.get("exception.type", "")
        if ea.get("exception.message"):
            summary += f": {ea['exception.message']}"
        lines.append(f"event {ev.get('name')}" + (f": {_fmt_value(summary)}" if summary else ""))
    return lines


def render_trace(spans: list[dict[str, Any]]) -> str:
    """An indented tree: name, kind, offset from the trace start, duration, status, details.

    Control characters (C0, C1, DEL), bidi controls and line separators in any record value
    are rendered as visible escapes (``\\n``, ``\\x1b``, ``\\u202e``): one line per fact.
    """
    if not spans:
        return ""
    by_id = {r["span_id"]: r for r in spans}
    children: dict[str | None, list[dict[str, Any]]] = {}
    for rec in spans:
        parent = rec.get("parent_span_id")
        children.setdefault(parent if parent in by_id else None, []).append(rec)
    t0 = min(r["start_ns"] for r in spans)
    t1 = max(r["end_ns"] for r in spans)
    service = spans[0].get("resource", {}).get("service.name", "")
    started = datetime.fromtimestamp(t0 / 1e9, tz=UTC).isoformat(timespec="milliseconds")
    out = [
        f"trace {spans[0]['trace_id']}  {len(spans)} spans  {started}  "
        f"{_fmt_ms((t1 - t0) / 1e6)}" + (f"  service {service}" if service else "")
    ]

    def walk(rec: dict[str, Any], lead: str, connector: str, cont: str) -> None:
        kind = rec.get("kind", "INTERNAL")
        head = (
            f"{lead}{connector}{rec['name']}"
            + (f" [{kind}]" if kind != "INTERNAL" else "")
            + f"  +{_fmt_ms((rec['start_ns'] - t0) / 1e6)}"
            + f"  {_fmt_ms(rec.get('duration_ms', 0.0))}"
            + f"  {rec.get('status', {}).get('code', 'UNSET')}"
        )
        out.append(head)
        kids = children.get(rec["span_id"], [])
        bar = "│ " if kids else "  "
        out.extend(f"{lead}{cont}{bar}  {line}" for line in _detail_lines(rec))
        for i, kid in enumerate(kids):
            last = i == len(kids) - 1
            walk(kid, lead + cont, "└─ " if last else "├─ ", "   " if last else "│  ")

    for i, root in enumerate(children.get(None, [])):
        if i:
            out.append("")  # calls sharing the agent's trace id: one tree each
        walk(root, "", "", "")
    # Every value above may be attacker-chosen: each line is escaped as a whole, so a newline,
    # an ANSI escape or a bidi override in a record shows as text and cannot forge a line.
    return escape_lines(out)


def _names(paths: AuditPaths) -> str:
    return str(paths) if isinstance(paths, Path | str) else " ".join(map(str, paths))


def _where(files: list[Path]) -> str:
    return str(files[0]) if len(files) == 1 else f"{len(files)} audit files"


def cli_audit_show(
    trace_id: str, file: AuditPaths, tenant: str | None = None, *, out: TextIO | None = None
) -> int:
    """Print the call(s) of ``trace_id`` as a span tree; 1 if unknown (or another tenant's).

    ``file``: one audit file or several (directories and globs too), e.g. one per replica.
    Errors go to stderr (or to ``out`` when given).
    """
    stdout = out or sys.stdout
    stderr = out or sys.stderr
    if not normalize_trace_id(trace_id):
        print(escape_text(f"error: {trace_id!r} is not a trace id (32 hex digits)"), file=stderr)
        return 1
    files = audit_files(file)
    missing = [f for f in files if not f.is_file()]
    if not files or missing:
        what = (f"audit file {missing[0]} does not exist" if missing
                else f"no audit files in {_names(file)}")
        print(escape_text(f"error: {what}"), file=stderr)
        return 1
    spans = read_trace(files, trace_id, tenant)
    if not spans:
        scope = f" for tenant {tenant!r}" if tenant is not None else ""
        print(
            escape_text(
                f"error: no audit records for trace {trace_id}{scope} in {_where(files)}"
            ),
            file=stderr,
        )
        return 1
    print(render_trace(spans), file=stdout)
    return 0


def _verify_signed(file: Path, public_key: Path, stdout: TextIO,
                   checkpoints: Path | None = None) -> bool:
    from gateway.audit.checkpoint import verify_checkpoints

    report = verify_checkpoints(file, public_key, external=checkpoints)
    if report.ok:
        line = (f"OK: {file}: {report.checkpoints} signed checkpoints valid, up to "
                f"seq {report.last_seq}; {report.unsigned_after} records after the "
                "last checkpoint")
        if report.external is not None:
            line += (f"; external copy: {report.external} checkpoints, all in the file and the "
                     f"sidecar, up to seq {report.external_last_seq}; "
                     f"{report.unexported_after} records after the last exported checkpoint")
            if report.local_only:
                line += f" ({report.local_only} local checkpoints not exported)"
        print(escape_text(line), file=stdout)
        return True
    print(escape_lines([f"TAMPERED: {file}: {p}" for p in report.problems]), file=stdout)
    return False


def _verify_one(file: Path, stdout: TextIO, stderr: TextIO,
                public_key: Path | None = None, checkpoints: Path | None = None) -> bool:
    if not file.is_file():
        print(escape_text(f"error: audit file {file} does not exist"), file=stderr)
        return False
    report = verify_chain(file)
    if public_key is not None:
        signed = _verify_signed(file, public_key, stdout, checkpoints)
        if not report.ok:
            _verify_broken(file, report, stdout)
            return False
        if not signed:
            return False
    if report.ok:
        print(
            escape_text(
                f"OK: {file}: {report.records} records, hash chain intact; "
                f"last seq {report.last_seq} hash {report.last_hash}"
            ),
            file=stdout,
        )
        return True
    _verify_broken(file, report, stdout)
    return False


def _verify_broken(file: Path, report: ChainReport, stdout: TextIO) -> None:
    # An edited line can put anything into the reason (its seq is whatever JSON it holds).
    print(
        escape_lines(
            [
                f"BROKEN: {file} line {report.line}: {report.reason}",
                f"  {report.records} records verified before it (last good seq {report.last_seq})",
            ]
        ),
        file=stdout,
    )


def cli_audit_verify(file: AuditPaths, *, out: TextIO | None = None,
                     public_key: Path | None = None, checkpoints: Path | None = None) -> int:
    """Check the hash chain of each file (directories and globs too): each file is its own
    chain (one writer each, e.g. one per replica) and gets its own OK/BROKEN line, with the
    first broken line. 0 when every file is intact; 1 when any is broken or missing.

    ``public_key``: also check the signed checkpoints in each file's sidecar; ``checkpoints``
    (needs ``public_key``): and against an external copy of them (a file, or a directory of
    ``<file>.checkpoints``; see :func:`gateway.audit.checkpoint.verify_checkpoints`)."""
    stdout = out or sys.stdout
    stderr = out or sys.stderr
    if checkpoints is not None and public_key is None:
        print("error: --checkpoints needs --public-key", file=stderr)
        return 2
    files = audit_files(file)
    if not files:
        print(escape_text(f"error: no audit files in {_names(file)}"), file=stderr)
        return 1
    results = [_verify_one(f, stdout, stderr, public_key, checkpoints) for f in files]
    if len(files) > 1:
        bad = results.count(False)
        print(
            f"{len(files) - bad} of {len(files)} audit files intact"
            + (f", {bad} broken or missing" if bad else ""),
            file=stdout,
        )
    return 0 if all(results) else 1


def cli_audit_checkpoint(file: AuditPaths, *, key: Path | None = None,
                         export: Path | None = None, print_json: bool = False,
                         out: TextIO | None = None) -> int:
    """``switchboard audit checkpoint``: with ``key``, sign each file's last record into its
    sidecar (and append it to ``export``); with ``print_json``, print each file's latest
    checkpoint (the one just signed, or the sidecar's newest) as one JSON line on stdout and
    nothing else, for cron/CI to ship to an external store. 0 when all went well."""
    from gateway.audit.checkpoint import export_path, latest_checkpoint, sign_checkpoint

    stdout = out or sys.stdout
    stderr = out or sys.stderr
    if key is None and not print_json:
        print("error: give --key (sign) and/or --print (print the latest)", file=stderr)
        return 2
    if export is not None and key is None:
        print("error: --export needs --key (it exports what it signs)", file=stderr)
        return 2
    files = audit_files(file)
    if not files:
        print(escape_text(f"error: no audit files in {_names(file)}"), file=stderr)
        return 1
    rc = 0
    for f in files:
        try:
            entry = (sign_checkpoint(f, key, export=export) if key is not None
                     else latest_checkpoint(f))
        except (OSError, ValueError) as exc:
            print(escape_text(f"switchboard audit checkpoint: {exc}"), file=stderr)
            rc = 1
            continue
        if entry is None:
            print(escape_text(f"switchboard audit checkpoint: {f}: no checkpoints"), file=stderr)
            rc = 1
        elif print_json:
            print(json.dumps(entry, sort_keys=True, separators=(",", ":")), file=stdout)
        else:
            print(escape_text(f"signed {f}: seq {entry['seq']} {entry['hash']} "
                              f"(key {entry['key_id']})"
                              + (f", exported to {export_path(export, f)}"
                                 if export is not None else "")),
                  file=stdout)
    return rc


def trace_ids(file: Path) -> Iterable[str]:
    """Distinct trace ids in file order (for tooling and tests)."""
    seen: dict[str, None] = {}
    for _n, rec, _raw in iter_records(Path(file)):
        if rec and isinstance(rec.get("trace_id"), str):
            seen.setdefault(rec["trace_id"], None)
    return list(seen)
