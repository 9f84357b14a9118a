"""Batch types for sequential recommendation, and the torch datasets that yield them.

Training follows SASRec's scheme: one forward pass per window of a user's training sequence, with a
next-item loss at every position. A training sequence longer than ``max_len`` is cut, from its end,
into consecutive windows of ``max_len + 1`` items that overlap by one item, so every
(prefix, next item) pair of the training data is seen exactly once per epoch.

With ``stride < max_len`` the windows end every ``stride`` items instead and overlap more; each
window then supervises only its last ``stride`` targets, so every pair is still seen exactly once
per epoch, but a target predicted at position t of a window has at least ``max_len - stride``
items of history (all of them near a sequence's start) instead of t. Evaluation always predicts
from a full ``max_len`` history, so this trains the model on the context it is tested with, at
``max_len / stride`` times the forward passes. Sequences are
**left-padded** with item 0, so the most recent item is always at position ``n - 1``.

Axes: b batch, n max_len, h longest history in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "EvalBatch",
    "EvalQueries",
    "PredictBatch",
    "TrainBatch",
    "TrainWindows",
    "UserHistories",
    "training_windows",
]


@dataclass
class TrainBatch:
    """``input_ids (b n)`` left-padded item ids; ``target_ids (b n)`` the next item at each
    position, 0 where there is no target (padding)."""

    input_ids: Tensor
    target_ids: Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]


@dataclass
class EvalBatch:
    """One held-out target per row.

    ``input_ids (b n)``: the last ``n`` history items, left-padded; ``target (b)``: the held-out
    item; ``history (b h)``: the whole history, right-padded with 0 (for masking seen items);
    ``user_index (b)``: the user of each row.
    """

    input_ids: Tensor
    target: Tensor
    history: Tensor
    user_index: Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def training_windows(
    items: np.ndarray, starts: np.ndarray, ends: np.ndarray, max_len: int, stride: int | None = None
) -> np.ndarray:
    """Cut each training sequence ``items[starts[u]:ends[u]]`` into left-padded windows.

    Returns an int64 array ``(w, max_len + 1)``. Windows are taken from the end of each sequence
    backwards, each ``max_len + 1`` items long, a new one ending every ``stride`` items (default
    ``max_len``: consecutive windows overlapping by one item); sequences with fewer than 2 items
    give no window. Window k ends at ``end - k * stride``, so the last ``stride`` targets of each
    window are exactly the targets no later window holds: supervising those (:class:`TrainWindows`)
    covers every target once.
    """
    stride = max_len if stride is None else stride
    if not 1 <= stride <= max_len:
        raise ValueError(f"stride must be in [1, max_len={max_len}], got {stride}")
    rows: list[np.ndarray] = []
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        stop = end
        while stop - start >= 2:
            rows.append(items[max(start, stop - max_len - 1) : stop])
            stop -= stride
    windows = np.zeros((len(rows), max_len + 1), dtype=np.int64)
    for row, window in zip(windows, rows, strict=True):
        row[max_len + 1 - len(window) :] = window
    return windows


class TrainWindows(Dataset):
    """Training windows ``(w, n + 1)`` as :class:`TrainBatch` rows; collate with :meth:`collate`.

    ``stride`` is the one :func:`training_windows` cut them with: only the last ``stride``
    targets of each window are supervised (``None``: all of them).
    """

    def __init__(self, windows: np.ndarray, stride: int | None = None) -> None:
        self.windows = torch.from_numpy(windows)
        self.stride = stride

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> Tensor:
        return self.windows[index]

    def collate(self, rows: list[Tensor]) -> TrainBatch:
        windows = torch.stack(rows)
        input_ids = windows[:, :-1]
        target_ids = torch.where(input_ids > 0, windows[:, 1:], torch.zeros_like(input_ids))
        if self.stride is not None:
            target_ids[:, : input_ids.shape[1] - self.stride] = 0  # held by a later window
        return TrainBatch(input_ids=input_ids, target_ids=target_ids)


class EvalQueries(Dataset):
    """Held-out queries: the item at flat position ``positions[q]``, with the user's earlier items."""

    def __init__(
        self, items: np.ndarray, offsets: np.ndarray, positions: np.ndarray, users: np.ndarray, max_len: int
    ) -> None:
        self.items = items
        self.offsets = offsets
        self.positions = positions
        self.users = users
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int, int]:
        position, user = int(self.positions[index]), int(self.users[index])
        return self.items[self.offsets[user] : position], int(self.items[position]), user

    def collate(self, rows: list[tuple[np.ndarray, int, int]]) -> EvalBatch:
        n = self.max_len
        longest = max(len(history) for history, _, _ in rows)
        input_ids = torch.zeros(len(rows), n, dtype=torch.long)
        history = torch.zeros(len(rows), max(longest, 1), dtype=torch.long)
        for row, (items, _, _) in enumerate(rows):
            recent = items[-n:]
            if len(recent):
                input_ids[row, n - len(recent) :] = torch.from_numpy(recent)
                history[row, : len(items)] = torch.from_numpy(items)
        target = torch.tensor([t for _, t, _ in rows], dtype=torch.long)
        user_index = torch.tensor([u for _, _, u in rows], dtype=torch.long)
        return EvalBatch(input_ids=input_ids, target=target, history=history, user_index=user_index)


@dataclass
class PredictBatch:
    """Users to recommend for, after everything they did.

    ``input_ids (b n)``: the last ``n`` items, left-padded; ``history (b h)``: every item, right-padded
    with 0 (to exclude seen items); ``user_index (b)``: the user of each row.
    """

    input_ids: Tensor
    history: Tensor
    user_index: Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class UserHistories(Dataset):
    """One row per user in ``users``: the user's whole sequence ``items[offsets[u]:offsets[u + 1]]``."""

    def __init__(self, items: np.ndarray, offsets: np.ndarray, users: np.ndarray, max_len: int) -> None:
        self.items = items
        self.offsets = offsets
        self.users = users
        self.max_len = max_len

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        user = int(self.users[index])
        return self.items[self.offsets[user] : self.offsets[user + 1]], user

    def collate(self, rows: list[tuple[np.ndarray, int]]) -> PredictBatch:
        n = self.max_len
        input_ids = torch.zeros(len(rows), n, dtype=torch.long)
        history = torch.zeros(len(rows), max(max(len(items) for items, _ in rows), 1), dtype=torch.long)
        for row, (items, _) in enumerate(rows):
            if len(items):
                recent = items[-n:]
                input_ids[row, n - len(recent) :] = torch.from_numpy(recent)
                history[row, : len(items)] = torch.from_numpy(items)
        user_index = torch.tensor([user for _, user in rows], dtype=torch.long)
        return PredictBatch(input_ids=input_ids, history=history, user_index=user_index)
