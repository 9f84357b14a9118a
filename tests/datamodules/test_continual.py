"""Tests for lightning_rec/datamodules/continual.py: stream order, split-aligned batches, sharding."""

import numpy as np
import pytest
import torch

import lightning_rec.datamodules.continual as continual
from lightning_rec.data import SyntheticTitleExamples
from lightning_rec.datamodules import ContinualStreamDataModule


def digits(**overrides) -> ContinualStreamDataModule:
    return ContinualStreamDataModule(**{"batch_size": 16, "eval_period": 250, "seed": 1, **overrides})


def test_the_stream_is_one_pass_in_order_with_batches_that_end_at_split_ends():
    data = digits()
    batches = list(data.train_dataloader())
    order = data.stream.order
    assert sorted(order.tolist()) == sorted(set(range(1797)) - set(data.test_indices.tolist()))
    seen = torch.cat([batch.labels for batch in batches])
    assert torch.equal(seen, data.examples.labels[order])
    inputs = torch.cat([batch.inputs for batch in batches])
    assert torch.equal(inputs, data.examples.inputs[order])
    positions = [batch.position for batch in batches]
    assert positions == list(np.cumsum([len(batch) for batch in batches]))
    assert set(data.split_ends) <= set(positions), "no batch straddles a split end"
    assert max(len(batch) for batch in batches) == 16
    assert len(data.train_dataloader()) == len(batches)


def test_eval_points_are_the_periods_and_the_split_ends():
    data = digits()
    points = data.eval_points
    assert [p.position for p in points if p.periodic] == list(range(250, data.stream_length + 1, 250))
    assert {p.position for p in points if p.split_end} == {end for end in data.split_ends if end > 0}
    assert points[-1].position == data.stream_length and points[-1].split_end


def test_seen_class_loader_holds_only_test_samples_of_those_classes():
    data = digits(test_fraction=0.25)
    batches = list(data.seen_class_dataloader([3, 7]))
    labels = torch.cat([labels for _, labels in batches])
    expected = data.test_indices[np.isin(data.examples.labels.numpy()[data.test_indices], [3, 7])]
    assert torch.equal(labels, data.examples.labels[expected])
    assert set(labels.tolist()) == {3, 7}
    assert not set(expected.tolist()) & set(data.stream.order.tolist())
    everything = torch.cat([labels for _, labels in data.test_dataloader()])
    assert len(everything) == len(data.test_indices)


def test_ranks_share_each_global_batch_and_step_together(monkeypatch):
    data = digits(batch_size=8)
    per_rank = []
    for rank in range(2):
        monkeypatch.setattr(continual, "_distributed", lambda rank=rank: (rank, 2))
        per_rank.append(list(data.train_dataloader()))
    zero, one = per_rank
    assert len(zero) == len(one), "every rank takes a step on every batch"
    assert [batch.position for batch in zero] == [batch.position for batch in one]
    for a, b in zip(zero, one, strict=True):
        # Rank r holds positions r, r + 2, ... of the global batch that ends at `position`.
        expected = data.examples.labels[data.stream.order[a.position - len(a) - len(b) : a.position]]
        assert torch.equal(a.labels, expected[0::2]) and torch.equal(b.labels, expected[1::2])
    covered = sum(len(a) + len(b) for a, b in zip(zero, one, strict=True))
    assert covered == data.stream_length, "a tail shorter than the world size joins the last batch"
    assert zero[-1].position == data.stream_length
    monkeypatch.setattr(continual, "_distributed", lambda: (0, 2))
    test_zero = torch.cat([labels for _, labels in data.seen_class_dataloader(range(10))])
    monkeypatch.setattr(continual, "_distributed", lambda: (1, 2))
    test_one = torch.cat([labels for _, labels in data.seen_class_dataloader(range(10))])
    assert len(test_zero) + len(test_one) == len(data.test_indices)


def test_text_sources_give_text_batches(data_cache):
    data = ContinualStreamDataModule(
        SyntheticTitleExamples(num_items=200, num_categories=10, seed=0, cache_dir=data_cache),
        stream="disjoint", batch_size=32, eval_period=50,
    )  # fmt: skip
    batch = next(iter(data.train_dataloader()))
    assert isinstance(batch.inputs, list) and isinstance(batch.inputs[0], str)
    assert [data.examples.inputs[i] for i in data.stream.order[: len(batch)]] == batch.inputs
    assert data.num_classes == 10 and data.dataset_name == "synthetic-title-categories-10"


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="eval_period must be >= 1"):
        ContinualStreamDataModule(eval_period=0)
    with pytest.raises(ValueError, match="stream must be"):
        ContinualStreamDataModule(stream="shuffled").stream  # noqa: B018
