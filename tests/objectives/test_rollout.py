"""Tests for lightning_rec/objectives/rollout.py: the PPO update optimises toy problems with known optima.

- a 5-armed Bernoulli bandit (known best arm) with the categorical rollout;
- a 1-D Gaussian policy (known optimum of a quadratic reward) with a hand-built rollout;
- a diffusion head pulled towards a target vector with the diffusion rollout (last step masked);
- with ppo_epochs = 1 and one minibatch the update is exactly one step on today's ``grpo_loss``;
- with ppo_epochs > 1 the clip engages; A2PO and business-only advantages move the policy differently
  when the two rewards disagree.
"""

import pytest
import torch
from torch import Tensor, nn

from lightning_rec.blocks import DiffusionHead
from lightning_rec.objectives import (
    PolicyEvaluation,
    PPOConfig,
    Rollout,
    a2po_advantages,
    categorical_log_probs,
    categorical_rollout,
    diffusion_log_probs,
    diffusion_rollout,
    frozen_copy,
    group_advantages,
    grpo_loss,
    minibatch_groups,
    ppo_update,
)
from lightning_rec.objectives.rollout import CategoricalRollout

ARM_MEANS = torch.tensor([0.1, 0.3, 0.9, 0.5, 0.2])  # arm 2 is the best


def sgd_step(optimizer: torch.optim.Optimizer):
    def step(loss: Tensor) -> None:
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def train_bandit(config: PPOConfig, iterations: int, seed: int = 0) -> tuple[nn.Parameter, list[dict]]:
    """PPO on the bandit: `iterations` rollouts of 16 groups x 8 pulls, Bernoulli rewards."""
    generator = torch.Generator().manual_seed(seed)
    logits = nn.Parameter(torch.zeros(len(ARM_MEANS)))
    step = sgd_step(torch.optim.Adam([logits], lr=0.05))
    reference = frozen_copy(nn.ParameterList([logits]))[0] if config.kl_coef > 0 else None
    diagnostics = []
    for _ in range(iterations):
        groups = 16
        rollout = categorical_rollout(
            logits.detach().expand(groups, -1),
            group_size=8,
            reference_logits=None if reference is None else reference.expand(groups, -1),
            generator=generator,
        )
        rewards = (
            torch.rand(rollout.actions.shape, generator=generator) < ARM_MEANS[rollout.actions]
        ).float()

        def evaluate(indices: Tensor, rollout: CategoricalRollout = rollout) -> PolicyEvaluation:
            return categorical_log_probs(logits.expand(len(indices), -1), rollout.actions[indices])

        diagnostics.append(ppo_update(rollout, group_advantages(rewards), evaluate, step, config, generator))
    return logits, diagnostics


def expected_arm_reward(logits: Tensor) -> float:
    return float(logits.detach().softmax(dim=-1) @ ARM_MEANS)


@pytest.mark.parametrize(
    "config",
    [
        PPOConfig(ppo_epochs=4, num_minibatches=2),
        PPOConfig(ppo_epochs=4, num_minibatches=4, clip_epsilon_high=0.28, clip_level="sequence"),
        PPOConfig(ppo_epochs=2, num_minibatches=2, kl_coef=0.01, kl_estimator="k2", entropy_coef=0.001),
    ],
)
def test_bandit_reward_rises_to_the_best_arm(config: PPOConfig) -> None:
    start = expected_arm_reward(torch.zeros(len(ARM_MEANS)))  # uniform: 0.4
    logits, diagnostics = train_bandit(config, iterations=15)
    assert expected_arm_reward(logits) > start + 0.2
    assert int(logits.argmax()) == 2
    if config.kl_coef > 0:
        assert diagnostics[-1]["kl"] > 0 and "entropy" in diagnostics[-1]


def test_several_epochs_get_more_out_of_the_same_samples_than_one() -> None:
    one_pass, _ = train_bandit(PPOConfig(ppo_epochs=1, num_minibatches=1), iterations=15)
    several, _ = train_bandit(PPOConfig(ppo_epochs=4, num_minibatches=2), iterations=15)
    start = expected_arm_reward(torch.zeros(len(ARM_MEANS)))
    assert start + 0.1 < expected_arm_reward(one_pass) < expected_arm_reward(several)


def test_clip_engages_only_with_several_epochs() -> None:
    _, one_pass = train_bandit(PPOConfig(ppo_epochs=1, num_minibatches=1), iterations=3)
    _, several = train_bandit(PPOConfig(ppo_epochs=4, num_minibatches=2, clip_epsilon=0.1), iterations=3)
    for diagnostics in one_pass:
        # One step on fresh samples: the ratio is exactly 1 and nothing is clipped.
        assert diagnostics["clip_fraction"].item() == 0.0
        assert diagnostics["ratio_max"].item() == pytest.approx(1.0)
        assert diagnostics["updates"].item() == 1
    assert all(diagnostics["clip_fraction"] > 0 for diagnostics in several)
    assert all(diagnostics["ratio_max"] > 1.1 for diagnostics in several)
    assert several[0]["updates"].item() == 8


def test_one_epoch_one_minibatch_is_one_step_on_grpo_loss() -> None:
    generator = torch.Generator().manual_seed(4)
    contexts, items, group = 6, 9, 5
    initial = torch.randn(contexts, items, generator=generator)
    initial[:, 0] = float("-inf")  # a masked action (padding) as the modules have
    rollout = categorical_rollout(initial, group, generator=generator)
    rewards = torch.rand(contexts, group, generator=generator)

    ours = nn.Parameter(initial.clone())
    config = PPOConfig(ppo_epochs=1, num_minibatches=1, clip_epsilon=0.0)

    def evaluate(indices: Tensor) -> PolicyEvaluation:
        return categorical_log_probs(ours[indices], rollout.actions[indices])

    diagnostics = ppo_update(
        rollout, group_advantages(rewards), evaluate, sgd_step(torch.optim.SGD([ours], lr=0.5)), config
    )

    today = nn.Parameter(initial.clone())
    log_probs = today.log_softmax(dim=-1).gather(1, rollout.actions)
    loss, _ = grpo_loss(log_probs, log_probs.detach(), rewards)
    sgd_step(torch.optim.SGD([today], lr=0.5))(loss)

    assert diagnostics["loss"].item() == pytest.approx(loss.item())
    torch.testing.assert_close(ours.detach(), today.detach())
    assert not torch.equal(ours.detach(), initial)


def test_gaussian_policy_moves_to_the_optimum() -> None:
    # Reward -(a - 2)^2, a ~ N(mu, sigma^2): expected reward -(mu - 2)^2 - sigma^2, best: mu = 2, sigma -> 0.
    generator = torch.Generator().manual_seed(0)
    mean, log_std = nn.Parameter(torch.tensor(0.0)), nn.Parameter(torch.tensor(0.0))
    step = sgd_step(torch.optim.Adam([mean, log_std], lr=0.05))
    config = PPOConfig(ppo_epochs=4, num_minibatches=2)

    def expected_reward() -> float:
        return float(-((mean.detach() - 2) ** 2) - log_std.detach().exp() ** 2)

    start = expected_reward()  # -5
    clip_fractions = []
    for _ in range(30):
        with torch.no_grad():
            policy = torch.distributions.Normal(mean, log_std.exp())
            actions = policy.sample((8, 8, 1))  # (b g s)
            rollout = Rollout(
                old_log_probs=policy.log_prob(actions), mask=torch.ones_like(actions, dtype=torch.bool)
            )
        rewards = -((actions[..., 0] - 2) ** 2)

        def evaluate(indices: Tensor, actions: Tensor = actions) -> PolicyEvaluation:
            return PolicyEvaluation(
                torch.distributions.Normal(mean, log_std.exp()).log_prob(actions[indices])
            )

        clip_fractions.append(
            ppo_update(rollout, group_advantages(rewards), evaluate, step, config, generator)["clip_fraction"]
        )
    assert expected_reward() > start + 3.0
    assert abs(mean.item() - 2) < 0.5
    assert max(clip_fractions) > 0


def test_diffusion_rollout_masks_the_last_step_and_its_update_pulls_x0_to_a_target() -> None:
    torch.manual_seed(0)
    head = DiffusionHead(hidden_size=4, num_steps=8, sampling_steps=4, dropout=0.1)
    nn.init.normal_(head.denoiser.output.weight, std=0.3)  # zero-init: x0 would not depend on the noise
    reference = frozen_copy(head)
    condition = torch.zeros(6, 1, 4)
    target = torch.tensor([1.0, -1.0, 0.5, 0.0])
    generator = torch.Generator().manual_seed(1)
    config = PPOConfig(ppo_epochs=2, num_minibatches=2, kl_coef=0.01)
    step = sgd_step(torch.optim.Adam(head.parameters(), lr=3e-3))

    def mean_reward() -> float:
        rollout = diffusion_rollout(head, condition, 32, eta=1.0, generator=torch.Generator().manual_seed(99))
        return float(-((rollout.x0 - target) ** 2).sum(dim=-1).mean())

    start = mean_reward()
    head.train()  # the rollout and the update must ignore dropout all the same
    for iteration in range(25):
        rollout = diffusion_rollout(head, condition, 8, eta=1.0, reference=reference, generator=generator)
        if iteration == 0:
            # 4 transitions; the last (to t = 0) is deterministic and masked out.
            assert rollout.mask.shape == (6, 8, 4)
            assert rollout.mask[..., :3].all() and not rollout.mask[..., 3].any()
            # The stored log-probs are the head's own: the first ratio is 1 and so is the reference's.
            fresh = diffusion_log_probs(head, condition, rollout)
            torch.testing.assert_close(fresh[rollout.mask], rollout.old_log_probs[rollout.mask])
            torch.testing.assert_close(
                rollout.ref_log_probs[rollout.mask], rollout.old_log_probs[rollout.mask]
            )
        rewards = -((rollout.x0 - target) ** 2).sum(dim=-1)

        def evaluate(indices: Tensor, rollout=rollout) -> PolicyEvaluation:
            return PolicyEvaluation(diffusion_log_probs(head, condition[indices], rollout.select(indices)))

        ppo_update(rollout, group_advantages(rewards), evaluate, step, config, generator)
    assert head.training
    assert mean_reward() > start + 0.5


def test_a2po_and_business_only_update_differently_when_the_rewards_disagree() -> None:
    # One request, 4 candidates. Business prefers candidate 0; the judge prefers 1 and 3 and ranks 2 last.
    # Candidate 2 is below the mean on both rewards (they agree), so A2PO pushes it down harder.
    business = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    semantic = torch.tensor([[0.0, 1.0, 0.1, 0.9]])
    actions = torch.arange(4).reshape(1, 4)
    rollout = CategoricalRollout(
        actions=actions,
        old_log_probs=torch.full((1, 4, 1), -torch.log(torch.tensor(4.0)).item()),
        mask=torch.ones(1, 4, 1, dtype=torch.bool),
    )
    moves = {}
    for mode in ("a2po", "business_only"):
        logits = nn.Parameter(torch.zeros(4))
        advantages, _ = a2po_advantages(business, semantic, mode=mode)

        def evaluate(indices: Tensor, logits: nn.Parameter = logits) -> PolicyEvaluation:
            return categorical_log_probs(logits.expand(len(indices), -1), actions[indices])

        ppo_update(rollout, advantages, evaluate, sgd_step(torch.optim.SGD([logits], lr=1.0)), PPOConfig())
        moves[mode] = logits.detach()
    assert not torch.allclose(moves["a2po"], moves["business_only"], atol=1e-3)
    # Business-only treats 1, 2, 3 alike; A2PO lowers 2 most and never lifts a business loser above 0's gain.
    assert moves["business_only"][1:].allclose(moves["business_only"][1])
    assert moves["a2po"][2] < moves["a2po"][1] and moves["a2po"][2] < moves["a2po"][3]
    assert moves["a2po"].argmax() == 0 and moves["business_only"].argmax() == 0


def test_minibatches_partition_the_groups() -> None:
    generator = torch.Generator().manual_seed(0)
    parts = minibatch_groups(10, 3, generator)
    assert sorted(torch.cat(parts).tolist()) == list(range(10))
    assert sorted(len(part) for part in parts) == [3, 3, 4]
    with pytest.raises(ValueError, match="num_minibatches"):
        minibatch_groups(2, 3)


def test_bad_update_inputs_are_rejected() -> None:
    rollout = categorical_rollout(torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match="advantages must have shape"):
        ppo_update(rollout, torch.zeros(3, 3), lambda groups: None, lambda loss: None, PPOConfig())
    with pytest.raises(ValueError, match="ref_log_probs"):
        ppo_update(rollout, torch.zeros(3, 2), lambda groups: None, lambda loss: None, PPOConfig(kl_coef=0.1))
    with pytest.raises(ValueError, match="evaluate must return"):
        ppo_update(
            rollout,
            torch.zeros(3, 2),
            lambda groups: PolicyEvaluation(torch.zeros(len(groups), 2)),
            lambda loss: None,
            PPOConfig(),
        )
    with pytest.raises(ValueError, match="ppo_epochs"):
        PPOConfig(ppo_epochs=0)
    with pytest.raises(ValueError, match="kl_estimator"):
        PPOConfig(kl_estimator="k4")
