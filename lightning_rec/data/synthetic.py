"""A synthetic catalogue with a known preference model: the embedded default dataset.

Items have a category, attributes, a price and a text title; each item also has a latent vector
near its category's centroid. Users hold a few latent intents and drift between them over time;
their sessions are sampled from those intents, plus "complement" transitions (an item is often
followed by a fixed companion item of the same category) that only a sequential model can exploit.
With ``aspect_strength`` > 0 users also differ in what they value beyond their intents: half of them
are novelty-seeking (they favour categories they have not bought from yet and skip companion items),
half loyal (they favour the categories they have), so the best weighting of a judge's aspects
differs between users.

The catalogue is written in the Amazon Reviews 2018 format (``Synthetic.json.gz`` and
``meta_Synthetic.json.gz``), or the 2023 one (``Synthetic.jsonl.gz`` and ``meta_Synthetic.jsonl.gz``,
the layout of DiffuReason's Video & Games benchmark), and read back through
:class:`~lightning_rec.data.AmazonReviews`, so the demo runs the same path as real data.
:meth:`SyntheticCatalogue.click_probability` is the ground truth preference function, for
simulators of RL methods.

Large catalogues (10^6 items, 2 x 10^5 users) are generated in minutes with bounded memory: users are
written as they are sampled (never all held at once), and ``choice_candidates`` replaces the exact
choice over the whole catalogue at every step by sampling-importance-resampling over a few candidates.

Axes: u users, i items, c categories, k latent dimensions.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
from rich.progress import track

from lightning_rec.atomic import atomic_path
from lightning_rec.data.amazon import AmazonReviews
from lightning_rec.data.records import Interaction, ItemMeta, ReadReport
from lightning_rec.data.text_files import default_cache_dir, fingerprint_files

__all__ = ["SyntheticCatalogue", "SyntheticReviews"]

_CATEGORY_NOUNS = [
    "Headphones",
    "Backpack",
    "Sneakers",
    "Teapot",
    "Lamp",
    "Keyboard",
    "Jacket",
    "Novel",
    "Blender",
    "Tent",
    "Watch",
    "Camera",
    "Guitar",
    "Puzzle",
    "Candle",
    "Mug",
    "Scarf",
    "Drone",
    "Yoga Mat",
    "Skillet",
    "Speaker",
    "Notebook",
    "Sunglasses",
    "Pillow",
    "Board Game",
    "Router",
    "Bicycle Helmet",
    "Water Bottle",
    "Desk Chair",
    "Paint Set",
]
_ADJECTIVES = ["Classic", "Compact", "Deluxe", "Eco", "Pro", "Ultra", "Vintage", "Smart", "Travel", "Premium"]
_MATERIALS = ["Bamboo", "Steel", "Cotton", "Leather", "Ceramic", "Aluminium", "Wool", "Glass", "Oak", "Nylon"]
_COLOURS = ["Black", "White", "Red", "Blue", "Green", "Grey", "Yellow", "Navy", "Pink", "Olive"]
_BRANDS = [
    "Acme",
    "Northwind",
    "Contoso",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark",
    "Wayne",
    "Hooli",
    "Vandelay",
]
_EPOCH_START = 1_420_070_400  # 2015-01-01, so timestamps look like a real review dump
_DAY = 86_400


@dataclass(frozen=True)
class _User:
    intents: np.ndarray  # (m k) the user's latent intents
    intent_path: np.ndarray  # (t,) index of the active intent at each step
    items: np.ndarray  # (t,) item indices (0-based) in time order
    timestamps: np.ndarray  # (t,) seconds
    ratings: np.ndarray  # (t,)


class SyntheticCatalogue:
    """Deterministic synthetic catalogue and user histories, generated from ``seed``.

    Args:
        num_users: number of users.
        num_items: number of items.
        num_categories: number of item categories (at most 30 distinct nouns; more reuse nouns).
        latent_dim: dimension ``k`` of item and intent vectors.
        intents_per_user: latent intents each user holds.
        mean_length: mean number of interactions per user (lengths are 5 + Poisson).
        drift: probability that the active intent changes between two consecutive interactions.
        complement_prob: probability that the next item is the previous item's fixed companion.
        temperature: softmax temperature of intent-driven choices (lower is more predictable).
        aspect_strength: logit bonus of a user's favoured aspect: categories not seen yet for a
            novelty-seeking user (who also skips companion items), categories already seen for a loyal
            one (half the users each, :attr:`novelty_seeking`). 0 (the default) is a catalogue
            without aspect preferences.
        seed: everything is a function of this seed.
        choice_candidates: ``None`` (default): each intent-driven choice is drawn exactly from the
            choice model over all items, ``O(items)`` per interaction. An integer ``C``: draw ``C``
            candidates from the popularity prior alone and pick one of them with probability
            proportional to ``exp(<intent, item> / T)``. Since the choice model is that prior times
            this factor, the pick follows the exact model as ``C`` grows (sampling-importance-
            resampling, Rubin 1988), at ``O(C log items)`` per interaction: what makes 10^6 items
            feasible. Another setting gives other (equally valid) users.
    """

    def __init__(
        self,
        num_users: int = 2000,
        num_items: int = 1000,
        num_categories: int = 20,
        latent_dim: int = 16,
        intents_per_user: int = 3,
        mean_length: float = 25.0,
        drift: float = 0.1,
        complement_prob: float = 0.35,
        temperature: float = 0.35,
        aspect_strength: float = 0.0,
        seed: int = 0,
        choice_candidates: int | None = None,
    ) -> None:
        if aspect_strength < 0:
            raise ValueError(f"aspect_strength must be >= 0, got {aspect_strength}")
        if num_users < 1 or num_items < 2 or num_categories < 1 or num_categories > num_items:
            raise ValueError(
                f"need num_users >= 1, num_items >= 2 and 1 <= num_categories <= num_items; got "
                f"num_users={num_users}, num_items={num_items}, num_categories={num_categories}"
            )
        for name, value in (("drift", drift), ("complement_prob", complement_prob)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
        if choice_candidates is not None and choice_candidates < 1:
            raise ValueError(f"choice_candidates must be None or >= 1, got {choice_candidates}")
        if choice_candidates is not None and aspect_strength > 0:
            # The candidate sampler draws from the popularity prior and the intent alone.
            raise ValueError("aspect_strength > 0 needs the exact choice model (choice_candidates=None)")
        self.num_users = num_users
        self.num_items = num_items
        self.num_categories = num_categories
        self.latent_dim = latent_dim
        self.intents_per_user = intents_per_user
        self.mean_length = mean_length
        self.drift = drift
        self.complement_prob = complement_prob
        self.temperature = temperature
        self.aspect_strength = aspect_strength
        self.seed = seed
        self.choice_candidates = choice_candidates
        # Its own random stream, so that the users' histories without aspect preferences stay as they were.
        self.novelty_seeking = np.random.default_rng([seed, 2]).random(num_users) < 0.5  # (u) bool
        self._build_items(np.random.default_rng([seed, 0]))

    # ---------------------------------------------------------------- items
    def _build_items(self, rng: np.random.Generator) -> None:
        k, c, i = self.latent_dim, self.num_categories, self.num_items
        self.category_centroids = rng.normal(size=(c, k)) / np.sqrt(k) * 2.0  # (c k)
        # Every category gets at least one item; the rest follow a skewed category popularity.
        category_weights = rng.dirichlet(np.full(c, 2.0))
        self.item_category = np.concatenate([np.arange(c), rng.choice(c, size=i - c, p=category_weights)])
        rng.shuffle(self.item_category)
        self.item_vectors = self.category_centroids[self.item_category] + rng.normal(size=(i, k)) * 0.35
        # Item popularity: a Zipf-like prior that a most-popular baseline can exploit, but not fully.
        self.item_popularity = -0.8 * np.log(rng.permutation(i) + 1.0)
        base_price = np.exp(rng.normal(3.0, 0.8, size=c))
        self.item_price = np.round(base_price[self.item_category] * np.exp(rng.normal(0, 0.3, size=i)), 2)
        self.item_brand = rng.integers(len(_BRANDS), size=i)
        self.item_colour = rng.integers(len(_COLOURS), size=i)
        self.item_material = rng.integers(len(_MATERIALS), size=i)
        self.item_adjective = rng.integers(len(_ADJECTIVES), size=i)
        # Each item's companion: another item of the same category, fixed once.
        self.item_complement = np.empty(i, dtype=np.int64)
        for category in range(c):
            members = np.flatnonzero(self.item_category == category)
            partners = rng.permutation(members) if len(members) > 1 else members
            self.item_complement[members] = partners

    def category_name(self, category: int) -> str:
        noun = _CATEGORY_NOUNS[category % len(_CATEGORY_NOUNS)]
        return noun if category < len(_CATEGORY_NOUNS) else f"{noun} {category // len(_CATEGORY_NOUNS) + 1}"

    def item_asin(self, item: int) -> str:
        """The raw (Amazon-style) id of 0-based item ``item``."""
        return f"S{item:09d}"

    def user_reviewer_id(self, user: int) -> str:
        """The raw (Amazon-style) id of 0-based user ``user``."""
        return f"U{user:08d}"

    def item_title(self, item: int) -> str:
        return (
            f"{_BRANDS[self.item_brand[item]]} {_ADJECTIVES[self.item_adjective[item]]} "
            f"{_COLOURS[self.item_colour[item]]} {_MATERIALS[self.item_material[item]]} "
            f"{self.category_name(int(self.item_category[item]))}"
        )

    def item_meta(self, item: int) -> ItemMeta:
        return ItemMeta(
            item_id=self.item_asin(item),
            title=self.item_title(item),
            categories=("Synthetic", self.category_name(int(self.item_category[item]))),
            price=float(self.item_price[item]),
            brand=_BRANDS[self.item_brand[item]],
            description=(
                f"A {_COLOURS[self.item_colour[item]].lower()} "
                f"{_MATERIALS[self.item_material[item]].lower()} "
                f"{self.category_name(int(self.item_category[item])).lower()}."
            ),
        )

    # ---------------------------------------------------------------- users
    def _intent_logits(self, intent: np.ndarray) -> np.ndarray:
        """(k) or (b k) intent -> (i) or (b i) logits of the ground-truth choice model."""
        return intent @ self.item_vectors.T / self.temperature + self.item_popularity

    @cached_property
    def users(self) -> list[_User]:
        return list(self._iter_users())

    def _iter_users(self) -> Iterator[_User]:
        """Every user in order; sampled on the fly (and not kept) unless :attr:`users` is cached.

        Each user has its own random stream, so both ways give the same users.
        """
        if "users" in self.__dict__:
            yield from self.users
            return
        for u in range(self.num_users):
            yield self._sample_user(np.random.default_rng([self.seed, 1, u]), bool(self.novelty_seeking[u]))

    def _aspect_bonus(self, novelty_seeking: bool, seen_items: np.ndarray) -> np.ndarray | float:
        """(i) logit bonus of each item for a user who has bought ``seen_items``: ``aspect_strength`` on
        unseen categories (novelty-seeking) or on seen ones (loyal); 0 without aspect preferences."""
        if self.aspect_strength == 0:
            return 0.0
        seen_categories = np.zeros(self.num_categories, dtype=bool)
        seen_categories[self.item_category[np.asarray(seen_items, dtype=np.int64)]] = True
        favoured = ~seen_categories if novelty_seeking else seen_categories
        return self.aspect_strength * favoured[self.item_category]

    def _sample_user(self, rng: np.random.Generator, novelty_seeking: bool) -> _User:
        m, k = self.intents_per_user, self.latent_dim
        anchors = rng.choice(self.num_categories, size=m)
        intents = self.category_centroids[anchors] + rng.normal(size=(m, k)) * 0.3
        length = 5 + rng.poisson(max(self.mean_length - 5.0, 0.0))
        if self.choice_candidates is not None:
            path, items = self._sample_choices_from_candidates(intents, length, rng)
            return self._user_record(intents, path, items, rng)
        active = rng.integers(m)
        items, path = [], []
        seen: set[int] = set()
        for step in range(length):
            if step > 0 and rng.random() < self.drift:
                active = rng.integers(m)
            companion = int(self.item_complement[items[-1]]) if items else -1
            # A novelty-seeking user skips the companion: it is of a category already bought.
            follows_companions = not (novelty_seeking and self.aspect_strength > 0)
            if items and companion not in seen and follows_companions and rng.random() < self.complement_prob:
                item = companion
            else:
                logits = self._intent_logits(intents[active]) + self._aspect_bonus(novelty_seeking, items)
                if seen:
                    logits[list(seen)] = -np.inf  # users do not review the same item twice
                probs = np.exp(logits - logits.max())
                item = int(rng.choice(self.num_items, p=probs / probs.sum()))
            seen.add(item)
            items.append(item)
            path.append(active)
        return self._user_record(intents, np.asarray(path), np.asarray(items), rng)

    def _user_record(
        self, intents: np.ndarray, path: np.ndarray, items: np.ndarray, rng: np.random.Generator
    ) -> _User:
        """Timestamps and ratings for the sampled ``items``, and the user's record."""
        length = len(items)
        start = _EPOCH_START + int(rng.integers(0, 365)) * _DAY
        gaps = rng.integers(1, 20, size=length) * _DAY + rng.integers(0, _DAY, size=length)
        ratings = np.clip(np.round(rng.normal(4.3, 0.9, size=length)), 1, 5)
        return _User(intents, path, items, start + np.cumsum(gaps), ratings)

    @cached_property
    def _popularity_table(self) -> tuple[np.ndarray, np.ndarray]:
        """The popularity prior ``softmax(item_popularity)`` as ``(i)`` CDF and ``(i)`` guide table.

        ``guide[j]`` is the first item whose CDF exceeds ``j / i`` (Chen & Asau's guide table): an
        inverse-CDF draw starts there and steps forward a few items at most, instead of a binary
        search whose ~20 scattered reads of a 10^6-entry table dominate the sampling time.
        """
        weights = np.exp(self.item_popularity - self.item_popularity.max())
        cdf = np.cumsum(weights)
        cdf /= cdf[-1]  # exactly 1 at the end, so every draw in [0, 1) stops at an item
        guide = np.searchsorted(cdf, np.arange(self.num_items) / self.num_items, side="right")
        return cdf, guide

    def _draw_from_popularity(self, uniforms: np.ndarray) -> np.ndarray:
        """Items drawn from the popularity prior by inverse CDF, one per entry of ``uniforms`` in [0, 1)."""
        cdf, guide = self._popularity_table
        items = guide[(uniforms * self.num_items).astype(np.int64)]
        while True:
            behind = cdf[items] <= uniforms  # the draw lies further right
            if not behind.any():
                return items
            items += behind

    def _sample_choices_from_candidates(
        self, intents: np.ndarray, length: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(t)`` active intents and ``(t)`` items, choices by sampling-importance-resampling.

        The same generative story as the exact path (drift, complements, no repeats), with every
        random draw of a user made up front in arrays; only the no-repeat rule runs step by step.
        """
        m, count = self.intents_per_user, self.choice_candidates
        # Intent drift: at each step after the first, with probability `drift`, a new random intent.
        switches = rng.random(length) < self.drift
        switches[0] = True
        proposals = rng.integers(m, size=length)
        path = proposals[np.maximum.accumulate(np.where(switches, np.arange(length), 0))]
        takes_companion = rng.random(length) < self.complement_prob
        # Proposal: the popularity prior (no O(i) pass per step).
        candidates = self._draw_from_popularity(rng.random((length, count)))  # (t C)
        # Resampling with weights exp(<intent, item> / T) by the Gumbel-max trick: the argmax of
        # log-weight + Gumbel noise is a draw with probability proportional to the weight.
        scores = np.einsum("tck,tk->tc", self.item_vectors[candidates], intents[path]) / self.temperature
        order = np.argsort(-(scores + rng.gumbel(size=(length, count))), axis=1)
        items: list[int] = []
        seen: set[int] = set()
        for step in range(length):
            companion = int(self.item_complement[items[-1]]) if items else -1
            if items and companion not in seen and takes_companion[step]:
                item = companion
            else:
                # The best-ranked unseen candidate: a draw conditioned on "not reviewed before".
                ranked = candidates[step, order[step]]
                item = next((int(c) for c in ranked if int(c) not in seen), None)
                if item is None:
                    item = self._least_popular_unseen(seen)
            seen.add(item)
            items.append(item)
        return path, np.asarray(items)

    def _least_popular_unseen(self, seen: set[int]) -> int:
        """Fallback when every candidate was already reviewed (only with very few candidates)."""
        return next(item for item in np.argsort(self.item_popularity) if int(item) not in seen)

    def click_probability(self, user: int, items: np.ndarray, step: int | None = None) -> np.ndarray:
        """Ground-truth probability that 0-based ``user`` clicks each of the 0-based ``items``.

        Uses the user's intent active at ``step`` (default: after the last interaction, the one that
        generated it). The probability is the intent's choice model, ``softmax(<intent, item> / T
        + popularity + aspect bonus of the items bought before step)``, rescaled so that the user's
        favourite item has probability 1.
        """
        record = self.users[user]
        step = len(record.items) - 1 if step is None else step
        logits = self._intent_logits(record.intents[record.intent_path[step]]) + self._aspect_bonus(
            bool(self.novelty_seeking[user]), record.items[:step]
        )
        return np.exp(logits[np.asarray(items)] - logits.max())

    # ---------------------------------------------------------------- files
    def write_amazon2018(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``Synthetic.json.gz`` and ``meta_Synthetic.json.gz`` (Amazon Reviews 2018 layout).

        Files are written to a temporary name and renamed, so a reader never sees a partial file.
        Users are streamed: sampled, written and dropped one at a time, so memory does not grow
        with ``num_users``.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        reviews, meta = directory / "Synthetic.json.gz", directory / "meta_Synthetic.json.gz"
        _write_json_lines_gz(reviews, self._review_records())
        _write_json_lines_gz(meta, self._meta_records())
        return reviews, meta

    def write_amazon2023(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``Synthetic.jsonl.gz`` and ``meta_Synthetic.jsonl.gz`` (Amazon Reviews 2023 layout:
        ``user_id``, ``parent_asin``, ``rating``, millisecond ``timestamp``; meta with ``store``,
        ``categories``, a numeric ``price``, ``description`` and ``features`` lists), atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        reviews, meta = directory / "Synthetic.jsonl.gz", directory / "meta_Synthetic.jsonl.gz"
        _write_json_lines_gz(reviews, self._review_records_2023())
        _write_json_lines_gz(meta, self._meta_records_2023())
        return reviews, meta

    def _review_records_2023(self) -> Iterator[dict]:
        for review in self._review_records():
            yield {
                "rating": review["overall"],
                "asin": review["asin"],
                "parent_asin": review["asin"],
                "user_id": review["reviewerID"],
                "timestamp": review["unixReviewTime"] * 1000,
                "verified_purchase": True,
            }

    def _meta_records_2023(self) -> Iterator[dict]:
        for item in range(self.num_items):
            meta = self.item_meta(item)
            yield {
                "main_category": meta.categories[0],
                "title": meta.title,
                "categories": list(meta.categories),
                "price": meta.price,
                "store": meta.brand,
                "description": [meta.description],
                "features": [],
                "parent_asin": meta.item_id,
            }

    def _review_records(self) -> Iterator[dict]:
        users = self._iter_users()
        if self.num_users >= _PROGRESS_FROM_USERS:  # minutes of work at 10^5 users: show it
            users = track(users, total=self.num_users, description="Generating synthetic users")
        for u, record in enumerate(users):
            for item, timestamp, rating in zip(record.items, record.timestamps, record.ratings, strict=True):
                yield {
                    "overall": float(rating),
                    "verified": True,
                    "reviewTime": _review_time(int(timestamp)),
                    "reviewerID": self.user_reviewer_id(u),
                    "asin": self.item_asin(int(item)),
                    "unixReviewTime": int(timestamp),
                }

    def _meta_records(self) -> Iterator[dict]:
        for item in range(self.num_items):
            meta = self.item_meta(item)
            yield {
                "asin": meta.item_id,
                "title": meta.title,
                "category": list(meta.categories),
                "price": f"${meta.price:.2f}",
                "brand": meta.brand,
                "description": [meta.description],
            }

    def config(self) -> dict:
        """The constructor arguments: two catalogues with equal configs are identical."""
        return {
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_categories": self.num_categories,
            "latent_dim": self.latent_dim,
            "intents_per_user": self.intents_per_user,
            "mean_length": self.mean_length,
            "drift": self.drift,
            "complement_prob": self.complement_prob,
            "temperature": self.temperature,
            "seed": self.seed,
            # Only when set, so that the default's config (and every cache key built on it) is unchanged.
            **({} if self.choice_candidates is None else {"choice_candidates": self.choice_candidates}),
        } | ({"aspect_strength": self.aspect_strength} if self.aspect_strength else {})


_PROGRESS_FROM_USERS = 50_000


def _review_time(timestamp: int) -> str:
    """Amazon 2018's human-readable date, e.g. ``"01 2, 2015"``."""
    date = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return f"{date.month:02d} {date.day}, {date.year}"


def _write_json_lines_gz(path: Path, records: Iterator[dict]) -> None:
    # No file name and mtime=0 in the gzip header: the bytes depend on the seed alone.
    with (
        atomic_path(path) as tmp,
        tmp.open("wb") as raw,
        gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as gz,
    ):
        for record in records:
            gz.write((json.dumps(record) + "\n").encode())


class SyntheticReviews:
    """The synthetic catalogue as an :class:`~lightning_rec.data.InteractionSource`.

    Generates the catalogue once into ``<cache_dir>/synthetic/<hash of the arguments>/`` in the Amazon
    2018 (default) or 2023 format, then reads it with the real :class:`~lightning_rec.data.AmazonReviews`
    reader.

    Args:
        num_users, num_items, num_categories, mean_length, aspect_strength, seed, choice_candidates: see
            :class:`SyntheticCatalogue`.
        cache_dir: where the files are written (default :func:`~lightning_rec.data.default_cache_dir`).
        format: ``"amazon2018"`` or ``"amazon2023"`` files; the same users, items and order either way.
    """

    def __init__(
        self,
        num_users: int = 2000,
        num_items: int = 1000,
        num_categories: int = 20,
        mean_length: float = 25.0,
        aspect_strength: float = 0.0,
        seed: int = 0,
        cache_dir: str | None = None,
        choice_candidates: int | None = None,
        format: Literal["amazon2018", "amazon2023"] = "amazon2018",
    ) -> None:
        if format not in ("amazon2018", "amazon2023"):
            raise ValueError(f"format must be 'amazon2018' or 'amazon2023', got {format!r}")
        self.format = format
        self.catalogue = SyntheticCatalogue(
            num_users=num_users,
            num_items=num_items,
            num_categories=num_categories,
            mean_length=mean_length,
            aspect_strength=aspect_strength,
            seed=seed,
            choice_candidates=choice_candidates,
        )
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self._reader: AmazonReviews | None = None

    @property
    def reports(self) -> list[ReadReport]:
        return self.reader.reports

    @property
    def reader(self) -> AmazonReviews:
        if self._reader is None:
            options = {"synthetic": self.catalogue.config(), "format": 1}
            if self.format == "amazon2023":  # the 2018 key stays as it was: existing caches still hit
                options["layout"] = "2023"
            directory = self.cache_dir / "synthetic" / fingerprint_files([], options)
            write, version, suffix = {
                "amazon2018": (self.catalogue.write_amazon2018, "2018", "json.gz"),
                "amazon2023": (self.catalogue.write_amazon2023, "2023", "jsonl.gz"),
            }[self.format]
            reviews, meta = directory / f"Synthetic.{suffix}", directory / f"meta_Synthetic.{suffix}"
            if not (reviews.is_file() and meta.is_file()):
                write(directory)
            self._reader = AmazonReviews(reviews=reviews, meta=meta, version=version)
        return self._reader

    def interactions(self) -> Iterator[Interaction]:
        return self.reader.interactions()

    def items(self) -> Iterator[ItemMeta]:
        return self.reader.items()

    def fingerprint(self) -> str:
        return self.reader.fingerprint()
