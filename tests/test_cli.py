"""The CLI's read-only commands, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main

REPO = Path(__file__).resolve().parent.parent


def test_catalog_search_on_the_embedded_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["catalog", "search", "move money between accounts", "--limit", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and "ledger.create_transfer" in lines[0]


def test_catalog_search_json_on_a_real_spec(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    spec = REPO / "runtimes/node_modules/@octokit/openapi/generated/api.github.com.json"
    cfg = tmp_path / "gw.yaml"
    cfg.write_text(f"backends: [{{name: github, openapi: '{spec}'}}]\n")
    assert main(["catalog", "search", "list open pull requests", "--config", str(cfg),
                 "--json", "--limit", "5"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 5 and hits[0]["name"] == "github.pulls_list"


def test_catalog_search_nothing_found(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["catalog", "search", "zzqx"]) == 1
    assert "no matching operations" in capsys.readouterr().out


def test_policy_eval_of_the_example_inputs() -> None:
    for name, route in (("transfer-as-agent", "deny"), ("transfer-as-finance", "tool")):
        out = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "policy", "eval", "--input",
             str(REPO / "examples/inputs" / f"{name}.json")],
            capture_output=True, text=True, timeout=60, check=True).stdout
        assert json.loads(out)["route"] == route


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
