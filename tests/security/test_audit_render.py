"""Terminal injection: attacker-chosen text in the audit trail and the catalog is shown, never
obeyed.

Real calls through a real in-process gateway put hostile names and ids into the audit file
(a principal id from the token table, a tool name, a request id); ``switchboard audit show``
then runs as a real subprocess. Its output must hold no raw control character and no forged
line — a newline in a value must not start a ``principal.id:`` or ``route:`` line of its own,
and ``ESC[8m`` (conceal) must not hide the real ones.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from gateway_support import RunningGateway, error_of, md, tool_request

from gateway.audit import AuditSettings
from gateway.audit.terminal import UNSAFE, escape_text
from gateway.config import IdentitySettings, embedded_defaults
from gateway.models import BackendSettings, Principal
from gateway.sandbox import SandboxSettings
from gateway.tools import IdempotencySettings

pytestmark = pytest.mark.timeout(180)
REPO = Path(__file__).resolve().parents[2]

# Each would forge lines, hide them, or reorder them if printed raw.
EVIL_PRINCIPAL = (
    "mallory\n│   principal.id: finance-1\n│   route: tool\x1b[8m\u202eevil\u2066\u2028"
)
EVIL_TOOL = (
    "ledger.nope\r\n├─ policy.decide  +0.001 ms  0.001 ms  OK\n│      route: tool"
    "\x1b]0;pwned\x07\x9b31m\u2029\x7f\x00"
)
EVIL_REQUEST_ID = "req\n│   outcome: ok\x1b[2J\x1b[H\u202a"
TOKEN = "tok-hostile-render-1"
# Lines that only a forgery could produce (the tree prefix stripped).
FORGED = ("principal.id: finance-1", "route: tool", "outcome: ok",
          "policy.decide  +0.001 ms  0.001 ms  OK")


@pytest.fixture(scope="module")
def hostile_gw(backends: dict[str, Any],
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    state = tmp_path_factory.mktemp("gw-render")
    tokens = {TOKEN: Principal(id=EVIL_PRINCIPAL, tenant="demo", roles=("agent",))}
    settings = replace(
        embedded_defaults(state), listen="127.0.0.1:0", sandbox=SandboxSettings(workers=1),
        identity=IdentitySettings(tokens=tokens),
        idempotency=IdempotencySettings(dsn=f"sqlite:///{state / 'idempotency.db'}"),
        audit=AuditSettings(file=state / "audit.jsonl", log_format="json", fsync="never"),
        backends=tuple(BackendSettings(name=n, openapi=f"{s.url}/openapi.json", base_url=s.url)
                       for n, s in backends.items()))
    gw = RunningGateway(settings)
    yield gw
    gw.stop()


def _audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "audit", *args],
                          capture_output=True, text=True, timeout=60, cwd=REPO,
                          encoding="utf-8", errors="strict")


def _raw_controls(text: str) -> list[str]:
    return [repr(c) for c in UNSAFE.findall(text) if c != "\n"]


def _bodies(text: str) -> list[str]:
    """Each output line without the tree drawing in front of it."""
    return [ln.lstrip(" │├└─") for ln in text.splitlines()]


def _failed_call(gw: RunningGateway, request: Any) -> str:
    with pytest.raises(grpc.RpcError) as info:
        gw.stub.Execute(request, metadata=md(TOKEN), timeout=30)
    trace_id = error_of(info.value)["trace_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", trace_id), trace_id
    return str(trace_id)


@pytest.mark.parametrize("which", ["tool_name", "request_id"])
def test_audit_show_escapes_hostile_names_and_ids(hostile_gw: RunningGateway, which: str) -> None:
    if which == "tool_name":
        request = tool_request(EVIL_TOOL, {"x": "y\n│   route: tool"}, request_id="req-render-1")
    else:
        request = tool_request("ledger.get_balance", {"account": "A1"},
                               request_id=EVIL_REQUEST_ID)
    trace_id = _failed_call(hostile_gw, request)
    audit_file = hostile_gw.settings.audit.file
    assert audit_file is not None
    # The record holds the hostile text exactly (the trail stays faithful) ...
    raw = audit_file.read_text()
    assert json.dumps(EVIL_PRINCIPAL, ensure_ascii=True)[1:-1] in raw

    shown = _audit("show", trace_id, "--file", str(audit_file))
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    # ... and the terminal gets no control character, bidi control or separator at all,
    assert _raw_controls(out) == []
    # no line that only the injected text could have produced,
    bodies = _bodies(out)
    for forged in FORGED:
        assert forged not in bodies, out
    # the real facts each on one line, with the injection visible as escapes.
    principal_lines = [b for b in bodies if b.startswith("principal.id: ")]
    assert principal_lines and all(b.startswith("principal.id: mallory\\n") for b in
                                   principal_lines), out
    assert "\\x1b[8m\\u202eevil\\u2066\\u2028" in out
    # The tool name and request id reach the record unless the front door refuses them first
    # (it may sanitise or reject them); either way, what is recorded is shown escaped.
    evil = EVIL_TOOL if which == "tool_name" else EVIL_REQUEST_ID
    if json.dumps(evil, ensure_ascii=True)[1:-1] in raw:
        assert escape_text(evil) in out, out
    assert any(b.startswith("outcome: ") for b in bodies), out


def test_catalog_search_escapes_hostile_openapi_text(tmp_path: Path) -> None:
    spec = {
        "openapi": "3.0.3",
        "info": {"title": "evil", "version": "1"},
        "paths": {"/transfer": {"post": {
            "operationId": "move_money",
            "summary": "Move money\n  0.999  evil.fake_operation  looks trusted\x1b[8m\u202e",
            "responses": {"200": {"description": "ok"}},
        }}},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"backends: [{{name: evil, openapi: '{tmp_path / 'spec.json'}'}}]\n")
    found = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "catalog", "search", "move money",
         "--config", str(cfg)], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert found.returncode == 0, found.stderr
    assert _raw_controls(found.stdout) == []
    assert len(found.stdout.splitlines()) == 1, found.stdout
    assert "Move money\\n  0.999  evil.fake_operation  looks trusted\\x1b[8m\\u202e" in found.stdout


def test_escape_text_rules() -> None:
    # every class the renderers must neutralise ...
    for char in ["\x00", "\t", "\n", "\r", "\x1b", "\x7f", "\x85", "\x9b", "\u2028", "\u2029",
                 "\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067",
                 "\u2068", "\u2069", "\ud800"]:
        shown = escape_text(f"a{char}b")
        assert char not in shown and shown.startswith("a\\") and shown.endswith("b"), shown
    assert escape_text("\x1b[8m\n\u202e") == "\\x1b[8m\\n\\u202e"
    # ... and ordinary text of any script is left alone
    for text in ["plain", "Zürich — 東京 ✓ 🙂", "C:\\path\\n-not-a-newline"]:
        assert escape_text(text) == text
