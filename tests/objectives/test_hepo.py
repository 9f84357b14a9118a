"""HEPO (GPR, arXiv 2511.10138): process rewards, GAE, last-level z-score, per-level PPO clip, critic."""

import pytest
import torch

from lightning_rec.objectives import PPOConfig
from lightning_rec.objectives.hepo import (
    critic_loss,
    generalized_advantages,
    hepo_advantages,
    hepo_loss,
    hepo_rollout,
    process_rewards,
)
from lightning_rec.objectives.rollout import PolicyEvaluation, ppo_update


def test_gae_equals_a_hand_computation():
    rewards = torch.tensor([0.1, 0.2, 1.0])
    values = torch.tensor([0.5, 0.4, 0.3])
    advantages, returns = generalized_advantages(rewards, values, gamma=0.9, lam=0.8)
    # delta_2 = 1.0 - 0.3 = 0.7 (the episode ends after the last code)
    # delta_1 = 0.2 + 0.9 * 0.3 - 0.4 = 0.07;  A_1 = 0.07 + 0.72 * 0.7 = 0.574
    # delta_0 = 0.1 + 0.9 * 0.4 - 0.5 = -0.04; A_0 = -0.04 + 0.72 * 0.574 = 0.37328
    assert advantages.tolist() == pytest.approx([0.37328, 0.574, 0.7])
    assert returns.tolist() == pytest.approx([0.87328, 0.974, 1.0])


def test_gae_with_lambda_one_is_the_discounted_return_minus_the_value():
    generator = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(4, 3, 5, generator=generator), torch.randn(4, 3, 5, generator=generator)
    advantages, returns = generalized_advantages(rewards, values, gamma=0.7, lam=1.0)
    discounts = 0.7 ** torch.arange(5.0)
    for step in range(5):
        discounted = (rewards[..., step:] * discounts[: 5 - step]).sum(-1)
        assert torch.allclose(returns[..., step], discounted, atol=1e-5)
        assert torch.allclose(advantages[..., step], discounted - values[..., step], atol=1e-5)


def test_process_rewards_pay_for_codes_above_the_users_mean_popularity():
    popularity = torch.tensor([[[0.5, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 1.0]]])  # (b=1 l=2 c=4), mean 0.25
    codes = torch.tensor([[[0, 3], [1, 0], [2, 3]]])  # (b=1 k=3 l=2)
    rewards = process_rewards(codes, popularity, alpha=[0.1, 1.0])
    expected = torch.tensor([[[0.025, 0.75], [0.005, 0.0], [0.0, 0.75]]])
    assert torch.allclose(rewards, expected)


def test_last_level_is_z_scored_over_the_candidates_and_coarse_levels_use_gae():
    level_rewards = torch.tensor([[[0.2, 9.0], [0.0, 9.0], [0.1, 9.0]]])  # the last entry is replaced by R
    final_rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[[0.5, 1.0], [0.5, 2.0], [0.5, 2.5]]])
    advantages, returns = hepo_advantages(level_rewards, final_rewards, values, gamma=1.0, lam=0.5)
    # R: mean 2, Bessel std 1 -> (R - 2) / (1 + 1e-4)
    assert advantages[0, :, 1].tolist() == pytest.approx([-1 / 1.0001, 0.0, 1 / 1.0001])
    # Level 0: delta_0 = r_0 + V_1 - V_0, delta_1 = R - V_1, A_0 = delta_0 + 0.5 delta_1, then
    # standardised over the batch's candidates.
    gae = torch.tensor(
        [
            (level_rewards[0, c, 0] + values[0, c, 1] - values[0, c, 0])
            + 0.5 * (final_rewards[0, c] - values[0, c, 1])
            for c in range(3)
        ]
    )
    expected = (gae - gae.mean()) / (gae.std() + 1e-4)
    assert torch.allclose(advantages[0, :, 0], expected, atol=1e-6)
    assert returns[0, :, 0].tolist() == pytest.approx((gae + values[0, :, 0]).tolist())
    assert torch.allclose(returns[..., 1], final_rewards)


def test_hepo_loss_is_the_weighted_per_level_clipped_surrogate_plus_the_critic_loss():
    generator = torch.Generator().manual_seed(3)
    b, k, levels = 2, 4, 3
    log_probs = torch.randn(b, k, levels, generator=generator).requires_grad_()
    old_log_probs = log_probs.detach() + 0.4 * torch.randn(b, k, levels, generator=generator)
    values = torch.randn(b, k, levels, generator=generator).requires_grad_()
    level_rewards = torch.rand(b, k, levels, generator=generator)
    final_rewards = torch.rand(b, k, generator=generator)
    loss, diagnostics = hepo_loss(
        log_probs, old_log_probs, values, level_rewards, final_rewards, gamma=0.9, lam=0.8, value_coef=0.5
    )
    advantages, returns = hepo_advantages(level_rewards, final_rewards, values.detach(), gamma=0.9, lam=0.8)
    ratio = torch.exp(log_probs - old_log_probs)
    surrogate = -torch.minimum(ratio * advantages, ratio.clamp(0.8, 1.2) * advantages)  # (b k l)
    level_weights = torch.tensor([1 / 3, 2 / 3, 1.0])
    expected = (surrogate.mean(dim=(0, 1)) * level_weights).sum() + 0.5 * (
        (values - returns).pow(2).mean(dim=(0, 1)).sum()
    )
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert diagnostics["policy_loss_3"].item() == pytest.approx(surrogate[..., 2].mean().item(), rel=1e-5)
    loss.backward()
    # Unclipped steps move log pi along their advantage, scaled by c_l and the ratio.
    inside = (ratio > 0.8) & (ratio < 1.2)
    expected_grad = -(level_weights * advantages * ratio).detach() / (b * k)
    assert torch.allclose(log_probs.grad[inside], expected_grad[inside], atol=1e-6)


def test_ppo_update_on_a_hepo_rollout_is_hepo_loss_with_its_gradient():
    """The rollout's c_l * L advantages make ppo_update's loss (mean over levels) HEPO's sum_l c_l
    PPO-clip_l, clipped steps included, and the critic rides as the auxiliary loss."""
    generator = torch.Generator().manual_seed(4)
    b, k, levels = 3, 4, 3
    old_log_probs = -torch.rand(b, k, levels, generator=generator) * 3
    log_probs = (old_log_probs + 0.4 * torch.randn(b, k, levels, generator=generator)).requires_grad_()
    values = torch.randn(b, k, levels, generator=generator).requires_grad_()
    level_rewards = torch.rand(b, k, levels, generator=generator)
    final_rewards = torch.rand(b, k, generator=generator)
    codes = torch.randint(0, 5, (b, k, levels), generator=generator)
    weights = [0.2, 0.5, 1.5]
    rollout = hepo_rollout(
        codes, old_log_probs, values.detach(), level_rewards, final_rewards, weights, gamma=0.9, lam=0.8
    )
    losses = []

    def evaluate(groups):
        return PolicyEvaluation(
            log_probs[groups], auxiliary_loss=0.5 * critic_loss(values[groups], rollout.returns[groups])
        )

    diagnostics = ppo_update(
        rollout, rollout.advantages, evaluate, losses.append, PPOConfig(clip_epsilon=0.2)
    )
    expected, _ = hepo_loss(
        log_probs,
        old_log_probs,
        values,
        level_rewards,
        final_rewards,
        weights,
        gamma=0.9,
        lam=0.8,
        value_coef=0.5,
    )
    assert diagnostics["clip_fraction"] > 0  # the clip is part of what is compared
    assert losses[0].item() == pytest.approx(expected.item(), rel=1e-5)
    grads = torch.autograd.grad(losses[0], (log_probs, values))
    expected_grads = torch.autograd.grad(expected, (log_probs, values))
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="level_weights must be >= 0"):
        hepo_rollout(codes, old_log_probs, values, level_rewards, final_rewards, [1.0, -1.0, 1.0])
