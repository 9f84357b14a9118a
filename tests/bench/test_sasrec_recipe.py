"""bench/sasrec_recipe.py: its validation-only decision table against a hand computation."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from sasrec_recipe import CANDIDATE, PREVIOUS, derive_tables


def _run(seed: int, valid: float, seconds: float) -> dict:
    return {
        "seed": seed,
        "valid": {"ndcg@10": valid},
        "test": {},
        "extra": {"best_epoch": 10, "time_to_best_s": seconds},
    }


def test_the_decision_table_pairs_seeds_and_matches_a_hand_computation() -> None:
    candidate = [0.30, 0.35, 0.28, 0.40, 0.33]
    previous = [0.25, 0.30, 0.29, 0.31, 0.30]
    result = {
        "rows": {
            PREVIOUS: {"per_seed": [_run(s, v, 100.0) for s, v in enumerate(previous)]},
            # stored in another seed order, and with a sixth seed the previous row lacks
            CANDIDATE: {
                "per_seed": [_run(s, candidate[s], 100.0 + 10 * s) for s in (4, 2, 0, 3, 1)]
                + [_run(5, 0.9, 1.0)]
            },
        }
    }
    per_seed, paired = derive_tables(result)
    assert [row[0] for row in per_seed["rows"]] == [0, 1, 2, 3, 4]  # only seeds both rows ran
    assert [row[4] for row in per_seed["rows"]] == candidate
    valid, seconds = paired["rows"]
    # By hand (tests/bench/test_harness.py): differences 0.05, 0.05, -0.01, 0.09, 0.03, mean 0.042,
    # half width t(0.975, 4) * sd / sqrt(5) = 0.045112, so the interval holds 0: within noise.
    assert valid[0] == "valid NDCG@10" and valid[1] == pytest.approx(0.042)
    assert valid[2] == f"[{0.042 - 0.045112:+.4f}, {0.042 + 0.045112:+.4f}]"
    assert valid[3] == "within noise" and valid[4] == 5
    # Time: +0, +10, +20, +30, +40 s -> mean +20, sd 15.81, half width 19.63: above 0, "higher".
    assert seconds[1] == pytest.approx(20.0) and seconds[3] == "higher"


def test_no_table_until_both_rows_share_a_seed() -> None:
    result = {"rows": {PREVIOUS: {"per_seed": [_run(0, 0.06, 60.0)]}, CANDIDATE: {"per_seed": []}}}
    assert derive_tables(result) == []
