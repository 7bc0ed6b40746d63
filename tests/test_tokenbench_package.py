"""The token benchmark is its own distribution (bench/tokenbench, ``switchboard-tokenbench``),
outside the server package, and ``switchboard bench tokens`` still runs it — or says how to
install it."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
import tomllib
from pathlib import Path

import pytest
import switchboard_tokenbench

from gateway import cli

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "bench" / "tokenbench"


def test_the_server_package_does_not_contain_it() -> None:
    assert importlib.util.find_spec("gateway.tokenbench") is None
    assert not list((REPO / "gateway").rglob("tokenbench*"))
    # Only the CLI names it, and only lazily (inside the bench command).
    importers = [p for p in (REPO / "gateway").rglob("*.py")
                 if "switchboard_tokenbench" in p.read_text()]
    assert importers == [REPO / "gateway" / "cli.py"], importers


def test_it_is_installed_from_bench_tokenbench() -> None:
    project = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["project"]
    assert project["name"] == "switchboard-tokenbench"
    assert importlib.metadata.version("switchboard-tokenbench") == project["version"]
    assert Path(switchboard_tokenbench.__file__).resolve().is_relative_to(PACKAGE)
    assert switchboard_tokenbench.GITHUB_SPEC.is_relative_to(REPO)
    assert switchboard_tokenbench.QUERY_SET.exists()


def test_bench_tokens_runs_it(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def fake_main(argv: list[str] | None = None) -> int:
        seen.append(list(argv or []))
        return 0

    monkeypatch.setattr(switchboard_tokenbench, "main", fake_main)
    assert cli.main(["bench", "tokens", "--workflow", "data-heavy"]) == 0
    assert seen == [["--workflow", "data-heavy"]]


def test_bench_tokens_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "switchboard_tokenbench", None)  # import fails
    assert cli.main(["bench", "tokens"]) == 2
    err = capsys.readouterr().err
    assert "switchboard-tokenbench" in err and "pip install -e bench/tokenbench" in err
