"""Would a packaged static-embedding stage (WordLlama) improve the catalog search? An experiment,
not shipped: its dev gain missed the rule written before it was measured (docs/search-quality.md,
"Semantic stage (WordLlama)").

Usage (wordllama is not a project dependency; install it into the venv first):

    .venv/bin/pip install wordllama==0.4.0.post1
    .venv/bin/python bench/semantic_eval.py            # dev half only
    .venv/bin/python bench/semantic_eval.py --holdout  # both halves (read once, for the record)

Model: WordLlama's ``l2_supercat`` 256-d token vectors, read from the files inside the wheel
(``wordllama/weights/l2_supercat_256.safetensors``, ``wordllama/tokenizers/
l2_supercat_tokenizer_config.json``). Not through ``WordLlama.load``: in 0.4.0.post1 it looks
for the tokenizer under ``wordllama/tokenizer/`` (singular), misses, and downloads it from the
model hub with ``requests`` — ``disable_download=True`` turns that into a FileNotFoundError,
``HF_HUB_OFFLINE`` does not stop it. Reading the files directly makes no request (checked with
the process in a network namespace of its own, ``unshare -n``).

Each operation is embedded once (mean of its token vectors, unit length); a query is one
tokenisation and a matrix-vector product. Rankers compared, over the same catalogs and
labelled intents as bench/search_eval.py:

- ``lexical``: ``Catalog.search`` as shipped;
- ``cosine``: the embedding alone;
- ``hybrid-mult``: the lexical head of 40 re-scored by ``x (1 + 0.5 max(cos, 0))``;
- ``hybrid-rrf``: reciprocal-rank fusion (k = 10) of the lexical head of 40 and the cosine top
  40, cosine weighted 0.3, tokens IDF-weighted over the catalog's texts;
- ``expansion``: the lexical ranking with each query word the catalog does not have expanded
  to its 3 nearest name/summary words by word-vector cosine (>= 0.5), at 0.4 x cosine.
"""

from __future__ import annotations

import math
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_eval as se

import gateway.catalog.search as lexical_search
from gateway.catalog import load_catalog_sync
from gateway.models import Operation

MODEL = "l2_supercat"
DIM = 256
HEAD = 40  # the lexical re-rank depth (gateway/catalog/search.py _RERANK_DEPTH)


def load_model() -> Any:
    """WordLlamaInference over the wheel's own weights and tokenizer; no network."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import wordllama  # calls logging.basicConfig(level=INFO) on import: undone below
    from safetensors import safe_open
    from tokenizers import Tokenizer
    from wordllama import WordLlamaInference

    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    pkg = Path(wordllama.__file__).parent
    tokenizer = Tokenizer.from_file(str(pkg / "tokenizers" / f"{MODEL}_tokenizer_config.json"))
    with safe_open(str(pkg / "weights" / f"{MODEL}_{DIM}.safetensors"), framework="np") as f:
        matrix = f.get_tensor("embedding.weight")
    return WordLlamaInference(matrix, tokenizer)


def operation_text(op: Operation) -> str:
    """Name words, summary, path words: the best of the texts tried on dev (the description
    and tags added noise)."""
    name = " ".join(re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", op.short_name)
                    .replace("_", " ").split())
    path = op.path.replace("/", " ").replace("{", "").replace("}", "")
    return ". ".join(p for p in (name, op.summary.strip(), path) if p)


def _unit(m: Any) -> Any:
    import numpy as np

    n = np.linalg.norm(m, axis=1, keepdims=True)
    return np.divide(m, n, out=np.zeros_like(m), where=n > 0)


def _pool(model: Any, texts: Sequence[str], weight: dict[int, float] | None) -> Any:
    """Mean (or IDF-weighted mean) of each text's token vectors, unit length."""
    import numpy as np

    emb = model.embedding
    out = np.zeros((len(texts), emb.shape[1]), dtype=np.float32)
    for i, enc in enumerate(model.tokenizer.encode_batch(list(texts), add_special_tokens=False)):
        ids = [t for t, a in zip(enc.ids, enc.attention_mask, strict=True) if a]
        if not ids:
            continue
        w = np.array([1.0 if weight is None else weight.get(t, weight[-1]) for t in ids],
                     dtype=np.float32)
        out[i] = (emb[ids] * w[:, None]).sum(0) / max(float(w.sum()), 1e-9)
    return _unit(out)


def _idf(model: Any, texts: Sequence[str]) -> dict[int, float]:
    df: dict[int, int] = {}
    for enc in model.tokenizer.encode_batch(list(texts), add_special_tokens=False):
        for t in {t for t, a in zip(enc.ids, enc.attention_mask, strict=True) if a}:
            df[t] = df.get(t, 0) + 1
    n = len(texts)
    weights = {t: math.log((n + 1) / (c + 1)) + 1.0 for t, c in df.items()}
    weights[-1] = math.log(n + 1) + 1.0  # a token no operation has
    return weights


Ranked = list[int]
Ranker = Callable[[list[tuple[int, float]], Any], Ranked]


def _lexical(lex: list[tuple[int, float]], cos: Any) -> Ranked:
    return [d for d, _ in lex]


def _cosine(lex: list[tuple[int, float]], cos: Any) -> Ranked:
    import numpy as np

    return [int(d) for d in np.argsort(-cos)[:10]]


def _mult(lex: list[tuple[int, float]], cos: Any) -> Ranked:
    head = sorted(((d, s * (1 + 0.5 * max(float(cos[d]), 0.0))) for d, s in lex[:HEAD]),
                  key=lambda kv: -kv[1])
    return [d for d, _ in head] + [d for d, _ in lex[HEAD:]]


def _rrf(lex: list[tuple[int, float]], cos: Any) -> Ranked:
    import numpy as np

    fused: dict[int, float] = {}
    for r, (d, _) in enumerate(lex[:HEAD]):
        fused[d] = fused.get(d, 0.0) + 1 / (10 + r + 1)
    for r, d in enumerate(np.argsort(-cos)[:HEAD]):
        fused[int(d)] = fused.get(int(d), 0.0) + 0.3 / (10 + r + 1)
    ranked = sorted(fused, key=lambda d: -fused[d])
    return ranked + [d for d, _ in lex[HEAD:] if d not in fused]


def _expanded(catalog: Any, vocab: list[str], vectors: Any, model: Any, query: str) -> Ranked:
    """Catalog.search with nearest-word expansions of the query's out-of-catalog words."""
    idf = catalog._index._idf
    base = lexical_search._query_terms(query)
    unknown = [w for w in lexical_search._words(query)
               if w.isalpha() and lexical_search._stem(w) not in idf]
    terms = dict(base)
    if unknown:
        sims = _pool(model, unknown, None) @ vectors.T
        for i in range(len(unknown)):
            for j in sims[i].argsort()[::-1][:3]:
                if sims[i, j] < 0.5:
                    break
                terms.setdefault(lexical_search._stem(vocab[j]), 0.4 * float(sims[i, j]))
    original = lexical_search._query_terms
    lexical_search._query_terms = lambda _q: terms  # type: ignore[assignment]
    try:
        ops = catalog.operations
        position = {op.name: i for i, op in enumerate(ops)}
        return [position[op.name] for op, _ in catalog.search(query, limit=5)]
    finally:
        lexical_search._query_terms = original


# ranker name -> (function, IDF-weighted pooling)
RANKERS: dict[str, tuple[Ranker, bool]] = {
    "lexical": (_lexical, False), "cosine": (_cosine, False),
    "hybrid-mult": (_mult, False), "hybrid-rrf": (_rrf, True),
}


def _count(h: list[int], ranked: list[str], want: set[str]) -> None:
    h[0] += bool(ranked) and ranked[0] in want
    h[1] += bool(want & set(ranked))
    h[2] += 1


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in ([], ["--holdout"]):
        print("usage: semantic_eval.py [--holdout]", file=sys.stderr)
        return 2
    splits = ("dev", "holdout") if args else ("dev",)
    try:
        start = time.perf_counter()
        model = load_model()
        loaded = time.perf_counter() - start
    except ImportError:
        print("needs: .venv/bin/pip install wordllama==0.4.0.post1", file=sys.stderr)
        return 2
    hits = {(r, s): [0, 0, 0] for r in (*RANKERS, "expansion") for s in splits}
    embed_s, per_query = 0.0, []
    for name in se.REAL:
        catalog = load_catalog_sync(se.CATALOGS[name])
        ops = catalog.operations
        position = {op.name: i for i, op in enumerate(ops)}
        texts = [operation_text(op) for op in ops]
        start = time.perf_counter()
        idf = _idf(model, texts)
        mats = {False: _pool(model, texts, None), True: _pool(model, texts, idf)}
        embed_s += time.perf_counter() - start
        vocab = sorted({w for op in ops
                        for w in lexical_search._words(op.short_name + " " + op.summary)
                        if w.isalpha() and len(w) > 2})
        vocab_vectors = _pool(model, vocab, None)
        for q in se.load_queries():
            if q["catalog"] != name or q["split"] not in splits:
                continue
            lex = catalog.search(q["query"], limit=len(ops))
            lex_ix = [(position[op.name], s) for op, s in lex]
            start = time.perf_counter()
            cos = {w: mats[w] @ _pool(model, [q["query"]], idf if w else None)[0]
                   for w in (False, True)}
            per_query.append((time.perf_counter() - start) / 2)
            want = set(se.expected(q))
            for r, (fn, weighted) in RANKERS.items():
                ranked = [ops[d].name for d in fn(lex_ix, cos[weighted])[:5]]
                _count(hits[(r, q["split"])], ranked, want)
            ranked = [ops[d].name for d in _expanded(catalog, vocab, vocab_vectors, model,
                                                     q["query"])]
            _count(hits[("expansion", q["split"])], ranked, want)
    print("| ranker | split | tasks | hit@1 | hit@5 |\n|---|---|---:|---:|---:|")
    for (r, s), (h1, h5, n) in hits.items():
        print(f"| {r} | {s} | {n} | {h1 / n:.3f} ({h1}) | {h5 / n:.3f} ({h5}) |")
    print(f"\nmodel load {loaded * 1000:.0f} ms; embedding every operation of the 7 specs "
          f"(both poolings) {embed_s * 1000:.0f} ms; semantic part of a query p50 "
          f"{statistics.median(per_query) * 1000:.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
