"""Metrics for rankers that score a short candidate list (LLM rankers, AgentRecBench protocol).

Each query comes with one positive and a few sampled negatives (the protocol: 1 positive + 19
negatives, seeded). The ranker scores the list; the positive's rank follows the same rule as full
ranking (``ranking.py``): ties count against the positive and non-finite scores raise.

Axes:
    b  batch (queries)
    c  candidates of one query
    k  cutoffs K
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor
from torchmetrics import Metric

from lightning_rec.metrics.ranking import (
    _check_cutoffs,
    _discounted_gain,
    _pessimistic_ranks,
    _within_cutoffs,
)

__all__ = ["CandidateRankingMetrics"]


class CandidateRankingMetrics(Metric):
    """HR@K for each K, their mean, and NDCG@``ndcg_k`` of one positive among scored candidates.

    The positive's 0-based rank is the number of other candidates scoring ``>=`` it (ties count
    against the positive). HR@K is 1 if ``rank < K``; ``hr_mean`` is the mean of the HR@K values
    (AgentRecBench reports the mean of HR@1/3/5); NDCG@K is ``1 / log2(rank + 2)`` if ``rank < K``.
    All values are means over queries. States are sums reduced with ``sum`` across processes.

    Args:
        ks: the HR cutoffs.
        ndcg_k: the NDCG cutoff (10 in the protocol).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, ks: Sequence[int] = (1, 3, 5), ndcg_k: int = 10) -> None:
        super().__init__()
        self.ks = _check_cutoffs(ks)
        (self.ndcg_k,) = _check_cutoffs((ndcg_k,))
        self.add_state("hits", torch.zeros(len(self.ks), dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("ndcg_sum", torch.zeros(()), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, scores: Tensor, positive_index: Tensor) -> None:
        """Add a batch of scored candidate lists.

        Args:
            scores: ``(b c)`` a score per candidate; every candidate competes (no padding column).
            positive_index: ``(b)`` long, the column of the positive, in ``[0, c)``.

        Raises:
            ValueError: on inconsistent shapes, an index outside the list, or a non-finite score.
        """
        if scores.dim() != 2 or scores.shape[1] < 1:
            raise ValueError(f"scores must be (batch, candidates), got shape {tuple(scores.shape)}")
        if positive_index.shape != (len(scores),) or positive_index.dtype != torch.long:
            raise ValueError(
                f"positive_index must be long ({len(scores)},), "
                f"got {positive_index.dtype} {tuple(positive_index.shape)}"
            )
        num_candidates = scores.shape[1]
        if len(positive_index) and (
            int(positive_index.min()) < 0 or int(positive_index.max()) >= num_candidates
        ):
            raise ValueError(
                f"positive_index must lie in [0, {num_candidates}), "
                f"got min {int(positive_index.min())} max {int(positive_index.max())}"
            )
        columns = torch.arange(num_candidates, device=scores.device)
        competes = rearrange(columns, "c -> 1 c") != rearrange(positive_index, "b -> b 1")
        ranks = _pessimistic_ranks(scores, positive_index, competes)
        self.hits += _within_cutoffs(ranks, self.ks).sum(0)
        self.ndcg_sum += torch.where(ranks < self.ndcg_k, _discounted_gain(ranks), 0.0).sum()
        self.count += len(ranks)

    def compute(self) -> dict[str, Tensor]:
        """``{"hr@K" for each K, "hr_mean", "ndcg@<ndcg_k>"}``, each a scalar mean over queries."""
        if self.count == 0:
            raise ValueError("CandidateRankingMetrics.compute: no queries were added")
        hit_rates = self.hits / self.count
        return {
            **{f"hr@{k}": value for k, value in zip(self.ks, hit_rates, strict=True)},
            "hr_mean": hit_rates.mean(),
            f"ndcg@{self.ndcg_k}": self.ndcg_sum / self.count,
        }
