"""Ranking metrics as torchmetrics ``Metric`` subclasses (layer 1: no Lightning module code).

- :class:`FullRankingMetrics`: Recall@K (= HR@K), NDCG@K, MRR@K against the full catalogue, from
  dense scores or chunk by chunk from embeddings.
- :class:`CandidateRankingMetrics`: HR@K, their mean and NDCG@10 over a short candidate list.
- :class:`SeenClassAccuracy`, :class:`StreamEvaluations`: continual-learning accuracy over a stream
  (A_auc, A_last, A_avg, F_last, BWT).
- :func:`target_ranks`, :func:`target_ranks_from_embeddings`: the shared rank rule (ties count
  against the target, or ``ties="average"``; non-finite scores raise).
- :func:`chunked_topk`: top-K items for serving without the ``(queries, items)`` score matrix.
"""

from lightning_rec.metrics.candidates import CandidateRankingMetrics
from lightning_rec.metrics.continual import (
    SeenClassAccuracy,
    StreamEvaluations,
    anytime_accuracy,
    backward_transfer,
    last_forgetting,
)
from lightning_rec.metrics.ranking import (
    FullRankingMetrics,
    TieRule,
    chunked_topk,
    target_ranks,
    target_ranks_from_embeddings,
)

__all__ = [
    "CandidateRankingMetrics",
    "FullRankingMetrics",
    "SeenClassAccuracy",
    "StreamEvaluations",
    "TieRule",
    "anytime_accuracy",
    "backward_transfer",
    "chunked_topk",
    "last_forgetting",
    "target_ranks",
    "target_ranks_from_embeddings",
]
