"""The mask path language: which parts of an argument tree the trail must never hold.

One matcher for every place that hides masked values (the audit trail's copy of the arguments,
approval records, schema error wording, per-call free-text secrets, the policy decision log),
so they cannot disagree. Dependency-free on purpose: the policy worker imports it too.

A path is dot-separated segments (``action.arguments.card_number``; ``items[0]`` is
``items.0``):

* a plain segment names a key (or, as digits, a list index). Keys compare **by their
  normalised spelling**: case, ``_``, ``-``, ``.``, spaces and invisible format characters do
  not count, after NFKC, so ``card_number`` also names ``cardNumber``, ``CARD-NUMBER``,
  ``Card Number``, ``card.number`` and the fullwidth form;
* ``*`` is any one key or list item; ``*`` inside a segment is a glob over the normalised key
  (``*token`` names ``access_token`` and ``refreshToken``);
* ``**`` is any number of levels, none included, through objects and lists alike:
  ``action.arguments.**.cvv`` names ``cvv`` at the top and ``payment.cards[3].cvv``.

A path that ends at an object or a list hides that whole subtree. A key that merely contains a
masked word is not named by it (``card_number_last4`` is not ``card_number``); name it, or use
a glob.

:data:`CREDENTIAL_KEYS` is the backstop every argument tree gets whatever the policy says: any
key whose normalised spelling contains ``password``, ``secret``, ``apikey``, … or ends in
``token`` is hidden at any depth.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "ANY",
    "ANY_DEPTH",
    "CREDENTIAL_KEYS",
    "Mask",
    "collect",
    "compile_mask",
    "credential_paths",
    "normalise_key",
    "redact",
    "split_path",
]

ANY = "*"
ANY_DEPTH = "**"
# Globs over normalised keys (see normalise_key). "token" only as a suffix: max_tokens and
# token_count are not credentials, page_token/access_token/idToken are hidden either way.
CREDENTIAL_KEYS: tuple[str, ...] = (
    "*password*", "*passwd*", "*passphrase*", "*secret*", "*apikey*", "*privatekey*",
    "*credential*", "*authorization*", "*cookie*", "*token", "*bearer*",
)  # fmt: skip
_IGNORED = re.compile(r"[\s_.\-]+")
_MAX_STEPS = 8192


def normalise_key(key: str) -> str:
    """``cardNumber``, ``card_number``, ``CARD-NUMBER``, ``card.number``, the fullwidth form
    or one with a zero-width space inside → ``cardnumber`` (NFKC, no separators or invisible
    format characters, casefolded)."""
    text = unicodedata.normalize("NFKC", key)
    if not text.isascii():
        text = "".join(c for c in text if unicodedata.category(c) != "Cf")
    return _IGNORED.sub("", text).casefold()


def split_path(path: str) -> list[str]:
    """``a.b[0].c`` → ``["a", "b", "0", "c"]``."""
    return [p for p in path.replace("[", ".").replace("]", "").split(".") if p]


def credential_paths(root: str) -> tuple[str, ...]:
    """The backstop as mask paths under ``root`` (e.g. ``action.arguments``)."""
    return tuple(f"{root}.{ANY_DEPTH}.{key}" for key in CREDENTIAL_KEYS)


class _Segment:
    __slots__ = ("any", "deep", "glob", "text")

    def __init__(self, raw: str) -> None:
        self.deep = raw == ANY_DEPTH
        self.any = raw == ANY
        self.text = normalise_key(raw)
        self.glob: re.Pattern[str] | None = None
        if not (self.deep or self.any) and ANY in raw:
            self.glob = re.compile(".*".join(re.escape(p) for p in self.text.split(ANY)),
                                   re.DOTALL)

    def matches(self, key: str) -> bool:
        if self.any:
            return True
        if self.glob is not None:
            return self.glob.fullmatch(key) is not None
        return self.text == key


# A state is (path index, position in that path); the position past the end accepts.
_State = frozenset[tuple[int, int]]


class Mask:
    """Compiled mask paths: an NFA over normalised keys (``**`` loops on itself)."""

    __slots__ = ("_accepting", "_at", "_paths", "_steps", "start")

    def __init__(self, paths: Iterable[str]) -> None:
        self._paths = tuple(tuple(_Segment(s) for s in split_path(p)) for p in paths)
        self._paths = tuple(p for p in self._paths if p)
        self.start: _State = self._closure({(i, 0) for i in range(len(self._paths))})
        # Pure in (states, key): memoised, so a call's redaction is a dict lookup per node.
        self._steps: dict[tuple[_State, str], _State] = {}
        self._at: dict[str, tuple[_State, bool]] = {}
        self._accepting: dict[_State, bool] = {}

    def _closure(self, states: Iterable[tuple[int, int]]) -> _State:
        out: set[tuple[int, int]] = set()
        stack = list(states)
        while stack:
            state = stack.pop()
            if state in out:
                continue
            out.add(state)
            path, pos = state
            if pos < len(self._paths[path]) and self._paths[path][pos].deep:
                stack.append((path, pos + 1))  # ** may match no level at all
        return frozenset(out)

    def step(self, states: _State, key: str) -> _State:
        """The states after descending into ``key`` (already normalised)."""
        hit = self._steps.get((states, key))
        if hit is None:
            if len(self._steps) >= _MAX_STEPS:
                self._steps.clear()  # keys are attacker-chosen: bound the memo
            hit = self._steps[(states, key)] = self._step(states, key)
        return hit

    def _step(self, states: _State, key: str) -> _State:
        nxt: set[tuple[int, int]] = set()
        for path, pos in states:
            segments = self._paths[path]
            if pos >= len(segments):
                continue
            segment = segments[pos]
            if segment.deep:
                nxt.add((path, pos))
            elif segment.matches(key):
                nxt.add((path, pos + 1))
        return self._closure(nxt) if nxt else frozenset()

    def accepts(self, states: _State) -> bool:
        hit = self._accepting.get(states)
        if hit is None:
            if len(self._accepting) >= _MAX_STEPS:
                self._accepting.clear()
            hit = self._accepting[states] = any(
                pos >= len(self._paths[path]) for path, pos in states)
        return hit

    def at(self, prefix: str) -> tuple[_State, bool]:
        """The states for a value sitting at ``prefix``; a path may start at any tail of the
        prefix (``action.arguments.x``, ``arguments.x`` and ``x`` all name ``x`` in the
        arguments). True when the prefix itself is masked (hide the whole value)."""
        hit = self._at.get(prefix)
        if hit is None:
            if len(self._at) >= _MAX_STEPS:
                self._at.clear()
            hit = self._at[prefix] = self._at_uncached(prefix)
        return hit

    def _at_uncached(self, prefix: str) -> tuple[_State, bool]:
        states = self.start
        for part in split_path(prefix):
            stepped = self.step(states, normalise_key(part))
            if self.accepts(stepped):
                return stepped, True
            states = stepped | self.start
        return states, False


@functools.lru_cache(maxsize=512)
def compile_mask(paths: tuple[str, ...]) -> Mask:
    """The compiled form of ``paths`` (cached: a decision's mask repeats on every call)."""
    return Mask(paths)


@functools.lru_cache(maxsize=8192)
def _norm(key: str) -> str:
    return normalise_key(key)


def _key_of(key: Any) -> str:
    return _norm(key if isinstance(key, str) else str(key))


def redact(value: Any, paths: Sequence[str], prefix: str = "", marker: str = "[REDACTED]") -> Any:
    """A copy of ``value`` (at ``prefix`` in the policy input) with everything ``paths`` name
    replaced by ``marker``. Untouched branches are shared, touched ones copied; the input is
    never mutated."""
    if not paths:
        return value
    mask = compile_mask(tuple(paths))
    states, whole = mask.at(prefix)
    if whole:
        return marker
    return _redact(value, mask, states, marker) if states else value


def _redact(value: Any, mask: Mask, states: _State, marker: str) -> Any:
    if isinstance(value, Mapping):
        out: dict[Any, Any] | None = None
        for key, item in value.items():
            new = _child(item, mask, mask.step(states, _key_of(key)), marker)
            if new is not item:
                if out is None:
                    out = dict(value)
                out[key] = new
        return value if out is None else out
    if isinstance(value, list | tuple):
        items: list[Any] | None = None
        for i, item in enumerate(value):
            new = _child(item, mask, mask.step(states, str(i)), marker)
            if new is not item:
                if items is None:
                    items = list(value)
                items[i] = new
        return value if items is None else items
    return value


def _child(item: Any, mask: Mask, states: _State, marker: str) -> Any:
    if not states:
        return item
    if mask.accepts(states):
        return marker
    return _redact(item, mask, states, marker)


def collect(value: Any, paths: Sequence[str], prefix: str = "") -> list[Any]:
    """The scalar leaves :func:`redact` would hide (same rules), in no particular order."""
    out: list[Any] = []
    if not paths:
        return out
    mask = compile_mask(tuple(paths))
    states, whole = mask.at(prefix)
    if whole:
        _leaves(value, out)
    elif states:
        _collect(value, mask, states, out)
    return out


def _collect(value: Any, mask: Mask, states: _State, out: list[Any]) -> None:
    if isinstance(value, Mapping):
        pairs: Iterable[tuple[str, Any]] = ((_key_of(k), v) for k, v in value.items())
    elif isinstance(value, list | tuple):
        pairs = ((str(i), v) for i, v in enumerate(value))
    else:
        return
    for key, item in pairs:
        nxt = mask.step(states, key)
        if not nxt:
            continue
        if mask.accepts(nxt):
            _leaves(item, out)
        else:
            _collect(item, mask, nxt, out)


def _leaves(value: Any, out: list[Any]) -> None:
    if isinstance(value, Mapping):
        for item in value.values():
            _leaves(item, out)
    elif isinstance(value, list | tuple):
        for item in value:
            _leaves(item, out)
    else:
        out.append(value)
