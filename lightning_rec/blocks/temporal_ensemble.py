"""``TemporalEnsembleHeads``: FlyPrompt's temporal ensemble of output heads (TE^2).

FlyPrompt (arXiv 2602.01976, Section 3.3) keeps, for each expert, exponential moving averages of the
online output head at several decays (0.9 and 0.99 in the official code), updated after every
optimizer step. A fast average follows recent decision boundaries, a slow one remembers older ones.
At inference the online head and the routed expert's averages each give a softmax, and the ensemble
takes their element-wise maximum ("softmax_max_prob" in the official code).

Any head works, as long as it maps features to class (or item) logits: a classifier's linear layer,
or a recommender's output layer over its catalogue. The averages are frozen copies of the head
(``requires_grad=False``), so DDP and optimizers ignore them.

Axis legend:
    b  batch
    d  feature size
    c  classes (or items)
    k  members of the ensemble (online head + one per decay)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from einops import reduce
from torch import Tensor, nn

from lightning_rec.hub.mixin import HubMixin

__all__ = ["ClassifierHead", "TemporalEnsembleHeads"]


class ClassifierHead(HubMixin, nn.Module):
    """A linear classifier ``(b d) -> (b c)`` logits: the online head FlyPrompt trains.

    A Hub-saveable block so that :class:`TemporalEnsembleHeads` records it in ``config.json``; any
    other :class:`~lightning_rec.hub.HubMixin` head can take its place.
    """

    def __init__(self, in_features: int = 768, num_classes: int = 100) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)

    @classmethod
    def hub_example(cls) -> tuple[ClassifierHead, tuple[Tensor]]:
        """A head (d 8, 5 classes) and 3 features."""
        return cls(in_features=8, num_classes=5), (
            torch.randn(3, 8, generator=torch.Generator().manual_seed(0)),
        )

    def forward(self, features: Tensor) -> Tensor:
        """Features ``(b d)`` -> logits ``(b c)``."""
        return self.linear(features)


class TemporalEnsembleHeads(HubMixin, nn.Module):
    """An online head plus, per expert, one exponential moving average of it per decay.

    Args:
        head: the online head (trained by the caller's optimizer); ``features -> logits (b c)``.
        num_experts: sets of averages, one per expert.
        decays: EMA decays; after each :meth:`update`, ``average = decay * average + (1 - decay) * head``.

    Usage: call :meth:`start_expert` when an expert starts (its averages restart from the online
    head), :meth:`update` after every optimizer step, and ``heads(features, experts, allowed)`` for
    the ensemble probabilities.
    """

    def __init__(self, head: nn.Module, num_experts: int = 1, decays: Sequence[float] = (0.9, 0.99)) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"TemporalEnsembleHeads: num_experts must be >= 1, got {num_experts}")
        decays = tuple(float(decay) for decay in decays)
        if not decays or any(not 0.0 <= decay < 1.0 for decay in decays):
            raise ValueError(
                f"TemporalEnsembleHeads: decays must be a non-empty list in [0, 1), got {decays}"
            )
        self.head = head
        self.num_experts = num_experts
        self.decays = decays
        self.averages = nn.ModuleList(
            nn.ModuleList(_frozen_copy(head) for _ in decays) for _ in range(num_experts)
        )

    @classmethod
    def hub_example(cls) -> tuple[TemporalEnsembleHeads, tuple[Tensor, Tensor, Tensor]]:
        """Heads over a tiny classifier (d 8, 5 classes, 2 experts) after a few updates, with 4
        features, their experts and the allowed classes."""
        generator = torch.Generator().manual_seed(0)
        heads = cls(ClassifierHead(in_features=8, num_classes=5), num_experts=2)
        for expert in (0, 1):
            heads.start_expert(expert)
            for _ in range(3):
                with torch.no_grad():
                    heads.head.linear.weight.add_(torch.randn(5, 8, generator=generator))
                heads.update(expert)
        allowed = torch.tensor([True, True, False, True, True])
        return heads, (torch.randn(4, 8, generator=generator), torch.tensor([0, 1, 1, 0]), allowed)

    @torch.no_grad()
    def start_expert(self, expert: int) -> None:
        """Restart ``expert``'s averages from the online head (the official ``init_fc``)."""
        self._check_expert(expert)
        for average in self.averages[expert]:
            for target, source in zip(average.parameters(), self.head.parameters(), strict=True):
                target.copy_(source)

    @torch.no_grad()
    def update(self, expert: int) -> None:
        """One EMA step of ``expert``'s averages towards the online head (after an optimizer step)."""
        self._check_expert(expert)
        for decay, average in zip(self.decays, self.averages[expert], strict=True):
            for target, source in zip(average.parameters(), self.head.parameters(), strict=True):
                target.lerp_(source, 1.0 - decay)

    def member_logits(self, features: Tensor, experts: Tensor) -> Tensor:
        """Logits of every member ``(b c k)``: the online head first, then the averages of each
        sample's expert in the order of ``decays``."""
        if experts.shape != features.shape[:1]:
            raise ValueError(
                f"experts must have shape ({features.shape[0]},) like the features' batch, got "
                f"{tuple(experts.shape)}"
            )
        online = self.head(features)
        members = online.new_empty(*online.shape, 1 + len(self.decays))
        members[..., 0] = online
        # Group the batch by expert: each average runs once, on its own samples only (a
        # recommender's output layer over a large catalogue is costly).
        for expert in experts.unique().tolist():
            self._check_expert(expert)
            rows = experts == expert
            for slot, average in enumerate(self.averages[expert], start=1):
                members[rows, :, slot] = average(features[rows])
        return members

    def forward(self, features: Tensor, experts: Tensor, allowed: Tensor | None = None) -> Tensor:
        """Ensemble probabilities ``(b c)``: the element-wise max over the members' softmaxes.

        Args:
            features: ``(b d)`` inputs of the head.
            experts: ``(b)`` expert id of each sample (whose averages join the online head).
            allowed: optional ``(c)`` or ``(b c)`` bool mask of the classes that may be predicted
                (e.g. the classes seen so far); the others get probability 0. The result is not
                renormalised: its rows sum to at least 1, and argmax gives the prediction.
        """
        logits = self.member_logits(features, experts)
        if allowed is not None:
            allowed = allowed.bool()
            mask = allowed if allowed.dim() == 2 else allowed.expand(logits.shape[0], -1)
            logits = logits.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        return reduce(logits.softmax(dim=1), "b c k -> b c", "max")

    def _check_expert(self, expert: int) -> None:
        if not 0 <= expert < self.num_experts:
            raise ValueError(f"expert must lie in [0, {self.num_experts}), got {expert}")


def _frozen_copy(head: nn.Module) -> nn.Module:
    average = copy.deepcopy(head)
    for parameter in average.parameters():
        parameter.requires_grad_(False)
    return average
