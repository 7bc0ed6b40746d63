"""The compiled accept check (gateway/tools/fastcheck.py) never says yes where jsonschema
says no, and says yes for the ordinary valid catalog values it exists for."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from gateway.schemas import NO_REMOTE
from gateway.tools.fastcheck import compile_accept

BALANCE = {"type": "object", "title": "Balance",
           "properties": {"account": {"type": "string"}, "balance": {"type": "number"},
                          "currency": {"type": "string", "enum": ["USD", "EUR", "GBP"]},
                          "as_of": {"type": "string", "format": "date-time"}},
           "required": ["account", "balance", "currency", "as_of"]}
TRANSFER_IN = {
    "type": "object", "additionalProperties": False, "required": ["from_account", "amount"],
    "properties": {
        "from_account": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,32}$"},
        "amount": {"type": "number", "minimum": 0.01, "maximum": 1e9},
        "count": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10},
        "memo": {"anyOf": [{"type": "string", "maxLength": 5}, {"type": "null"}]},
        "tags": {"type": "array", "items": {"type": "string", "minLength": 1}, "maxItems": 2},
        "owner": {"$ref": "#/$defs/Owner"},
        "email": {"type": "string", "format": "email"},
        "flag": {"type": ["boolean", "null"]},
    },
    "$defs": {"Owner": {"type": "object", "properties": {"next": {"$ref": "#/$defs/Owner"},
                                                        "id": {"type": "integer"}},
                        "additionalProperties": {"type": "string"}}},
}
SCHEMAS = [BALANCE, TRANSFER_IN, {"type": "object"}, {}, True,
           {"allOf": [{"required": ["a"]}, {"properties": {"a": {"minimum": 3}}}]}]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 12) | st.floats(allow_nan=True)
    | st.sampled_from(["USD", "A1", "", "bad id!", "2026-12-01T10:00:00Z", "x@y.z", "longer"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["account", "balance", "currency", "as_of", "from_account", "amount",
                         "count", "memo", "tags", "owner", "email", "flag", "next", "id", "a",
                         "zz"]), children, max_size=6),
    max_leaves=12)


def _valid(schema: Any, value: Any) -> bool:
    validator = Draft202012Validator(schema, registry=NO_REMOTE,
                                     format_checker=Draft202012Validator.FORMAT_CHECKER)
    return not list(validator.iter_errors(value))


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
@settings(max_examples=400, deadline=None)
@given(value=json_values)
def test_a_fast_yes_is_always_jsonschemas_yes(index: int, value: Any) -> None:
    schema = SCHEMAS[index]
    accept = compile_accept(schema)
    assert accept is not None
    if accept(value):
        assert _valid(schema, value), (schema, value)


def test_ordinary_valid_values_take_the_fast_path() -> None:
    balance = {"account": "A1", "balance": 12.5, "currency": "USD",
               "as_of": "2026-12-01T10:00:00Z"}
    accept = compile_accept(BALANCE)
    assert accept is not None and accept(balance)
    args = {"from_account": "A1", "amount": 5, "count": 3, "memo": None, "tags": ["t"],
            "owner": {"id": 1, "next": {"id": 2}, "name": "x"}, "flag": True}
    accept = compile_accept(TRANSFER_IN)
    assert accept is not None and accept(args)
    for bad in ({**args, "extra": 1}, {**args, "amount": 0}, {**args, "count": 10},
                {**args, "from_account": "bad id!"}, {**args, "memo": "too long"},
                {**args, "owner": {"id": 1.5}}, {"amount": 5}):
        assert not accept(bad), bad
        assert not _valid(TRANSFER_IN, bad), bad


@pytest.mark.parametrize("schema", [
    {"oneOf": [{"type": "string"}]}, {"$ref": "https://example.com/s.json"},
    {"patternProperties": {"^a": {}}}, {"uniqueItems": True}, {"pattern": "(?=a)"},
    {"enum": [1, True]}, {"prefixItems": [{}]}, {"properties": {"a": {"$id": "x", "$ref": "#"}}},
])
def test_what_is_not_compiled_falls_back_to_jsonschema(schema: dict[str, Any]) -> None:
    assert compile_accept(schema) is None
