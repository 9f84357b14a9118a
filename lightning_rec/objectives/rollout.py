"""Reusable RL rollouts and the PPO update that consumes them: sample once, then optimise several times.

A rollout draws ``g`` samples for each of ``b`` groups (requests, prompts, users) from the behaviour
policy, under ``torch.no_grad``, and stores what PPO's later passes need: the samples, their per-step
log-probs at sampling time (``old_log_probs``), which steps have a density (``mask``) and, for the KL
term, their log-probs under a frozen reference. :func:`ppo_update` then runs ``ppo_epochs`` passes over
random minibatches of the groups; each minibatch re-evaluates the current policy on its stored samples
and takes one optimiser step on :func:`~lightning_rec.objectives.ppo_loss`. From the second step on the
ratio to the stored log-probs leaves 1 and the clip engages.

Two policies of the zoo are covered here:

- :func:`categorical_rollout` / :func:`categorical_log_probs`: a softmax over a catalogue or a
  vocabulary, one action per sample (S-GRec's generator; Reasoning to Rank). s = 1.
- :func:`diffusion_rollout` / :func:`diffusion_log_probs`: DDIM trajectories of a
  :class:`~lightning_rec.blocks.DiffusionHead` with eta > 0 (DiffuReason). Each stochastic reverse
  transition x_{t_i} -> x_{t_{i+1}} is a step whose Gaussian log-density is its log-prob (DDPO, arXiv
  2305.13301). The last transition (to t = 0) is deterministic, has no density, and is masked out
  (``mask`` False), so it counts neither in the per-step mean nor in the clip fraction.

Any other policy (an autoregressive LM, a Gaussian) builds a :class:`Rollout` itself: `b g s` old
log-probs, mask and optional reference log-probs. GPR's semantic-ID paths, one step per code level, are
:class:`~lightning_rec.objectives.HEPORollout` (:func:`~lightning_rec.objectives.hepo_rollout`).

**How a LightningModule drives the epochs: manual optimisation.** The module sets
``self.automatic_optimization = False`` for its RL stage, and one ``training_step`` does the whole
algorithm box on its batch: rollout, rewards, advantages, then ``ppo_update`` with a ``step`` closure
that calls ``manual_backward`` and ``optimizer.step()``. One batch of the datamodule is one rollout;
``ppo_epochs * num_minibatches`` optimiser steps are taken on it (``global_step`` counts them).
Supervised terms that must be optimised alongside (S-GRec's next-item anchor, DiffuReason's backbone
and diffusion losses) come back from ``evaluate`` as ``PolicyEvaluation.auxiliary_loss`` and are added
to every minibatch's loss. The policy is evaluated without dropout (``eval()``) both at sampling and
in the updates: a dropout mask would be part of the action's probability that no later pass could
reproduce, and the first ratio would not be 1::

    from lightning_rec.objectives import PPOConfig, group_advantages
    from lightning_rec.objectives.rollout import (
        categorical_log_probs, categorical_rollout, diffusion_log_probs, diffusion_rollout, frozen_copy,
        ppo_update,
    )

    class MyRL(L.LightningModule):
        def __init__(self, policy, group_size=8, ppo_epochs=2, num_minibatches=2, kl_coef=0.05):
            super().__init__()
            self.policy = policy
            self.automatic_optimization = False   # several optimiser steps per batch
            self.ppo = PPOConfig(ppo_epochs=ppo_epochs, num_minibatches=num_minibatches, kl_coef=kl_coef)
            self._reference = None                # frozen copy of the WHOLE policy, not a submodule

        def on_train_start(self):
            if self.ppo.kl_coef > 0:
                object.__setattr__(self, "_reference", frozen_copy(self.policy))

        def training_step(self, batch, batch_idx):
            optimizer = self.optimizers()
            self.policy.eval()                       # no dropout in the policy's probabilities
            with torch.no_grad():                    # 1. rollout under the behaviour policy
                reference = self._reference(batch.context) if self._reference is not None else None
                rollout = categorical_rollout(self.policy(batch.context), 8, reference_logits=reference)
            rewards = self.reward(batch, rollout.actions)        # 2. (b g)
            advantages = group_advantages(rewards)               # 3. or a2po_advantages(...)

            def evaluate(groups):                    # current policy on the stored samples of `groups`
                return categorical_log_probs(self.policy(batch.context[groups]), rollout.actions[groups])

            def step(loss):
                optimizer.zero_grad()
                self.manual_backward(loss)
                optimizer.step()

            diagnostics = ppo_update(rollout, advantages, evaluate, step, self.ppo)   # 4.
            self.log_dict({f"train/ppo_{name}": value for name, value in diagnostics.items()})

The diffusion policy is the same with (condition ``b k d`` from the whole policy's encoder)::

    with torch.no_grad():   # rollout.mask is False at the deterministic last step
        rollout = diffusion_rollout(self.diffusion, condition, group_size, eta=0.5,
                                    reference=ref_head, reference_condition=ref_condition)
    rewards = ranking_reward(rollout.x0)                                   # x0 (b g d)

    def evaluate(groups):
        return PolicyEvaluation(
            diffusion_log_probs(self.diffusion, self.condition(batch, groups), rollout.select(groups)),
            auxiliary_loss=supervised_losses(batch, groups),
        )

A module with a learning-rate scheduler steps it in ``step`` (Lightning does not under manual
optimisation); gradient clipping is ``self.clip_gradients(optimizer, ...)`` there too.

Axis legend:
    b  groups (requests)          g  samples per group        s  steps of a sample
    i  catalogue / vocabulary     m  groups of a minibatch    k  condition tokens    d  hidden size
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, TypeVar

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from lightning_rec.objectives.ppo import PPOConfig, ppo_loss

if TYPE_CHECKING:  # blocks import objectives (the judge); a runtime import here would be circular
    from lightning_rec.blocks.diffusion import DiffusionHead

__all__ = [
    "CategoricalRollout",
    "DiffusionRollout",
    "PolicyEvaluation",
    "Rollout",
    "categorical_log_probs",
    "categorical_rollout",
    "diffusion_log_probs",
    "diffusion_rollout",
    "frozen_copy",
    "minibatch_groups",
    "ppo_update",
]

R = TypeVar("R", bound="Rollout")


@dataclass(kw_only=True)
class Rollout:
    """What PPO's passes need of `b` groups of `g` sampled sequences of `s` steps.

    Attributes:
        old_log_probs: `b g s` per-step log-probs under the behaviour policy (detached).
        mask: `b g s` bool, True at steps that have a density.
        ref_log_probs: `b g s` log-probs under the frozen reference, or None (no KL term).
    """

    old_log_probs: Tensor
    mask: Tensor
    ref_log_probs: Tensor | None = None

    def __post_init__(self) -> None:
        if self.old_log_probs.dim() != 3:
            raise ValueError(f"old_log_probs must have shape (b g s), got {tuple(self.old_log_probs.shape)}")
        for name in ("mask", "ref_log_probs"):
            value = getattr(self, name)
            if value is not None and value.shape != self.old_log_probs.shape:
                raise ValueError(
                    f"{name} must have the shape of old_log_probs {tuple(self.old_log_probs.shape)}, "
                    f"got {tuple(value.shape)}"
                )

    def select(self: R, groups: Tensor) -> R:
        """The same rollout restricted to the groups `m` (long indices), every per-group field indexed."""
        return replace(
            self,
            **{
                field.name: value[groups]
                for field in fields(self)
                if isinstance(value := getattr(self, field.name), Tensor) and field.name != "timesteps"
            },
        )


@dataclass(kw_only=True)
class CategoricalRollout(Rollout):
    """A rollout of a softmax policy: `actions` `b g` item (or token) indices; s = 1."""

    actions: Tensor


@dataclass(kw_only=True)
class DiffusionRollout(Rollout):
    """A rollout of DDIM trajectories.

    Attributes:
        x0: `b g d` the sampled intents (the actions' outcome, detached).
        trajectory: `b g (s+1) d` the latents visited, x_{t_S} first.
        timesteps: `(s+1)` the schedule, descending, the last one 0 (shared by every sample).
        eta: DDIM's eta of the sampling (> 0).
    """

    x0: Tensor
    trajectory: Tensor
    timesteps: Tensor
    eta: float


@dataclass
class PolicyEvaluation:
    """The current policy on a minibatch's stored samples, as ``ppo_update``'s ``evaluate`` returns it.

    Attributes:
        log_probs: `m g s` per-step log-probs (with gradient).
        entropy: `m g s` the policy's entropy per step (with gradient), for the entropy bonus; or None.
        auxiliary_loss: a scalar optimised with the PPO loss (a supervised anchor), or None.
    """

    log_probs: Tensor
    entropy: Tensor | None = None
    auxiliary_loss: Tensor | None = None


def frozen_copy(policy: nn.Module) -> nn.Module:
    """A deep copy of the whole policy with no gradient and no dropout: the KL reference.

    Keep it out of the module's submodules (``object.__setattr__``), so it is neither trained nor saved.
    """
    return copy.deepcopy(policy).requires_grad_(False).eval()


# ---------------------------------------------------------------------------- categorical
@torch.no_grad()
def categorical_rollout(
    logits: Tensor,
    group_size: int,
    reference_logits: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> CategoricalRollout:
    """Draw `g` actions per row from softmax(logits), with replacement.

    Args:
        logits: `b i` the behaviour policy's logits (-inf marks actions it never takes).
        group_size: g.
        reference_logits: `b i` the frozen reference's logits, for the KL term; None for no KL.
        generator: the random source of the draws.

    Returns:
        The rollout: actions `b g`, old (and reference) log-probs `b g 1`, mask all True.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape (b i), got {tuple(logits.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if reference_logits is not None and reference_logits.shape != logits.shape:
        raise ValueError(
            f"reference_logits must have the shape of logits {tuple(logits.shape)}, "
            f"got {tuple(reference_logits.shape)}"
        )
    log_policy = logits.float().log_softmax(dim=-1)
    actions = torch.multinomial(log_policy.exp(), group_size, replacement=True, generator=generator)
    old_log_probs = rearrange(log_policy.gather(1, actions), "b g -> b g 1")
    ref_log_probs = None
    if reference_logits is not None:
        reference = reference_logits.float().log_softmax(dim=-1)
        ref_log_probs = rearrange(reference.gather(1, actions), "b g -> b g 1")
    return CategoricalRollout(
        actions=actions,
        old_log_probs=old_log_probs,
        mask=torch.ones_like(old_log_probs, dtype=torch.bool),
        ref_log_probs=ref_log_probs,
    )


def categorical_log_probs(logits: Tensor, actions: Tensor) -> PolicyEvaluation:
    """The current softmax policy on stored actions: logits `m i`, actions `m g` -> log-probs and entropy
    `m g 1` (the entropy of each row's whole distribution, repeated for its g samples)."""
    if logits.dim() != 2 or actions.dim() != 2 or actions.shape[0] != logits.shape[0]:
        raise ValueError(
            f"logits must have shape (m i) and actions (m g) with the same m, got {tuple(logits.shape)} and "
            f"{tuple(actions.shape)}"
        )
    log_policy = logits.float().log_softmax(dim=-1)
    # 0 * log 0 is 0: masked (-inf) actions add nothing to the entropy.
    entropy = -(log_policy.exp() * log_policy.masked_fill(torch.isinf(log_policy), 0.0)).sum(dim=-1)
    return PolicyEvaluation(
        log_probs=rearrange(log_policy.gather(1, actions), "m g -> m g 1"),
        entropy=repeat(entropy, "m -> m g 1", g=actions.shape[1]),
    )


# ------------------------------------------------------------------------------ diffusion
@torch.no_grad()
def diffusion_rollout(
    head: DiffusionHead,
    condition: Tensor,
    group_size: int,
    eta: float,
    steps: int | None = None,
    reference: DiffusionHead | None = None,
    reference_condition: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> DiffusionRollout:
    """Sample `g` stochastic DDIM trajectories per condition from ``head``, without dropout.

    Args:
        head: the diffusion head (the policy's last stage).
        condition: `b k d` the condition of each group (from the whole policy's encoder).
        group_size: g.
        eta: DDIM eta in (0, 1]: the noise of each reverse step, hence its density.
        steps: sampling steps s; None is the head's ``sampling_steps``.
        reference: the frozen reference's head, for the KL term; None for no KL.
        reference_condition: `b k d` the reference policy's condition; None means ``condition`` (a
            reference of the head alone).
        generator: the random source of the draws.

    Returns:
        The rollout; its mask is False at the deterministic last transition.
    """
    if condition.dim() != 3:
        raise ValueError(f"condition must have shape (b k d), got {tuple(condition.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if not 0 < eta <= 1:
        raise ValueError(f"eta must be in (0, 1] (eta = 0 is deterministic: no policy density), got {eta}")
    training = head.training
    head.eval()
    try:
        group = repeat(condition, "b k d -> (b g) k d", g=group_size)
        sample = head.sample(group, steps=steps, eta=eta, generator=generator)
    finally:
        head.train(training)
    split = {"pattern": "(b g) ... -> b g ...", "g": group_size}
    old_log_probs = rearrange(sample.log_probs.float(), **split)
    # A transition to t = 0 is the mean itself: deterministic, no density, not an action.
    mask = repeat(sample.timesteps[1:] > 0, "s -> b g s", b=condition.shape[0], g=group_size)
    rollout = DiffusionRollout(
        old_log_probs=old_log_probs,
        mask=mask,
        x0=rearrange(sample.x0.detach(), **split),
        trajectory=rearrange(sample.trajectory, **split),
        timesteps=sample.timesteps,
        eta=eta,
    )
    if reference is not None:
        reference_condition = condition if reference_condition is None else reference_condition
        rollout.ref_log_probs = diffusion_log_probs(reference, reference_condition, rollout)
    return rollout


def diffusion_log_probs(head: DiffusionHead, condition: Tensor, rollout: DiffusionRollout) -> Tensor:
    """Per-step log-densities `m g s` of a rollout's stored trajectories under ``head`` now (with gradient
    when enabled), without dropout. condition `m k d` (one per group of ``rollout``, e.g. of
    ``rollout.select(groups)``)."""
    m, g = rollout.trajectory.shape[:2]
    if condition.dim() != 3 or condition.shape[0] != m:
        raise ValueError(
            f"condition must have shape (m k d) with m = {m} groups of the rollout, "
            f"got {tuple(condition.shape)}"
        )
    training = head.training
    head.eval()
    try:
        log_probs = head.trajectory_log_probs(
            repeat(condition, "m k d -> (m g) k d", g=g),
            rearrange(rollout.trajectory, "m g s d -> (m g) s d"),
            rollout.timesteps,
            rollout.eta,
        )
    finally:
        head.train(training)
    return rearrange(log_probs, "(m g) s -> m g s", g=g)


# ----------------------------------------------------------------------------- the update
def minibatch_groups(
    num_groups: int, num_minibatches: int, generator: torch.Generator | None = None
) -> list[Tensor]:
    """A random split of `num_groups` group indices into `num_minibatches` near-equal long tensors."""
    if not 1 <= num_minibatches <= num_groups:
        raise ValueError(
            f"num_minibatches must be in [1, number of groups = {num_groups}], got {num_minibatches}"
        )
    if num_minibatches == 1:
        return [torch.arange(num_groups)]
    return list(torch.randperm(num_groups, generator=generator).tensor_split(num_minibatches))


def ppo_update(
    rollout: Rollout,
    advantages: Tensor,
    evaluate: Callable[[Tensor], PolicyEvaluation],
    step: Callable[[Tensor], None],
    config: PPOConfig,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """``config.ppo_epochs`` passes of ``config.num_minibatches`` optimiser steps on one rollout.

    Args:
        rollout: `b` groups of `g` samples with stored old (and reference) log-probs `b g s`.
        advantages: `b g` one per sample (GRPO, A2PO) or `b g s` per step; constants of the update.
        evaluate: group indices `m` (long, on CPU) -> the current policy on those groups' stored samples,
            log-probs `m g s` with gradient (and the entropy and an auxiliary loss, as needed).
        step: takes the minibatch's scalar loss and makes the optimiser step (zero_grad, backward, step).
        config: the PPO settings.
        generator: the random source of the minibatch split.

    Returns:
        Detached diagnostics of :func:`~lightning_rec.objectives.ppo_loss`, averaged over the updates
        ("ratio_max" is the max), plus "auxiliary_loss" when ``evaluate`` returns one and "updates".
    """
    b, g, s = rollout.old_log_probs.shape
    if advantages.shape not in ((b, g), (b, g, s)):
        raise ValueError(
            f"advantages must have shape (b g) = {(b, g)} or (b g s) = {(b, g, s)} to match the rollout, "
            f"got {tuple(advantages.shape)}"
        )
    if config.kl_coef > 0 and rollout.ref_log_probs is None:
        raise ValueError(
            "config.kl_coef > 0 needs the rollout's ref_log_probs (pass a reference to the rollout)"
        )
    advantages = advantages.detach()

    def flat(values: Tensor | None) -> Tensor | None:
        return None if values is None else rearrange(values, "m g ... -> (m g) ...")

    history: list[dict[str, Tensor]] = []
    for _ in range(config.ppo_epochs):
        for groups in minibatch_groups(b, config.num_minibatches, generator):
            evaluation = evaluate(groups)
            index = groups.to(rollout.old_log_probs.device)
            expected = (len(groups), g, s)
            if tuple(evaluation.log_probs.shape) != expected:
                raise ValueError(
                    f"evaluate must return log_probs of shape (m g s) = {expected} for {len(groups)} groups, "
                    f"got {tuple(evaluation.log_probs.shape)}"
                )

            loss, diagnostics = ppo_loss(
                flat(evaluation.log_probs),
                flat(rollout.old_log_probs[index]),
                flat(advantages[index]),
                mask=flat(rollout.mask[index]),
                clip_epsilon=config.clip_epsilon,
                clip_epsilon_high=config.clip_epsilon_high,
                clip_level=config.clip_level,
                ref_log_probs=flat(None if rollout.ref_log_probs is None else rollout.ref_log_probs[index]),
                kl_coef=config.kl_coef,
                kl_estimator=config.kl_estimator,
                entropy=flat(evaluation.entropy),
                entropy_coef=config.entropy_coef,
                aggregation=config.aggregation,
            )
            if evaluation.auxiliary_loss is not None:
                loss = loss + evaluation.auxiliary_loss
                diagnostics["auxiliary_loss"] = evaluation.auxiliary_loss.detach()
            step(loss)
            history.append(diagnostics)
    summary = {name: torch.stack([entry[name] for entry in history]).float().mean() for name in history[0]}
    summary["ratio_max"] = torch.stack([entry["ratio_max"] for entry in history]).max().float()
    summary["updates"] = torch.tensor(float(len(history)))
    return summary
