"""bench/sasrec_vs_peers.py: its derived tables (targets of issue 11, time to converge) by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from sasrec_vs_peers import OURS, RECBOLE, REPLAY, derive_tables


def _run(seed: int, test: float, seconds: float) -> dict:
    return {
        "seed": seed,
        "valid": {"ndcg@10": 0.07},
        "test": {"ndcg@10": test},
        "extra": {
            "best_epoch": 10,
            "time_to_best_s": seconds,
            "cpu_to_best_s": 2 * seconds,
            "train_cpu_s_per_epoch": 1.0,
        },
    }


def test_targets_and_time_tables_pair_seeds_and_count_by_hand() -> None:
    result = {
        "rows": {
            # ours: seed 0 above RecBole and 25x faster; seed 1 below and 10x faster; seed 2 equal
            # quality (counts as met) and exactly 20x (met); seed 3 has no RecBole run yet
            OURS: {
                "per_seed": [
                    _run(1, 0.060, 100.0),
                    _run(0, 0.070, 40.0),
                    _run(2, 0.065, 50.0),
                    _run(3, 0.9, 1.0),
                ]
            },
            RECBOLE: {"per_seed": [_run(0, 0.065, 1000.0), _run(1, 0.068, 1000.0), _run(2, 0.065, 1000.0)]},
            REPLAY: {"per_seed": [_run(0, 0.050, 500.0)]},
        }
    }
    targets, times = derive_tables(result)
    assert "Targets" in targets["title"]
    seeds = targets["rows"][:-1]
    assert [row[0] for row in seeds] == [0, 1, 2]  # sorted, only seeds RecBole ran
    assert [row[4] for row in seeds] == ["met", "missed", "met"]
    assert [row[3] for row in seeds] == ["+0.0050", "-0.0080", "+0.0000"]
    assert [row[5] for row in seeds] == ["25.0x", "10.0x", "20.0x"]
    assert [row[6] for row in seeds] == ["met", "missed (2.0x short)", "met"]
    assert targets["rows"][-1][4] == "2 of 3" and targets["rows"][-1][6] == "2 of 3"
    # time table: ours' mean time to best over the seeds RecBole ran (40, 100, 50) and the ratio range
    ours = next(row for row in times["rows"] if row[0] == OURS)
    assert ours[2] == pytest.approx(190.0 / 3)
    assert ours[3] == "10.0x – 25.0x"
    replay = next(row for row in times["rows"] if row[0] == REPLAY)
    assert replay[3] == "2.0x – 2.0x"


def test_no_tables_without_a_recbole_row() -> None:
    assert derive_tables({"rows": {OURS: {"per_seed": [_run(0, 0.06, 60.0)]}}}) == []
