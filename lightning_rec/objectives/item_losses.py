"""Next-item losses whose memory does not grow with the catalogue.

A next-item recommender scores ``m`` supervised positions against a catalogue of ``i`` items. The
full-softmax cross-entropy builds the ``(m i)`` logit matrix: at 128 windows x 50 positions and 10^6
items that is 25 GB. The losses here avoid it:

- :func:`chunked_cross_entropy`: the *exact* full-softmax CE, computed ``chunk_size`` items at a time
  (a running log-sum-exp) with a backward pass that recomputes each chunk's logits instead of storing
  them (the idea of Wijmans et al., "Cut Your Losses in Large-Vocabulary Language Models",
  arXiv 2411.09009). Memory ``O(m * chunk_size)``; loss and gradients equal the full CE's.
- :func:`sampled_softmax_loss`: softmax over the positive, in-batch positives of other positions and
  shared sampled negatives, each sampled logit corrected by ``-log Q`` (the expected number of times
  the item is a candidate) so that the sampled softmax is a consistent estimate of the full one
  (Bengio & Senecal 2008; Yi et al., RecSys 2019, "Sampling-bias-corrected neural modeling";
  the mixture of in-batch and sampled negatives as in Yang et al., WWW 2020, "Mixed negative
  sampling").
- :func:`gbce_loss`: gSASRec's generalised binary cross-entropy (Petrov & Macdonald, RecSys 2023,
  arXiv 2308.07192; the formula of the authors' gSASRec-pytorch), which calibrates BCE with few
  negatives against overconfidence.
- :func:`bce_loss`: SASRec's binary cross-entropy with sampled negatives (arXiv 1808.09781, Section III-C).

Item index 0 is the padding item everywhere: it is never a candidate.

Axes: m supervised positions, d hidden, i items (padding row 0 included), c items of one chunk,
g negatives, u candidates (in-batch positives and sampled negatives).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = [
    "bce_loss",
    "chunked_cross_entropy",
    "gbce_beta",
    "gbce_loss",
    "log_expected_candidate_count",
    "sampled_softmax_loss",
    "uninformed_logit",
]


# --------------------------------------------------------------------------- exact chunked CE
class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean over ``m`` of ``logsumexp_{j >= 1}(h_m . e_j) - h_m . e_{t_m}``, chunk by chunk."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, hidden: Tensor, item_embeddings: Tensor, targets: Tensor, chunk_size: int
    ) -> Tensor:
        num_items = len(item_embeddings)
        running_max = torch.full((len(hidden),), float("-inf"), dtype=hidden.dtype, device=hidden.device)
        running_sum = torch.zeros_like(running_max)
        # Item 0 (padding) is never a candidate, so the chunks start at item 1 and every chunk holds a
        # real item: the running max is finite after the first chunk.
        for start in range(1, num_items, chunk_size):
            logits = hidden @ item_embeddings[start : start + chunk_size].T  # (m c)
            new_max = torch.maximum(running_max, logits.max(1).values)
            # Online log-sum-exp: rescale the sum so far to the new maximum before adding this chunk.
            running_sum = running_sum * torch.exp(running_max - new_max) + torch.exp(
                logits - rearrange(new_max, "m -> m 1")
            ).sum(1)
            running_max = new_max
        log_normaliser = running_max + torch.log(running_sum)  # (m)
        target_logits = torch.einsum("md,md->m", hidden, item_embeddings[targets])
        ctx.save_for_backward(hidden, item_embeddings, targets, log_normaliser)
        ctx.chunk_size = chunk_size
        return (log_normaliser - target_logits).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_loss: Tensor) -> tuple[Tensor, Tensor, None, None]:
        hidden, item_embeddings, targets, log_normaliser = ctx.saved_tensors
        scale = grad_loss / len(hidden)
        # d loss / d logit = (softmax - one_hot(target)) / m. The one-hot part first (a gather and an
        # index_add), then the softmax part chunk by chunk, from logits recomputed rather than stored.
        grad_hidden = -scale * item_embeddings[targets]
        grad_items = torch.zeros_like(item_embeddings)
        grad_items.index_add_(0, targets, -scale * hidden)
        for start in range(1, len(item_embeddings), ctx.chunk_size):
            chunk = item_embeddings[start : start + ctx.chunk_size]  # (c d)
            probabilities = torch.exp(hidden @ chunk.T - rearrange(log_normaliser, "m -> m 1")) * scale
            grad_hidden += probabilities @ chunk
            grad_items[start : start + len(chunk)] += probabilities.T @ hidden
        return grad_hidden, grad_items, None, None


def chunked_cross_entropy(
    hidden: Tensor, item_embeddings: Tensor, targets: Tensor, chunk_size: int = 8192
) -> Tensor:
    """Full-softmax cross-entropy over items ``1..i-1`` without the ``(m i)`` logit matrix.

    Equals ``F.cross_entropy(logits, targets)`` with ``logits = hidden @ item_embeddings.T`` and
    column 0 (padding) at ``-inf``, for the loss and for the gradients of ``hidden`` and
    ``item_embeddings``, to float rounding. The forward pass keeps a running log-sum-exp over
    chunks of ``chunk_size`` items; the backward pass recomputes each chunk's logits. Peak memory is
    ``O(m * chunk_size)`` on top of the inputs and their gradients; time is about 4/3 of the full CE's
    (one extra ``(m d) x (d c)`` product per chunk).

    Args:
        hidden: ``(m d)`` the sequence encoder's output at the supervised positions.
        item_embeddings: ``(i d)`` the output embedding of every item, row 0 the padding item.
        targets: ``(m)`` long, the next item of each position, in ``[1, i)``.
        chunk_size: items scored at a time.

    Returns:
        The scalar mean cross-entropy over the ``m`` positions.
    """
    _check_inputs(hidden, item_embeddings, targets)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return _ChunkedCrossEntropy.apply(hidden, item_embeddings, targets, chunk_size)


# --------------------------------------------------------------------------- sampled softmax
def sampled_softmax_loss(
    hidden: Tensor,
    item_embeddings: Tensor,
    targets: Tensor,
    negatives: Tensor,
    log_expected_count: Tensor,
    in_batch: bool = True,
) -> Tensor:
    """Sampled softmax with the logQ correction, over in-batch positives and shared sampled negatives.

    Each position's softmax runs over its positive and the candidates ``u``: the targets of every
    position of the batch (``in_batch``) followed by ``negatives``. A candidate's logit is corrected
    to ``h . e_j - log Q_j``, where ``Q_j`` (``log_expected_count``) is the expected number of times
    item ``j`` is among the candidates; the positive's logit is kept exact. The softmax's normaliser
    is then an importance-sampling estimate of the full one, ``e^{s_t} + sum_{j != t} e^{s_j}``
    (Bengio & Senecal 2008), so loss and gradient approach the full CE's as candidates grow, whatever
    the sampling distribution (without the correction, popular negatives are over-counted:
    Yi et al. 2019). A candidate equal to the position's own target (the position itself in the
    batch, or an accidental hit) is removed, since the positive is counted exactly once.

    For in-batch positives drawn from the data distribution ``p`` and ``g`` negatives drawn from ``q``,
    ``Q_j = m p_j + g q_j`` (Yang et al. 2020, mixed negative sampling;
    :func:`log_expected_candidate_count`).

    Args:
        hidden: ``(m d)`` encoder outputs at the supervised positions.
        item_embeddings: ``(i d)``, row 0 the padding item.
        targets: ``(m)`` long, in ``[1, i)``.
        negatives: ``(g)`` long sampled negatives in ``[1, i)``, shared by all positions.
        log_expected_count: ``(i)`` float, ``log Q_j`` for every item.
        in_batch: use the other positions' targets as negatives too.

    Returns:
        The scalar mean loss over the ``m`` positions.
    """
    _check_inputs(hidden, item_embeddings, targets)
    if negatives.dim() != 1 or negatives.dtype != torch.long:
        raise ValueError(
            f"negatives must be a 1-d long tensor, got {negatives.dtype} {tuple(negatives.shape)}"
        )
    if log_expected_count.shape != (len(item_embeddings),):
        raise ValueError(
            f"log_expected_count must hold one value per item, shape ({len(item_embeddings)},), "
            f"got {tuple(log_expected_count.shape)}"
        )
    candidates = torch.cat([targets, negatives]) if in_batch else negatives  # (u)
    if len(candidates) == 0:
        raise ValueError("sampled_softmax_loss needs candidates: in_batch=True or at least one negative")
    positive_logits = torch.einsum("md,md->m", hidden, item_embeddings[targets])
    candidate_logits = hidden @ item_embeddings[candidates].T - log_expected_count[candidates]  # (m u)
    own_target = rearrange(candidates, "u -> 1 u") == rearrange(targets, "m -> m 1")
    candidate_logits = candidate_logits.masked_fill(own_target, float("-inf"))
    logits = torch.cat([rearrange(positive_logits, "m -> m 1"), candidate_logits], dim=1)  # (m 1+u)
    return F.cross_entropy(logits, torch.zeros_like(targets))


def log_expected_candidate_count(
    item_probability: Tensor, num_in_batch: int, negative_probability: Tensor, num_negatives: int
) -> Tensor:
    """``(i)`` ``log Q_j`` of :func:`sampled_softmax_loss`: ``Q_j = num_in_batch p_j + num_negatives q_j``.

    Args:
        item_probability: ``(i)`` the data distribution ``p`` of next items (in-batch positives).
        num_in_batch: in-batch positives used as candidates (0 without in-batch negatives).
        negative_probability: ``(i)`` the distribution ``q`` the negatives are drawn from.
        num_negatives: sampled negatives.
    """
    expected = num_in_batch * item_probability + num_negatives * negative_probability
    # Clamped: an item that can never be a candidate needs no correction, only a finite one.
    return torch.log(expected.clamp_min(torch.finfo(expected.dtype).tiny))


# --------------------------------------------------------------------------- BCE and gBCE
def gbce_beta(num_negatives: int, num_items: int, calibration: float) -> float:
    """gSASRec's exponent ``beta = alpha (t (1 - 1/alpha) + 1/alpha)`` (arXiv 2308.07192).

    ``alpha = num_negatives / (num_items - 1)`` is the negative sampling rate over the ``num_items``
    real items; ``t`` (``calibration``) in ``[0, 1]`` moves ``beta`` from 1 (``t = 0``: plain BCE,
    whose optimum with few negatives is overconfident) to ``alpha`` (``t = 1``: fully calibrated,
    the predicted probabilities match the full-catalogue ones in expectation).
    """
    if num_items < 2 or not 1 <= num_negatives <= num_items - 1:
        raise ValueError(
            f"need num_items >= 2 and 1 <= num_negatives <= num_items - 1, got {num_negatives} negatives "
            f"for {num_items} items"
        )
    if not 0.0 <= calibration <= 1.0:
        raise ValueError(f"gBCE calibration t must lie in [0, 1], got {calibration}")
    alpha = num_negatives / (num_items - 1)
    return alpha * (calibration * (1.0 - 1.0 / alpha) + 1.0 / alpha)


def uninformed_logit(num_negatives: int, beta: float = 1.0) -> float:
    """The best single logit for every item of a sampled BCE / gBCE loss: ``log(beta / g)``.

    An item that is the positive with probability ``p`` and a sampled negative at rate ``alpha``
    minimises ``p beta (-log sigma(s)) + alpha (-log(1 - sigma(s)))`` at ``s = log(p beta / alpha)``;
    for an uninformed model (``p = 1 / n``, ``alpha = g / (n - 1)``) that is about ``log(beta / g)``.
    A learned offset started there (as a detector's classifier bias starts at the prior) keeps the
    item embeddings from having to learn the common shift themselves: with ``g = 256`` negatives
    and small tied embeddings, SASRec on ml-100k did not train without it, which is what learning
    that shift inside the embeddings would explain (``bench/notes/scale_quality.md``). ``beta`` is
    :func:`gbce_beta` for gBCE and 1 for BCE.
    """
    if num_negatives < 1 or beta <= 0:
        raise ValueError(f"need num_negatives >= 1 and beta > 0, got {num_negatives} and {beta}")
    return math.log(beta / num_negatives)


def gbce_loss(
    hidden: Tensor,
    item_embeddings: Tensor,
    targets: Tensor,
    negatives: Tensor,
    calibration: float = 0.75,
    offset: Tensor | float = 0.0,
) -> Tensor:
    """gSASRec's gBCE: ``-log sigma(s+)^beta - sum_g log(1 - sigma(s-_g))`` (arXiv 2308.07192).

    Raising the positive's probability to ``beta`` (:func:`gbce_beta`) counters the overconfidence that
    BCE with few sampled negatives learns; the loss is averaged over the ``m (1 + g)`` logits, as in
    the authors' code (gSASRec-pytorch, ``gbce.py``), with ``softplus`` for numerically stable
    ``-log sigma``.

    Args:
        hidden: ``(m d)``.
        item_embeddings: ``(i d)``, row 0 the padding item; the catalogue has ``i - 1`` real items.
        targets: ``(m)`` long, in ``[1, i)``.
        negatives: ``(m g)`` long uniform negatives per position, or ``(g)`` shared by all positions
            (each position still sees ``g`` uniform negatives, so ``alpha`` is the same), in ``[1, i)``.
        calibration: ``t`` in ``[0, 1]``; the paper's default is 0.75.
        offset: a scalar added to every logit (a learned logit offset, :func:`uninformed_logit`);
            one value for all items, so it never changes a ranking.
    """
    positive_logits, negative_logits = _positive_and_negative_logits(
        hidden, item_embeddings, targets, negatives, offset
    )
    beta = gbce_beta(negative_logits.shape[1], len(item_embeddings) - 1, calibration)
    per_logit = torch.cat(
        [beta * rearrange(F.softplus(-positive_logits), "m -> m 1"), F.softplus(negative_logits)], dim=1
    )  # (m 1+g)
    return per_logit.mean()


def bce_loss(
    hidden: Tensor, item_embeddings: Tensor, targets: Tensor, negatives: Tensor, offset: Tensor | float = 0.0
) -> Tensor:
    """SASRec's BCE (arXiv 1808.09781): ``-log sigma(s+) - mean_g log(1 - sigma(s-_g))``, mean over m.

    Args:
        hidden: ``(m d)``.
        item_embeddings: ``(i d)``, row 0 the padding item.
        targets: ``(m)`` long, in ``[1, i)``.
        negatives: ``(m g)`` long sampled negatives per position, or ``(g)`` shared, in ``[1, i)``.
        offset: a scalar added to every logit (see :func:`gbce_loss`).
    """
    positive_logits, negative_logits = _positive_and_negative_logits(
        hidden, item_embeddings, targets, negatives, offset
    )
    return F.softplus(-positive_logits).mean() + F.softplus(negative_logits).mean()


def _positive_and_negative_logits(
    hidden: Tensor, item_embeddings: Tensor, targets: Tensor, negatives: Tensor, offset: Tensor | float = 0.0
) -> tuple[Tensor, Tensor]:
    """Positive ``(m)`` and negative ``(m g)`` logits; negatives per position ``(m g)`` or shared ``(g)``.

    Shared negatives cost one ``(m d) x (d g)`` product and a gather of ``g`` rows; per-position ones a
    gather of ``m g`` rows (1.6M rows of the catalogue at 6,400 positions and 256 negatives).
    """
    _check_inputs(hidden, item_embeddings, targets)
    shared = negatives.dim() == 1 and len(negatives) >= 1
    per_position = negatives.dim() == 2 and len(negatives) == len(targets) and negatives.shape[1] >= 1
    if not (shared or per_position):
        raise ValueError(
            f"negatives must be ({len(targets)}, g >= 1) per position or (g >= 1,) shared, "
            f"got {tuple(negatives.shape)}"
        )
    positive_logits = torch.einsum("md,md->m", hidden, item_embeddings[targets]) + offset
    if shared:
        return positive_logits, hidden @ item_embeddings[negatives].T + offset
    return positive_logits, torch.einsum("md,mgd->mg", hidden, item_embeddings[negatives]) + offset


def _check_inputs(hidden: Tensor, item_embeddings: Tensor, targets: Tensor) -> None:
    if hidden.dim() != 2 or item_embeddings.dim() != 2 or hidden.shape[1] != item_embeddings.shape[1]:
        raise ValueError(
            "hidden must be (positions, d) and item_embeddings (items, d) with the same d, got "
            f"{tuple(hidden.shape)} and {tuple(item_embeddings.shape)}"
        )
    if targets.shape != (len(hidden),) or targets.dtype != torch.long:
        raise ValueError(f"targets must be long ({len(hidden)},), got {targets.dtype} {tuple(targets.shape)}")
    if len(targets) and (int(targets.min()) < 1 or int(targets.max()) >= len(item_embeddings)):
        raise ValueError(
            f"targets must lie in [1, {len(item_embeddings)}) (0 is padding), "
            f"got min {int(targets.min())} max {int(targets.max())}"
        )
