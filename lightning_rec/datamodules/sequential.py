"""``SequentialRecDataModule``: the one DataModule every sequential-recommendation method shares."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from lightning_rec.data.batches import EvalQueries, TrainWindows, UserHistories, training_windows
from lightning_rec.data.records import InteractionSource
from lightning_rec.data.sequences import (
    SequenceData,
    SequenceOptions,
    SplitName,
    TieBreak,
    load_or_build_sequences,
)
from lightning_rec.data.synthetic import SyntheticReviews
from lightning_rec.data.text_files import default_cache_dir

__all__ = ["ItemTable", "SequentialRecDataModule"]

log = logging.getLogger(__name__)


@dataclass
class ItemTable:
    """The item side table, aligned with item indices (row 0 is padding).

    ``title`` and ``category`` are lists of ``i + 1`` strings; ``price (i + 1)`` is a float tensor,
    NaN where unknown.
    """

    title: list[str]
    category: list[str]
    price: torch.Tensor


class SequentialRecDataModule(L.LightningDataModule):
    """Next-item recommendation data from any :class:`~lightning_rec.data.InteractionSource`.

    Preprocessing (rating threshold, iterated k-core, time order with a documented tie rule, id maps,
    split) is described in :mod:`lightning_rec.data.sequences` and cached on disk under a key of the
    source's content and these options. Training batches are windows with a loss at every position
    (:mod:`lightning_rec.data.batches`); validation and test batches hold one held-out item per row,
    ranked against the full catalogue.

    The id maps are saved in every Lightning checkpoint (``state_dict``) and checked when a
    checkpoint is restored, so a model is never evaluated against a different item numbering.

    Args:
        source: the dataset reader; defaults to the embedded synthetic catalogue
            (:class:`~lightning_rec.data.SyntheticReviews`).
        rating_threshold: keep interactions rated at least this (``None`` keeps all).
        k_core: minimum interactions per user and per item, iterated to a fixed point.
        tie_break: ``"file_order"`` (stable) or ``"shuffle"`` (seeded) for equal timestamps.
        split: ``"leave_one_out"`` or ``"global_time"`` (with ``split_ratios``).
        split_ratios: train / validation / test shares of the timeline for ``global_time``.
        max_len: history length seen by the model (item 0 pads on the left).
        train_stride: targets supervised per training window; ``None`` (= ``max_len``) cuts
            consecutive windows. A smaller value cuts overlapping windows so that every target is
            predicted from at least ``max_len - train_stride`` items of history, as at evaluation,
            still once per epoch, at ``max_len / train_stride`` times the forward passes
            (:func:`~lightning_rec.data.batches.training_windows`).
        batch_size: training windows per batch.
        eval_batch_size: queries per validation / test batch.
        num_workers: DataLoader worker processes.
        cache_dir: preprocessing cache (default ``$LIGHTNING_REC_CACHE`` or
            ``~/.cache/lightning_rec``); ``""`` disables caching.
        seed: seed for ``tie_break="shuffle"``.
        predict_users: a text file of raw user ids, one per line, to recommend for at ``predict``
            (default: every user). ``predict`` ranks after each user's whole sequence.
    """

    def __init__(
        self,
        source: InteractionSource | None = None,
        rating_threshold: float | None = None,
        k_core: int = 5,
        tie_break: TieBreak = "file_order",
        split: SplitName = "leave_one_out",
        split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
        max_len: int = 50,
        train_stride: int | None = None,
        batch_size: int = 256,
        eval_batch_size: int = 512,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 0,
        predict_users: str | None = None,
    ) -> None:
        super().__init__()
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        if train_stride is not None and not 1 <= train_stride <= max_len:
            raise ValueError(f"train_stride must be in [1, max_len={max_len}] or None, got {train_stride}")
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {eval_batch_size}")
        self.save_hyperparameters(ignore=["source"])
        self.source = source if source is not None else SyntheticReviews(cache_dir=cache_dir or None)
        self.options = SequenceOptions(
            rating_threshold=rating_threshold,
            k_core=k_core,
            tie_break=tie_break,
            split=split,
            split_ratios=tuple(split_ratios),
            seed=seed,
        )
        self.cache_dir: Path | None = None if cache_dir == "" else Path(cache_dir or default_cache_dir())
        self.max_len = max_len
        self.train_stride = train_stride
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.predict_users = predict_users
        self._data: SequenceData | None = None
        self._restored_id_maps: dict[str, list[str]] | None = None

    # ------------------------------------------------------------------ data
    @property
    def data(self) -> SequenceData:
        """The preprocessed sequences (built or loaded from the cache on first access)."""
        if self._data is None:
            self._data = load_or_build_sequences(self.source, self.options, self.cache_dir)
            self._check_id_maps()
        return self._data

    @property
    def num_items(self) -> int:
        """Real items in the catalogue; item indices are ``1..num_items`` (0 is padding)."""
        return self.data.num_items

    @property
    def num_users(self) -> int:
        return self.data.num_users

    @property
    def item_table(self) -> ItemTable:
        return ItemTable(
            title=self.data.item_title,
            category=self.data.item_category,
            price=torch.from_numpy(self.data.item_price).float(),
        )

    @property
    def dataset_name(self) -> str:
        """A short name of the source for model cards, e.g. ``RecBoleExample/ml-100k``."""
        name = getattr(self.source, "name", None)
        return type(self.source).__name__ + (f"/{name}" if isinstance(name, str) else "")

    def vocab(self) -> dict[str, Any]:
        """The item id map and side table as JSON-ready lists, saved with models (``vocab.json``)."""
        data = self.data
        return {
            "item_ids": data.item_ids,
            "item_title": data.item_title,
            "item_category": data.item_category,
            "item_price": [None if np.isnan(p) else float(p) for p in data.item_price],
        }

    def item_popularity(self) -> torch.Tensor:
        """``(num_items + 1)`` counts of each item as a next item in the training split.

        Every training interaction but each user's first one is a next-item target exactly once per
        epoch, so this equals what :class:`~lightning_rec.modules.MostPopular` counts in one epoch.
        """
        data = self.data
        positions = np.concatenate(
            [np.arange(s + 1, e) for s, e in zip(data.offsets[:-1], data.train_end, strict=True)]
        )
        counts = np.bincount(data.items[positions], minlength=data.num_items + 1)
        counts[0] = 0
        return torch.from_numpy(counts).float()

    def prepare_data(self) -> None:
        self.data  # noqa: B018  (builds and caches once, in the main process)

    def setup(self, stage: str) -> None:
        log.info("Sequential data: %s", self.data.stats())

    # ----------------------------------------------------------- dataloaders
    def train_dataloader(self) -> DataLoader:
        data = self.data
        windows = training_windows(
            data.items, data.offsets[:-1], data.train_end, self.max_len, stride=self.train_stride
        )
        dataset = TrainWindows(windows, stride=self.train_stride)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=True,
            collate_fn=dataset.collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def _queries(self, positions: np.ndarray, users: np.ndarray) -> DataLoader:
        queries = EvalQueries(self.data.items, self.data.offsets, positions, users, self.max_len)
        return DataLoader(
            queries,
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=queries.collate,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return self._queries(self.data.valid_positions, self.data.query_users_valid)

    def test_dataloader(self) -> DataLoader:
        return self._queries(self.data.test_positions, self.data.query_users_test)

    def predict_dataloader(self) -> DataLoader:
        """Every user (or those of ``predict_users``) once, with the whole sequence as history."""
        histories = UserHistories(
            self.data.items, self.data.offsets, self._predict_user_indices(), self.max_len
        )
        return DataLoader(
            histories,
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=histories.collate,
            num_workers=self.num_workers,
        )

    def _predict_user_indices(self) -> np.ndarray:
        if self.predict_users is None:
            return np.arange(self.num_users)
        index = {user: position for position, user in enumerate(self.data.user_ids)}
        lines = Path(self.predict_users).read_text(encoding="utf-8").splitlines()
        wanted = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
        unknown = [user for user in wanted if user not in index]
        if unknown:
            raise ValueError(
                f"{self.predict_users}: {len(unknown)} user ids are not in the data (after k-core), "
                f"e.g. {unknown[:5]}; a sequential model needs a user's history"
            )
        return np.array([index[user] for user in wanted], dtype=np.int64)

    @property
    def user_ids(self) -> list[str]:
        """Raw user id of each user index."""
        return self.data.user_ids

    # ------------------------------------------------------- id maps in ckpt
    def state_dict(self) -> dict[str, Any]:
        return {"user_ids": self.data.user_ids, "item_ids": self.data.item_ids}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored_id_maps = {key: list(state_dict[key]) for key in ("user_ids", "item_ids")}
        if self._data is not None:
            self._check_id_maps()

    def _check_id_maps(self) -> None:
        if self._restored_id_maps is None:
            return
        for key, saved in self._restored_id_maps.items():
            current = getattr(self._data, key)
            if saved != current:
                raise ValueError(
                    f"the checkpoint's {key} ({len(saved)} ids) differ from this data's "
                    f"({len(current)} ids): the model was trained on another dataset or preprocessing; "
                    "use the same source and options"
                )
