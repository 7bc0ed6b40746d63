"""The Rego semantics table (tests/policy_semantics_cases.yaml) against regorus, the embedded
engine. Expectations are hand-written from OPA's documentation; bench/policy_bench.py
--semantics runs the same table against every other candidate engine installed."""

from __future__ import annotations

from typing import Any

import policy_support as ps
import pytest

CASES = ps.load_cases()

# Where regorus differs from OPA, and why that is safe for the gateway: OPA's default
# (non-strict) built-in errors make the expression undefined; regorus raises instead. The
# embedded engine turns every evaluation error into a fail-closed deny, so the divergence can
# only deny more, never allow more. Listed so a regorus upgrade that fixes them shows up.
KNOWN_DIVERGENCES = {
    "type error in arithmetic on input is undefined (non-strict builtin errors)": "error",
    "division by zero is undefined (non-strict builtin errors)": "error",
}


def test_table_is_well_formed() -> None:
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names)), "case names must be unique"
    assert len(CASES) >= 60
    for c in CASES:
        assert ("expect" in c) + bool(c.get("undefined")) + bool(c.get("error")) == 1, c["name"]
    assert set(KNOWN_DIVERGENCES) <= set(names)
    # The shipped policy's constructs are all covered.
    assert sum(1 for c in CASES if c.get("uses") == "shipped") >= 25


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_regorus_agrees_with_opa_docs(case: dict[str, Any]) -> None:
    got = ps.run_regorus(case)
    if case["name"] in KNOWN_DIVERGENCES:
        assert got[0] == KNOWN_DIVERGENCES[case["name"]], f"divergence changed: {got}"
        assert not ps.agrees(case, got)
        return
    assert ps.agrees(case, got), f"expected {ps.expected(case)}, got {got}"


def test_agreement_detects_a_wrong_answer() -> None:
    case = {"name": "probe", "rego": "x := 1\n", "expect": 2}
    assert not ps.agrees(case, ps.run_regorus(case))
    case_undef = {"name": "probe", "rego": "x if false\n", "expect": False}
    assert not ps.agrees(case_undef, ps.run_regorus(case_undef))
