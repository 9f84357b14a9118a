"""Tests for lightning_rec/metrics/candidates.py (1 positive + 19 negatives, AgentRecBench style)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import Tensor
from torchmetrics.retrieval import RetrievalHitRate, RetrievalNormalizedDCG

from lightning_rec.metrics import CandidateRankingMetrics

NUM_CANDIDATES = 20


def oracle_rank(scores: list[float], positive: int) -> int:
    """Sort the candidates by score, best first, ties placed before the positive; its position."""
    ordered = sorted(range(len(scores)), key=lambda column: (-scores[column], column == positive))
    return ordered.index(positive)


def oracle_metrics(ranks: list[int], ks: tuple[int, ...], ndcg_k: int) -> dict[str, float]:
    n = len(ranks)
    hit_rates = {f"hr@{k}": sum(rank < k for rank in ranks) / n for k in ks}
    return {
        **hit_rates,
        "hr_mean": sum(hit_rates.values()) / len(ks),
        f"ndcg@{ndcg_k}": sum(1 / math.log2(rank + 2) for rank in ranks if rank < ndcg_k) / n,
    }


def assert_metrics_close(actual: dict[str, Tensor], expected: dict[str, float]) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert float(actual[key]) == pytest.approx(value, rel=1e-5, abs=1e-7), key


def make_lists(seed: int, batch: int, tied: bool) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    if tied:
        scores = torch.randint(0, 3, (batch, NUM_CANDIDATES), generator=generator).float()
    else:
        scores = torch.randn(batch, NUM_CANDIDATES, generator=generator)
    positive_index = torch.randint(0, NUM_CANDIDATES, (batch,), generator=generator)
    return scores, positive_index


def test_hand_computed_values():
    scores = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.3],  # positive 0 first -> rank 0
            [0.9, 0.1, 0.2, 0.3],  # positive 3 second -> rank 1
            [0.5, 0.5, 0.5, 0.5],  # all tied -> rank 3 (pessimistic)
        ]
    )
    metric = CandidateRankingMetrics(ks=(1, 3), ndcg_k=2)
    metric.update(scores, torch.tensor([0, 3, 2]))
    result = metric.compute()
    assert float(result["hr@1"]) == pytest.approx(1 / 3)
    assert float(result["hr@3"]) == pytest.approx(2 / 3)
    assert float(result["hr_mean"]) == pytest.approx((1 / 3 + 2 / 3) / 2)
    assert float(result["ndcg@2"]) == pytest.approx((1 + 1 / math.log2(3)) / 3)


def test_default_keys():
    metric = CandidateRankingMetrics()
    metric.update(*make_lists(seed=0, batch=4, tied=False))
    assert list(metric.compute()) == ["hr@1", "hr@3", "hr@5", "hr_mean", "ndcg@10"]


@pytest.mark.parametrize("tied", [False, True], ids=["continuous", "tied"])
def test_matches_brute_force_oracle(tied: bool):
    scores, positive_index = make_lists(seed=1, batch=64, tied=tied)
    ranks = [oracle_rank(row, int(p)) for row, p in zip(scores.tolist(), positive_index, strict=True)]
    metric = CandidateRankingMetrics()
    metric.update(scores, positive_index)
    assert_metrics_close(metric.compute(), oracle_metrics(ranks, (1, 3, 5), 10))


def test_matches_torchmetrics_retrieval():
    scores, positive_index = make_lists(seed=2, batch=50, tied=False)
    metric = CandidateRankingMetrics()
    metric.update(scores, positive_index)
    result = metric.compute()

    relevant = torch.nn.functional.one_hot(positive_index, NUM_CANDIDATES).bool()
    indexes = torch.arange(len(scores)).repeat_interleave(NUM_CANDIDATES)
    preds, relevant = scores.flatten(), relevant.flatten()
    hit_rates = [RetrievalHitRate(top_k=k)(preds, relevant, indexes=indexes) for k in (1, 3, 5)]
    for k, expected in zip((1, 3, 5), hit_rates, strict=True):
        assert float(result[f"hr@{k}"]) == pytest.approx(float(expected), rel=1e-6), k
    assert float(result["hr_mean"]) == pytest.approx(float(sum(hit_rates) / 3), rel=1e-6)
    expected_ndcg = RetrievalNormalizedDCG(top_k=10)(preds, relevant, indexes=indexes)
    assert float(result["ndcg@10"]) == pytest.approx(float(expected_ndcg), rel=1e-5)


def test_nan_at_the_positive_raises_instead_of_counting_a_hit():
    scores, positive_index = make_lists(seed=3, batch=5, tied=False)
    scores[2, positive_index[2]] = float("nan")
    metric = CandidateRankingMetrics()
    with pytest.raises(ValueError, match="1 of 5 queries"):
        metric.update(scores, positive_index)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_negative_raises(bad: float):
    scores = torch.randn(3, NUM_CANDIDATES)
    positive_index = torch.zeros(3, dtype=torch.long)
    scores[:, 7] = bad
    with pytest.raises(ValueError, match="3 of 3 queries"):
        CandidateRankingMetrics().update(scores, positive_index)


def test_several_updates_equal_one_update_on_the_concatenation():
    scores, positive_index = make_lists(seed=4, batch=30, tied=True)
    whole = CandidateRankingMetrics()
    whole.update(scores, positive_index)
    pieces = CandidateRankingMetrics()
    for start, end in ((0, 11), (11, 11), (11, 30)):
        pieces.update(scores[start:end], positive_index[start:end])
    for key, value in whole.compute().items():
        assert torch.allclose(pieces.compute()[key], value), key


def test_compute_without_queries_raises():
    metric = CandidateRankingMetrics()
    metric.update(torch.zeros(0, NUM_CANDIDATES), torch.zeros(0, dtype=torch.long))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="no queries were added"):
            metric.compute()


@pytest.mark.parametrize(
    ("scores", "positive_index", "message"),
    [
        (torch.randn(2, 5), torch.tensor([0, 5]), "must lie in"),
        (torch.randn(2, 5), torch.tensor([-1, 0]), "must lie in"),
        (torch.randn(2, 5), torch.tensor([0.0, 1.0]), "long"),
        (torch.randn(5), torch.tensor([0]), "scores must be"),
        (torch.randn(2, 5), torch.tensor([0, 1, 2]), "positive_index must be"),
    ],
)
def test_invalid_inputs_are_named(scores, positive_index, message):
    with pytest.raises(ValueError, match=message):
        CandidateRankingMetrics().update(scores, positive_index)


def test_invalid_configuration_is_named():
    with pytest.raises(ValueError, match="cutoffs"):
        CandidateRankingMetrics(ks=())
    with pytest.raises(ValueError, match="cutoffs"):
        CandidateRankingMetrics(ndcg_k=0)
