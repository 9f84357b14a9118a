import hashlib

import numpy as np

from lightning_rec.data.amazon import AmazonReviews
from lightning_rec.data.synthetic import SyntheticCatalogue, SyntheticReviews
from lightning_rec.data.text_files import fingerprint_files


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_files_and_other_seed_differs(tmp_path):
    first = SyntheticCatalogue(num_users=50, num_items=80, seed=3).write_amazon2018(tmp_path / "a")
    second = SyntheticCatalogue(num_users=50, num_items=80, seed=3).write_amazon2018(tmp_path / "b")
    other = SyntheticCatalogue(num_users=50, num_items=80, seed=4).write_amazon2018(tmp_path / "c")
    assert [_digest(p) for p in first] == [_digest(p) for p in second]
    assert _digest(first[0]) != _digest(other[0])


def test_files_read_back_through_the_amazon_2018_reader(tmp_path):
    catalogue = SyntheticCatalogue(num_users=40, num_items=60, num_categories=6, seed=1)
    reviews, meta = catalogue.write_amazon2018(tmp_path)
    reader = AmazonReviews(reviews=reviews, meta=meta, version="auto")
    events = list(reader.interactions())
    assert len(events) == sum(len(user.items) for user in catalogue.users)
    first_user = catalogue.users[0]
    assert [e.item_id for e in events[: len(first_user.items)]] == [
        catalogue.item_asin(int(i)) for i in first_user.items
    ]
    assert [e.timestamp for e in events[: len(first_user.items)]] == [float(t) for t in first_user.timestamps]
    metas = {m.item_id: m for m in reader.items()}
    assert len(metas) == 60
    item = 7
    assert metas[catalogue.item_asin(item)].title == catalogue.item_title(item)
    assert metas[catalogue.item_asin(item)].price == catalogue.item_meta(item).price
    assert metas[catalogue.item_asin(item)].categories[-1] == catalogue.category_name(
        int(catalogue.item_category[item])
    )


def test_no_user_reviews_an_item_twice_and_time_increases():
    catalogue = SyntheticCatalogue(num_users=100, num_items=150, seed=2)
    for user in catalogue.users:
        assert len(set(user.items.tolist())) == len(user.items)
        assert np.all(np.diff(user.timestamps) > 0)


def test_ground_truth_preference_explains_the_sampled_items():
    catalogue = SyntheticCatalogue(num_users=200, num_items=300, seed=5, complement_prob=0.0)
    chosen, average = [], []
    for u, user in enumerate(catalogue.users):
        for step, item in enumerate(user.items):
            probabilities = catalogue.click_probability(u, np.arange(catalogue.num_items), step=step)
            assert probabilities.max() == 1.0 and probabilities.min() > 0
            chosen.append(probabilities[item])
            average.append(probabilities.mean())
    # Items a user picked are far more likely under the true model than an average item.
    assert np.mean(chosen) > 5 * np.mean(average)


def test_complement_transitions_happen_at_the_configured_rate():
    catalogue = SyntheticCatalogue(num_users=300, num_items=400, seed=6, complement_prob=0.35)
    pairs = [(a, b) for user in catalogue.users for a, b in zip(user.items[:-1], user.items[1:], strict=True)]
    rate = np.mean([catalogue.item_complement[a] == b for a, b in pairs])
    assert 0.2 < rate < 0.45


def test_synthetic_reviews_source_caches_files(tmp_path):
    source = SyntheticReviews(num_users=30, num_items=40, num_categories=4, cache_dir=str(tmp_path))
    events = list(source.interactions())
    files = sorted(p for p in (tmp_path / "synthetic").rglob("*.gz"))
    assert len(files) == 2
    mtimes = [p.stat().st_mtime_ns for p in files]
    again = SyntheticReviews(num_users=30, num_items=40, num_categories=4, cache_dir=str(tmp_path))
    assert list(again.interactions()) == events
    assert [p.stat().st_mtime_ns for p in files] == mtimes  # reused, not rewritten
    assert again.fingerprint() == source.fingerprint()


def test_writing_streams_users_and_gives_the_same_files_as_the_cached_users(tmp_path):
    streamed = SyntheticCatalogue(num_users=40, num_items=60, seed=7)
    first = streamed.write_amazon2018(tmp_path / "streamed")
    assert "users" not in streamed.__dict__  # never all held in memory
    cached = SyntheticCatalogue(num_users=40, num_items=60, seed=7)
    assert len(cached.users) == 40
    second = cached.write_amazon2018(tmp_path / "cached")
    assert [_digest(p) for p in first] == [_digest(p) for p in second]


def test_candidate_choices_follow_the_exact_choice_model():
    # Sampling-importance-resampling over popularity-prior candidates: with complements off and one
    # intent, the first choice of each user is a draw of softmax(<intent, item> / T + popularity).
    catalogue = SyntheticCatalogue(num_users=1, num_items=40, num_categories=4, seed=8, choice_candidates=64)
    intent = np.repeat(catalogue.category_centroids[:1] + 0.1, catalogue.intents_per_user, axis=0)
    exact = np.exp(catalogue._intent_logits(intent[0]) - catalogue._intent_logits(intent[0]).max())
    exact /= exact.sum()
    counts = np.zeros(40)
    for draw in range(3000):
        _, items = catalogue._sample_choices_from_candidates(intent, 1, np.random.default_rng([8, draw]))
        counts[items[0]] += 1
    total_variation = 0.5 * np.abs(counts / counts.sum() - exact).sum()
    assert total_variation < 0.08
    # Far from the popularity prior alone: the intent matters.
    prior = np.exp(catalogue.item_popularity) / np.exp(catalogue.item_popularity).sum()
    assert 0.5 * np.abs(exact - prior).sum() > 0.3


def test_candidate_choices_keep_the_generative_rules():
    catalogue = SyntheticCatalogue(num_users=150, num_items=5000, seed=9, choice_candidates=32)
    pairs = []
    for user in catalogue.users:
        assert len(set(user.items.tolist())) == len(user.items)
        assert np.all(np.diff(user.timestamps) > 0)
        pairs += list(zip(user.items[:-1], user.items[1:], strict=True))
    rate = np.mean([catalogue.item_complement[a] == b for a, b in pairs])
    assert 0.2 < rate < 0.45
    assert catalogue.config()["choice_candidates"] == 32
    assert "choice_candidates" not in SyntheticCatalogue(num_users=1, num_items=5, num_categories=2).config()


def test_amazon2023_format_holds_the_same_data_and_leaves_the_2018_files_as_they_were(tmp_path):
    arguments = dict(num_users=30, num_items=40, num_categories=4, cache_dir=str(tmp_path))
    old = SyntheticReviews(**arguments)
    new = SyntheticReviews(**arguments, format="amazon2023")
    assert new.reader.version == "2023" and new.reader.reviews.name == "Synthetic.jsonl.gz"
    assert list(new.interactions()) == list(old.interactions())
    assert list(new.items()) == list(old.items())
    # The default's cache key and bytes are what they were before the option existed.
    catalogue = SyntheticCatalogue(num_users=30, num_items=40, num_categories=4)
    reference = catalogue.write_amazon2018(tmp_path / "reference")
    assert [_digest(p) for p in (old.reader.reviews, old.reader.meta)] == [_digest(p) for p in reference]
    assert old.reader.reviews.parent.name == fingerprint_files(
        [], {"synthetic": catalogue.config(), "format": 1}
    )
