"""Group-relative policy optimisation (GRPO) with PPO's clipped surrogate: one objective for every
RL method of the zoo (DiffuReason's diffusion policy, S-GRec's A2PO, GPR and UI-Venus over LLM tokens).

Axis legend:
    b  groups (one prompt / user / request each)
    g  samples per group (the G rollouts of one group)
    N  sampled sequences, groups flattened: N = b * g, sample (i, j) at row i * g + j
    s  steps of a sequence (LLM tokens, or reverse-diffusion transitions)

- Group advantage (GRPO, DeepSeekMath, arXiv 2402.03300, Sec. 4.1.2, outcome supervision):
  A_i = (r_i - mean_g(r)) / (std_g(r) + eps). std is Bessel-corrected (divides by g - 1), the
  convention of TRL 1.16 (`trl.trainer.utils.nanstd`, used per group in
  `GRPOTrainer._generate_and_score_completions`), and eps = 1e-4 as there. `scale=False` drops the
  division (Dr. GRPO, arXiv 2503.20783, Sec. 3.1: the std term up-weights groups that are nearly
  solved or nearly failed).
- Then PPO's clipped surrogate with a KL to a reference, aggregated as TRL's GRPO losses:
  :func:`~lightning_rec.objectives.ppo_loss` (formulas in :mod:`lightning_rec.objectives.ppo`).

How a policy plugs in: it supplies, for each sampled sequence, the log-probability of each step
under the current parameters (`log_probs`, with gradient), at sampling time (`old_log_probs`) and
under the frozen reference (`ref_log_probs`). For an LLM a step is a generated token. For
DiffuReason's diffusion head a step is one stochastic reverse transition x_t -> x_{t-1} of DDIM
sampling with eta > 0: its Gaussian log-density log N(x_{t-1}; mu_theta(x_t, t), sigma_t^2 I), summed
over the embedding dimension, is one "token" (as in DDPO, arXiv 2305.13301), and s is the number of
sampling steps. A one-step action (an item drawn from a softmax over the catalogue) is s = 1.
"""

from __future__ import annotations

import torch
from einops import rearrange, reduce
from torch import Tensor

from lightning_rec.objectives.ppo import Aggregation, _cast_up, _mean_std, ppo_loss

__all__ = ["group_advantages", "grpo_loss"]


def group_advantages(rewards: Tensor, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """Group-relative advantages: each reward minus its group's mean, over the group's std when `scale`.

    Args:
        rewards: `b g`, the rewards of the g samples of each of b groups.
        scale: divide by std_g + eps (GRPO); False keeps the centred rewards (Dr. GRPO).
        eps: added to the std so that a group of equal rewards gets advantage 0, not NaN.

    Returns:
        `b g` advantages, in fp32 (fp64 when `rewards` is fp64). The std is Bessel-corrected, as TRL's.
    """
    if rewards.dim() != 2:
        raise ValueError(
            f"rewards must have shape (b g) = (groups, samples per group), got {tuple(rewards.shape)}"
        )
    if rewards.shape[1] < 2:
        # A group of one is its own baseline: its advantage is 0 and the policy would never move.
        raise ValueError(
            "rewards must hold at least 2 samples per group (shape (b g) with g >= 2), "
            f"got {tuple(rewards.shape)}"
        )
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    rewards = _cast_up(rewards)
    centred = rewards - reduce(rewards, "b g -> b 1", "mean")
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True, correction=1) + eps)


def grpo_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    rewards: Tensor,
    mask: Tensor | None = None,
    scale_rewards: bool = True,
    *,
    clip_epsilon: float = 0.2,
    clip_epsilon_high: float | None = None,
    ref_log_probs: Tensor | None = None,
    kl_coef: float = 0.0,
    aggregation: Aggregation = "sequence_mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """GRPO from grouped rewards: `group_advantages` then :func:`~lightning_rec.objectives.ppo_loss` over the
    flattened groups, in one call (one update on one batch of samples; for several PPO epochs over a stored
    rollout, see :func:`~lightning_rec.objectives.rollout.ppo_update`).

    Args:
        log_probs: `b g s` per-step log-probs (or `b g` for one-step actions) under the current policy.
        old_log_probs: same shape, at sampling time.
        rewards: `b g`, one reward per sample.
        mask: same shape as `log_probs`, True at valid steps; None means all valid.
        scale_rewards: divide advantages by the group std (GRPO) or not (Dr. GRPO).
        clip_epsilon, clip_epsilon_high, ref_log_probs, kl_coef, aggregation: as in `ppo_loss`
            (`ref_log_probs` shaped like `log_probs`).

    Returns:
        The loss and the diagnostics of `ppo_loss`, plus "reward_mean" and "reward_std" over the
        whole batch (Bessel-corrected std, as TRL logs it).
    """
    if rewards.dim() != 2:
        raise ValueError(
            f"rewards must have shape (b g) = (groups, samples per group), got {tuple(rewards.shape)}"
        )
    if log_probs.dim() not in (2, 3) or log_probs.shape[:2] != rewards.shape:
        b, g = rewards.shape
        raise ValueError(
            f"log_probs must have shape (b g s) = ({b}, {g}, steps) or (b g) = ({b}, {g}) to match rewards, "
            f"got {tuple(log_probs.shape)}"
        )
    shape = tuple(log_probs.shape)
    _check_same_shape("old_log_probs", old_log_probs, shape)
    if ref_log_probs is not None:
        _check_same_shape("ref_log_probs", ref_log_probs, shape)
    if mask is not None:
        _check_same_shape("mask", mask, shape)

    def flatten_groups(steps: Tensor | None) -> Tensor | None:
        if steps is None:
            return None
        if steps.dim() == 2:
            return rearrange(steps, "b g -> (b g) 1")
        return rearrange(steps, "b g s -> (b g) s")

    advantages = group_advantages(rewards, scale=scale_rewards)
    loss, diagnostics = ppo_loss(
        flatten_groups(log_probs),
        flatten_groups(old_log_probs),
        rearrange(advantages, "b g -> (b g)"),
        mask=flatten_groups(mask),
        clip_epsilon=clip_epsilon,
        clip_epsilon_high=clip_epsilon_high,
        ref_log_probs=flatten_groups(ref_log_probs),
        kl_coef=kl_coef,
        aggregation=aggregation,
    )
    with torch.no_grad():
        rewards = _cast_up(rewards)
        reward_mean, reward_std = _mean_std(rewards, torch.ones_like(rewards))
    return loss, diagnostics | {"reward_mean": reward_mean, "reward_std": reward_std}


def _check_same_shape(name: str, values: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(values.shape) != shape:
        raise ValueError(f"{name} must have the shape of log_probs {shape}, got {tuple(values.shape)}")
