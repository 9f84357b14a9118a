"""``CandidateRankingDataModule``: the candidate protocol for LLM rankers on the sequential splits.

Each validation or test query of :class:`SequentialRecDataModule` (same preprocessing, same split)
becomes a short list: the held-out positive and ``num_candidates - 1`` negatives, in a seeded random
order. The ranker scores the list and
:class:`~lightning_rec.metrics.CandidateRankingMetrics` reports HR@1/3/5, their mean and NDCG@10
(the data spec's protocol: 1 positive + 19 negatives, AgentRecBench's HR@K).

Negatives are items the user never interacted with (in any split: the SASRec paper's sampled-metric
rule, so a negative is never a past or future positive), drawn without replacement either uniformly
or in proportion to their training popularity (harder: popular items are plausible). Each query's
list is drawn from its own generator, seeded by ``(candidate_seed, split, query)``, so lists do not
depend on batching, workers or the order of evaluation. The positive's position is uniform, so a
ranker with a position bias (LLMs prefer the first options) gains nothing from it.

Training is unchanged: the sequential windows of the parent, for ID-based rerankers (SASRec).

Axes: b batch, n max_len, c candidates, q queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_rec.data.records import InteractionSource
from lightning_rec.data.sequences import SplitName, TieBreak
from lightning_rec.datamodules.sequential import SequentialRecDataModule

__all__ = ["CandidateBatch", "CandidateRankingDataModule", "NegativeSampling"]

NegativeSampling = Literal["uniform", "popularity"]
_SPLIT_CODES = {"valid": 1, "test": 2}


@dataclass
class CandidateBatch:
    """Queries with candidate lists.

    Attributes:
        input_ids: ``(b n)`` the last ``n`` history items, left-padded with 0 (for ID-based rankers).
        candidates: ``(b c)`` item indices; one of them is the held-out positive.
        positive_index: ``(b)`` long, the positive's column in ``candidates``.
        user_index: ``(b)`` the user of each query.
        history_titles: ``b`` lists of the most recent history titles, oldest first.
        candidate_titles: ``b`` lists of ``c`` titles, aligned with ``candidates``.
    """

    input_ids: Tensor
    candidates: Tensor
    positive_index: Tensor
    user_index: Tensor
    history_titles: list[list[str]]
    candidate_titles: list[list[str]]

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class _CandidateQueries(Dataset):
    def __init__(self, module: CandidateRankingDataModule, split: str) -> None:
        data = module.data
        self.positions = data.valid_positions if split == "valid" else data.test_positions
        self.users = data.query_users_valid if split == "valid" else data.query_users_test
        self.candidates, self.positive_index = module.candidate_lists(split)
        self.items, self.offsets, self.titles = data.items, data.offsets, data.item_title
        self.max_len, self.history_titles = module.max_len, module.history_titles

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, int, int]:
        user = int(self.users[index])
        history = self.items[self.offsets[user] : self.positions[index]]
        return history, self.candidates[index], int(self.positive_index[index]), user

    def collate(self, rows: list[tuple[np.ndarray, np.ndarray, int, int]]) -> CandidateBatch:
        input_ids = torch.zeros(len(rows), self.max_len, dtype=torch.long)
        for row, (history, _, _, _) in enumerate(rows):
            recent = history[-self.max_len :]
            if len(recent):
                input_ids[row, self.max_len - len(recent) :] = torch.from_numpy(recent)
        return CandidateBatch(
            input_ids=input_ids,
            candidates=torch.from_numpy(np.stack([candidates for _, candidates, _, _ in rows])),
            positive_index=torch.tensor([positive for _, _, positive, _ in rows], dtype=torch.long),
            user_index=torch.tensor([user for _, _, _, user in rows], dtype=torch.long),
            history_titles=[
                [self.titles[item] for item in history[-self.history_titles :]] for history, _, _, _ in rows
            ],
            candidate_titles=[[self.titles[item] for item in candidates] for _, candidates, _, _ in rows],
        )


class CandidateRankingDataModule(SequentialRecDataModule):
    """Sequential splits, evaluated as ranking one positive among ``num_candidates`` items.

    Args:
        source, rating_threshold, k_core, tie_break, split, split_ratios, max_len, batch_size,
            num_workers, cache_dir, seed: as :class:`SequentialRecDataModule`.
        eval_batch_size: queries per validation / test batch (smaller than the parent's default: an
            LLM ranker scores ``c`` sequences per query).
        num_candidates: list length ``c`` (1 positive + ``c - 1`` negatives); 20 in the protocol.
        negatives: ``"uniform"`` or ``"popularity"`` (proportional to training next-item counts).
        history_titles: the most recent titles of the history given as text.
        candidate_seed: seed of the negatives and of the positive's position.
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
        batch_size: int = 256,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 0,
        num_candidates: int = 20,
        negatives: NegativeSampling = "uniform",
        history_titles: int = 20,
        candidate_seed: int = 0,
    ) -> None:
        super().__init__(
            source=source,
            rating_threshold=rating_threshold,
            k_core=k_core,
            tie_break=tie_break,
            split=split,
            split_ratios=split_ratios,
            max_len=max_len,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            cache_dir=cache_dir,
            seed=seed,
        )
        if num_candidates < 2:
            raise ValueError(f"num_candidates must be >= 2 (a positive and a negative), got {num_candidates}")
        if negatives not in ("uniform", "popularity"):
            raise ValueError(f"negatives must be 'uniform' or 'popularity', got {negatives!r}")
        if history_titles < 1:
            raise ValueError(f"history_titles must be >= 1, got {history_titles}")
        self.num_candidates, self.negatives = num_candidates, negatives
        self.history_titles, self.candidate_seed = history_titles, candidate_seed
        self._lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def candidate_lists(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``candidates (q c)`` item indices and ``positive_index (q)`` of every ``"valid"`` or
        ``"test"`` query (computed once, then kept)."""
        if split not in _SPLIT_CODES:
            raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
        if split not in self._lists:
            self._lists[split] = self._draw(split)
        return self._lists[split]

    def _draw(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        data = self.data
        positions = data.valid_positions if split == "valid" else data.test_positions
        users = data.query_users_valid if split == "valid" else data.query_users_test
        weights = self.item_popularity().numpy().astype(np.float64)
        if self.negatives == "uniform":
            weights = np.ones(data.num_items + 1)
        weights[0] = 0.0  # padding is never a candidate
        candidates = np.empty((len(positions), self.num_candidates), dtype=np.int64)
        positive_index = np.empty(len(positions), dtype=np.int64)
        for query, (position, user) in enumerate(zip(positions.tolist(), users.tolist(), strict=True)):
            rng = np.random.default_rng([self.candidate_seed, _SPLIT_CODES[split], query])
            allowed = weights.copy()
            allowed[data.items[data.offsets[user] : data.offsets[user + 1]]] = 0.0
            if np.count_nonzero(allowed) < self.num_candidates - 1:
                raise ValueError(
                    f"user {data.user_ids[user]} leaves {np.count_nonzero(allowed)} items to sample "
                    f"{self.num_candidates - 1} {self.negatives} negatives from; lower num_candidates"
                )
            negatives = rng.choice(
                len(allowed), self.num_candidates - 1, replace=False, p=allowed / allowed.sum()
            )
            slot = int(rng.integers(self.num_candidates))
            candidates[query] = np.insert(negatives, slot, data.items[position])
            positive_index[query] = slot
        return candidates, positive_index

    def _candidates(self, split: str) -> DataLoader[CandidateBatch]:
        queries = _CandidateQueries(self, split)
        return DataLoader(
            queries,
            batch_size=self.eval_batch_size,
            shuffle=False,
            collate_fn=queries.collate,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader[CandidateBatch]:
        return self._candidates("valid")

    def test_dataloader(self) -> DataLoader[CandidateBatch]:
        return self._candidates("test")
