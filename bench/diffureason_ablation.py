"""DiffuReason ablation on MovieLens-100K: SASRec, +thinking, +thinking+diffusion, full DiffuReason.

Protocol as bench/sasrec_vs_recbole.py (shared/specs/data.md): RecBole's bundled ml-100k, leave-one-
out in time order, full ranking with the user's earlier items masked, max length 50, SASRec backbone
d 64, 2 layers, 2 heads, dropout 0.5, full-softmax CE, lr 1e-3, batch 128. Every row trains with
early stopping on validation NDCG@10 and is tested with its best checkpoint, for each seed.

Run from the repository root with the project's environment:

    .venv/bin/python bench/diffureason_ablation.py --seeds 0 1 2

or one process per seed, then the table of all of them:

    for s in 0 1 2; do .venv/bin/python bench/diffureason_ablation.py --seeds $s --json s$s.json & done
    wait
    .venv/bin/python bench/diffureason_ablation.py --from-json s0.json s1.json s2.json

Printed: mean ± std over the seeds of test NDCG@10 and Recall@10 per row, the training time per
epoch relative to SASRec's (measured in this run, same process, as CPU seconds with one intra-op
thread so that other work on the machine does not skew the ratio; wall seconds are printed per run),
and whether full DiffuReason beats SASRec on NDCG@10 by more than the seed spread (the target).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from sasrec_vs_recbole import EpochClock  # noqa: E402

from lightning_rec.blocks import DiffusionHead  # noqa: E402
from lightning_rec.blocks import SASRec as SASRecEncoder  # noqa: E402
from lightning_rec.data import RecBoleExample  # noqa: E402
from lightning_rec.datamodules import SequentialRecDataModule  # noqa: E402
from lightning_rec.modules import DiffuReason, SASRec  # noqa: E402

#: row name -> (use_thinking, use_diffusion, use_grpo); None is the plain SASRec module.
ROWS: dict[str, tuple[bool, bool, bool] | None] = {
    "SASRec": None,
    "+thinking": (True, False, False),
    "+thinking+diffusion": (True, True, False),
    "DiffuReason (full)": (True, True, True),
}


def build(row: str, num_items: int, args: argparse.Namespace) -> L.LightningModule:
    encoder = SASRecEncoder(num_items=num_items, hidden_size=64, max_len=50, num_layers=2, num_heads=2,
                            dropout=0.5)  # fmt: skip
    common = dict(loss="ce", learning_rate=args.learning_rate, mask_history=True, ks=(10,))
    switches = ROWS[row]
    if switches is None:
        return SASRec(encoder=encoder, **common)
    use_thinking, use_diffusion, use_grpo = switches
    return DiffuReason(
        encoder=encoder,
        num_thinking_tokens=args.thinking_tokens,
        diffusion=DiffusionHead(hidden_size=64, num_steps=32, sampling_steps=args.sampling_steps),
        use_thinking=use_thinking,
        use_diffusion=use_diffusion,
        use_grpo=use_grpo,
        grpo_warmup_steps=args.grpo_warmup_steps,
        grpo_loss_weight=args.grpo_weight,
        group_size=args.group_size,
        requests_per_window=args.requests_per_window,
        intent_loss_weight=args.intent_weight,
        **common,
    )


class CpuClock(L.Callback):
    """CPU seconds of each training epoch (``time.process_time``). With one intra-op thread this is
    the work done, whatever else the machine runs; wall time is not, on a shared machine."""

    def __init__(self) -> None:
        self.epoch_cpu_seconds: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start = time.process_time()

    def on_validation_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.epoch_cpu_seconds.append(time.process_time() - self._start)


def run(row: str, seed: int, args: argparse.Namespace, workdir: Path) -> dict:
    L.seed_everything(seed, verbose=False)
    data = SequentialRecDataModule(
        source=RecBoleExample("ml-100k"), k_core=1, split="leave_one_out", max_len=50, batch_size=128
    )
    model = build(row, data.num_items, args)
    clock, cpu = EpochClock(), CpuClock()
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(dirpath=workdir / f"{row}-{seed}".replace(" ", "_"),
                                                     monitor="val/ndcg@10", mode="max")  # fmt: skip
    stop = L.pytorch.callbacks.EarlyStopping(monitor="val/ndcg@10", mode="max", patience=args.patience)
    trainer = L.Trainer(
        max_epochs=args.max_epochs, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[clock, cpu, checkpoint, stop],
    )  # fmt: skip
    started = time.perf_counter()
    trainer.fit(model, data)
    test = trainer.test(model, data, ckpt_path=checkpoint.best_model_path, verbose=False)[0]
    return {
        "seed": seed,
        "epoch_seconds": statistics.mean(cpu.epoch_cpu_seconds),
        "epoch_wall_seconds": statistics.mean(clock.epoch_seconds),
        "epochs": len(clock.epoch_seconds),
        "best_valid": max(clock.valid_ndcg),
        "ndcg": test["test/ndcg@10"],
        "recall": test["test/recall@10"],
        "wall": time.perf_counter() - started,
    }


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--max-epochs", type=int, default=40)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--thinking-tokens", type=int, default=2)
    parser.add_argument("--sampling-steps", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--grpo-warmup-steps", type=int, default=200)
    parser.add_argument("--grpo-weight", type=float, default=0.1)
    parser.add_argument("--requests-per-window", type=int, default=8)
    parser.add_argument("--intent-weight", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: CPU time = work)")
    parser.add_argument("--json", type=Path, help="also write the per-run results to this file")
    parser.add_argument("--from-json", type=Path, nargs="+",
                        help="print the table of earlier --json files instead")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results: dict[str, list[dict]] = {row: [] for row in args.rows}
    if args.from_json:
        for path in args.from_json:
            for row, runs in json.loads(path.read_text()).items():
                results.setdefault(row, []).extend(runs)
        args.seeds = sorted({run["seed"] for runs in results.values() for run in runs})
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [] if args.from_json else args.seeds:
            for row in args.rows:
                result = run(row, seed, args, Path(tmp))
                results[row].append(result)
                print(f"[seed {seed}] {row}: test NDCG@10 {result['ndcg']:.4f} "
                      f"Recall@10 {result['recall']:.4f} ({result['epochs']} epochs, "
                      f"{result['epoch_seconds']:.2f} CPU s/epoch, "
                      f"{result['epoch_wall_seconds']:.2f} wall s/epoch)", flush=True)  # fmt: skip

    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    base_epoch = statistics.mean(r["epoch_seconds"] for r in results.get("SASRec", results[args.rows[0]]))
    print(
        f"\n=== DiffuReason ablation on ml-100k (LOO, full ranking, history masked), seeds {args.seeds} ==="
    )
    print("time per epoch: CPU seconds of training (one intra-op thread), robust to a shared machine")
    print(f"{'row':<22} {'NDCG@10':>17} {'Recall@10':>17} {'s/epoch':>8} {'x SASRec':>8} {'epochs':>7}")
    for row, runs in results.items():
        ndcg, ndcg_std = mean_std([r["ndcg"] for r in runs])
        recall, recall_std = mean_std([r["recall"] for r in runs])
        epoch = statistics.mean(r["epoch_seconds"] for r in runs)
        epochs = statistics.mean(r["epochs"] for r in runs)
        print(f"{row:<22} {ndcg:.4f} ± {ndcg_std:.4f}  {recall:.4f} ± {recall_std:.4f} {epoch:8.2f} "
              f"{epoch / base_epoch:8.2f} {epochs:7.1f}")  # fmt: skip
    if "SASRec" in results and "DiffuReason (full)" in results:
        sasrec = mean_std([r["ndcg"] for r in results["SASRec"]])
        full = mean_std([r["ndcg"] for r in results["DiffuReason (full)"]])
        spread = max(sasrec[1], full[1])
        ratio = statistics.mean(r["epoch_seconds"] for r in results["DiffuReason (full)"]) / base_epoch
        gain = full[0] - sasrec[0]
        print(f"target: full DiffuReason NDCG@10 above SASRec's by more than the seed spread: "
              f"{gain:+.4f} vs spread {spread:.4f} -> {'met' if gain > spread else 'missed'}; time per "
              f"epoch {ratio:.2f}x SASRec (target <= 2x) -> {'met' if ratio <= 2 else 'missed'}")  # fmt: skip


if __name__ == "__main__":
    main()
