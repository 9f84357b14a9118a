"""Our SASRec against RecBole 1.2.1's SASRec on MovieLens-100K, same protocol, same machine.

Protocol (shared/specs/data.md): RecBole's bundled ml-100k (no k-core), leave-one-out in time order,
full ranking with the user's earlier items masked (as RecBole's full-sort evaluation does), max
length 50, d 64, 2 layers, 2 heads, dropout 0.5, full-softmax CE, lr 1e-3, early stopping on
validation NDCG@10 with patience 12.

Run from the repository root with the project's environment:

    .venv/bin/python bench/sasrec_vs_recbole.py --recbole-epochs 2

RecBole needs an old stack, so it runs in its own virtual environment (``.venv-recbole``, built on
first use by ``bench/recbole_env.py``). Training it to convergence takes about two hours on 2 CPU
cores, so by default it runs ``--recbole-epochs 2`` to measure its epoch time in this run, and its
converged quality (best validation NDCG@10 0.0737 near epoch 20; test NDCG@10 0.0637, Recall@10
0.1400) comes from the reference in data.md; the output says so. ``--recbole-epochs 40`` measures
everything instead.

Printed: test Recall@10 and NDCG@10 of both, wall time per epoch of both, and the ratio of the wall
time each needs to reach RecBole's best validation NDCG@10.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from recbole_env import ensure_recbole_venv  # noqa: E402

from lightning_rec.blocks import SASRec as SASRecEncoder  # noqa: E402
from lightning_rec.data import RecBoleExample  # noqa: E402
from lightning_rec.datamodules import SequentialRecDataModule  # noqa: E402
from lightning_rec.modules import SASRec  # noqa: E402

REFERENCE = {  # RecBole 1.2.1 SASRec, same protocol, trained to convergence (shared/specs/data.md)
    "best_valid_ndcg@10": 0.0737,
    "best_epoch": 20,
    "test": {"recall@10": 0.1400, "ndcg@10": 0.0637, "mrr@10": 0.0409},
}


class EpochClock(L.Callback):
    """Wall time of every training epoch and of training + validation so far, with val NDCG@10."""

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.elapsed: list[float] = []
        self.valid_ndcg: list[float] = []
        self._start = 0.0

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_validation_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.epoch_seconds.append(time.perf_counter() - self._start)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Runs after this epoch's validation, once the module has logged it.
        self.valid_ndcg.append(float(trainer.callback_metrics["val/ndcg@10"]))
        self.elapsed.append(time.perf_counter() - self._fit_start)
        print(f"epoch {len(self.valid_ndcg):3d}: train {self.epoch_seconds[-1]:.2f} s, "
              f"valid NDCG@10 {self.valid_ndcg[-1]:.4f}, elapsed {self.elapsed[-1]:.1f} s")  # fmt: skip

    def time_to_reach(self, target: float) -> float | None:
        return next((t for t, v in zip(self.elapsed, self.valid_ndcg, strict=True) if v >= target), None)


def run_ours(seed: int, max_epochs: int, batch_size: int, learning_rate: float, workdir: Path) -> dict:
    L.seed_everything(seed, verbose=False)
    data = SequentialRecDataModule(
        source=RecBoleExample("ml-100k"), k_core=1, split="leave_one_out", max_len=50, batch_size=batch_size
    )
    encoder = SASRecEncoder(num_items=data.num_items, hidden_size=64, max_len=50, num_layers=2, num_heads=2,
                            dropout=0.5)  # fmt: skip
    model = SASRec(encoder=encoder, loss="ce", learning_rate=learning_rate, mask_history=True, ks=(10,))
    clock = EpochClock()
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=workdir, monitor="val/ndcg@10", mode="max")
    stop = L.pytorch.callbacks.EarlyStopping(monitor="val/ndcg@10", mode="max", patience=12)
    trainer = L.Trainer(
        max_epochs=max_epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[clock, checkpoint, stop],
    )  # fmt: skip
    trainer.fit(model, data)
    test = trainer.test(model, data, ckpt_path=checkpoint.best_model_path, verbose=False)[0]
    return {
        "num_users": data.num_users,
        "num_items": data.num_items,
        "train_batches_per_epoch": len(data.train_dataloader()),
        "epoch_seconds": clock.epoch_seconds,
        "elapsed": clock.elapsed,
        "valid_ndcg@10": clock.valid_ndcg,
        "best_valid_ndcg@10": max(clock.valid_ndcg),
        "test": {k.removeprefix("test/"): v for k, v in test.items()},
        "clock": clock,
    }


def run_recbole(epochs: int, workdir: Path) -> dict:
    python = ensure_recbole_venv(REPO / ".venv-recbole")
    out = workdir / "recbole.json"
    subprocess.run([str(python), str(REPO / "bench" / "recbole_sasrec_runner.py"), "--epochs", str(epochs),
                    "--out", str(out)], check=True)  # fmt: skip
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recbole-epochs", type=int, default=2, help="RecBole epochs to run (0 skips RecBole)"
    )
    parser.add_argument("--max-epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=2020)
    args = parser.parse_args()
    torch.set_num_threads(2)

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ours = run_ours(args.seed, args.max_epochs, args.batch_size, args.learning_rate, workdir)
        recbole = run_recbole(args.recbole_epochs, workdir) if args.recbole_epochs > 0 else None

    converged = recbole is not None and len(recbole["valid_ndcg@10"]) >= REFERENCE["best_epoch"] + 12
    ours_epoch = sum(ours["epoch_seconds"]) / len(ours["epoch_seconds"])
    print("\n=== SASRec on ml-100k: lightning-rec vs RecBole 1.2.1 (same protocol, this machine) ===")
    print(f"data: {ours['num_users']} users, {ours['num_items']} items; "
          f"lightning-rec trains {ours['train_batches_per_epoch']} window batches per epoch")  # fmt: skip
    print(f"lightning-rec: {len(ours['epoch_seconds'])} epochs, {ours_epoch:.2f} s/epoch (training), "
          f"best valid NDCG@10 {ours['best_valid_ndcg@10']:.4f}")  # fmt: skip
    print(f"lightning-rec test (best checkpoint): Recall@10 {ours['test']['recall@10']:.4f}  "
          f"NDCG@10 {ours['test']['ndcg@10']:.4f}  MRR@10 {ours['test']['mrr@10']:.4f}")  # fmt: skip
    if recbole is None:
        return
    recbole_epoch = sum(recbole["epoch_seconds"]) / len(recbole["epoch_seconds"])
    recbole_valid = sum(recbole["valid_seconds"]) / len(recbole["valid_seconds"])
    print(f"RecBole: {len(recbole['epoch_seconds'])} epochs measured here, {recbole_epoch:.1f} s/epoch "
          "(training), "
          f"valid NDCG@10 by epoch {recbole['valid_ndcg@10']}")  # fmt: skip
    if converged:
        target = max(recbole["valid_ndcg@10"])
        best_epoch = recbole["valid_ndcg@10"].index(target) + 1
        recbole_test = recbole["test"]
        source = "measured in this run"
    else:
        target, best_epoch, recbole_test = (
            REFERENCE["best_valid_ndcg@10"],
            REFERENCE["best_epoch"],
            REFERENCE["test"],
        )
        source = (
            "from the converged reference in shared/specs/data.md (RecBole was not run to convergence here)"
        )
    print(f"RecBole converged quality {source}: best valid NDCG@10 {target:.4f} at epoch {best_epoch}; "
          f"test Recall@10 {recbole_test['recall@10']:.4f}  "
          f"NDCG@10 {recbole_test['ndcg@10']:.4f}")  # fmt: skip
    recbole_time = best_epoch * (recbole_epoch + recbole_valid)
    ours_time = ours["clock"].time_to_reach(target)
    print(f"epoch time ratio (RecBole / lightning-rec): {recbole_epoch / ours_epoch:.1f}x")
    if ours_time is None:
        print(
            f"lightning-rec never reached valid NDCG@10 {target:.4f} (best {ours['best_valid_ndcg@10']:.4f})"
        )
    else:
        print(f"wall time to reach valid NDCG@10 {target:.4f}: RecBole {recbole_time:.0f} s "
              f"(= {best_epoch} epochs x {recbole_epoch + recbole_valid:.1f} s measured here), lightning-rec "
              f"{ours_time:.1f} s -> {recbole_time / ours_time:.1f}x less wall time")  # fmt: skip
    print(
        "test NDCG@10 difference (lightning-rec - RecBole): "
        f"{ours['test']['ndcg@10'] - recbole_test['ndcg@10']:+.4f}"
    )


if __name__ == "__main__":
    main()
