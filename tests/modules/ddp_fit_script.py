"""Fit and test a sequential module with ``strategy="ddp"`` on 2 CPU processes (run by test_ddp.py).

Usage: python ddp_fit_script.py <sasrec|diffureason> <cache_dir> <out_dir>. Rank 0 writes
``<out_dir>/ddp.json`` with the test metrics and the number of test queries; the checkpoint is
``<out_dir>/last.ckpt``.
"""

import json
import sys
from pathlib import Path

import lightning as L
import torch

from lightning_rec.blocks import DiffusionHead
from lightning_rec.blocks import SASRec as SASRecEncoder
from lightning_rec.data.synthetic import SyntheticReviews
from lightning_rec.datamodules import SequentialRecDataModule
from lightning_rec.modules import DiffuReason, SASRec


def build(method: str, cache_dir: str) -> tuple[SASRec | DiffuReason, SequentialRecDataModule]:
    torch.manual_seed(0)
    source = SyntheticReviews(num_users=160, num_items=90, num_categories=6, cache_dir=cache_dir)
    data = SequentialRecDataModule(
        source=source, cache_dir=cache_dir, max_len=20, batch_size=32, eval_batch_size=16
    )
    encoder = SASRecEncoder(num_items=data.num_items, hidden_size=16, max_len=20)
    if method == "sasrec":
        return SASRec(encoder=encoder, ks=(5, 10), learning_rate=5e-3), data
    # All three stages, GRPO from the first step.
    head = DiffusionHead(hidden_size=16, num_steps=8, sampling_steps=4)
    model = DiffuReason(encoder=encoder, diffusion=head, grpo_warmup_steps=0, group_size=4, ks=(5, 10),
                        learning_rate=5e-3)  # fmt: skip
    return model, data


def main() -> None:
    method, cache_dir, out_dir = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    torch.set_num_threads(1)
    model, data = build(method, cache_dir)
    trainer = L.Trainer(
        strategy="ddp", accelerator="cpu", devices=2, max_epochs=6, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, data)
    trainer.save_checkpoint(out_dir / "last.ckpt")
    metrics = trainer.test(model, data, verbose=False)[0]
    if trainer.global_rank == 0:
        result = {"metrics": metrics, "queries": len(data.data.test_positions)}
        (out_dir / "ddp.json").write_text(json.dumps(result))
    # Leave the process group before exiting: gloo's threads can otherwise abort the interpreter's
    # shutdown ("terminate called without an active exception", exit code -6).
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
