"""HEPO: Hierarchy Enhanced Policy Optimization over semantic-ID levels (GPR, arXiv 2511.10138, Sec. 3.4).

GPR generates an item as L codes, coarse to fine, and treats each level as one step of an episode: the
state is (user, codes so far), the action the next code. HEPO gives

- a **process reward** at each coarse level l (reading of the paper's Eq. for r_l; constants are
  unpublished): ``r_l = alpha_l * max(0, P_l(z_l) - mean_z P_l(z))``, where P_l is the distribution
  of level-l codes among the user's past positives, so a code more popular with this user than
  average earns a bonus, an unpopular one nothing;
- the **final reward** R (the simulator's value of the whole item, e.g. eCPM) at the last level;
- **advantages**: Generalized Advantage Estimation (Schulman et al. 2015, arXiv 1506.02438, Eq. 16)
  over the levels, ``delta_l = r_l + gamma V_{l+1} - V_l`` (V_L = 0, the episode ends after the last
  code), ``A_l = sum_j (gamma lambda)^j delta_{l+j}``, for the coarse levels; at the last level the
  K candidates of a request are compared directly, ``A_{L-1} = (R - mean_K R) / (std_K R + eps)``
  (GRPO's group z-score, arXiv 2402.03300), which needs no critic where the reward is sparse and
  noisy across requests;
- a **policy loss**: PPO's clipped surrogate (arXiv 1707.06347, Eq. 7; the RL core's
  :func:`~lightning_rec.objectives.ppo_loss`) per level, weighted by c_l
  (default (l + 1) / L: the fine levels decide the item);
- a **critic loss**: ``sum_l mean (V(s, z_<l) - G_l)^2`` with the lambda-returns ``G_l = A^GAE_l + V_l``
  as targets (G_{L-1} = R).

Defaults gamma 0.99, lambda 0.95, eps 0.2, c_l = (l + 1) / L, alpha_l = 0.1 are ours: the paper
publishes none.

Two ways in: :func:`hepo_loss` is the loss of one update on one batch of samples (given their old
log-probs); :func:`hepo_rollout` stores what several PPO epochs over one batch of samples need, for the
RL core's :func:`~lightning_rec.objectives.rollout.ppo_update` (groups = requests, samples = the K
candidates, steps = the L levels), with :func:`critic_loss` as the update's auxiliary loss. Both give
the same loss: ``ppo_update`` averages each candidate's per-level clipped terms over the L levels
(``"sequence_mean"``), so the rollout stores c_l * L * A_l as the per-step advantages, and
-min(rho c A, clip(rho) c A) = c * -min(rho A, clip(rho) A) for c >= 0 (the clip is unchanged).

Axis legend:
    b  requests       k  candidates (generated items) per request
    l  code levels    c  codes per level
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from einops import rearrange, reduce
from torch import Tensor

from lightning_rec.objectives.grpo import group_advantages
from lightning_rec.objectives.ppo import ppo_loss
from lightning_rec.objectives.rollout import Rollout

__all__ = [
    "HEPORollout",
    "critic_loss",
    "generalized_advantages",
    "hepo_advantages",
    "hepo_loss",
    "hepo_rollout",
    "process_rewards",
]


def process_rewards(codes: Tensor, code_popularity: Tensor, alpha: float | Sequence[float] = 0.1) -> Tensor:
    """Per-level process rewards ``alpha_l * max(0, P_l(z_l) - mean_z P_l(z))``.

    Args:
        codes: `b k l` long, the candidates' codes.
        code_popularity: `b l c`, P_l: each request's (user's) distribution of level-l codes among
            its past positives (rows sum to 1; all zero for a user without positives).
        alpha: alpha_l, one for every level or one per level.

    Returns:
        `b k l` float rewards (>= 0).
    """
    if (
        codes.dim() != 3
        or code_popularity.dim() != 3
        or code_popularity.shape[:2] != (codes.shape[0], codes.shape[2])
    ):
        raise ValueError(
            f"codes must have shape (b k l) and code_popularity (b l c) with the same b and l, got "
            f"{tuple(codes.shape)} and {tuple(code_popularity.shape)}"
        )
    weights = _per_level("alpha", alpha, codes.shape[2], code_popularity)
    chosen = code_popularity.gather(2, rearrange(codes.long(), "b k l -> b l k"))  # (b l k)
    mean = reduce(code_popularity, "b l c -> b l 1", "mean")
    return rearrange((chosen - mean).clamp(min=0), "b l k -> b k l") * weights


def generalized_advantages(
    rewards: Tensor, values: Tensor, gamma: float = 0.99, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """GAE over the last axis (arXiv 1506.02438, Eq. 16), the episode ending after the last step.

    Args:
        rewards: `... l` reward after each step.
        values: `... l` V(s_l) before each step (detached here: advantages are constants of the update).
        gamma, lam: discount and GAE's lambda, in [0, 1].

    Returns:
        advantages `... l` and lambda-returns `... l` (advantages + values), the critic's targets.
    """
    if rewards.shape != values.shape:
        raise ValueError(
            f"rewards and values must have the same shape, got {tuple(rewards.shape)} and "
            f"{tuple(values.shape)}"
        )
    if not (0 <= gamma <= 1 and 0 <= lam <= 1):
        raise ValueError(f"gamma and lam must be in [0, 1], got {gamma} and {lam}")
    values = values.detach().to(torch.promote_types(values.dtype, torch.float32))
    rewards = rewards.detach().to(values.dtype)
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for step in reversed(range(rewards.shape[-1])):
        next_value = values[..., step + 1] if step + 1 < rewards.shape[-1] else torch.zeros_like(running)
        delta = rewards[..., step] + gamma * next_value - values[..., step]
        running = delta + gamma * lam * running
        advantages[..., step] = running
    return advantages, advantages + values


def hepo_advantages(
    level_rewards: Tensor,
    final_rewards: Tensor,
    values: Tensor,
    gamma: float = 0.99,
    lam: float = 0.95,
    scale: bool = True,
) -> tuple[Tensor, Tensor]:
    """HEPO's advantages and critic targets for K candidates per request.

    Args:
        level_rewards: `b k l` process rewards (the last level's entry is replaced by R).
        final_rewards: `b k`, R of each candidate.
        values: `b k l` critic values V(s, z_<l).
        gamma, lam: GAE's discount and lambda over the levels.
        scale: divide the last level's centred R by its std over the K candidates (GRPO) or not.

    Returns:
        advantages `b k l` (GAE at levels 0..l-2, standardised per level over the batch; R z-scored
        over the K candidates at level l-1) and returns `b k l` (lambda-returns; R at the last level).
    """
    if (
        level_rewards.dim() != 3
        or level_rewards.shape != values.shape
        or final_rewards.shape != level_rewards.shape[:2]
    ):
        raise ValueError(
            "level_rewards and values must have shape (b k l) and final_rewards (b k), got "
            f"{tuple(level_rewards.shape)}, {tuple(values.shape)} and {tuple(final_rewards.shape)}"
        )
    rewards = torch.cat([level_rewards[..., :-1], final_rewards[..., None].to(level_rewards.dtype)], dim=-1)
    advantages, returns = generalized_advantages(rewards, values, gamma, lam)
    # The coarse levels' GAE advantages are standardised per level over the batch, as PPO
    # implementations do (CleanRL's norm_adv): with rewards >= 0 and a critic still learning, raw
    # advantages are all positive and would reinforce every sampled code alike.
    coarse = advantages[..., :-1]
    coarse = (coarse - coarse.mean(dim=(0, 1))) / (coarse.std(dim=(0, 1), correction=1) + 1e-4)
    last = group_advantages(final_rewards.detach(), scale=scale).to(advantages.dtype)
    return torch.cat([coarse, last[..., None]], dim=-1), returns


def hepo_loss(
    log_probs: Tensor,
    old_log_probs: Tensor,
    values: Tensor,
    level_rewards: Tensor,
    final_rewards: Tensor,
    level_weights: Sequence[float] | None = None,
    gamma: float = 0.99,
    lam: float = 0.95,
    clip_epsilon: float = 0.2,
    value_coef: float = 0.5,
    old_values: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """HEPO's loss: sum_l c_l PPO-clip_l + value_coef * sum_l mean (V_l - G_l)^2.

    Args:
        log_probs: `b k l` log pi(z_l | s, z_<l) of the candidates' codes, current policy (with gradient).
        old_log_probs: `b k l` the same at sampling time.
        values: `b k l` the critic's V(s, z_<l), current (with gradient).
        level_rewards: `b k l` process rewards (:func:`process_rewards`); the last level's is unused.
        final_rewards: `b k` R per candidate.
        level_weights: c_l per level (default (l + 1) / L).
        gamma, lam: GAE's discount and lambda.
        clip_epsilon: PPO's eps.
        value_coef: weight of the critic loss.
        old_values: `b k l` the critic's values at sampling time, for the advantages (default: ``values``,
            detached: a single update per batch).

    Returns:
        The scalar loss and detached diagnostics: per level l (1-based) "policy_loss_l", "clip_fraction_l",
        "advantage_mean_l"; "policy_loss", "critic_loss", "reward_mean", "return_mean", "loss".
    """
    shape = tuple(log_probs.shape)
    if log_probs.dim() != 3:
        raise ValueError(f"log_probs must have shape (b k l), got {shape}")
    for name, tensor in (
        ("old_log_probs", old_log_probs),
        ("values", values),
        ("level_rewards", level_rewards),
    ):
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have the shape of log_probs {shape}, got {tuple(tensor.shape)}")
    weights = _level_weights(level_weights, shape[2])
    advantages, returns = hepo_advantages(
        level_rewards, final_rewards, values if old_values is None else old_values, gamma, lam
    )
    diagnostics: dict[str, Tensor] = {}
    policy_loss = log_probs.new_zeros((), dtype=torch.float32)
    for level, weight in enumerate(weights):
        level_loss, level_diagnostics = ppo_loss(
            rearrange(log_probs[..., level], "b k -> (b k) 1"),
            rearrange(old_log_probs[..., level], "b k -> (b k) 1"),
            rearrange(advantages[..., level], "b k -> (b k)"),
            clip_epsilon=clip_epsilon,
        )
        policy_loss = policy_loss + weight * level_loss
        diagnostics[f"policy_loss_{level + 1}"] = level_diagnostics["loss"]
        diagnostics[f"clip_fraction_{level + 1}"] = level_diagnostics["clip_fraction"]
        diagnostics[f"advantage_mean_{level + 1}"] = level_diagnostics["advantage_mean"]
    critic = critic_loss(values, returns)
    loss = policy_loss + value_coef * critic
    with torch.no_grad():
        diagnostics |= {
            "policy_loss": policy_loss.detach(),
            "critic_loss": critic.detach(),
            "reward_mean": final_rewards.float().mean(),
            "return_mean": returns[..., 0].float().mean(),
            "loss": loss.detach(),
        }
    return loss, diagnostics


def critic_loss(values: Tensor, returns: Tensor) -> Tensor:
    """HEPO's critic loss sum_l mean (V_l - G_l)^2: values `b k l` (with gradient), returns `b k l` (targets,
    detached here) -> a scalar (fp32 or wider)."""
    if values.shape != returns.shape:
        raise ValueError(
            f"values and returns must have the same shape (b k l), got {tuple(values.shape)} and "
            f"{tuple(returns.shape)}"
        )
    dtype = torch.promote_types(values.dtype, torch.float32)
    return reduce((values.to(dtype) - returns.detach().to(dtype)).pow(2), "b k l -> l", "mean").sum()


@dataclass(kw_only=True)
class HEPORollout(Rollout):
    """K sampled code paths per request and what HEPO's PPO epochs need; `b` groups (requests), `k`
    samples (candidates), `l` steps (code levels); ``old_log_probs`` and ``mask`` are `b k l`.

    Attributes:
        codes: `b k l` long, the candidates' codes.
        advantages: `b k l` c_l * L * A_l, the per-step advantages for ``ppo_update`` (module docstring).
        returns: `b k l` the critic's targets (lambda-returns; R at the last level).
        final_rewards: `b k` R of each candidate.
    """

    codes: Tensor
    advantages: Tensor
    returns: Tensor
    final_rewards: Tensor


def hepo_rollout(
    codes: Tensor,
    old_log_probs: Tensor,
    old_values: Tensor,
    level_rewards: Tensor,
    final_rewards: Tensor,
    level_weights: Sequence[float] | None = None,
    gamma: float = 0.99,
    lam: float = 0.95,
) -> HEPORollout:
    """Store a batch of sampled paths for ``ppo_update``: advantages and returns are computed once, from
    the critic at sampling time, and stay constants of every PPO epoch.

    Args:
        codes: `b k l` the candidates' codes.
        old_log_probs: `b k l` log pi_old(z_l | s, z_<l) at sampling time.
        old_values: `b k l` the critic's V(s, z_<l) at sampling time.
        level_rewards, final_rewards: `b k l` and `b k`, as :func:`hepo_advantages`.
        level_weights: c_l per level (default (l + 1) / L), each >= 0.
        gamma, lam: GAE's discount and lambda.

    Returns:
        The rollout, its advantages scaled by c_l * L (so ``ppo_update``'s per-candidate mean over the
        levels is :func:`hepo_loss`'s sum_l c_l PPO-clip_l) and an all-True mask.
    """
    if codes.shape != old_log_probs.shape:
        raise ValueError(
            f"codes must have the shape of old_log_probs {tuple(old_log_probs.shape)}, "
            f"got {tuple(codes.shape)}"
        )
    levels = old_log_probs.shape[-1]
    weights = _level_weights(level_weights, levels)
    advantages, returns = hepo_advantages(level_rewards, final_rewards, old_values, gamma, lam)
    scale = torch.tensor(weights, dtype=advantages.dtype, device=advantages.device) * levels
    return HEPORollout(
        old_log_probs=old_log_probs.detach(),
        mask=torch.ones_like(old_log_probs, dtype=torch.bool),
        codes=codes,
        advantages=advantages * scale,
        returns=returns,
        final_rewards=final_rewards.detach(),
    )


def _level_weights(level_weights: Sequence[float] | None, levels: int) -> list[float]:
    """c_l: the given weights (one per level, each >= 0) or the default (l + 1) / L."""
    if level_weights is None:
        return [(level + 1) / levels for level in range(levels)]
    weights = [float(weight) for weight in level_weights]
    if len(weights) != levels:
        raise ValueError(f"level_weights must have one weight per level ({levels}), got {len(weights)}")
    if min(weights) < 0:
        # A negative c_l would flip which side of the clip is the pessimistic one.
        raise ValueError(f"level_weights must be >= 0, got {weights}")
    return weights


def _per_level(name: str, value: float | Sequence[float], levels: int, like: Tensor) -> Tensor:
    """A scalar or one value per level -> `l` tensor on ``like``'s device and dtype."""
    values = [float(value)] * levels if isinstance(value, int | float) else [float(entry) for entry in value]
    if len(values) != levels:
        raise ValueError(f"{name} must be a number or one per level ({levels}), got {len(values)} values")
    return torch.tensor(values, dtype=like.dtype, device=like.device)
