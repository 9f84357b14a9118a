"""``ContinualStreamDataModule``: any labelled dataset as a single-pass continual-learning stream.

A :class:`~lightning_rec.data.LabelledSource` (digits, an image folder, a ``datasets`` folder, text
records, the synthetic title task) is split into a stream part and a held-out test part
(stratified), and the stream part is ordered as a Si-Blurry, disjoint or Gaussian-blurry stream
(:mod:`lightning_rec.data.streams`).

The stream is one training epoch over :class:`StreamBatch` es in stream order, never shuffled. A
batch never straddles a split end, so the evaluations at split ends see exactly the split's samples.
Each batch carries its end ``position`` in the stream (samples seen so far, over all ranks), which
the learner compares with :attr:`ContinualStreamDataModule.eval_points` to evaluate on
:meth:`ContinualStreamDataModule.seen_class_dataloader` every ``eval_period`` samples and at split
ends. The learner runs these evaluations itself (in its training step), because they happen in the
middle of the single epoch and on a test set that grows with the classes seen: Lightning's
validation loop runs at fixed batch counts on a dataloader built once.

Distributed training: the training dataset is iterable (Lightning adds no sampler) and shards each
global batch of ``batch_size * world_size`` samples over the ranks. A split's tail shorter than the
number of ranks joins the split's last batch, so every rank steps on every batch (only a split with
fewer samples than ranks is left out). Evaluation loaders shard the test samples over the ranks.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset

from lightning_rec.data.labelled import DigitsExamples, LabelledExamples, LabelledSource
from lightning_rec.data.streams import SiBlurrySampler, Stream, StreamKind, build_stream, hold_out

__all__ = ["ContinualStreamDataModule", "EvalPoint", "StreamBatch"]


@dataclass
class StreamBatch:
    """``inputs``: images ``(b c h w)`` or ``b`` texts; ``labels (b)``; ``position``: stream samples
    seen once this batch is learned, over all ranks."""

    inputs: Tensor | list[str]
    labels: Tensor
    position: int

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class EvalPoint:
    """An evaluation at stream ``position``: ``periodic`` (every ``eval_period``, for A_auc) and/or
    ``split_end`` (for A_avg, forgetting and BWT)."""

    position: int
    periodic: bool
    split_end: bool


def _distributed() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _StreamBatches(IterableDataset):
    """This rank's share of the stream's batches, in stream order."""

    def __init__(
        self, examples: LabelledExamples, order: np.ndarray, split_ends: Sequence[int], batch_size: int
    ) -> None:
        self.examples = examples
        self.order = order
        self.split_ends = split_ends
        self.batch_size = batch_size

    def _global_batches(self, world_size: int) -> Iterator[tuple[int, int]]:
        start = 0
        for end in self.split_ends:
            for begin in range(start, end, self.batch_size * world_size):
                stop = min(begin + self.batch_size * world_size, end)
                if end - stop < world_size:  # a tail too short for every rank joins this batch
                    stop = end
                if stop - begin >= world_size:
                    yield begin, stop
                if stop == end:
                    break
            start = end

    def __len__(self) -> int:
        return sum(1 for _ in self._global_batches(_distributed()[1]))

    def __iter__(self) -> Iterator[StreamBatch]:
        rank, world_size = _distributed()
        for begin, stop in self._global_batches(world_size):
            indices = self.order[begin:stop][rank::world_size]
            yield StreamBatch(self.examples.select(indices), self.examples.labels[indices], stop)


class _IndexBatches(IterableDataset):
    """Fixed batches of example indices, as ``(inputs, labels)``; iterable, so that Lightning adds no
    distributed sampler on top of the rank's own share."""

    def __init__(self, examples: LabelledExamples, indices: np.ndarray, batch_size: int) -> None:
        self.examples = examples
        self.batches = [indices[start : start + batch_size] for start in range(0, len(indices), batch_size)]

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[Tensor | list[str], Tensor]]:
        for rows in self.batches:
            yield self.examples.select(rows), self.examples.labels[rows]


class ContinualStreamDataModule(L.LightningDataModule):
    """A labelled dataset as a single-pass class-incremental stream with periodic evaluation.

    Args:
        source: the labelled dataset; default scikit-learn's digits.
        stream: ``"si_blurry"`` (default), ``"disjoint"`` or ``"gaussian_blurry"``.
        num_splits: evaluation splits of the stream (the paper's 5).
        disjoint_fraction: Si-Blurry's N, the share of classes that appear in one split only.
        blurry_fraction: Si-Blurry's M, the share of blurry-class samples dealt to random splits.
        sampler: how Si-Blurry deals them: ``"uniform"`` (split sizes kept) or ``"official"`` (the
            official FlyGCL sampler's random per-split quotas, its stream for a seed).
        gaussian_width: the standard deviation of a class's sample times, as a share of the stream
            (``stream="gaussian_blurry"``).
        test_fraction: share of each class held out for evaluation.
        batch_size: stream samples per training step and rank (the paper's online batch).
        eval_batch_size: test samples per evaluation batch.
        eval_period: evaluate every this many stream samples (A_auc), besides the split ends.
        seed: seed of the hold-out split and of the stream's order.
    """

    def __init__(
        self,
        source: LabelledSource | None = None,
        stream: StreamKind = "si_blurry",
        num_splits: int = 5,
        disjoint_fraction: float = 0.5,
        blurry_fraction: float = 0.1,
        sampler: SiBlurrySampler = "uniform",
        gaussian_width: float = 0.1,
        test_fraction: float = 0.2,
        batch_size: int = 16,
        eval_batch_size: int = 256,
        eval_period: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (
            ("batch_size", batch_size),
            ("eval_batch_size", eval_batch_size),
            ("eval_period", eval_period),
        ):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.save_hyperparameters(ignore=["source"])
        self.source = source if source is not None else DigitsExamples()
        self.stream_kind = stream
        self.num_splits = num_splits
        self.disjoint_fraction = disjoint_fraction
        self.blurry_fraction = blurry_fraction
        self.sampler = sampler
        self.gaussian_width = gaussian_width
        self.test_fraction = test_fraction
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.eval_period = eval_period
        self.seed = seed
        self._examples: LabelledExamples | None = None
        self._stream: Stream | None = None
        self._test_indices: np.ndarray | None = None

    # ------------------------------------------------------------------ data
    @property
    def examples(self) -> LabelledExamples:
        """Every labelled example of the source (loaded on first access)."""
        if self._examples is None:
            self._examples = self.source.load()
        return self._examples

    def _split(self) -> None:
        labels = self.examples.labels.numpy()
        stream_indices, self._test_indices = hold_out(labels, self.test_fraction, self.seed)
        stream = build_stream(
            self.stream_kind, labels[stream_indices], self.num_splits, self.disjoint_fraction,
            self.blurry_fraction, self.gaussian_width, self.seed, self.sampler,
        )  # fmt: skip
        # The stream's indices point into the stream part; map them to example indices.
        self._stream = Stream(
            order=stream_indices[stream.order],
            split_ends=stream.split_ends,
            disjoint_classes=stream.disjoint_classes,
            blurry_classes=stream.blurry_classes,
            blurred=stream_indices[stream.blurred],
        )

    @property
    def stream(self) -> Stream:
        """The stream, with example indices (positions in :attr:`examples`)."""
        if self._stream is None:
            self._split()
        return self._stream

    @property
    def test_indices(self) -> np.ndarray:
        """The held-out example indices (sorted)."""
        if self._test_indices is None:
            self._split()
        return self._test_indices

    @property
    def num_classes(self) -> int:
        return len(self.examples.class_names)

    @property
    def class_names(self) -> list[str]:
        return self.examples.class_names

    @property
    def stream_length(self) -> int:
        return len(self.stream)

    @property
    def split_ends(self) -> tuple[int, ...]:
        return self.stream.split_ends

    @property
    def dataset_name(self) -> str:
        return getattr(self.source, "name", type(self.source).__name__)

    @property
    def eval_points(self) -> list[EvalPoint]:
        """Where to evaluate: every ``eval_period`` samples and at every split end, in order."""
        periodic = set(range(self.eval_period, self.stream_length + 1, self.eval_period))
        ends = {end for end in self.split_ends if end > 0}
        return [
            EvalPoint(position, position in periodic, position in ends)
            for position in sorted(periodic | ends)
        ]

    def prepare_data(self) -> None:
        self.examples  # noqa: B018  (generates or reads the source once, in the main process)

    # ----------------------------------------------------------- dataloaders
    def train_dataloader(self) -> DataLoader:
        """The stream, once, in order (``batch_size=None``: the dataset yields whole batches)."""
        return DataLoader(
            _StreamBatches(self.examples, self.stream.order, self.split_ends, self.batch_size),
            batch_size=None,
        )

    def seen_class_dataloader(self, classes: Sequence[int] | Tensor) -> DataLoader:
        """This rank's share of the test samples whose class is in ``classes``, as ``(inputs, labels)``."""
        classes = torch.as_tensor(classes, dtype=torch.long).cpu().numpy()
        labels = self.examples.labels.numpy()
        indices = self.test_indices[np.isin(labels[self.test_indices], classes)]
        rank, world_size = _distributed()
        return DataLoader(
            _IndexBatches(self.examples, indices[rank::world_size], self.eval_batch_size), batch_size=None
        )

    def test_dataloader(self) -> DataLoader:
        """Every held-out sample (the learner scores those of the classes it has seen)."""
        return self.seen_class_dataloader(range(self.num_classes))
