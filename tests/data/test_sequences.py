import numpy as np
import pytest

from lightning_rec.data.records import Interaction, ItemMeta
from lightning_rec.data.sequences import SequenceOptions, build_sequences, load_or_build_sequences


def _random_events(seed: int, users: int = 40, items: int = 30, n: int = 600) -> list[Interaction]:
    rng = np.random.default_rng(seed)
    return [
        Interaction(f"u{rng.integers(users)}", f"i{rng.integers(items)}", float(rng.integers(1, 6)),
                    float(rng.integers(0, 50)))  # coarse timestamps: many ties
        for _ in range(n)
    ]  # fmt: skip


def _brute_force_k_core(events: list[Interaction], k: int) -> list[Interaction]:
    kept = list(events)
    while True:
        users, items = {}, {}
        for e in kept:
            users[e.user_id] = users.get(e.user_id, 0) + 1
            items[e.item_id] = items.get(e.item_id, 0) + 1
        survivors = [e for e in kept if users[e.user_id] >= k and items[e.item_id] >= k]
        if len(survivors) == len(kept):
            return kept
        kept = survivors


def _sequences(data):
    return {
        data.user_ids[u]: [data.item_ids[i] for i in data.items[data.offsets[u] : data.offsets[u + 1]]]
        for u in range(data.num_users)
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_k_core_and_time_order_match_a_brute_force(list_source, seed, k):
    events = _random_events(seed)
    data = build_sequences(list_source(events), SequenceOptions(k_core=k))
    expected_events = _brute_force_k_core(events, k)
    expected: dict[str, list[tuple[float, int, str]]] = {}
    for index, e in enumerate(expected_events):
        expected.setdefault(e.user_id, []).append((e.timestamp, index, e.item_id))
    # Tie rule: equal timestamps keep file order (a stable sort by timestamp).
    assert _sequences(data) == {u: [item for _, _, item in sorted(v)] for u, v in expected.items()}
    counts = np.bincount(data.items, minlength=data.num_items + 1)[1:]
    assert counts.min() >= k and np.diff(data.offsets).min() >= k


def test_shuffle_tie_break_is_seeded_and_only_permutes_ties(list_source):
    events = [Interaction("u", f"i{j}", 5.0, float(j // 4)) for j in range(40)]
    file_order = build_sequences(list_source(events), SequenceOptions(k_core=1))
    shuffled = build_sequences(list_source(events), SequenceOptions(k_core=1, tie_break="shuffle", seed=1))
    again = build_sequences(list_source(events), SequenceOptions(k_core=1, tie_break="shuffle", seed=1))
    assert _sequences(file_order)["u"] == [f"i{j}" for j in range(40)]
    assert _sequences(shuffled) == _sequences(again)
    assert _sequences(shuffled)["u"] != _sequences(file_order)["u"]
    # Items of different timestamps never swap.
    assert [int(i[1:]) // 4 for i in _sequences(shuffled)["u"]] == [j // 4 for j in range(40)]


def test_rating_threshold_keeps_unrated_and_high_ratings(list_source):
    events = [
        Interaction("u", "a", 5.0, 1.0),
        Interaction("u", "b", 2.0, 2.0),
        Interaction("u", "c", None, 3.0),
        Interaction("u", "d", 4.0, 4.0),
    ]
    data = build_sequences(list_source(events), SequenceOptions(k_core=1, rating_threshold=4.0))
    assert _sequences(data) == {"u": ["a", "c", "d"]}


def test_leave_one_out_split(list_source):
    data = build_sequences(list_source(_random_events(3)), SequenceOptions(k_core=3))
    lengths = np.diff(data.offsets)
    evaluated = np.flatnonzero(lengths >= 3)
    assert np.array_equal(data.query_users_test, evaluated)
    assert np.array_equal(data.test_positions, data.offsets[evaluated + 1] - 1)
    assert np.array_equal(data.valid_positions, data.offsets[evaluated + 1] - 2)
    assert np.array_equal(data.train_end[evaluated], data.offsets[evaluated + 1] - 2)


def test_global_time_split_respects_the_timeline(list_source):
    events = _random_events(4, n=1500)
    data = build_sequences(list_source(events), SequenceOptions(k_core=2, split="global_time",
                                                                split_ratios=(0.6, 0.2, 0.2)))  # fmt: skip
    t = data.timestamps
    valid_start, test_start = np.quantile(t, [0.6, 0.8])
    assert len(data.valid_positions) > 0 and len(data.test_positions) > 0
    assert np.all((t[data.valid_positions] >= valid_start) & (t[data.valid_positions] < test_start))
    assert np.all(t[data.test_positions] >= test_start)
    for u in range(data.num_users):
        train = t[data.offsets[u] : data.train_end[u]]
        assert np.all(train < valid_start)
    # Every query has history: it is never the first interaction of its user.
    assert not np.isin(data.test_positions, data.offsets[:-1]).any()


def test_item_table_is_aligned_with_item_indices(list_source):
    events = [Interaction("u", x, 5.0, float(j)) for j, x in enumerate("bca")]
    metas = [ItemMeta("a", title="A", categories=("Top", "Leaf"), price=1.5), ItemMeta("c", title="C")]
    data = build_sequences(list_source(events, metas), SequenceOptions(k_core=1))
    assert data.item_ids == ["[PAD]", "b", "c", "a"]
    assert data.item_title == ["", "", "C", "A"]
    assert data.item_category == ["", "", "", "Leaf"]
    assert np.isnan(data.item_price[2]) and data.item_price[3] == 1.5


def test_cache_is_keyed_by_source_and_options(list_source, tmp_path):
    source = list_source(_random_events(5), tag="a")
    first = load_or_build_sequences(source, SequenceOptions(k_core=2), tmp_path)
    assert source.reads == 1
    second = load_or_build_sequences(source, SequenceOptions(k_core=2), tmp_path)
    assert source.reads == 1  # served from the cache
    assert second.user_ids == first.user_ids and np.array_equal(second.items, first.items)
    load_or_build_sequences(source, SequenceOptions(k_core=3), tmp_path)
    assert source.reads == 2  # another option, another key
    load_or_build_sequences(list_source(_random_events(6), tag="b"), SequenceOptions(k_core=2), tmp_path)
    entries = sorted(p.name for p in (tmp_path / "sequences").iterdir())
    assert len(entries) == 3 and not any(name.startswith(".") for name in entries)  # no staging left


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="split_ratios"):
        SequenceOptions(split_ratios=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="k_core"):
        SequenceOptions(k_core=0)
    with pytest.raises(ValueError, match="tie_break"):
        SequenceOptions(tie_break="random")
