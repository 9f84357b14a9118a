"""``RandomExpandedAnalyticRouter``: FlyPrompt's expert router, trained in closed form (REAR).

FlyPrompt (arXiv 2602.01976, Section 3.2) routes each instance to one of several prompt experts
without task boundaries. A frozen feature ``h`` is expanded by a fixed random matrix and a ReLU, as
the fly olfactory circuit expands odour inputs into many Kenyon cells::

    phi(h) = ReLU(h R),                    R ~ N(0, 1), fixed, in_dim x expand_dim
    G = sum phi^T phi,  Q = sum phi^T Y    (Y one-hot expert ids; accumulated over the stream)
    U = (G + lambda I)^-1 Q                (ridge regression, solved in closed form)
    expert(h) = argmax phi(h) U

Because only ``G`` and ``Q`` are kept, accumulating the stream in any batching gives the same ``U``
as one regression on every feature seen, and nothing is forgotten.

Axis legend:
    b  batch
    d  in_dim (the frozen feature)
    m  expand_dim (the random expansion)
    e  experts

Distributed training: each rank adds its own samples to a *pending* part; :meth:`solve` first sums
the pending parts of all ranks (``torch.distributed.all_reduce`` when a process group is
initialised) into the totals ``gram`` / ``cross``, so every rank holds the same totals and the same
solution as one process that saw every sample. The pending part is a plain tensor, not a buffer:
DDP broadcasts rank 0's buffers before every forward, which would overwrite the other ranks' own
samples. The totals, the counts and the solution are buffers, saved in Lightning checkpoints and by
``save_pretrained``; call :meth:`solve` before saving so that nothing is left pending.

``expand_dim=0`` skips the expansion, as the official code's ``M = 0``: ``phi(h) = h`` (no ReLU), a
ridge regression on the frozen features themselves (``m = d``).

Memory: ``gram`` is ``m**2`` floats, and up to twice that while samples are pending (plus
one more copy during a solve). The paper's ``expand_dim=10000`` is 400 MB per copy in fp32; 2048 is
16 MB. ``expand_dim`` is therefore an argument, and the saved model holds ``gram`` too.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import einsum
from torch import Tensor, nn

from lightning_rec.hub.mixin import HubMixin

__all__ = ["RandomExpandedAnalyticRouter"]


class RandomExpandedAnalyticRouter(HubMixin, nn.Module):
    """Closed-form expert router on a fixed random ReLU expansion of frozen features.

    Args:
        in_dim: size ``d`` of the routed feature (a frozen backbone's pooled output).
        expand_dim: size ``m`` of the random expansion (see the module docstring for its memory);
            0 routes on the features themselves.
        num_experts: number of experts ``e`` to route between.
        ridge: the ridge ``lambda`` of the regression (the paper's 1e4).
        seed: seed of the fixed random matrix ``R`` (the same on every rank and every rebuild).

    Buffers: ``projection (d m)`` (empty when ``expand_dim=0``), ``gram (m m)``, ``cross (m e)``,
    ``expert_counts (e)`` (samples accumulated per expert) and ``solution (m e)`` (``U`` from the last
    :meth:`solve`).
    """

    def __init__(
        self,
        in_dim: int = 768,
        expand_dim: int = 10000,
        num_experts: int = 5,
        ridge: float = 1e4,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("in_dim", in_dim), ("num_experts", num_experts)):
            if value < 1:
                raise ValueError(f"RandomExpandedAnalyticRouter: {name} must be >= 1, got {value}")
        if expand_dim < 0:
            raise ValueError(f"RandomExpandedAnalyticRouter: expand_dim must be >= 0, got {expand_dim}")
        if ridge <= 0:
            raise ValueError(f"RandomExpandedAnalyticRouter: ridge must be > 0, got {ridge}")
        self.in_dim = in_dim
        self.expand_dim = expand_dim
        self.num_experts = num_experts
        self.ridge = ridge
        generator = torch.Generator().manual_seed(seed)
        size = expand_dim or in_dim
        self.register_buffer("projection", torch.randn(in_dim, expand_dim, generator=generator))
        self.register_buffer("gram", torch.zeros(size, size))
        self.register_buffer("cross", torch.zeros(size, num_experts))
        self.register_buffer("expert_counts", torch.zeros(num_experts))
        self.register_buffer("solution", torch.zeros(size, num_experts))
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None

    @classmethod
    def hub_example(cls) -> tuple[RandomExpandedAnalyticRouter, tuple[Tensor]]:
        """A router (d 6, m 32, 3 experts) fitted on 30 features, and 5 features to route."""
        generator = torch.Generator().manual_seed(0)
        router = cls(in_dim=6, expand_dim=32, num_experts=3, ridge=1.0)
        router.accumulate(torch.randn(30, 6, generator=generator), torch.arange(30) % 3)
        router.solve()
        return router, (torch.randn(5, 6, generator=generator),)

    def expand(self, features: Tensor) -> Tensor:
        """``phi = ReLU(h R)``: features ``(b d)`` -> expanded features ``(b m)`` (``h`` itself when
        ``expand_dim=0``)."""
        if features.dim() != 2 or features.shape[1] != self.in_dim:
            raise ValueError(
                f"RandomExpandedAnalyticRouter expects features of shape (b, {self.in_dim}), "
                f"got {tuple(features.shape)}"
            )
        features = features.to(self.projection.dtype)
        return F.relu(features @ self.projection) if self.expand_dim else features

    @torch.no_grad()
    def accumulate(self, features: Tensor, experts: Tensor) -> None:
        """Add ``phi^T phi`` and ``phi^T Y`` of features ``(b d)`` labelled with expert ids ``(b)`` to
        this rank's pending sums (folded into the totals by :meth:`solve`)."""
        if experts.shape != features.shape[:1]:
            raise ValueError(
                f"experts must have shape ({features.shape[0]},) like the features' batch, got "
                f"{tuple(experts.shape)}"
            )
        if len(experts) and (int(experts.min()) < 0 or int(experts.max()) >= self.num_experts):
            raise ValueError(f"expert ids must lie in [0, {self.num_experts}), got {experts.tolist()}")
        expanded = self.expand(features.detach())
        targets = F.one_hot(experts.long(), self.num_experts).to(expanded.dtype)
        if self._pending is None or self._pending[0].device != expanded.device:
            self._pending = (
                torch.zeros_like(self.gram),
                torch.zeros_like(self.cross),
                torch.zeros_like(self.expert_counts),
            )
        gram, cross, counts = self._pending
        gram.addmm_(expanded.T, expanded)
        cross.addmm_(expanded.T, targets)
        counts.add_(targets.sum(0))

    @torch.no_grad()
    def solve(self) -> Tensor:
        """Fold every rank's pending sums into the totals, then ``U = (G + lambda I)^-1 Q`` ``(m e)``."""
        pending = self._pending or (
            torch.zeros_like(self.gram),
            torch.zeros_like(self.cross),
            torch.zeros_like(self.expert_counts),
        )
        if dist.is_available() and dist.is_initialized():
            for part in pending:
                dist.all_reduce(part, op=dist.ReduceOp.SUM)
        self.gram.add_(pending[0])
        self.cross.add_(pending[1])
        self.expert_counts.add_(pending[2])
        self._pending = None
        regularised = self.gram.clone()
        regularised.diagonal().add_(self.ridge)
        self.solution.copy_(torch.linalg.solve(regularised, self.cross))
        return self.solution

    def scores(self, features: Tensor) -> Tensor:
        """Routing scores ``phi(h) U`` ``(b e)`` of features ``(b d)``."""
        return einsum(self.expand(features), self.solution, "b m, m e -> b e")

    def forward(self, features: Tensor) -> Tensor:
        """Expert id ``(b)`` (long) of each feature ``(b d)``: the argmax of the scores among the
        experts that have accumulated samples (all experts before any solve)."""
        scores = self.scores(features)
        active = self.expert_counts > 0
        if bool(active.any()):
            scores = scores.masked_fill(~active, float("-inf"))
        return scores.argmax(dim=1)
