"""Train a tiny SASRec or DiffuReason for a number of epochs, resuming from a checkpoint if given.

Usage: python resume_script.py <cache_dir> <out_dir> <method>:<epochs>[:<ckpt_path>] ...
For each job, the final weights go to ``<out_dir>/<method>-<epochs>.safetensors`` and ``last.ckpt``
to ``<out_dir>/<method>-<epochs>/``. test_exact_resume.py calls ``train`` in the test process and
runs this script for the resumed half, in a fresh process.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import save_file

from lightning_rec.blocks import DiffusionHead
from lightning_rec.blocks import SASRec as SASRecEncoder
from lightning_rec.callbacks import ExactResume
from lightning_rec.data.synthetic import SyntheticReviews
from lightning_rec.datamodules import SequentialRecDataModule
from lightning_rec.modules import DiffuReason, SASRec


def train(method: str, epochs: int, cache_dir: str, out_dir: Path, ckpt_path: str | None) -> None:
    L.seed_everything(0, verbose=False)
    source = SyntheticReviews(num_users=60, num_items=40, num_categories=4, cache_dir=cache_dir)
    data = SequentialRecDataModule(source=source, cache_dir=cache_dir, max_len=8, batch_size=16)
    encoder = SASRecEncoder(num_items=data.num_items, hidden_size=8, max_len=8, dropout=0.3)
    if method == "sasrec":
        model = SASRec(encoder=encoder, ks=(5,))
    else:  # every stochastic part: thinking tokens, diffusion noise, GRPO's sampled groups
        head = DiffusionHead(hidden_size=8, num_steps=4, sampling_steps=2)
        model = DiffuReason(encoder=encoder, diffusion=head, grpo_warmup_steps=0, group_size=3, ks=(5,))
    checkpoints = out_dir / f"{method}-{epochs}"
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, deterministic=True, logger=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[ExactResume(), L.pytorch.callbacks.ModelCheckpoint(dirpath=checkpoints, save_last=True)],
    )  # fmt: skip
    trainer.fit(model, data, ckpt_path=ckpt_path)
    weights = {key: value.clone() for key, value in model.state_dict().items()}  # shared weights: copies
    save_file(weights, str(out_dir / f"{method}-{epochs}.safetensors"))


def main() -> None:
    torch.set_num_threads(1)
    cache_dir, out_dir = sys.argv[1], Path(sys.argv[2])
    for job in sys.argv[3:]:
        method, epochs, *ckpt_path = job.split(":", 2)
        train(method, int(epochs), cache_dir, out_dir, ckpt_path[0] if ckpt_path else None)


if __name__ == "__main__":
    main()
