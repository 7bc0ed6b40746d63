"""docs/audit.md lists every ``switchboard.*`` attribute the gateway declares or sets, and
every config key of gateway/config.py is documented somewhere in the docs or README."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gateway.audit import attributes as A
from gateway.config import SCHEMA

REPO = Path(__file__).resolve().parents[1]
AUDIT_DOC = (REPO / "docs" / "audit.md").read_text()
# `switchboard.limits.timeout_ms` / `.memory_mb` rows name siblings by their last segment.
_DOC_KEYS = set(re.findall(r"`(switchboard\.[a-z0-9_.]+)`", AUDIT_DOC))
for row in re.findall(r"^\|.*$", AUDIT_DOC, flags=re.M):
    first = re.match(r"\| `(switchboard\.[a-z0-9_.]+)`((?: / `\.[a-z0-9_]+`)*)", row)
    if first:
        stem = first.group(1).rsplit(".", 1)[0]
        _DOC_KEYS |= {stem + s for s in re.findall(r"`(\.[a-z0-9_]+)`", first.group(2))}
# Logger names, not attributes.
_LOGGERS = re.compile(r'get_logger\("(switchboard\.[a-z_.]+)"|contextual_tracer\("(switchboard'
                      r'\.[a-z_.]+)"')


def test_every_declared_attribute_is_documented() -> None:
    declared = {v for k, v in vars(A).items() if k.isupper() and isinstance(v, str)
                and v.startswith("switchboard.") and not k.startswith("SPAN_")}
    assert declared - _DOC_KEYS == set()


def test_every_attribute_set_by_name_is_documented() -> None:
    used: set[str] = set()
    for path in (REPO / "gateway").rglob("*.py"):
        if "_proto" in path.parts:
            continue
        text = path.read_text()
        used |= set(re.findall(r'set_attribute\(\s*"(switchboard\.[a-z0-9_.]+)"', text))
        # Module constants holding attribute keys (APPROVAL_OUTCOME = "switchboard....").
        used |= set(re.findall(r'^[A-Z_]+ = "(switchboard\.[a-z0-9_.]+)"', text, flags=re.M))
        used -= {m for pair in _LOGGERS.findall(text) for m in pair if m}
    used -= {"switchboard.routing"}  # the Rego package of the shipped policy, not an attribute
    assert used - _DOC_KEYS == set()


def _keys(node: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, child in node.get("properties", {}).items():
        out.append(prefix + key)
        if isinstance(child, dict):
            if "properties" in child:
                out += _keys(child, f"{prefix}{key}.")
            items = child.get("items")
            if isinstance(items, dict) and "properties" in items:
                out += _keys(items, f"{prefix}{key}[].")
    return out


def test_every_config_key_is_documented() -> None:
    text = "\n".join(p.read_text() for p in [REPO / "README.md", *(REPO / "docs").glob("*.md")])
    missing = [k for k in _keys(SCHEMA)
               if not re.search(rf"\b{re.escape(k.rsplit('.', 1)[-1])}\b", text)]
    assert missing == []
