"""Search quality over labelled intents on fifteen real specs from thirteen vendors,
recomputed on every run against a plain BM25 baseline (bench/search_eval.py).

Two kinds of set (docs/search-quality.md, "Round 5"):
- tuned on: the earlier seven specs' ``dev``, ``train`` and ``retired`` splits (GitHub's three
  specs, rclone, Dialogporten, Twilio, Figma; ``retired`` is the held-out half of rounds 1-4,
  read too often to stay a check);
- held out: the ``holdout`` half of tests/data/search_intents_vendors.json, eight vendors
  (Stripe, Square, Slack, Asana, Box, DigitalOcean, Zoom, SendGrid) no tuning round has
  seen, its targets a seeded sample and its split a seeded shuffle, both checked below.

The floors are what was measured, rounded down to 0.05.
"""

from __future__ import annotations

import copy
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import sample_vendor_targets as sampler
import search_eval as se
import split_vendor_intents

from gateway.catalog import load_catalog_sync

REAL = tuple(se.REAL)
# hit@5 over every labelled query of a spec (all splits, train and retired included), measured
# in round 5 (2026-12-01 22:24 UTC, docs/search-quality.md) and rounded down to 0.05.
HIT5_FLOOR = {"github": 0.90, "ghec": 0.95, "ghes": 0.95, "rclone": 0.90,
              "dialogporten": 1.0, "twilio": 0.90, "figma": 0.95,
              "stripe": 0.80, "square": 0.85, "slack": 0.80, "asana": 0.85, "box": 0.80,
              "digitalocean": 0.80, "zoom": 0.95, "sendgrid": 0.85}
# Pooled over the eight vendors' held-out half, read once in round 5: 0.544 / 0.825 (56 / 85
# of 103). The goal is 0.80 / 0.95: not met.
HOLDOUT_HIT1_FLOOR = 0.50
HOLDOUT_HIT5_FLOOR = 0.80

Results = dict[str, dict[str, dict[str, Any]]]


@pytest.fixture(scope="module")
def results() -> Results:
    return {name: se.evaluate(name) for name in REAL}


def _vendor_queries() -> list[dict[str, Any]]:
    queries: list[dict[str, Any]] = json.loads(se.VENDOR_FILE.read_text())["queries"]
    return queries


def test_the_held_out_set_spans_enough_specs_vendors_and_intents() -> None:
    queries = _vendor_queries()
    assert {q["catalog"] for q in queries} == set(se.VENDORS)
    assert len(set(se.VENDORS.values())) >= 5
    assert len(queries) >= 150
    held = [q for q in queries if q["split"] == "holdout"]
    assert len(held) >= len(queries) / 2 and len(held) >= 75
    assert not set(se.VENDORS.values()) & set(se.EARLIER.values())  # vendors never tuned on


def test_the_held_out_half_is_the_seeded_shuffle_not_a_choice() -> None:
    queries = _vendor_queries()
    again = copy.deepcopy(queries)
    split_vendor_intents.assign(again)
    assert [q["split"] for q in again] == [q["split"] for q in queries]
    for name in se.VENDORS:
        splits = [q["split"] for q in queries if q["catalog"] == name]
        assert splits.count("holdout") == (len(splits) + 1) // 2, name


def test_the_vendor_targets_are_the_seeded_sample() -> None:
    # One intent per sampled target, in the sampler's order: nobody chose the operations.
    queries = _vendor_queries()
    for name, k in sampler.PER_SPEC.items():
        ops = sorted(load_catalog_sync(se.CATALOGS[name]).operations, key=lambda o: o.name)
        targets = [op.name for op in random.Random(f"{sampler.SEED}:{name}").sample(ops, k)]
        labelled = [se.expected(q)[0] for q in queries if q["catalog"] == name]
        assert labelled == targets, name


def test_the_earlier_sets_are_tuned_splits_only() -> None:
    for path in se.QUERY_FILES:
        labelled = json.loads(path.read_text())["queries"]
        assert {q["split"] for q in labelled} <= {"dev", "retired"}, path
    train = json.loads(se.TRAIN_FILE.read_text())["queries"]
    assert len(train) >= 150 and {q["split"] for q in train} == {"train"}
    assert {q["catalog"] for q in train} == set(se.EARLIER)
    assert {q["split"] for q in _vendor_queries()} == {"dev", "holdout"}


def test_every_real_spec_finds_the_operation_in_the_top_five(results: Results) -> None:
    for name, r in results.items():
        assert r["switchboard/all"]["n"] >= 12, name
        assert r["switchboard/all"]["hit@5"] >= HIT5_FLOOR[name], (name, r["switchboard/all"])


def test_held_out_metrics_hold_their_floors(results: Results) -> None:
    vendors = {name: results[name] for name in se.VENDORS}
    hit1 = se.pooled(vendors, "switchboard/holdout", "hit@1")
    hit5 = se.pooled(vendors, "switchboard/holdout", "hit@5")
    assert hit1 >= HOLDOUT_HIT1_FLOOR, hit1
    assert hit5 >= HOLDOUT_HIT5_FLOOR, hit5


def test_beats_plain_bm25_on_the_pooled_sets(results: Results) -> None:
    for split in ("tune", "holdout", "all"):
        for metric in ("hit@1", "hit@5"):
            mine = se.pooled(results, f"switchboard/{split}", metric)
            base = se.pooled(results, f"bm25/{split}", metric)
            assert mine > base, (split, metric, mine, base)


def test_the_groups_add_up(results: Results) -> None:
    for r in results.values():
        n = {s: r[f"switchboard/{s}"]["n"] for s in (*se.SPLITS, *se.GROUPS)}
        assert n["tune"] == n["dev"] + n["train"] + n["retired"]
        assert n["all"] == n["tune"] + n["holdout"]
    assert sum(r["switchboard/all"]["n"] for r in results.values()) == sum(
        q["catalog"] in REAL for q in se.load_queries())


def test_a_list_of_equal_answers_counts_any_of_them() -> None:
    q = {"expected": ["svc.a", "svc.b"]}
    assert se.rank_of(q, ["svc.x", "svc.b", "svc.a"]) == 2
    assert se.rank_of({"expected": "svc.a"}, ["svc.a"]) == 1
    assert se.rank_of(q, ["svc.x"]) is None


def test_the_bench_prints_held_out_rows_only_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    # Tuning runs use --split dev|train|retired|tune; the held-out half cannot be listed.
    assert se.main(["--split", "holdout"]) == 2
    assert se.main(["--failures", "holdout"]) == 2
    assert se.main(["--split", "all"]) == 2
    assert se.main(["--failures"]) == 2
    assert se.main(["--bogus"]) == 2
    assert "holdout" not in capsys.readouterr().out
    with pytest.raises(ValueError):
        se.dev_failures("stripe", None, "holdout")  # type: ignore[arg-type]
