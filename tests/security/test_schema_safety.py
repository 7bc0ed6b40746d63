"""Schemas applied to untrusted data never fetch and never backtrack (gateway/schemas.py).

The end-to-end attacks (a caller's ``output_schema`` with ``^(a+)+$`` stalling every other
caller, and with a ``$ref`` to an internal URL) are in test_review_findings.py; these pin the
mechanism for catalog schemas too, and guard it against a jsonschema upgrade.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from waiting import scaled

from gateway.errors import InvalidRequest, OutputInvalid, SchemaInvalid
from gateway.models import Operation
from gateway.sandbox.runs import output_validator
from gateway.schemas import PATCHED_MODULES, check_untrusted, safe_validator
from gateway.tools import validate_arguments
from gateway.tools.validation import check_output

REPO = Path(__file__).resolve().parents[2]


def _op(schema: dict[str, Any], output: dict[str, Any] | None = None) -> Operation:
    return Operation(name="evil.op", backend="evil", operation_id="op", summary="s",
                     method="POST", path="/op", input_schema=schema, output_schema=output)


def test_every_regex_jsonschema_evaluates_goes_through_re2() -> None:
    """Each jsonschema module that imports ``re`` either is patched or never matches with it
    (``re.compile`` of constants and of a ``format: regex`` value only)."""
    root = Path(jsonschema.__file__).parent
    patched = {Path(m.__file__ or "").name for m in PATCHED_MODULES}
    for source in sorted(root.glob("*.py")):
        tree = ast.parse(source.read_text())
        imports_re = any(isinstance(n, ast.Import) and any(a.name == "re" for a in n.names)
                         for n in ast.walk(tree))
        if not imports_re:
            continue
        calls = {n.func.attr for n in ast.walk(tree)
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                 and isinstance(n.func.value, ast.Name) and n.func.value.id == "re"}
        if source.name in patched:
            assert calls <= {"search"}, (source.name, calls)  # all the shim provides
        else:
            assert calls <= {"compile"}, f"{source.name} matches with Python's re: {calls}"
    for module in PATCHED_MODULES:
        assert module.re.search.__module__ == "gateway.schemas"  # type: ignore[attr-defined]


CATASTROPHIC = """
import sys
from gateway.models import Operation
from gateway.tools import validate_arguments
from gateway.errors import SchemaInvalid
schema = {"type": "object", "properties": {
    "name": {"type": "string", "pattern": "^(a+)+$"},
    "tags": {"type": "object", "patternProperties": {"^(b+)+$": {"type": "integer"}},
             "additionalProperties": False}}}
op = Operation(name="evil.op", backend="evil", operation_id="op", summary="s", method="POST",
               path="/op", input_schema=schema)
try:
    validate_arguments(op, {"name": "a" * 50_000 + "!", "tags": {"b" * 50_000 + "!": 1}},
                       strict=True)
except SchemaInvalid as exc:
    fields = sorted(e["field"] for e in exc.details["errors"])
    print("REFUSED", fields, flush=True)
"""


def test_a_catalog_pattern_cannot_backtrack_on_an_agents_argument() -> None:
    """Python's re would take longer than the universe's age here; RE2 answers at once. In a
    child with a generous bound, so a regression fails instead of hanging the suite."""
    proc = subprocess.run([sys.executable, "-c", CATASTROPHIC], capture_output=True, text=True,
                          timeout=scaled(120), cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "REFUSED ['arguments.name', 'arguments.tags." in proc.stdout, proc.stdout


def test_ordinary_patterns_still_validate() -> None:
    op = _op({"type": "object", "properties": {
        "account": {"type": "string", "pattern": r"^[A-Z]\d{1,3}$"},
        "meta": {"type": "object", "patternProperties": {r"^x-[a-z]+$": {"type": "string"}},
                 "additionalProperties": False}}})
    validate_arguments(op, {"account": "A12", "meta": {"x-trace": "t"}}, strict=False)
    with pytest.raises(SchemaInvalid) as info:
        validate_arguments(op, {"account": "a12", "meta": {"x-trace": "t"}}, strict=False)
    assert info.value.field == "arguments.account"
    with pytest.raises(SchemaInvalid) as info:
        validate_arguments(op, {"account": "A1", "meta": {"other": "t"}}, strict=False)
    assert info.value.field.startswith("arguments.meta")


def test_a_pattern_re2_refuses_fails_closed_in_a_catalog_schema() -> None:
    op = _op({"type": "object", "properties": {"s": {"type": "string",
                                                      "pattern": r"^(?=a)\w+$"}}},
             output={"type": "string", "pattern": r"(a)\1"})
    with pytest.raises(SchemaInvalid, match="cannot be applied safely") as info:
        validate_arguments(op, {"s": "abc"}, strict=False)
    assert info.value.field == "arguments"
    with pytest.raises(OutputInvalid, match="cannot be applied safely"):
        check_output(op, "aa")


@pytest.mark.parametrize(("schema", "field"), [
    ({"type": "string", "pattern": r"^(?!admin)"}, "output_schema.pattern"),
    ({"type": "object", "patternProperties": {r"(x)\1": {}}}, "output_schema.patternProperties"),
    ({"$ref": "http://127.0.0.1:1/x.json"}, "output_schema.$ref"),
    ({"items": {"$ref": "file:///etc/passwd"}}, "output_schema.items.$ref"),
    ({"$defs": {"a": {"$dynamicRef": "https://example.invalid/s"}}},
     "output_schema.$defs.a.$dynamicRef"),
    ({"$id": "http://127.0.0.1:1/base", "$ref": "#/$defs/a", "$defs": {"a": {}}},
     "output_schema.$id"),
])
def test_a_callers_output_schema_that_reaches_out_or_backtracks_is_invalid_request(
        schema: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        output_validator(schema)
    assert info.value.field == field and info.value.code == "invalid_request"


def test_local_references_still_resolve() -> None:
    schema = {"$defs": {"id": {"type": "string", "pattern": "^[a-f0-9]{8}$"}},
              "type": "object", "properties": {"id": {"$ref": "#/$defs/id"}}}
    check_untrusted(schema, "output_schema")
    validator = safe_validator(schema)
    assert validator.is_valid({"id": "deadbeef"})
    assert not validator.is_valid({"id": "DEADBEEF!"})


def test_a_catalog_schema_with_a_remote_ref_is_never_fetched() -> None:
    hits: list[str] = []

    class Internal(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"type": "string"}')

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Internal)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/schema.json"
        op = _op({"type": "object", "properties": {"x": {"$ref": url}}})
        with pytest.raises(SchemaInvalid, match="cannot be applied safely"):
            validate_arguments(op, {"x": "y"}, strict=False)
    finally:
        server.shutdown()
    assert hits == []
