"""bench/harness.py: the paired interval against a hand computation, and selection on validation only."""

from __future__ import annotations

import json
import math
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from harness import Bench, Trial, merge_results, paired_interval, t_quantile_975


def test_t_quantile_matches_the_table() -> None:
    # Student t, 0.975 quantile: the textbook values for df 1, 2, 4 and 30.
    for df, expected in [(1, 12.7062), (2, 4.3027), (4, 2.7764), (30, 2.0423)]:
        assert t_quantile_975(df) == pytest.approx(expected, abs=1e-4)


def test_paired_interval_equals_a_hand_computation() -> None:
    method = [0.30, 0.35, 0.28, 0.40, 0.33]
    baseline = [0.25, 0.30, 0.29, 0.31, 0.30]
    # By hand: differences 0.05, 0.05, -0.01, 0.09, 0.03; mean 0.042;
    # squared deviations 0.000064, 0.000064, 0.002704, 0.002304, 0.000144 -> sum 0.00528;
    # sd = sqrt(0.00528 / 4) = 0.036332; half width = 2.776445 * 0.036332 / sqrt(5) = 0.045112.
    interval = paired_interval(method, baseline)
    assert interval["mean"] == pytest.approx(0.042)
    assert interval["low"] == pytest.approx(0.042 - 0.045112, abs=1e-6)
    assert interval["high"] == pytest.approx(0.042 + 0.045112, abs=1e-6)
    assert interval["within_noise"]  # the interval crosses 0
    shifted = paired_interval([m + 0.1 for m in method], baseline)
    assert not shifted["within_noise"]


def _bench(tmp_path: Path, **kwargs) -> Bench:
    return Bench(
        name="toy",
        title="toy",
        protocol="toy",
        budget="one call",
        selection="validation score",
        primary="score",
        baseline="base",
        argv=["--seeds", "2", "--results-dir", str(tmp_path)],
        **kwargs,
    )


def test_selection_reads_validation_only_and_never_calls_unselected_test(tmp_path: Path) -> None:
    test_calls: list[tuple[str, float, int]] = []

    def trial(row: str, params: dict, seed: int) -> Trial:
        lr = params["lr"]
        # Validation prefers lr 0.1; test would prefer lr 1.0: selection must still pick 0.1.
        valid = {"score": 1.0 - abs(lr - 0.1) + params["offset"]}
        test_score = lr + params["offset"] + 0.01 * seed

        def measure_test() -> dict[str, float]:
            test_calls.append((row, lr, seed))
            return {"score": test_score}

        return Trial(valid=valid, test=measure_test, extra={"lr_seen": lr})

    bench = _bench(tmp_path)
    result = bench.run(
        rows={"base": {"offset": 0.0}, "method": {"offset": 0.5}}, grid={"lr": [0.01, 0.1, 1.0]}, trial=trial
    )
    # Each (row, seed) called test once, for its selected point only.
    assert sorted(test_calls) == sorted((r, 0.1, s) for r in ("base", "method") for s in (0, 1))
    for row in result["rows"].values():
        assert [r["selected"] for r in row["per_seed"]] == [{"lr": 0.1}, {"lr": 0.1}]
        assert len(row["per_seed"][0]["grid_valid"]) == 3  # every row searched the same grid
    paired = result["rows"]["method"]["paired"]["score"]
    assert paired["mean"] == pytest.approx(0.5) and paired["low"] == pytest.approx(0.5)  # zero spread
    written = json.loads((tmp_path / "toy.json").read_text())
    assert written["complete"] and written["seeds"] == [0, 1] and written["git_commit"] is not None
    assert written["rows"]["base"]["summary"]["test"]["score"]["mean"] == pytest.approx(0.1 + 0.005)


def test_a_row_cannot_override_the_grid(tmp_path: Path) -> None:
    bench = _bench(tmp_path)
    with pytest.raises(ValueError, match="cannot override the grid"):
        bench.run(rows={"base": {"lr": 1.0}}, grid={"lr": [0.1]}, trial=lambda *a: None)


def test_paired_interval_over_seeds_written_to_json(tmp_path: Path) -> None:
    noise = {0: 0.02, 1: -0.01}

    def trial(row: str, params: dict, seed: int) -> Trial:
        score = params["level"] + (noise[seed] if row == "method" else 0.0)
        return Trial(valid={"score": score}, test=lambda: {"score": score})

    result = _bench(tmp_path).run(rows={"base": {"level": 0.1}, "method": {"level": 0.2}}, trial=trial)
    paired = result["rows"]["method"]["paired"]["score"]
    diffs = [0.12, 0.09]
    sd = math.sqrt(((0.12 - 0.105) ** 2 + (0.09 - 0.105) ** 2) / 1)
    assert paired["mean"] == pytest.approx(sum(diffs) / 2)
    assert paired["high"] - paired["mean"] == pytest.approx(12.7062 * sd / math.sqrt(2), rel=1e-4)


def _seeded_trial(row: str, params: dict, seed: int) -> Trial:
    score = params["level"] + (0.01 * ((seed * 7919) % 13) if row == "method" else 0.002 * seed)
    return Trial(valid={"score": score}, test=lambda: {"score": score + 0.001})


def _seeded_run(directory: Path, first: int, count: int, budget: str = "one call") -> dict:
    argv = ["--first-seed", str(first), "--seeds", str(count), "--results-dir", str(directory)]
    bench = Bench(name="toy", title="toy", protocol="toy", budget=budget, selection="validation score",
                  primary="score", baseline="base", argv=argv)  # fmt: skip
    return bench.run(rows={"base": {"level": 0.1}, "method": {"level": 0.2}}, trial=_seeded_trial)


def test_merging_runs_of_different_seeds_equals_one_run_of_all_of_them(tmp_path: Path) -> None:
    whole = _seeded_run(tmp_path / "whole", 0, 4)
    _seeded_run(tmp_path / "a", 0, 2)
    _seeded_run(tmp_path / "b", 2, 2)
    merged = merge_results([tmp_path / "b" / "toy.json", tmp_path / "a" / "toy.json"], tmp_path / "toy.json")
    assert merged["seeds"] == [0, 1, 2, 3] and merged["complete"]
    assert json.loads((tmp_path / "toy.json").read_text())["rows"] == merged["rows"]
    for name in ("base", "method"):
        summary = merged["rows"][name]["summary"]["test"]["score"]
        assert summary == pytest.approx(whole["rows"][name]["summary"]["test"]["score"])
    assert merged["rows"]["method"]["paired"]["score"] == pytest.approx(
        whole["rows"]["method"]["paired"]["score"]
    )
    assert [run["seeds"] for run in merged["merged_from"]] == [[2, 3], [0, 1]]


def test_merge_refuses_shared_seeds_and_different_budgets(tmp_path: Path) -> None:
    _seeded_run(tmp_path / "a", 0, 2)
    _seeded_run(tmp_path / "b", 1, 2)
    _seeded_run(tmp_path / "c", 2, 2, budget="two calls")
    with pytest.raises(ValueError, match="seed 1 is in both"):
        merge_results([tmp_path / "a" / "toy.json", tmp_path / "b" / "toy.json"], tmp_path / "out.json")
    with pytest.raises(ValueError, match="'budget' is 'two calls'"):
        merge_results([tmp_path / "a" / "toy.json", tmp_path / "c" / "toy.json"], tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


def test_merge_drops_the_seed_a_stopped_run_left_half_done(tmp_path: Path) -> None:
    """A run stopped in the middle of seed 1 (planned 0..2) plus a run of seeds 1..2 make seeds 0..2."""
    whole = _seeded_run(tmp_path / "whole", 0, 3)
    _seeded_run(tmp_path / "a", 0, 3)
    stopped = json.loads((tmp_path / "a" / "toy.json").read_text())
    stopped["rows"]["method"]["per_seed"] = [
        r for r in stopped["rows"]["method"]["per_seed"] if r["seed"] == 0
    ]
    stopped["rows"]["base"]["per_seed"] = [r for r in stopped["rows"]["base"]["per_seed"] if r["seed"] <= 1]
    stopped["complete"] = False
    (tmp_path / "a" / "toy.json").write_text(json.dumps(stopped))
    _seeded_run(tmp_path / "b", 1, 2)
    merged = merge_results([tmp_path / "a" / "toy.json", tmp_path / "b" / "toy.json"], tmp_path / "toy.json")
    assert merged["seeds"] == [0, 1, 2] and merged["complete"]
    assert [run["dropped_incomplete_seeds"] for run in merged["merged_from"]] == [[1], []]
    assert [r["seed"] for r in merged["rows"]["base"]["per_seed"]] == [0, 1, 2]
    paired = merged["rows"]["method"]["paired"]["score"]
    assert paired == pytest.approx(whole["rows"]["method"]["paired"]["score"])
    with pytest.raises(ValueError, match="seed 0 is in both"):
        merge_results([tmp_path / "a" / "toy.json", tmp_path / "whole" / "toy.json"], tmp_path / "x.json")


def test_a_merge_keeps_the_seed_plan_and_its_sources_when_merged_again(tmp_path: Path) -> None:
    """Seeds 0..3 planned in one run that stopped after seed 0, then gathered one run at a time."""
    _seeded_run(tmp_path / "a", 0, 4)
    stopped = json.loads((tmp_path / "a" / "toy.json").read_text())
    for row in stopped["rows"].values():
        row["per_seed"] = [r for r in row["per_seed"] if r["seed"] == 0]
    stopped["complete"] = False
    (tmp_path / "a" / "toy.json").write_text(json.dumps(stopped))
    for first in (1, 2, 3):
        _seeded_run(tmp_path / f"s{first}", first, 1)
    out = tmp_path / "toy.json"
    merged = merge_results([tmp_path / "a" / "toy.json", tmp_path / "s1" / "toy.json"], out)
    assert merged["seeds"] == [0, 1] and merged["seeds_planned"] == [0, 1, 2, 3] and not merged["complete"]
    merged = merge_results([out, tmp_path / "s2" / "toy.json"], out)  # the merged file, merged again
    assert merged["seeds"] == [0, 1, 2] and not merged["complete"]
    merged = merge_results([out, tmp_path / "s3" / "toy.json"], out)
    assert merged["seeds"] == [0, 1, 2, 3] and merged["complete"]
    assert [run["seeds_delivered"] for run in merged["merged_from"]] == [[0], [1], [2], [3]]
    assert [run["path"] for run in merged["merged_from"]][1:] == [
        str(tmp_path / f"s{k}" / "toy.json") for k in (1, 2, 3)
    ]
    whole = _seeded_run(tmp_path / "whole", 0, 4)
    assert merged["rows"]["method"]["paired"]["score"] == pytest.approx(
        whole["rows"]["method"]["paired"]["score"]
    )


def test_one_seed_per_run_declares_its_plan_at_the_merge(tmp_path: Path) -> None:
    """Runs of one seed each plan only their own seed: the merge's seeds_planned keeps it partial."""
    for first in (0, 1, 2):
        _seeded_run(tmp_path / f"s{first}", first, 1)
    out = tmp_path / "toy.json"
    with pytest.raises(ValueError, match="at least two results files"):
        merge_results([tmp_path / "s0" / "toy.json"], out)
    merged = merge_results([tmp_path / "s0" / "toy.json"], out, seeds_planned=range(3))
    assert merged["seeds"] == [0] and merged["seeds_planned"] == [0, 1, 2] and not merged["complete"]
    merged = merge_results([out, tmp_path / "s1" / "toy.json"], out)  # the plan travels with the file
    assert merged["seeds"] == [0, 1] and merged["seeds_planned"] == [0, 1, 2] and not merged["complete"]
    merged = merge_results([out, tmp_path / "s2" / "toy.json"], out)
    assert merged["seeds"] == [0, 1, 2] and merged["complete"]
    whole = _seeded_run(tmp_path / "whole", 0, 3)
    assert merged["rows"]["method"]["paired"]["score"] == pytest.approx(
        whole["rows"]["method"]["paired"]["score"]
    )


TOY_SCRIPT = """
def derive_tables(result):
    rows = result["rows"]
    base = {run["seed"]: run["test"]["score"] for run in rows["base"]["per_seed"]}
    gaps = [run["test"]["score"] - base[run["seed"]] for run in rows["method"]["per_seed"]]
    return [{"title": "gap", "columns": ["seeds", "sum of gaps"], "rows": [[len(gaps), sum(gaps)]]}]
"""


def test_derived_tables_are_recomputed_at_every_write_and_after_a_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import harness

    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "toy_bench.py").write_text(textwrap.dedent(TOY_SCRIPT))
    monkeypatch.setattr(harness, "REPO", tmp_path)
    monkeypatch.setattr(sys, "argv", ["bench/toy_bench.py"])  # the script the JSON's command names
    derive = harness.load_derive_tables({"command": "python bench/toy_bench.py --seeds 2"})
    assert derive is not None

    def run(directory: str, first: int) -> dict:
        argv = ["--first-seed", str(first), "--seeds", "2", "--results-dir", str(tmp_path / directory)]
        bench = Bench(name="toy", title="toy", protocol="toy", budget="one call", selection="validation",
                      primary="score", baseline="base", argv=argv, derive_tables=derive)  # fmt: skip
        bench.add_table("by hand", ["x"], [[1]])
        return bench.run(rows={"base": {"level": 0.1}, "method": {"level": 0.2}}, trial=_seeded_trial)

    def gap(seed: int) -> float:  # _seeded_trial's method minus base, by hand
        return 0.1 + 0.01 * ((seed * 7919) % 13) - 0.002 * seed

    first = run("a", 0)
    run("b", 2)
    assert first["tables"][0] == {"title": "by hand", "columns": ["x"], "rows": [[1]]}
    assert first["tables"][1]["derived"] and first["tables"][1]["rows"][0][0] == 2
    assert first["tables"][1]["rows"][0][1] == pytest.approx(gap(0) + gap(1))
    merged = merge_results([tmp_path / "a" / "toy.json", tmp_path / "b" / "toy.json"], tmp_path / "toy.json")
    assert [t["title"] for t in merged["tables"]] == ["by hand", "gap"]
    assert merged["tables"][1]["rows"][0][0] == 4
    assert merged["tables"][1]["rows"][0][1] == pytest.approx(sum(gap(s) for s in range(4)))


def test_merge_refuses_derived_tables_it_cannot_recompute(tmp_path: Path) -> None:
    for directory, first in (("a", 0), ("b", 2)):
        _seeded_run(tmp_path / directory, first, 2)
        path = tmp_path / directory / "toy.json"
        result = json.loads(path.read_text())
        result["tables"] = [{"title": "stale", "columns": ["n"], "rows": [[2]], "derived": True}]
        path.write_text(json.dumps(result))
    with pytest.raises(ValueError, match="derived tables"):
        merge_results([tmp_path / "a" / "toy.json", tmp_path / "b" / "toy.json"], tmp_path / "out.json")
