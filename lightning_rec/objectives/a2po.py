"""A2PO: anchored advantage policy optimisation, S-GRec's (arXiv 2602.10606) policy objective.

A generator is trained from two rewards per sampled candidate: the business reward (eCPM) and the
semantic reward of the Personalized Semantic Judge. A2PO anchors the update on the business
advantage and lets the semantic advantage in only where the two agree, and never more than the
business advantage itself, so the semantic signal can refine but never reverse the business direction.

Axis legend:
    b  groups (one request each)
    g  candidates sampled for one request (the rollout group, G in the paper)
    N  candidates, groups flattened: N = b * g
    s  steps of a candidate (1 for an item drawn from a softmax over the catalogue)

Within each group (spec ``sgrec.md``, "A2PO"):

    A_biz = zscore_g(R_biz),  A_sem = zscore_g(R_sem)
    lambda = 1[sign(A_biz) == sign(A_sem)] * min(|A_biz|, |A_sem|) / (max(|A_biz|, |A_sem|) + eps)
    A = A_biz + beta * lambda * A_sem,  loss = -mean(min(rho A, clip(rho, 1 - e, 1 + e) A))

Hence, for beta <= 1, |beta * lambda * A_sem| <= |A_biz| (if |A_sem| <= |A_biz| then lambda |A_sem| =
|A_sem|^2 / (|A_biz| + eps); otherwise it is |A_biz| |A_sem| / (|A_sem| + eps)), and A has the sign of
A_biz. A group whose semantic rewards are all equal has A_sem = 0, so lambda = 0 and A2PO is GRPO on
the business reward. beta = 1 is the paper's A2PO.

The ablations the paper reports (they must exist to reproduce its table):

- ``"reward_sum"``: GRPO on R_biz + beta * R_sem (the paper's reward-sum baseline, which collapses:
  a dense semantic reward drowns a sparse business one inside the group z-score);
- ``"adv_sum"``: A = A_biz + beta * A_sem, unanchored (semantic can flip the business direction);
- ``"business_only"``: A = A_biz (GRPO on the business reward; beta unused).

Advantages come from :mod:`lightning_rec.objectives.grpo`, the clipped surrogate from
:mod:`lightning_rec.objectives.ppo`; for PPO epochs over a stored rollout pass :func:`a2po_advantages` to
:func:`~lightning_rec.objectives.rollout.ppo_update`.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from torch import Tensor

from lightning_rec.objectives.grpo import group_advantages
from lightning_rec.objectives.ppo import Aggregation, ppo_loss

__all__ = ["A2PO_MODES", "A2POMode", "a2po_advantages", "a2po_loss", "anchor_weights"]

A2POMode = Literal["a2po", "reward_sum", "adv_sum", "business_only"]
A2PO_MODES: tuple[str, ...] = ("a2po", "reward_sum", "adv_sum", "business_only")


def anchor_weights(business_advantages: Tensor, semantic_advantages: Tensor, eps: float = 1e-4) -> Tensor:
    """A2PO's lambda: 0 where the signs differ, else min(|A_biz|, |A_sem|) / (max(|A_biz|, |A_sem|) + eps).

    Args:
        business_advantages: `...` A_biz.
        semantic_advantages: `...` A_sem, same shape.
        eps: keeps the ratio finite when both are 0 (lambda is then 0).

    Returns:
        `...` lambda in [0, 1). A zero advantage has sign 0, so it agrees only with another zero, whose
        min is 0: lambda is 0 whenever either advantage is 0.
    """
    if business_advantages.shape != semantic_advantages.shape:
        raise ValueError(
            f"business_advantages {tuple(business_advantages.shape)} and semantic_advantages "
            f"{tuple(semantic_advantages.shape)} must have the same shape"
        )
    if eps <= 0:
        # With eps = 0 two equal magnitudes give lambda = 1 and two zeros give 0/0.
        raise ValueError(f"eps must be > 0, got {eps}")
    business, semantic = business_advantages.abs(), semantic_advantages.abs()
    agree = torch.sign(business_advantages) == torch.sign(semantic_advantages)
    ratio = torch.minimum(business, semantic) / (torch.maximum(business, semantic) + eps)
    return torch.where(agree, ratio, torch.zeros_like(ratio))


def a2po_advantages(
    business_rewards: Tensor,
    semantic_rewards: Tensor,
    mode: A2POMode = "a2po",
    semantic_weight: float = 1.0,
    scale_rewards: bool = True,
    eps: float = 1e-4,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-candidate advantages `b g` of one of A2PO's modes, and detached diagnostics.

    Args:
        business_rewards: `b g` R_biz (eCPM of each sampled candidate).
        semantic_rewards: `b g` R_sem (the judge's holistic score).
        mode: ``"a2po"``, ``"reward_sum"``, ``"adv_sum"`` or ``"business_only"`` (module docstring).
        semantic_weight: beta. In ``"a2po"`` it must lie in [0, 1] so the anchor bound holds; in
            ``"reward_sum"`` it converts the semantic reward into business units.
        scale_rewards: z-score (GRPO) or only centre (Dr. GRPO) the rewards within each group.
        eps: the std offset of the z-scores and the denominator offset of lambda.

    Returns:
        The advantages `b g` (fp32 or wider) and scalar diagnostics: "anchor_mean" (mean lambda, a2po
        only), "conflict_fraction" (share of candidates whose two advantages have opposite signs),
        "business_advantage_std", "semantic_advantage_std".
    """
    if business_rewards.dim() != 2 or business_rewards.shape != semantic_rewards.shape:
        raise ValueError(
            "business_rewards and semantic_rewards must both have shape (b g) = (requests, candidates), got "
            f"{tuple(business_rewards.shape)} and {tuple(semantic_rewards.shape)}"
        )
    if mode not in A2PO_MODES:
        raise ValueError(f"mode must be one of {A2PO_MODES}, got {mode!r}")
    if mode == "a2po" and not 0.0 <= semantic_weight <= 1.0:
        raise ValueError(
            f"semantic_weight must be in [0, 1] for mode='a2po' (above 1 the semantic term could outweigh "
            f"the business advantage), got {semantic_weight}"
        )
    if semantic_weight < 0:
        raise ValueError(f"semantic_weight must be >= 0, got {semantic_weight}")

    business = _tied_groups_to_zero(
        group_advantages(business_rewards, scale=scale_rewards, eps=eps), business_rewards
    )
    semantic = _tied_groups_to_zero(
        group_advantages(semantic_rewards, scale=scale_rewards, eps=eps), semantic_rewards
    )
    diagnostics: dict[str, Tensor] = {}
    if mode == "business_only":
        advantages = business
    elif mode == "reward_sum":
        summed = business_rewards + semantic_weight * semantic_rewards
        advantages = _tied_groups_to_zero(group_advantages(summed, scale=scale_rewards, eps=eps), summed)
    elif mode == "adv_sum":
        advantages = business + semantic_weight * semantic
    else:
        anchor = anchor_weights(business, semantic, eps=eps)
        advantages = business + semantic_weight * anchor * semantic
        diagnostics["anchor_mean"] = anchor.mean().detach()
    with torch.no_grad():
        diagnostics |= {
            "conflict_fraction": (business * semantic < 0).float().mean(),
            "business_advantage_std": business.std(correction=0),
            "semantic_advantage_std": semantic.std(correction=0),
        }
    return advantages, diagnostics


def a2po_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    business_rewards: Tensor,
    semantic_rewards: Tensor,
    mask: Tensor | None = None,
    mode: A2POMode = "a2po",
    semantic_weight: float = 1.0,
    scale_rewards: bool = True,
    *,
    clip_epsilon: float = 0.2,
    clip_epsilon_high: float | None = None,
    ref_log_probs: Tensor | None = None,
    kl_coef: float = 0.0,
    aggregation: Aggregation = "sequence_mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """A2PO (or an ablation mode) from grouped rewards: :func:`a2po_advantages` then the PPO clip.

    Args:
        log_probs: `b g s` per-step log-probs (or `b g` for one-step actions) under the current policy.
        old_log_probs: same shape, at sampling time.
        business_rewards, semantic_rewards: `b g`, one reward of each kind per candidate.
        mask: same shape as `log_probs`, True at valid steps; None means all valid.
        mode, semantic_weight, scale_rewards: as in :func:`a2po_advantages`.
        clip_epsilon, clip_epsilon_high, ref_log_probs, kl_coef, aggregation: as in
            :func:`~lightning_rec.objectives.ppo_loss` (`ref_log_probs` shaped like `log_probs`).

    Returns:
        The loss and the diagnostics of ``ppo_loss`` and :func:`a2po_advantages`, plus
        "business_reward_mean" and "semantic_reward_mean".
    """
    if business_rewards.dim() != 2:
        raise ValueError(
            "business_rewards must have shape (b g) = (requests, candidates), "
            f"got {tuple(business_rewards.shape)}"
        )
    if log_probs.dim() not in (2, 3) or log_probs.shape[:2] != business_rewards.shape:
        b, g = business_rewards.shape
        raise ValueError(
            f"log_probs must have shape (b g s) = ({b}, {g}, steps) or (b g) = ({b}, {g}) to match the "
            f"rewards, got {tuple(log_probs.shape)}"
        )
    for name, values in (("old_log_probs", old_log_probs), ("ref_log_probs", ref_log_probs), ("mask", mask)):
        if values is not None and values.shape != log_probs.shape:
            raise ValueError(
                f"{name} must have the shape of log_probs {tuple(log_probs.shape)}, got {tuple(values.shape)}"
            )
    advantages, diagnostics = a2po_advantages(
        business_rewards,
        semantic_rewards,
        mode=mode,
        semantic_weight=semantic_weight,
        scale_rewards=scale_rewards,
    )
    loss, clip_diagnostics = ppo_loss(
        _flatten_groups(log_probs),
        _flatten_groups(old_log_probs),
        rearrange(advantages, "b g -> (b g)"),
        mask=_flatten_groups(mask),
        clip_epsilon=clip_epsilon,
        clip_epsilon_high=clip_epsilon_high,
        ref_log_probs=_flatten_groups(ref_log_probs),
        kl_coef=kl_coef,
        aggregation=aggregation,
    )
    with torch.no_grad():
        diagnostics |= {
            "business_reward_mean": business_rewards.float().mean(),
            "semantic_reward_mean": semantic_rewards.float().mean(),
        }
    return loss, clip_diagnostics | diagnostics


def _tied_groups_to_zero(advantages: Tensor, rewards: Tensor) -> Tensor:
    """Exact zeros `b g` for groups whose rewards `b g` are all equal.

    The group mean of equal floats can round off the value itself (three times 0.7 in fp32), leaving
    a centred reward of 1e-8 that eps turns into an advantage of 1e-4 with an arbitrary sign: enough for
    a request the judge never scored to push the semantic term in a direction.
    """
    tied = (rewards.amax(dim=1, keepdim=True) == rewards.amin(dim=1, keepdim=True)).expand_as(advantages)
    return advantages.masked_fill(tied, 0.0)


def _flatten_groups(steps: Tensor | None) -> Tensor | None:
    """`b g` -> `(b g) 1` (one-step actions) or `b g s` -> `(b g) s`; None stays None."""
    if steps is None:
        return None
    if steps.dim() == 2:
        return rearrange(steps, "b g -> (b g) 1")
    return rearrange(steps, "b g s -> (b g) s")
