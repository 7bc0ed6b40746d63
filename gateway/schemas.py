"""JSON Schema validators that never fetch and never backtrack.

Schemas the gateway applies to untrusted data come from third-party OpenAPI documents (applied
to an agent's arguments) and from the agent itself (a code run's ``output_schema``, applied to
what its code returns). Two library defaults made those a weapon:

* **Remote references.** Without a registry, jsonschema resolves ``{"$ref": "http://…"}`` or
  ``file:///…`` by fetching it (urllib, on the event loop, no timeout) — server-side request
  forgery whose answer came back in the error text. Every validator here gets an empty
  ``referencing.Registry``: only references inside the schema resolve, anything else is an
  error, and an untrusted schema naming one is refused up front (:func:`check_untrusted`).
* **Backtracking regular expressions.** jsonschema evaluates ``pattern``, ``patternProperties``
  (and the keys ``additionalProperties``/``unevaluatedProperties`` must skip) with Python's
  backtracking ``re``: ``{"pattern": "^(a+)+$"}`` against ``"a" * 40 + "!"`` holds the event
  loop, and every caller with it, for hours. Those evaluations run on RE2 here (linear time in
  the text, Google's engine). A pattern RE2 cannot compile (look-arounds, back-references) is
  refused in an untrusted schema and fails validation closed in a catalog schema (every
  pattern in the real specs this project tests with compiles).

The RE2 evaluation is installed by replacing the ``re`` module jsonschema's keyword modules
use (they call only ``re.search``); ``tests/security/test_schema_safety.py`` checks that every
jsonschema module that imports ``re`` is covered, so an upgrade cannot silently undo it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import jsonschema
import jsonschema._keywords
import jsonschema._legacy_keywords
import jsonschema._utils
import re2
import referencing
from jsonschema.protocols import Validator

from gateway.errors import InvalidRequest

__all__ = [
    "NO_REMOTE",
    "PATCHED_MODULES",
    "UnsafePattern",
    "check_untrusted",
    "compile_pattern",
    "safe_validator",
]

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a refused pattern is our error to report, not absl's stderr line
_CACHE_SIZE = 4096
_cache: OrderedDict[str, Any] = OrderedDict()
_cache_lock = threading.Lock()
# Resolves nothing but the schema's own resources; its retrieve refuses every URI.
NO_REMOTE: referencing.Registry[Any] = referencing.Registry()
_REF_KEYS = ("$ref", "$dynamicRef")


class UnsafePattern(ValueError):
    """A schema pattern RE2 cannot compile: the gateway will not evaluate it."""

    def __init__(self, pattern: str, reason: str) -> None:
        super().__init__(f"pattern {pattern[:200]!r} cannot be evaluated in linear time "
                         f"(RE2: {reason[:200]})")
        self.pattern = pattern


def compile_pattern(pattern: str) -> Any:
    """The RE2 program for ``pattern`` (cached); :class:`UnsafePattern` if RE2 refuses it."""
    with _cache_lock:
        hit = _cache.get(pattern)
        if hit is not None:
            _cache.move_to_end(pattern)
            return hit
    try:
        compiled = re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        raise UnsafePattern(pattern, str(exc)) from None
    with _cache_lock:
        _cache[pattern] = compiled
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return compiled


def _search(pattern: str, string: str) -> Any:
    return compile_pattern(pattern).search(string)


# What jsonschema's keyword modules see as `re`: they only ever call re.search(pattern, text).
_LINEAR_RE = SimpleNamespace(search=_search)
PATCHED_MODULES = (jsonschema._keywords, jsonschema._utils, jsonschema._legacy_keywords)
for _module in PATCHED_MODULES:
    _module.re = _LINEAR_RE  # type: ignore[attr-defined]


def safe_validator(schema: dict[str, Any] | bool, *,
                   format_checker: jsonschema.FormatChecker | None = None) -> Validator:
    """A validator for ``schema`` (its dialect from ``$schema``, default 2020-12) that resolves
    only references inside ``schema``. Evaluating it raises
    ``referencing.exceptions.Unresolvable`` for any other reference and
    :class:`UnsafePattern` for a pattern RE2 refuses; callers turn both into their own
    fail-closed error."""
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, registry=NO_REMOTE, format_checker=format_checker)


def check_untrusted(schema: Any, field: str) -> None:
    """Refuse, as :class:`InvalidRequest` naming the place, a schema from a caller that would
    reach outside itself (a ``$ref`` not starting with ``#``) or carry a pattern RE2 refuses.
    Iterative: the schema may be nested deeper than Python's recursion limit."""
    for path, key, value in _walk(schema, field):
        if key in _REF_KEYS and isinstance(value, str) and not value.startswith("#"):
            raise InvalidRequest(
                f"{path}: only references inside the schema ('#…') are allowed, not "
                f"{value[:200]!r}", field=path)
        if key == "$id" and isinstance(value, str) and not value.startswith("#"):
            raise InvalidRequest(f"{path}: a schema from a caller cannot set a base URI "
                                 f"({value[:200]!r})", field=path)
        patterns: list[Any] = []
        if key == "pattern":
            patterns = [value]
        elif key == "patternProperties" and isinstance(value, dict):
            patterns = list(value)
        for pattern in patterns:
            if isinstance(pattern, str):
                try:
                    compile_pattern(pattern)
                except UnsafePattern as exc:
                    raise InvalidRequest(f"{path}: {exc}", field=path) from None


def _walk(schema: Any, field: str) -> Iterator[tuple[str, str, Any]]:
    stack: list[tuple[Any, str]] = [(schema, field)]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                child = f"{path}.{key}"
                yield child, str(key), value
                if isinstance(value, dict | list):
                    stack.append((value, child))
        elif isinstance(node, list):
            stack.extend((value, f"{path}[{i}]") for i, value in enumerate(node)
                         if isinstance(value, dict | list))

