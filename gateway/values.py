"""Bounds on what crosses the gateway's doors: envelope fields (request ids, session ids,
operation names, queries) and the JSON values of arguments, inputs and results.

Every check here is O(1) in the size of a hostile value before it does any O(n) work, and
every error names the offending field with a bounded, escaped path. Input that breaks a bound
is :class:`~gateway.errors.InvalidRequest`; a result that cannot be carried to the client
(nested too deeply, a non-finite number) is :class:`~gateway.errors.ResultInvalid`; lone
surrogates in output text become U+FFFD.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any

from gateway.errors import InvalidRequest, ResultInvalid

__all__ = [
    "ID_PATTERN",
    "MAX_DEPTH",
    "MAX_ID_LENGTH",
    "MAX_NAME_LENGTH",
    "MAX_QUERY_LENGTH",
    "MAX_SOURCE_BYTES",
    "MAX_WIRE_DEPTH",
    "UnreadableJson",
    "check_id",
    "check_input",
    "check_name",
    "check_query",
    "clean_result",
    "clean_text",
    "key_path",
    "loads_bounded",
    "loggable",
    "loggable_id",
    "split_listen",
]

MAX_ID_LENGTH = 128
ID_PATTERN = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Operation names are "<backend>.<snake_case operationId>"; nothing real comes close.
MAX_NAME_LENGTH = 256
MAX_QUERY_LENGTH = 500  # the search_operations tool's own maxLength
MAX_SOURCE_BYTES = 256 * 1024
# JSON nesting (objects and arrays) of arguments, inputs and results. A protobuf Struct costs
# three messages per object level and upb refuses more than 100 nested messages, so 32 is the
# deepest object nesting every gRPC client can decode (ExecuteEvent included).
MAX_DEPTH = 32
# JSON nesting the gateway will parse at all from an untrusted peer (the sandbox's frames and
# results). Far above MAX_DEPTH, so an honest result nested 33+ deep still parses and gets its
# documented result_invalid; far below Python's recursion limit, so the C parser never
# reaches it (a RecursionError would escape every `except ValueError`).
MAX_WIRE_DEPTH = 512
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_PATH_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]{0,63}")


def loggable(value: str, limit: int = 64) -> str:
    """A bounded, escaped stand-in for a value that failed a check: its length, a digest and
    an ASCII-escaped prefix — never the value itself."""
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"<invalid len={len(value)} sha256={digest} prefix={value[:limit // 4]!a}>"


def loggable_id(value: str) -> str:
    """``value`` when it is a well-formed id, else :func:`loggable` of it."""
    if len(value) <= MAX_ID_LENGTH and ID_PATTERN.fullmatch(value):
        return value
    return loggable(value)


def check_id(value: str, field: str, what: str = "request_id") -> str:
    """A request or session id: 1-128 characters of ``[A-Za-z0-9._:-]``."""
    if len(value) > MAX_ID_LENGTH or not ID_PATTERN.fullmatch(value):
        raise InvalidRequest(f"{what} must be 1-{MAX_ID_LENGTH} characters of [A-Za-z0-9._:-]",
                             field=field, details={"length": len(value)})
    return value


def check_name(name: str, field: str) -> str:
    """An operation (or tool) name: non-empty, at most :data:`MAX_NAME_LENGTH` characters,
    printable (no control characters, no lone surrogates). Checked before any lookup or
    suggestion work."""
    if not name:
        raise InvalidRequest(f"{field} is required", field=field)
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"{field} exceeds {MAX_NAME_LENGTH} characters ({len(name)})",
                             field=field, details={"length": len(name),
                                                   "max_length": MAX_NAME_LENGTH})
    if not name.isprintable():
        raise InvalidRequest(f"{field} contains control or unpaired surrogate characters",
                             field=field)
    return name


def check_query(query: str, field: str = "query") -> str:
    """A search query: non-blank, at most :data:`MAX_QUERY_LENGTH` characters."""
    if len(query) > MAX_QUERY_LENGTH:
        raise InvalidRequest(f"{field} exceeds {MAX_QUERY_LENGTH} characters ({len(query)})",
                             field=field, details={"length": len(query),
                                                   "max_length": MAX_QUERY_LENGTH})
    if not query.strip():
        raise InvalidRequest(f"{field} is empty", field=field)
    if _SURROGATE.search(query):
        raise InvalidRequest(f"{field} contains unpaired surrogate characters", field=field)
    return query


def key_path(path: str, key: str) -> str:
    """``path.key`` for an identifier-like key, else ``path['<escaped, clipped key>']``."""
    if _PATH_KEY.fullmatch(key):
        return f"{path}.{key}"
    text = key[:64].encode("ascii", "backslashreplace").decode("ascii")
    return f"{path}[{text!r}{'…' if len(key) > 64 else ''}]"


class UnreadableJson(ValueError):
    """Text an untrusted peer sent that :func:`loads_bounded` will not accept; ``too_deep``
    when the reason is nesting past the bound."""

    def __init__(self, reason: str, *, too_deep: bool = False) -> None:
        super().__init__(reason)
        self.too_deep = too_deep


def _refuse_constant(name: str) -> Any:
    raise UnreadableJson(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400: valid JSON syntax, not a number JSON can carry
        raise UnreadableJson(f"{text[:40]} overflows a double")
    return value


# One decoder for every call: ``json.loads`` with hooks builds a new JSONDecoder each time
# (~4 µs, twice per sandbox run), and the hooks are the same every time.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def _loads(text: str | bytes) -> Any:
    """``json.loads(text, parse_constant=…, parse_float=…)``: its own steps, its decoder."""
    if isinstance(text, str):
        if text.startswith("\ufeff"):
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    elif isinstance(text, bytes | bytearray):
        text = text.decode(json.detect_encoding(text), "surrogatepass")
    else:
        raise TypeError(f"the JSON object must be str, bytes or bytearray, "
                        f"not {text.__class__.__name__}")
    return _DECODER.decode(text)


def loads_bounded(text: str | bytes, max_depth: int = MAX_WIRE_DEPTH) -> Any:
    """``json.loads`` for text from an untrusted peer, with one failure type: every refusal —
    bad syntax, NaN/Infinity or an overflowing number, an integer past Python's digit limit,
    nesting deeper than ``max_depth`` (checked on the parsed value, so the bound does not
    depend on how deep the caller's stack is), a RecursionError all the same — is
    :class:`UnreadableJson` (a ValueError). Lone surrogates parse (``clean_result`` turns them
    into U+FFFD later), as with ``json.loads``."""
    try:
        value = _loads(text)
    except RecursionError:
        raise UnreadableJson(f"nested more than {max_depth} levels deep", too_deep=True) from None
    except UnreadableJson:
        raise
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise UnreadableJson(f"not JSON: {str(exc)[:200]}") from None
    opens = (text.count(b"[") + text.count(b"{") if isinstance(text, bytes)
             else text.count("[") + text.count("{"))
    if opens > max_depth:  # else it cannot be nested that deep: skip the walk
        stack: list[tuple[Any, int]] = [(value, 0)]
        while stack:
            item, depth = stack.pop()
            if isinstance(item, dict | list):
                if depth >= max_depth:
                    raise UnreadableJson(f"nested more than {max_depth} levels deep",
                                         too_deep=True)
                children = item.values() if isinstance(item, dict) else item
                stack.extend((child, depth + 1) for child in children
                             if isinstance(child, dict | list))
    return value


def check_input(value: Any, field: str) -> Any:
    """Raise :class:`InvalidRequest` (``field`` = the path of the first offence, e.g.
    ``arguments.amount`` or ``inputs.rows[3]``) when ``value`` is not plain, finite JSON of at
    most :data:`MAX_DEPTH` levels without unpaired surrogates; returns ``value``."""
    # Iterative: a hostile value may be nested deeper than Python's recursion limit.
    stack: list[tuple[Any, str, int]] = [(value, field, 0)]
    while stack:
        item, path, depth = stack.pop()
        if item is None or isinstance(item, (bool, int)):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise InvalidRequest(f"{path}: {item} is not a JSON number (NaN and infinities "
                                     "are not allowed)", field=path)
            continue
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise InvalidRequest(f"{path}: the string contains unpaired surrogate "
                                     "characters", field=path)
            continue
        if isinstance(item, (dict, list)):
            if depth >= MAX_DEPTH:
                raise InvalidRequest(f"{path}: nested more than {MAX_DEPTH} levels deep",
                                     field=path, details={"max_depth": MAX_DEPTH})
            if isinstance(item, dict):
                for key, child in item.items():
                    if not isinstance(key, str) or _SURROGATE.search(key):
                        bad = str(key) if not isinstance(key, str) else key
                        raise InvalidRequest(f"{key_path(path, bad)}: invalid object key",
                                             field=key_path(path, bad))
                    stack.append((child, key_path(path, key), depth + 1))
            else:
                for i, child in enumerate(item):
                    stack.append((child, f"{path}[{i}]", depth + 1))
            continue
        raise InvalidRequest(f"{path}: {type(item).__name__} is not a JSON value", field=path)
    return value


def clean_text(text: str) -> str:
    """``text`` with every unpaired surrogate replaced by U+FFFD (it cannot be UTF-8)."""
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def clean_result(value: Any, field: str = "result") -> Any:
    """A copy of a result that every client can receive: unpaired surrogates in strings and
    keys become U+FFFD; a non-finite number or nesting beyond :data:`MAX_DEPTH` raises
    :class:`ResultInvalid` naming the path (``result.rows[2].total``)."""

    def walk(item: Any, path: str, depth: int) -> Any:
        if item is None or isinstance(item, (bool, int)):
            return item
        if isinstance(item, float):
            if not math.isfinite(item):
                raise ResultInvalid(f"{path}: {item} cannot be returned as JSON (NaN and "
                                    "infinities are not JSON numbers)", field=path)
            return item
        if isinstance(item, str):
            return clean_text(item)
        if isinstance(item, (dict, list, tuple)):
            if depth >= MAX_DEPTH:
                raise ResultInvalid(f"{path}: the result is nested more than {MAX_DEPTH} "
                                    "levels deep", field=path, details={"max_depth": MAX_DEPTH})
            if isinstance(item, dict):
                return {clean_text(str(k)): walk(v, key_path(path, str(k)), depth + 1)
                        for k, v in item.items()}
            return [walk(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item)]
        raise ResultInvalid(f"{path}: {type(item).__name__} is not a JSON value", field=path)

    return walk(value, field, 0)


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``; an empty host is every interface) as (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen must be HOST:PORT, got {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)
