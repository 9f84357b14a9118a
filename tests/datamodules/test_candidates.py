"""CandidateRankingDataModule: positives never among negatives, seeded lists, same queries as the parent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_rec.data.synthetic import SyntheticReviews
from lightning_rec.datamodules import CandidateRankingDataModule, SequentialRecDataModule


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> SyntheticReviews:
    return SyntheticReviews(
        num_users=150,
        num_items=80,
        num_categories=5,
        mean_length=12,
        cache_dir=str(tmp_path_factory.mktemp("c")),
    )


def _module(source, **options) -> CandidateRankingDataModule:
    return CandidateRankingDataModule(source=source, cache_dir="", max_len=10, **options)


@pytest.mark.parametrize("negatives", ["uniform", "popularity"])
def test_the_positive_is_never_a_negative_and_negatives_are_unseen(source, negatives):
    module = _module(source, negatives=negatives)
    data = module.data
    for split, positions, users in (
        ("valid", data.valid_positions, data.query_users_valid),
        ("test", data.test_positions, data.query_users_test),
    ):
        candidates, positive_index = module.candidate_lists(split)
        assert candidates.shape == (len(positions), 20)
        for row, (position, user) in enumerate(zip(positions, users, strict=True)):
            listed = candidates[row].tolist()
            assert listed[positive_index[row]] == data.items[position]
            assert len(set(listed)) == 20 and 0 not in listed
            negatives_ = set(listed) - {int(data.items[position])}
            assert not negatives_ & set(data.items[data.offsets[user] : data.offsets[user + 1]].tolist())
        assert len(set(positive_index.tolist())) > 10  # the positive's slot varies


def test_lists_are_seeded_reproducible_and_independent_of_batching(source):
    first, second = _module(source, eval_batch_size=7), _module(source, eval_batch_size=64)
    other = _module(source, candidate_seed=1)
    for split in ("valid", "test"):
        np.testing.assert_array_equal(first.candidate_lists(split)[0], second.candidate_lists(split)[0])
        assert not np.array_equal(first.candidate_lists(split)[0], other.candidate_lists(split)[0])
    batched = torch.cat([batch.candidates for batch in first.test_dataloader()])
    assert torch.equal(batched, torch.cat([batch.candidates for batch in second.test_dataloader()]))


def test_popularity_negatives_are_more_popular_than_uniform_ones(source):
    uniform, popular = _module(source), _module(source, negatives="popularity")
    counts = uniform.item_popularity().numpy()

    def negative_counts(module):
        candidates, positive_index = module.candidate_lists("test")
        keep = np.ones_like(candidates, dtype=bool)
        keep[np.arange(len(candidates)), positive_index] = False
        return counts[candidates[keep]]

    # Popularity sampling draws an item never seen as a training target with probability 0.
    assert (negative_counts(popular) > 0).all()
    assert negative_counts(popular).mean() > 1.2 * negative_counts(uniform).mean()


def test_batches_carry_the_parent_queries_and_their_titles(source):
    module = _module(source, history_titles=3)
    parent = SequentialRecDataModule(source=source, cache_dir="", max_len=10, eval_batch_size=64)
    titles = module.data.item_title
    for batch, reference in zip(module.test_dataloader(), parent.test_dataloader(), strict=True):
        assert torch.equal(batch.input_ids, reference.input_ids)
        assert torch.equal(batch.user_index, reference.user_index)
        positives = batch.candidates.gather(1, batch.positive_index[:, None]).squeeze(1)
        assert torch.equal(positives, reference.target)
        for row in range(len(batch)):
            history = [i for i in reference.history[row].tolist() if i > 0]
            assert batch.history_titles[row] == [titles[i] for i in history[-3:]]
            assert batch.candidate_titles[row] == [titles[i] for i in batch.candidates[row].tolist()]


def test_training_lists_hold_each_users_last_training_item_and_unseen_negatives(source):
    module = _module(source, train_on="candidate_lists", batch_size=16)
    data = module.data
    positions, users = module.query_positions("train")
    candidates, positive_index = module.candidate_lists("train")
    assert len(users) == int((data.train_end - data.offsets[:-1] >= 2).sum())
    for row, (position, user) in enumerate(zip(positions, users, strict=True)):
        assert position == data.train_end[user] - 1  # never a validation or test item
        listed = candidates[row].tolist()
        assert listed[positive_index[row]] == data.items[position]
        negatives = set(listed) - {int(data.items[position])}
        assert len(negatives) == 19
        assert not negatives & set(data.items[data.offsets[user] : data.offsets[user + 1]].tolist())
    batches = list(module.train_dataloader())
    assert sum(len(batch) for batch in batches) == len(users) and batches[0].rationales is None
    # The windows of the parent stay the default training batches.
    assert not hasattr(next(iter(_module(source).train_dataloader())), "candidates")
