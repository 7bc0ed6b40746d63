"""OpenAPI 3.0 / 3.1 → operations: refs, parameters, bodies, nullable, cycles, names, tags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from gateway.catalog import load_catalog_sync, operations_from_openapi, snake_case
from gateway.errors import ConfigError
from gateway.models import BackendSettings, Operation, Parameter

PET_30: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "pets", "version": "1"},
    "servers": [{"url": "https://pets.example/v1"}],
    "paths": {
        "/pets/{petId}": {
            "parameters": [
                {"$ref": "#/components/parameters/PetId"},
                {"name": "verbose", "in": "query", "schema": {"type": "boolean"}},
            ],
            "get": {
                "operationId": "getPet",
                "tags": ["Pets", "pets"],
                "summary": "Get a pet",
                "parameters": [
                    {"name": "verbose", "in": "query", "required": True,
                     "description": "overridden at operation level",
                     "schema": {"type": "boolean"}},
                    {"name": "X-Request-Id", "in": "header", "schema": {"type": "string"}},
                    {"name": "Accept", "in": "header", "schema": {"type": "string"}},
                    {"name": "session", "in": "cookie", "schema": {"type": "string"}},
                    {"name": "from", "in": "query", "schema": {"type": "string",
                                                               "format": "date"}},
                ],
                "responses": {
                    "200": {"$ref": "#/components/responses/PetResponse"},
                    "404": {"description": "nope"},
                },
            },
            "put": {
                "operationId": "update-pet",
                "x-switchboard-tags": ["Compliance"],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {
                        "$ref": "#/components/schemas/PetInput"}}},
                },
                "responses": {"204": {"description": "updated"}},
            },
        },
        "/pets": {
            "post": {
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "additionalProperties": {"type": "string"}}}},
                },
                "responses": {"201": {"description": "ok", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}}},
            },
            "get": {
                "operationId": "listPets",
                "parameters": [{"name": "limit", "in": "query", "schema": {
                    "type": "integer", "minimum": 0, "exclusiveMinimum": True,
                    "maximum": 100, "exclusiveMaximum": False}}],
                "responses": {"200": {"description": "ok", "content": {
                    "application/json": {"schema": {
                        "type": "array", "items": {"$ref": "#/components/schemas/Pet"}}}}}},
            },
        },
        "/trees": {
            "post": {
                "operationId": "plantTree",
                "requestBody": {"content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/Node"}}}},
                "responses": {"200": {"description": "ok", "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Node"}}}}},
            },
        },
    },
    "components": {
        "parameters": {
            "PetId": {"name": "petId", "in": "path", "required": True,
                      "description": "The pet's id", "schema": {"type": "integer"}},
        },
        "responses": {
            "PetResponse": {"description": "a pet", "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/Pet"}}}},
        },
        "schemas": {
            "Pet": {
                "type": "object",
                "required": ["id", "name"],
                "properties": {
                    "id": {"type": "integer", "readOnly": True},
                    "name": {"type": "string", "example": "Rex"},
                    "tag": {"type": "string", "nullable": True},
                    "kind": {"type": "string", "enum": ["cat", "dog"], "nullable": True},
                    "owner": {"allOf": [{"$ref": "#/components/schemas/Owner"}],
                              "nullable": True},
                },
            },
            "Owner": {"type": "object", "properties": {"name": {"type": "string"}},
                      "xml": {"name": "owner"}},
            "PetInput": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "id": {"type": "integer", "readOnly": True},
                    "name": {"type": "string", "minLength": 1},
                    "class": {"type": "string"},
                    "owner": {"$ref": "#/components/schemas/Owner"},
                },
            },
            "Node": {
                "type": "object",
                "properties": {
                    "value": {"type": "integer"},
                    "children": {"type": "array", "items": {"$ref": "#/components/schemas/Node"}},
                },
            },
        },
    },
}


def _ops(spec: dict[str, Any], **settings: Any) -> dict[str, Operation]:
    backend = BackendSettings(name="pets", openapi="pets.json", **settings)
    ops = operations_from_openapi(backend, spec)
    for op in ops:
        Draft202012Validator.check_schema(op.input_schema)
        if op.output_schema is not None:
            Draft202012Validator.check_schema(op.output_schema)
    return {op.short_name: op for op in ops}


def test_names_are_snake_case_unique_and_generated_when_missing() -> None:
    ops = _ops(PET_30)
    assert set(ops) == {"get_pet", "update_pet", "post_pets", "list_pets", "plant_tree"}
    assert ops["get_pet"].name == "pets.get_pet" and ops["get_pet"].operation_id == "getPet"
    assert ops["post_pets"].operation_id == "post_/pets"
    assert snake_case("repos/get-content") == "repos_get_content"
    assert snake_case("getHTTPResponse") == "get_http_response"
    assert snake_case("import") == "import_"
    assert snake_case("2fa/enable") == "op_2fa_enable"


def test_duplicate_operation_ids_get_distinct_names() -> None:
    spec = {"openapi": "3.1.0", "paths": {
        "/a": {"get": {"operationId": "list", "responses": {}}},
        "/b": {"get": {"operationId": "List", "responses": {}}},
        "/c": {"get": {"responses": {}}},
    }}
    names = sorted(op.name for op in operations_from_openapi(BackendSettings(name="x"), spec))
    assert names == ["x.get_c", "x.list", "x.list_2"]


def test_parameters_path_level_merge_refs_headers_and_keywords() -> None:
    op = _ops(PET_30)["get_pet"]
    assert op.method == "GET" and op.path == "/pets/{petId}"
    assert op.parameters == (
        Parameter("petId", "path", True, ""),
        Parameter("verbose", "query", True, ""),
        Parameter("x_request_id", "header", False, "X-Request-Id"),
        Parameter("from_", "query", False, "from"),
    )
    schema = op.input_schema
    assert schema["required"] == ["petId", "verbose"]
    assert schema["properties"]["petId"] == {"type": "integer", "description": "The pet's id"}
    assert schema["properties"]["verbose"]["description"] == "overridden at operation level"
    assert "additionalProperties" not in schema  # not compliance-tagged


def test_tags_lowercased_deduplicated_with_extension_and_backend_tags() -> None:
    ops = _ops(PET_30, tags={"get_pet": ["Audit", "pets"], "listPets": ["read"]})
    assert ops["get_pet"].tags == ("pets", "audit")
    assert ops["list_pets"].tags == ("read",)
    assert ops["update_pet"].tags == ("compliance",)


def test_json_body_is_flattened_with_wire_names_and_readonly_dropped() -> None:
    op = _ops(PET_30)["update_pet"]
    assert not op.body_as_argument
    body = [p for p in op.parameters if p.location == "body"]
    assert body == [Parameter("name", "body", True, ""), Parameter("class_", "body", False,
                                                                    "class"),
                    Parameter("owner", "body", False, "")]
    props = op.input_schema["properties"]
    assert "id" not in props
    assert props["owner"] == {"type": "object", "properties": {"name": {"type": "string"}}}
    assert op.input_schema["required"] == ["petId", "name"]
    # compliance-tagged, and still the schema the spec says: a tag changes no schema (strict
    # validation is the policy decision's `validation`, tests/test_validation_policy.py)
    assert "compliance" in op.tags and "additionalProperties" not in op.input_schema
    v = Draft202012Validator(op.input_schema)
    assert v.is_valid({"petId": 1, "name": "Rex", "class_": "x"})
    assert v.is_valid({"petId": 1, "name": "Rex", "colour": "red"})
    assert not v.is_valid({"petId": 1, "class_": "x"})
    assert not v.is_valid({"petId": 1, "name": ""})
    assert op.output_schema is None  # 204


def test_map_body_is_one_body_argument() -> None:
    op = _ops(PET_30)["post_pets"]
    assert op.body_as_argument
    assert op.parameters == (Parameter("body", "body", True, ""),)
    assert op.input_schema["properties"]["body"]["additionalProperties"] == {"type": "string"}


def test_body_clashing_with_a_parameter_is_not_flattened() -> None:
    spec = {"openapi": "3.1.0", "paths": {"/x/{name}": {"post": {
        "operationId": "rename",
        "parameters": [{"name": "name", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "properties": {"name": {"type": "string"}}}}}},
        "responses": {}}}}}
    op = operations_from_openapi(BackendSettings(name="x"), spec)[0]
    assert op.body_as_argument
    assert [p.name for p in op.parameters] == ["name", "body"]


def test_optional_body_with_required_fields_stays_whole() -> None:
    spec = {"openapi": "3.1.0", "paths": {"/x": {"patch": {
        "operationId": "patch_x",
        "requestBody": {"content": {"application/merge-patch+json": {"schema": {
            "type": "object", "required": ["a"], "properties": {"a": {"type": "string"}}}}}},
        "responses": {}}}}}
    op = operations_from_openapi(BackendSettings(name="x"), spec)[0]
    assert op.body_as_argument and "required" not in op.input_schema


def test_openapi_30_nullable_and_exclusive_bounds_become_2020_12() -> None:
    ops = _ops(PET_30)
    limit = ops["list_pets"].input_schema["properties"]["limit"]
    assert limit == {"type": "integer", "exclusiveMinimum": 0, "maximum": 100}
    out = ops["get_pet"].output_schema
    assert out is not None
    props = out["properties"]
    assert props["tag"] == {"type": ["string", "null"]}
    assert props["kind"] == {"type": ["string", "null"], "enum": ["cat", "dog", None]}
    assert props["owner"]["anyOf"][1] == {"type": "null"}
    assert props["name"] == {"type": "string", "examples": ["Rex"]}
    v = Draft202012Validator(out)
    assert v.is_valid({"id": 1, "name": "Rex", "tag": None, "kind": None, "owner": None})
    assert not v.is_valid({"id": 1, "name": "Rex", "kind": "fish"})
    assert ops["list_pets"].output_schema["items"]["required"] == ["id", "name"]  # type: ignore[index]


def test_recursive_schemas_keep_defs_and_validate_deeply() -> None:
    op = _ops(PET_30)["plant_tree"]
    # a recursive body cannot be flattened: one `body` argument pointing into $defs
    assert op.body_as_argument
    assert op.input_schema["properties"]["body"] == {"$ref": "#/$defs/Node"}
    assert set(op.input_schema["$defs"]) == {"Node"}
    v = Draft202012Validator(op.input_schema)
    tree = {"value": 1, "children": [{"value": 2, "children": [{"value": 3}]}]}
    assert v.is_valid({"body": tree})
    assert not v.is_valid({"body": {"value": 1, "children": [{"value": "deep-bad"}]}})
    assert op.output_schema is not None and "$defs" in op.output_schema
    assert Draft202012Validator(op.output_schema).is_valid(tree)


def test_mutual_recursion_and_ref_siblings_in_31() -> None:
    spec = {"openapi": "3.1.0", "paths": {"/a": {"get": {
        "operationId": "get_a",
        "parameters": [{"name": "mode", "in": "query", "schema": {
            "$ref": "#/components/schemas/Mode", "description": "sibling wins"}}],
        "responses": {"200": {"description": "", "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/A"}}}}}}}},
        "components": {"schemas": {
            "Mode": {"type": ["string", "null"], "enum": ["x", "y", None]},
            "A": {"type": "object", "properties": {"b": {"$ref": "#/components/schemas/B"}}},
            "B": {"type": "object", "properties": {"a": {"$ref": "#/components/schemas/A"}}},
        }}}
    op = operations_from_openapi(BackendSettings(name="m"), spec)[0]
    mode = op.input_schema["properties"]["mode"]
    assert mode["description"] == "sibling wins" and mode["type"] == ["string", "null"]
    out = op.output_schema
    assert out is not None and set(out["$defs"]) == {"A", "B"}
    Draft202012Validator.check_schema(out)
    v = Draft202012Validator(out)
    assert v.is_valid({"b": {"a": {"b": {}}}})
    assert not v.is_valid({"b": {"a": {"b": 5}}})


def test_undeclared_path_variables_become_required_arguments() -> None:
    spec = {"openapi": "3.1.0", "paths": {"/orgs/{org}/teams/{team-slug}": {"get": {
        "operationId": "get_team",
        "parameters": [{"name": "org", "in": "path", "required": True,
                        "schema": {"type": "string"}}],
        "responses": {}}}}}
    op = operations_from_openapi(BackendSettings(name="x"), spec)[0]
    assert op.parameters == (Parameter("org", "path", True, ""),
                             Parameter("team_slug", "path", True, "team-slug"))
    assert op.input_schema["required"] == ["org", "team_slug"]


def test_swagger_2_is_rejected_clearly() -> None:
    with pytest.raises(ConfigError, match=r"only OpenAPI 3\.0/3\.1"):
        operations_from_openapi(BackendSettings(name="old"), {"swagger": "2.0", "paths": {}})


def test_unresolvable_ref_is_a_config_error_naming_the_operation() -> None:
    spec = {"openapi": "3.0.0", "paths": {"/a": {"get": {
        "parameters": [{"$ref": "#/components/parameters/Missing"}], "responses": {}}}}}
    with pytest.raises(ConfigError, match="GET /a"):
        operations_from_openapi(BackendSettings(name="bad"), spec)


def test_unpaired_surrogates_in_a_spec_become_replacement_characters(tmp_path: Path) -> None:
    """A `\\ud800` escape is valid JSON but not valid Unicode: the catalog never hands such a
    string on (to the policy engine as a tag, to the wire as a name or description)."""
    spec = tmp_path / "evil.json"
    spec.write_text(
        '{"openapi": "3.0.3", "info": {"title": "t\\ud800", "version": "1"}, "paths": {"/a": '
        '{"get": {"operationId": "getA", "tags": ["pay\\ud800ments"], "summary": "s\\udc00", '
        '"parameters": [{"name": "q", "in": "query", "description": "d\\ud83d", '
        '"schema": {"type": "string", "enum": ["x\\udfff"]}}], '
        '"responses": {"200": {"description": "ok"}}}}}}')
    catalog = load_catalog_sync([BackendSettings(name="evil", openapi=str(spec))])
    op = catalog.require("evil.get_a")
    assert "pay\ufffdments" in op.tags and op.summary == "s\ufffd"
    schema = op.input_schema["properties"]["q"]
    assert schema["description"] == "d\ufffd" and schema["enum"] == ["x\ufffd"]
    orjson.dumps([op.tags, op.summary, op.input_schema])  # valid Unicode throughout
