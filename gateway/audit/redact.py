"""Digests, masking and secret scrubbing for what goes into spans, the audit file and logs.

Two layers: the pipeline *masks* what the policy asks (``redact`` with the decision's
``mask``) and records digests instead of payloads; as a backstop, every exporter and the log
renderer *scrub* values that look like credentials (secret-bearing keys, ``Bearer <token>``,
and literal secrets registered with :func:`register_secret`) so a slip in one call site does
not leak a token into the trail.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import json
import math
import os
import re
import secrets
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit, urlunsplit

import structlog
from opentelemetry import trace
from opentelemetry.trace import SpanContext

from gateway import maskpath
from gateway.audit import attributes as A
from gateway.errors import ConfigError, GatewayError

__all__ = [
    "DIGEST_KEY_ENV",
    "FACT_KEYS",
    "MIN_DIGEST_KEY_BYTES",
    "MIN_MASKED_LEN",
    "REDACTED",
    "CallSecrets",
    "DigestKey",
    "close_span_secrets",
    "current_call_secrets",
    "digest",
    "is_secret_key",
    "json_attr",
    "load_digest_key",
    "masked_forms",
    "masked_values",
    "open_span_secrets",
    "redact",
    "register_masked",
    "register_secret",
    "safe_url",
    "scrub_cards",
    "scrub_data",
    "scrub_error",
    "scrub_text",
    "scrub_value",
]

REDACTED = "[REDACTED]"


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


def _digest_input(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")  # lone surrogates still digest
    return canonical_json(value).encode("utf-8", "surrogatepass")


def digest(value: Any) -> str:
    """``sha256:<hex>`` of bytes, of a str's UTF-8, or of any other value's canonical JSON.

    Unkeyed: anyone can test a guess against it, so it is for data that is public anyway or
    never leaves the process. A digest of unredacted data in the trail is a
    :meth:`DigestKey.digest` (docs/audit.md, "Keyed digests").
    """
    return "sha256:" + hashlib.sha256(_digest_input(value)).hexdigest()


DIGEST_KEY_ENV = "SWITCHBOARD_AUDIT_DIGEST_KEY"
MIN_DIGEST_KEY_BYTES = 32


class DigestKey:
    """The server-held secret of the keyed digests (HMAC-SHA256) of unredacted data.

    A plain SHA-256 beside a redacted copy hands masked low-entropy values back to anyone who
    can try candidates; keyed, only a holder of the key (an auditor) can check which arguments
    ran. ``key_id`` names the key in every record so digests stay checkable across rotations.
    """

    __slots__ = ("_secret", "ephemeral", "key_id")

    def __init__(self, secret: bytes, *, ephemeral: bool = False) -> None:
        if len(secret) < MIN_DIGEST_KEY_BYTES:
            raise ValueError(f"a digest key needs at least {MIN_DIGEST_KEY_BYTES} bytes")
        self._secret = bytes(secret)
        self.ephemeral = ephemeral
        # Derived from the key (one-way), so it names the key without a second setting.
        self.key_id: str = hmac.new(self._secret, b"switchboard.digest.key_id",
                                    hashlib.sha256).hexdigest()[:16]

    @classmethod
    def generate(cls) -> DigestKey:
        """A random key for this process only (its digests cannot be re-checked later)."""
        return cls(secrets.token_bytes(32), ephemeral=True)

    def digest(self, value: Any) -> str:
        """``hmac-sha256:<hex>`` of the same bytes :func:`digest` hashes."""
        return "hmac-sha256:" + hmac.new(self._secret, _digest_input(value),
                                         hashlib.sha256).hexdigest()

    def __repr__(self) -> str:  # never the secret
        return f"DigestKey(key_id={self.key_id!r}, ephemeral={self.ephemeral})"


def load_digest_key(key_file: Path | None, env: Mapping[str, str] | None = None) -> DigestKey:
    """The key from ``audit.digest_key_file``, else ``$SWITCHBOARD_AUDIT_DIGEST_KEY``, else a
    random per-process key (with a warning: its digests cannot be re-verified after a restart).

    The key is the file's (or variable's) bytes without surrounding whitespace, at least 32
    bytes (``openssl rand -hex 32``). It is registered as a secret, so it never reaches a log.
    """
    env = os.environ if env is None else env
    raw: bytes | None = None
    where = "audit.digest_key_file"
    if key_file is not None:
        try:
            raw = key_file.read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {key_file}: {exc.strerror}",
                              field=where) from exc
    elif env.get(DIGEST_KEY_ENV):
        raw, where = env[DIGEST_KEY_ENV].strip().encode(), DIGEST_KEY_ENV
    if raw is None:
        key = DigestKey.generate()
        structlog.get_logger("switchboard.audit").warning(
            "audit.digest_key.ephemeral", key_id=key.key_id,
            reason="no audit.digest_key_file or $" + DIGEST_KEY_ENV + ": argument HMACs use a "
            "random per-process key and cannot be re-verified after this process exits")
        return key
    if len(raw) < MIN_DIGEST_KEY_BYTES:
        raise ConfigError(f"{where}: the digest key must be at least {MIN_DIGEST_KEY_BYTES} "
                          f"bytes (got {len(raw)}); e.g. openssl rand -hex 32", field=where)
    register_secret(raw.decode("utf-8", "replace"))
    return DigestKey(raw)


# --- masking by JSON path -------------------------------------------------------------------


# The path language (``**`` any depth, ``*`` globs, keys compared case- and style-blind) is
# gateway/maskpath.py, shared with the policy decision log. Every argument tree also gets the
# credential-key backstop (maskpath.CREDENTIAL_KEYS) whatever the decision's mask says.
_BACKSTOP = maskpath.credential_paths("arguments")


def _with_backstop(mask: Sequence[str]) -> list[str]:
    return [*mask, *_BACKSTOP]


def redact(value: Any, mask: Sequence[str], prefix: str = "") -> Any:
    """Copy of ``value`` with every leaf or subtree named by ``mask`` replaced by ``[REDACTED]``.

    ``value`` sits at ``prefix`` in the policy input (e.g. ``"action.arguments"``). A mask path
    applies when it starts with the prefix or with any tail of it, so
    ``action.arguments.card_number``, ``arguments.card_number`` and ``card_number`` all hide
    ``card_number`` in the arguments. ``*`` matches any key or list item (inside a segment, a
    glob); ``**`` any number of levels; ``items.0`` or ``items[0]`` a list index; keys match
    whatever their case and ``_``/``-``/camelCase style (gateway/maskpath.py). Credential keys
    in the arguments (``password``, ``*token``, …) are hidden at any depth in any case. Paths
    that do not exist are ignored. Over-matching only redacts more, which is the safe
    direction.
    """
    return maskpath.redact(value, _with_backstop(mask), prefix, REDACTED)


def masked_values(value: Any, mask: Sequence[str], prefix: str = "") -> list[Any]:
    """The scalar leaves :func:`redact` would hide (same path rules), in no particular order."""
    return maskpath.collect(value, _with_backstop(mask), prefix)


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
# Payment card numbers (PCI DSS: a PAN is never stored readable): a card network's prefix,
# 13-19 digits as one word or grouped the ways cards are printed (fours, the last group 1-4
# digits; Amex's 4-6-5), one separator throughout, and a valid Luhn check digit; shown as
# their last four digits. The prefixes, the word bounds, the grouping and the check keep ids
# out of it: millisecond timestamps (they start with 1), UUIDs (hex and 8-4-4-4-12), hashes.
_PAN = re.compile(
    r"(?<![0-9A-Za-z_])(?=3[47]|4|5[1-5]|2[2-7]|6011|65|35|30[0-5]|36|38)"
    r"(?:[0-9]{13,19}|[0-9]{4}([ -])[0-9]{4}(?:\1[0-9]{4}){1,2}(?:\1[0-9]{1,4})*"
    r"|[0-9]{4}([ -])[0-9]{6}\2[0-9]{4,5})"
    r"(?![0-9A-Za-z_])")
_MIN_PAN_LEN, _MAX_PAN_LEN = 13, 19


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


_DIGITS = "0123456789"


def _card(match: re.Match[str]) -> str:
    # A grouped run may carry a group past the card (a reference typed after it): drop whole
    # trailing groups, never single digits (each cut would be another 1-in-10 false match).
    # Only the leading groups up to 19 digits can hold the card, so a long run costs no more.
    digits, ends = "", []
    for group in re.split(r"[ -]", match.group(0)):
        if len(digits) + len(group) > _MAX_PAN_LEN:
            break
        digits += group
        ends.append(len(digits))
    for n in reversed(ends):
        if n < _MIN_PAN_LEN:
            break
        if _luhn(digits[:n]):
            return f"[REDACTED:card-{digits[n - 4:n]}]"
    return match.group(0)


def scrub_cards(text: str) -> str:
    """``text`` with every payment card number in it replaced by ``[REDACTED:card-NNNN]``.
    The pattern runs only on a text with at least 13 digits in all (counted in C: most
    values have far fewer)."""
    if len(text) < _MIN_PAN_LEN or sum(map(text.count, _DIGITS)) < _MIN_PAN_LEN:
        return text
    return _PAN.sub(_card, text)

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


# --- per-call secrets: the values the policy masked -------------------------------------------
#
# A decision's ``mask`` names argument fields the trail must not hold. ``redact`` hides them in
# the recorded arguments, but the same value can come back in free text: a JSON Schema message
# ("'A-SECRET' does not match ..."), a backend's 404 ("account A-SECRET not found"), a URL path.
# So the masked values of a call are registered as secrets *of that call* (never process-wide:
# a masked "1234" must not redact every "1234" of every other call) and scrubbed from every
# string its spans, events, logs and errors carry.

MIN_MASKED_LEN = 4
"""Shorter masked values are not scrubbed from free text (they would turn ordinary text into
garbage); validator messages never quote a masked value, whatever its length."""

# Facts the gateway itself establishes. They are never scrubbed for a call's masked values: a
# caller could otherwise choose a masked value equal to its own principal id, operation or
# outcome and blank those out of its audit record. Registered secrets are still scrubbed.
FACT_KEYS: frozenset[str] = frozenset({
    A.PRINCIPAL_ID, A.TENANT, A.ROLES, A.TRANSPORT, A.REQUEST_ID, A.SESSION_ID, A.ACTION_KIND,
    A.OPERATION, A.BACKEND, A.ROUTE, A.REASONS, A.OBLIGATIONS, A.DECISION_ID,
    A.PARENT_DECISION_ID, A.POLICY_REVISION, A.OUTCOME, A.ERROR_FIELD, A.ARGUMENTS_HMAC,
    A.CODE_HMAC, A.RESULT_SHA256, A.IDEMPOTENCY_KEY_STATE, A.SANDBOX_EXIT, A.RPC_SYSTEM,
    A.RPC_SERVICE, A.RPC_METHOD, A.HTTP_REQUEST_METHOD, A.SERVER_ADDRESS, A.ERROR_TYPE,
    A.GEN_AI_OPERATION_NAME, A.GEN_AI_TOOL_NAME, A.GEN_AI_TOOL_CALL_ID, "url.template",
    "exception.type", "switchboard.error_code", A.DIGEST_KEY_ID,
    # log fields bound or set by the gateway
    "principal", "tenant", "request_id", "trace_id", "span_id", "rpc_method", "level",
    "log_level", "timestamp", "logger", "outcome", "status", "decision_id", "route",
    "policy_revision", "engine", "operation", "backend", "error_code",
})  # fmt: skip


def _escaped(text: str) -> str:
    return json.dumps(text, ensure_ascii=True)[1:-1]


def masked_forms(value: Any) -> set[str]:
    """The spellings of one masked value that free text may carry (≥ ``MIN_MASKED_LEN``).

    The value itself, its JSON-escaped forms (ASCII and not, once and twice: a backend body is
    JSON that may quote JSON), its ``repr`` body, and its URL-encoded forms (path and query);
    numbers as ``str``/``repr`` (``100.0`` also as ``100``). Booleans and ``null`` are not
    secrets.
    """
    forms: set[str] = set()
    if isinstance(value, bool) or value is None:
        return forms
    if isinstance(value, int):
        forms.add(str(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            return forms
        forms.update((repr(value), str(value)))
        if value.is_integer():
            forms.add(str(int(value)))
    elif isinstance(value, str):
        once = _escaped(value)
        forms.update(
            (
                value,
                once,
                _escaped(once),
                repr(value)[1:-1],
                json.dumps(value, ensure_ascii=False)[1:-1],
            )
        )
        # a lone surrogate cannot be URL-encoded (nor sent)
        with contextlib.suppress(UnicodeEncodeError):
            forms.update((quote(value, safe=""), quote(value), quote_plus(value)))
    return {f for f in forms if len(f) >= MIN_MASKED_LEN}


class CallSecrets:
    """The masked values of one call; shared by every span of its local call tree."""

    __slots__ = ("_forms", "_lock", "_pattern")

    def __init__(self) -> None:
        self._forms: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()

    def add(self, values: Iterable[Any]) -> None:
        new: set[str] = set()
        for value in values:
            new |= masked_forms(value)
        with self._lock:
            if new <= self._forms:
                return
            self._forms |= new
            ordered = sorted(self._forms, key=len, reverse=True)
            self._pattern = re.compile("|".join(re.escape(f) for f in ordered))

    def scrub(self, text: str) -> str:
        pattern = self._pattern
        return pattern.sub(REDACTED, text) if pattern is not None else text

    def __bool__(self) -> bool:
        return self._pattern is not None


_live_lock = threading.Lock()
_live: dict[tuple[int, int], CallSecrets] = {}


def open_span_secrets(trace_id: int, span_id: int, parent: SpanContext | None) -> CallSecrets:
    """Called as a span starts: it shares its local parent's set, or a local root gets one."""
    with _live_lock:
        secrets = None
        if parent is not None and parent.is_valid and not parent.is_remote:
            secrets = _live.get((parent.trace_id, parent.span_id))
        if secrets is None:
            secrets = CallSecrets()
        _live[(trace_id, span_id)] = secrets
    return secrets


def close_span_secrets(trace_id: int, span_id: int) -> CallSecrets | None:
    """Called as a span ends: its set, for scrubbing what it recorded."""
    with _live_lock:
        return _live.pop((trace_id, span_id), None)


def current_call_secrets() -> CallSecrets | None:
    """The set of the call whose span is current (None outside a gateway span)."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    with _live_lock:
        return _live.get((ctx.trace_id, ctx.span_id))


def register_masked(value: Any, mask: Sequence[str], prefix: str = "") -> CallSecrets:
    """Register the values ``mask`` hides in ``value`` as secrets of the current call.

    Returns the call's set (a detached one when no gateway span is current, so the caller can
    still scrub its errors with it).
    """
    secrets = current_call_secrets()
    if secrets is None:  # (an empty set is falsy: never `or` here)
        secrets = CallSecrets()
    secrets.add(masked_values(value, mask, prefix))  # the credential backstop even unmasked
    return secrets


def scrub_data(value: Any, secrets: CallSecrets) -> Any:
    """A copy of JSON-like ``value`` with the masked values scrubbed from every string, the
    keys of objects included (a key may spell a masked value; scrubbed keys that collide
    keep one of their values, which only hides more)."""
    if isinstance(value, str):
        return secrets.scrub(value)
    if isinstance(value, Mapping):
        return {secrets.scrub(k) if isinstance(k, str) else k: scrub_data(v, secrets)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub_data(v, secrets) for v in value]
    return value


def scrub_error(error: GatewayError, secrets: CallSecrets | None = None) -> GatewayError:
    """Scrub a gateway error's message and details in place (before it is raised on)."""
    found = secrets if secrets is not None else current_call_secrets()
    if not found:
        return error
    error.message = found.scrub(error.message)
    error.args = (error.message, *error.args[1:])
    # The field path names the caller's keys, and a key may spell a masked value (an
    # undeclared field named after the account): it goes to the trailer and the span too.
    error.field = found.scrub(error.field)
    error.details = scrub_data(error.details, found)
    reasons = getattr(error, "reasons", None)
    if isinstance(reasons, list):
        error.reasons = scrub_data(reasons, found)  # type: ignore[attr-defined]
    return error


def scrub_text(text: str, call: CallSecrets | None = None, *, cards: bool = True) -> str:
    """Remove the call's masked values, registered secrets, ``Bearer``/``Basic`` credentials
    and payment card numbers (:func:`scrub_cards`).

    A text shorter than the shortest spelling it could hold is returned as it is without
    running the patterns (most span and log values are short words and ids)."""
    if len(text) < MIN_MASKED_LEN:
        return text
    if call:
        text = call.scrub(text)
    pattern = _secrets_re
    if pattern is not None and len(text) >= _MIN_SECRET_LEN:
        text = pattern.sub(REDACTED, text)
    if "earer" in text or "asic" in text:
        text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return scrub_cards(text) if cards else text


def _scrub_key(key: Any, call: CallSecrets | None) -> Any:
    """An object key as recorded: the call's masked values, registered secrets and card
    numbers removed (credential *keys* name what they hide and are kept; their values are
    redacted)."""
    return scrub_text(key, call) if type(key) is str else key


def scrub_value(key: str, value: Any, call: CallSecrets | None = None) -> Any:
    """Scrub one attribute or log value (strings, and sequences/mappings of them).

    ``call``: the masked values of the call, scrubbed from every string except the gateway's
    own facts (:data:`FACT_KEYS`). Runs for every attribute of every span and every field of
    every log line, so the plain JSON types are dispatched on their exact type first (no ABC
    ``isinstance``); anything else takes the general branches below, with the same result.
    """
    fact = key in FACT_KEYS  # the gateway's own ids and digests: no masked value, no card
    if fact:
        call = None
    if is_secret_key(key):
        if value is not None and value != "":
            return REDACTED
    else:
        kind = type(value)
        if kind is str:
            return scrub_text(value, call, cards=not fact)
        if kind is int or kind is bool:
            return value
        if kind is dict:  # keys too: a key may spell a masked value
            return {_scrub_key(k, call): scrub_value(k if type(k) is str else str(k), v, call)
                    for k, v in value.items()}
        if kind is list:
            return [scrub_value("", v, call) for v in value]
        if kind is float:
            return value if math.isfinite(value) else str(value)
        if isinstance(value, bool | int):
            return value
    if isinstance(value, str):
        return scrub_text(value, call)
    if isinstance(value, list | tuple):
        return type(value)(scrub_value("", v, call) for v in value)
    if isinstance(value, Mapping):
        return {_scrub_key(k, call): scrub_value(str(k), v, call) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
