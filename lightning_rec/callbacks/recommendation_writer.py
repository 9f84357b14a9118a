"""``RecommendationWriter``: ``lightning-rec predict`` streams top-K recommendations, in raw ids.

Each line of the output file is one user::

    {"user_id": "A2SUAM1J3GNN3B", "items": ["B00004RFRV", "B0000C6E1T"], "scores": [7.31, 6.94]}

Ids are the dataset's own (the datamodule's user ids, the model's item vocabulary), never indices.
Lines are written batch by batch as ``predict`` runs, so memory does not grow with the number of
users. Under DDP each process appends to its own part file (Lightning's predict sampler gives every
user to exactly one process), and rank 0 joins the parts into the output file at the end, replacing
it atomically.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TextIO

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from lightning_rec.atomic import atomic_path

__all__ = ["RecommendationWriter"]


class RecommendationWriter(BasePredictionWriter):
    """Write each user's top-``k`` raw item ids and scores to ``output_path`` (JSON lines).

    Works with a module whose ``predict_step`` returns ``user_index (b)``, ``items (b k)`` and
    ``scores (b k)``, reads ``prediction_k`` and ``prediction_exclude_history`` (as
    :class:`~lightning_rec.modules.SequentialRecommender` does), and carries a ``vocab`` with
    ``item_ids``; and with a datamodule that has ``user_ids`` (raw id of each user index).

    Args:
        output_path: the JSON-lines file written (its folder is created).
        k: items per user.
        exclude_history: never recommend an item the user already has in their history.
    """

    def __init__(
        self, output_path: str = "predictions.jsonl", k: int = 10, exclude_history: bool = True
    ) -> None:
        super().__init__(write_interval="batch")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.output_path = Path(output_path)
        self.k = k
        self.exclude_history = exclude_history
        self._part: TextIO | None = None
        self._user_ids: list[str] = []
        self._item_ids: list[str] = []

    def _part_path(self, rank: int) -> Path:
        return self.output_path.with_name(f"{self.output_path.name}.part-{rank}")

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        vocab = getattr(pl_module, "vocab", None)
        if not vocab or "item_ids" not in vocab:
            raise ValueError(
                f"{type(pl_module).__name__} has no item vocabulary to write raw ids with: predict from a "
                "checkpoint trained on a datamodule, or a model loaded with from_pretrained"
            )
        user_ids = getattr(trainer.datamodule, "user_ids", None)
        if user_ids is None:
            raise ValueError(f"{type(trainer.datamodule).__name__} has no user_ids to write raw ids with")
        self._item_ids, self._user_ids = list(vocab["item_ids"]), list(user_ids)
        pl_module.prediction_k = self.k
        pl_module.prediction_exclude_history = self.exclude_history
        self.output_path.parent.mkdir(parents=True, exist_ok=True)
        self._part = self._part_path(trainer.global_rank).open("w", encoding="utf-8")

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: dict[str, torch.Tensor],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        users = prediction["user_index"].tolist()
        items, scores = prediction["items"].cpu(), prediction["scores"].float().cpu()
        lines = []
        for row, user in enumerate(users):
            # Fewer unseen items than k: the rest score -inf and are left out (and JSON has no -inf).
            finite = scores[row].isfinite()
            line = {
                "user_id": self._user_ids[user],
                "items": [self._item_ids[item] for item in items[row][finite].tolist()],
                "scores": scores[row][finite].tolist(),
            }
            lines.append(json.dumps(line) + "\n")
        self._part.writelines(lines)
        self._part.flush()

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._part.close()
        self._part = None
        trainer.strategy.barrier("recommendation_writer_parts")
        if trainer.is_global_zero:
            with atomic_path(self.output_path) as joined, joined.open("w", encoding="utf-8") as output:
                for rank in range(trainer.world_size):
                    part = self._part_path(rank)
                    with part.open(encoding="utf-8") as lines:
                        for line in lines:
                            output.write(line)
                    os.remove(part)
        trainer.strategy.barrier("recommendation_writer_joined")
