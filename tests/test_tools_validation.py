"""Argument and output validation: field paths, rules, all errors reported, strict mode."""

from __future__ import annotations

from typing import Any

import pytest
from tools_support import CREATE_TRANSFER, op

from gateway.errors import OutputInvalid, SchemaInvalid
from gateway.tools import check_output, validate_arguments

GOOD = {"from_account": "A1", "to_account": "A2", "amount": 12.5, "currency": "USD"}


def errors_of(exc: pytest.ExceptionInfo[SchemaInvalid]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = exc.value.details["errors"]
    return out


def test_valid_arguments_pass() -> None:
    validate_arguments(CREATE_TRANSFER, GOOD, strict=True)
    validate_arguments(CREATE_TRANSFER, {**GOOD, "memo": None}, strict=True)


def test_minimum_names_field_and_rule() -> None:
    with pytest.raises(SchemaInvalid) as exc:
        validate_arguments(CREATE_TRANSFER, {**GOOD, "amount": -5}, strict=True)
    assert exc.value.message == "arguments.amount: -5 is less than the minimum of 0.01"
    assert exc.value.field == "arguments.amount"
    assert exc.value.code == "schema_invalid"
    assert errors_of(exc) == [{"field": "arguments.amount", "rule": "minimum",
                               "message": "arguments.amount: -5 is less than the minimum of 0.01"}]


def test_all_errors_reported_first_in_message() -> None:
    bad = {"from_account": "A 1", "amount": "ten", "currency": "XYZ"}
    with pytest.raises(SchemaInvalid) as exc:
        validate_arguments(CREATE_TRANSFER, bad, strict=True)
    got = {(e["field"], e["rule"]) for e in errors_of(exc)}
    assert got == {
        ("arguments.amount", "type"),
        ("arguments.currency", "enum"),
        ("arguments.from_account", "pattern"),
        ("arguments.to_account", "required"),
    }
    first = errors_of(exc)[0]
    assert exc.value.message == first["message"] and exc.value.field == first["field"]
    assert exc.value.message.startswith("arguments.amount: 'ten' is not of type 'number'")


def test_required_points_at_missing_field() -> None:
    with pytest.raises(SchemaInvalid) as exc:
        validate_arguments(CREATE_TRANSFER, {"from_account": "A1", "amount": 1}, strict=False)
    assert exc.value.field == "arguments.to_account"
    assert exc.value.message == "arguments.to_account: is a required property"


def test_strict_rejects_unknown_fields_the_schema_allows() -> None:
    args = {**GOOD, "ammount": 10}
    validate_arguments(CREATE_TRANSFER, args, strict=False)  # schema is open: accepted
    with pytest.raises(SchemaInvalid) as exc:
        validate_arguments(CREATE_TRANSFER, args, strict=True)
    assert exc.value.field == "arguments.ammount"
    assert errors_of(exc)[0]["rule"] == "unknownField"


NESTED: dict[str, Any] = {
    "type": "object",
    "$defs": {"line": {"type": "object", "properties": {"sku": {"type": "string"},
                                                        "qty": {"type": "integer",
                                                                "minimum": 1}},
                       "required": ["sku"]}},
    "properties": {
        "lines": {"type": "array", "items": {"$ref": "#/$defs/line"}},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "meta": {"allOf": [{"properties": {"a": {"type": "string"}}},
                           {"properties": {"b": {"type": "string"}}}]},
    },
}


def test_nested_paths_and_strict_through_refs_arrays_and_allof() -> None:
    order = op("order", "POST", schema=NESTED)
    good = {"lines": [{"sku": "x", "qty": 2}], "labels": {"any-key": "v"},
            "meta": {"a": "1", "b": "2"}}
    validate_arguments(order, good, strict=True)  # typed maps and allOf unions are fine
    with pytest.raises(SchemaInvalid) as exc:
        validate_arguments(order, {"lines": [{"sku": "x"}, {"sku": "y", "qty": 0}]},
                           strict=True)
    assert exc.value.field == "arguments.lines[1].qty"
    assert exc.value.message == "arguments.lines[1].qty: 0 is less than the minimum of 1"
    with pytest.raises(SchemaInvalid) as exc:
        validate_arguments(order, {"lines": [{"sku": "x", "colour": "red"}],
                                   "meta": {"c": "3"}}, strict=True)
    assert {e["field"] for e in errors_of(exc)} == {"arguments.lines[0].colour",
                                                    "arguments.meta.c"}


def test_schema_additional_properties_false_names_the_extra_field() -> None:
    closed = op("closed", schema={"type": "object", "properties": {"a": {"type": "string"}},
                                  "additionalProperties": False})
    with pytest.raises(SchemaInvalid) as exc:
        validate_arguments(closed, {"a": "x", "zz": 1}, strict=True)
    assert exc.value.field == "arguments.zz"
    assert len(errors_of(exc)) == 1  # not reported twice by strict mode


def test_non_object_arguments_rejected() -> None:
    with pytest.raises(SchemaInvalid) as exc:
        validate_arguments(CREATE_TRANSFER, ["A1"], strict=True)  # type: ignore[arg-type]
    assert exc.value.field == "arguments"


def test_validator_is_cached_per_operation() -> None:
    from gateway.tools import validation

    validate_arguments(CREATE_TRANSFER, GOOD, strict=True)
    size = len(validation._cache)
    for _ in range(5):
        validate_arguments(CREATE_TRANSFER, GOOD, strict=True)
    assert len(validation._cache) == size


def test_output_check() -> None:
    check_output(op("none"), {"anything": 1})  # no output schema: nothing to check
    typed = op("typed", output={"type": "object", "properties": {"id": {"type": "string"}},
                                "required": ["id"]})
    check_output(typed, {"id": "T1"})
    with pytest.raises(OutputInvalid) as exc:
        check_output(typed, {"id": 7})
    assert exc.value.field == "result.id"
    assert exc.value.code == "output_invalid"
    assert "result.id: 7 is not of type 'string'" in exc.value.message
