"""``policy test|eval|check`` entry points: the shipped Rego tests pass, a failing test or a
broken policy exits non-zero, eval prints the decision without executing anything."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import policy_support as ps
import pytest

from gateway.policy import cli_policy_check, cli_policy_eval, cli_policy_test
from gateway.policy.runner import run_tests


def test_shipped_rego_tests_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_policy_test(ps.POLICY_DIR, verbose=True) == 0
    out = capsys.readouterr().out
    assert "test_routing_table: PASS" in out
    passed = [line for line in out.splitlines() if line.startswith("PASS: ")]
    total = int(passed[0].split("/")[1])
    assert passed == [f"PASS: {total}/{total}"] and total >= 15


def test_runner_outcomes(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "a.rego").write_text("package a\n\nimport rego.v1\n\nx := 1\n")
    (root / "a_test.rego").write_text(
        "package a_test\n\nimport rego.v1\n\nimport data.a\n\n"
        "test_pass if a.x == 1\n"
        "test_fail if a.x == 2\n"
        "test_undefined if input.nothing\n"
        "test_with if a.x == 5 with data.a.x as 5\n"
        'test_error if { y := input.s + 1 with input as {"s": "x"}; y > 0 }\n'
        "not_a_test := false\n"
    )
    results = {r.name.rsplit(".", 1)[1]: r for r in run_tests(root)}
    assert set(results) == {"test_pass", "test_fail", "test_undefined", "test_with", "test_error"}
    assert results["test_pass"].outcome == "pass" and results["test_with"].outcome == "pass"
    assert results["test_fail"].outcome == "fail"
    assert (
        results["test_undefined"].outcome == "fail"
        and results["test_undefined"].message == "undefined"
    )
    assert results["test_error"].outcome == "error"
    assert cli_policy_test(root) == 1


def test_failing_shipped_case_exits_nonzero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = ps.copy_policies(tmp_path)
    t = root / "switchboard" / "routing_test.rego"
    # Claim the policy lets an agent move money from code: the table test must catch it.
    t.write_text(
        t.read_text().replace(
            'call(agent, "host_call", "ledger.create_transfer"), "deny"',
            'call(agent, "host_call", "ledger.create_transfer"), "code"',
        )
    )
    assert cli_policy_test(root) == 1
    out = capsys.readouterr().out
    assert "test_routing_table: FAIL" in out and "FAIL: 1/" in out
    assert 'failing cases: {"transfer from code (agent)"}' in out  # print() output shown


def test_no_tests_is_a_failure(tmp_path: Path) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "a.rego").write_text("package a\n\nimport rego.v1\n\nx := 1\n")
    assert cli_policy_test(root) == 1


def test_check_shipped_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_policy_check(ps.POLICY_DIR) == 0
    assert ": ok" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s + "\nbroken := {\n", "error:"),
        # Rego v0 syntax (no `if`): v1 requires it, so the module must not compile.
        (lambda s: s + "\nlegacy[x] { x := 1 }\n", "error:"),
        (lambda s: s.replace("# entrypoint: true\n", ""), "entrypoint"),
    ],
    ids=["syntax", "not-v1", "no-entrypoint"],
)
def test_check_rejects(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Callable[[str], str], message: str
) -> None:
    root = ps.copy_policies(tmp_path)
    rego = root / "switchboard" / "routing.rego"
    rego.write_text(edit(rego.read_text()))
    assert cli_policy_check(root) == 1
    assert message in capsys.readouterr().out


def test_check_rejects_bad_data_and_missing_tests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = ps.copy_policies(tmp_path)
    (root / "switchboard" / "data.json").write_text("[1, 2]")
    assert cli_policy_check(root) == 1
    assert "data file must hold" in capsys.readouterr().out
    root2 = ps.copy_policies(tmp_path / "second")
    (root2 / "switchboard" / "routing_test.rego").unlink()
    assert cli_policy_check(root2) == 1
    assert "no routing_test.rego" in capsys.readouterr().out


def test_eval_prints_decision(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inp = tmp_path / "input.json"
    inp.write_text(json.dumps(ps.host_call(ps.FINANCE, "ledger.create_transfer", amount=3)))
    assert cli_policy_eval(ps.POLICY_DIR, inp) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["route"] == "deny"
    assert out["reasons"] == [
        "ledger.create_transfer is a dedicated tool: call it with tool_call, not from code"
    ]
    assert out["policy_revision"].startswith("sha256:") and out["error_code"] is None
    # OPA's {"input": ...} envelope is accepted too.
    inp.write_text(json.dumps({"input": ps.tool(ps.FINANCE, "ledger.create_transfer")}))
    assert cli_policy_eval(ps.POLICY_DIR, inp) == 0
    assert json.loads(capsys.readouterr().out)["route"] == "tool"


def test_eval_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    assert cli_policy_eval(ps.POLICY_DIR, bad) == 2
    assert cli_policy_eval(ps.POLICY_DIR, tmp_path / "missing.json") == 2
    bad.write_text("[1]")
    assert cli_policy_eval(ps.POLICY_DIR, bad) == 2


def test_bench_script_runs(tmp_path: Path) -> None:
    """bench/policy_bench.py is run by hand; a tiny run here keeps it from rotting."""
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            str(ps.REPO / "bench" / "policy_bench.py"),
            "--n",
            "60",
            "--n-opa",
            "20",
            "--concurrency",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert any(r.startswith("| embedded decide() full path, cache | 60 |") for r in rows)
    assert any(r.startswith("| opa REST decide(), 2 in flight | 20 |") for r in rows)
