"""``switchboard policy test|eval|check``: print to stdout, return the exit code."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from gateway.errors import PolicyError

from .base import ENTRYPOINT, ENTRYPOINT_RULE, default_policy_dir
from .bundle import load_bundle, probe
from .embedded import Evaluator, probe_problem
from .runner import run_tests

__all__ = ["cli_policy_check", "cli_policy_eval", "cli_policy_test"]

_METADATA = re.compile(r"(?m)^# METADATA\n((?:#.*\n)+)")


def cli_policy_test(path: Path | None, verbose: bool = False) -> int:
    """Run every ``test_*`` rule; exit 1 if any fails or errors, or none exist (like opa)."""
    root = default_policy_dir(path)
    try:
        results = run_tests(root)
    except PolicyError as exc:
        print(f"error: {exc.message}")
        return 2
    failed = [r for r in results if r.outcome != "pass"]
    for r in results:
        if verbose or r.outcome != "pass":
            detail = f" ({r.message})" if r.message else ""
            print(f"{r.file}: {r.name}: {r.outcome.upper()} ({r.duration_us:.0f}µs){detail}")
            if r.outcome != "pass":
                for line in r.prints:
                    print(f"    {line}")
    if not results:
        print(f"no tests found under {root}")
        return 1
    print("-" * 80)
    print(f"PASS: {len(results) - len(failed)}/{len(results)}")
    if failed:
        print(f"FAIL: {len(failed)}/{len(results)}")
    return 1 if failed else 0


def cli_policy_eval(path: Path | None, input_file: Path) -> int:
    """Print the decision for the JSON input in ``input_file`` without executing anything."""
    root = default_policy_dir(path)
    try:
        raw = sys.stdin.read() if str(input_file) == "-" else Path(input_file).read_text()
        document: Any = json.loads(raw)
    except (OSError, ValueError) as exc:
        print(f"error: cannot read input {input_file}: {exc}")
        return 2
    if isinstance(document, dict) and set(document) == {"input"}:
        document = document["input"]  # accept OPA's {"input": ...} envelope too
    if not isinstance(document, dict):
        print("error: the input must be a JSON object")
        return 2
    try:
        evaluator = Evaluator(load_bundle(root))
    except PolicyError as exc:
        print(f"error: {exc.message}")
        return 2
    d = evaluator.decide(document)
    print(
        json.dumps(
            {
                "route": d.route,
                "reasons": list(d.reasons),
                "limits": vars(d.limits),
                "obligations": list(d.obligations),
                "mask": list(d.mask),
                "require_approval": vars(d.approval) if d.approval else None,
                "validation": d.validation,
                "policy_revision": evaluator.revision,
                "error_code": d.error_code or None,
            },
            indent=2,
        )
    )
    return 0 if not d.error_code else 1


def _lint(modules: tuple[tuple[str, str], ...]) -> list[str]:
    problems = []
    names = {name for name, _ in modules}
    has_entrypoint = False
    for name, source in modules:
        if name.endswith("_test.rego"):
            continue
        if f"{name[: -len('.rego')]}_test.rego" not in names:
            problems.append(f"{name}: no {Path(name).stem}_test.rego beside it")
        for block in _METADATA.finditer(source):
            after = source[block.end() :].lstrip()
            if re.search(r"(?m)^#\s*entrypoint:\s*true\s*$", block.group(1)) and re.match(
                rf"{ENTRYPOINT_RULE}\b", after
            ):
                has_entrypoint = True
    if not has_entrypoint:
        problems.append(f"no METADATA block with 'entrypoint: true' on the {ENTRYPOINT} rule")
    return problems


def cli_policy_check(path: Path | None) -> int:
    """Parse data, compile every module as Rego v1, probe the entrypoint, lint conventions."""
    root = default_policy_dir(path)
    try:
        bundle = load_bundle(root, with_tests=True)
        engine = bundle.build_engine()  # regorus parses Rego v1 unless set_rego_v0 is called
        serving = load_bundle(root)
        probed = probe_problem(probe(serving.build_engine()), serving)
    except PolicyError as exc:
        print(f"error: {exc.message}")
        return 1
    del engine
    problems = _lint(bundle.modules)
    if probed:  # the gateway would deny everything and report NOT_SERVING
        problems.append(f"{probed}; the gateway would report NOT_SERVING")
    for p in problems:
        print(f"lint: {p}")
    print(
        f"{len(bundle.modules)} modules, revision {serving.revision}: "
        + ("ok" if not problems else f"{len(problems)} problem(s)")
    )
    return 1 if problems else 0
