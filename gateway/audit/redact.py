"""Digests, masking and secret scrubbing for what goes into spans, the audit file and logs.

Two layers: the pipeline *masks* what the policy asks (``redact`` with the decision's
``mask``) and records digests instead of payloads; as a backstop, every exporter and the log
renderer *scrub* values that look like credentials (secret-bearing keys, ``Bearer <token>``,
and literal secrets registered with :func:`register_secret`) so a slip in one call site does
not leak a token into the trail.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "REDACTED",
    "digest",
    "is_secret_key",
    "json_attr",
    "redact",
    "register_secret",
    "safe_url",
    "scrub_text",
    "scrub_value",
]

REDACTED = "[REDACTED]"
_WILDCARD = "*"


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    return str(value)


def canonical_json(value: Any) -> str:
    """Sorted keys, no spaces, UTF-8 kept: the same value always gives the same text."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default
    )


def digest(value: Any) -> str:
    """``sha256:<hex>`` of bytes, of a str's UTF-8, or of any other value's canonical JSON.

    Lets an auditor prove *which* arguments or code ran without the trail holding them.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")  # lone surrogates still digest
    else:
        data = canonical_json(value).encode("utf-8", "surrogatepass")
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- masking by JSON path -------------------------------------------------------------------


def _split(path: str) -> list[str]:
    return [p for p in path.replace("[", ".").replace("]", "").split(".") if p]


def _apply(value: Any, parts: Sequence[str]) -> Any:
    if not parts:
        return REDACTED
    head, rest = parts[0], parts[1:]
    if isinstance(value, Mapping):
        out = dict(value)
        for key in list(out):
            if head == _WILDCARD or key == head:
                out[key] = _apply(out[key], rest)
        return out
    if isinstance(value, list | tuple):
        items = list(value)
        for i, item in enumerate(items):
            if head == _WILDCARD or head == str(i):
                items[i] = _apply(item, rest)
        return items
    return value  # path goes deeper than the value: nothing to hide there


def redact(value: Any, mask: Sequence[str], prefix: str = "") -> Any:
    """Copy of ``value`` with every leaf or subtree named by ``mask`` replaced by ``[REDACTED]``.

    ``value`` sits at ``prefix`` in the policy input (e.g. ``"action.arguments"``). A mask path
    applies when it starts with the prefix or with any tail of it, so
    ``action.arguments.card_number``, ``arguments.card_number`` and ``card_number`` all hide
    ``card_number`` in the arguments. ``*`` matches any key or list item; ``items.0`` or
    ``items[0]`` a list index. Paths that do not exist are ignored. Over-matching only
    redacts more, which is the safe direction.
    """
    pre = _split(prefix)
    tails = [pre[i:] for i in range(len(pre) + 1)]
    out = value
    for path in mask:
        parts = _split(path)
        for tail in tails:
            if len(parts) > len(tail) and all(
                p in (t, _WILDCARD) for p, t in zip(parts, tail, strict=False)
            ):
                out = _apply(out, parts[len(tail) :])
    return out


def json_attr(value: Any, max_len: int = 4096) -> str:
    """Canonical JSON of ``value`` for a span attribute, cut at ``max_len`` characters."""
    text = canonical_json(value)
    if len(text) <= max_len:
        return text
    marker = f"...[truncated {len(text) - max_len} chars]"
    return text[: max(0, max_len - len(marker))] + marker


# --- URLs -----------------------------------------------------------------------------------

_SENSITIVE_QUERY = {
    "awsaccesskeyid", "signature", "sig", "x-goog-signature", "x-amz-signature",
    "x-amz-credential", "x-amz-security-token", "access_token", "token", "api_key", "apikey",
    "key", "code", "client_secret", "password",
}  # fmt: skip


def safe_url(url: str) -> str:
    """``url.full`` without userinfo and with credential-bearing query values redacted."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return REDACTED
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}:{REDACTED}@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, REDACTED if k.lower() in _SENSITIVE_QUERY else v) for k, v in pairs], safe="[]"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


# --- secret scrubbing -----------------------------------------------------------------------

_SECRET_KEY = re.compile(
    r"(?i)(?:^|[._\-])(?:authorization|proxy[_-]authorization|cookie|set[_-]cookie|password|"
    r"passwd|secret|client[_-]secret|api[_-]?key|x[_-]api[_-]key|access[_-]token|"
    r"refresh[_-]token|id[_-]token|bearer|token|private[_-]key|credentials?)$"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=\-]{4,}")
_MIN_SECRET_LEN = 6

_secrets_lock = threading.Lock()
_secrets: set[str] = set()
_secrets_re: re.Pattern[str] | None = None


def register_secret(value: str) -> None:
    """Never let this literal (a bearer token, a backend credential) reach spans or logs.

    Process-wide on purpose: logs are process-wide, and hiding a value everywhere is safe.
    Values shorter than 6 characters are ignored (they would redact ordinary words).
    """
    global _secrets_re
    if len(value) < _MIN_SECRET_LEN:
        return
    with _secrets_lock:
        if value in _secrets:
            return
        _secrets.add(value)
        ordered = sorted(_secrets, key=len, reverse=True)
        _secrets_re = re.compile("|".join(re.escape(s) for s in ordered))


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """True for keys that carry credentials (``http.request.header.authorization``)."""
    return bool(_SECRET_KEY.search(key))


def scrub_text(text: str) -> str:
    """Remove registered secrets and ``Bearer``/``Basic`` credentials from free text."""
    pattern = _secrets_re
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    if "earer" in text or "asic" in text:
        text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return text


def scrub_value(key: str, value: Any) -> Any:
    """Scrub one attribute or log value (strings, and sequences/mappings of them)."""
    if isinstance(value, bool | int) and not is_secret_key(key):
        return value
    if is_secret_key(key) and value is not None and value != "":
        return REDACTED
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, list | tuple):
        return type(value)(scrub_value("", v) for v in value)
    if isinstance(value, Mapping):
        return {k: scrub_value(str(k), v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
