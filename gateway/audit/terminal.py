"""Text for a human's terminal: control characters shown, never obeyed.

Everything an operator reads may hold attacker-chosen text — operation names, principal ids,
request ids, error messages, attribute values, OpenAPI summaries. Printed raw, a newline forges
a line (``principal.id: admin``), an ANSI escape hides or recolours the real ones
(``ESC[8m``), and a bidi override reorders what is shown. :func:`escape_text` is the one helper
every human-facing renderer runs its output through: such characters become visible escapes
(``\\n``, ``\\x1b``, ``\\u202e``), so one record can only ever print on its own line(s), as
written. Ordinary text (any script, emoji, backslashes) is left as it is.

It needs nothing but ``re`` (the catalog and policy CLIs use it too).
"""

from __future__ import annotations

import re

__all__ = ["UNSAFE", "escape_lines", "escape_text"]

UNSAFE = re.compile(
    "["
    "\x00-\x1f\x7f"  # C0 controls (newline, tab, ESC, ...) and DEL
    "\x80-\x9f"  # C1 controls (CSI U+009B is an escape introducer by itself)
    "\u061c\u200e\u200f"  # bidi marks (ALM, LRM, RLM)
    "\u2028\u2029"  # line and paragraph separators
    "\u202a-\u202e"  # bidi embeddings and overrides
    "\u2066-\u2069"  # bidi isolates
    "\ufeff"  # zero-width no-break space / BOM
    "\ud800-\udfff"  # lone surrogates (printing one raises UnicodeEncodeError)
    "]"
)
"""The characters :func:`escape_text` replaces."""

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    named = _NAMED.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_text(text: str) -> str:
    """``text`` with control, bidi and separator characters as visible escapes (one line)."""
    return UNSAFE.sub(_escape, text) if UNSAFE.search(text) else text


def escape_lines(lines: list[str]) -> str:
    """Join renderer-built lines with newlines, each line escaped: only the renderer's own
    line breaks remain."""
    return "\n".join(escape_text(line) for line in lines)
