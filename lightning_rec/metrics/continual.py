"""Continual-learning accuracy over a single-pass stream: A_auc, A_last, A_avg, F_last, BWT.

The protocol of Si-Blurry general continual learning (Moon et al. 2023; FlyPrompt, arXiv
2602.01976): while the stream is learned, the model is evaluated on the test samples of the classes
seen so far, every ``eval_period`` samples and at the end of each split.

- **A_auc**: mean accuracy over the periodic evaluations (the area under the accuracy curve, per
  evaluation), which rewards learning fast and forgetting little at any time.
- **A_last**: accuracy of the last evaluation (end of the stream).
- **A_avg**: mean accuracy over the split-end evaluations.
- **F_last**: forgetting, the mean over classes of (best accuracy at an earlier split end) minus
  (accuracy at the last split end), over classes with a non-zero earlier best, as the official
  FlyGCL trainer computes it.
- **BWT**: backward transfer, the mean over classes of (accuracy at the last split end) minus
  (accuracy at the first split end where the class's accuracy is above 0), over classes whose first
  such split end is before the last: the official FlyGCL definition.

:class:`SeenClassAccuracy` (a torchmetrics ``Metric``, summed across DDP ranks) gives one
evaluation's accuracy and per-class accuracy; :class:`StreamEvaluations` records the evaluations
and computes the summary.

Axes: k evaluations at split ends, c classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = [
    "SeenClassAccuracy",
    "StreamEvaluations",
    "anytime_accuracy",
    "backward_transfer",
    "last_forgetting",
]


class SeenClassAccuracy(Metric):
    """Per-class correct and total counts of one evaluation.

    ``update(predictions (b), labels (b))``; ``compute()`` returns ``{"accuracy": scalar,
    "per_class": (c), "count": (c)}``: the accuracy over every sample, each class's accuracy (0 for a
    class without samples) and each class's sample count.
    """

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.add_state("correct", default=torch.zeros(num_classes), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_classes), dist_reduce_fx="sum")

    def update(self, predictions: Tensor, labels: Tensor) -> None:
        if predictions.shape != labels.shape or labels.dim() != 1:
            raise ValueError(
                f"predictions and labels must both have shape (b,), got {tuple(predictions.shape)} "
                f"and {tuple(labels.shape)}"
            )
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got {labels.tolist()}")
        labels = labels.long()
        self.count += torch.bincount(labels, minlength=self.num_classes).to(self.count.dtype)
        hits = (predictions.long() == labels).to(self.correct.dtype)
        self.correct += torch.zeros_like(self.correct).index_add_(0, labels, hits)

    def compute(self) -> dict[str, Tensor]:
        total = self.count.sum()
        if total == 0:
            raise ValueError("SeenClassAccuracy: no sample was evaluated")
        return {
            "accuracy": self.correct.sum() / total,
            "per_class": self.correct / self.count.clamp_min(1),
            "count": self.count.clone(),
        }


def anytime_accuracy(accuracies: list[float] | Tensor) -> float:
    """A_auc: the mean of the periodic evaluations' accuracies."""
    accuracies = torch.as_tensor(accuracies, dtype=torch.float64)
    if accuracies.numel() == 0:
        raise ValueError("A_auc needs at least one evaluation")
    return float(accuracies.mean())


def last_forgetting(per_class: Tensor) -> float:
    """F_last from per-class accuracies at the split ends ``(k c)`` (0 for classes not yet seen).

    ``mean_j (max_{i<k} acc[i, j] - acc[k-1, j])`` over classes whose earlier best is above 0; NaN
    with fewer than 2 split ends or no such class.
    """
    if per_class.dim() != 2:
        raise ValueError(f"per_class must have shape (k, c), got {tuple(per_class.shape)}")
    if per_class.shape[0] < 2:
        return float("nan")
    best = per_class[:-1].amax(dim=0)
    counted = best > 0
    if not bool(counted.any()):
        return float("nan")
    return float((best - per_class[-1])[counted].double().mean())


def backward_transfer(per_class: Tensor) -> float:
    """BWT from per-class accuracies at the split ends ``(k c)`` (0 for classes not yet seen).

    ``mean_j (acc[k-1, j] - acc[first_j, j])`` with ``first_j`` the first split end where class ``j``'s
    accuracy is above 0 (the official definition), over classes whose ``first_j`` is before the last;
    NaN when there is none.
    """
    if per_class.dim() != 2:
        raise ValueError(f"per_class must have shape (k, c), got {tuple(per_class.shape)}")
    above_zero = per_class > 0
    counted = above_zero[:-1].any(dim=0)
    if not bool(counted.any()):
        return float("nan")
    first = above_zero.long().argmax(dim=0)  # the first split end with accuracy above 0
    at_first = per_class.gather(0, first.unsqueeze(0))[0]
    return float((per_class[-1] - at_first)[counted].double().mean())


@dataclass
class StreamEvaluations:
    """The evaluations of one stream, in order, and their summary.

    Call :meth:`record` after each evaluation: ``periodic`` marks the every-``eval_period`` ones
    (A_auc), ``split_end`` the ones at the end of a split (A_avg, F_last, BWT). The last record is
    A_last's.
    """

    positions: list[int] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    periodic: list[bool] = field(default_factory=list)
    split_end: list[bool] = field(default_factory=list)
    split_per_class: list[Tensor] = field(default_factory=list)

    def record(
        self,
        position: int,
        accuracy: float,
        per_class: Tensor,
        periodic: bool,
        split_end: bool,
    ) -> None:
        """Add the evaluation at stream ``position`` (samples seen) with its ``SeenClassAccuracy`` result."""
        if self.positions and position < self.positions[-1]:
            raise ValueError(
                f"evaluations must be recorded in stream order: {position} after {self.positions[-1]}"
            )
        self.positions.append(int(position))
        self.accuracies.append(float(accuracy))
        self.periodic.append(bool(periodic))
        self.split_end.append(bool(split_end))
        if split_end:
            self.split_per_class.append(per_class.detach().double().cpu())

    def summary(self) -> dict[str, float]:
        """``{"A_auc", "A_last", "A_avg", "F_last", "BWT"}`` (NaN where undefined)."""
        if not self.accuracies:
            raise ValueError("no evaluation was recorded")
        periodic = [accuracy for accuracy, flag in zip(self.accuracies, self.periodic, strict=True) if flag]
        at_split_ends = [
            accuracy for accuracy, flag in zip(self.accuracies, self.split_end, strict=True) if flag
        ]
        nan = float("nan")
        per_class = torch.stack(self.split_per_class) if self.split_per_class else None
        return {
            "A_auc": anytime_accuracy(periodic) if periodic else nan,
            "A_last": self.accuracies[-1],
            "A_avg": float(torch.tensor(at_split_ends, dtype=torch.float64).mean()) if at_split_ends else nan,
            "F_last": last_forgetting(per_class) if per_class is not None else nan,
            "BWT": backward_transfer(per_class) if per_class is not None else nan,
        }
