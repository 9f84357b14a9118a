"""Plackett-Luce objectives against brute-force enumeration of every permutation (n <= 5)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from lightning_rec.objectives import (
    candidate_credit,
    expected_ndcg,
    plackett_luce_log_prob,
    plackett_luce_reinforce_loss,
    ranking_ndcg,
    sample_plackett_luce,
)


def brute_force_probability(scores: list[float], ranking: tuple[int, ...]) -> float:
    """P(ranking) as the product of successive softmax choices among the candidates left."""
    probability, left = 1.0, list(ranking)
    for chosen in ranking:
        probability *= math.exp(scores[chosen]) / sum(math.exp(scores[i]) for i in left)
        left.remove(chosen)
    return probability


def exact_expected_ndcg(
    scores: torch.Tensor, relevance: list[float], cutoff: int | None = None
) -> torch.Tensor:
    """E[NDCG] by enumeration, differentiable in ``scores`` (n,)."""
    n = len(relevance)
    rankings = torch.tensor(list(itertools.permutations(range(n))))
    log_probs = plackett_luce_log_prob(scores.expand(len(rankings), n), rankings)
    ndcg = ranking_ndcg(
        rankings, torch.tensor([relevance] * len(rankings), dtype=torch.float64), cutoff=cutoff
    )
    return (log_probs.exp() * ndcg).sum()


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_log_prob_equals_enumeration_and_sums_to_one(n):
    generator = torch.Generator().manual_seed(n)
    scores = torch.randn(1, n, generator=generator, dtype=torch.float64) * 2
    rankings = list(itertools.permutations(range(n)))
    log_probs = plackett_luce_log_prob(scores.expand(len(rankings), n), torch.tensor(rankings))
    expected = torch.tensor(
        [math.log(brute_force_probability(scores[0].tolist(), r)) for r in rankings], dtype=torch.float64
    )
    torch.testing.assert_close(log_probs, expected, rtol=1e-10, atol=1e-10)
    assert log_probs.exp().sum().item() == pytest.approx(1.0, abs=1e-12)
    # Several rankings per list (b k n) give the same values.
    stacked = plackett_luce_log_prob(scores, torch.tensor(rankings)[None])
    torch.testing.assert_close(stacked[0], log_probs)


def test_padding_changes_nothing():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(1, 3, generator=generator, dtype=torch.float64)
    padded = torch.cat([scores, torch.tensor([[50.0, -7.0]], dtype=torch.float64)], dim=1)
    mask = torch.tensor([[True, True, True, False, False]])
    for ranking in itertools.permutations(range(3)):
        plain = plackett_luce_log_prob(scores, torch.tensor([ranking]))
        with_padding = plackett_luce_log_prob(padded, torch.tensor([[*ranking, 4, 3]]), mask)
        torch.testing.assert_close(plain, with_padding)
    with pytest.raises(ValueError, match="padded candidate"):
        plackett_luce_log_prob(padded, torch.tensor([[0, 3, 1, 2, 4]]), mask)
    samples = sample_plackett_luce(padded, 200, mask, torch.Generator().manual_seed(1))
    assert set(samples[0, :, 3:].flatten().tolist()) == {3, 4}


def test_gumbel_sampling_matches_plackett_luce_marginals():
    """First-position and pairwise-order frequencies of 40,000 Gumbel draws vs exact enumeration.

    Each frequency is a binomial proportion; 5 standard errors (plus a floor for p near 0 or 1) bound
    every one of the 4 + 6 checks with overwhelming probability for a correct sampler, while a sampler
    off by a few points of probability fails.
    """
    scores = torch.tensor([[1.2, -0.3, 0.4, 2.0]], dtype=torch.float64)
    n, draws = 4, 40_000
    rankings = list(itertools.permutations(range(n)))
    probability = {r: brute_force_probability(scores[0].tolist(), r) for r in rankings}
    samples = sample_plackett_luce(scores, draws, generator=torch.Generator().manual_seed(0))[0]

    def bound(p: float) -> float:
        return 5 * math.sqrt(max(p * (1 - p), 1e-4) / draws)

    for item in range(n):
        exact = sum(p for r, p in probability.items() if r[0] == item)
        observed = (samples[:, 0] == item).double().mean().item()
        assert abs(observed - exact) < bound(exact), (item, observed, exact)
    positions = samples.argsort(dim=1)  # position of each candidate in each draw
    for i, j in itertools.combinations(range(n), 2):
        exact = sum(p for r, p in probability.items() if r.index(i) < r.index(j))
        observed = (positions[:, i] < positions[:, j]).double().mean().item()
        assert abs(observed - exact) < bound(exact), (i, j, observed, exact)


def test_ndcg_by_hand():
    relevance = torch.tensor([[0.0, 1.0, 0.0, 2.0]])
    ranking = torch.tensor([[1, 3, 0, 2]])
    # DCG = (2^1 - 1)/log2(2) + (2^2 - 1)/log2(3); ideal = 3/log2(2) + 1/log2(3).
    dcg = 1.0 + 3.0 / math.log2(3)
    ideal = 3.0 + 1.0 / math.log2(3)
    assert ranking_ndcg(ranking, relevance).item() == pytest.approx(dcg / ideal, rel=1e-6)
    assert ranking_ndcg(ranking, relevance, cutoff=1).item() == pytest.approx(1.0 / 3.0, rel=1e-6)
    # One positive at rank 3 (0-based position 2): 1 / log2(4) = 0.5; beyond a cutoff of 2: 0.
    one = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    assert ranking_ndcg(torch.tensor([[0, 1, 2, 3]]), one).item() == pytest.approx(0.5)
    assert ranking_ndcg(torch.tensor([[0, 1, 2, 3]]), one, cutoff=2).item() == 0.0
    # No relevant candidate: 0, not NaN.
    assert ranking_ndcg(ranking, torch.zeros(1, 4)).item() == 0.0


def test_expected_ndcg_matches_enumeration():
    scores = torch.tensor([0.5, -1.0, 1.5, 0.0], dtype=torch.float64)
    relevance = [0.0, 1.0, 0.0, 0.0]
    exact = exact_expected_ndcg(scores, relevance).item()
    estimate = expected_ndcg(
        scores[None],
        torch.tensor([relevance]),
        num_samples=40_000,
        generator=torch.Generator().manual_seed(0),
    ).item()
    # NDCG lies in [0, 1]: its standard error is at most 0.5 / sqrt(40,000) = 0.0025.
    assert estimate == pytest.approx(exact, abs=5 * 0.0025)


def test_reinforce_gradient_estimates_the_gradient_of_expected_ndcg():
    scores = torch.tensor([0.3, -0.5, 1.0, 0.2], dtype=torch.float64)
    relevance = [0.0, 1.0, 0.0, 0.0]
    variable = scores.clone().requires_grad_()
    (exact,) = torch.autograd.grad(exact_expected_ndcg(variable, relevance), variable)
    leaf = scores[None].clone().requires_grad_()
    k = 40_000
    rankings = sample_plackett_luce(leaf, k, generator=torch.Generator().manual_seed(0))
    rewards = ranking_ndcg(rankings, torch.tensor([relevance], dtype=torch.float64))
    loss, diagnostics = plackett_luce_reinforce_loss(leaf, rankings, rewards)
    (estimate,) = torch.autograd.grad(loss, leaf)
    # -grad loss = (k - 1) / k * grad E[NDCG] in expectation (the mean baseline includes the sample).
    torch.testing.assert_close(-estimate[0] * k / (k - 1), exact, atol=0.01, rtol=0.0)
    assert diagnostics["reward_mean"].item() == pytest.approx(
        exact_expected_ndcg(scores, relevance).item(), abs=0.015
    )


def test_marginal_credit_matches_enumeration():
    scores = torch.tensor([[[2.0, -1.0, 0.5, 0.0, -0.5]]], dtype=torch.float64)
    relevance = [1.0, 0.0, 0.0, 0.0, 0.0]
    credit, rewards = candidate_credit(
        scores, torch.tensor([relevance]), num_samples=20_000, generator=torch.Generator().manual_seed(0)
    )
    base = exact_expected_ndcg(scores[0, 0], relevance)
    neutral = scores[0, 0].mean()
    for i in range(5):
        counterfactual = scores[0, 0].clone()
        counterfactual[i] = neutral
        exact = (base - exact_expected_ndcg(counterfactual, relevance)).item()
        assert credit[0, 0, i].item() == pytest.approx(exact, abs=0.01), i
    assert rewards[0, 0].item() == pytest.approx(base.item(), abs=0.01)
    # The positive's high score helped, the strongest negative's hurt: their credits have those signs.
    assert credit[0, 0, 0] > 0.05 and credit[0, 0, 2] < 0


def test_marginal_credit_is_zero_on_padding_and_for_a_neutral_score():
    scores = torch.tensor([[[1.0, 0.0, -1.0, 9.0]]])
    mask = torch.tensor([[True, True, True, False]])
    credit, _ = candidate_credit(scores, torch.tensor([[0.0, 1.0, 0.0, 0.0]]), mask, num_samples=256)
    # Candidate 1's score is the mean real score: replacing it by the mean changes no ranking.
    assert credit[0, 0, 1].item() == 0.0 and credit[0, 0, 3].item() == 0.0


def test_zscore_credit_is_the_group_advantage_of_the_list_rewards():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 3, 4, generator=generator)
    relevance = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]])
    credit, rewards = candidate_credit(
        scores, relevance, method="zscore", num_samples=128, generator=generator
    )
    assert credit.shape == (2, 3, 4)
    # Every candidate of a list shares its list's credit; credits are centred over the group.
    torch.testing.assert_close(credit, credit[..., :1].expand_as(credit))
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    torch.testing.assert_close(credit[..., 0], centred / (rewards.std(dim=1, keepdim=True) + 1e-4))
    with pytest.raises(ValueError, match="g >= 2"):
        candidate_credit(scores[:, :1], relevance, method="zscore")
