"""Conditional diffusion head: refine an intent hypothesis by denoising (DiffuReason's Diffuse stage).

DiffuReason (arXiv 2602.09744) models the user's intent as a distribution: the Think stage's last
thought is an intent hypothesis, and a diffusion process conditioned on the thoughts refines it. The
paper releases no code; this head follows DiffuRec (arXiv 2304.00686) and DreamRec (arXiv
2310.20453), which diffuse a target item embedding conditioned on the user's history:

- forward process and x0-parameterised loss as DDPM (Ho et al. 2020, arXiv 2006.11239), with the
  linear or cosine (Nichol & Dhariwal 2021, arXiv 2102.09672) beta schedule;
- reverse process as DDIM (Song et al. 2020, arXiv 2010.02502) over a strided schedule, with `eta`
  from 0 (deterministic, for inference) to 1 (stochastic, for GRPO's group of samples);
- per-step Gaussian log-densities of the reverse transitions, the policy's log-probabilities in the
  MDP view of denoising (DDPO, Black et al. 2023, arXiv 2305.13301).

Axis legend:
    b  batch
    k  thought tokens (the condition; the last one is the intent hypothesis)
    c  condition width (d unless ``condition_size`` says otherwise)
    d  hidden size
    s  reverse transitions of a strided schedule (s + 1 timesteps, the last one 0)
    n  tokens of the transformer denoiser (1 + k)

Timestep 0 is clean data: `alphas_cumprod[0] = 1`, and `betas[t]`, `alphas_cumprod[t]` are indexed by
the timestep t in 0..T (`betas[0] = 0`), so no call site shifts an index by one.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Literal

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from lightning_rec.blocks.sequence import TransformerBlock
from lightning_rec.hub.mixin import HubMixin

__all__ = ["DiffusionHead", "DiffusionSample"]

SCHEDULES = ("linear", "cosine")
DENOISERS = ("mlp", "transformer")


@dataclass
class DiffusionSample:
    """What `DiffusionHead.sample` returns.

    Attributes:
        x0: `b d` the final denoised vector (float32). It is the last reverse step's mean, a function
            of the detached latent `x_{t_1}`, so it carries gradient into the denoiser and the
            condition through that last step only (when grad is enabled).
        trajectory: `b (s+1) d` the latents `x_{t_S}, ..., x_{t_0} = x0` visited (detached, float32).
        timesteps: `(s+1)` long, the strided schedule's timesteps, descending, the last one 0.
        log_probs: `b s` float32 log-density of each reverse transition `x_{t_i} -> x_{t_{i+1}}` under
            the current parameters, summed over d; 0 for a deterministic transition (the last one);
            None when eta = 0 (no transition has a density).
    """

    x0: Tensor
    trajectory: Tensor
    timesteps: Tensor
    log_probs: Tensor | None


def beta_schedule(
    schedule: Literal["linear", "cosine"], num_steps: int, beta_start: float, beta_end: float
) -> tuple[Tensor, Tensor]:
    """Betas and cumulative alpha products, both `(T+1)` float64, indexed by timestep 0..T.

    linear: betas evenly spaced from `beta_start` to `beta_end` (DDPM, Sec. 4).
    cosine: `alpha_bar(t) = f(t) / f(0)`, `f(t) = cos(((t/T + s) / (1 + s)) * pi/2)^2`, s = 0.008,
    betas `1 - alpha_bar(t) / alpha_bar(t-1)` clipped at 0.999 to avoid the singularity at t = T
    (Nichol & Dhariwal 2021, Eq. 17). `alphas_cumprod` is the product of the (clipped) `1 - betas`, so
    the two buffers always agree.
    """
    if schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    else:
        offset = 0.008
        steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        alpha_bar = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
        betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    betas = torch.cat([torch.zeros(1, dtype=torch.float64), betas])
    return betas, torch.cumprod(1 - betas, dim=0)


def ddim_sigma(alpha_cumprod: Tensor, alpha_cumprod_prev: Tensor, eta: float) -> Tensor:
    """Standard deviation of the DDIM reverse step from t to t_prev < t (Song et al. 2020, Eq. 16).

    `sigma = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)`. With eta = 1 and
    t_prev = t - 1 this is the DDPM posterior standard deviation `sqrt(beta_tilde_t)`,
    `beta_tilde_t = (1 - a_{t-1}) / (1 - a_t) * beta_t` (DDPM Eq. 7); at t_prev = 0 (a_prev = 1) it is
    0: the last step is deterministic for every eta.
    """
    return (
        eta
        * torch.sqrt((1 - alpha_cumprod_prev) / (1 - alpha_cumprod))
        * torch.sqrt(1 - alpha_cumprod / alpha_cumprod_prev)
    )


def gaussian_log_prob(value: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """log N(value; mean, std^2 I) summed over d: value, mean `b d`, std `b` -> `b`.

    Rows with std = 0 (a deterministic transition) get 0: such a step is no choice of the policy, so
    it adds nothing to a trajectory's log-probability and its PPO ratio is exactly 1. The std is
    replaced by 1 on those rows before dividing, so that no inf or NaN reaches the backward pass
    through the masked branch.
    """
    stochastic = std > 0
    safe_std = rearrange(torch.where(stochastic, std, torch.ones_like(std)), "b -> b 1")
    z = (value - mean) / safe_std
    log_density = (-0.5 * z**2 - torch.log(safe_std) - 0.5 * math.log(2 * math.pi)).sum(dim=-1)
    return torch.where(stochastic, log_density, torch.zeros_like(log_density))


def timestep_embedding(timesteps: Tensor, dim: int) -> Tensor:
    """Sinusoidal embedding of integer timesteps `b` -> `b dim` float32 (Transformer / DDPM style)."""
    half = dim // 2
    frequencies = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=timesteps.device, dtype=torch.float32) / half
    )
    angles = rearrange(timesteps.float(), "b -> b 1") * rearrange(frequencies, "f -> 1 f")
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    # An odd dim gets one zero column so the width is always `dim`.
    return nn.functional.pad(embedding, (0, dim - 2 * half))


class MLPDenoiser(nn.Module):
    """Correction network: concat[x_t, timestep embedding, last thought, mean thought] `b 4d` -> `b d`.

    Two LayerNorm/SiLU layers of width 4d, as DreamRec's MLP denoiser. `output` is zero-initialised
    (see `DiffusionHead`).
    """

    def __init__(self, hidden_size: int, dropout: float) -> None:
        super().__init__()
        width = 4 * hidden_size
        self.body = nn.Sequential(
            nn.Linear(4 * hidden_size, width),
            nn.LayerNorm(width),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Linear(width, width),
            nn.LayerNorm(width),
            nn.SiLU(),
            nn.Dropout(dropout),
        )
        self.output = nn.Linear(width, hidden_size)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, x_t: Tensor, time: Tensor, condition: Tensor) -> Tensor:
        """x_t `b d`, time `b d` (sinusoidal), condition `b k d` -> correction `b d`."""
        features = torch.cat([x_t, time, condition[:, -1], condition.mean(dim=1)], dim=-1)
        return self.output(self.body(features))


class TransformerDenoiser(nn.Module):
    """Correction network: one pre-LN transformer layer over `[x_t + time, thought_1, ..., thought_k]`
    `b n d`, read out at the x_t token -> `b d` (DiffuRec's denoiser, one layer).

    The timestep enters through a learned MLP on its sinusoidal embedding, added to x_t (DiffuRec).
    Attention is permutation-invariant over the thought tokens, so a learned embedding marks the last
    one, the intent hypothesis. `output` is zero-initialised (see `DiffusionHead`).
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.time_mlp = nn.Sequential(
            nn.Linear(hidden_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size)
        )
        self.intent_embedding = nn.Parameter(torch.randn(hidden_size) * 0.02)
        self.layer = TransformerBlock(hidden_size, num_heads, dropout, 4 * hidden_size, nn.GELU())
        self.final_norm = nn.LayerNorm(hidden_size)
        self.output = nn.Linear(hidden_size, hidden_size)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, x_t: Tensor, time: Tensor, condition: Tensor) -> Tensor:
        """x_t `b d`, time `b d` (sinusoidal), condition `b k d` -> correction `b d`."""
        noisy = rearrange(x_t + self.time_mlp(time), "b d -> b 1 d")
        marked = torch.cat([condition[:, :-1], condition[:, -1:] + self.intent_embedding], dim=1)
        tokens = torch.cat([noisy, marked], dim=1)
        # Every token sees every other one: there is no order to protect and no padding.
        everything = torch.ones(1, 1, tokens.shape[1], tokens.shape[1], dtype=torch.bool, device=x_t.device)
        hidden = self.layer(tokens, everything)
        return self.output(self.final_norm(hidden[:, 0]))


class DiffusionHead(HubMixin, nn.Module):
    """Conditional diffusion over a d-vector, conditioned on thought tokens `b k c` (DiffuReason,
    arXiv 2602.09744, Diffuse stage; after DiffuRec and DreamRec).

    The denoiser predicts x0 (the x0-parameterisation of DiffuRec/DreamRec) as

        x0_hat = condition[:, -1] + correction(x_t, t, condition),

    where the correction network's last Linear is zero-initialised. At init the head therefore
    returns the intent hypothesis (the last thought) unchanged, whatever the noise: the refined
    intent starts exactly as the Think stage's output, so switching the Diffuse stage on never
    degrades a trained or jointly trained Think stage, and training only has to learn a correction
    (the same reason as adaLN-zero in DiT and zero-init residual branches).

    A condition of another width c (a user's encoder of width 48 feeding a head of width 32) is
    first mapped to d by a learned ``condition_projection`` (Linear c -> d), and the formula above
    reads the projected condition; with c = d there is no projection, and the residual start is
    the condition itself.

    The reverse process starts from the intent hypothesis (the thought-conditioned start, see
    `sample`): x_{t_S} = sqrt(a_{t_S}) h0 + sqrt(1 - a_{t_S}) eps, and `forward` takes eps = 0. One start
    serves training and inference alike: a caller that ranks with `forward` in its training loss
    trains exactly the process it serves.

    Args:
        hidden_size: d, of the diffused vector (and of each thought token unless ``condition_size``).
        condition_size: c, the width of the thought tokens; None (or d) means d.
        num_steps: T, diffusion steps of the training schedule (timesteps 1..T; 0 is clean).
        sampling_steps: default number of reverse steps of `sample` (DDIM-strided), <= T.
        schedule: "linear" (DDPM) or "cosine" (Nichol & Dhariwal) beta schedule.
        denoiser: "mlp" (concat of x_t, timestep, last and mean thought) or "transformer" (one
            pre-LN layer over x_t and the thought tokens).
        num_heads: attention heads of the transformer denoiser (unused by "mlp").
        dropout: dropout of the denoiser. It is active in train mode, so `sample`'s log-probs and
            `trajectory_log_probs` agree exactly only in eval mode or with dropout 0 (TRL's GRPO
            disables dropout for the same reason).
        beta_start, beta_end: end points of the linear schedule (unused by "cosine").

    Latents, the schedule, the reverse-step arithmetic and the log-probs are float32 whatever the
    autocast dtype; only the denoiser's layers run in the autocast dtype.

    forward: condition `b k c` -> deterministic sample x0 `b d` (eta = 0, `sampling_steps`, zero
    start noise).
    """

    betas: Tensor
    alphas_cumprod: Tensor

    def __init__(
        self,
        hidden_size: int = 64,
        num_steps: int = 32,
        sampling_steps: int = 8,
        schedule: Literal["linear", "cosine"] = "cosine",
        denoiser: Literal["mlp", "transformer"] = "mlp",
        num_heads: int = 2,
        dropout: float = 0.1,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        condition_size: int | None = None,
    ) -> None:
        super().__init__()
        condition_size = hidden_size if condition_size is None else condition_size
        for name, value in (
            ("hidden_size", hidden_size),
            ("num_steps", num_steps),
            ("condition_size", condition_size),
        ):
            if value < 1:
                raise ValueError(f"DiffusionHead: {name} must be >= 1, got {value}")
        if not 1 <= sampling_steps <= num_steps:
            raise ValueError(
                f"DiffusionHead: sampling_steps must be in [1, num_steps={num_steps}], got {sampling_steps}"
            )
        if schedule not in SCHEDULES:
            raise ValueError(f"DiffusionHead: schedule must be one of {SCHEDULES}, got {schedule!r}")
        if denoiser not in DENOISERS:
            raise ValueError(f"DiffusionHead: denoiser must be one of {DENOISERS}, got {denoiser!r}")
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(
                f"DiffusionHead: need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, "
                f"beta_end={beta_end}"
            )
        self.hidden_size = hidden_size
        self.condition_size = condition_size
        self.num_steps = num_steps
        self.sampling_steps = sampling_steps
        # Only when the widths differ: with c = d the residual x0_hat = h0 + correction starts at
        # the thought itself, which a projection (even an identity-initialised one) would let drift.
        self.condition_projection = (
            nn.Linear(condition_size, hidden_size) if condition_size != hidden_size else None
        )
        betas, alphas_cumprod = beta_schedule(schedule, num_steps, beta_start, beta_end)
        # Not persistent: a function of the constructor arguments, rebuilt on load.
        self.register_buffer("betas", betas.float(), persistent=False)
        self.register_buffer("alphas_cumprod", alphas_cumprod.float(), persistent=False)
        self.denoiser: MLPDenoiser | TransformerDenoiser = (
            MLPDenoiser(hidden_size, dropout)
            if denoiser == "mlp"
            else TransformerDenoiser(hidden_size, num_heads, dropout)
        )

    @classmethod
    def hub_example(cls) -> tuple[DiffusionHead, tuple[Tensor]]:
        """A tiny head (d 16, T 8, 4 sampling steps) and a condition ``(3 2 16)``.

        The zero-initialised output layer is perturbed so that the example's output depends on every
        weight (at init it would be the last thought whatever the weights).
        """
        head = cls(hidden_size=16, num_steps=8, sampling_steps=4)
        nn.init.normal_(head.denoiser.output.weight, std=0.1)
        condition = torch.randn(3, 2, 16, generator=torch.Generator().manual_seed(0))
        return head, (condition,)

    # ------------------------------------------------------------------ forward process and loss
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Forward process `x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise` (DDPM Eq. 4).

        x0 `b d`, t `b` long in 0..T, noise `b d` -> x_t `b d` (float32).
        """
        self._check_vectors("x0", x0)
        self._check_vectors("noise", noise)
        self._check_timesteps(t, x0.shape[0])
        return self._q_sample(x0, t, noise)

    def _q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        alpha_cumprod = rearrange(self.alphas_cumprod[t].float(), "b -> b 1")
        return alpha_cumprod.sqrt() * x0.float() + (1 - alpha_cumprod).sqrt() * noise.float()

    def predict_x0(self, x_t: Tensor, t: Tensor, condition: Tensor) -> Tensor:
        """x_t `b d`, t `b` long in 0..T, condition `b k c` -> x0_hat `b d` (float32).

        `x0_hat = condition[:, -1] + correction` (the projected condition when c != d); equal to
        `condition[:, -1]` at init.
        """
        condition = self._projected(condition)
        self._check_vectors("x_t", x_t, condition.shape[0])
        self._check_timesteps(t, condition.shape[0])
        return self._predict_x0(x_t, t, condition)

    def _predict_x0(self, x_t: Tensor, t: Tensor, condition: Tensor) -> Tensor:
        time = timestep_embedding(t, self.hidden_size)
        correction = self.denoiser(x_t.float(), time, condition)
        return condition[:, -1].float() + correction.float()

    def loss(self, x0: Tensor, condition: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Diffusion loss: t ~ U{1..T}, x_t = q_sample(x0, t, eps), mean over the batch of
        `||x0_hat - x0||^2 / d` (MSE on x0, DiffuRec/DreamRec's x0-parameterised DDPM objective).

        x0 `b d` (the target; detach it upstream for a stop-gradient), condition `b k c` -> scalar.
        """
        condition = self._projected(condition)
        self._check_vectors("x0", x0, condition.shape[0])
        batch = x0.shape[0]
        t = torch.randint(1, self.num_steps + 1, (batch,), generator=generator, device=x0.device)
        noise = torch.randn(
            batch, self.hidden_size, generator=generator, device=x0.device, dtype=torch.float32
        )
        x0_hat = self._predict_x0(self._q_sample(x0, t, noise), t, condition)
        return (x0_hat - x0.float()).pow(2).mean()

    # ------------------------------------------------------------------ reverse process
    def sample(
        self,
        condition: Tensor,
        steps: int | None = None,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        x_start: Tensor | None = None,
        strength: float = 1.0,
        start_noise: Tensor | None = None,
    ) -> DiffusionSample:
        """DDIM reverse process over a strided schedule (Song et al. 2020, Eq. 12).

        The S = `steps` (default `sampling_steps`) timesteps are evenly spaced in
        [1, round(strength * T)], descending, followed by 0. Each step from t to t_prev:

            eps_hat = (x_t - sqrt(a_t) x0_hat) / sqrt(1 - a_t)
            x_prev  = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps_hat + sigma z,
            sigma   = ddim_sigma(a_t, a_prev, eta)

        eta = 0 is deterministic DDIM; eta = 1 with steps = T is DDPM's ancestral sampler (posterior
        mean and variance). The last step (to t = 0) is deterministic for every eta.

        Start (thought-conditioned): x_{t_S} = q_sample(x_start, t_S, start_noise), the forward
        process's marginal around a guess of x0, SDEdit-style. The guess `x_start` defaults to the
        intent hypothesis (the projected `condition[:, -1]`), the x0 that the residual denoiser
        predicts at init, so the chain starts where its own prediction says the data is; `strength`
        < 1 starts it lower in the schedule. `start_noise` `b d` defaults to zeros: the marginal's
        mean, so every caller (the training loss, inference, a GRPO rollout) starts from the same
        point and a stochastic sample differs from the served one only by its eta > 0 transitions.
        Pass `start_noise=torch.randn(...)` for a noise-started chain. Every draw uses `generator`,
        so a generator state fixes the result.

        Each sampled x_{t_{i+1}} is an action (DDPO): the step's input x_{t_i} is detached, and
        `log_probs[:, i]` is the density of the detached action under the step's mean, so gradient
        reaches the denoiser parameters and the condition through the mean only. The start is no
        action: it carries no log-probability.

        condition `b k c`, x_start `b d` -> DiffusionSample (x0 `b d`, trajectory `b (s+1) d`,
        timesteps `(s+1)`, log_probs `b s` or None when eta = 0).
        """
        condition = self._projected(condition)
        if not 0 <= eta <= 1:
            raise ValueError(f"DiffusionHead.sample: eta must be in [0, 1], got {eta}")
        schedule = self._strided_timesteps(self.sampling_steps if steps is None else steps, strength)
        batch, device = condition.shape[0], condition.device
        if start_noise is None:
            noise = torch.zeros(batch, self.hidden_size, device=device, dtype=torch.float32)
        else:
            self._check_vectors("start_noise", start_noise, batch)
            noise = start_noise.float()
        if x_start is None:
            x_start = condition[:, -1]
        else:
            self._check_vectors("x_start", x_start, batch)
        start = torch.full((batch,), schedule[0], dtype=torch.long, device=device)
        x_t = self._q_sample(x_start.detach(), start, noise)
        latents, log_probs = [x_t], []
        for t, t_prev in itertools.pairwise(schedule):
            # Only the last step's mean (x0) and, for eta > 0, every step's density carry gradient;
            # the other deterministic steps need no autograd graph.
            needs_graph = eta > 0 or t_prev == 0
            with torch.set_grad_enabled(torch.is_grad_enabled() and needs_graph):
                mean, sigma = self._reverse_step(
                    x_t,
                    torch.full((batch,), t, dtype=torch.long, device=device),
                    torch.full((batch,), t_prev, dtype=torch.long, device=device),
                    condition,
                    eta,
                )
            action = mean
            if eta > 0 and t_prev > 0:
                z = torch.randn(
                    batch, self.hidden_size, generator=generator, device=device, dtype=torch.float32
                )
                action = mean + rearrange(sigma, "b -> b 1") * z
            x_t = action.detach()
            latents.append(x_t)
            if eta > 0:
                log_probs.append(gaussian_log_prob(x_t, mean, sigma))
        return DiffusionSample(
            x0=action,
            trajectory=torch.stack(latents, dim=1),
            timesteps=torch.tensor(schedule, dtype=torch.long, device=device),
            log_probs=torch.stack(log_probs, dim=1) if eta > 0 else None,
        )

    def trajectory_log_probs(
        self, condition: Tensor, trajectory: Tensor, timesteps: Tensor, eta: float
    ) -> Tensor:
        """Log-densities `b s` of a stored trajectory's transitions under the current parameters.

        The same computation as `sample`'s `log_probs` (equal for the same parameters, up to float
        rounding and dropout in train mode), batched over the s steps in one denoiser call: what
        PPO's ratio needs when it updates several times on one batch of samples.

        condition `b k c`, trajectory `b (s+1) d`, timesteps `(s+1)` long (as returned by `sample`),
        eta in (0, 1] -> `b s` (0 at deterministic transitions).
        """
        condition = self._projected(condition)
        if not 0 < eta <= 1:
            raise ValueError(
                "DiffusionHead.trajectory_log_probs: eta must be in (0, 1] (eta = 0 has no density), "
                f"got {eta}"
            )
        batch = condition.shape[0]
        if timesteps.dim() != 1 or timesteps.shape[0] < 2:
            raise ValueError(
                f"DiffusionHead.trajectory_log_probs: timesteps must have shape (s+1,) with s >= 1, "
                f"got {tuple(timesteps.shape)}"
            )
        expected = (batch, timesteps.shape[0], self.hidden_size)
        if tuple(trajectory.shape) != expected:
            raise ValueError(
                f"DiffusionHead.trajectory_log_probs: trajectory must have shape (b, s+1, d) = {expected}, "
                f"got {tuple(trajectory.shape)}"
            )
        steps = timesteps.shape[0] - 1
        trajectory = trajectory.detach().float()
        mean, sigma = self._reverse_step(
            rearrange(trajectory[:, :-1], "b s d -> (b s) d"),
            repeat(timesteps[:-1], "s -> (b s)", b=batch),
            repeat(timesteps[1:], "s -> (b s)", b=batch),
            repeat(condition, "b k d -> (b s) k d", s=steps),
            eta,
        )
        log_probs = gaussian_log_prob(rearrange(trajectory[:, 1:], "b s d -> (b s) d"), mean, sigma)
        return rearrange(log_probs, "(b s) -> b s", b=batch)

    def forward(self, condition: Tensor) -> Tensor:
        """condition `b k c` -> x0 `b d`: deterministic DDIM (eta = 0) over `sampling_steps` steps,
        from the mean of the thought-conditioned start (x_{t_S} = sqrt(a_{t_S}) h0, zero noise).

        No random draw at all, so a row's result depends on its condition only: not on the batch
        it is in, the process that scores it under DDP, or any random state. Use it for the ranking
        loss in training as well as for inference: then both run the same process from the same start.
        """
        return self.sample(condition).x0

    def _reverse_step(
        self, x_t: Tensor, t: Tensor, t_prev: Tensor, condition: Tensor, eta: float
    ) -> tuple[Tensor, Tensor]:
        """One DDIM step's Gaussian: x_t `b d`, t and t_prev `b` long, condition `b k d` ->
        mean `b d`, sigma `b` (float32). The one implementation behind `sample` and
        `trajectory_log_probs`."""
        alpha_cumprod = self.alphas_cumprod[t].float()
        alpha_cumprod_prev = self.alphas_cumprod[t_prev].float()
        x0_hat = self._predict_x0(x_t, t, condition)
        eps_hat = (x_t - rearrange(alpha_cumprod.sqrt(), "b -> b 1") * x0_hat) / rearrange(
            (1 - alpha_cumprod).sqrt(), "b -> b 1"
        )
        sigma = ddim_sigma(alpha_cumprod, alpha_cumprod_prev, eta)
        # 1 - a_prev - sigma^2 >= 0 for eta <= 1; the clamp only absorbs float rounding.
        direction = (1 - alpha_cumprod_prev - sigma**2).clamp(min=0).sqrt()
        mean = (
            rearrange(alpha_cumprod_prev.sqrt(), "b -> b 1") * x0_hat
            + rearrange(direction, "b -> b 1") * eps_hat
        )
        return mean, sigma

    def _strided_timesteps(self, steps: int, strength: float) -> list[int]:
        """`steps` timesteps evenly spaced in [1, round(strength * T)], descending, then 0."""
        if not 0 < strength <= 1:
            raise ValueError(f"DiffusionHead.sample: strength must be in (0, 1], got {strength}")
        start = round(strength * self.num_steps)
        if start < 1:
            raise ValueError(
                f"DiffusionHead.sample: strength={strength} of num_steps={self.num_steps} rounds to "
                "timestep 0; raise strength"
            )
        if not 1 <= steps <= start:
            raise ValueError(
                f"DiffusionHead.sample: steps must be in [1, round(strength * num_steps) = {start}], "
                f"got {steps}"
            )
        if steps == 1:
            return [start, 0]
        # Spacing (start - 1) / (steps - 1) >= 1, so the rounded timesteps are distinct.
        spacing = (start - 1) / (steps - 1)
        return [round(start - i * spacing) for i in range(steps)] + [0]

    # ------------------------------------------------------------------ input checks
    def _projected(self, condition: Tensor) -> Tensor:
        """Check a condition `b k c` and map it to the head's width: `b k d`."""
        if condition.dim() != 3 or condition.shape[1] < 1 or condition.shape[2] != self.condition_size:
            raise ValueError(
                f"DiffusionHead: condition must have shape (b, k >= 1, c={self.condition_size}), "
                f"got {tuple(condition.shape)}; a condition of another width needs "
                "DiffusionHead(condition_size=c)"
            )
        return condition if self.condition_projection is None else self.condition_projection(condition)

    def _check_vectors(self, name: str, vectors: Tensor, batch: int | None = None) -> None:
        if (
            vectors.dim() != 2
            or vectors.shape[1] != self.hidden_size
            or (batch is not None and vectors.shape[0] != batch)
        ):
            rows = "b" if batch is None else str(batch)
            raise ValueError(
                f"DiffusionHead: {name} must have shape ({rows}, d={self.hidden_size}), "
                f"got {tuple(vectors.shape)}"
            )

    def _check_timesteps(self, t: Tensor, batch: int) -> None:
        if t.dim() != 1 or t.shape[0] != batch or t.dtype != torch.long:
            raise ValueError(
                f"DiffusionHead: t must be a long tensor of shape ({batch},), got shape {tuple(t.shape)} "
                f"and dtype {t.dtype}"
            )
        if bool(((t < 0) | (t > self.num_steps)).any()):
            raise ValueError(f"DiffusionHead: t must be in [0, num_steps={self.num_steps}], got {t.tolist()}")
