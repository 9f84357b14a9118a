"""Tests for lightning_rec/blocks/diffusion.py: schedules against their closed forms, DDIM log-probs
against densities rebuilt by hand (and against DDPM's posterior at eta = 1), determinism, the
zero-initialised correction, gradient paths, and a loss that falls on a fixed conditional target.
Every behavioural test runs for both denoisers."""

import itertools
import math

import pytest
import torch
from torch import Tensor, nn
from torch.distributions import Normal

from lightning_rec.blocks import DiffusionHead, DiffusionSample
from lightning_rec.blocks.diffusion import beta_schedule, ddim_sigma

HIDDEN_SIZE = 16
NUM_STEPS = 8
NUM_THOUGHTS = 3
BATCH = 5
DENOISERS = ["mlp", "transformer"]


def build(denoiser: str, perturb: bool = True, **overrides) -> DiffusionHead:
    """A tiny head in eval mode. `perturb` replaces the zero-initialised output layer by random
    weights, as after training: at init x0_hat is the last thought whatever the noise, which would
    make most properties hold trivially."""
    torch.manual_seed(0)
    arguments = {
        "hidden_size": HIDDEN_SIZE,
        "num_steps": NUM_STEPS,
        "sampling_steps": 4,
        "denoiser": denoiser,
    }
    head = DiffusionHead(**{**arguments, **overrides})
    if perturb:
        nn.init.normal_(head.denoiser.output.weight, std=0.3)
        nn.init.normal_(head.denoiser.output.bias, std=0.3)
    return head.eval()


def condition(batch: int = BATCH, seed: int = 1) -> Tensor:
    return torch.randn(batch, NUM_THOUGHTS, HIDDEN_SIZE, generator=torch.Generator().manual_seed(seed))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ schedules and forward process
def test_linear_schedule_endpoints():
    head = DiffusionHead(
        hidden_size=4, num_steps=10, sampling_steps=2, schedule="linear", beta_start=1e-3, beta_end=0.05
    )
    assert head.betas.shape == (11,) and head.alphas_cumprod.shape == (11,)
    assert head.betas[0] == 0 and head.alphas_cumprod[0] == 1
    assert torch.isclose(head.betas[1], torch.tensor(1e-3))
    assert torch.isclose(head.betas[10], torch.tensor(0.05))
    assert torch.allclose(head.betas[1:].diff(), torch.full((9,), (0.05 - 1e-3) / 9), atol=1e-7)
    expected = torch.cumprod(1 - torch.linspace(1e-3, 0.05, 10, dtype=torch.float64), 0)
    assert torch.allclose(head.alphas_cumprod[1:].double(), expected, atol=1e-7)


@pytest.mark.parametrize("num_steps", [8, 32, 1000])
def test_cosine_schedule_is_monotone_in_unit_interval_and_matches_closed_form(num_steps):
    head = DiffusionHead(hidden_size=4, num_steps=num_steps, sampling_steps=1, schedule="cosine")
    alphas_cumprod = head.alphas_cumprod.double()
    assert alphas_cumprod[0] == 1
    assert (alphas_cumprod > 0).all() and (alphas_cumprod <= 1).all()
    assert (alphas_cumprod.diff() < 0).all()
    assert head.betas[1:].max() <= 0.999 + 1e-6
    # Nichol & Dhariwal Eq. 17 before the clip at t = T, which only affects the last step.
    f = [math.cos((t / num_steps + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(num_steps + 1)]
    closed_form = torch.tensor([value / f[0] for value in f[:-1]], dtype=torch.float64)
    assert torch.allclose(alphas_cumprod[:-1], closed_form, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_q_sample_matches_closed_form(schedule):
    head = DiffusionHead(hidden_size=HIDDEN_SIZE, num_steps=NUM_STEPS, sampling_steps=2, schedule=schedule)
    x0 = torch.randn(BATCH, HIDDEN_SIZE, generator=seeded(2))
    noise = torch.randn(BATCH, HIDDEN_SIZE, generator=seeded(3))
    t = torch.tensor([0, 1, 3, 7, 8])
    alphas_cumprod = torch.cumprod(1 - head.betas.double(), 0)  # from the betas, independently
    scale = alphas_cumprod[t].sqrt().float()[:, None]
    expected = scale * x0 + (1 - scale**2).sqrt() * noise
    assert torch.allclose(head.q_sample(x0, t, noise), expected, atol=1e-6)
    assert torch.equal(head.q_sample(x0, torch.zeros(BATCH, dtype=torch.long), noise), x0)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_full_step_sigma_at_eta_one_is_ddpm_posterior_std(schedule):
    betas, a = beta_schedule(schedule, NUM_STEPS, 1e-4, 0.02)  # float64: the identity is exact
    t = torch.arange(1, NUM_STEPS + 1)
    posterior_variance = (1 - a[t - 1]) / (1 - a[t]) * betas[t]  # DDPM Eq. 7
    sigma = ddim_sigma(a[t], a[t - 1], 1.0)
    assert torch.allclose(sigma, posterior_variance.sqrt(), rtol=1e-10, atol=1e-12)
    assert sigma[0] == 0 and (sigma[1:] > 0).all()  # only t = 1 -> 0 is deterministic
    assert torch.allclose(ddim_sigma(a[t], a[t - 1], 0.5), 0.5 * sigma, rtol=1e-12, atol=0)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("denoiser", DENOISERS)
def test_eta_one_full_steps_is_ddpm_ancestral_sampling(denoiser, schedule):
    """With steps = T and eta = 1 each transition is DDPM's posterior q(x_{t-1} | x_t, x0_hat):
    mean = sqrt(a_{t-1}) beta_t / (1 - a_t) x0_hat + sqrt(alpha_t) (1 - a_{t-1}) / (1 - a_t) x_t
    (DDPM Eq. 7), variance beta_tilde_t."""
    head = build(denoiser, schedule=schedule)
    cond = condition()
    with torch.no_grad():
        sample = head.sample(cond, steps=NUM_STEPS, eta=1.0, generator=seeded(4))
    assert sample.timesteps.tolist() == list(range(NUM_STEPS, -1, -1))
    # DDPM's alpha_t is a_t / a_{t-1}; taking it from the head's (float32) a_t keeps the oracle
    # consistent with them rather than with the float32 rounding of the betas buffer.
    a = head.alphas_cumprod.double()
    betas = torch.cat([torch.zeros(1, dtype=torch.float64), 1 - a[1:] / a[:-1]])
    for i, t in enumerate(range(NUM_STEPS, 0, -1)):
        x_t = sample.trajectory[:, i]
        with torch.no_grad():
            x0_hat = head.predict_x0(x_t, torch.full((BATCH,), t), cond).double()
        mean = (a[t - 1].sqrt() * betas[t] / (1 - a[t])) * x0_hat + (
            (1 - betas[t]).sqrt() * (1 - a[t - 1]) / (1 - a[t])
        ) * x_t.double()
        variance = (1 - a[t - 1]) / (1 - a[t]) * betas[t]
        x_next = sample.trajectory[:, i + 1].double()
        if t == 1:
            assert torch.allclose(x_next, mean, atol=1e-5)
            assert (sample.log_probs[:, i] == 0).all()
        else:
            expected = Normal(mean, variance.sqrt()).log_prob(x_next).sum(-1)
            assert torch.allclose(sample.log_probs[:, i].double(), expected, rtol=1e-5, atol=1e-4)


# ------------------------------------------------------------------ the zero-initialised correction
@pytest.mark.parametrize("denoiser", DENOISERS)
def test_at_init_predict_x0_is_the_last_thought(denoiser):
    head = build(denoiser, perturb=False).train()
    cond = condition()
    x_t = torch.randn(BATCH, HIDDEN_SIZE, generator=seeded(5))
    for t in (1, 4, NUM_STEPS):
        assert torch.equal(head.predict_x0(x_t, torch.full((BATCH,), t), cond), cond[:, -1])
    assert torch.equal(head(cond), cond[:, -1])


# ------------------------------------------------------------------ shapes, determinism
@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("denoiser", DENOISERS)
def test_sample_shapes_finite_and_deterministic_per_generator(denoiser, eta):
    head = build(denoiser)
    cond = condition()
    with torch.no_grad():
        first = head.sample(cond, eta=eta, generator=seeded(6))
        second = head.sample(cond, eta=eta, generator=seeded(6))
        other = head.sample(cond, eta=eta, generator=seeded(7))
    assert isinstance(first, DiffusionSample)
    assert first.x0.shape == (BATCH, HIDDEN_SIZE) and first.x0.dtype == torch.float32
    assert first.trajectory.shape == (BATCH, 5, HIDDEN_SIZE)
    assert first.timesteps.tolist() == [8, 6, 3, 1, 0]
    assert torch.isfinite(first.trajectory).all()
    assert torch.equal(first.trajectory[:, -1], first.x0)
    assert torch.equal(first.x0, second.x0) and torch.equal(first.trajectory, second.trajectory)
    if eta == 0:
        # The start is the thought-conditioned start's mean: nothing random is left.
        assert torch.equal(first.x0, other.x0) and torch.equal(first.x0, head(cond))
        assert first.log_probs is None
    else:
        assert not torch.allclose(first.x0, other.x0, atol=1e-4)
        assert first.log_probs.shape == (BATCH, 4) and torch.isfinite(first.log_probs).all()
        assert torch.equal(first.log_probs, second.log_probs)
    assert torch.equal(head(cond), head(cond))


def test_strided_timesteps_and_sdedit_start():
    head = build("mlp", num_steps=32, sampling_steps=8)
    cond = condition()
    guess = torch.randn(BATCH, HIDDEN_SIZE, generator=seeded(8))
    with torch.no_grad():
        assert head.sample(cond).timesteps.tolist() == [32, 28, 23, 19, 14, 10, 5, 1, 0]
        assert head.sample(cond, steps=32).timesteps.tolist() == list(range(32, -1, -1))
        noise = torch.randn(BATCH, HIDDEN_SIZE, generator=seeded(9))
        sample = head.sample(cond, steps=3, x_start=guess, strength=0.5, start_noise=noise)
    assert sample.timesteps.tolist() == [16, 8, 1, 0]
    # The start is the guess noised to t = 16.
    a = head.alphas_cumprod[16]
    assert torch.allclose(sample.trajectory[:, 0], a.sqrt() * guess + (1 - a).sqrt() * noise, atol=1e-6)


# ------------------------------------------------------------------ log-probs
def hand_log_probs(head: DiffusionHead, cond: Tensor, sample: DiffusionSample, eta: float) -> Tensor:
    """The DDIM transition densities rebuilt from Song et al. 2020 Eq. 12 and 16 in float64."""
    a = head.alphas_cumprod.double()
    columns = []
    timesteps = sample.timesteps.tolist()
    for i, (t, t_prev) in enumerate(itertools.pairwise(timesteps)):
        x_t = sample.trajectory[:, i].double()
        x0_hat = head.predict_x0(sample.trajectory[:, i], torch.full((BATCH,), t), cond).double()
        eps_hat = (x_t - a[t].sqrt() * x0_hat) / (1 - a[t]).sqrt()
        sigma = eta * ((1 - a[t_prev]) / (1 - a[t])).sqrt() * (1 - a[t] / a[t_prev]).sqrt()
        mean = a[t_prev].sqrt() * x0_hat + (1 - a[t_prev] - sigma**2).sqrt() * eps_hat
        x_next = sample.trajectory[:, i + 1].double()
        if t_prev == 0:
            assert sigma == 0
            assert torch.allclose(x_next, mean, atol=1e-5)
            columns.append(torch.zeros(BATCH, dtype=torch.float64))
        else:
            columns.append(Normal(mean, sigma).log_prob(x_next).sum(-1))
    return torch.stack(columns, dim=1)


@pytest.mark.parametrize("eta", [0.5, 1.0])
@pytest.mark.parametrize("denoiser", DENOISERS)
def test_log_probs_equal_the_gaussian_density_by_hand(denoiser, eta):
    head = build(denoiser)
    cond = condition()
    with torch.no_grad():
        sample = head.sample(cond, eta=eta, generator=seeded(10))
        expected = hand_log_probs(head, cond, sample, eta)
        recomputed = head.trajectory_log_probs(cond, sample.trajectory, sample.timesteps, eta)
    assert (sample.log_probs[:, -1] == 0).all()  # the last transition (to t = 0) is deterministic
    assert (sample.log_probs[:, :-1] != 0).all()
    assert torch.allclose(sample.log_probs.double(), expected, rtol=1e-5, atol=1e-4)
    assert torch.allclose(recomputed, sample.log_probs, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("denoiser", DENOISERS)
def test_log_probs_fall_when_the_parameters_move(denoiser):
    """trajectory_log_probs reads the current parameters: PPO's ratio after an update is not 1."""
    head = build(denoiser)
    cond = condition()
    with torch.no_grad():
        sample = head.sample(cond, eta=1.0, generator=seeded(11))
        nn.init.normal_(head.denoiser.output.weight, std=0.3)
        moved = head.trajectory_log_probs(cond, sample.trajectory, sample.timesteps, 1.0)
    assert not torch.allclose(moved[:, :-1], sample.log_probs[:, :-1], atol=1e-3)


@pytest.mark.parametrize("denoiser", DENOISERS)
def test_gradient_reaches_the_denoiser_from_log_probs_but_not_the_trajectory(denoiser):
    head = build(denoiser)
    cond = condition().requires_grad_()
    guess = torch.randn(BATCH, HIDDEN_SIZE, generator=seeded(12), requires_grad=True)
    sample = head.sample(cond, eta=1.0, generator=seeded(12), x_start=guess, strength=1.0)
    assert not sample.trajectory.requires_grad
    assert sample.log_probs.requires_grad
    sample.log_probs.sum().backward()
    gradients = [p.grad for p in head.denoiser.parameters() if p.grad is not None]
    assert gradients and any(g.abs().sum() > 0 for g in gradients)
    assert head.denoiser.output.weight.grad.abs().sum() > 0
    assert cond.grad is not None and cond.grad.abs().sum() > 0
    assert guess.grad is None  # the start is a detached state, not a path for gradient
    # The same with trajectory_log_probs, on a stored trajectory.
    head.zero_grad()
    trajectory = sample.trajectory.clone().requires_grad_()
    head.trajectory_log_probs(cond.detach(), trajectory, sample.timesteps, 1.0).sum().backward()
    assert head.denoiser.output.weight.grad.abs().sum() > 0
    assert trajectory.grad is None


# ------------------------------------------------------------------ training and precision
@pytest.mark.parametrize("denoiser", DENOISERS)
def test_loss_falls_when_fitting_a_fixed_conditional_target(denoiser):
    head = build(denoiser, perturb=False, dropout=0.0).train()
    cond = condition(batch=4, seed=13).repeat(16, 1, 1)
    target = torch.randn(4, HIDDEN_SIZE, generator=seeded(14)).repeat(16, 1)

    def evaluation_loss() -> float:
        with torch.no_grad():
            return head.loss(target, cond, generator=seeded(15)).item()

    start = evaluation_loss()
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    torch.manual_seed(16)
    for _ in range(200):
        optimizer.zero_grad()
        head.loss(target, cond).backward()
        optimizer.step()
    assert evaluation_loss() < 0.3 * start


@pytest.mark.parametrize("denoiser", DENOISERS)
def test_runs_under_bf16_autocast_with_float32_log_probs(denoiser):
    head = build(denoiser)
    cond = condition()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sample = head.sample(cond, eta=1.0, generator=seeded(17))
        loss = head.loss(cond[:, 0], cond, generator=seeded(18))
    assert sample.log_probs.dtype == torch.float32 and sample.x0.dtype == torch.float32
    assert torch.isfinite(sample.log_probs).all() and torch.isfinite(loss)
    with torch.no_grad():
        reference = head.sample(cond, eta=1.0, generator=seeded(17))
    # bf16 layers move the samples a little, not a lot.
    assert torch.allclose(sample.x0, reference.x0, atol=0.2)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda head, cond: head.sample(cond, eta=1.5), "eta"),
        (lambda head, cond: head.sample(cond, steps=9), "steps"),
        (lambda head, cond: head.sample(cond, strength=0.01), "strength"),
        (lambda head, cond: head.sample(cond[:, :, :4]), "condition_size"),
        (
            lambda head, cond: head.trajectory_log_probs(
                cond, torch.zeros(BATCH, 3, 16), torch.arange(3), 0.0
            ),
            "eta",
        ),
        (
            lambda head, cond: head.trajectory_log_probs(
                cond, torch.zeros(BATCH, 3, 16), torch.arange(5), 1.0
            ),
            "trajectory",
        ),
        (lambda head, cond: head.q_sample(cond[:, 0], torch.full((BATCH,), 9), cond[:, 0]), "num_steps"),
        (lambda head, cond: head.predict_x0(cond[:, 0], torch.ones(BATCH), cond), "long"),
    ],
)
def test_bad_input_raises_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call(build("mlp"), condition())


def test_bad_constructor_arguments_raise():
    with pytest.raises(ValueError, match="sampling_steps"):
        DiffusionHead(num_steps=4, sampling_steps=5)
    with pytest.raises(ValueError, match="schedule"):
        DiffusionHead(schedule="quadratic")
    with pytest.raises(ValueError, match="denoiser"):
        DiffusionHead(denoiser="unet")


def test_forward_is_batch_independent():
    """Inference starts at the thought-conditioned start's mean, so a row's result does not depend on its
    batch (DDP shards)."""
    torch.manual_seed(0)
    head = DiffusionHead(hidden_size=16, num_steps=8, sampling_steps=4, dropout=0.0).eval()
    torch.nn.init.normal_(head.denoiser.output.weight, std=0.3)
    condition = torch.randn(6, 2, 16)
    whole = head(condition)
    parts = torch.cat([head(condition[:2]), head(condition[2:])])
    torch.testing.assert_close(whole, parts)
    zero_start = head.sample(condition, start_noise=torch.zeros(6, 16)).x0
    torch.testing.assert_close(whole, zero_start)
    noise = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(whole, head.sample(condition, start_noise=noise).x0)


def test_one_thought_conditioned_start_for_every_caller():
    """x_{t_S} = sqrt(a) h0 + sqrt(1 - a) eps with eps = 0 unless given: forward, a deterministic
    sample and a stochastic one all start there; on a linear schedule a_T is far from 0, so the start
    is visibly the hypothesis."""
    head = build("mlp", schedule="linear")
    cond = condition()
    a = head.alphas_cumprod[NUM_STEPS]
    assert a > 0.5
    with torch.no_grad():
        stochastic = head.sample(cond, eta=1.0, generator=seeded(21))
        deterministic = head.sample(cond)
        served = head(cond)
        noise = torch.randn(BATCH, HIDDEN_SIZE, generator=seeded(22))
        noise_started = head.sample(cond, start_noise=noise)
    for sample in (stochastic, deterministic):
        torch.testing.assert_close(sample.trajectory[:, 0], a.sqrt() * cond[:, -1])
    torch.testing.assert_close(served, deterministic.x0)
    torch.testing.assert_close(
        noise_started.trajectory[:, 0], a.sqrt() * cond[:, -1] + (1 - a).sqrt() * noise
    )
    assert not torch.allclose(served, noise_started.x0, atol=1e-3)


def test_a_condition_of_another_width_goes_through_a_learned_projection():
    """Issue 19: a width-48 condition into a width-32 head. The projection is the residual start
    (x0_hat = W c_last + b at init), it trains, and equal widths keep the identity start."""
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="condition_size"):
        DiffusionHead(hidden_size=32, num_steps=8, sampling_steps=4).sample(torch.randn(4, 2, 48))
    head = DiffusionHead(hidden_size=32, num_steps=8, sampling_steps=4, condition_size=48)
    cond = torch.randn(4, 2, 48)
    projection = head.condition_projection
    torch.testing.assert_close(head(cond), projection(cond[:, -1]))
    sample = head.sample(cond, eta=1.0, generator=seeded(22))
    assert sample.x0.shape == (4, 32) and sample.log_probs.shape == (4, 4)
    torch.testing.assert_close(
        head.trajectory_log_probs(cond, sample.trajectory, sample.timesteps, 1.0), sample.log_probs
    )
    head.loss(torch.randn(4, 32), cond).backward()
    assert projection.weight.grad.abs().sum() > 0
    assert DiffusionHead(hidden_size=32, condition_size=32).condition_projection is None
