"""Strict argument validation is the policy's decision (``decision.validation``), not a tag
check in the gateway's Python.

The same tool call against the same open schema is validated as the schema says under a
policy that asks nothing, strictly (undeclared fields rejected) under one whose decision says
``validation: "strict"`` (or lists the ``schema.strict`` obligation), and denied as a policy
error under one that says something malformed. Real embedded engine, tiny policies; the tool
channel is replaced by one that only validates, so no backend is needed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from opentelemetry import trace

from gateway.catalog import Catalog, operations_from_openapi
from gateway.errors import GatewayError, PolicyError, SchemaInvalid
from gateway.models import BackendSettings, Operation, Principal
from gateway.pipeline import Pipeline, ToolAction
from gateway.policy import EmbeddedPolicyEngine, PolicySettings, parse_decision
from gateway.policy.base import STRICT_OBLIGATION
from gateway.tools import validate_arguments

PRINCIPAL = Principal(id="agent-1", tenant="demo", roles=("agent",))
# Open objects (neither the body nor "meta" has additionalProperties): an undeclared "meta.y" or
# top-level "colour" passes the schema itself, only strict validation rejects it. The operation
# is tagged "compliance" on purpose: the tag changes neither the schema the catalog builds nor
# how a call is validated (these policies never look at it).
SPEC: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "notes", "version": "1"},
    "paths": {"/notes": {"post": {
        "operationId": "create_note", "tags": ["notes"], "x-switchboard-tags": ["compliance"],
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": ["name"],
            "properties": {"name": {"type": "string"},
                           "meta": {"type": "object", "properties": {"x": {"type": "string"}}}},
        }}}},
        "responses": {"200": {"description": "ok"}}}}},
}
GOOD = {"name": "n1", "meta": {"x": "1"}}
TYPO = {"name": "n1", "meta": {"x": "1", "y": "undeclared"}}
TOP_TYPO = {"name": "n1", "colour": "red"}


def policy(extra: str) -> str:
    return ("package switchboard.routing\n\nimport rego.v1\n\n"
            'decision := {"route": "tool", "reasons": ["test policy"]' + extra + "}\n"
            'advertise := {"tools": set(), "code": set()}\n')


@dataclass
class _Outcome:
    result: Any = None
    replayed: bool = False


class _ValidatingChannel:
    """Stands in for the tool channel: validates as told, records how, reaches no backend."""

    def __init__(self) -> None:
        self.strict: list[bool] = []

    async def execute(self, op: Operation, arguments: dict[str, Any], *, request_id: str,
                      principal: Principal, strict: bool, mask: Any) -> _Outcome:
        self.strict.append(strict)
        validate_arguments(op, arguments, strict=strict, mask=mask)
        return _Outcome(result={"ok": True})


def call(tmp_path: Path, rego: str, arguments: dict[str, Any]) -> tuple[list[bool], Any]:
    root = tmp_path / "policies"
    root.mkdir(exist_ok=True)
    (root / "routing.rego").write_text(rego)
    (root / "data.json").write_text('{"switchboard": {"present": true}}')
    ops = operations_from_openapi(BackendSettings(name="notes"), SPEC)
    channel = _ValidatingChannel()

    async def main() -> Any:
        engine = EmbeddedPolicyEngine(PolicySettings(path=root, reload=False))
        await engine.start()
        try:
            none = cast(Any, None)
            p = Pipeline(catalog=Catalog(ops), policy=engine, client=none,
                         tools=cast(Any, channel), sandbox=none, tracer=trace.get_tracer("t"))
            try:
                return await p.execute(PRINCIPAL, ToolAction("r1", "notes.create_note",
                                                             arguments))
            except GatewayError as exc:
                return exc
        finally:
            await engine.close()

    return channel.strict, asyncio.run(main())


def test_a_policy_that_asks_nothing_validates_as_the_schema_says(tmp_path: Path) -> None:
    op = operations_from_openapi(BackendSettings(name="notes"), SPEC)[0]
    assert "compliance" in op.tags and "additionalProperties" not in op.input_schema
    for arguments in (TYPO, TOP_TYPO):
        strict, out = call(tmp_path, policy(""), arguments)
        assert strict == [False]
        assert out.decision.validation == "standard" and out.result == {"ok": True}


@pytest.mark.parametrize("extra", [', "validation": "strict"',
                                   f', "obligations": ["{STRICT_OBLIGATION}"]'])
def test_a_policy_that_says_strict_rejects_undeclared_fields(tmp_path: Path, extra: str) -> None:
    for arguments, field in ((TYPO, "arguments.meta.y"), (TOP_TYPO, "arguments.colour")):
        strict, out = call(tmp_path, policy(extra), arguments)
        assert strict == [True]
        assert isinstance(out, SchemaInvalid), out
        assert out.field == field, out.field
    strict, out = call(tmp_path, policy(extra), GOOD)
    assert out.decision.strict and STRICT_OBLIGATION in out.decision.obligations
    assert out.result == {"ok": True}


@pytest.mark.parametrize("extra", [', "validation": "STRICT"', ', "validation": true',
                                   ', "validation": "lenient"',
                                   f', "validation": "standard", "obligations": '
                                   f'["{STRICT_OBLIGATION}"]'])
def test_a_malformed_validation_is_a_policy_error_and_a_deny(tmp_path: Path, extra: str) -> None:
    strict, out = call(tmp_path, policy(extra), GOOD)
    assert strict == []  # nothing was validated or run
    assert isinstance(out, GatewayError) and not isinstance(out, SchemaInvalid)
    assert "validation" in str(out.message), out.message


def test_parse_decision_validation() -> None:
    base = {"route": "tool", "reasons": []}
    assert parse_decision(base).validation == "standard"
    d = parse_decision({**base, "validation": "strict"})
    assert d.strict and d.obligations == (STRICT_OBLIGATION,)
    assert parse_decision({**base, "obligations": [STRICT_OBLIGATION]}).strict
    # A deny validates nothing; the field is still checked.
    assert parse_decision({"route": "deny", "validation": "strict"}).validation == "standard"
    for bad in ("", "STRICT", 1, ["strict"]):
        with pytest.raises(PolicyError, match="validation"):
            parse_decision({**base, "validation": bad})
    with pytest.raises(PolicyError, match=r"lists .schema\.strict. but"):
        parse_decision({**base, "validation": "standard", "obligations": [STRICT_OBLIGATION]})
