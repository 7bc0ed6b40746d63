"""The SDK as the sandbox receives it: one JSON text per catalog revision.

Installing it must cost next to nothing per fresh interpreter (a catalog of 2,000 operations is
~3 MB), so the per-backend help text is rendered here, once, and each function's own spec is a
JSON *string* inside the text: decoding the whole text is one C-level scan, and a function's
spec is parsed in the sandbox only when code first looks it up (runtimes/sandbox_runner.py
``install_sdk``; the format is in runtimes/PROTOCOL.md, "The SDK text")."""

from __future__ import annotations

import json
from collections.abc import Iterable

from gateway.sandbox.types import SdkFunction

__all__ = ["HELP_LISTED", "sdk_text"]

HELP_LISTED = 25  # functions listed in a backend module's docstring: help() stays short


def sdk_text(functions: Iterable[SdkFunction]) -> str:
    """``{"backends": [{"name", "doc", "functions": [[function, spec JSON], ...]}, ...]}``."""
    grouped: dict[str, dict[str, SdkFunction]] = {}
    for f in functions:
        table = grouped.setdefault(f.backend, {})
        table.pop(f.function, None)  # a later function of the same name wins, in its place
        table[f.function] = f
    backends = []
    for backend, table in grouped.items():
        doc = f"Operations of the {backend} backend:\n"
        for f in list(table.values())[:HELP_LISTED]:
            summary = "".join(f.doc.strip().splitlines()[:1])
            doc += f"\n  {f.signature or f.function}\n      {summary}"
        if len(table) > HELP_LISTED:
            doc += (f"\n\n  ... and {len(table) - HELP_LISTED} more: "
                    "sdk.search('what you need') finds them")
        backends.append({"name": backend, "doc": doc, "functions": [
            [name, json.dumps(f.to_json())] for name, f in table.items()]})
    return json.dumps({"backends": backends})
