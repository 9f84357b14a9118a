"""Tests for lightning_rec/objectives/ppo.py beyond the TRL oracle of tests/objectives/test_grpo.py: the KL
estimators against the closed-form KL of two categorical distributions, and the options' validation."""

import pytest
import torch

from lightning_rec.objectives import PPOConfig, kl_estimate, ppo_loss


def categorical_pair(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    policy_logits = torch.randn(7, generator=generator, dtype=torch.float64)
    reference_logits = policy_logits + 0.5 * torch.randn(7, generator=generator, dtype=torch.float64)
    return policy_logits.log_softmax(-1), reference_logits.log_softmax(-1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_estimators_expectations_match_closed_form(seed: int) -> None:
    log_policy, log_reference = categorical_pair(seed)
    probabilities = log_policy.exp()
    exact = (probabilities * (log_policy - log_reference)).sum()
    # Exact expectations under a ~ pi, summing over the 7 actions instead of sampling.
    for estimator in ("k1", "k3"):  # unbiased
        expected = (probabilities * kl_estimate(log_policy, log_reference, estimator)).sum()
        torch.testing.assert_close(expected, exact)
    k2 = kl_estimate(log_policy, log_reference, "k2")
    k3 = kl_estimate(log_policy, log_reference, "k3")
    assert (k2 >= 0).all() and (k3 >= 0).all()
    assert (kl_estimate(log_policy, log_policy, "k1") == 0).all()


@pytest.mark.parametrize("seed", [0, 1])
def test_k2_gradient_is_the_kl_gradient_on_policy(seed: int) -> None:
    # E_{a ~ pi}[grad (log pi(a) - log ref(a))^2 / 2] = E[(log pi - log ref) grad log pi] = grad KL(pi, ref).
    policy_logits, reference = categorical_pair(seed)
    logits = policy_logits.clone().requires_grad_(True)
    log_policy = logits.log_softmax(-1)
    sampled = (log_policy.exp().detach() * kl_estimate(log_policy, reference, "k2")).sum()
    (estimated,) = torch.autograd.grad(sampled, logits, retain_graph=True)
    exact_kl = (log_policy.exp() * (log_policy - reference)).sum()
    (exact,) = torch.autograd.grad(exact_kl, logits)
    torch.testing.assert_close(estimated, exact)


def test_kl_estimator_choice_changes_the_loss_and_the_logged_kl() -> None:
    generator = torch.Generator().manual_seed(3)
    log_probs = -torch.rand(6, 3, generator=generator, dtype=torch.float64)
    reference = log_probs + 0.3 * torch.randn(6, 3, generator=generator, dtype=torch.float64)
    advantages = torch.randn(6, generator=generator, dtype=torch.float64)
    logged = {}
    for estimator in ("k1", "k2", "k3"):
        loss, diagnostics = ppo_loss(
            log_probs, log_probs, advantages, ref_log_probs=reference, kl_coef=0.1, kl_estimator=estimator
        )
        expected_kl = kl_estimate(log_probs, reference, estimator).mean()
        torch.testing.assert_close(diagnostics["kl"], expected_kl)
        torch.testing.assert_close(loss, -advantages.mean() + 0.1 * expected_kl)
        logged[estimator] = diagnostics["kl"].item()
    assert len(set(logged.values())) == 3


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"clip_level": "token"}, "clip_level"),
        ({"kl_estimator": "k0"}, "kl_estimator"),
        ({"entropy_coef": 0.1}, "entropy"),
        ({"clip_level": "sequence", "advantages": torch.zeros(2, 3)}, "one advantage per sequence"),
    ],
)
def test_bad_options_are_rejected_with_the_argument_named(options: dict, name: str) -> None:
    advantages = options.pop("advantages", torch.zeros(2))
    with pytest.raises(ValueError, match=name):
        ppo_loss(torch.zeros(2, 3), torch.zeros(2, 3), advantages, **options)


def test_config_rejects_negative_weights() -> None:
    with pytest.raises(ValueError, match="kl_coef and entropy_coef"):
        PPOConfig(entropy_coef=-0.1)
