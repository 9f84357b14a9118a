"""Single-pass class-incremental streams over a labelled dataset (layer 1: pure and seeded).

General continual learning (FlyPrompt, arXiv 2602.01976) trains on one pass over a non-stationary
stream with no task boundaries given to the learner. The stream is cut into ``num_splits`` splits
only for the evaluation protocol (A_avg, forgetting, BWT are measured at split ends):

- **Si-Blurry** (:func:`si_blurry_stream`, Moon et al. 2023, the official FlyGCL sampler's
  ``varing_NM`` mode): a share ``N`` of the classes is *disjoint* (each appears in one split only;
  their count is rounded down to a multiple of the split count, as the official code does), the
  others are *blurry*; both groups are cut into splits at random points, so splits have random
  numbers of classes. Then a share ``M`` of the blurry classes' samples is taken out of their home
  splits, shuffled, and dealt back: those samples show their class in other splits too.
  ``sampler="uniform"`` draws the blurred samples uniformly and deals each split back as many as it
  gave (split sizes kept); ``sampler="official"`` is the official ``OnlineSampler``: random
  per-split quotas (cuts of ``M``'s sample count), each split giving its first blurry samples in
  dataset order and receiving its quota from the shuffled pool, in split order, with the same
  ``torch.Generator`` draws, so a seed gives the official code's stream.
- **disjoint** (:func:`disjoint_stream`): the classes are cut into splits of equal class counts.
- **Gaussian-blurry** (:func:`gaussian_blurry_stream`): each class gets a centre in stream time and
  each of its samples a time drawn from a normal around it, so classes fade in and out; the splits
  are equal slices of the stream.

Every function returns a :class:`Stream` of example indices (positions in ``labels``), each index
at most once: a single pass never shows a sample twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

__all__ = [
    "SiBlurrySampler",
    "Stream",
    "StreamKind",
    "build_stream",
    "disjoint_stream",
    "gaussian_blurry_stream",
    "hold_out",
    "si_blurry_stream",
]

StreamKind = Literal["si_blurry", "disjoint", "gaussian_blurry"]
SiBlurrySampler = Literal["uniform", "official"]


@dataclass(frozen=True)
class Stream:
    """A single-pass stream.

    Attributes:
        order: ``(s,)`` example indices in stream order, each at most once.
        split_ends: stream positions where the evaluation splits end (non-decreasing; the last is
            ``len(order)``).
        disjoint_classes: per split, the classes that appear in that split only.
        blurry_classes: per split, the blurry classes whose home is that split.
        blurred: the example indices dealt to a random split (Si-Blurry's ``M`` share).
    """

    order: np.ndarray
    split_ends: tuple[int, ...]
    disjoint_classes: tuple[tuple[int, ...], ...]
    blurry_classes: tuple[tuple[int, ...], ...]
    blurred: np.ndarray

    def __len__(self) -> int:
        return len(self.order)


def si_blurry_stream(
    labels: np.ndarray,
    num_splits: int = 5,
    disjoint_fraction: float = 0.5,
    blurry_fraction: float = 0.1,
    seed: int = 0,
    sampler: SiBlurrySampler = "uniform",
) -> Stream:
    """Si-Blurry stream over ``labels (n,)`` (the paper's N = 50 %, M = 10 %, 5 splits by default).

    ``floor(disjoint_fraction * classes)`` classes, rounded down to a multiple of ``num_splits``, are
    disjoint; ``floor(blurry_fraction * b)`` of the ``b`` blurry-class samples are blurred. With
    ``sampler="uniform"`` they are drawn uniformly from all blurry-class samples, each split gives
    away those it holds and receives as many from the shuffled pool; ``"official"`` is the official
    quota sampler (see the module docstring). Each split is shuffled.
    """
    labels = _check(labels, num_splits)
    for name, value in (("disjoint_fraction", disjoint_fraction), ("blurry_fraction", blurry_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")
    classes = np.unique(labels)
    num_disjoint = int(len(classes) * disjoint_fraction) // num_splits * num_splits
    if sampler == "official":
        return _official_si_blurry(labels, classes, num_splits, num_disjoint, blurry_fraction, seed)
    if sampler != "uniform":
        raise ValueError(f"sampler must be 'uniform' or 'official', got {sampler!r}")
    rng = np.random.default_rng(seed)
    class_order = rng.permutation(classes)
    disjoint_groups = _random_cuts(class_order[:num_disjoint], num_splits, rng)
    blurry_groups = _random_cuts(class_order[num_disjoint:], num_splits, rng)

    home = np.full(int(labels.max()) + 1, -1)
    for split, (disjoint, blurry) in enumerate(zip(disjoint_groups, blurry_groups, strict=True)):
        home[disjoint] = split
        home[blurry] = split
    example_home = home[labels]

    blurry_examples = np.flatnonzero(np.isin(labels, class_order[num_disjoint:]))
    num_blurred = int(len(blurry_examples) * blurry_fraction)
    blurred = np.sort(rng.choice(blurry_examples, size=num_blurred, replace=False))
    is_blurred = np.zeros(len(labels), dtype=bool)
    is_blurred[blurred] = True
    pool = rng.permutation(blurred)
    given = np.bincount(example_home[blurred], minlength=num_splits)
    dealt = np.split(pool, np.cumsum(given)[:-1])

    splits = [
        rng.permutation(np.concatenate([np.flatnonzero((example_home == split) & ~is_blurred), dealt[split]]))
        for split in range(num_splits)
    ]
    return Stream(
        order=np.concatenate(splits).astype(np.int64),
        split_ends=tuple(int(end) for end in np.cumsum([len(split) for split in splits])),
        disjoint_classes=tuple(tuple(sorted(group.tolist())) for group in disjoint_groups),
        blurry_classes=tuple(tuple(sorted(group.tolist())) for group in blurry_groups),
        blurred=blurred.astype(np.int64),
    )


def _official_si_blurry(
    labels: np.ndarray,
    classes: np.ndarray,
    num_splits: int,
    num_disjoint: int,
    blurry_fraction: float,
    seed: int,
) -> Stream:
    """The official FlyGCL ``OnlineSampler`` (``varing_NM``), draw for draw on a ``torch.Generator``."""
    generator = torch.Generator().manual_seed(seed)
    class_order = classes[torch.randperm(len(classes), generator=generator).numpy()]

    def cut(total: int) -> np.ndarray | None:
        """Random cut points ``[0, ..., total]`` (none drawn for an empty group)."""
        if total == 0:
            return None
        inner = torch.randint(0, total, (num_splits - 1,), generator=generator).sort().values.numpy()
        return np.concatenate([[0], inner, [total]])

    def groups(items: np.ndarray) -> list[np.ndarray]:
        points = cut(len(items))
        if points is None:
            return [items[:0] for _ in range(num_splits)]
        return [items[points[i] : points[i + 1]] for i in range(num_splits)]

    disjoint_groups = groups(class_order[:num_disjoint])
    blurry_groups = groups(class_order[num_disjoint:])
    disjoint = [np.flatnonzero(np.isin(labels, group)) for group in disjoint_groups]  # dataset order
    blurry = [np.flatnonzero(np.isin(labels, group)) for group in blurry_groups]
    num_blurred = math.floor(sum(len(part) for part in blurry) * blurry_fraction + 1e-9)
    given = np.zeros(0, dtype=np.int64)
    quotas = cut(num_blurred)
    if quotas is not None:
        quota = np.diff(quotas)
        # Each split gives its first blurry samples (its quota, or all it has) ...
        given_parts = [part[:q] for part, q in zip(blurry, quota, strict=True)]
        blurry = [part[q:] for part, q in zip(blurry, quota, strict=True)]
        given = np.concatenate(given_parts)
        pool = given[torch.randperm(len(given), generator=generator).numpy()]
        # ... and takes its quota from the shuffled pool, in split order (the last may get fewer).
        dealt = np.split(pool, np.minimum(np.cumsum(quota)[:-1], len(pool)))
        blurry = [np.concatenate([part, extra]) for part, extra in zip(blurry, dealt, strict=True)]
    splits = []
    for part_disjoint, part_blurry in zip(disjoint, blurry, strict=True):
        split = np.concatenate([part_disjoint, part_blurry])
        splits.append(split[torch.randperm(len(split), generator=generator).numpy()])
    return Stream(
        order=np.concatenate(splits).astype(np.int64),
        split_ends=tuple(int(end) for end in np.cumsum([len(split) for split in splits])),
        disjoint_classes=tuple(tuple(sorted(group.tolist())) for group in disjoint_groups),
        blurry_classes=tuple(tuple(sorted(group.tolist())) for group in blurry_groups),
        blurred=np.sort(given).astype(np.int64),
    )


def disjoint_stream(labels: np.ndarray, num_splits: int = 5, seed: int = 0) -> Stream:
    """Class-incremental stream: shuffled classes cut into ``num_splits`` groups of equal size
    (to one class), each split's samples shuffled."""
    labels = _check(labels, num_splits)
    rng = np.random.default_rng(seed)
    groups = np.array_split(rng.permutation(np.unique(labels)), num_splits)
    splits = [rng.permutation(np.flatnonzero(np.isin(labels, group))) for group in groups]
    return Stream(
        order=np.concatenate(splits).astype(np.int64),
        split_ends=tuple(int(end) for end in np.cumsum([len(split) for split in splits])),
        disjoint_classes=tuple(tuple(sorted(group.tolist())) for group in groups),
        blurry_classes=tuple(() for _ in groups),
        blurred=np.zeros(0, dtype=np.int64),
    )


def gaussian_blurry_stream(
    labels: np.ndarray, num_splits: int = 5, width: float = 0.1, seed: int = 0
) -> Stream:
    """Gaussian-schedule stream: class ``k`` of a shuffled order is centred at time ``(k + 0.5) / C``
    and each of its samples placed at a time drawn from ``N(centre, width^2)``; the stream is sorted by
    time and cut into equal splits. Each class's home split is the one of its centre."""
    labels = _check(labels, num_splits)
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    rng = np.random.default_rng(seed)
    class_order = rng.permutation(np.unique(labels))
    centre = np.zeros(int(labels.max()) + 1)
    centre[class_order] = (np.arange(len(class_order)) + 0.5) / len(class_order)
    times = centre[labels] + width * rng.standard_normal(len(labels))
    order = np.argsort(times, kind="stable").astype(np.int64)
    ends = np.cumsum([len(part) for part in np.array_split(order, num_splits)])
    homes = np.minimum((centre[class_order] * num_splits).astype(int), num_splits - 1)
    return Stream(
        order=order,
        split_ends=tuple(int(end) for end in ends),
        disjoint_classes=tuple(() for _ in range(num_splits)),
        blurry_classes=tuple(
            tuple(sorted(class_order[homes == split].tolist())) for split in range(num_splits)
        ),
        blurred=np.zeros(0, dtype=np.int64),
    )


def build_stream(
    kind: StreamKind,
    labels: np.ndarray,
    num_splits: int = 5,
    disjoint_fraction: float = 0.5,
    blurry_fraction: float = 0.1,
    gaussian_width: float = 0.1,
    seed: int = 0,
    sampler: SiBlurrySampler = "uniform",
) -> Stream:
    """The stream named ``kind`` (``"si_blurry"``, ``"disjoint"`` or ``"gaussian_blurry"``);
    ``sampler`` chooses Si-Blurry's (see :func:`si_blurry_stream`)."""
    if kind == "si_blurry":
        return si_blurry_stream(labels, num_splits, disjoint_fraction, blurry_fraction, seed, sampler)
    if kind == "disjoint":
        return disjoint_stream(labels, num_splits, seed)
    if kind == "gaussian_blurry":
        return gaussian_blurry_stream(labels, num_splits, gaussian_width, seed)
    raise ValueError(f"stream must be 'si_blurry', 'disjoint' or 'gaussian_blurry', got {kind!r}")


def hold_out(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of ``labels (n,)`` -> (stream indices, test indices), both sorted.

    Each class with ``k`` samples gives ``round(fraction * k)`` of them (at least one when ``k >= 2``,
    and never all) to the test set.
    """
    labels = np.asarray(labels)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"test fraction must lie in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = min(max(round(fraction * len(members)), 1), len(members) - 1)
        test.append(members[:count])
    test_indices = np.sort(np.concatenate(test)).astype(np.int64)
    return np.setdiff1d(np.arange(len(labels)), test_indices).astype(np.int64), test_indices


def _check(labels: np.ndarray, num_splits: int) -> np.ndarray:
    labels = np.asarray(labels)
    if (
        labels.ndim != 1
        or len(labels) == 0
        or not np.issubdtype(labels.dtype, np.integer)
        or labels.min() < 0
    ):
        raise ValueError(
            f"labels must be a non-empty 1-d array of class indices >= 0, got shape {labels.shape}"
        )
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    return labels


def _random_cuts(items: np.ndarray, num_splits: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Cut ``items`` into ``num_splits`` consecutive groups at random points (Si-Blurry's random split
    sizes; a group may be empty)."""
    cuts = np.sort(rng.integers(0, len(items) + 1, size=num_splits - 1))
    return np.split(items, cuts)
