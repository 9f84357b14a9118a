"""Write recommendations with ``strategy="ddp"`` on 2 CPU processes (run by test_recommendation_writer.py).

Usage: python ddp_predict_script.py <cache_dir> <output_path>
"""

import sys

import lightning as L
import torch
from recommendation_setup import build

from lightning_rec.callbacks import RecommendationWriter


def main() -> None:
    cache_dir, output_path = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    model, data = build(cache_dir)
    trainer = L.Trainer(
        strategy="ddp", accelerator="cpu", devices=2, logger=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[RecommendationWriter(output_path, k=7)],
    )  # fmt: skip
    trainer.predict(model, data, return_predictions=False)
    # Leave the process group before exiting (gloo can otherwise abort the interpreter's shutdown).
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
