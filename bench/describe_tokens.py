"""Worst-case bounded describe over every operation of every spec available offline.

Usage: .venv/bin/python bench/describe_tokens.py
Prints a markdown table: per spec, the operations, the largest bounded overview (tokens,
o200k_base, compact JSON; the limit is 2,000), the largest unbounded description and the
largest ``help()`` text (signature + SDK docstring). tests/test_describe_bounded.py asserts
the same bound.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from gateway.catalog import (
    TokenCounter,
    describe_bounded,
    describe_document,
    load_catalog_sync,
    python_signature,
    sdk_doc,
)
from gateway.catalog.render import help_tokens
from gateway.models import BackendSettings

ROOT = Path(__file__).resolve().parents[1]
MODULES = ROOT / "runtimes" / "node_modules"
SPECS = {
    "GitHub api.github.com (`@octokit/openapi`)":
        MODULES / "@octokit/openapi/generated/api.github.com.json",
    "GitHub GHEC (`@octokit/openapi`)": MODULES / "@octokit/openapi/generated/ghec.json",
    "GitHub GHES 3.17 (`@octokit/openapi`)": MODULES / "@octokit/openapi/generated/ghes-3.17.json",
    "GitHub GHES 3.18 (`@octokit/openapi`)": MODULES / "@octokit/openapi/generated/ghes-3.18.json",
    "GitHub GHES 3.19 (`@octokit/openapi`)": MODULES / "@octokit/openapi/generated/ghes-3.19.json",
    "Dialogporten (`@digdir/dialogporten-schema`)":
        MODULES / "@digdir/dialogporten-schema/swagger.verified.json",
    "rclone RC (`rclone-openapi`)": MODULES / "rclone-openapi/openapi.json",
    "Twilio, all 50 specs (`@twilio-alpha/mcp`)":
        MODULES / "@twilio-alpha/mcp/twilio-oai/spec/json",
    "Figma REST (`@figma/rest-api-spec`)": MODULES / "@figma/rest-api-spec/openapi/openapi.yaml",
}


def _backends(path: Path) -> list[BackendSettings]:
    """One backend for a spec file; one per spec for a vendor that publishes a directory."""
    if path.is_dir():
        return [BackendSettings(name=f.stem, openapi=str(f)) for f in sorted(path.glob("*.json"))]
    return [BackendSettings(name="api", openapi=str(path))]


def _tokens(counter: TokenCounter, value: Any) -> int:
    return counter.text(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


def main() -> int:
    counter = TokenCounter()
    print("| spec (package) | operations | worst overview (tokens) | largest unbounded "
          "description | worst `help()` |")
    print("|---|---:|---:|---:|---:|")
    catalogs = {"demo (ledger + workspace)": [
        BackendSettings(name="ledger", app="gateway.demo.ledger:app"),
        BackendSettings(name="workspace", app="gateway.demo.workspace:app")]}
    catalogs.update({k: _backends(v) for k, v in SPECS.items()})
    only = sys.argv[1:]  # optional: labels containing any of these words
    for label, backends in catalogs.items():
        if only and not any(word.lower() in label.lower() for word in only):
            continue
        catalog = load_catalog_sync(backends)
        worst = (0, "")
        full = (0, "")
        helps = (0, "")
        for op in catalog.operations:
            doc = describe_document(op, "code", python_signature(op))
            worst = max(worst, (_tokens(counter, describe_bounded(doc, counter=counter)),
                                op.short_name))
            full = max(full, (_tokens(counter, doc), op.short_name))
            helps = max(helps, (help_tokens(python_signature(op)) + help_tokens(sdk_doc(op)),
                                op.short_name))
        print(f"| {label} | {len(catalog.operations):,} | {worst[0]:,} (`{worst[1]}`) | "
              f"{full[0]:,} (`{full[1]}`) | {helps[0]:,} (`{helps[1]}`) |")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
