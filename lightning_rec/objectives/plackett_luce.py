"""Plackett-Luce rankings: log-probability, Gumbel-trick sampling, NDCG rewards and per-candidate credit.

Reasoning to Rank (arXiv 2602.12530) turns one score per candidate into a distribution over rankings,
so that a listwise reward (NDCG of a sampled ranking) can train whatever produced the scores.

Axis legend:
    b  lists (users, queries)
    n  candidates of a list (padded lists: ``mask`` False on padding)
    k  rankings sampled per list
    g  score vectors per list (e.g. g sets of rationales of one user, each scoring the n candidates)

- Plackett-Luce (Plackett 1975, Luce 1959): a ranking pi (candidate indices, best first) has
  P(pi | s) = prod_{j=1}^{n} exp(s_{pi_j}) / sum_{l >= j} exp(s_{pi_l}). Padded candidates take no
  part: they must come after every real candidate in ``rankings`` and contribute no factor.
- Gumbel trick (Yellott 1977; Kool et al., arXiv 1903.06059, Sec. 2): sorting s_i + G_i with G_i
  i.i.d. standard Gumbel, descending, draws a ranking from PL(s) exactly.
- NDCG (Jarvelin & Kekalainen 2002) with exponential gains: DCG@K(pi) = sum_{j <= K}
  (2^{rel(pi_j)} - 1) / log2(j + 1), divided by the DCG of the ideal order. With one relevant candidate
  (the protocol's 1 positive) it is 1 / log2(1 + rank of the positive), 0 beyond K.
- REINFORCE for the scores (Williams 1992; the head's update in R2R): grad E_pi[R] =
  E_pi[(R - baseline) grad log P(pi | s)], with the mean reward of the k samples of a list as baseline.
- Per-candidate credit (the advantage of the rationale that produced s_i), selectable, ours where the
  paper states no formula:
  "marginal": the contribution of candidate i's score to the expected NDCG of its list,
  E[NDCG | s] - E[NDCG | s with s_i replaced by the mean real score of the list], both expectations by
  Monte Carlo over the same Gumbel draws (common random numbers: the difference has far lower
  variance than either term). A high score of the positive or a low score of a negative earns
  positive credit; a neutral score earns none.
  "zscore": every rationale of a list gets its list's reward (expected NDCG under PL), z-scored over
  the g lists of the same user (GRPO's group advantage, arXiv 2402.03300, Sec. 4.1.2).
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange, reduce, repeat
from torch import Tensor

from lightning_rec.objectives.grpo import group_advantages

__all__ = [
    "CREDITS",
    "Credit",
    "candidate_credit",
    "expected_ndcg",
    "plackett_luce_log_prob",
    "plackett_luce_reinforce_loss",
    "ranking_ndcg",
    "sample_plackett_luce",
]

Credit = Literal["marginal", "zscore"]
CREDITS: tuple[str, ...] = ("marginal", "zscore")


def _check_scores(scores: Tensor, mask: Tensor | None) -> Tensor:
    """The mask as bool ``b n`` (all True when None), after checking shapes and that no list is empty."""
    if scores.dim() != 2:
        raise ValueError(f"scores must have shape (b n) = (lists, candidates), got {tuple(scores.shape)}")
    if mask is None:
        return torch.ones_like(scores, dtype=torch.bool)
    if mask.shape != scores.shape:
        raise ValueError(f"mask must have the shape of scores {tuple(scores.shape)}, got {tuple(mask.shape)}")
    mask = mask.bool()
    if not bool(mask.any(dim=1).all()):
        raise ValueError("every list needs at least one real candidate (a mask row is all False)")
    return mask


def _as_samples(rankings: Tensor, b: int, n: int) -> tuple[Tensor, bool]:
    """Rankings as ``b k n`` and whether they came as ``b n`` (one ranking per list)."""
    if rankings.dim() == 2 and rankings.shape == (b, n):
        return rearrange(rankings, "b n -> b 1 n"), True
    if rankings.dim() == 3 and rankings.shape[0] == b and rankings.shape[2] == n:
        return rankings, False
    raise ValueError(
        f"rankings must have shape (b n) = {(b, n)} or (b k n) = ({b}, k, {n}), got {tuple(rankings.shape)}"
    )


def plackett_luce_log_prob(scores: Tensor, rankings: Tensor, mask: Tensor | None = None) -> Tensor:
    """log P(pi | s) under Plackett-Luce, for one or several rankings per list.

    Args:
        scores: `b n` real-valued scores (any dtype; computed in fp32 or fp64).
        rankings: `b n` or `b k n` long, each row a permutation of 0..n-1, best first; padded
            candidates (``mask`` False) must come after all real ones.
        mask: `b n` bool, True on real candidates; None means all real.

    Returns:
        `b` (for `b n` rankings) or `b k` log-probabilities, with gradient w.r.t. ``scores``.
    """
    mask = _check_scores(scores, mask)
    b, n = scores.shape
    samples, single = _as_samples(rankings, b, n)
    k = samples.shape[1]
    real_in_order = mask.gather(1, rearrange(samples, "b k n -> b (k n)")).view(b, k, n)
    # Real candidates first: once a padded one appears, no real one may follow.
    if bool((real_in_order[..., 1:] & ~real_in_order[..., :-1]).any()):
        raise ValueError("rankings must place every padded candidate (mask False) after all real candidates")
    work = scores.double() if scores.dtype == torch.float64 else scores.float()
    ordered = repeat(work, "b n -> b k n", k=k).gather(2, samples)
    ordered = ordered.masked_fill(~real_in_order, float("-inf"))
    # log sum_{l >= j} exp(s_{pi_l}): a reversed cumulative logsumexp.
    tail = ordered.flip(-1).logcumsumexp(-1).flip(-1)
    terms = torch.where(real_in_order, ordered - tail, torch.zeros_like(ordered))
    log_prob = reduce(terms, "b k n -> b k", "sum")
    return rearrange(log_prob, "b 1 -> b") if single else log_prob


@torch.no_grad()
def sample_plackett_luce(
    scores: Tensor, num_samples: int, mask: Tensor | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Draw rankings from PL(scores) by the Gumbel trick, without gradient.

    Args:
        scores: `b n`.
        num_samples: k rankings per list.
        mask: `b n` bool, True on real candidates; padded ones are placed last.
        generator: the random source.

    Returns:
        `b k n` long rankings (candidate indices, best first).
    """
    mask = _check_scores(scores, mask)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    b, n = scores.shape
    uniform = torch.rand(b, num_samples, n, generator=generator, device=scores.device, dtype=torch.float64)
    # Gumbel(0, 1) = -log(-log U); U is kept off 0 so that no draw is infinite.
    gumbel = -torch.log(-torch.log(uniform.clamp(min=torch.finfo(torch.float64).tiny)))
    perturbed = repeat(scores.double(), "b n -> b k n", k=num_samples) + gumbel
    perturbed = perturbed.masked_fill(~rearrange(mask, "b n -> b 1 n"), float("-inf"))
    return perturbed.argsort(dim=-1, descending=True, stable=True)


def ranking_ndcg(
    rankings: Tensor, relevance: Tensor, mask: Tensor | None = None, cutoff: int | None = None
) -> Tensor:
    """NDCG@cutoff of rankings, with exponential gains 2^rel - 1.

    Args:
        rankings: `b n` or `b k n` long permutations, best first.
        relevance: `b n` graded relevance >= 0 (0/1 for the protocol's one positive).
        mask: `b n` bool, True on real candidates (padded ones have no gain); None means all real.
        cutoff: K; None means the whole list.

    Returns:
        `b` or `b k` NDCG in [0, 1] (0 for a list without any relevant candidate).
    """
    mask = _check_scores(relevance, mask)
    b, n = relevance.shape
    samples, single = _as_samples(rankings, b, n)
    if cutoff is not None and cutoff < 1:
        raise ValueError(f"cutoff must be >= 1 or None, got {cutoff}")
    if bool((relevance < 0).any()):
        raise ValueError("relevance must be >= 0")
    gains = (torch.exp2(relevance.double()) - 1.0) * mask
    discounts = 1.0 / torch.log2(torch.arange(n, device=relevance.device, dtype=torch.float64) + 2.0)
    if cutoff is not None:
        discounts[cutoff:] = 0.0
    k = samples.shape[1]
    dcg = reduce(repeat(gains, "b n -> b k n", k=k).gather(2, samples) * discounts, "b k n -> b k", "sum")
    ideal = reduce(gains.sort(dim=1, descending=True).values * discounts, "b n -> b 1", "sum")
    ndcg = torch.where(
        ideal > 0, dcg / ideal.clamp(min=torch.finfo(torch.float64).tiny), torch.zeros_like(dcg)
    )
    ndcg = ndcg.to(relevance.dtype if relevance.is_floating_point() else torch.float32)
    return rearrange(ndcg, "b 1 -> b") if single else ndcg


def expected_ndcg(
    scores: Tensor,
    relevance: Tensor,
    mask: Tensor | None = None,
    cutoff: int | None = None,
    num_samples: int = 64,
    generator: torch.Generator | None = None,
) -> Tensor:
    """`b` Monte-Carlo estimate of E_{pi ~ PL(scores)}[NDCG@cutoff(pi)] from ``num_samples`` rankings
    (scores, relevance, mask `b n`); no gradient."""
    rankings = sample_plackett_luce(scores, num_samples, mask, generator)
    return reduce(ranking_ndcg(rankings, relevance, mask, cutoff), "b k -> b", "mean")


def plackett_luce_reinforce_loss(
    scores: Tensor, rankings: Tensor, rewards: Tensor, mask: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """REINFORCE with a mean baseline on sampled rankings: the head's loss in R2R.

    loss = -mean_{b,k} (R_bk - mean_k R_bk) log P(pi_bk | s_b). Its gradient is an unbiased estimate
    of -grad E[R] (times (k-1)/k: each sample's baseline includes itself).

    Args:
        scores: `b n` with gradient.
        rankings: `b k n` sampled from PL(scores) (detached), k >= 2.
        rewards: `b k` the reward of each ranking (e.g. :func:`ranking_ndcg`).
        mask: `b n` bool, True on real candidates.

    Returns:
        The scalar loss and diagnostics "reward_mean" and "advantage_abs_mean" (detached).
    """
    b, n = scores.shape
    if rankings.dim() != 3 or rankings.shape[0] != b or rankings.shape[2] != n:
        raise ValueError(f"rankings must have shape (b k n) = ({b}, k, {n}), got {tuple(rankings.shape)}")
    if rewards.shape != rankings.shape[:2]:
        raise ValueError(
            f"rewards must have shape (b k) = {tuple(rankings.shape[:2])}, got {tuple(rewards.shape)}"
        )
    if rankings.shape[1] < 2:
        raise ValueError("need k >= 2 rankings per list: a single sample is its own baseline")
    rewards = rewards.detach().double() if scores.dtype == torch.float64 else rewards.detach().float()
    advantages = rewards - reduce(rewards, "b k -> b 1", "mean")
    log_prob = plackett_luce_log_prob(scores, rankings, mask)
    loss = -(advantages * log_prob).mean()
    return loss, {"reward_mean": rewards.mean(), "advantage_abs_mean": advantages.abs().mean()}


def candidate_credit(
    scores: Tensor,
    relevance: Tensor,
    mask: Tensor | None = None,
    method: Credit = "marginal",
    cutoff: int | None = None,
    num_samples: int = 64,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Each candidate's credit (the advantage of the rationale behind its score), see the module docstring.

    Args:
        scores: `b g n` g score vectors per list (g sets of rationales of the same user).
        relevance: `b n` graded relevance of the candidates.
        mask: `b n` bool, True on real candidates; None means all real.
        method: ``"marginal"`` (any g) or ``"zscore"`` (g >= 2).
        cutoff: NDCG's K; None means the whole list.
        num_samples: Gumbel draws per expectation.
        generator: the random source.

    Returns:
        credit `b g n` (0 on padding) and the list rewards `b g` (expected NDCG of each score vector),
        both without gradient.
    """
    if method not in CREDITS:
        raise ValueError(f"method must be one of {CREDITS}, got {method!r}")
    if scores.dim() != 3 or scores.shape[0] != relevance.shape[0] or scores.shape[2] != relevance.shape[-1]:
        raise ValueError(
            f"scores must have shape (b g n) with (b n) = {tuple(relevance.shape)} of relevance, "
            f"got {tuple(scores.shape)}"
        )
    mask = _check_scores(relevance, mask)
    b, g, n = scores.shape
    if method == "zscore" and g < 2:
        raise ValueError("credit 'zscore' needs g >= 2 score vectors per list (the group of its z-score)")
    scores = scores.detach().double()
    real = rearrange(mask, "b n -> b 1 n")
    uniform = torch.rand(b, g, num_samples, n, generator=generator, device=scores.device, dtype=torch.float64)
    # Gumbel(0, 1) = -log(-log U), shared by every (counterfactual) copy of a score vector.
    gumbel = rearrange(
        -torch.log(-torch.log(uniform.clamp(min=torch.finfo(torch.float64).tiny))), "b g k n -> b g 1 k n"
    )

    def mean_ndcg(vectors: Tensor) -> Tensor:
        """vectors `b g c n` -> `b g c` expected NDCG over the shared draws."""
        c = vectors.shape[2]
        perturbed = (rearrange(vectors, "b g c n -> b g c 1 n") + gumbel).masked_fill(
            ~rearrange(mask, "b n -> b 1 1 1 n"), float("-inf")
        )
        order = rearrange(perturbed.argsort(dim=-1, descending=True, stable=True), "b g c k n -> b (g c k) n")
        ndcg = ranking_ndcg(order, relevance.double(), mask, cutoff)
        return reduce(ndcg, "b (g c k) -> b g c", "mean", g=g, c=c)

    list_rewards = rearrange(mean_ndcg(rearrange(scores, "b g n -> b g 1 n")), "b g 1 -> b g")
    if method == "zscore":
        credit = rearrange(group_advantages(list_rewards), "b g -> b g 1") * real
        return credit.float(), list_rewards.float()
    # Counterfactual copies: in copy i, candidate i's score is the list's mean real score. The same
    # Gumbel draws rank every copy (common random numbers), so only candidate i's change shows.
    neutral = reduce(scores * real, "b g n -> b g 1", "sum") / reduce(real.double(), "b 1 n -> b 1 1", "sum")
    eye = torch.eye(n, dtype=torch.bool, device=scores.device)
    counterfactual = torch.where(
        eye, rearrange(neutral, "b g 1 -> b g 1 1"), rearrange(scores, "b g n -> b g 1 n")
    )
    credit = (rearrange(list_rewards, "b g -> b g 1") - mean_ndcg(counterfactual)) * real
    return credit.float(), list_rewards.float()
