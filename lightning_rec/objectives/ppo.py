"""PPO's clipped surrogate with stored old log-probs: the one policy-gradient loss of every RL method.

GRPO (:mod:`~lightning_rec.objectives.grpo`), A2PO (:mod:`~lightning_rec.objectives.a2po`) and the
judge's pairwise GRPO differ only in their advantages; they all end in :func:`ppo_loss`, and
:func:`~lightning_rec.objectives.rollout.ppo_update` runs it for ``ppo_epochs`` passes over
minibatches of one rollout.

Axis legend:
    N  sampled sequences (for grouped samples, groups flattened: N = b * g)
    s  steps of a sequence (LLM tokens, reverse-diffusion transitions; 1 for one-step actions)

Formulas (i indexes sequences, t steps, m_it in {0, 1} marks valid steps):

- Ratio to the behaviour policy, whose log-probs were stored at sampling time:
  "step" level (PPO, arXiv 1707.06347, Eq. 6): rho_it = exp(log pi(a_it) - log pi_old(a_it));
  "sequence" level (GSPO, arXiv 2507.18071, Eq. 7): rho_i = exp(sum_t m_it (log pi - log pi_old) /
  sum_t m_it), the length-normalised sequence ratio, shared by all steps of sequence i.
- Clipped surrogate (PPO Eq. 7): l_it = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A).
  eps_high > eps_low is DAPO's clip-higher (arXiv 2503.14476, Sec. 3.1): room for low-probability
  steps with positive advantage to grow, against entropy collapse.
- KL to a frozen reference, per step, with r = log ref - log pi (Schulman, "Approximating KL
  divergence", 2020): k1 = -r (unbiased, can be negative), k2 = r^2 / 2 (biased, low variance; its
  gradient is the gradient of KL(pi || ref) on-policy), k3 = exp(r) - r - 1 (unbiased, >= 0;
  DeepSeekMath, arXiv 2402.03300, Eq. 4). Added as + beta * KL_it.
- Aggregation, exactly as TRL 1.16 ``GRPOTrainer._compute_loss``: "sequence_mean" (TRL "grpo"):
  mean_i [sum_t m_it l_it / max(1, sum_t m_it)]; "token_mean" (TRL "bnpo"/"dapo" on one process,
  DAPO Sec. 3.3): sum_it m_it l_it / max(1, sum_it m_it).
- Entropy bonus (as TRL): loss - c_H * sum_it m_it H_it / max(1, sum_it m_it), whatever the aggregation.

Old and reference log-probs and advantages are constants of the update: they are detached here, so
``old_log_probs=log_probs`` is the on-policy single update (rho = 1, clip inactive, gradient
-A grad log pi), not a silent zero gradient. Inputs in bf16/fp16 are cast up to fp32: exp of a
log-ratio in bf16 carries about 3 significant digits, too few to see a 0.2 clip boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from einops import rearrange, reduce
from torch import Tensor

__all__ = ["AGGREGATIONS", "CLIP_LEVELS", "KL_ESTIMATORS", "PPOConfig", "kl_estimate", "ppo_loss"]

Aggregation = Literal["sequence_mean", "token_mean"]
ClipLevel = Literal["step", "sequence"]
KLEstimator = Literal["k1", "k2", "k3"]
AGGREGATIONS: tuple[str, ...] = ("sequence_mean", "token_mean")
CLIP_LEVELS: tuple[str, ...] = ("step", "sequence")
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")


@dataclass(frozen=True)
class PPOConfig:
    """The settings of one PPO update on a rollout (what a module passes to ``ppo_update``).

    Attributes:
        ppo_epochs: passes over the rollout; above 1 the policy moves away from the behaviour policy
            and the clip engages.
        num_minibatches: optimiser steps per pass; the rollout's groups are split at random.
        clip_epsilon: eps_low (and eps_high unless ``clip_epsilon_high`` is given).
        clip_epsilon_high: DAPO's eps_high; None means ``clip_epsilon``.
        clip_level: ``"step"`` (PPO) or ``"sequence"`` (GSPO) ratios.
        kl_coef: beta, weight of the KL to the frozen reference (0: no reference needed).
        kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"``.
        entropy_coef: weight of the entropy bonus (needs the policy's entropy per step).
        aggregation: ``"sequence_mean"`` or ``"token_mean"``.
    """

    ppo_epochs: int = 1
    num_minibatches: int = 1
    clip_epsilon: float = 0.2
    clip_epsilon_high: float | None = None
    clip_level: ClipLevel = "step"
    kl_coef: float = 0.0
    kl_estimator: KLEstimator = "k3"
    entropy_coef: float = 0.0
    aggregation: Aggregation = "sequence_mean"

    def __post_init__(self) -> None:
        if self.ppo_epochs < 1 or self.num_minibatches < 1:
            raise ValueError(
                "ppo_epochs and num_minibatches must be >= 1, "
                f"got {self.ppo_epochs} and {self.num_minibatches}"
            )
        _check_options(
            self.clip_epsilon, self.clip_epsilon_high, self.clip_level, self.kl_estimator, self.aggregation
        )
        if self.kl_coef < 0 or self.entropy_coef < 0:
            raise ValueError(
                f"kl_coef and entropy_coef must be >= 0, got {self.kl_coef} and {self.entropy_coef}"
            )


def kl_estimate(log_probs: Tensor, ref_log_probs: Tensor, estimator: KLEstimator = "k3") -> Tensor:
    """Per-sample estimate of KL(pi || ref) from log pi and log ref of actions drawn from pi (any shape).

    k1 = log pi - log ref; k2 = (log pi - log ref)^2 / 2; k3 = ref/pi - 1 - log(ref/pi). The gradient
    flows through ``log_probs`` only.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {estimator!r}")
    log_ref_ratio = ref_log_probs.detach() - log_probs
    if estimator == "k1":
        return -log_ref_ratio
    if estimator == "k2":
        return 0.5 * log_ref_ratio**2
    return torch.exp(log_ref_ratio) - log_ref_ratio - 1


def ppo_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    *,
    clip_epsilon: float = 0.2,
    clip_epsilon_high: float | None = None,
    clip_level: ClipLevel = "step",
    ref_log_probs: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: KLEstimator = "k3",
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    aggregation: Aggregation = "sequence_mean",
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate against stored old log-probs, with KL and entropy terms (module docstring).

    Args:
        log_probs: `N s` per-step log-probs of the sampled sequences under the current policy (with gradient).
        old_log_probs: `N s` the same under the behaviour policy, stored at sampling time (detached here).
        advantages: `N` one per sequence (broadcast over steps) or `N s` per step (step level only).
        mask: `N s` bool or 0/1, True at valid steps (False at padding and at deterministic steps, which
            have no density); None means every step is valid.
        clip_epsilon: eps_low, and eps_high too unless `clip_epsilon_high` is given.
        clip_epsilon_high: eps_high for DAPO's clip-higher; None means `clip_epsilon`.
        clip_level: ``"step"`` (PPO) or ``"sequence"`` (GSPO) importance ratios.
        ref_log_probs: `N s` log-probs under the frozen reference policy; needed when `kl_coef` != 0.
        kl_coef: beta, the weight of the KL(pi || ref) estimate per step.
        kl_estimator: ``"k1"``, ``"k2"`` or ``"k3"`` (:func:`kl_estimate`).
        entropy: `N s` the policy's entropy at each step (with gradient); needed when `entropy_coef` != 0.
        entropy_coef: weight of the entropy bonus.
        aggregation: ``"sequence_mean"`` (TRL "grpo") or ``"token_mean"`` (TRL "bnpo"/"dapo").

    Returns:
        The scalar loss (fp32 or wider) and detached scalar diagnostics. Means are over valid steps (over
        sequences at sequence level, as TRL): "clip_fraction" (the clipped term is the smaller and differs:
        rho > 1 + eps_high with A > 0, or rho < 1 - eps_low with A < 0), "clip_fraction_low",
        "clip_fraction_high", "ratio_mean", "ratio_max"; "kl" when `ref_log_probs` is given; "entropy" when
        `entropy` is given; "advantage_mean", "advantage_std" (over sequences for `N` advantages, over valid
        steps for `N s`; Bessel-corrected, 0 for a single value); "loss".
    """
    if log_probs.dim() != 2:
        raise ValueError(
            f"log_probs must have shape (N s) = (sequences, steps), got {tuple(log_probs.shape)}; "
            "use s = 1 for one-step actions"
        )
    shape = tuple(log_probs.shape)
    for name, values in (("old_log_probs", old_log_probs), ("ref_log_probs", ref_log_probs),
                         ("mask", mask), ("entropy", entropy)):  # fmt: skip
        if values is not None and tuple(values.shape) != shape:
            raise ValueError(f"{name} must have the shape of log_probs {shape}, got {tuple(values.shape)}")
    if tuple(advantages.shape) not in (shape[:1], shape):
        raise ValueError(
            f"advantages must have shape (N) = {shape[:1]} or (N s) = {shape}, got {tuple(advantages.shape)}"
        )
    _check_options(clip_epsilon, clip_epsilon_high, clip_level, kl_estimator, aggregation)
    if clip_level == "sequence" and advantages.dim() != 1:
        raise ValueError(
            f"clip_level='sequence' needs one advantage per sequence, shape (N) = {shape[:1]}, "
            f"got {tuple(advantages.shape)}"
        )
    if kl_coef != 0 and ref_log_probs is None:
        raise ValueError(f"ref_log_probs (N s) is required when kl_coef != 0 (got kl_coef={kl_coef})")
    if entropy_coef != 0 and entropy is None:
        raise ValueError(
            f"entropy (N s) is required when entropy_coef != 0 (got entropy_coef={entropy_coef})"
        )
    eps_low = clip_epsilon
    eps_high = clip_epsilon if clip_epsilon_high is None else clip_epsilon_high

    valid = torch.ones(shape, dtype=torch.bool, device=log_probs.device) if mask is None else mask.bool()
    weights = valid.to(torch.promote_types(log_probs.dtype, torch.float32))
    # Padded steps may hold any value (-inf from a masked softmax included); zeroing them before exp keeps
    # NaN out of the loss and its gradient (0 * inf in backward), which multiplying by the mask would not.
    log_probs = _cast_up(log_probs).masked_fill(~valid, 0.0)
    old_log_probs = _cast_up(old_log_probs.detach()).masked_fill(~valid, 0.0)
    step_advantages = _cast_up(advantages.detach())
    if step_advantages.dim() == 1:
        step_advantages = rearrange(step_advantages, "N -> N 1")

    log_ratio = log_probs - old_log_probs
    if clip_level == "sequence":
        steps_per_sequence = reduce(weights, "N s -> N 1", "sum").clamp(min=1.0)
        log_ratio = reduce(log_ratio * weights, "N s -> N 1", "sum") / steps_per_sequence
        # Diagnostics count each sequence once, as TRL does at sequence level.
        ratio_weights = torch.ones_like(log_ratio)
    else:
        ratio_weights = weights
    ratio = torch.exp(log_ratio)
    clipped_ratio = ratio.clamp(1 - eps_low, 1 + eps_high)
    step_loss = -torch.minimum(ratio * step_advantages, clipped_ratio * step_advantages)
    step_loss = step_loss.expand(shape)
    if ref_log_probs is not None:
        ref_log_probs = _cast_up(ref_log_probs.detach()).masked_fill(~valid, 0.0)
        step_kl = kl_estimate(log_probs, ref_log_probs, kl_estimator)
        if kl_coef != 0:
            step_loss = step_loss + kl_coef * step_kl

    if aggregation == "sequence_mean":
        steps_per_sequence = reduce(weights, "N s -> N", "sum").clamp(min=1.0)
        loss = (reduce(step_loss * weights, "N s -> N", "sum") / steps_per_sequence).mean()
    else:
        loss = _masked_mean(step_loss, weights)
    if entropy is not None:
        mean_entropy = _masked_mean(_cast_up(entropy), weights)
        if entropy_coef != 0:
            loss = loss - entropy_coef * mean_entropy

    with torch.no_grad():
        # The clipped term is the smaller (so chosen, and its gradient is 0) exactly in these two regions.
        clipped_low = (ratio < 1 - eps_low) & (step_advantages < 0)
        clipped_high = (ratio > 1 + eps_high) & (step_advantages > 0)
        if clip_level == "step":
            clipped_low, clipped_high = clipped_low.expand(shape), clipped_high.expand(shape)
        diagnostics = {
            "clip_fraction": _masked_mean(clipped_low | clipped_high, ratio_weights),
            "clip_fraction_low": _masked_mean(clipped_low, ratio_weights),
            "clip_fraction_high": _masked_mean(clipped_high, ratio_weights),
            "ratio_mean": _masked_mean(ratio, ratio_weights),
            "ratio_max": ratio.masked_fill(ratio_weights == 0, float("-inf")).max().clamp(min=0.0),
        }
        if ref_log_probs is not None:
            diagnostics["kl"] = _masked_mean(step_kl, weights)
        if entropy is not None:
            diagnostics["entropy"] = mean_entropy.detach()
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


def _check_options(
    clip_epsilon: float,
    clip_epsilon_high: float | None,
    clip_level: str,
    kl_estimator: str,
    aggregation: str,
) -> None:
    if not 0 <= clip_epsilon < 1:
        raise ValueError(f"clip_epsilon must be in [0, 1), got {clip_epsilon}")
    if clip_epsilon_high is not None and clip_epsilon_high < 0:
        raise ValueError(f"clip_epsilon_high must be >= 0, got {clip_epsilon_high}")
    if clip_level not in CLIP_LEVELS:
        raise ValueError(f"clip_level must be one of {CLIP_LEVELS}, got {clip_level!r}")
    if kl_estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {kl_estimator!r}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")


def _cast_up(values: Tensor) -> Tensor:
    """Float tensors narrower than fp32 (bf16, fp16) and integer/bool tensors to fp32; fp32/fp64 unchanged."""
    return values.to(torch.promote_types(values.dtype, torch.float32))


def _masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Mean of `values` (broadcast to `weights`) where `weights` is 1; 0 when there are no such entries."""
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def _mean_std(values: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and Bessel-corrected std of `values` where `weights` is 1 (std 0 for fewer than 2 entries)."""
    count = weights.sum()
    mean = (values * weights).sum() / count.clamp(min=1.0)
    variance = (((values - mean) ** 2) * weights).sum() / (count - 1).clamp(min=1.0)
    return mean, variance.sqrt()
