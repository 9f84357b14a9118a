"""Tests for lightning_rec/metrics/ranking.py.

Two oracles: a brute-force one (sort each query's eligible items in Python, ties placed before the
target) that covers ties and history masking, and torchmetrics' retrieval metrics on tie-free
scores. The chunked embedding path is compared with the dense path; the DDP test runs
``ddp_metric_script.py`` in a subprocess on 2 CPU processes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMRR, RetrievalNormalizedDCG

from lightning_rec.metrics import FullRankingMetrics, chunked_topk, target_ranks, target_ranks_from_embeddings

KS = (1, 5, 10, 20)
DDP_SCRIPT = Path(__file__).with_name("ddp_metric_script.py")
REPO_ROOT = Path(__file__).resolve().parents[2]


def oracle_rank(scores: list[float], target: int, history: list[int] | None) -> int:
    """Sort the eligible items by score, best first, ties placed before the target; its position."""
    excluded = set(history or []) - {target}
    eligible = [item for item in range(1, len(scores)) if item not in excluded]
    ordered = sorted(eligible, key=lambda item: (-scores[item], item == target))
    return ordered.index(target)


def oracle_metrics(ranks: list[int], ks: tuple[int, ...]) -> dict[str, float]:
    n = len(ranks)
    result = {}
    for k in ks:
        result[f"recall@{k}"] = sum(rank < k for rank in ranks) / n
        result[f"ndcg@{k}"] = sum(1 / math.log2(rank + 2) for rank in ranks if rank < k) / n
        result[f"mrr@{k}"] = sum(1 / (rank + 1) for rank in ranks if rank < k) / n
    return result


def assert_metrics_close(actual: dict[str, Tensor], expected: dict[str, float]) -> None:
    assert set(actual) == set(expected)
    for key, value in expected.items():
        assert float(actual[key]) == pytest.approx(value, rel=1e-5, abs=1e-7), key


def make_queries(
    seed: int, batch: int, num_items: int, history_length: int, tied: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Scores (b i), targets (b) and histories (b h). With ``tied``, scores take 4 values, so most
    targets tie with many items; every third history contains its own target."""
    generator = torch.Generator().manual_seed(seed)
    if tied:
        scores = torch.randint(0, 4, (batch, num_items), generator=generator).float()
    else:
        scores = torch.randn(batch, num_items, generator=generator)
    target = torch.randint(1, num_items, (batch,), generator=generator)
    history = torch.randint(0, num_items, (batch, history_length), generator=generator)
    history[::3, 0] = target[::3]
    return scores, target, history


# --- the rank rule ---------------------------------------------------------------------------------


def test_hand_computed_ranks_and_metrics():
    # Column 0 is padding and scores highest: it must not count.
    scores = torch.tensor(
        [
            [9.0, 0.5, 0.9, 0.1, 0.2],  # target 2 is best -> rank 0
            [9.0, 0.5, 0.9, 0.1, 0.2],  # target 1 below item 2 -> rank 1
            [9.0, 0.3, 0.3, 0.3, 0.3],  # target 3 ties with 3 others -> rank 3 (pessimistic)
            [9.0, 0.5, 0.9, 0.1, 0.2],  # target 3 is last of 4 -> rank 3
        ]
    )
    target = torch.tensor([2, 1, 3, 3])
    assert target_ranks(scores, target).tolist() == [0, 1, 3, 3]

    metric = FullRankingMetrics(ks=(1, 2))
    metric.update(scores, target)
    result = metric.compute()
    assert float(result["recall@1"]) == pytest.approx(1 / 4)
    assert float(result["recall@2"]) == pytest.approx(2 / 4)
    assert float(result["ndcg@2"]) == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert float(result["mrr@2"]) == pytest.approx((1 + 1 / 2) / 4)


def test_constant_scores_rank_the_target_last():
    num_items = 30
    scores = torch.zeros(3, num_items)
    target = torch.tensor([1, 15, 29])
    assert target_ranks(scores, target).tolist() == [num_items - 2] * 3


def test_history_masking_keeps_the_target_and_ignores_padding():
    scores = torch.tensor([[0.0, 0.9, 0.8, 0.7, 0.6]])
    target = torch.tensor([3])
    # Items 1 and 3 are in the history; 3 is the target and keeps competing, 0 is padding.
    history = torch.tensor([[0, 1, 3, 0]])
    assert target_ranks(scores, target).tolist() == [2]
    assert target_ranks(scores, target, history).tolist() == [1]


@pytest.mark.parametrize("tied", [False, True], ids=["continuous", "tied"])
@pytest.mark.parametrize("mask_history", [False, True], ids=["all-items", "mask-history"])
def test_matches_brute_force_oracle(tied: bool, mask_history: bool):
    scores, target, history = make_queries(seed=1, batch=48, num_items=25, history_length=6, tied=tied)
    expected_ranks = [
        oracle_rank(row, int(t), h if mask_history else None)
        for row, t, h in zip(scores.tolist(), target, history.tolist(), strict=True)
    ]
    given_history = history if mask_history else None
    assert target_ranks(scores, target, given_history).tolist() == expected_ranks

    metric = FullRankingMetrics(ks=KS, mask_history=mask_history)
    metric.update(scores, target, history)
    assert_metrics_close(metric.compute(), oracle_metrics(expected_ranks, KS))


@pytest.mark.parametrize("mask_history", [False, True], ids=["all-items", "mask-history"])
def test_matches_torchmetrics_retrieval(mask_history: bool):
    scores, target, history = make_queries(seed=2, batch=40, num_items=60, history_length=8, tied=False)
    # torchmetrics 1.9 drops positives scored <= 0 from Recall and MRR: shift every score above 0
    # (ranks are unchanged) so that the oracle sees every query.
    scores = scores - scores.min() + 0.1
    metric = FullRankingMetrics(ks=KS, mask_history=mask_history)
    metric.update(scores, target, history)
    result = metric.compute()

    # One retrieval query per row over its eligible items: padding (and history but the target) dropped.
    preds, relevant, indexes = [], [], []
    for query, (row, t, h) in enumerate(zip(scores, target.tolist(), history.tolist(), strict=True)):
        excluded = {0} | ((set(h) - {t}) if mask_history else set())
        items = [item for item in range(len(row)) if item not in excluded]
        preds.append(row[items])
        relevant.append(torch.tensor([item == t for item in items]))
        indexes.append(torch.full((len(items),), query))
    preds, relevant, indexes = torch.cat(preds), torch.cat(relevant), torch.cat(indexes)
    for k in KS:
        reference = {
            f"recall@{k}": RetrievalHitRate(top_k=k),
            f"ndcg@{k}": RetrievalNormalizedDCG(top_k=k),
            f"mrr@{k}": RetrievalMRR(top_k=k),
        }
        for key, retrieval_metric in reference.items():
            expected = retrieval_metric(preds, relevant, indexes=indexes)
            assert float(result[key]) == pytest.approx(float(expected), rel=1e-5, abs=1e-7), key


# --- non-finite scores -----------------------------------------------------------------------------


def test_nan_at_the_target_raises_instead_of_counting_a_hit():
    # The pitfall of specs/data.md: a strict "how many score higher" rank makes a NaN target rank 0.
    scores = torch.randn(4, 20)
    target = torch.tensor([3, 4, 5, 6])
    scores[1, 4] = float("nan")
    assert int((scores[1] > scores[1, 4]).sum()) == 0  # the rank a strict comparison would give
    with pytest.raises(ValueError, match="1 of 4 queries"):
        target_ranks(scores, target)
    metric = FullRankingMetrics()
    with pytest.raises(ValueError, match="non-finite"):
        metric.update(scores, target)


def test_encoder_nan_in_every_row_names_all_rows():
    scores = torch.full((8, 20), float("nan"))
    with pytest.raises(ValueError, match="8 of 8 queries"):
        target_ranks(scores, torch.arange(1, 9))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_competitor_raises(bad: float):
    scores = torch.randn(5, 20)
    scores[0, 7] = bad
    scores[3, 11] = bad
    with pytest.raises(ValueError, match="2 of 5 queries"):
        target_ranks(scores, torch.ones(5, dtype=torch.long))


def test_non_finite_scores_outside_the_competition_are_allowed():
    scores = torch.randn(2, 10)
    scores[:, 0] = float("-inf")  # a model masking the padding item itself
    scores[1, 5] = float("nan")  # in the history of query 1
    target = torch.tensor([2, 3])
    history = torch.tensor([[0, 0], [5, 0]])
    expected = [
        oracle_rank(row, int(t), h)
        for row, t, h in zip(scores.tolist(), target, history.tolist(), strict=True)
    ]
    assert target_ranks(scores, target, history).tolist() == expected
    with pytest.raises(ValueError, match="1 of 2 queries"):
        target_ranks(scores, target)  # unmasked, item 5 competes again


def test_non_finite_embeddings_raise():
    query = torch.randn(3, 4)
    item_embeddings = torch.randn(30, 4)
    target = torch.tensor([1, 2, 3])
    item_embeddings[0] = float("nan")  # padding row: never scored against
    target_ranks_from_embeddings(query, item_embeddings, target, item_chunk_size=8)
    query[2, 1] = float("nan")
    with pytest.raises(ValueError, match="1 of 3 queries"):
        target_ranks_from_embeddings(query, item_embeddings, target, item_chunk_size=8)
    query[2, 1] = 0.0
    item_embeddings[17, 0] = float("inf")
    with pytest.raises(ValueError, match="3 of 3 queries"):
        target_ranks_from_embeddings(query, item_embeddings, target, item_chunk_size=8)


# --- chunked embedding path ------------------------------------------------------------------------


def oracle_rank_range(scores: list[float], target: int, history: list[int] | None) -> tuple[int, int]:
    """(items strictly above the target, items tied with it) among the eligible items."""
    excluded = (set(history or []) - {target}) | {target}
    eligible = [item for item in range(1, len(scores)) if item not in excluded]
    above = sum(scores[item] > scores[target] for item in eligible)
    return above, sum(scores[item] == scores[target] for item in eligible)


@pytest.mark.parametrize("mask_history", [False, True], ids=["all-items", "mask-history"])
def test_average_ties_give_the_expectation_over_random_tie_breaking(mask_history: bool):
    scores, target, history = make_queries(seed=7, batch=60, num_items=25, history_length=6, tied=True)
    ranges = [
        oracle_rank_range(row, int(t), h if mask_history else None)
        for row, t, h in zip(scores.tolist(), target, history.tolist(), strict=True)
    ]
    given_history = history if mask_history else None
    expected_ranks = torch.tensor([above + tied / 2 for above, tied in ranges])
    torch.testing.assert_close(target_ranks(scores, target, given_history, ties="average"), expected_ranks)
    # Each metric averaged over every rank the target takes under a random order of its ties.
    expected = {key: 0.0 for key in oracle_metrics([0], KS)}
    for above, tied in ranges:
        for key, value in oracle_metrics(list(range(above, above + tied + 1)), KS).items():
            expected[key] += value / len(ranges)
    metric = FullRankingMetrics(ks=KS, mask_history=mask_history, ties="average")
    metric.update(scores, target, history)
    assert_metrics_close(metric.compute(), expected)
    pessimistic = FullRankingMetrics(ks=KS, mask_history=mask_history)
    pessimistic.update(scores, target, history)
    assert float(pessimistic.compute()["ndcg@10"]) < float(metric.compute()["ndcg@10"])


def test_average_ties_agree_with_pessimistic_on_distinct_scores():
    scores, target, _ = make_queries(seed=8, batch=30, num_items=40, history_length=5, tied=False)
    assert torch.equal(target_ranks(scores, target, ties="average"), target_ranks(scores, target).float())


@pytest.mark.parametrize("ties", ["pessimistic", "average"])
def test_duplicated_target_embedding_ties_whatever_the_chunk_size(ties: str):
    # Every query's target has a twin item with the very same embedding: it must tie with the target
    # at every chunk size (scored apart, the twin fell on either side at random).
    generator = torch.Generator().manual_seed(9)
    num_items, hidden = 120, 16
    item_embeddings = torch.randn(num_items, hidden, generator=generator)
    query = torch.randn(300, hidden, generator=generator)
    target = torch.full((300,), 17)
    item_embeddings[93] = item_embeddings[17]
    expected = None
    for item_chunk_size in (1, 7, 16, 50, 100, 8192):
        ranks = target_ranks_from_embeddings(
            query, item_embeddings, target, item_chunk_size=item_chunk_size, ties=ties
        )
        if expected is None:
            expected = ranks
        assert torch.equal(ranks, expected), item_chunk_size
        metric = FullRankingMetrics(ks=(1,), item_chunk_size=item_chunk_size, ties=ties)
        metric.update_from_embeddings(query, item_embeddings, target)
        recall_at_1 = float(metric.compute()["recall@1"])
        # The target is never alone at the top: pessimistically never a hit; on average, a hit half
        # of the time when only its twin ties with it at the top (expected rank 0.5).
        at_top = float((ranks == 0.5).float().mean())
        assert recall_at_1 == pytest.approx(0.0 if ties == "pessimistic" else at_top / 2)
    scores = query @ item_embeddings.T
    above = ((scores > scores[:, 17:18]) & (torch.arange(num_items) != 0)).sum(1)
    twin_tie = 1 if ties == "pessimistic" else 0.5
    torch.testing.assert_close(expected.float(), above.float() + twin_tie)


@pytest.mark.parametrize("item_chunk_size", [1, 5, 64, 1000])
@pytest.mark.parametrize("with_exclusion", [False, True])
def test_chunked_topk_matches_dense_topk(item_chunk_size: int, with_exclusion: bool):
    generator = torch.Generator().manual_seed(10)
    query = torch.randn(12, 8, generator=generator)
    item_embeddings = torch.randn(90, 8, generator=generator)
    item_embeddings[0] = 100.0  # padding would win every ranking if it took part
    exclude = torch.randint(0, 90, (12, 15), generator=generator) if with_exclusion else None
    scores = query @ item_embeddings.T
    scores[:, 0] = float("-inf")
    if exclude is not None:
        scores = scores.scatter(1, exclude, float("-inf"))
    expected_scores, expected_items = scores.topk(10, dim=1)
    items, top_scores = chunked_topk(
        query, item_embeddings, 10, exclude=exclude, item_chunk_size=item_chunk_size
    )
    assert torch.equal(items, expected_items)
    torch.testing.assert_close(top_scores, expected_scores)


def test_chunked_topk_fills_with_padding_when_too_few_items_are_eligible():
    item_embeddings = torch.randn(6, 4)
    exclude = torch.tensor([[1, 2, 3, 0]])
    items, scores = chunked_topk(torch.randn(1, 4), item_embeddings, 4, exclude=exclude, item_chunk_size=2)
    assert sorted(items[0, :2].tolist()) == [4, 5]
    assert items[0, 2:].tolist() == [0, 0]
    assert torch.isneginf(scores[0, 2:]).all()
    with pytest.raises(ValueError, match="k must lie"):
        chunked_topk(torch.randn(1, 4), item_embeddings, 6)


def integer_embeddings(seed: int, batch: int, num_items: int, hidden: int) -> tuple[Tensor, Tensor]:
    """Small integer entries: every dot product is exact in float32, so both paths see identical
    scores whatever the summation order, and ties are frequent."""
    generator = torch.Generator().manual_seed(seed)
    query = torch.randint(-2, 3, (batch, hidden), generator=generator).float()
    item_embeddings = torch.randint(-2, 3, (num_items, hidden), generator=generator).float()
    return query, item_embeddings


@pytest.mark.parametrize("item_chunk_size", [1, 7, 16, 49, 50, 1000])
@pytest.mark.parametrize("mask_history", [False, True], ids=["all-items", "mask-history"])
def test_chunked_equals_dense_with_ties(item_chunk_size: int, mask_history: bool):
    query, item_embeddings = integer_embeddings(seed=3, batch=24, num_items=50, hidden=3)
    _, target, history = make_queries(seed=3, batch=24, num_items=50, history_length=6, tied=True)
    scores = query @ item_embeddings.T
    given_history = history if mask_history else None
    dense_ranks = target_ranks(scores, target, given_history)
    tied_rows = (scores.gather(1, target[:, None]) == scores).sum(1) > 1
    assert bool(tied_rows.all())  # the ties are there
    chunked_ranks = target_ranks_from_embeddings(
        query, item_embeddings, target, given_history, item_chunk_size
    )
    assert torch.equal(chunked_ranks, dense_ranks)

    dense = FullRankingMetrics(ks=KS, mask_history=mask_history)
    dense.update(scores, target, history)
    chunked = FullRankingMetrics(ks=KS, mask_history=mask_history, item_chunk_size=item_chunk_size)
    chunked.update_from_embeddings(query, item_embeddings, target, history)
    for key, value in dense.compute().items():
        assert torch.equal(chunked.compute()[key], value), key


@pytest.mark.parametrize("item_chunk_size", [13, 64, 333])
def test_chunked_equals_dense_on_float_embeddings(item_chunk_size: int):
    generator = torch.Generator().manual_seed(4)
    query = torch.randn(32, 16, generator=generator)
    item_embeddings = torch.randn(700, 16, generator=generator)
    target = torch.randint(1, 700, (32,), generator=generator)
    dense_ranks = target_ranks(query @ item_embeddings.T, target)
    chunked_ranks = target_ranks_from_embeddings(
        query, item_embeddings, target, item_chunk_size=item_chunk_size
    )
    assert torch.equal(chunked_ranks, dense_ranks)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(0, 6),
    num_items=st.integers(2, 40),
    item_chunk_size=st.integers(1, 45),
    seed=st.integers(0, 2**16),
)
def test_chunked_equals_dense_property(batch: int, num_items: int, item_chunk_size: int, seed: int):
    query, item_embeddings = integer_embeddings(seed, batch, num_items, hidden=2)
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(1, num_items, (batch,), generator=generator)
    history = torch.randint(0, num_items, (batch, 4), generator=generator)
    expected = target_ranks(query @ item_embeddings.T, target, history)
    actual = target_ranks_from_embeddings(query, item_embeddings, target, history, item_chunk_size)
    assert torch.equal(actual, expected)


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operator produces."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if isinstance(tensor, Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def test_chunked_path_never_materialises_batch_by_catalogue():
    batch, num_items, hidden, item_chunk_size = 4, 200_000, 8, 1000
    generator = torch.Generator().manual_seed(5)
    query = torch.randn(batch, hidden, generator=generator)
    item_embeddings = torch.randn(num_items, hidden, generator=generator)
    target = torch.randint(1, num_items, (batch,), generator=generator)
    history = torch.randint(0, num_items, (batch, 50), generator=generator)

    with LargestTensor() as recorder:
        chunked_ranks = target_ranks_from_embeddings(query, item_embeddings, target, history, item_chunk_size)
    # The biggest allowed: a chunk's scores with the targets' columns or its mask, b x (chunk + b + 1),
    # or a chunk of the catalogue with the targets' embeddings, (chunk + b) x d.
    assert recorder.largest <= max(batch * (item_chunk_size + batch + 1), (item_chunk_size + batch) * hidden)
    assert recorder.largest < batch * num_items
    assert torch.equal(chunked_ranks, target_ranks(query @ item_embeddings.T, target, history))


# --- accumulation, bookkeeping, errors -------------------------------------------------------------


def test_several_updates_equal_one_update_on_the_concatenation():
    query, item_embeddings = integer_embeddings(seed=6, batch=30, num_items=40, hidden=3)
    _, target, history = make_queries(seed=6, batch=30, num_items=40, history_length=5, tied=True)
    scores = query @ item_embeddings.T

    whole = FullRankingMetrics(ks=KS, mask_history=True)
    whole.update(scores, target, history)
    pieces = FullRankingMetrics(ks=KS, mask_history=True, item_chunk_size=9)
    pieces.update(scores[:7], target[:7], history[:7])
    pieces.update_from_embeddings(query[7:19], item_embeddings, target[7:19], history[7:19])
    pieces.update(scores[19:19], target[19:19], history[19:19])  # an empty batch adds nothing
    pieces.update(scores[19:], target[19:], history[19:])
    for state in ("hits", "ndcg_sum", "reciprocal_rank_sum", "count"):
        assert torch.allclose(getattr(pieces, state), getattr(whole, state)), state
    for key, value in whole.compute().items():
        assert torch.allclose(pieces.compute()[key], value), key


def test_update_from_embeddings_alone_needs_no_update_call_and_refreshes_compute():
    generator = torch.Generator().manual_seed(7)
    query, item_embeddings = torch.randn(10, 4, generator=generator), torch.randn(20, 4, generator=generator)
    target = torch.arange(1, 11)
    expected_first, expected_second = FullRankingMetrics(ks=(1, 5)), FullRankingMetrics(ks=(1, 5))
    expected_first.update(query[:5] @ item_embeddings.T, target[:5])
    expected_second.update(query @ item_embeddings.T, target)
    expected_first, expected_second = expected_first.compute(), expected_second.compute()
    # A stale compute would show: the two halves differ.
    assert any(not torch.equal(expected_first[key], expected_second[key]) for key in expected_first)

    metric = FullRankingMetrics(ks=(1, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "compute called before update" warning
        metric.update_from_embeddings(query[:5], item_embeddings, target[:5])
        first = metric.compute()
        metric.update_from_embeddings(query[5:], item_embeddings, target[5:])
        second = metric.compute()
    for key in expected_first:
        assert torch.equal(first[key], expected_first[key]), key
        assert torch.equal(second[key], expected_second[key]), key


def test_reset_clears_the_states():
    metric = FullRankingMetrics(ks=(5,))
    metric.update(torch.randn(3, 10), torch.tensor([1, 2, 3]))
    metric.reset()
    metric.update(torch.zeros(1, 10), torch.tensor([4]))
    assert int(metric.count) == 1
    assert float(metric.compute()["recall@5"]) == 0.0  # constant scores: rank 8


def test_compute_without_queries_raises():
    metric = FullRankingMetrics()
    metric.update(torch.zeros(0, 10), torch.zeros(0, dtype=torch.long))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="no queries were added"):
            metric.compute()


@pytest.mark.parametrize(
    ("scores", "target", "history", "message"),
    [
        (torch.randn(2, 10), torch.tensor([0, 1]), None, "target ids must lie in"),
        (torch.randn(2, 10), torch.tensor([1, 10]), None, "target ids must lie in"),
        (torch.randn(2, 10), torch.tensor([1.0, 2.0]), None, "long"),
        (torch.randn(2, 10), torch.tensor([1, 2, 3]), None, "target must be"),
        (torch.randn(10), torch.tensor([1]), None, "scores must be"),
        (torch.randn(2, 10), torch.tensor([1, 2]), torch.tensor([[1, 10], [0, 0]]), "history ids"),
        (torch.randn(2, 10), torch.tensor([1, 2]), torch.tensor([1, 2]), "history must be"),
    ],
)
def test_invalid_inputs_are_named(scores, target, history, message):
    with pytest.raises(ValueError, match=message):
        target_ranks(scores, target, history)


def test_invalid_configuration_is_named():
    with pytest.raises(ValueError, match="cutoffs"):
        FullRankingMetrics(ks=(5, 5))
    with pytest.raises(ValueError, match="cutoffs"):
        FullRankingMetrics(ks=(0, 5))
    with pytest.raises(ValueError, match="item_chunk_size"):
        FullRankingMetrics(item_chunk_size=0)
    with pytest.raises(ValueError, match="needs the history"):
        FullRankingMetrics(mask_history=True).update(torch.randn(2, 10), torch.tensor([1, 2]))


# --- DDP -------------------------------------------------------------------------------------------


def load_ddp_script():
    spec = importlib.util.spec_from_file_location("ddp_metric_script", DDP_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ddp_on_two_processes_equals_single_process(tmp_path: Path, ddp_env: dict[str, str]):
    out_json = tmp_path / "ddp_metrics.json"
    completed = subprocess.run(
        [sys.executable, str(DDP_SCRIPT), str(out_json)],
        env=ddp_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    result = json.loads(out_json.read_text())

    script = load_ddp_script()
    half = script.NUM_QUERIES // 2
    assert result["world_size"] == 2
    assert result["local_counts"] == [half, half]  # each process saw half, so the sync mattered
    assert result["synced_count"] == script.NUM_QUERIES  # states are summed, not averaged

    data = script.make_data()
    single = FullRankingMetrics(ks=script.KS, mask_history=True)
    single.update(data["query"] @ data["item_embeddings"].T, data["target"], data["history"])
    expected = {key: float(value) for key, value in single.compute().items()}
    assert result["dense"] == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert result["chunked"] == pytest.approx(expected, rel=1e-6, abs=1e-7)
