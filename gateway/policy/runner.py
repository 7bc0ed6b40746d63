"""``policy test``: run every ``test_*`` rule like ``opa test`` (regorus has no runner).

Each test is evaluated on a clone of one compiled engine, so ``with`` mocks and the input of
one test cannot leak into the next. A test passes when its rule is ``true``; ``false``,
undefined or an evaluation error fail it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import PolicyError

from .bundle import clean_error, engine_failure, load_bundle

__all__ = ["TestResult", "discover_tests", "run_tests"]


@dataclass(frozen=True)
class TestResult:
    name: str  # data.<package>.<rule>
    file: str
    outcome: str  # "pass" | "fail" | "error"
    duration_us: float
    message: str = ""
    prints: tuple[str, ...] = ()  # print() output of the test, shown for failures like opa test


def _rule_names(node: Any) -> list[str]:
    """Names of the rules of one module AST (regorus JSON): the head's leading Var."""
    names = []
    for rule in node.get("rules", []):
        spec = rule.get("Spec") if isinstance(rule, dict) else None
        if not spec:
            continue
        head: Any = next(iter(spec.get("head", {}).values()), {})
        ref = head.get("refr", {}) if isinstance(head, dict) else {}
        while isinstance(ref, dict) and "Var" not in ref and ref:
            inner = next(iter(ref.values()))
            ref = inner.get("refr", {}) if isinstance(inner, dict) else {}
        var = ref.get("Var") if isinstance(ref, dict) else None
        if isinstance(var, dict) and isinstance(var.get("value"), str):
            names.append(var["value"])
    return names


def _package(node: Any) -> str:
    parts: list[str] = []
    ref = node.get("package", {}).get("refr", {})
    while isinstance(ref, dict) and ref:
        if "Var" in ref:
            parts.append(ref["Var"]["value"])
            break
        if "RefDot" in ref:
            dot = ref["RefDot"]
            parts.append(dot["field"][1])
            ref = dot["refr"]
            continue
        raise PolicyError(f"unsupported package reference {ref!r}")
    return ".".join(reversed(parts))


def discover_tests(engine: Any) -> list[tuple[str, str]]:
    """(rule path, file) for every distinct ``test_*`` rule in the compiled modules."""
    seen: dict[str, str] = {}
    for module in json.loads(engine.get_ast_as_json()):
        ast = module.get("ast", {})
        pkg = _package(ast)
        fname = module.get("source", {}).get("file", "")
        for name in _rule_names(ast):
            if name.startswith("test_"):
                seen.setdefault(f"data.{pkg}.{name}", fname)
    return sorted(seen.items(), key=lambda kv: (kv[1], kv[0]))


def run_tests(root: Path) -> list[TestResult]:
    """Load ``root`` with its ``_test.rego`` files and evaluate every test rule."""
    bundle = load_bundle(root, with_tests=True)
    engine = bundle.build_engine()
    results = []
    for name, fname in discover_tests(engine):
        clone = engine.clone()
        clone.set_gather_prints(True)
        start = time.perf_counter()
        try:
            value = clone.eval_rule(name)
            outcome = "pass" if value is True else "fail"
            message = "" if value is True else ("undefined" if value is None else repr(value))
        except BaseException as exc:  # incl. pyo3 PanicException
            if not engine_failure(exc):
                raise
            outcome, message = "error", clean_error(exc)
        duration = (time.perf_counter() - start) * 1e6
        try:
            prints = tuple(str(p) for p in clone.take_prints())
        except Exception:
            prints = ()
        results.append(TestResult(name, fname, outcome, duration, message, prints))
    return results
