"""Tests for lightning_rec/data/streams.py: Si-Blurry fractions, single pass, seeding, other streams."""

import numpy as np
import pytest
import torch

from lightning_rec.data import (
    build_stream,
    disjoint_stream,
    gaussian_blurry_stream,
    hold_out,
    si_blurry_stream,
)


def labels_of(num_classes: int = 40, seed: int = 0) -> np.ndarray:
    """Classes of unequal sizes (5 to 29 samples), in a shuffled order."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(rng.integers(5, 30), label) for label in range(num_classes)])
    return rng.permutation(labels)


def split_of_position(split_ends, length):
    return np.searchsorted(np.asarray(split_ends), np.arange(length), side="right")


@pytest.mark.parametrize(
    ("disjoint_fraction", "blurry_fraction", "seed"),
    [(0.5, 0.1, 0), (0.3, 0.25, 1), (0.8, 0.0, 2), (0.0, 1.0, 3)],
)
def test_si_blurry_has_the_requested_fractions_and_never_shows_a_sample_twice(
    disjoint_fraction, blurry_fraction, seed
):
    labels = labels_of(seed=seed)
    stream = si_blurry_stream(
        labels, num_splits=5, disjoint_fraction=disjoint_fraction, blurry_fraction=blurry_fraction, seed=seed
    )
    # A single pass over every sample, each exactly once.
    assert len(stream.order) == len(labels) == len(set(stream.order.tolist()))
    assert stream.split_ends[-1] == len(labels) and list(stream.split_ends) == sorted(stream.split_ends)

    disjoint = [label for group in stream.disjoint_classes for label in group]
    blurry = [label for group in stream.blurry_classes for label in group]
    assert len(disjoint) == int(40 * disjoint_fraction) // 5 * 5  # a multiple of the split count
    assert sorted(disjoint + blurry) == list(range(40))
    blurry_samples = np.isin(labels, blurry).sum()
    assert len(stream.blurred) == int(blurry_samples * blurry_fraction) == len(set(stream.blurred.tolist()))
    assert np.isin(labels[stream.blurred], blurry).all(), "only blurry-class samples are blurred"

    split = split_of_position(stream.split_ends, len(labels))
    stream_labels = labels[stream.order]
    for index, group in enumerate(stream.disjoint_classes):
        # A disjoint class appears in its own split only.
        assert set(split[np.isin(stream_labels, group)].tolist()) <= {index}
    home = {label: index for index, group in enumerate(stream.blurry_classes) for label in group}
    away = [
        sample for position, sample in enumerate(stream.order)
        if labels[sample] in home and split[position] != home[labels[sample]]
    ]  # fmt: skip
    assert set(away) <= set(stream.blurred.tolist()), "a blurry sample leaves its home split only if blurred"
    # Blurring deals samples back so that every split keeps its size.
    sizes = np.diff((0, *stream.split_ends))
    home_sizes = [
        np.isin(labels, stream.disjoint_classes[index] + stream.blurry_classes[index]).sum()
        for index in range(5)
    ]
    assert sizes.tolist() == [int(size) for size in home_sizes]


def official_online_sampler(targets: list[int], num_classes: int, num_tasks: int, m: int, n: int, seed: int):
    """FlyGCL's OnlineSampler (varing_NM, n and m <= 100) written out as described in its code: list
    scans in dataset order, torch.Generator draws in the same sequence. Returns the per-task index lists,
    disjoint classes and blurry classes."""
    generator = torch.Generator().manual_seed(seed)
    disjoint_num = num_classes * n // 100
    disjoint_num = int(disjoint_num // num_tasks) * num_tasks
    blurry_num = num_classes - disjoint_num
    class_order = torch.randperm(num_classes, generator=generator)
    disjoint_classes = class_order[:disjoint_num].tolist()
    if disjoint_num > 0:
        cuts = torch.randint(0, disjoint_num, (num_tasks - 1,), generator=generator).sort().values.tolist()
        cuts = [0, *cuts, disjoint_num]
        disjoint_classes = [disjoint_classes[cuts[i] : cuts[i + 1]] for i in range(num_tasks)]
    else:
        disjoint_classes = [[] for _ in range(num_tasks)]
    if blurry_num > 0:
        cuts = torch.randint(0, blurry_num, (num_tasks - 1,), generator=generator).sort().values.tolist()
        cuts = [0, *cuts, blurry_num]
        blurry_classes = [
            class_order[disjoint_num + cuts[i] : disjoint_num + cuts[i + 1]].tolist()
            for i in range(num_tasks)
        ]
    else:
        blurry_classes = [[] for _ in range(num_tasks)]
    disjoint_indices = [[] for _ in range(num_tasks)]
    blurry_indices = [[] for _ in range(num_tasks)]
    num_blurred = 0
    for i, target in enumerate(targets):
        for j in range(num_tasks):
            if target in disjoint_classes[j]:
                disjoint_indices[j].append(i)
                break
            if target in blurry_classes[j]:
                blurry_indices[j].append(i)
                num_blurred += 1
                break
    num_blurred = num_blurred * m // 100
    if num_blurred > 0:
        quota = [
            0,
            *torch.randint(0, num_blurred, (num_tasks - 1,), generator=generator).sort().values.tolist(),
        ]
        quota.append(num_blurred)
        blurred = []
        for i in range(num_tasks):
            blurred += blurry_indices[i][: quota[i + 1] - quota[i]]
            blurry_indices[i] = blurry_indices[i][quota[i + 1] - quota[i] :]
        blurred = torch.tensor(blurred)[torch.randperm(len(blurred), generator=generator)].tolist()
        for i in range(num_tasks):
            blurry_indices[i] += blurred[: quota[i + 1] - quota[i]]
            blurred = blurred[quota[i + 1] - quota[i] :]
    indices = []
    for i in range(num_tasks):
        task = disjoint_indices[i] + blurry_indices[i]
        indices.append(
            torch.tensor(task, dtype=torch.long)[torch.randperm(len(task), generator=generator)].tolist()
        )
    return indices, disjoint_classes, blurry_classes


@pytest.mark.parametrize(("n", "m", "seed"), [(50, 10, 0), (30, 25, 1), (0, 10, 2), (100, 0, 3), (60, 50, 4)])
def test_the_official_sampler_gives_the_official_code_s_stream(n, m, seed):
    labels = labels_of(seed=seed)
    expected, disjoint, blurry = official_online_sampler(labels.tolist(), 40, 5, m, n, seed)
    stream = si_blurry_stream(labels, 5, n / 100, m / 100, seed=seed, sampler="official")
    assert list(stream.split_ends) == np.cumsum([len(task) for task in expected]).tolist()
    assert stream.order.tolist() == [index for task in expected for index in task]
    assert stream.disjoint_classes == tuple(tuple(sorted(group)) for group in disjoint)
    assert stream.blurry_classes == tuple(tuple(sorted(group)) for group in blurry)
    total_blurry = np.isin(labels, [c for group in blurry for c in group]).sum()
    assert len(stream.blurred) <= total_blurry * m // 100


def test_streams_are_seeded():
    labels = labels_of()
    first, again, other = (si_blurry_stream(labels, seed=seed) for seed in (7, 7, 8))
    assert np.array_equal(first.order, again.order) and first.split_ends == again.split_ends
    assert not np.array_equal(first.order, other.order)
    assert np.array_equal(
        gaussian_blurry_stream(labels, seed=3).order, gaussian_blurry_stream(labels, seed=3).order
    )


def test_si_blurry_split_sizes_are_random():
    labels = labels_of(num_classes=60)
    class_counts = {
        tuple(len(group) for group in si_blurry_stream(labels, seed=seed).disjoint_classes)
        for seed in range(6)
    }
    assert len(class_counts) > 1


def test_disjoint_stream_gives_each_class_one_split_of_equal_class_counts():
    labels = labels_of(num_classes=23)
    stream = disjoint_stream(labels, num_splits=5, seed=0)
    assert sorted(stream.order.tolist()) == list(range(len(labels)))
    assert sorted(len(group) for group in stream.disjoint_classes) == [4, 4, 5, 5, 5]
    split = split_of_position(stream.split_ends, len(labels))
    for label in range(23):
        assert len(set(split[labels[stream.order] == label].tolist())) == 1


def test_gaussian_blurry_stream_orders_classes_by_their_centres():
    labels = labels_of(num_classes=10)
    stream = gaussian_blurry_stream(labels, num_splits=4, width=0.02, seed=1)
    assert sorted(stream.order.tolist()) == list(range(len(labels)))
    assert np.diff(stream.split_ends).max() - np.diff((0, *stream.split_ends)).min() <= 1
    # Narrow Gaussians: mean stream positions of the classes follow the homes' order.
    order = [label for group in stream.blurry_classes for label in group]
    stream_labels = labels[stream.order]
    mean_positions = [np.flatnonzero(stream_labels == label).mean() for label in range(10)]
    homes = {label: index for index, group in enumerate(stream.blurry_classes) for label in group}
    for a in order:
        for b in order:
            if homes[a] < homes[b]:
                assert mean_positions[a] < mean_positions[b]
    wide = gaussian_blurry_stream(labels, num_splits=4, width=0.5, seed=1)
    classes_in_first_split = [len(set(labels[s.order[: s.split_ends[0]]].tolist())) for s in (stream, wide)]
    assert classes_in_first_split[1] > classes_in_first_split[0], (
        "wider Gaussians mix more classes into a split"
    )


def test_hold_out_is_stratified_and_disjoint():
    labels = labels_of()
    stream, test = hold_out(labels, 0.2, seed=0)
    assert not set(stream.tolist()) & set(test.tolist())
    assert sorted(stream.tolist() + test.tolist()) == list(range(len(labels)))
    for label in range(40):
        count = (labels == label).sum()
        assert (labels[test] == label).sum() == min(max(round(0.2 * count), 1), count - 1)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="disjoint_fraction"):
        si_blurry_stream(labels_of(), disjoint_fraction=1.5)
    with pytest.raises(ValueError, match="labels must be"):
        si_blurry_stream(np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="stream must be"):
        build_stream("random", labels_of())
