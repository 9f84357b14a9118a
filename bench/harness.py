"""One way to run a comparison: rows x seeds (x a tuning grid), equal budgets, selection on validation.

Every script in ``bench/`` describes its comparison with a `Bench` and hands it a ``trial`` function:

    bench = Bench(name="smoa_vs_lora", title=..., protocol=..., budget=..., selection=...,
                  primary="accuracy", baseline="LoRA")
    def trial(row: str, params: dict, seed: int) -> Trial:
        ...  # train under the fixed budget, pick the checkpoint on validation
        return Trial(valid={"accuracy": v}, test=lambda: {"accuracy": evaluate_test()})
    bench.run(rows={"SMoA": {...}, "LoRA": {...}}, grid={"alpha_over_r": [2, 32]}, trial=trial)

The rules the harness enforces (and `tests/bench/test_harness.py` checks):

- **Equal budgets, fixed in advance.** ``budget`` is a sentence written before the run and stored
  with the results; the trial function applies the same one to every row.
- **The same tuning grid for every row.** ``grid`` is searched for each row and seed alike; a row
  cannot have a grid of its own.
- **Selection on validation only.** For each (row, seed) the grid point with the best validation
  ``primary`` metric is kept (the first one on a tie). A `Trial`'s test metrics are a thunk that the
  harness calls only for the kept point, after the choice is made, so no choice can read them.
- **Seeds and paired differences.** Every row runs the same seeds (default 5). Per row: mean and
  sample std (ddof 1) of every metric. Against the baseline row: the per-seed paired difference of
  each test metric, its mean and a two-sided 95% Student-t interval over seeds,
  mean +- t(0.975, n-1) * sd / sqrt(n), and "within noise" when the interval contains 0.

Results go to ``bench/results/<name>.json`` (``<name>-quick.json`` under ``--quick``), rewritten
atomically after every (row, seed), with the command, the git commit, package versions and the
machine. ``bench/report.py`` turns them into ``docs/benchmarks.md`` and the plots in ``docs/img/``.
Hand-written commentary (what a figure shows and no longer shows) lives in
``bench/notes/<name>.md`` and is pasted under the bench's tables by the report.

A bench too long for one sitting (RecBole's SASRec trains 1 to 3 h per seed on 2 cores) can run
its seeds in several runs, each with ``--first-seed``/``--seeds`` and its own ``--results-dir``, and be
merged: ``python bench/harness.py merge bench/results/<name>.json run1/<name>.json run2/<name>.json``.
A merged file can be merged again with the next run: it keeps the seeds planned and every source run.
Runs of one seed each plan only their own seed, so the first merge declares the whole plan
(``merge --seeds-planned 0 1 2 3 4 ...``, one input file is then enough) and the table reads
"partial" until every planned seed is in.
Every row of a seed still runs in the same process, so each paired difference stays within one run.

A table computed from the rows (e.g. a ratio to the baseline per seed) is not frozen into the first
run: the script defines ``derive_tables(result) -> list[table]`` and passes it to `Bench`, which
recomputes it at every write, and `merge_results` recomputes it for the merged seeds by loading that
function from the script named in the results' command (``python bench/harness.py derive FILE`` does
the same for one file).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"

__all__ = [
    "Bench",
    "Trial",
    "apply_derived_tables",
    "merge_results",
    "paired_interval",
    "summarize",
    "summarize_result",
    "t_quantile_975",
]


@dataclass
class Trial:
    """What one training run reports: validation metrics now, test metrics only when asked.

    Attributes:
        valid: metric name -> value on the validation split, at the checkpoint the run selected
            on validation.
        test: a function computing the test metrics of that same checkpoint. The harness calls it
            only for the grid point it keeps, after the choice.
        extra: anything else to record per seed (parameter counts, seconds per step, curves as
            lists under ``extra["curves"]``). Numbers at the top level are summarised like metrics.
    """

    valid: dict[str, float]
    test: Callable[[], dict[str, float]]
    extra: dict[str, Any] = field(default_factory=dict)


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (two-sided 95% interval)."""
    if df < 1:
        raise ValueError(f"a t interval needs at least 2 seeds (df >= 1), got df={df}")
    from scipy.stats import t  # the bench extra (scikit-learn) brings scipy

    return float(t.ppf(0.975, df))


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value) of ``values``."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def paired_interval(method: Sequence[float], baseline: Sequence[float]) -> dict[str, Any]:
    """Mean paired difference ``method - baseline`` over seeds with its 95% t interval.

    Args:
        method, baseline: one value per seed, in the same seed order.

    Returns:
        ``{"mean", "low", "high", "n", "within_noise"}``; ``within_noise`` is True when the
        interval contains 0.
    """
    if len(method) != len(baseline):
        raise ValueError(f"paired values need the same seeds: {len(method)} vs {len(baseline)} values")
    diffs = [m - b for m, b in zip(method, baseline, strict=True)]
    stats = summarize(diffs)
    half = t_quantile_975(stats["n"] - 1) * stats["std"] / math.sqrt(stats["n"])
    low, high = stats["mean"] - half, stats["mean"] + half
    return {
        "mean": stats["mean"],
        "low": low,
        "high": high,
        "n": stats["n"],
        "within_noise": low <= 0 <= high,
    }


def _grid_points(grid: Mapping[str, Sequence[Any]] | None) -> list[dict[str, Any]]:
    if not grid:
        return [{}]
    names = list(grid)
    for name in names:
        if not isinstance(grid[name], Sequence) or isinstance(grid[name], str) or not grid[name]:
            raise ValueError(f"grid[{name!r}] must be a non-empty list of values, got {grid[name]!r}")
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names))]


def _numeric(mapping: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in mapping.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def _environment() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    versions = {}
    for package in ("torch", "lightning", "torchmetrics", "transformers", "peft", "numpy", "lightning-rec"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:
        threads = None
    return {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "versions": versions,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": threads,
            "python": platform.python_version(),
        },
    }


class Bench:
    """A comparison of rows over seeds under one fixed budget; see the module docstring.

    Args:
        name: file stem of the results (``bench/results/<name>.json``).
        title: heading in ``docs/benchmarks.md``.
        protocol: data, split and metric definitions, one or two sentences.
        budget: the training budget every row gets, fixed before the run.
        selection: what selects checkpoints and grid points (a validation metric).
        primary: the metric that selects grid points and is compared in the paired differences first.
        higher_is_better: direction of ``primary``.
        baseline: the row every paired difference is taken against (None: no paired table).
        seeds: default number of seeds (``--seeds`` overrides), seeds ``0 .. n-1`` (``--first-seed``).
        plot: how ``bench/report.py`` draws this bench: ``{"kind": "seeds"}`` (default: per-seed
            points and the 95% interval of each row's ``primary`` test metric), or
            ``{"kind": "curves", "x": ..., "y": ...}`` (per-seed curves from ``extra["curves"]``).
        argv: command-line arguments (default ``sys.argv[1:]``); unknown ones are left to the script
            in ``self.unparsed``.
        derive_tables: ``result -> [{"title", "columns", "rows"}, ...]``, tables computed from the
            rows; recomputed at every write (and by `merge_results`), marked ``"derived": True``.
    """

    def __init__(
        self,
        name: str,
        title: str,
        protocol: str,
        budget: str,
        selection: str,
        primary: str,
        higher_is_better: bool = True,
        baseline: str | None = None,
        seeds: int = 5,
        plot: dict[str, Any] | None = None,
        argv: Sequence[str] | None = None,
        derive_tables: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
    ) -> None:
        parser = argparse.ArgumentParser(add_help=False)
        parser.add_argument("--seeds", type=int, default=seeds, help="number of seeds (default %(default)s)")
        parser.add_argument("--first-seed", type=int, default=0)
        parser.add_argument(
            "--quick", action="store_true", help="a smoke run; results go to <name>-quick.json"
        )
        parser.add_argument("--rows", nargs="+", default=None, help="run only these rows (and the baseline)")
        parser.add_argument("--results-dir", type=Path, default=RESULTS)
        args, self.unparsed = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
        self.name, self.title, self.protocol, self.budget = name, title, protocol, budget
        self.selection, self.primary, self.higher_is_better = selection, primary, higher_is_better
        self.baseline, self.plot = baseline, plot or {"kind": "seeds"}
        self.quick: bool = args.quick
        self.seeds: list[int] = list(range(args.first_seed, args.first_seed + args.seeds))
        self.only_rows: list[str] | None = args.rows
        stem = f"{name}-quick" if self.quick else name
        self.path: Path = args.results_dir / f"{stem}.json"
        self.tables: list[dict[str, Any]] = []
        self.info: dict[str, Any] = {}
        self.derive_tables = derive_tables

    def add_table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Record a free-form table (e.g. a measurement grid) that the report prints as it is."""
        self.tables.append({"title": title, "columns": list(columns), "rows": [list(r) for r in rows]})

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.higher_is_better else a < b

    def run(
        self,
        rows: Mapping[str, Mapping[str, Any]],
        trial: Callable[[str, dict[str, Any], int], Trial],
        grid: Mapping[str, Sequence[Any]] | None = None,
    ) -> dict[str, Any]:
        """Run every row on every seed (and every grid point), select on validation, write the JSON.

        Args:
            rows: row name -> its fixed parameters (merged under the grid point's).
            trial: trains one (row, params, seed) under the budget and returns a `Trial`.
            grid: parameter name -> values, searched identically for every row.

        Returns:
            The results dictionary that was written to ``self.path``.
        """
        if self.baseline is not None and self.baseline not in rows:
            raise ValueError(f"baseline row {self.baseline!r} is not among the rows {list(rows)}")
        names = list(rows)
        if self.only_rows:
            unknown = sorted(set(self.only_rows) - set(rows))
            if unknown:
                raise ValueError(f"--rows names unknown rows {unknown}; the rows are {names}")
            names = [n for n in names if n in self.only_rows or n == self.baseline]
        points = _grid_points(grid)
        overlap = {k for p in points for k in p} & {k for n in names for k in rows[n]}
        if overlap:
            raise ValueError(
                f"grid parameters {sorted(overlap)} are also fixed by a row; a row cannot override the grid"
            )
        result: dict[str, Any] = {
            "name": self.name,
            "title": self.title,
            "protocol": self.protocol,
            "budget": self.budget,
            "selection": self.selection,
            "primary": self.primary,
            "higher_is_better": self.higher_is_better,
            "baseline": self.baseline,
            "seeds": self.seeds,
            "grid": {k: list(v) for k, v in (grid or {}).items()},
            "quick": self.quick,
            "plot": self.plot,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "complete": False,
            **_environment(),
            "info": self.info,
            "tables": self.tables,
            "rows": {n: {"params": dict(rows[n]), "per_seed": []} for n in names},
        }
        for seed in self.seeds:
            for name in names:
                result["rows"][name]["per_seed"].append(
                    self._run_one(name, dict(rows[name]), points, trial, seed)
                )
                self._summarize(result)
                self._write(result)
        result["complete"] = True
        result["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        self._summarize(result)
        self._write(result)
        self.print_table(result)
        return result

    def _run_one(
        self,
        name: str,
        fixed: dict[str, Any],
        points: list[dict[str, Any]],
        trial: Callable[[str, dict[str, Any], int], Trial],
        seed: int,
    ) -> dict[str, Any]:
        searched: list[tuple[dict[str, Any], Trial]] = []
        for point in points:
            params = {**fixed, **point}
            start = time.perf_counter()
            outcome = trial(name, params, seed)
            if self.primary not in outcome.valid:
                raise KeyError(
                    f"trial of row {name!r} returned no validation {self.primary!r}: {sorted(outcome.valid)}"
                )
            outcome.extra.setdefault("trial_seconds", time.perf_counter() - start)
            print(f"[{self.name}] {name} seed {seed} {point or ''}: valid {self.primary} "
                  f"{outcome.valid[self.primary]:.4f}", flush=True)  # fmt: skip
            searched.append((point, outcome))
        best_point, best = searched[0]
        for point, outcome in searched[1:]:
            if self._better(outcome.valid[self.primary], best.valid[self.primary]):
                best_point, best = point, outcome
        test = {k: float(v) for k, v in best.test().items()}
        return {
            "seed": seed,
            "selected": best_point,
            "valid": _numeric(best.valid),
            "test": test,
            "extra": best.extra,
            "grid_valid": [{"params": p, "valid": _numeric(o.valid)} for p, o in searched]
            if len(points) > 1
            else [],
        }

    def _summarize(self, result: dict[str, Any]) -> None:
        summarize_result(result)
        if self.derive_tables is not None:
            apply_derived_tables(result, self.derive_tables)

    def _write(self, result: dict[str, Any]) -> None:
        write_result(self.path, result)

    def print_table(self, result: dict[str, Any]) -> None:
        """Print mean +- std of the test metrics per row and the paired differences."""
        print(f"\n{self.title}{'  [QUICK: smoke run, not a result]' if self.quick else ''}")
        print(f"budget: {self.budget}\nselection: {self.selection}; seeds {self.seeds}")
        for name, row in result["rows"].items():
            cells = [f"{m} {s['mean']:.4f} ± {s['std']:.4f}" for m, s in row["summary"]["test"].items()]
            print(f"  {name:28s} " + " | ".join(cells))
            diff = row.get("paired", {}).get(self.primary)
            if diff:
                noise = " (within noise)" if diff["within_noise"] else ""
                print(f"  {'':28s} vs {self.baseline}: {self.primary} {diff['mean']:+.4f} "
                      f"[{diff['low']:+.4f}, {diff['high']:+.4f}]{noise}")  # fmt: skip
        print(f"results: {self.path}")


def summarize_result(result: dict[str, Any]) -> None:
    """Fill each row's ``summary`` (mean and std per metric) and ``paired`` (differences to the
    baseline row over the seeds both ran) in place."""
    rows = result["rows"]
    for row in rows.values():
        runs = row["per_seed"]
        if not runs:
            continue
        row["summary"] = {
            part: {
                metric: summarize([_numeric(r[part])[metric] for r in runs])
                for metric in _numeric(runs[0][part])
                if all(metric in _numeric(r[part]) for r in runs)
            }
            for part in ("valid", "test", "extra")
        }
    base = result["baseline"]
    if base is None or base not in rows:
        return
    base_runs = {r["seed"]: r for r in rows[base]["per_seed"]}
    for name, row in rows.items():
        if name == base:
            continue
        pairs = [(r, base_runs[r["seed"]]) for r in row["per_seed"] if r["seed"] in base_runs]
        if len(pairs) < 2:
            row["paired"] = {}
            continue
        row["paired"] = {
            metric: paired_interval(
                [m["test"][metric] for m, _ in pairs], [b["test"][metric] for _, b in pairs]
            )
            for metric in pairs[0][0]["test"]
            if all(metric in m["test"] and metric in b["test"] for m, b in pairs)
        }


def _jsonable(value: Any) -> Any:
    """JSON fallback for numpy and torch scalars and arrays that a trial may put in ``extra``."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to the results JSON: {value!r}")


_MUST_AGREE = ("name", "title", "protocol", "budget", "selection", "primary", "higher_is_better", "baseline",
               "grid", "quick")  # fmt: skip


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write a results dictionary as JSON, atomically (a reader never sees half a file)."""
    from lightning_rec.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=1, default=_jsonable) + "\n")


def apply_derived_tables(
    result: dict[str, Any], derive: Callable[[dict[str, Any]], list[dict[str, Any]]]
) -> None:
    """Replace ``result``'s derived tables with ``derive(result)``; tables added by hand stay."""
    kept = [table for table in result.get("tables", []) if not table.get("derived")]
    result["tables"] = kept + [{**table, "derived": True} for table in derive(result)]


def load_derive_tables(result: dict[str, Any]) -> Callable[[dict[str, Any]], list[dict[str, Any]]] | None:
    """The ``derive_tables`` function of the bench script that wrote ``result`` (None if it has none).

    The script is the first argument of the recorded command (``python bench/<script>.py ...``),
    resolved against the repository; only a file inside ``bench/`` is loaded.
    """
    words = shlex.split(result.get("command", ""))
    if len(words) < 2 or not words[1].endswith(".py"):
        return None
    script = Path(words[1]) if Path(words[1]).is_absolute() else REPO / words[1]
    if not script.is_file() or script.resolve().parent != (REPO / "bench").resolve():
        return None
    spec = importlib.util.spec_from_file_location(f"_bench_script_{script.stem}", script)
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, "derive_tables", None)


def rederive(result: dict[str, Any], source: str) -> None:
    """Recompute ``result``'s derived tables with its script's ``derive_tables``, if it has one.

    Raises ``ValueError`` when ``result`` holds derived tables but its script cannot recompute them,
    rather than keep tables that no longer match the rows.
    """
    derive = load_derive_tables(result)
    if derive is not None:
        apply_derived_tables(result, derive)
    elif any(table.get("derived") for table in result.get("tables", [])):
        raise ValueError(
            f"{source}: has derived tables, but no bench/<script>.py with derive_tables() is named in "
            f"its command {result.get('command')!r}"
        )


def merge_results(paths: Sequence[Path], out: Path, seeds_planned: Sequence[int] = ()) -> dict[str, Any]:
    """Merge runs of one bench that ran different seeds (``--first-seed``) into one results file.

    A seed's rows always run in the same process, so every paired difference still compares rows of
    the same run; only different seeds may come from different runs (each run's command, commit and
    machine are kept under ``merged_from``; a merged file merged again contributes its own sources).
    A seed that a run stopped in the middle of (present for some rows only) is left out, and listed
    there. ``seeds_planned`` is every seed some run set out to do, plus the ``seeds_planned`` argument
    (a table gathered one seed per run, ``--first-seed K --seeds 1``, declares its whole plan here:
    each such run plans only its own seed); the merge is ``complete`` when all of them were delivered
    whole. One file is enough when ``seeds_planned`` is given (a plan's first seed). Raises
    ``ValueError`` when the runs differ in anything fixed before a run (protocol, budget, selection,
    grid, rows and their parameters) or share a seed.
    """
    if len(paths) < (1 if seeds_planned else 2):
        raise ValueError(
            f"merge needs at least two results files (or one with seeds_planned), got {len(paths)}"
        )
    runs = [json.loads(Path(p).read_text()) for p in paths]
    first = runs[0]
    for path, run in zip(paths[1:], runs[1:], strict=True):
        for key in _MUST_AGREE:
            if run.get(key) != first.get(key):
                raise ValueError(
                    f"{path}: {key!r} is {run.get(key)!r}, but {paths[0]} has {first.get(key)!r}"
                )
        params = {n: r["params"] for n, r in run["rows"].items()}
        first_params = {n: r["params"] for n, r in first["rows"].items()}
        if params != first_params:
            raise ValueError(
                f"{path}: rows and their parameters {params} differ from {paths[0]}'s {first_params}"
            )
    merged = {
        key: first[key] for key in first if key not in ("rows", "seeds", "complete", "started", "finished")
    }
    merged["rows"] = {name: {"params": row["params"], "per_seed": []} for name, row in first["rows"].items()}
    seen: dict[int, str] = {}
    dropped: list[list[int]] = []
    delivered: list[list[int]] = []
    for path, run in zip(paths, runs, strict=True):
        # A run stopped mid-seed has that seed for some rows only: its trials are dropped (unpaired).
        by_row = [{r["seed"] for r in row["per_seed"]} for row in run["rows"].values()]
        complete = set.intersection(*by_row) if by_row else set()
        dropped.append(sorted(set.union(*by_row) - complete) if by_row else [])
        delivered.append(sorted(complete))
        for seed in sorted(complete):
            if seed in seen:
                raise ValueError(f"seed {seed} is in both {seen[seed]} and {path}")
            seen[seed] = str(path)
        for name, row in run["rows"].items():
            merged["rows"][name]["per_seed"] += [r for r in row["per_seed"] if r["seed"] in complete]
    for row in merged["rows"].values():
        row["per_seed"].sort(key=lambda r: r["seed"])
    merged["seeds"] = sorted(seen)
    # Complete when every seed some run set out to do (a merged file keeps its plan) was delivered whole.
    planned = {seed for run in runs for seed in run.get("seeds_planned", run["seeds"])} | set(seeds_planned)
    merged["seeds_planned"] = sorted(planned)
    merged["complete"] = planned <= set(seen)
    merged["merged_from"] = []
    for p, run, gone, kept in zip(paths, runs, dropped, delivered, strict=True):
        if "merged_from" in run:  # merging a merged file again: keep its sources, not the merge itself
            merged["merged_from"] += run["merged_from"]
            continue
        keys = ("command", "git_commit", "git_dirty", "started", "finished", "seeds", "machine")
        merged["merged_from"].append(
            {
                "path": str(p),
                **{k: run.get(k) for k in keys},
                "seeds_delivered": kept,
                "dropped_incomplete_seeds": gone,
            }
        )
    summarize_result(merged)
    rederive(merged, str(paths[0]))
    write_result(out, merged)
    return merged


def rederive_file(path: Path) -> dict[str, Any]:
    """Recompute the derived tables of one results file in place (e.g. a run stopped mid-way)."""
    result = json.loads(path.read_text())
    derive = load_derive_tables(result)
    if derive is None:
        raise ValueError(
            f"{path}: its command {result.get('command')!r} names no bench script with derive_tables()"
        )
    apply_derived_tables(result, derive)
    write_result(path, result)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Merge runs of one bench, or recompute derived tables.")
    commands = parser.add_subparsers(dest="command", required=True)
    merge = commands.add_parser("merge", help="merge runs of one bench that ran different seeds")
    merge.add_argument("out", type=Path, help="the merged results file, e.g. bench/results/<name>.json")
    merge.add_argument(
        "inputs", type=Path, nargs="+", help="results files of the runs (--results-dir of each)"
    )
    merge.add_argument(
        "--seeds-planned",
        type=int,
        nargs="+",
        default=[],
        metavar="SEED",
        help="every seed the table is to have, when its runs were one seed each (e.g. 0 1 2 3 4); "
        "the merged file says how many are still missing",
    )
    derive = commands.add_parser("derive", help="recompute a results file's derived tables in place")
    derive.add_argument("path", type=Path)
    arguments = parser.parse_args()
    if arguments.command == "merge":
        merge_results(arguments.inputs, arguments.out, arguments.seeds_planned)
        print(f"merged {len(arguments.inputs)} runs into {arguments.out}")
    else:
        rederive_file(arguments.path)
        print(f"recomputed the derived tables of {arguments.path}")
