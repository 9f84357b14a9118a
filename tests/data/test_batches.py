from itertools import pairwise

import numpy as np
import pytest

from lightning_rec.data.batches import EvalQueries, TrainWindows, training_windows


@pytest.mark.parametrize("max_len", [1, 3, 5, 50])
def test_windows_cover_every_training_pair_exactly_once(max_len):
    rng = np.random.default_rng(max_len)
    lengths = rng.integers(0, 17, size=30)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = rng.integers(1, 100, size=offsets[-1])
    windows = training_windows(items, offsets[:-1], offsets[1:], max_len)
    dataset = TrainWindows(windows)
    batch = dataset.collate([row for row in dataset]) if len(windows) else None
    expected = sorted(
        (tuple(items[s:t].tolist()[-max_len:]), int(items[t]))
        for s, e in pairwise(offsets)
        for t in range(s + 1, e)
    )
    assert batch is not None
    got = []
    for inputs, targets in zip(batch.input_ids.numpy(), batch.target_ids.numpy(), strict=True):
        for position in np.flatnonzero(targets):
            prefix = inputs[: position + 1]
            got.append((tuple(prefix[prefix > 0].tolist()), int(targets[position])))
    # Same pairs (next items), once each; prefixes are the window's part of the history.
    assert sorted(target for _, target in got) == sorted(target for _, target in expected)
    assert len(got) == int(np.sum(np.maximum(lengths - 1, 0)))
    assert windows.shape[1] == max_len + 1
    # Left padding: once a row has a real item, it has no padding after it.
    for row in windows:
        real = np.flatnonzero(row)
        assert np.all(row[real[0] :] > 0)


@pytest.mark.parametrize(("max_len", "stride"), [(5, 1), (5, 2), (5, 5), (8, 3), (50, 10)])
def test_strided_windows_supervise_every_pair_once_with_a_long_history(max_len, stride):
    rng = np.random.default_rng(max_len * 100 + stride)
    lengths = rng.integers(0, 40, size=30)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    items = rng.permutation(offsets[-1]) + 1  # distinct items: a target names its pair
    windows = training_windows(items, offsets[:-1], offsets[1:], max_len, stride=stride)
    dataset = TrainWindows(windows, stride=stride)
    batch = dataset.collate([row for row in dataset])
    seen: dict[int, tuple[int, ...]] = {}
    for inputs, targets in zip(batch.input_ids.numpy(), batch.target_ids.numpy(), strict=True):
        for position in np.flatnonzero(targets):
            prefix = inputs[: position + 1]
            assert int(targets[position]) not in seen, "a pair was supervised twice"
            seen[int(targets[position])] = tuple(prefix[prefix > 0].tolist())
    expected = {
        int(items[t]): tuple(items[s:t].tolist()[-max_len:])
        for s, e in pairwise(offsets)
        for t in range(s + 1, e)
    }
    assert set(seen) == set(expected)  # every pair once
    for target, history in seen.items():
        full = expected[target]
        # The window's part of the true history, never shorter than max_len - stride + 1 items.
        assert full[len(full) - len(history) :] == history
        assert len(history) >= min(len(full), max_len - stride + 1)


def test_strided_windows_with_stride_max_len_equal_todays_windows():
    items = np.arange(1, 12)
    assert np.array_equal(
        training_windows(items, np.array([0]), np.array([11]), 4, stride=4),
        training_windows(items, np.array([0]), np.array([11]), 4),
    )
    with pytest.raises(ValueError, match="stride must be in"):
        training_windows(items, np.array([0]), np.array([11]), 4, stride=5)


def test_long_sequence_windows_overlap_by_one_item():
    items = np.arange(1, 12)
    windows = training_windows(items, np.array([0]), np.array([11]), max_len=4)
    assert windows.tolist() == [[7, 8, 9, 10, 11], [3, 4, 5, 6, 7], [0, 0, 1, 2, 3]]


def test_eval_queries_collate_history_and_left_padded_input():
    items = np.array([5, 6, 7, 8, 9, 1, 2])
    offsets = np.array([0, 5, 7])
    queries = EvalQueries(items, offsets, positions=np.array([4, 6]), users=np.array([0, 1]), max_len=3)
    batch = queries.collate([queries[0], queries[1]])
    assert batch.input_ids.tolist() == [[6, 7, 8], [0, 0, 1]]
    assert batch.target.tolist() == [9, 2]
    assert batch.history.tolist() == [[5, 6, 7, 8], [1, 0, 0, 0]]
    assert batch.user_index.tolist() == [0, 1]
