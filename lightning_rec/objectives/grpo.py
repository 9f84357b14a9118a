"""Group-relative policy optimisation (GRPO) with PPO's clipped surrogate: one objective for every
RL method of the zoo (DiffuReason's diffusion policy, S-GRec's A2PO, GPR and UI-Venus over LLM tokens).

Axis legend:
    b  groups (one prompt / user / request each)
    g  samples per group (the G rollouts of one group)
    N  sampled sequences, groups flattened: N = b * g, sample (i, j) at row i * g + j
    s  steps of a sequence (LLM tokens, or reverse-diffusion transitions)

Formulas (i indexes sequences, t steps, m_it in {0, 1} marks valid steps):

- Group advantage (GRPO, DeepSeekMath, arXiv 2402.03300, Sec. 4.1.2, outcome supervision):
  A_i = (r_i - mean_g(r)) / (std_g(r) + eps). std is Bessel-corrected (divides by g - 1), the
  convention of TRL 1.16 (`trl.trainer.utils.nanstd`, used per group in
  `GRPOTrainer._generate_and_score_completions`), and eps = 1e-4 as there. `scale=False` drops the
  division (Dr. GRPO, arXiv 2503.20783, Sec. 3.1: the std term up-weights groups that are nearly
  solved or nearly failed).
- Clipped surrogate (PPO, arXiv 1707.06347, Eq. 7), per step:
  rho_it = exp(log pi(a_it) - log pi_old(a_it)),
  l_it = -min(rho_it A_it, clip(rho_it, 1 - eps_low, 1 + eps_high) A_it) + beta * KL_it.
  eps_high > eps_low is DAPO's clip-higher (arXiv 2503.14476, Sec. 3.1): more room for
  low-probability steps with positive advantage to grow, against entropy collapse.
- KL to a frozen reference with Schulman's k3 estimator ("Approximating KL divergence", 2020;
  DeepSeekMath Eq. 4): KL_it = exp(ref_it - lp_it) - (ref_it - lp_it) - 1, unbiased for
  KL(pi || ref) under samples from pi, and always >= 0.
- Aggregation, exactly as TRL 1.16 `GRPOTrainer._compute_loss`:
  "sequence_mean" (TRL loss_type="grpo", DeepSeekMath Eq. 3): mean_i [sum_t m_it l_it / max(1, sum_t m_it)];
  "token_mean" (TRL "bnpo", and "dapo" on one process without accumulation; DAPO Sec. 3.3):
  sum_it m_it l_it / max(1, sum_it m_it), so every valid step weighs the same however long its
  sequence is.

Old and reference log-probs and the advantages are constants of the update: they are detached here,
so passing `old_log_probs=log_probs` is the single-update on-policy case (rho = 1, clip inactive,
gradient -A * grad log pi, averaged as the aggregation says) rather than a silent zero gradient.
Inputs in bf16/fp16 are cast up to fp32 (fp64 stays fp64): exp of a log-ratio in bf16 carries
about 3 significant digits, too few to see a 0.2 clip boundary.

How a policy plugs in: it supplies, for each sampled sequence, the log-probability of each step
under the current parameters (`log_probs`, with gradient), at sampling time (`old_log_probs`) and
under the frozen reference (`ref_log_probs`). For an LLM a step is a generated token. For
DiffuReason's diffusion head a step is one stochastic reverse transition x_t -> x_{t-1} of DDIM
sampling with eta > 0: its Gaussian log-density log N(x_{t-1}; mu_theta(x_t, t), sigma_t^2 I), summed
over the embedding dimension, is one "token" (as in DDPO, arXiv 2305.13301), and s is the number of
sampling steps. A one-step action (an item drawn from a softmax over the catalogue) is s = 1.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange, reduce
from torch import Tensor

__all__ = ["clipped_policy_loss", "group_advantages", "grpo_loss"]

Aggregation = Literal["sequence_mean", "token_mean"]
AGGREGATIONS: tuple[str, ...] = ("sequence_mean", "token_mean")


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


def clipped_policy_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    clip_epsilon: float = 0.2,
    clip_epsilon_high: float | None = None,
    ref_log_probs: Tensor | None = None,
    kl_coef: float = 0.0,
    aggregation: Aggregation = "sequence_mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate with an optional k3 KL penalty, aggregated like TRL's GRPO losses.

    Args:
        log_probs: `N s` per-step log-probs of the sampled sequences under the current policy (with gradient).
        old_log_probs: `N s` the same at sampling time (detached here).
        advantages: `N` one per sequence (broadcast over steps) or `N s` per step (detached here).
        mask: `N s` bool or 0/1 float, True at valid steps; None means every step is valid.
        clip_epsilon: eps_low, and eps_high too unless `clip_epsilon_high` is given.
        clip_epsilon_high: eps_high for DAPO's clip-higher; None means `clip_epsilon`.
        ref_log_probs: `N s` log-probs under the frozen reference policy; needed when `kl_coef` != 0.
        kl_coef: beta, the weight of the k3 KL(pi || ref) per step.
        aggregation: "sequence_mean" (TRL "grpo") or "token_mean" (TRL "bnpo"/"dapo").

    Returns:
        The scalar loss (fp32 or wider) and detached scalar diagnostics, each a mean over valid steps unless
        said otherwise: "clip_fraction" (steps where the clipped term is the smaller one and differs from the
        unclipped: rho > 1 + eps_high with A > 0, or rho < 1 - eps_low with A < 0), "clip_fraction_low",
        "clip_fraction_high", "kl" (k3, only when `ref_log_probs` is given), "ratio_mean", "advantage_mean"
        and "advantage_std" (over sequences for `N` advantages, over valid steps for `N s`; Bessel-corrected,
        0 for a single value), "loss".
    """
    if log_probs.dim() != 2:
        raise ValueError(
            f"log_probs must have shape (N s) = (sequences, steps), got {tuple(log_probs.shape)}; "
            "use s = 1 for one-step actions"
        )
    shape = tuple(log_probs.shape)
    _check_same_shape("old_log_probs", old_log_probs, shape)
    if ref_log_probs is not None:
        _check_same_shape("ref_log_probs", ref_log_probs, shape)
    if mask is not None:
        _check_same_shape("mask", mask, shape)
    if tuple(advantages.shape) not in (shape[:1], shape):
        raise ValueError(
            f"advantages must have shape (N) = {shape[:1]} or (N s) = {shape}, got {tuple(advantages.shape)}"
        )
    eps_low = clip_epsilon
    eps_high = clip_epsilon if clip_epsilon_high is None else clip_epsilon_high
    if not 0 <= eps_low < 1:
        raise ValueError(f"clip_epsilon must be in [0, 1), got {clip_epsilon}")
    if eps_high < 0:
        raise ValueError(f"clip_epsilon_high must be >= 0, got {clip_epsilon_high}")
    if kl_coef != 0 and ref_log_probs is None:
        raise ValueError(f"ref_log_probs (N s) is required when kl_coef != 0 (got kl_coef={kl_coef})")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")

    valid = torch.ones(shape, dtype=torch.bool, device=log_probs.device) if mask is None else mask.bool()
    # Padded steps may hold any value (-inf from a masked softmax included); zeroing them before exp keeps
    # NaN out of the loss and its gradient (0 * inf in backward), which multiplying by the mask would not.
    log_probs = _cast_up(log_probs).masked_fill(~valid, 0.0)
    old_log_probs = _cast_up(old_log_probs.detach()).masked_fill(~valid, 0.0)
    step_advantages = _cast_up(advantages.detach())
    if step_advantages.dim() == 1:
        step_advantages = rearrange(step_advantages, "N -> N 1")

    ratio = torch.exp(log_probs - old_log_probs)
    clipped_ratio = ratio.clamp(1 - eps_low, 1 + eps_high)
    step_loss = -torch.minimum(ratio * step_advantages, clipped_ratio * step_advantages)
    if ref_log_probs is not None:
        ref_log_probs = _cast_up(ref_log_probs.detach()).masked_fill(~valid, 0.0)
        log_ref_ratio = ref_log_probs - log_probs
        step_kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1
        if kl_coef != 0:
            step_loss = step_loss + kl_coef * step_kl

    weights = valid.to(step_loss.dtype)
    if aggregation == "sequence_mean":
        steps_per_sequence = reduce(weights, "N s -> N", "sum").clamp(min=1.0)
        loss = (reduce(step_loss * weights, "N s -> N", "sum") / steps_per_sequence).mean()
    else:
        loss = (step_loss * weights).sum() / weights.sum().clamp(min=1.0)

    with torch.no_grad():
        # The clipped term is the smaller (so chosen, and its gradient is 0) exactly in these two regions.
        clipped_low = (ratio < 1 - eps_low) & (step_advantages < 0)
        clipped_high = (ratio > 1 + eps_high) & (step_advantages > 0)
        diagnostics = {
            "clip_fraction": _masked_mean(clipped_low | clipped_high, weights),
            "clip_fraction_low": _masked_mean(clipped_low, weights),
            "clip_fraction_high": _masked_mean(clipped_high, weights),
            "ratio_mean": _masked_mean(ratio, weights),
        }
        if ref_log_probs is not None:
            diagnostics["kl"] = _masked_mean(step_kl, weights)
        if advantages.dim() == 1:
            advantage_mean, advantage_std = _mean_std(step_advantages, torch.ones_like(step_advantages))
        else:
            advantage_mean, advantage_std = _mean_std(step_advantages, weights)
        diagnostics |= {
            "advantage_mean": advantage_mean,
            "advantage_std": advantage_std,
            "loss": loss.detach(),
        }
    return loss, diagnostics


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
    """GRPO from grouped rewards: `group_advantages` then `clipped_policy_loss` over the flattened groups.

    Args:
        log_probs: `b g s` per-step log-probs (or `b g` for one-step actions) under the current policy.
        old_log_probs: same shape, at sampling time.
        rewards: `b g`, one reward per sample.
        mask: same shape as `log_probs`, True at valid steps; None means all valid.
        scale_rewards: divide advantages by the group std (GRPO) or not (Dr. GRPO).
        clip_epsilon, clip_epsilon_high, ref_log_probs, kl_coef, aggregation: as in `clipped_policy_loss`
            (`ref_log_probs` shaped like `log_probs`).

    Returns:
        The loss and the diagnostics of `clipped_policy_loss`, plus "reward_mean" and "reward_std" over the
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
    loss, diagnostics = clipped_policy_loss(
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


def _cast_up(values: Tensor) -> Tensor:
    """Float tensors narrower than fp32 (bf16, fp16) and integer/bool tensors to fp32; fp32/fp64 unchanged."""
    return values.to(torch.promote_types(values.dtype, torch.float32))


def _check_same_shape(name: str, values: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(values.shape) != shape:
        raise ValueError(f"{name} must have the shape of log_probs {shape}, got {tuple(values.shape)}")


def _masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Mean of `values` (broadcast to `weights`) where `weights` is 1; 0 when there are no such entries."""
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def _mean_std(values: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and Bessel-corrected std of `values` where `weights` is 1 (std 0 for fewer than 2 entries)."""
    count = weights.sum()
    mean = (values * weights).sum() / count.clamp(min=1.0)
    variance = (((values - mean) ** 2) * weights).sum() / (count - 1).clamp(min=1.0)
    return mean, variance.sqrt()
