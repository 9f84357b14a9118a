"""DiffuReason ablation: backbone, +thinking, +thinking+diffusion, full DiffuReason, on the harness.

Two settings, one per ``--data``:

- ``ml-100k``: RecBole's bundled MovieLens-100K, SASRec backbone (``configs/diffureason/ml-100k.yaml``).
- ``synthetic-2023``: the paper's setting on data anyone can generate: HSTU backbone on the synthetic
  catalogue written in the Amazon Reviews 2023 layout (``configs/diffureason/synthetic-2023.yaml``).

Every row is built from the shipped YAML (the "full" row) stacked with
``configs/diffureason/ablation/<row>.yaml``, exactly as ``lightning-rec fit`` would build it: the
model, the data, ``max_epochs`` and the EarlyStopping patience all come from the files, so each row
of the table is one command a user can rerun. Only the seed differs per run. Each run keeps the
checkpoint with the best validation NDCG@10 and is tested with it (the harness asks for the test
metrics only after the selection).

Time per epoch is CPU seconds of the training part of an epoch (``time.process_time``, one intra-op
thread), so it measures work even on a shared machine; it is reported separately for the epochs
before GRPO starts and for those entirely after (an epoch in which GRPO starts is in neither).

    .venv/bin/python bench/diffureason_ablation.py --data ml-100k            # 5 seeds, 4 rows
    .venv/bin/python bench/diffureason_ablation.py --data synthetic-2023 --seeds 1 --rows full
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from harness import REPO, Bench, Trial

from lightning_rec.cli import LightningRecCLI

CONFIGS = REPO / "configs" / "diffureason"
DATA = {"ml-100k": ("ml-100k.yaml", "SASRec"), "synthetic-2023": ("synthetic-2023.yaml", "HSTU")}
#: row -> ablation file stacked on the base config (None: the base config is the full method).
ROWS = {
    "backbone": "backbone",
    "+thinking": "thinking",
    "+thinking+diffusion": "thinking-diffusion",
    "full": None,
}


class CpuEpochClock(L.Callback):
    """CPU seconds of each epoch's training part, whether GRPO ran all epoch, and validation NDCG@10."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.grpo: list[bool | None] = []  # True: GRPO all epoch, False: none, None: it started mid-epoch
        self.valid_ndcg: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start, self._first_step = time.process_time(), trainer.global_step

    def on_validation_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.seconds.append(time.process_time() - self._start)
        if not getattr(module, "use_grpo", False):
            self.grpo.append(False)
        else:
            warmup = module.grpo_warmup_steps
            before, after = self._first_step >= warmup, trainer.global_step <= warmup
            self.grpo.append(True if before else False if after else None)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Runs after this epoch's validation, once the module has logged it.
        self.valid_ndcg.append(float(trainer.callback_metrics["val/ndcg@10"]))
        print(f"  epoch {len(self.valid_ndcg):3d}: {self.seconds[-1]:6.2f} CPU s, GRPO {self.grpo[-1]}, "
              f"valid NDCG@10 {self.valid_ndcg[-1]:.4f}", flush=True)  # fmt: skip

    def mean_seconds(self, grpo: bool) -> float | None:
        chosen = [s for s, g in zip(self.seconds, self.grpo, strict=True) if g is grpo]
        return statistics.mean(chosen) if chosen else None


def build(data: str, row: str, seed: int) -> LightningRecCLI:
    """The row's model, datamodule and trainer exactly as ``lightning-rec fit --config ...`` builds them."""
    arguments = ["--config", str(CONFIGS / DATA[data][0])]
    if ROWS[row] is not None:
        arguments += ["--config", str(CONFIGS / "ablation" / f"{ROWS[row]}.yaml")]
    arguments += ["--seed_everything", str(seed)]
    return LightningRecCLI(L.LightningModule, L.LightningDataModule, subclass_mode_model=True,
                           subclass_mode_data=True, run=False, args=arguments)  # fmt: skip


def budget_of(cli: LightningRecCLI) -> tuple[int, int]:
    """(max_epochs, EarlyStopping patience) of the config's trainer."""
    stops = [c for c in cli.trainer.callbacks if isinstance(c, L.pytorch.callbacks.EarlyStopping)]
    if len(stops) != 1:
        raise ValueError(f"the config must hold exactly one EarlyStopping callback, found {len(stops)}")
    return cli.trainer.fit_loop.max_epochs, stops[0].patience


def run_row(data: str, row: str, seed: int, max_epochs: int | None, patience: int | None) -> Trial:
    """Train one row on one seed (budget from the YAML unless overridden); test on the best checkpoint."""
    cli = build(data, row, seed)
    model, datamodule = cli.model, cli.datamodule
    yaml_epochs, yaml_patience = budget_of(cli)
    workdir = Path(tempfile.mkdtemp(prefix="diffureason-bench-"))
    clock = CpuEpochClock()
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=workdir, monitor="val/ndcg@10", mode="max")
    stop = L.pytorch.callbacks.EarlyStopping(
        monitor="val/ndcg@10", mode="max", patience=patience if patience is not None else yaml_patience
    )
    trainer = L.Trainer(
        max_epochs=max_epochs if max_epochs is not None else yaml_epochs, accelerator="cpu", devices=1,
        logger=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[clock, checkpoint, stop],
    )  # fmt: skip
    trainer.fit(model, datamodule)

    def test() -> dict[str, float]:
        result = trainer.test(model, datamodule, ckpt_path=checkpoint.best_model_path, verbose=False)[0]
        shutil.rmtree(workdir)
        return {"ndcg@10": result["test/ndcg@10"], "recall@10": result["test/recall@10"]}

    extra = {
        "epochs": len(clock.seconds),
        "best_epoch": 1 + clock.valid_ndcg.index(max(clock.valid_ndcg)),
        "cpu_s_per_epoch_before_grpo": clock.mean_seconds(False),
        "cpu_s_per_epoch_with_grpo": clock.mean_seconds(True),
        "curves": {"epoch": list(range(1, len(clock.valid_ndcg) + 1)), "valid_ndcg@10": clock.valid_ndcg},
    }
    return Trial(
        valid={"ndcg@10": float(checkpoint.best_model_score)},
        test=test,
        extra={k: v for k, v in extra.items() if v is not None},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=list(DATA), default="ml-100k")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: CPU time = work)")
    parser.add_argument("--max-epochs", type=int, help="override the YAML's max_epochs (a check)")
    parser.add_argument("--single-row", choices=list(ROWS), help="one row alone, JSON out (a check)")
    args, rest = parser.parse_known_args()
    torch.set_num_threads(args.threads)
    config, backbone = DATA[args.data]
    yaml_epochs, patience = budget_of(build(args.data, "full", 0))
    max_epochs = args.max_epochs or yaml_epochs
    if args.single_row:
        seed = int(rest[rest.index("--first-seed") + 1]) if "--first-seed" in rest else 0
        outcome = run_row(args.data, args.single_row, seed, max_epochs, None)
        test = outcome.test()
        print(json.dumps({"row": args.single_row, "seed": seed, "max_epochs": max_epochs,
                          "valid": outcome.valid, "test": test, "extra": outcome.extra}))  # fmt: skip
        return
    bench = Bench(
        name=f"diffureason_ablation_{args.data.replace('-', '_')}",
        title=f"DiffuReason ablation on {args.data} ({backbone} backbone)",
        protocol=f"configs/diffureason/{config} (+ ablation/<row>.yaml): leave-one-out, full ranking with "
        "the history masked; test NDCG@10 / Recall@10 of the checkpoint best on validation NDCG@10",
        budget=f"every row: at most {max_epochs} epochs"
        + ("" if args.max_epochs is None else f" (YAML: {yaml_epochs})")
        + f", early stopping on validation NDCG@10 with patience {patience} (YAML); CPU s/epoch with "
        f"{args.threads} torch thread(s)",
        selection="validation NDCG@10 (best epoch's checkpoint)",
        primary="ndcg@10",
        baseline="backbone",
        argv=rest,
    )
    bench.info |= {"data": args.data, "backbone": backbone, "threads": args.threads}

    def trial(row: str, params: dict, seed: int) -> Trial:
        return run_row(args.data, row, seed, 1 if bench.quick else max_epochs, 1 if bench.quick else None)

    bench.run(rows={row: {} for row in ROWS}, trial=trial)


if __name__ == "__main__":
    main()
