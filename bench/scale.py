"""Next-item losses at catalogue scale: time and memory per training step, and quality on ml-100k.

Two parts, both on the harness:

1. **Cost grid** (``--part cost``): one SASRec training step (d 64, 2 layers, 2 heads, forward, backward
   and AdamW) on 128 windows x 50 positions of random items, for every loss at 10^3 .. 10^6 items.
   Each (loss, items) cell runs in a fresh subprocess: its peak resident memory
   (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which counts what torch allocates outside
   Python's allocator, unlike ``tracemalloc``) is the cell's alone. The time is the median of the
   timed steps after one warm-up step. Full CE at 10^6 items is not run: its logit matrix and its
   gradient alone take 2 x 6,400 x 10^6 x 4 bytes = 51 GB.
2. **Quality** (``--part quality``): ``configs/sasrec/ml-100k.yaml`` (RecBole's protocol: unmasked
   full ranking, leave-one-out) at batch 128, lr 2e-3, dropout 0.3 (``QUALITY_TRAINING``) for every
   row, only the loss changed; rows x seeds, paired against full CE.

Run from the repository root:

    .venv/bin/python bench/scale.py --part cost                  # the grid, 1 thread
    .venv/bin/python bench/scale.py --part quality --max-epochs 40 --patience 5   # ml-100k, 5 seeds
    .venv/bin/python bench/scale.py --part offset --max-epochs 40 --patience 5    # BCE/gBCE + logit offset
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from harness import Bench, Trial  # noqa: E402

from lightning_rec.blocks import SASRec as SASRecEncoder  # noqa: E402
from lightning_rec.cli import LightningRecCLI  # noqa: E402
from lightning_rec.data.batches import TrainBatch  # noqa: E402
from lightning_rec.modules import SASRec  # noqa: E402

CONFIG = REPO / "configs" / "sasrec" / "ml-100k.yaml"
LOSSES = {  # loss -> its options, the same in both parts
    "ce": {"loss": "ce"},
    "ce_chunked": {"loss": "ce_chunked", "loss_chunk_size": 8192},
    "sampled_softmax": {"loss": "sampled_softmax", "num_negatives": 256, "negative_sampler": "uniform"},
    "gbce": {"loss": "gbce", "num_negatives": 256, "gbce_calibration": 0.75},
    "bce": {"loss": "bce", "num_negatives": 1},
}
# The quality part's training, the same for every loss and fixed before the run: the recipe of the
# SASRec exploration that converged fastest (flat from epoch 6, bench/notes/sasrec_vs_peers.md), so
# that 5 losses x 5 seeds fit one session on 2 shared cores; the shipped batch-32 recipe needs ~4x the
# epochs' wall time.
#: The offset bench: full CE, and the two sampled BCE losses with ``logit_offset`` (same budget).
OFFSET_ROWS = {
    "ce": LOSSES["ce"],
    "gbce+offset": {**LOSSES["gbce"], "logit_offset": True},
    "bce+offset": {**LOSSES["bce"], "logit_offset": True},
}
QUALITY_TRAINING = {
    "data.init_args.batch_size": 128,
    "model.init_args.learning_rate": 0.002,
    "model.init_args.encoder.init_args.dropout": 0.3,
}
CATALOGUES = (1_000, 10_000, 100_000, 1_000_000)
WINDOWS, POSITIONS = 128, 50
TOO_BIG = {("ce", 1_000_000): "not run: the (6,400 x 10^6) logits and their gradient need 51 GB"}


# ------------------------------------------------------------------------------------------ cost
def measure_cell(loss: str, num_items: int, steps: int, threads: int) -> dict[str, float]:
    """One (loss, catalogue) cell, in this process: median seconds per step and peak RSS in GB."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    encoder = SASRecEncoder(num_items=num_items, hidden_size=64, max_len=POSITIONS, num_layers=2,
                            num_heads=2, dropout=0.2)  # fmt: skip
    model = SASRec(encoder=encoder, **LOSSES[loss])
    model.set_item_popularity(torch.ones(num_items + 1))
    model.log = lambda *args, **kwargs: None  # no trainer here
    optimizer = model.configure_optimizers()  # the module's own (fused AdamW)
    windows = torch.randint(1, num_items + 1, (WINDOWS, POSITIONS + 1))
    batch = TrainBatch(windows[:, :-1], windows[:, 1:])
    seconds = []
    for _ in range(steps + 1):  # the first step warms up allocators and kernels
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model.training_step(batch, 0).backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
    return {"ms_per_step": 1000 * statistics.median(seconds[1:]), "peak_gb": peak_gb}


def cost_cells() -> list[tuple[str, int]]:
    """Every (loss, items) cell, the ones the targets name first: on a shared machine a run cut short
    still answers them. Exact CE at 10^6 items (minutes per step on a CPU) comes last."""
    first = [(loss, 1_000_000) for loss in ("sampled_softmax", "gbce", "bce")]
    first += [("ce", 100_000), ("ce_chunked", 100_000)]
    rest = [(loss, n) for n in CATALOGUES for loss in LOSSES if (loss, n) not in first]
    last = ("ce_chunked", 1_000_000)
    return first + [cell for cell in rest if cell != last] + [last]


def run_cost(bench: Bench, steps: int, threads: int, cells_file: Path | None, measure: bool) -> None:
    """Measure the cells (each in a fresh process) and add the table. With ``cells_file``, cells are
    kept there as they finish and not measured again, so a run cut short resumes; without
    ``measure``, the table is assembled from that file alone."""
    cells = json.loads(cells_file.read_text()) if cells_file and cells_file.is_file() else {}
    rows = []
    for loss, num_items in cost_cells():
        key = f"{loss}@{num_items}"
        if (loss, num_items) in TOO_BIG:
            rows.append([loss, num_items, None, None, TOO_BIG[loss, num_items]])
            continue
        if key not in cells and measure:
            command = [sys.executable, __file__, "--cell", loss, str(num_items), "--steps", str(steps),
                       "--threads", str(threads)]  # fmt: skip
            done = subprocess.run(command, check=True, capture_output=True, text=True)
            cells[key] = json.loads(done.stdout.strip().splitlines()[-1])
            if cells_file:
                cells_file.write_text(json.dumps(cells, indent=1))
        if key not in cells:
            rows.append([loss, num_items, None, None, "not measured (the run was stopped for time)"])
            continue
        cell = cells[key]
        rows.append([loss, num_items, round(cell["ms_per_step"]), round(cell["peak_gb"], 2), ""])
        print(f"{loss:>16} {num_items:>9} items: {cell['ms_per_step']:9.0f} ms/step, "
              f"{cell['peak_gb']:.2f} GB peak", flush=True)  # fmt: skip
    rows.sort(key=lambda row: (row[1], list(LOSSES).index(row[0])))
    bench.add_table(
        f"One training step, SASRec d 64 / 2 layers, {WINDOWS} windows x {POSITIONS} positions, "
        f"{threads} thread(s); median of {steps} steps after a warm-up; peak RSS of a fresh process",
        ["loss", "items", "ms per step", "peak GB", "note"],
        rows,
    )
    bench.info["cost"] = cells


# --------------------------------------------------------------------------------------- quality
def quality_trial(row: str, params: dict[str, Any], seed: int, max_epochs: int, patience: int) -> Trial:
    """ml-100k with the shipped config, the loss of ``row`` and the bench's epoch budget."""
    workdir = Path(tempfile.mkdtemp(prefix=f"scale-{row}-{seed}-"))
    args = ["--config", str(CONFIG), "--seed_everything", str(2020 + seed), "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(workdir),
            "--trainer.max_epochs", str(max_epochs)]  # fmt: skip
    for name, value in {**QUALITY_TRAINING, **{f"model.init_args.{k}": v for k, v in params.items()}}.items():
        args += [f"--{name}", str(value)]
    cli = LightningRecCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
                          subclass_mode_data=True, run=False, args=args)  # fmt: skip
    trainer, model, data = cli.trainer, cli.model, cli.datamodule
    if model.test_metrics.mask_history:
        raise ValueError(f"{CONFIG} masks history; this bench's protocol does not")
    trainer.early_stopping_callback.patience = patience
    trainer.checkpoint_callback.dirpath = str(workdir / "checkpoints")
    start = time.perf_counter()
    trainer.fit(model, data)
    fit_seconds = time.perf_counter() - start
    best_valid = float(trainer.checkpoint_callback.best_model_score)

    def test() -> dict[str, float]:
        metrics = trainer.test(
            model, data, ckpt_path=trainer.checkpoint_callback.best_model_path, verbose=False
        )
        return {k.removeprefix("test/"): float(v) for k, v in metrics[0].items() if k.endswith("@10")}

    return Trial(
        valid={"ndcg@10": best_valid},
        test=test,
        extra={
            "epochs_run": trainer.current_epoch,
            "fit_s": fit_seconds,
            "s_per_epoch": fit_seconds / max(trainer.current_epoch, 1),
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part",
        choices=["cost", "quality", "offset"],
        default="cost",
        help="offset: the quality bench for BCE and gBCE with logit_offset, against full CE",
    )
    parser.add_argument("--cell", nargs=2, metavar=("LOSS", "ITEMS"), help="internal: measure one cell")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per cell (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cells-file", type=Path, default=None, help="keep finished cells here; resume")
    parser.add_argument("--no-measure", action="store_true", help="only assemble the table from --cells-file")
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--patience", type=int, default=12)
    args, rest = parser.parse_known_args()
    if args.cell:
        print(json.dumps(measure_cell(args.cell[0], int(args.cell[1]), args.steps, args.threads)))
        return
    if args.part == "cost":
        bench = Bench(
            name="scale_cost",
            title="Next-item losses at catalogue scale: time and memory per training step",
            protocol=f"one SASRec training step on {WINDOWS} x {POSITIONS} random positions, "
            "10^3..10^6 items; no data set, no quality",
            budget=f"1 warm-up + {args.steps} timed steps per cell, each cell in a fresh process",
            selection="none (a measurement grid)",
            primary="ms_per_step",
            higher_is_better=False,
            seeds=1,
            argv=rest,
        )
        run_cost(bench, args.steps, args.threads, args.cells_file, measure=not args.no_measure)
        bench.run(rows={}, trial=lambda row, params, seed: None)
        return
    offset = args.part == "offset"
    bench = Bench(
        name="scale_quality_offset" if offset else "scale_quality",
        title="BCE and gBCE with a learned logit offset on ml-100k: quality against full CE"
        if offset
        else "Next-item losses on ml-100k: quality against full CE",
        protocol="RecBole's bundled ml-100k (943 users, 1,682 items), leave-one-out in time order, "
        "unmasked full ranking, SASRec d 64 / 2 layers / 2 heads (configs/sasrec/ml-100k.yaml) with "
        "batch 128, lr 2e-3, dropout 0.3 for every row, only the loss changed; test NDCG@10",
        budget=f"every row: at most {args.max_epochs} epochs, early stop on validation NDCG@10 with "
        f"patience {args.patience}; test on the best-validation checkpoint",
        selection="validation NDCG@10 (checkpoint and early stop)",
        primary="ndcg@10",
        baseline="ce",
        argv=rest,
    )
    rows = OFFSET_ROWS if offset else LOSSES
    bench.run(
        rows=rows,
        trial=lambda row, params, seed: quality_trial(row, params, seed, args.max_epochs, args.patience),
    )


if __name__ == "__main__":
    main()
