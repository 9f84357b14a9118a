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

Training is the parent's sequential windows (for ID-based rerankers: SASRec) by default. With
``train_on="candidate_lists"`` (LLM rankers trained on lists: Reasoning to Rank) a training batch is
a :class:`CandidateBatch` too: one query per user whose last training interaction is the positive
(its earlier interactions the history), with negatives drawn as above (split ``"train"``), never a
validation or test item. ``teacher_rationales`` then attaches one teacher rationale per candidate:
``"catalogue"`` for the synthetic catalogue's ground-truth rationales
(:func:`~lightning_rec.data.catalogue_corpus.candidate_rationale`, from the intent that generated the
positive), or a JSON-lines file of ``{"user_id", "item_id", "rationale"}`` records (raw ids) that
covers every training list (``candidate_lists("train")`` gives them).

Axes: b batch, n max_len, c candidates, q queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from lightning_rec.data.catalogue_corpus import candidate_rationale
from lightning_rec.data.records import InteractionSource
from lightning_rec.data.sequences import SplitName, TieBreak
from lightning_rec.data.synthetic import SyntheticCatalogue
from lightning_rec.data.text_records import read_rationales
from lightning_rec.datamodules.sequential import SequentialRecDataModule

__all__ = ["CandidateBatch", "CandidateRankingDataModule", "NegativeSampling", "TrainOn"]

NegativeSampling = Literal["uniform", "popularity"]
TrainOn = Literal["windows", "candidate_lists"]
_SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}


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
        rationales: ``b`` lists of ``c`` teacher rationales, aligned with ``candidates`` (training
            lists with ``teacher_rationales`` set), else None.
    """

    input_ids: Tensor
    candidates: Tensor
    positive_index: Tensor
    user_index: Tensor
    history_titles: list[list[str]]
    candidate_titles: list[list[str]]
    rationales: list[list[str]] | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class _CandidateQueries(Dataset):
    def __init__(self, module: CandidateRankingDataModule, split: str) -> None:
        data = module.data
        self.positions, self.users = module.query_positions(split)
        self.candidates, self.positive_index = module.candidate_lists(split)
        self.items, self.offsets, self.titles = data.items, data.offsets, data.item_title
        self.max_len, self.history_titles = module.max_len, module.history_titles
        self.rationales = module.training_rationales() if split == "train" else None

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, int, int, int]:
        user = int(self.users[index])
        history = self.items[self.offsets[user] : self.positions[index]]
        return history, self.candidates[index], int(self.positive_index[index]), user, index

    def collate(self, rows: list[tuple[np.ndarray, np.ndarray, int, int, int]]) -> CandidateBatch:
        input_ids = torch.zeros(len(rows), self.max_len, dtype=torch.long)
        for row, (history, *_) in enumerate(rows):
            recent = history[-self.max_len :]
            if len(recent):
                input_ids[row, self.max_len - len(recent) :] = torch.from_numpy(recent)
        return CandidateBatch(
            input_ids=input_ids,
            candidates=torch.from_numpy(np.stack([candidates for _, candidates, *_ in rows])),
            positive_index=torch.tensor([positive for _, _, positive, *_ in rows], dtype=torch.long),
            user_index=torch.tensor([user for *_, user, _ in rows], dtype=torch.long),
            history_titles=[
                [self.titles[item] for item in history[-self.history_titles :]] for history, *_ in rows
            ],
            candidate_titles=[[self.titles[item] for item in candidates] for _, candidates, *_ in rows],
            rationales=None if self.rationales is None else [self.rationales[index] for *_, index in rows],
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
        train_on: ``"windows"`` (the parent's training batches) or ``"candidate_lists"`` (one
            :class:`CandidateBatch` query per user, ``batch_size`` queries per batch, shuffled).
        teacher_rationales: ``"catalogue"`` (the synthetic source's ground-truth rationales) or a
            JSON-lines file, attached to the training lists; None for none.
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
        train_on: TrainOn = "windows",
        teacher_rationales: str | None = None,
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
        if train_on not in ("windows", "candidate_lists"):
            raise ValueError(f"train_on must be 'windows' or 'candidate_lists', got {train_on!r}")
        if teacher_rationales is not None and train_on != "candidate_lists":
            raise ValueError("teacher_rationales annotate training lists: set train_on='candidate_lists'")
        self.history_titles, self.candidate_seed = history_titles, candidate_seed
        self.train_on, self.teacher_rationales = train_on, teacher_rationales
        self._lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._rationales: list[list[str]] | None = None

    def query_positions(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``positions (q)`` flat positions of the held-out items and ``users (q)`` of a split's queries;
        ``"train"``: each user's last training interaction, for users with an earlier one."""
        data = self.data
        if split == "train":
            users = np.flatnonzero(data.train_end - data.offsets[:-1] >= 2)
            return data.train_end[users] - 1, users
        if split == "valid":
            return data.valid_positions, data.query_users_valid
        if split == "test":
            return data.test_positions, data.query_users_test
        raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")

    def candidate_lists(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``candidates (q c)`` item indices and ``positive_index (q)`` of every ``"train"``, ``"valid"``
        or ``"test"`` query (computed once, then kept)."""
        if split not in _SPLIT_CODES:
            raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
        if split not in self._lists:
            self._lists[split] = self._draw(split)
        return self._lists[split]

    def _draw(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        data = self.data
        positions, users = self.query_positions(split)
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

    def training_rationales(self) -> list[list[str]] | None:
        """One teacher rationale per candidate of each training list (``(q c)`` nested lists), from
        ``teacher_rationales``; None when it is None."""
        if self.teacher_rationales is None:
            return None
        if self._rationales is None:
            if self.teacher_rationales == "catalogue":
                self._rationales = self._catalogue_rationales()
            else:
                self._rationales = self._file_rationales(self.teacher_rationales)
        return self._rationales

    def _catalogue_rationales(self) -> list[list[str]]:
        catalogue = getattr(self.source, "catalogue", None)
        if not isinstance(catalogue, SyntheticCatalogue):
            raise ValueError(
                f"teacher_rationales='catalogue' needs the synthetic catalogue as source (SyntheticReviews), "
                f"got {type(self.source).__name__}; give a JSON-lines file of rationales instead"
            )
        data = self.data
        user_of = {catalogue.user_reviewer_id(user): user for user in range(catalogue.num_users)}
        item_of = {catalogue.item_asin(item): item for item in range(catalogue.num_items)}
        positions, users = self.query_positions("train")
        candidates, _ = self.candidate_lists("train")
        rationales = []
        for position, user, listed in zip(positions.tolist(), users.tolist(), candidates, strict=True):
            record = catalogue.users[user_of[data.user_ids[user]]]
            # k-core filtering may drop interactions: find the generator's step by its timestamp.
            step = int(np.searchsorted(record.timestamps, data.timestamps[position]))
            if step >= len(record.timestamps) or record.timestamps[step] != data.timestamps[position]:
                raise ValueError(
                    f"user {data.user_ids[user]}: no generated interaction at timestamp "
                    f"{data.timestamps[position]}; is the source the catalogue it claims to be?"
                )
            recent = data.items[max(data.offsets[user], position - self.history_titles) : position]
            history = [item_of[data.item_ids[item]] for item in recent]
            intent = record.intents[record.intent_path[step]]
            rationales.append(
                [
                    candidate_rationale(catalogue, history, intent, item_of[data.item_ids[item]])
                    for item in listed
                ]
            )
        return rationales

    def _file_rationales(self, path: str) -> list[list[str]]:
        data = self.data
        by_pair = read_rationales(path)
        _, users = self.query_positions("train")
        candidates, _ = self.candidate_lists("train")
        rationales = []
        for user, listed in zip(users.tolist(), candidates, strict=True):
            row = []
            for item in listed.tolist():
                pair = (data.user_ids[user], data.item_ids[item])
                if pair not in by_pair:
                    raise ValueError(
                        f"{path}: no rationale for user_id {pair[0]!r}, item_id {pair[1]!r} (a candidate "
                        "of that user's training list); the file must cover candidate_lists('train')"
                    )
                row.append(by_pair[pair])
            rationales.append(row)
        return rationales

    def _candidates(self, split: str) -> DataLoader[CandidateBatch]:
        queries = _CandidateQueries(self, split)
        return DataLoader(
            queries,
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=split == "train",
            collate_fn=queries.collate,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        if self.train_on == "windows":
            return super().train_dataloader()
        return self._candidates("train")

    def val_dataloader(self) -> DataLoader[CandidateBatch]:
        return self._candidates("valid")

    def test_dataloader(self) -> DataLoader[CandidateBatch]:
        return self._candidates("test")
