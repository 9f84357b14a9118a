"""Tests for lightning_rec/data/score_cache.py: scores computed once, reused in memory and from disk."""

import os

import pytest
import torch
from safetensors.torch import save_file

from lightning_rec.data.score_cache import ScoreCache


class CountingScorer:
    """A deterministic 'judge' that counts how many keys it was asked to score."""

    def __init__(self, users, items, width=3):
        self.users, self.items, self.width = users, items, width
        self.calls = 0
        self.keys_scored = 0

    def __call__(self, positions):
        self.calls += 1
        self.keys_scored += len(positions)
        rows = []
        for position in positions:
            seed = hash((self.users[position], self.items[position])) % (2**31)
            rows.append(torch.rand(self.width, generator=torch.Generator().manual_seed(seed)))
        return torch.stack(rows)


def _keys(n=12, seed=0):
    generator = torch.Generator().manual_seed(seed)
    users = [f"u{int(i)}" for i in torch.randint(0, 4, (n,), generator=generator)]
    items = [f"i{int(i)}" for i in torch.randint(0, 6, (n,), generator=generator)]
    return users, items


def test_second_lookup_is_identical_and_calls_the_scorer_never(tmp_path):
    users, items = _keys()
    cache = ScoreCache(width=3, judge_version="embedding/minilm/v1", directory=tmp_path, name="aspects")
    scorer = CountingScorer(users, items)
    first = cache.get_or_compute(users, items, scorer)
    distinct = len(set(zip(users, items, strict=True)))
    assert scorer.calls == 1 and scorer.keys_scored == distinct  # a repeated key is scored once
    second = cache.get_or_compute(users, items, scorer)
    assert scorer.calls == 1
    assert torch.equal(first, second)
    assert (cache.hits, cache.misses) == (2 * len(users) - distinct, distinct)
    # The rows equal what the scorer gives each key on its own.
    for row, (user, item) in enumerate(zip(users, items, strict=True)):
        torch.testing.assert_close(first[row], CountingScorer([user], [item])([0])[0])


def test_scores_survive_a_save_and_a_new_process_worth_of_state(tmp_path):
    users, items = _keys()
    cache = ScoreCache(width=3, judge_version="llm/qwen/v1", directory=tmp_path)
    first = cache.get_or_compute(users, items, CountingScorer(users, items))
    cache.save()
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []  # the atomic write left nothing
    reloaded = ScoreCache(width=3, judge_version="llm/qwen/v1", directory=tmp_path)
    scorer = CountingScorer(users, items)
    assert torch.equal(reloaded.get_or_compute(users, items, scorer), first)
    assert scorer.calls == 0 and len(reloaded) == len(cache)
    # Only the missing keys of a partly cached query are computed.
    more_users, more_items = [*users[:3], "new-user"], [*items[:3], "i0"]
    scorer = CountingScorer(more_users, more_items)
    reloaded.get_or_compute(more_users, more_items, scorer)
    assert scorer.keys_scored == 1


def test_another_judge_version_never_sees_these_scores(tmp_path):
    users, items = _keys()
    first = ScoreCache(width=3, judge_version="v1", directory=tmp_path)
    first.get_or_compute(users, items, CountingScorer(users, items))
    first.save()
    other = ScoreCache(width=3, judge_version="v2", directory=tmp_path)
    scorer = CountingScorer(users, items)
    other.get_or_compute(users, items, scorer)
    assert len(os.listdir(tmp_path)) == 1  # v2 has nothing saved yet; v1's file is untouched
    assert scorer.keys_scored == len(set(zip(users, items, strict=True)))


def test_memory_only_cache_writes_nothing(tmp_path):
    users, items = _keys()
    cache = ScoreCache(width=3, judge_version="v1", directory=None)
    cache.get_or_compute(users, items, CountingScorer(users, items))
    cache.save()
    assert len(cache) > 0 and cache.path is None


def test_malformed_files_and_bad_scores_are_clear_errors(tmp_path):
    cache = ScoreCache(width=3, judge_version="v1", directory=tmp_path)
    with pytest.raises(ValueError, match=r"expected \(2, 3\)"):
        cache.get_or_compute(["a", "b"], ["x", "y"], lambda positions: torch.zeros(2, 4))
    with pytest.raises(ValueError, match="non-finite"):
        cache.get_or_compute(["a"], ["x"], lambda positions: torch.full((1, 3), float("nan")))
    assert len(cache) == 0
    save_file({"scores": torch.zeros(2, 3)}, str(cache.path), metadata={"judge_version": "v1", "width": "3"})
    with pytest.raises(ValueError, match="no 'keys'"):
        ScoreCache(width=3, judge_version="v1", directory=tmp_path)
    metadata = {"judge_version": "v1", "width": "3", "keys": '[["a", "x"]]'}
    save_file({"scores": torch.zeros(2, 3)}, str(cache.path), metadata=metadata)
    with pytest.raises(ValueError, match=r"tensor 'scores' has shape \(2, 3\), expected \(1, 3\)"):
        ScoreCache(width=3, judge_version="v1", directory=tmp_path)
    with pytest.raises(ValueError, match="width must be"):
        ScoreCache(width=0, judge_version="v1")
