"""``RankingModule``: validation and test over the full catalogue, written once for every recommender.

A subclass says how to score a batch (:meth:`RankingModule.update_metrics`); this base owns the
metric objects, the ``val/*`` and ``test/*`` logging (NDCG@10 in the progress bar) and keeps the last
test's figures in ``test_results`` for the model card.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import lightning as L

from lightning_rec.data.batches import EvalBatch
from lightning_rec.hub.mixin import HubMixin
from lightning_rec.metrics.ranking import FullRankingMetrics

__all__ = ["RankingModule"]


class RankingModule(HubMixin, L.LightningModule, ABC):
    """Base of the modules evaluated by full-catalogue ranking; call :meth:`init_metrics` in ``__init__``."""

    def init_metrics(self, ks: Sequence[int], mask_history: bool) -> None:
        self.val_metrics = FullRankingMetrics(ks=tuple(ks), mask_history=mask_history)
        self.test_metrics = FullRankingMetrics(ks=tuple(ks), mask_history=mask_history)
        self.test_results: dict[str, float] = {}

    @abstractmethod
    def update_metrics(self, batch: EvalBatch, metrics: FullRankingMetrics) -> None:
        """Score ``batch`` against the whole catalogue and add its ranks to ``metrics``."""

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self.update_metrics(batch, self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        for name, value in self.val_metrics.compute().items():
            self.log(f"val/{name}", value, prog_bar=name == "ndcg@10")
        self.val_metrics.reset()

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self.update_metrics(batch, self.test_metrics)

    def on_test_epoch_end(self) -> None:
        results = {f"test/{k}": v for k, v in self.test_metrics.compute().items()}
        self.log_dict(results)
        self.test_metrics.reset()
        # Kept for the model card: the card's results always come from this run's own test.
        self.test_results = {name: float(value) for name, value in results.items()}
