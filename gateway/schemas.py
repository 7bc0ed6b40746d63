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

* **Super-linear keywords.** jsonschema's ``uniqueItems`` compares unsortable items (objects)
  pairwise: 30,000 distinct objects are 4.5e8 comparisons. Every validator in the process
  (catalog, config, caller) uses :func:`unique` instead: one canonical hashable key per item,
  O(n) hashing with jsonschema's own equality (``1 == 1.0``, ``True != 1``, key order
  irrelevant, nested).
* **Exponential schemas.** Local references alone can fan out: forty ``$defs`` each
  ``allOf``-referencing the next twice are 2**40 evaluations of a few-KiB schema, and
  ``unevaluatedProperties``/``unevaluatedItems`` walk the same graph again outside the keyword
  functions. A caller's schema (:func:`untrusted_validator`) is evaluated under a work budget
  (:func:`validate_untrusted`): every keyword evaluation and every step of jsonschema's
  "evaluated keys" walk is charged (more for keywords whose cost grows with the schema's or
  the instance's width), the budget is proportional to the instance's size
  (``max(BUDGET_FLOOR, BUDGET_PER_NODE * nodes)``) and ``$ref`` chains nest at most
  ``MAX_REF_DEPTH`` deep; past either, :class:`SchemaTooCostly`. The caller then runs the
  evaluation off the event loop (``asyncio.to_thread``), so even a costly-but-allowed schema
  holds nobody else up.

The RE2 evaluation is installed by replacing the ``re`` module jsonschema's keyword modules
use (they call only ``re.search``), and ``uniqueItems`` by replacing the ``uniq`` helper its
keyword calls; ``tests/security/test_schema_safety.py`` checks that every jsonschema module that
imports ``re`` or ``uniq`` is covered, so an upgrade cannot silently undo it.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
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
    "BUDGET_FLOOR",
    "BUDGET_PER_NODE",
    "MAX_REF_DEPTH",
    "NO_REMOTE",
    "PATCHED_MODULES",
    "SchemaTooCostly",
    "UnsafePattern",
    "check_untrusted",
    "compile_pattern",
    "safe_validator",
    "unique",
    "untrusted_validator",
    "validate_untrusted",
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


# --- uniqueItems in linear time --------------------------------------------------------------

_TRUE, _FALSE, _NULL = ("bool", True), ("bool", False), ("null",)


def _key(item: Any) -> Any:
    """A hashable stand-in for ``item``: two items get equal keys exactly when jsonschema's
    ``_utils.equal`` calls them equal (numbers by value, so ``1`` and ``1.0`` collide — their
    hashes agree in Python —, booleans apart from numbers, objects without key order)."""
    if item is True:
        return _TRUE
    if item is False:
        return _FALSE
    if item is None:
        return _NULL
    if isinstance(item, str):
        return ("str", item)
    if isinstance(item, int | float):
        return ("num", item)
    if isinstance(item, dict):
        return ("obj", frozenset((k, _key(v)) for k, v in item.items()))
    if isinstance(item, list | tuple):
        return ("arr", tuple(_key(v) for v in item))
    return ("other", item)  # not JSON; hashable or TypeError (then the slow path below)


def unique(container: Iterable[Any]) -> bool:
    """jsonschema's ``_utils.uniq`` (are all items distinct?) in O(total size)."""
    items = list(container)
    try:
        return len({_key(item) for item in items}) == len(items)
    except TypeError:  # an unhashable non-JSON item: only a trusted caller can get here
        return bool(_SLOW_UNIQ(items))


_SLOW_UNIQ = jsonschema._utils.uniq
jsonschema._keywords.uniq = unique  # type: ignore[attr-defined]
UNIQ_MODULES = (jsonschema._keywords,)


# --- a work budget for a caller's schema -----------------------------------------------------

BUDGET_FLOOR = 100_000  # charge units any result may use, however small
BUDGET_PER_NODE = 50  # per JSON value of the instance (a pydantic union schema uses ~11)
MAX_REF_DEPTH = 128  # $ref/$dynamicRef evaluations nested inside each other


class SchemaTooCostly(ValueError):
    """Evaluating a caller's schema would cost more than its budget (or nest too deep)."""


class _Budget:
    __slots__ = ("_weights", "left", "limit", "refs")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit
        self.refs = 0
        self._weights: dict[int, int] = {}

    def weight(self, instance: Any) -> int:
        """:func:`_nodes` of a container, once per container per validation (the instance
        is alive throughout, so its id is stable): what a deep compare or hash walks."""
        if not isinstance(instance, dict | list):
            return 1 + _kib(instance)
        key = id(instance)
        hit = self._weights.get(key)
        if hit is None:
            hit = self._weights[key] = _nodes(instance)
        return hit

    def charge(self, units: int) -> None:
        self.left -= units
        if self.left < 0:
            raise SchemaTooCostly(
                f"evaluating the schema costs more than its budget of {self.limit} steps "
                f"({BUDGET_PER_NODE} per JSON value of the result, at least {BUDGET_FLOOR})")


_budget: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar(
    "switchboard_schema_budget", default=None)
_WIDE_VALUE = frozenset({"enum", "patternProperties", "dependentSchemas", "dependentRequired",
                         "dependencies"})
_REF_KEYWORDS = frozenset({"$ref", "$dynamicRef", "$recursiveRef"})
_REF_UNITS = 9
_DEEP_COMPARE = frozenset({"const", "enum", "uniqueItems"})
_TEXT_KEYWORDS = frozenset({"pattern", "patternProperties", "additionalProperties",
                            "unevaluatedProperties", "propertyNames", "const", "enum",
                            "uniqueItems"})


def _size(value: Any) -> int:
    return len(value) if isinstance(value, dict | list) else 0


def _kib(instance: Any) -> int:
    """KiB of text a keyword scans or compares in ``instance`` (a string, or an object's
    keys): a 1 MiB string is not one step for ``pattern``, ``const`` or ``enum``."""
    if isinstance(instance, str):
        return len(instance) >> 10
    if isinstance(instance, dict) and len(instance) < 1 << 16:
        return sum(len(k) for k in instance if isinstance(k, str)) >> 10
    if isinstance(instance, dict):
        return len(instance) >> 4  # a huge object: its key count stands in (O(1) here)
    return 0


def _charge(keyword: str, value: Any, instance: Any, schema: Any) -> int:
    """Units for one keyword evaluation: 1, plus the widths it iterates over; a keyword whose
    work is (schema width * instance width) is charged the product, one that scans text per
    KiB scanned (per pattern, for patternProperties)."""
    units = 1 + _size(value) + _size(instance)
    if keyword in _REF_KEYWORDS:
        units += _REF_UNITS  # a registry lookup and a new validator: ~10x a plain keyword
    elif keyword in _WIDE_VALUE:
        units += _size(value) * _size(instance)
    elif keyword in ("additionalProperties", "unevaluatedProperties") and \
            isinstance(schema, dict):
        units += _size(schema.get("patternProperties")) * _size(instance)
    if keyword in _TEXT_KEYWORDS:
        units += _kib(instance) * max(1, _size(value) if keyword != "const" else 1)
    return units


def _metered(keyword: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    is_ref = keyword in _REF_KEYWORDS

    def keyword_fn(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[Any]:
        budget = _budget.get()
        if budget is None:  # outside validate_untrusted: unmetered (never for a caller)
            yield from fn(validator, value, instance, schema) or ()
            return
        units = _charge(keyword, value, instance, schema)
        if keyword in _DEEP_COMPARE:
            # const/enum compare, uniqueItems hashes, the whole nested instance
            units += budget.weight(instance) * (_size(value) if keyword == "enum" else 1)
        elif is_ref:
            units += (len(value) >> 4 if isinstance(value, str) else 0) + budget.refs
        budget.charge(units)
        if not is_ref:
            for error in fn(validator, value, instance, schema) or ():
                # jsonschema's messages repr the instance: a big one costs per error
                budget.charge(len(error.message) >> 8)
                yield error
            return
        budget.refs += 1
        try:
            if budget.refs > MAX_REF_DEPTH:
                raise SchemaTooCostly(f"the schema's references nest more than "
                                      f"{MAX_REF_DEPTH} deep")
            yield from fn(validator, value, instance, schema) or ()
        finally:
            budget.refs -= 1

    keyword_fn.__name__ = getattr(fn, "__name__", keyword)
    return keyword_fn


def _metered_walk(fn: Callable[..., Any]) -> Callable[..., Any]:
    """jsonschema's walk for ``unevaluated*`` follows allOf/anyOf/$ref itself: charged too."""

    @functools.wraps(fn)
    def walk(validator: Any, instance: Any, schema: Any) -> Any:
        budget = _budget.get()
        if budget is not None:
            budget.charge(1 + _REF_UNITS + _size(instance))  # evolve + lookup: dear
        return fn(validator, instance, schema)

    return walk


for _name in ("find_evaluated_item_indexes_by_schema", "find_evaluated_property_keys_by_schema"):
    _walk_fn = _metered_walk(getattr(jsonschema._utils, _name))
    # _utils recurses through its module global; _keywords imported the name itself.
    setattr(jsonschema._utils, _name, _walk_fn)
    setattr(jsonschema._keywords, _name, _walk_fn)

_untrusted_classes: dict[type, type] = {}
_classes_lock = threading.Lock()


def _untrusted_class(cls: type) -> Any:
    with _classes_lock:
        hit = _untrusted_classes.get(cls)
        if hit is None:
            validators = {k: _metered(k, fn) for k, fn in cls.VALIDATORS.items()}  # type: ignore[attr-defined]
            hit = jsonschema.validators.extend(cls, validators)  # type: ignore[no-untyped-call]
            _untrusted_classes[cls] = hit
        return hit


def untrusted_validator(schema: dict[str, Any] | bool) -> Validator:
    """A validator for a caller's schema (checked with :func:`check_untrusted` first): as
    :func:`safe_validator`, with every keyword metered. Evaluate it only through
    :func:`validate_untrusted`."""
    cls = _untrusted_class(jsonschema.validators.validator_for(schema))
    validator: Validator = cls(schema, registry=NO_REMOTE)
    return validator


def _nodes(instance: Any) -> int:
    """JSON values in ``instance``, a string (or key) counting once more per KiB."""
    count, stack = 0, [instance]
    while stack:
        item = stack.pop()
        count += 1
        if isinstance(item, str):
            count += len(item) >> 10
        elif isinstance(item, dict):
            count += sum(len(k) for k in item if isinstance(k, str)) >> 10
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def validate_untrusted(validator: Validator, instance: Any) -> list[jsonschema.ValidationError]:
    """Every violation of ``instance`` (sorted by path), within the work budget; raises
    :class:`SchemaTooCostly` past it (or when evaluation would recurse past Python's limit).
    Blocking and CPU-bound: call it in a thread (``asyncio.to_thread``)."""
    budget = _Budget(max(BUDGET_FLOOR, BUDGET_PER_NODE * _nodes(instance)))
    token = _budget.set(budget)
    try:
        return sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    except RecursionError:
        raise SchemaTooCostly("the schema and the result nest too deep to evaluate") from None
    finally:
        _budget.reset(token)


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

