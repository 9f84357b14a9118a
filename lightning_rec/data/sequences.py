"""From raw interactions to per-user item sequences: filtering, id maps, ordering, splits, cache.

This is the preprocessing every sequential recommender shares (no Lightning here). The protocol is
the one in the project's data spec:

1. keep interactions with ``rating >= rating_threshold`` (all of them when it is ``None``; an
   interaction without a rating is always kept);
2. iterated k-core: drop users and items with fewer than ``k_core`` interactions until none is left
   to drop (a fixed point);
3. order each user's interactions by timestamp. **Tie rule:** equal timestamps keep the order of the
   input file (a stable sort). Amazon dumps have day-resolution timestamps, so that order can leak
   information; ``tie_break="shuffle"`` permutes tied interactions with ``seed`` instead;
4. map raw ids to contiguous indices: users ``0..U-1`` in order of first appearance, items
   ``1..I`` in order of first appearance (0 is the padding item);
5. split: ``leave_one_out`` (last item = test, second to last = validation, the rest = training;
   users with fewer than 3 interactions only train) or ``global_time`` (the interaction timestamps'
   quantiles cut train / validation / test periods; every validation or test interaction with at
   least one earlier interaction of its user is a query).

The result, :class:`SequenceData`, is cached on disk under a key that hashes the source's fingerprint
and every option, and is written atomically (to a temporary folder, then renamed).

Axes: u users, i items, t interactions (flat, grouped by user in time order), q queries.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Literal

import numpy as np

from lightning_rec.atomic import atomic_directory
from lightning_rec.data.records import InteractionSource
from lightning_rec.data.text_files import fingerprint_files

__all__ = ["SequenceData", "SequenceOptions", "SplitName", "TieBreak", "load_or_build_sequences"]

log = logging.getLogger(__name__)

SplitName = Literal["leave_one_out", "global_time"]
TieBreak = Literal["file_order", "shuffle"]
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class SequenceOptions:
    """Every option that changes the preprocessed data; part of the cache key."""

    rating_threshold: float | None = None
    k_core: int = 5
    tie_break: TieBreak = "file_order"
    split: SplitName = "leave_one_out"
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.k_core < 1:
            raise ValueError(f"k_core must be >= 1, got {self.k_core}")
        if self.tie_break not in ("file_order", "shuffle"):
            raise ValueError(f"tie_break must be 'file_order' or 'shuffle', got {self.tie_break!r}")
        if self.split not in ("leave_one_out", "global_time"):
            raise ValueError(f"split must be 'leave_one_out' or 'global_time', got {self.split!r}")
        ratios = self.split_ratios
        if len(ratios) != 3 or min(ratios) <= 0 or abs(sum(ratios) - 1.0) > 1e-6:
            raise ValueError(f"split_ratios must be three positive numbers summing to 1, got {ratios}")


@dataclass
class SequenceData:
    """Per-user item sequences in time order, the id maps, the item side table and the split.

    Attributes:
        user_ids: ``(u,)`` raw user id of each user index.
        item_ids: ``(i + 1,)`` raw item id of each item index; ``item_ids[0]`` is ``"[PAD]"``.
        offsets: ``(u + 1,)`` user ``u``'s interactions are ``items[offsets[u]:offsets[u + 1]]``.
        items: ``(t,)`` item indices in ``1..i``, grouped by user, in time order.
        timestamps: ``(t,)`` seconds, aligned with ``items``.
        train_end: ``(u,)`` user ``u`` trains on ``items[offsets[u]:train_end[u]]``.
        valid_positions, test_positions: ``(q,)`` flat positions into ``items`` of the held-out
            targets; the history of the query at position ``p`` of user ``u`` is
            ``items[offsets[u]:p]``.
        query_users_valid, query_users_test: ``(q,)`` the user of each query.
        item_title, item_category: ``(i + 1,)`` strings ("" when unknown; index 0 is padding).
        item_price: ``(i + 1,)`` float, NaN when unknown.
    """

    user_ids: list[str]
    item_ids: list[str]
    offsets: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    train_end: np.ndarray
    valid_positions: np.ndarray
    test_positions: np.ndarray
    query_users_valid: np.ndarray
    query_users_test: np.ndarray
    item_title: list[str]
    item_category: list[str]
    item_price: np.ndarray

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        """Real items, excluding the padding index 0."""
        return len(self.item_ids) - 1

    def stats(self) -> str:
        density = len(self.items) / max(self.num_users * self.num_items, 1)
        return (
            f"{self.num_users} users, {self.num_items} items, {len(self.items)} interactions "
            f"(density {density:.4%}); {len(self.valid_positions)} validation and "
            f"{len(self.test_positions)} test queries"
        )

    # ------------------------------------------------------------------ disk
    _ARRAYS = (
        "offsets", "items", "timestamps", "train_end", "valid_positions", "test_positions",
        "query_users_valid", "query_users_test", "item_price",
    )  # fmt: skip
    _STRINGS = ("user_ids", "item_ids", "item_title", "item_category")

    def save(self, directory: Path) -> None:
        """Write ``arrays.npz`` and ``strings.json`` (no pickle) into ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        np.savez(directory / "arrays.npz", **{name: getattr(self, name) for name in self._ARRAYS})
        with (directory / "strings.json").open("w", encoding="utf-8") as handle:
            json.dump({name: getattr(self, name) for name in self._STRINGS}, handle)

    @classmethod
    def load(cls, directory: Path) -> SequenceData:
        with np.load(directory / "arrays.npz", allow_pickle=False) as arrays:
            values = {name: arrays[name] for name in cls._ARRAYS}
        with (directory / "strings.json").open(encoding="utf-8") as handle:
            values.update(json.load(handle))
        return cls(**values)


def load_or_build_sequences(
    source: InteractionSource, options: SequenceOptions, cache_dir: str | Path | None
) -> SequenceData:
    """Return the preprocessed sequences of ``source``, from the cache when its key matches.

    With ``cache_dir=None`` nothing is written. The key hashes ``source.fingerprint()`` and
    ``options``, so changing a file or an option rebuilds instead of reusing stale data.
    """
    if cache_dir is None:
        return build_sequences(source, options)
    key = fingerprint_files([], {"source": source.fingerprint(), "options": options.__dict__,
                                 "format": _CACHE_FORMAT})  # fmt: skip
    target = Path(cache_dir) / "sequences" / key
    if (target / "strings.json").is_file():
        log.info("Loading preprocessed sequences from %s", target)
        return SequenceData.load(target)
    data = build_sequences(source, options)
    with atomic_directory(target, lambda done: (done / "strings.json").is_file()) as staging:
        data.save(staging)
    log.info("Cached preprocessed sequences in %s", target)
    return data


def build_sequences(source: InteractionSource, options: SequenceOptions) -> SequenceData:
    """Run the whole protocol (see the module docstring) on ``source``."""
    users, items, timestamps, user_names, item_names = _read_interactions(source, options.rating_threshold)
    if len(users) == 0:
        raise ValueError("the source yielded no interactions (after the rating threshold)")
    keep = _k_core_mask(users, items, options.k_core)
    users, items, timestamps = users[keep], items[keep], timestamps[keep]
    if len(users) == 0:
        raise ValueError(f"no interaction survives the {options.k_core}-core filter")

    # Contiguous indices in order of first appearance among the interactions the k-core kept.
    user_codes, user_raw = _first_appearance_codes(users, user_names)
    item_codes, item_raw = _first_appearance_codes(items, item_names)
    item_codes = item_codes + 1  # 0 is padding

    file_order = np.arange(len(user_codes))
    if options.tie_break == "shuffle":
        file_order = np.random.default_rng(options.seed).permutation(len(user_codes))
    order = np.lexsort((file_order, timestamps, user_codes))  # last key is primary
    user_codes, item_codes, timestamps = user_codes[order], item_codes[order], timestamps[order]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(user_codes, minlength=len(user_raw)))])

    split = _split_leave_one_out if options.split == "leave_one_out" else _split_global_time
    train_end, valid_positions, test_positions = split(offsets, timestamps, options.split_ratios)
    position_user = np.repeat(np.arange(len(user_raw)), np.diff(offsets))

    titles, categories, prices = _item_table(source, item_raw)
    for report in source.reports:
        log.info(report.summary())
    data = SequenceData(
        user_ids=list(user_raw),
        item_ids=["[PAD]", *item_raw],
        offsets=offsets.astype(np.int64),
        items=item_codes.astype(np.int64),
        timestamps=timestamps.astype(np.float64),
        train_end=train_end.astype(np.int64),
        valid_positions=valid_positions.astype(np.int64),
        test_positions=test_positions.astype(np.int64),
        query_users_valid=position_user[valid_positions].astype(np.int64),
        query_users_test=position_user[test_positions].astype(np.int64),
        item_title=titles,
        item_category=categories,
        item_price=prices,
    )
    log.info("Preprocessed: %s", data.stats())
    return data


def _read_interactions(
    source: InteractionSource, rating_threshold: float | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """Interactions as integer codes (numbered by first appearance in the file) and the raw names.

    Coding while reading (one dict lookup per interaction) keeps every later step on integer arrays:
    sorting millions of Python strings (``np.unique`` on objects) was the slowest part at 10^6 items.
    """
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    users: list[int] = []
    items: list[int] = []
    timestamps: list[float] = []
    for event in source.interactions():
        if rating_threshold is not None and event.rating is not None and event.rating < rating_threshold:
            continue
        users.append(user_index.setdefault(event.user_id, len(user_index)))
        items.append(item_index.setdefault(event.item_id, len(item_index)))
        timestamps.append(event.timestamp)
    return (
        np.asarray(users, dtype=np.int64),
        np.asarray(items, dtype=np.int64),
        np.asarray(timestamps, float),
        list(user_index),
        list(item_index),
    )


def _k_core_mask(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the interactions in the iterated k-core (users and items with >= k left)."""
    keep = np.ones(len(users), dtype=bool)
    while True:
        user_counts = np.bincount(users[keep], minlength=users.max() + 1)
        item_counts = np.bincount(items[keep], minlength=items.max() + 1)
        new_keep = keep & (user_counts[users] >= k) & (item_counts[items] >= k)
        if new_keep.sum() == keep.sum():
            return keep
        keep = new_keep


def _first_appearance_codes(codes: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Codes renumbered ``0..n-1`` by first appearance in ``codes``, and the raw name of each."""
    uniques, first_index, inverse = np.unique(codes, return_index=True, return_inverse=True)
    order = np.argsort(first_index, kind="stable")
    rank_of_unique = np.empty(len(uniques), dtype=np.int64)
    rank_of_unique[order] = np.arange(len(uniques))
    return rank_of_unique[inverse], [names[code] for code in uniques[order]]


def _split_leave_one_out(
    offsets: np.ndarray, timestamps: np.ndarray, ratios: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lengths = np.diff(offsets)
    evaluated = lengths >= 3
    train_end = np.where(evaluated, offsets[1:] - 2, offsets[1:])
    return train_end, (offsets[1:] - 2)[evaluated], (offsets[1:] - 1)[evaluated]


def _split_global_time(
    offsets: np.ndarray, timestamps: np.ndarray, ratios: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    valid_start, test_start = np.quantile(timestamps, [ratios[0], ratios[0] + ratios[1]])
    positions = np.arange(len(timestamps))
    first_of_user = np.zeros(len(timestamps), dtype=bool)
    first_of_user[offsets[:-1][np.diff(offsets) > 0]] = True
    has_history = ~first_of_user
    in_valid = (timestamps >= valid_start) & (timestamps < test_start) & has_history
    in_test = (timestamps >= test_start) & has_history
    # Per user, training is the prefix before the validation period (timestamps are sorted per user).
    train_end = np.array(
        [start + np.searchsorted(timestamps[start:end], valid_start) for start, end in pairwise(offsets)],
        dtype=np.int64,
    )
    return train_end, positions[in_valid], positions[in_test]


def _item_table(source: InteractionSource, item_raw: list[str]) -> tuple[list[str], list[str], np.ndarray]:
    index = {item: j for j, item in enumerate(item_raw, start=1)}
    titles = [""] * (len(item_raw) + 1)
    categories = [""] * (len(item_raw) + 1)
    prices = np.full(len(item_raw) + 1, np.nan)
    for meta in source.items():
        j = index.get(meta.item_id)
        if j is None:
            continue
        titles[j] = meta.title or ""
        # The most specific category: Amazon lists go from broad to narrow.
        categories[j] = meta.categories[-1] if meta.categories else ""
        prices[j] = np.nan if meta.price is None else meta.price
    return titles, categories, prices
