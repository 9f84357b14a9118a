"""Tests for lightning_rec/objectives/grpo.py.

The oracle is TRL 1.16's own code: `GRPOTrainer._compute_loss` is called unbound on a stand-in
trainer that holds only the attributes it reads, with the per-token log-probs fed through a stand-in
`_get_per_token_logps_and_entropies`, so loss, gradient and clip/KL metrics come from TRL itself.
The group advantage lives inside `_generate_and_score_completions` (a full generation step), so its
formula is reproduced from there around TRL's own `nanstd`.
"""

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from einops import rearrange
from torch import Tensor

from lightning_rec.objectives import group_advantages, grpo_loss, ppo_loss

AGGREGATION_OF_TRL_LOSS = {"grpo": "sequence_mean", "bnpo": "token_mean", "dapo": "token_mean"}


def trl_compute_loss(
    loss_type: str,
    log_probs: Tensor,
    old_log_probs: Tensor,
    ref_log_probs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    epsilon_low: float,
    epsilon_high: float,
    beta: float,
    importance_sampling_level: str = "token",
    entropies: Tensor | None = None,
    entropy_coef: float = 0.0,
) -> tuple[Tensor, dict[str, list[float]]]:
    """TRL's loss and logged metrics on these tensors: one process, no gradient accumulation, no vLLM,
    entropy mask or off-policy mask; a static entropy bonus when `entropy_coef` != 0."""
    grpo_trainer = pytest.importorskip("trl.trainer.grpo_trainer")
    num_sequences, steps = log_probs.shape
    metrics: defaultdict = defaultdict(lambda: defaultdict(list))
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *args, **kwargs: (
            log_probs,
            torch.zeros_like(log_probs) if entropies is None else entropies,
            None,
        ),
        top_entropy_quantile=1.0,
        off_policy_mask_threshold=None,
        importance_sampling_level=importance_sampling_level,
        beta=beta,
        loss_type=loss_type,
        epsilon_low=epsilon_low,
        epsilon_high=epsilon_high,
        use_vllm=False,
        vllm_importance_sampling_correction=False,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        model=SimpleNamespace(training=True),
        current_gradient_accumulation_steps=1,
        accelerator=SimpleNamespace(
            num_processes=1, reduce=lambda t, reduction: t, gather=lambda t: t, sync_gradients=True
        ),
        _entropy_bonus_enabled=entropy_coef != 0,
        entropy_coef=entropy_coef,
        use_adaptive_entropy=False,
        aux_loss_enabled=False,
        _metrics=metrics,
    )
    inputs = {
        "prompt_ids": torch.zeros(num_sequences, 1, dtype=torch.long),
        "prompt_mask": torch.ones(num_sequences, 1, dtype=torch.long),
        "completion_ids": torch.zeros(num_sequences, steps, dtype=torch.long),
        "completion_mask": mask.long(),
        "advantages": advantages,
        "old_per_token_logps": old_log_probs,
        "ref_per_token_logps": ref_log_probs,
        "num_items_in_batch": mask.sum(),
    }
    loss = grpo_trainer.GRPOTrainer._compute_loss(trainer, None, inputs)
    return loss, metrics["train"]


def trl_group_advantages(rewards: Tensor, scale: bool) -> Tensor:
    """trl/trainer/grpo_trainer.py (TRL 1.16.0) lines 2765-2787, sum_then_normalize, scale_rewards "group"
    or "none", one reward function, rewards flattened group-major as TRL holds them."""
    nanstd = pytest.importorskip("trl.trainer.utils").nanstd
    num_generations = rewards.shape[1]
    rewards = rearrange(rewards, "b g -> (b g)")
    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
    std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
    advantages = rewards - mean_grouped_rewards
    if scale:
        advantages = advantages / (std_rewards + 1e-4)
    return rearrange(advantages, "(b g) -> b g", g=num_generations)


# ---------------------------------------------------------------------------------------------------
# 1. group advantages


@pytest.mark.parametrize("shape", [(1, 2), (3, 4), (5, 8), (2, 16)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_advantages_centred_and_unit_std(shape: tuple[int, int], seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    rewards = 3 * torch.randn(shape, generator=generator, dtype=torch.float64) + 5
    scaled = group_advantages(rewards)
    centred = group_advantages(rewards, scale=False)

    torch.testing.assert_close(scaled.mean(dim=1), torch.zeros(shape[0], dtype=torch.float64))
    torch.testing.assert_close(centred.mean(dim=1), torch.zeros(shape[0], dtype=torch.float64))
    # Unit std up to eps: std(A) = std(r) / (std(r) + eps), with the same (Bessel) convention.
    reward_std = rewards.std(dim=1)
    torch.testing.assert_close(scaled.std(dim=1), reward_std / (reward_std + 1e-4))
    torch.testing.assert_close(centred, rewards - rewards.mean(dim=1, keepdim=True))
    # The ordering inside a group is kept: advantage is an increasing function of the reward.
    assert torch.equal(scaled.argsort(dim=1), rewards.argsort(dim=1))


@pytest.mark.parametrize("scale", [True, False])
def test_group_advantages_match_trl_formula(scale: bool) -> None:
    generator = torch.Generator().manual_seed(3)
    rewards = torch.rand(4, 6, generator=generator)
    rewards[1] = 0.7  # a constant group among varied ones
    torch.testing.assert_close(group_advantages(rewards, scale=scale), trl_group_advantages(rewards, scale))


def test_constant_groups_give_zero_advantage() -> None:
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [2.0, 0.0, 1.0]])
    advantages = group_advantages(rewards)
    assert torch.isfinite(advantages).all()
    assert torch.equal(advantages[:2], torch.zeros(2, 3))
    assert (advantages[2] != 0).any()


# ---------------------------------------------------------------------------------------------------
# 2. clipped loss against TRL


@pytest.mark.parametrize("loss_type", sorted(AGGREGATION_OF_TRL_LOSS))
@pytest.mark.parametrize("per_step_advantages", [False, True])
def test_clipped_loss_matches_trl(loss_type: str, per_step_advantages: bool) -> None:
    generator = torch.Generator().manual_seed(7)
    num_sequences, steps = 8, 5
    old_log_probs = -torch.rand(num_sequences, steps, generator=generator, dtype=torch.float64) * 3
    # Log-ratios of std 0.3 put a good share of steps outside [1 - 0.2, 1 + 0.28].
    log_probs = old_log_probs + 0.3 * torch.randn(
        num_sequences, steps, generator=generator, dtype=torch.float64
    )
    ref_log_probs = old_log_probs + 0.2 * torch.randn(
        num_sequences, steps, generator=generator, dtype=torch.float64
    )
    advantage_shape = (num_sequences, steps) if per_step_advantages else (num_sequences,)
    advantages = torch.randn(advantage_shape, generator=generator, dtype=torch.float64)
    mask = torch.rand(num_sequences, steps, generator=generator) < 0.75
    mask[0] = True  # a full row
    mask[1] = False  # an empty row: both divide its sum by max(1, 0)
    mask[2, :3] = True  # variable lengths, padding on the right
    mask[2, 3:] = False

    trl_log_probs = log_probs.clone().requires_grad_(True)
    trl_loss, trl_metrics = trl_compute_loss(
        loss_type, trl_log_probs, old_log_probs, ref_log_probs, advantages, mask, 0.2, 0.28, 0.04
    )
    trl_loss.backward()

    ours_log_probs = log_probs.clone().requires_grad_(True)
    loss, diagnostics = ppo_loss(
        ours_log_probs,
        old_log_probs,
        advantages,
        mask=mask,
        clip_epsilon=0.2,
        clip_epsilon_high=0.28,
        ref_log_probs=ref_log_probs,
        kl_coef=0.04,
        aggregation=AGGREGATION_OF_TRL_LOSS[loss_type],
    )
    loss.backward()

    torch.testing.assert_close(loss, trl_loss)
    torch.testing.assert_close(ours_log_probs.grad, trl_log_probs.grad)
    assert diagnostics["clip_fraction_low"] > 0 and diagnostics["clip_fraction_high"] > 0
    for ours, theirs in [
        ("clip_fraction", "clip_ratio/region_mean"),
        ("clip_fraction_low", "clip_ratio/low_mean"),
        ("clip_fraction_high", "clip_ratio/high_mean"),
        ("kl", "kl"),
    ]:
        assert diagnostics[ours].item() == pytest.approx(trl_metrics[theirs][0], rel=1e-6), ours


@pytest.mark.parametrize("loss_type", sorted(AGGREGATION_OF_TRL_LOSS))
def test_sequence_level_ratio_and_entropy_bonus_match_trl(loss_type: str) -> None:
    # GSPO's sequence ratio (TRL importance_sampling_level="sequence") and TRL's static entropy bonus.
    generator = torch.Generator().manual_seed(17)
    num_sequences, steps = 10, 4
    old_log_probs = -torch.rand(num_sequences, steps, generator=generator, dtype=torch.float64) * 3
    noise = torch.randn(2, num_sequences, steps, generator=generator, dtype=torch.float64)
    log_probs, ref_log_probs = old_log_probs + 0.4 * noise[0], old_log_probs + 0.2 * noise[1]
    advantages = torch.randn(num_sequences, generator=generator, dtype=torch.float64)
    entropy = torch.rand(num_sequences, steps, generator=generator, dtype=torch.float64)
    mask = torch.rand(num_sequences, steps, generator=generator) < 0.8
    mask[0] = True
    mask[1, 1:] = False

    trl_log_probs = log_probs.clone().requires_grad_(True)
    trl_entropy = entropy.clone().requires_grad_(True)
    trl_loss, trl_metrics = trl_compute_loss(
        loss_type, trl_log_probs, old_log_probs, ref_log_probs, advantages, mask, 0.2, 0.28, 0.04,
        importance_sampling_level="sequence", entropies=trl_entropy, entropy_coef=0.01,
    )  # fmt: skip
    trl_loss.backward()

    ours_log_probs = log_probs.clone().requires_grad_(True)
    ours_entropy = entropy.clone().requires_grad_(True)
    loss, diagnostics = ppo_loss(
        ours_log_probs, old_log_probs, advantages, mask=mask,
        clip_epsilon=0.2, clip_epsilon_high=0.28, clip_level="sequence",
        ref_log_probs=ref_log_probs, kl_coef=0.04,
        entropy=ours_entropy, entropy_coef=0.01,
        aggregation=AGGREGATION_OF_TRL_LOSS[loss_type],
    )  # fmt: skip
    loss.backward()

    torch.testing.assert_close(loss, trl_loss)
    torch.testing.assert_close(ours_log_probs.grad, trl_log_probs.grad)
    torch.testing.assert_close(ours_entropy.grad, trl_entropy.grad)
    assert diagnostics["clip_fraction"] > 0
    for ours, theirs in [
        ("clip_fraction", "clip_ratio/region_mean"),
        ("clip_fraction_low", "clip_ratio/low_mean"),
        ("clip_fraction_high", "clip_ratio/high_mean"),
        ("kl", "kl"),
        ("entropy", "entropy"),
    ]:
        assert diagnostics[ours].item() == pytest.approx(trl_metrics[theirs][0], rel=1e-6), ours


def test_sequence_level_clip_moves_every_step_of_a_sequence_together() -> None:
    # One sequence, A > 0, two steps whose log-ratios are +0.5 and -0.5: the step ratios 1.65 and 0.61
    # clip the first step only; the sequence ratio is exp(0) = 1, so nothing is clipped at sequence level.
    old_log_probs = torch.zeros(1, 2, dtype=torch.float64)
    log_probs = torch.tensor([[0.5, -0.5]], dtype=torch.float64, requires_grad=True)
    advantages = torch.ones(1, dtype=torch.float64)
    _, step_level = ppo_loss(log_probs, old_log_probs, advantages)
    loss, sequence_level = ppo_loss(log_probs, old_log_probs, advantages, clip_level="sequence")
    assert step_level["clip_fraction"].item() == pytest.approx(0.5)
    assert sequence_level["clip_fraction"].item() == 0.0
    assert sequence_level["ratio_max"].item() == pytest.approx(1.0)
    assert step_level["ratio_max"].item() == pytest.approx(math.exp(0.5))
    loss.backward()
    # d/d lp_t of -exp(mean_t lp_t) * A at ratio 1 = -A / s, the same for both steps.
    torch.testing.assert_close(log_probs.grad, torch.full((1, 2), -0.5, dtype=torch.float64))


def test_sequence_and_token_mean_differ_with_unequal_lengths() -> None:
    # Guards the comparison above against an aggregation that ignores its argument.
    log_probs = torch.zeros(2, 3)
    advantages = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[True, False, False], [True, True, True]])
    sequence_mean, _ = ppo_loss(log_probs, log_probs, advantages, mask=mask)
    token_mean, _ = ppo_loss(log_probs, log_probs, advantages, mask=mask, aggregation="token_mean")
    assert sequence_mean.item() == pytest.approx(0.0)  # (-1 + 1) / 2
    assert token_mean.item() == pytest.approx(0.5)  # (-1 + 3) / 4


# ---------------------------------------------------------------------------------------------------
# 3. hand-derived example: 2 groups x 2 samples x 2 steps


def test_hand_derived_two_groups() -> None:
    # Dr. GRPO advantages: group 0 rewards (1, -1) -> A = (+1, -1); group 1 rewards (4, 0) -> A = (+2, -2).
    rewards = torch.tensor([[1.0, -1.0], [4.0, 0.0]], dtype=torch.float64)
    ratios = torch.tensor([[[1.5, 0.5], [1.5, 0.5]], [[1.1, 1.0], [0.9, 2.0]]], dtype=torch.float64)
    old_log_probs = torch.full_like(ratios, -1.0)
    log_probs = (old_log_probs + ratios.log()).requires_grad_(True)
    mask = torch.tensor([[[1, 1], [1, 1]], [[1, 0], [1, 1]]], dtype=torch.bool)
    # eps = 0.2, per-step loss -min(rho A, clip(rho, 0.8, 1.2) A):
    #   seq 0, A=+1: rho 1.5 -> -min(1.5, 1.2) = -1.2 (clipped high); rho 0.5 -> -min(0.5, 0.8) = -0.5
    #   seq 1, A=-1: rho 1.5 -> -min(-1.5, -1.2) = 1.5;  rho 0.5 -> -min(-0.5, -0.8) = 0.8 (clipped low)
    #   seq 2, A=+2: rho 1.1 -> -2.2;                    rho 1.0 -> masked out
    #   seq 3, A=-2: rho 0.9 -> -min(-1.8, -1.8) = 1.8;  rho 2.0 -> -min(-4.0, -2.4) = 4.0
    # sequence_mean: (-1.7/2 + 2.3/2 - 2.2/1 + 5.8/2) / 4 = (-0.85 + 1.15 - 2.2 + 2.9) / 4 = 0.25
    # token_mean:    (-1.2 - 0.5 + 1.5 + 0.8 - 2.2 + 1.8 + 4.0) / 7 = 4.2 / 7 = 0.6
    loss, diagnostics = grpo_loss(log_probs, old_log_probs, rewards, mask=mask, scale_rewards=False)
    assert loss.item() == pytest.approx(0.25)
    assert diagnostics["clip_fraction"].item() == pytest.approx(2 / 7)
    assert diagnostics["clip_fraction_low"].item() == pytest.approx(1 / 7)
    assert diagnostics["clip_fraction_high"].item() == pytest.approx(1 / 7)
    assert diagnostics["reward_mean"].item() == pytest.approx(1.0)
    # d loss / d log pi = -A rho / (valid steps of the sequence * 4) where unclipped; 0 if clipped or masked.
    loss.backward()
    expected_grad = torch.tensor(
        [[[0.0, -0.5 / 8], [1.5 / 8, 0.0]], [[-2.2 / 4, 0.0], [1.8 / 8, 4.0 / 8]]], dtype=torch.float64
    )
    torch.testing.assert_close(log_probs.grad, expected_grad)

    token_mean, _ = grpo_loss(
        log_probs, old_log_probs, rewards, mask=mask, scale_rewards=False, aggregation="token_mean"
    )
    assert token_mean.item() == pytest.approx(0.6)
    # Clip-higher eps_high = 0.6: seq 0 step 0 is no longer clipped, -min(1.5, 1.6) = -1.5 -> (4.2 - 0.3) / 7;
    # the low side (seq 1 step 1) and seq 3's rho = 2.0 with A < 0 (unclipped term the smaller) are unchanged.
    clip_higher, diagnostics = grpo_loss(
        log_probs,
        old_log_probs,
        rewards,
        mask=mask,
        scale_rewards=False,
        clip_epsilon_high=0.6,
        aggregation="token_mean",
    )
    assert clip_higher.item() == pytest.approx(3.9 / 7)
    assert diagnostics["clip_fraction_high"].item() == 0.0
    assert diagnostics["clip_fraction_low"].item() == pytest.approx(1 / 7)


# ---------------------------------------------------------------------------------------------------
# 4. on-policy single update


@pytest.mark.parametrize("aggregation", ["sequence_mean", "token_mean"])
@pytest.mark.parametrize("detach_old", [True, False])
def test_on_policy_gradient_is_advantage_weighted_score(aggregation: str, detach_old: bool) -> None:
    generator = torch.Generator().manual_seed(11)
    num_sequences, steps = 6, 4
    log_probs = (-torch.rand(num_sequences, steps, generator=generator, dtype=torch.float64)).requires_grad_(
        True
    )
    advantages = torch.randn(num_sequences, generator=generator, dtype=torch.float64)
    # Passing the graph-attached log_probs as old_log_probs must not cancel the gradient (they are detached).
    old_log_probs = log_probs.detach() if detach_old else log_probs
    loss, diagnostics = ppo_loss(log_probs, old_log_probs, advantages, aggregation=aggregation)
    loss.backward()
    expected = -rearrange(advantages, "N -> N 1").expand(num_sequences, steps) / (steps * num_sequences)
    torch.testing.assert_close(log_probs.grad, expected)
    assert loss.item() == pytest.approx(-advantages.mean().item())
    assert diagnostics["ratio_mean"].item() == pytest.approx(1.0)
    assert diagnostics["clip_fraction"].item() == 0.0


# ---------------------------------------------------------------------------------------------------
# 5. clip-fraction diagnostics against a brute-force count


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clip_fractions_match_brute_force(seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    num_sequences, steps, eps_low, eps_high = 7, 6, 0.2, 0.3
    old_log_probs = -torch.rand(num_sequences, steps, generator=generator, dtype=torch.float64)
    log_probs = old_log_probs + 0.4 * torch.randn(
        num_sequences, steps, generator=generator, dtype=torch.float64
    )
    advantages = torch.randn(num_sequences, steps, generator=generator, dtype=torch.float64)
    advantages[0, 0] = 0.0  # a zero advantage is never clipped: both terms are 0
    mask = torch.rand(num_sequences, steps, generator=generator) < 0.8
    _, diagnostics = ppo_loss(
        log_probs, old_log_probs, advantages, mask=mask, clip_epsilon=eps_low, clip_epsilon_high=eps_high
    )

    low = high = valid = 0
    for i in range(num_sequences):
        for t in range(steps):
            if not mask[i, t]:
                continue
            valid += 1
            ratio = math.exp(log_probs[i, t].item() - old_log_probs[i, t].item())
            advantage = advantages[i, t].item()
            unclipped = ratio * advantage
            clipped = min(max(ratio, 1 - eps_low), 1 + eps_high) * advantage
            if clipped < unclipped:  # min() picks the clipped term and it differs
                low += ratio < 1 - eps_low
                high += ratio > 1 + eps_high
    assert low > 0 and high > 0
    assert diagnostics["clip_fraction_low"].item() == pytest.approx(low / valid)
    assert diagnostics["clip_fraction_high"].item() == pytest.approx(high / valid)
    assert diagnostics["clip_fraction"].item() == pytest.approx((low + high) / valid)


# ---------------------------------------------------------------------------------------------------
# 6. validation


def _valid_arguments() -> dict[str, Tensor]:
    return {
        "log_probs": torch.zeros(4, 3),
        "old_log_probs": torch.zeros(4, 3),
        "advantages": torch.zeros(4),
        "mask": torch.ones(4, 3, dtype=torch.bool),
        "ref_log_probs": torch.zeros(4, 3),
    }


@pytest.mark.parametrize(
    ("name", "bad_value"),
    [
        ("log_probs", torch.zeros(4)),
        ("old_log_probs", torch.zeros(4, 2)),
        ("advantages", torch.zeros(3)),
        ("advantages", torch.zeros(4, 2)),
        ("mask", torch.ones(3, 3, dtype=torch.bool)),
        ("ref_log_probs", torch.zeros(4, 3, 1)),
    ],
)
def test_ppo_loss_rejects_bad_shapes(name: str, bad_value: Tensor) -> None:
    arguments = _valid_arguments() | {name: bad_value}
    with pytest.raises(ValueError, match=rf"^{name} must have"):
        ppo_loss(**arguments)


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ({"kl_coef": 0.1, "ref_log_probs": None}, "ref_log_probs"),
        ({"clip_epsilon": 1.5}, "clip_epsilon"),
        ({"clip_epsilon_high": -0.1}, "clip_epsilon_high"),
        ({"aggregation": "sum"}, "aggregation"),
    ],
)
def test_ppo_loss_rejects_bad_options(arguments: dict, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name}"):
        ppo_loss(**(_valid_arguments() | arguments))


@pytest.mark.parametrize(
    ("rewards", "log_probs", "name"),
    [
        (torch.zeros(6), torch.zeros(2, 3, 4), "rewards"),
        (torch.zeros(2, 1), torch.zeros(2, 1, 4), "rewards"),
        (torch.zeros(2, 3), torch.zeros(3, 2, 4), "log_probs"),
        (torch.zeros(2, 3), torch.zeros(2, 3, 4, 1), "log_probs"),
    ],
)
def test_grpo_loss_rejects_bad_shapes(rewards: Tensor, log_probs: Tensor, name: str) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must"):
        grpo_loss(log_probs, log_probs, rewards)


def test_grpo_loss_rejects_mask_of_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"^mask must have the shape of log_probs \(2, 3, 4\)"):
        grpo_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 3), mask=torch.ones(2, 3))


# ---------------------------------------------------------------------------------------------------
# grpo_loss wiring, dtypes, padding


def test_grpo_loss_is_group_advantages_then_clipped_loss() -> None:
    generator = torch.Generator().manual_seed(5)
    groups, samples, steps = 3, 4, 5
    rewards = torch.rand(groups, samples, generator=generator)
    old_log_probs = -torch.rand(groups, samples, steps, generator=generator)
    log_probs = old_log_probs + 0.3 * torch.randn(groups, samples, steps, generator=generator)
    ref_log_probs = old_log_probs + 0.1 * torch.randn(groups, samples, steps, generator=generator)
    options = {"ref_log_probs": ref_log_probs, "kl_coef": 0.1, "clip_epsilon_high": 0.3}
    loss, diagnostics = grpo_loss(log_probs, old_log_probs, rewards, **options)

    flat = {
        "ref_log_probs": rearrange(ref_log_probs, "b g s -> (b g) s"),
        "kl_coef": 0.1,
        "clip_epsilon_high": 0.3,
    }
    advantages = rearrange(group_advantages(rewards), "b g -> (b g)")
    expected_loss, expected = ppo_loss(
        rearrange(log_probs, "b g s -> (b g) s"),
        rearrange(old_log_probs, "b g s -> (b g) s"),
        advantages,
        **flat,
    )
    torch.testing.assert_close(loss, expected_loss)
    for key, value in expected.items():
        torch.testing.assert_close(diagnostics[key], value)
    torch.testing.assert_close(diagnostics["reward_std"], rewards.std())

    # One-step actions: (b g) log-probs equal (b g 1).
    one_step, _ = grpo_loss(log_probs[..., 0], old_log_probs[..., 0], rewards)
    one_step_expected, _ = grpo_loss(log_probs[..., :1], old_log_probs[..., :1], rewards)
    torch.testing.assert_close(one_step, one_step_expected)


def test_bf16_inputs_are_computed_in_fp32() -> None:
    generator = torch.Generator().manual_seed(9)
    old_log_probs = (-torch.rand(6, 5, generator=generator) * 3).bfloat16()
    log_probs = (old_log_probs.float() + 0.3 * torch.randn(6, 5, generator=generator)).bfloat16()
    ref_log_probs = (old_log_probs.float() + 0.1 * torch.randn(6, 5, generator=generator)).bfloat16()
    advantages = torch.randn(6, generator=generator).bfloat16()
    options = {"kl_coef": 0.05, "aggregation": "token_mean"}

    bf16_log_probs = log_probs.clone().requires_grad_(True)
    loss, _ = ppo_loss(bf16_log_probs, old_log_probs, advantages, ref_log_probs=ref_log_probs, **options)
    # The same bf16 values, exactly representable in fp32, computed in fp32.
    fp32_log_probs = log_probs.float().requires_grad_(True)
    fp32_loss, _ = ppo_loss(
        fp32_log_probs,
        old_log_probs.float(),
        advantages.float(),
        ref_log_probs=ref_log_probs.float(),
        **options,
    )
    assert loss.dtype == torch.float32
    assert loss.item() == fp32_loss.item()
    loss.backward()
    fp32_loss.backward()
    assert bf16_log_probs.grad.dtype == torch.bfloat16
    torch.testing.assert_close(bf16_log_probs.grad, fp32_log_probs.grad.bfloat16())
    assert group_advantages(torch.rand(2, 3).bfloat16()).dtype == torch.float32


def test_padding_values_do_not_leak() -> None:
    # Padded steps holding -inf (a masked softmax) or anything else change neither the loss nor its gradient.
    generator = torch.Generator().manual_seed(13)
    log_probs = -torch.rand(4, 5, generator=generator)
    old_log_probs = log_probs + 0.2 * torch.randn(4, 5, generator=generator)
    advantages = torch.randn(4, generator=generator)
    mask = torch.tensor(
        [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool
    )

    results = []
    for fill in (float("-inf"), 123.0):
        padded = log_probs.masked_fill(~mask, fill).requires_grad_(True)
        loss, diagnostics = ppo_loss(
            padded,
            old_log_probs.masked_fill(~mask, fill),
            advantages,
            mask=mask,
            ref_log_probs=padded,
            kl_coef=0.1,
        )
        loss.backward()
        assert torch.isfinite(padded.grad).all()
        assert torch.equal(padded.grad[~mask], torch.zeros(int((~mask).sum())))
        results.append((loss, padded.grad, diagnostics["ratio_mean"]))
    for first, second in zip(*results, strict=True):
        torch.testing.assert_close(first, second)
