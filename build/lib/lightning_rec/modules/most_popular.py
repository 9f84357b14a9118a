"""MostPopular: rank items by how often they occur as next items in the training data.

The trivial baseline every sequential recommender must beat by a wide margin. It has no trainable
parameter: ``fit`` counts item occurrences (summed across processes under DDP), or
:meth:`MostPopular.set_counts` takes counts directly, e.g. from
:meth:`~lightning_rec.datamodules.SequentialRecDataModule.item_popularity`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_rec.data.batches import EvalBatch, TrainBatch
from lightning_rec.metrics.ranking import FullRankingMetrics
from lightning_rec.modules.ranking_module import RankingModule

__all__ = ["MostPopular"]


class MostPopular(RankingModule):
    """Popularity ranking over ``num_items`` items (indices ``1..num_items``; 0 is padding).

    Ties between equally popular items count against the target (the metrics' pessimistic rule),
    so the baseline is never flattered by ties.
    """

    def __init__(self, num_items: int, ks: Sequence[int] = (5, 10, 20), mask_history: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(self.config_hparams())
        self.automatic_optimization = False
        self.register_buffer("counts", torch.zeros(num_items + 1))
        self.init_metrics(ks, mask_history)

    @classmethod
    def hub_example(cls) -> tuple[MostPopular, tuple[Tensor]]:
        """Popularity over 20 items with seeded counts, and a batch of histories ``(3 8)``."""
        generator = torch.Generator().manual_seed(0)
        model = cls(num_items=20)
        model.set_counts(torch.randint(0, 50, (21,), generator=generator).float())
        return model, (torch.randint(1, 21, (3, 8), generator=generator),)

    def set_counts(self, counts: Tensor) -> None:
        """``counts (num_items + 1)``: occurrences of each item index."""
        if counts.shape != self.counts.shape:
            raise ValueError(f"counts must have shape {tuple(self.counts.shape)}, got {tuple(counts.shape)}")
        self.counts.copy_(counts)

    def forward(self, input_ids: Tensor) -> Tensor:
        """``(b n)`` histories -> ``(b i)`` scores: the same popularity row for every user."""
        return self.counts.expand(input_ids.shape[0], -1)

    def on_train_epoch_start(self) -> None:
        self.counts.zero_()

    def training_step(self, batch: TrainBatch, batch_idx: int) -> None:
        targets = batch.target_ids[batch.target_ids > 0]
        self.counts += torch.bincount(targets, minlength=self.counts.numel()).to(self.counts)

    def on_train_epoch_end(self) -> None:
        self.counts.copy_(self.trainer.strategy.reduce(self.counts, reduce_op="sum"))

    def configure_optimizers(self) -> None:
        return None

    def update_metrics(self, batch: EvalBatch, metrics: FullRankingMetrics) -> None:
        metrics.update(self(batch.input_ids), batch.target, batch.history)
