"""Search quality over labelled intents on seven real specs from five vendors (api.github.com,
GHEC and GHES 3.19 from GitHub; rclone; Dialogporten from Digdir; Twilio api v2010 + verify v2;
Figma), recomputed on every run against a plain BM25 baseline (bench/search_eval.py).

The floors are what was measured (docs/catalog.md, "Search quality over seven real specs"),
rounded down. The ranking was tuned only on 'dev' queries and (round 4) on the 'train' split
of tests/data/search_intents_train.json; every 'holdout' query is unseen by the tuning, and the
Twilio and Figma sets were committed before the tuning began.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import search_eval as se

REAL = tuple(se.REAL)
# hit@5 over all of a spec's dev + holdout queries, measured and rounded down to 0.05 (round
# 4, 2026-12-01: GHES 0.92, Figma 0.97 raised theirs; Twilio fell from 0.91 to 0.87, 47 of 54,
# and its floor with it: docs/catalog.md, "Round 4").
HIT5_FLOOR = {"github": 0.95, "ghec": 0.95, "ghes": 0.90, "rclone": 0.95,
              "dialogporten": 0.95, "twilio": 0.85, "figma": 0.95}
# Pooled over the real specs, the held-out half: measured 0.728 / 0.924 (67 / 85 of 92) in
# round 4 (0.717 / 0.924 before it).
HOLDOUT_HIT1_FLOOR = 0.70
HOLDOUT_HIT5_FLOOR = 0.90

Results = dict[str, dict[str, dict[str, Any]]]


@pytest.fixture(scope="module")
def results() -> Results:
    return {name: se.evaluate(name) for name in REAL}


def test_the_sets_span_enough_real_specs_vendors_and_intents() -> None:
    queries = [q for q in se.load_queries() if q["catalog"] in REAL and q["split"] != "train"]
    specs = {q["catalog"] for q in queries}
    assert len(specs) >= 5 and set(HIT5_FLOOR) == specs
    assert len({se.REAL[name] for name in specs}) >= 4
    assert len(queries) >= 150
    assert sum(q["split"] == "holdout" for q in queries) >= 75


def test_half_of_each_set_is_held_out() -> None:
    # api.github.com's set predates the rule (45 dev, 20 holdout); every later set alternates.
    queries = se.load_queries()
    for name in REAL:
        if name == "github":
            continue
        splits = [q["split"] for q in queries if q["catalog"] == name and q["split"] != "train"]
        assert set(splits) == {"dev", "holdout"}, name
        assert abs(splits.count("dev") - splits.count("holdout")) <= 1, name


def test_every_real_spec_finds_the_operation_in_the_top_five(results: Results) -> None:
    for name, r in results.items():
        assert r["switchboard/all"]["n"] >= 12, name
        assert r["switchboard/all"]["hit@5"] >= HIT5_FLOOR[name], (name, r["switchboard/all"])


def test_held_out_metrics_hold_their_floors(results: Results) -> None:
    hit1 = se.pooled(results, "switchboard/holdout", "hit@1")
    hit5 = se.pooled(results, "switchboard/holdout", "hit@5")
    assert hit1 >= HOLDOUT_HIT1_FLOOR, hit1
    assert hit5 >= HOLDOUT_HIT5_FLOOR, hit5


def test_beats_plain_bm25_on_the_pooled_sets(results: Results) -> None:
    for split in ("all", "holdout"):
        for metric in ("hit@1", "hit@5"):
            mine = se.pooled(results, f"switchboard/{split}", metric)
            base = se.pooled(results, f"bm25/{split}", metric)
            assert mine > base, (split, metric, mine, base)


def test_train_is_a_third_split_that_never_counts_as_held_out(results: Results) -> None:
    # Round 4 (docs/catalog.md): >= 150 train intents over the same specs, in their own file.
    train = [q for q in se.load_queries() if q["split"] == "train"]
    assert len(train) >= 150 and {q["catalog"] for q in train} == set(REAL)
    assert all(q in json.loads(se.TRAIN_FILE.read_text())["queries"] for q in train)
    for path in se.QUERY_FILES:
        labelled = json.loads(path.read_text())["queries"]
        assert all(q["split"] in ("dev", "holdout") for q in labelled)
    for r in results.values():
        n = {s: r[f"switchboard/{s}"]["n"] for s in ("dev", "holdout", "all", "train", "tune")}
        assert n["all"] == n["dev"] + n["holdout"] and n["tune"] == n["dev"] + n["train"]
    assert sum(r["switchboard/train"]["n"] for r in results.values()) == len(train)


def test_a_list_of_equal_answers_counts_any_of_them() -> None:
    q = {"expected": ["svc.a", "svc.b"]}
    assert se.rank_of(q, ["svc.x", "svc.b", "svc.a"]) == 2
    assert se.rank_of({"expected": "svc.a"}, ["svc.a"]) == 1
    assert se.rank_of(q, ["svc.x"]) is None


def test_the_bench_prints_held_out_rows_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    # Tuning runs use --split dev; no other split can be printed alone.
    assert se.main(["--split", "holdout"]) == 2
    assert se.main(["--failures", "holdout"]) == 2
    assert se.main(["--split", "all"]) == 2
    assert se.main(["--failures"]) == 2
    assert se.main(["--bogus"]) == 2
    assert "holdout" not in capsys.readouterr().out
