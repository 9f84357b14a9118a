"""Train a tiny SASRec, DiffuReason or GPR (its HEPO stage) for a number of epochs, resuming from a
checkpoint if given.

Usage: python resume_script.py <cache_dir> <out_dir> <devices> <method>:<epochs>[:<ckpt_path>] ...
(``devices`` 2: ``strategy="ddp"`` on 2 CPU processes.)
For each job, the final weights go to ``<out_dir>/<method>-<epochs>.safetensors`` and ``last.ckpt``
to ``<out_dir>/<method>-<epochs>/``. test_exact_resume.py calls ``train`` in the test process and
runs this script for the resumed half, in a fresh process.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from safetensors.torch import save_file

from lightning_rec.blocks import DiffusionHead, HeterogeneousHierarchicalDecoder, SemanticIdQuantizer
from lightning_rec.blocks import SASRec as SASRecEncoder
from lightning_rec.callbacks import ExactResume
from lightning_rec.data.synthetic import SyntheticReviews
from lightning_rec.datamodules import SequentialRecDataModule
from lightning_rec.modules import GPR, DiffuReason, SASRec


def train(
    method: str, epochs: int, cache_dir: str, out_dir: Path, ckpt_path: str | None, devices: int = 1
) -> None:
    L.seed_everything(0, verbose=False)
    source = SyntheticReviews(num_users=60, num_items=40, num_categories=4, cache_dir=cache_dir)
    data = SequentialRecDataModule(source=source, cache_dir=cache_dir, max_len=8, batch_size=16)
    encoder = SASRecEncoder(num_items=data.num_items, hidden_size=8, max_len=8, dropout=0.3)
    if method == "sasrec":
        model = SASRec(encoder=encoder, ks=(5,))
    elif method == "gpr":  # HEPO: sampled candidates, PPO epochs over minibatches, manual optimisation
        decoder = HeterogeneousHierarchicalDecoder(
            level_sizes=(8, 8, 8), hidden_size=8, max_len=10, num_prediction_heads=2, dropout=0.3
        )
        quantizer = SemanticIdQuantizer(num_levels=2, codebook_size=8, method="rq_kmeans")
        model = GPR(decoder=decoder, quantizer=quantizer, stage="hepo", embedding_cache_dir=cache_dir,
                    num_candidates=3, ppo_epochs=2, num_minibatches=2, beam_size=5, slate_size=5,
                    ks=(5,))  # fmt: skip
    else:  # every stochastic part: thinking tokens, diffusion noise, GRPO's sampled groups
        head = DiffusionHead(hidden_size=8, num_steps=4, sampling_steps=2)
        model = DiffuReason(encoder=encoder, diffusion=head, grpo_warmup_steps=0, group_size=3, ks=(5,))
    checkpoints = out_dir / f"{method}-{epochs}"
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=devices, deterministic=True, logger=False,
        strategy="ddp" if devices > 1 else "auto",
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[ExactResume(), L.pytorch.callbacks.ModelCheckpoint(dirpath=checkpoints, save_last=True)],
    )  # fmt: skip
    trainer.fit(model, data, ckpt_path=ckpt_path)
    if trainer.global_rank > 0:  # DDP keeps the processes' weights equal
        return
    weights = {key: value.clone() for key, value in model.state_dict().items()}  # shared weights: copies
    save_file(weights, str(out_dir / f"{method}-{epochs}.safetensors"))


def main() -> None:
    torch.set_num_threads(1)
    cache_dir, out_dir, devices = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    for job in sys.argv[4:]:
        method, epochs, *ckpt_path = job.split(":", 2)
        train(method, int(epochs), cache_dir, out_dir, ckpt_path[0] if ckpt_path else None, devices)
    # Leave the process group before exiting (gloo can otherwise abort the interpreter's shutdown).
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
