"""A caller's schema is evaluated in linear time (gateway/schemas.py), round 3 finding 1.

``uniqueItems`` is O(n) hashing with jsonschema's exact equality, for every validator in the
process; a caller's ``output_schema`` runs under a work budget proportional to the result's size
and a ``$ref`` nesting cap, so no schema shape — reference fan-out, anyOf/oneOf/allOf fan-out,
``contains`` under ``items``, ``dependentSchemas``, ``unevaluated*`` walks, recursion to ``#``
— costs more than a constant per value of the result. Ordinary schemas validate as before.

No wall-clock assertions: the exponential shapes below would take hours without the budget,
so finishing at all (under the module timeout) is the check, and the work done is measured in
budget units or counted calls.
"""

from __future__ import annotations

import ast
import asyncio
import itertools
from pathlib import Path
from typing import Any, Literal

import jsonschema
import jsonschema._keywords
import jsonschema._utils
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import BaseModel

import gateway.schemas as S
from gateway.errors import InvalidRequest, SchemaInvalid
from gateway.models import Operation
from gateway.sandbox.runs import CallState, Output, output_validator, result_of
from gateway.tools import validate_arguments

pytestmark = pytest.mark.timeout(600)

_EQUAL = jsonschema._utils.equal


def _pairwise_unique(items: list[Any]) -> bool:
    """The definition jsonschema implements (its pairwise fallback): no two items equal."""
    return not any(_EQUAL(a, b) for a, b in itertools.combinations(items, 2))


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from([0.0, 1.0, 2.5, -1.0])
    | st.text(alphabet="ab1", max_size=2),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(alphabet="xy", max_size=1), inner, max_size=3),
    max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(_json, max_size=6))
def test_unique_agrees_with_jsonschema_equality(items: list[Any]) -> None:
    assert S.unique(items) == _pairwise_unique(items), items
    # and with jsonschema's own keyword wherever its sort-based path is itself consistent
    errors = list(Draft202012Validator({"uniqueItems": True}).iter_errors(items))
    assert (not errors) == _pairwise_unique(items), items


@pytest.mark.parametrize(("items", "unique"), [
    ([1, 1.0], False), ([True, 1], True), ([False, 0], True), ([None, False], True),
    ([{"a": 1, "b": 2}, {"b": 2, "a": 1}], False), ([{"a": 1}, {"a": True}], True),
    ([[1, [2.0]], [1.0, [2]]], False), ([[True], [1]], True), (["1", 1], True),
    ([{"a": [{"b": None}]}, {"a": [{"b": None}]}], False), ([[], {}], True),
    ([2 ** 53 + 1, float(2 ** 53)], True), ([2 ** 60, float(2 ** 60)], False),
    ([10 ** 30, 1e30], True),
])
def test_unique_edge_cases(items: list[Any], unique: bool) -> None:
    assert S.unique(items) is unique
    assert _pairwise_unique(items) is unique  # the reference agrees


def test_unique_items_never_compares_pairwise_in_any_validator(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The catalog's, the config's and a plain Draft202012Validator all get the O(n) check:
    30,000 distinct unsortable objects, not one call to jsonschema's pairwise ``equal``."""
    calls = {"n": 0}

    def counting(one: Any, two: Any) -> bool:
        calls["n"] += 1
        return bool(_EQUAL(one, two))

    monkeypatch.setattr(jsonschema._utils, "equal", counting)
    items = [{"k": i} for i in range(30000)]
    assert Draft202012Validator({"uniqueItems": True}).is_valid(items)
    op = Operation(name="evil.op", backend="evil", operation_id="op", summary="s",
                   method="POST", path="/op", input_schema={
                       "type": "object", "properties": {
                           "rows": {"type": "array", "uniqueItems": True}}})
    validate_arguments(op, {"rows": items}, strict=False)
    with pytest.raises(SchemaInvalid) as info:
        validate_arguments(op, {"rows": [*items, {"k": 7}]}, strict=False)
    assert info.value.field == "arguments.rows"
    assert calls["n"] == 0


def test_every_jsonschema_module_that_imports_uniq_is_patched() -> None:
    """An upgrade that adds a caller of ``_utils.uniq`` elsewhere must not bring O(n²) back."""
    root = Path(jsonschema.__file__).parent
    patched = {Path(m.__file__ or "").name for m in S.UNIQ_MODULES}
    for source in sorted(root.glob("*.py")):
        tree = ast.parse(source.read_text())
        imports = any(isinstance(n, ast.ImportFrom) and any(a.name == "uniq" for a in n.names)
                      for n in ast.walk(tree))
        attr_use = any(isinstance(n, ast.Attribute) and n.attr == "uniq" for n in ast.walk(tree))
        if imports or attr_use:
            assert source.name in patched, source.name
    for module in S.UNIQ_MODULES:
        assert module.uniq is S.unique  # type: ignore[attr-defined]


# -- bombs: every shape stops at the budget -------------------------------------------------


def _chain(levels: int, make: Any) -> dict[str, Any]:
    defs = {f"d{i}": make(f"#/$defs/d{i + 1}") for i in range(levels)}
    defs[f"d{levels}"] = {"type": "integer"}
    return {"$defs": defs, "$ref": "#/$defs/d0"}


def _ref(target: str) -> dict[str, Any]:
    return {"$ref": target}


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value  # a few dozen bytes: 2**25 evaluations under items + contains


BOMBS: dict[str, tuple[dict[str, Any], Any]] = {
    "allOf-refs": (_chain(40, lambda t: {"allOf": [_ref(t), _ref(t)]}), 1),
    "anyOf-refs-failing": (
        _chain(40, lambda t: {"anyOf": [_ref(t), _ref(t)]}), "not an integer"),
    "oneOf-refs": (_chain(40, lambda t: {"oneOf": [_ref(t), {"allOf": [_ref(t)]}]}), 1),
    "not-not": (_chain(40, lambda t: {"not": {"not": {"allOf": [_ref(t), _ref(t)]}}}), 1),
    "if-then-else": (_chain(40, lambda t: {"if": _ref(t), "then": _ref(t), "else": _ref(t)}),
                     1),
    "dependentSchemas": (
        _chain(40, lambda t: {"dependentSchemas": {"a": _ref(t), "b": _ref(t)}}),
        {"a": 1, "b": 2}),
    "items-contains": (
        _chain(40, lambda t: {"items": _ref(t), "contains": _ref(t)}), _nested(25)),
    "unevaluatedProperties-walk": (
        {**_chain(40, lambda t: {"allOf": [_ref(t), _ref(t)]}),
         "unevaluatedProperties": False}, {"a": 1}),
    "unevaluatedItems-walk": (
        {**_chain(40, lambda t: {"anyOf": [_ref(t), _ref(t)]}), "unevaluatedItems": False},
        [1, 2]),
    "dynamicRef-fanout": (
        {"$defs": {f"d{i}": {"$dynamicAnchor": f"a{i}", "allOf": [
            {"$dynamicRef": f"#a{i + 1}"}, {"$dynamicRef": f"#a{i + 1}"}]} for i in range(40)}
         | {"d40": {"$dynamicAnchor": "a40", "type": "integer"}}, "$ref": "#/$defs/d0"}, 1),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_exponential_schemas_stop_at_the_budget(name: str) -> None:
    schema, instance = BOMBS[name]
    validator = output_validator(schema)
    assert validator is not None
    with pytest.raises(S.SchemaTooCostly, match="budget"):
        S.validate_untrusted(validator, instance)


@pytest.mark.parametrize("schema", [
    {"$ref": "#"},
    {"allOf": [{"$ref": "#"}]},
    {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"},
    {"$dynamicAnchor": "x", "anyOf": [{"$dynamicRef": "#x"}]},
], ids=["self", "allOf-self", "cycle", "dynamic"])
def test_reference_cycles_stop_without_recursion_error(schema: dict[str, Any]) -> None:
    validator = output_validator(schema)
    assert validator is not None
    with pytest.raises(S.SchemaTooCostly):
        S.validate_untrusted(validator, {"a": [1, 2]})


def test_a_wide_schema_times_a_wide_result_is_charged_the_product() -> None:
    """``items: {enum: [10,000 values]}`` over 10,000 strings is 1e8 comparisons in one keyword
    per item: charged as such, it stops at the budget."""
    schema = {"type": "array", "items": {"enum": [f"v{i}" for i in range(10000)]}}
    validator = output_validator(schema)
    assert validator is not None
    with pytest.raises(S.SchemaTooCostly):
        S.validate_untrusted(validator, ["nope"] * 10000)
    schema = {"type": "object", "patternProperties": {f"^p{i}$": True for i in range(3000)}}
    validator = output_validator(schema)
    assert validator is not None
    with pytest.raises(S.SchemaTooCostly):
        S.validate_untrusted(validator, {f"k{i}": i for i in range(3000)})


@pytest.mark.parametrize("leaf", [
    {"pattern": "zzz"}, {"const": "y" * 1_000_000}, {"enum": ["y" * 1_000_000, 1]},
    {"patternProperties": {"zzz": False}}, {"propertyNames": {"pattern": "zzz"}},
], ids=["pattern", "const", "enum", "patternProperties", "propertyNames"])
def test_text_scanning_keywords_are_charged_per_kib(leaf: dict[str, Any]) -> None:
    """One 1 MiB string (or key) scanned by a fanned-out pattern/const/enum: each scan is
    charged by its length, so the fan-out stops after a few hundred scans, not 100,000."""
    schema = _chain(40, lambda t: {"allOf": [_ref(t), _ref(t)]})
    schema["$defs"]["d40"] = leaf
    big = "y" * 1_000_000 + "x"
    validator = output_validator(schema)
    assert validator is not None
    assert S._charge("pattern", "zzz", big, {}) > 900  # 1 + 976 KiB
    instance = {big: 1} if "Properties" in next(iter(leaf)) or "Names" in next(iter(leaf)) \
        else big
    with pytest.raises(S.SchemaTooCostly):
        S.validate_untrusted(validator, instance)


_WIDE = [1] * 50_000 + [2]
_SAME = [1] * 50_000 + [3]


@pytest.mark.parametrize(("leaf", "instance"), [
    ({"const": [_SAME]}, [_WIDE]),  # a one-item list whose item is 50,001 values deep-compared
    ({"enum": [[_SAME], 0]}, [_WIDE]),
    ({"uniqueItems": True}, [_WIDE, _SAME]),  # hashing walks every nested value
    ({"type": "object"}, ["y" * 1_000_000]),  # each failure's message reprs the megabyte
    ({"not": {"type": "array"}}, ["y" * 1_000_000]),
], ids=["const", "enum", "uniqueItems", "error-repr", "not-repr"])
def test_deep_compares_and_big_error_messages_are_charged(leaf: dict[str, Any],
                                                          instance: Any) -> None:
    schema = _chain(40, lambda t: {"allOf": [_ref(t), _ref(t)]})
    schema["$defs"]["d40"] = leaf
    validator = output_validator(schema)
    assert validator is not None
    with pytest.raises(S.SchemaTooCostly):
        S.validate_untrusted(validator, instance)


def test_long_reference_pointers_are_charged_by_length() -> None:
    """A ``$ref`` whose JSON pointer walks 5,000 levels costs that walk on every lookup."""
    inner: dict[str, Any] = {"type": "integer"}
    for _ in range(5000):
        inner = {"a": inner}
    pointer = "#/$defs/x" + "/a" * 5000
    schema = {"$defs": {"x": inner}, "allOf": [{"$ref": pointer}] * 2000}
    validator = output_validator(schema)
    assert validator is not None
    with pytest.raises(S.SchemaTooCostly):
        S.validate_untrusted(validator, 1)


def test_a_big_string_under_an_honest_pattern_is_within_budget() -> None:
    validator = output_validator({"type": "object", "properties": {
        "text": {"type": "string", "pattern": "^[a-y]+$", "maxLength": 2_000_000}}})
    assert validator is not None
    assert S.validate_untrusted(validator, {"text": "y" * 2_000_000}) == []


def test_the_budget_grows_with_the_result() -> None:
    """A big honest result under a real schema stays well inside its budget."""
    schema = {"type": "array", "uniqueItems": True, "items": {
        "type": "object", "required": ["k"], "additionalProperties": False,
        "properties": {"k": {"type": "integer", "minimum": 0}, "tags": {
            "type": "array", "items": {"type": "string", "pattern": "^[a-z]+$"}}}}}
    validator = output_validator(schema)
    assert validator is not None
    rows = [{"k": i, "tags": ["a", "bc"]} for i in range(30000)]
    assert S.validate_untrusted(validator, rows) == []
    errors = S.validate_untrusted(validator, [*rows, rows[5], {"k": -1, "x": 1}])
    assert {e.validator for e in errors} == {"minimum", "additionalProperties", "uniqueItems"}


# -- ordinary schemas: the same verdicts and messages as plain jsonschema --------------------


class Address(BaseModel):
    street: str
    zip: str | None = None


class Card(BaseModel):
    kind: Literal["card"]
    last4: str
    billing: Address


class Transfer(BaseModel):
    kind: Literal["transfer"]
    amount: float
    parent: Transfer | None = None


class Report(BaseModel):
    items: list[Card | Transfer]
    total: int
    owner: Address


REPORTS: list[Any] = [
    {"items": [], "total": 0, "owner": {"street": "s"}},
    {"items": [{"kind": "card", "last4": "1234", "billing": {"street": "s", "zip": None}},
               {"kind": "transfer", "amount": 1.5, "parent": {"kind": "transfer",
                                                              "amount": 2}}],
     "total": 2, "owner": {"street": "s"}},
    {"items": [{"kind": "card", "last4": 1234, "billing": {}}], "total": "2", "owner": None},
    {"items": [{"kind": "transfer", "amount": "x", "parent": {"kind": "card"}}], "total": 1},
    [1, 2],
    None,
]


@pytest.mark.parametrize("instance", REPORTS)
def test_pydantic_schemas_give_the_same_errors_as_before(instance: Any) -> None:
    schema = Report.model_json_schema()
    assert "$defs" in schema
    plain = sorted(Draft202012Validator(schema).iter_errors(instance), key=lambda e: list(e.path))
    validator = output_validator(schema)
    assert validator is not None
    ours = S.validate_untrusted(validator, instance)
    assert [(e.message, list(e.absolute_path), e.validator) for e in ours] == \
        [(e.message, list(e.absolute_path), e.validator) for e in plain]


def test_a_schema_nested_too_deep_to_check_is_invalid_request() -> None:
    schema: dict[str, Any] = {"type": "integer"}
    for _ in range(3000):
        schema = {"not": schema}
    with pytest.raises(InvalidRequest) as info:
        output_validator(schema)
    assert info.value.field == "output_schema"


def test_budget_state_does_not_leak_between_validations() -> None:
    """After a refused evaluation the next one starts with a full budget, and validation
    outside validate_untrusted (the catalog's) is never metered."""
    bomb = output_validator(BOMBS["allOf-refs"][0])
    small = output_validator({"type": "integer"})
    assert bomb is not None and small is not None
    for _ in range(2):
        with pytest.raises(S.SchemaTooCostly):
            S.validate_untrusted(bomb, 1)
        assert S.validate_untrusted(small, 1) == []
    assert S._budget.get() is None


async def test_result_of_refuses_a_costly_schema_as_the_runs_schema_error() -> None:
    """The run fails as OutputSchemaError naming the budget; the gateway is not involved and
    the loop keeps serving while it is evaluated (a thread)."""
    validator = output_validator(BOMBS["allOf-refs"][0])
    ticks = {"n": 0}
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            ticks["n"] += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    counters = {k: 0 for k in ("ok", "user_errors", "crashes", "timeouts", "memory")}
    try:
        run = await result_of({"status": "ok", "reply": '{"ok": true, "result": 1}'},
                              Output(budget=100), CallState(limit=1, allowed=set()), 1.0, 1000,
                              64, validator, counters)
    finally:
        stop.set()
        await task
    assert run.ok is False and run.error is not None
    assert run.error["type"] == "OutputSchemaError"
    assert "budget" in run.error["message"]
    assert ticks["n"] > 1  # the loop ran other work meanwhile
