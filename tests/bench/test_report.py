"""bench/report.py: a harness results file becomes a markdown section with its tables and a plot."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import report
from harness import Bench, Trial, merge_results


def _toy_bench(argv: list[str], protocol: str = "toy protocol", budget: str = "3 steps") -> Bench:
    return Bench(
        name="toy",
        title="Toy bench",
        protocol=protocol,
        budget=budget,
        selection="validation score",
        primary="score",
        baseline="base",
        argv=argv,
    )


def _render(results: Path, docs: Path) -> str:
    """Run ``report.py --results RESULTS --docs DOCS`` and return the markdown it wrote."""
    sys_argv, sys.argv = sys.argv, ["report.py", "--results", str(results), "--docs", str(docs)]
    try:
        report.main()
    finally:
        sys.argv = sys_argv
    return (docs / "benchmarks.md").read_text()


def test_report_renders_tables_paired_verdicts_and_a_plot(tmp_path: Path) -> None:
    results, docs = tmp_path / "results", tmp_path / "docs"
    bench = _toy_bench(["--seeds", "3", "--results-dir", str(results)])
    bench.add_table("A grid", ["items", "ms"], [[1000, 2.0], [10000, 20.0]])
    shift = {"base": 0.0, "better": 0.3, "same": 0.0}
    bench.run(
        rows={name: {"shift": s} for name, s in shift.items()},
        trial=lambda row, params, seed: Trial(
            valid={"score": 0.5},
            test=lambda: {"score": 0.5 + params["shift"] + 0.01 * seed * (row == "same")},
        ),
    )
    text = _render(results, docs)
    assert "## Toy bench" in text and "- Budget (every row): 3 steps" in text
    assert "| **base** | 0.5000 ± 0.0000 |" in text
    assert "| better | +0.3000 [+0.3000, +0.3000] better |" in text
    assert "| same | +0.0100 [-0.0148, +0.0348] within noise |" in text
    assert "| 1,000 | 2.0000 |" in text
    assert (docs / "img" / "toy.png").stat().st_size > 1000
    assert "![Toy bench](img/toy.png)" in text


def test_report_of_a_partial_merge_names_the_plan_and_every_run(tmp_path: Path) -> None:
    results, docs = tmp_path / "results", tmp_path / "docs"
    for first in (0, 1):
        seeds = ["--first-seed", str(first), "--seeds", "1" if first else "4"]
        _toy_bench([*seeds, "--results-dir", str(tmp_path / str(first))], protocol="p", budget="b").run(
            rows={"base": {}, "other": {}},
            trial=lambda row, params, seed: Trial(valid={"score": 0.5}, test=lambda: {"score": 0.5 + seed}),
        )
    stopped = tmp_path / "0" / "toy.json"
    result = json.loads(stopped.read_text())
    for row in result["rows"].values():
        row["per_seed"] = [r for r in row["per_seed"] if r["seed"] == 0]
    result["complete"] = False
    stopped.write_text(json.dumps(result))
    results.mkdir()
    merge_results([stopped, tmp_path / "1" / "toy.json"], results / "toy.json")
    text = _render(results, docs)
    assert "**Partial: 2 of 4 planned seeds so far.**" in text
    assert "  - seeds [0]: `" in text and "  - seeds [1]: `" in text
