"""SemanticIdQuantizer (RQ-KMeans, RQ-VAE, RQ-KMeans+) and SemanticIdTrie (constrained beam search)."""

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_rec.blocks import SemanticIdQuantizer, SemanticIdTrie
from lightning_rec.blocks.semantic_id import dedup_digits, residual_kmeans


def _blobs(
    num_clusters: int = 6, per_cluster: int = 30, size: int = 8, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_clusters, size, generator=generator) * 10
    labels = torch.arange(num_clusters).repeat_interleave(per_cluster)
    return centres[labels] + 0.1 * torch.randn(len(labels), size, generator=generator), labels


def test_rq_kmeans_plus_equals_rq_kmeans_at_step_zero():
    points, _ = _blobs()
    kmeans = SemanticIdQuantizer(input_size=8, num_levels=3, codebook_size=5, method="rq_kmeans")
    plus = SemanticIdQuantizer(
        input_size=8, num_levels=3, codebook_size=5, method="rq_kmeans_plus", hidden_size=16
    )
    kmeans.fit(points, seed=3)
    plus.fit(points, steps=0, seed=3)
    assert torch.equal(plus.codebooks.detach(), kmeans.codebooks)
    assert torch.equal(plus(points), kmeans(points))
    assert torch.allclose(plus.reconstruct(points), kmeans.reconstruct(points))
    assert plus.report(points) == kmeans.report(points)


def test_residual_kmeans_recovers_separated_clusters_and_shrinks_the_residual():
    points, labels = _blobs()
    codebooks = residual_kmeans(points, num_levels=2, codebook_size=6, seed=0)
    quantizer = SemanticIdQuantizer(input_size=8, num_levels=2, codebook_size=6, method="rq_kmeans")
    quantizer.codebooks.copy_(codebooks)
    codes = quantizer(points)
    # Level 1 is the true clustering, up to a relabelling.
    pairs = set(zip(codes[:, 0].tolist(), labels.tolist(), strict=True))
    assert len(pairs) == 6 and len({code for code, _ in pairs}) == 6
    # Each level's residual is smaller than the previous one's.
    level_one = codebooks[0][codes[:, 0]]
    error_one = (points - level_one).pow(2).sum()
    error_two = (points - level_one - codebooks[1][codes[:, 1]]).pow(2).sum()
    assert error_two < error_one < points.pow(2).sum()


def test_dedup_digits_count_earlier_rows_with_the_same_codes():
    generator = torch.Generator().manual_seed(1)
    codes = torch.randint(0, 3, (50, 2), generator=generator)
    digits = dedup_digits(codes)
    for row in range(len(codes)):
        expected = sum(torch.equal(codes[row], codes[earlier]) for earlier in range(row))
        assert digits[row] == expected
    quantizer = SemanticIdQuantizer(input_size=8, num_levels=2, codebook_size=2, method="rq_kmeans")
    points, _ = _blobs()
    quantizer.fit(points)
    ids = quantizer.assign(points)
    assert torch.unique(ids, dim=0).shape[0] == len(points)


def test_report_matches_a_brute_force_count():
    quantizer = SemanticIdQuantizer(input_size=2, num_levels=2, codebook_size=4, method="rq_kmeans")
    quantizer.codebooks.copy_(
        torch.tensor([[[0.0, 0], [10, 0], [0, 10], [-10, 0]], [[0, 0], [1, 0], [0, 1], [5, 5]]])
    )
    points = torch.tensor([[10.0, 0], [10, 1], [10, 1], [0, 10], [0.1, 11], [0.2, 0.1]])
    codes = quantizer(points)
    assert codes.tolist() == [[1, 0], [1, 2], [1, 2], [2, 0], [2, 2], [0, 0]]
    report = quantizer.report(points)
    assert report.collision_rate == pytest.approx(1 - 5 / 6)
    assert report.code_usage == (3 / 4, 2 / 4)
    level_one = torch.tensor([3, 2, 1]) / 6
    assert report.perplexity[0] == pytest.approx(math.exp(-(level_one * level_one.log()).sum().item()))
    reconstruction = torch.stack(
        [quantizer.codebooks[0][a] + quantizer.codebooks[1][b] for a, b in codes.tolist()]
    )
    relative = ((reconstruction - points).pow(2).sum(-1) / points.pow(2).sum(-1)).mean()
    assert report.reconstruction_error == pytest.approx(relative.item(), rel=1e-5)
    assert report.max_dedup_digit == 1


def test_rq_kmeans_plus_training_lowers_the_reconstruction_error_of_its_kmeans_start():
    points, _ = _blobs(num_clusters=12, per_cluster=10, size=8, seed=2)
    quantizer = SemanticIdQuantizer(input_size=8, num_levels=2, codebook_size=4, hidden_size=32)
    quantizer.fit(points, steps=0)
    start = quantizer.report(points).reconstruction_error
    torch.manual_seed(0)
    quantizer.fit(points, steps=150, batch_size=64, learning_rate=3e-3)
    assert quantizer.report(points).reconstruction_error < start


def test_dead_code_reseeding_revives_a_collapsed_codebook():
    points, _ = _blobs(num_clusters=8, per_cluster=16, size=8, seed=4)
    usage = {}
    for interval in (0, 10):
        torch.manual_seed(0)
        quantizer = SemanticIdQuantizer(
            input_size=8,
            num_levels=2,
            codebook_size=8,
            method="rq_vae",
            latent_size=4,
            reseed_interval=interval,
        )
        quantizer.fit(points, steps=60, batch_size=64, learning_rate=1e-3)
        usage[interval] = sum(quantizer.report(points).code_usage)
    assert usage[10] > usage[0]


def test_methods_and_shapes_are_checked():
    with pytest.raises(ValueError, match="method must be one of"):
        SemanticIdQuantizer(method="rq_magic")
    with pytest.raises(ValueError, match="latent_size"):
        SemanticIdQuantizer(method="rq_kmeans", latent_size=7)
    with pytest.raises(ValueError, match="shape"):
        SemanticIdQuantizer(input_size=8)(torch.randn(3, 5))


# ---------------------------------------------------------------------------- trie
@st.composite
def tries(draw):
    levels = draw(st.integers(1, 3))
    sizes = [draw(st.integers(1, 4)) for _ in range(levels)]
    paths = list(itertools.product(*(range(size) for size in sizes)))
    chosen = draw(st.lists(st.sampled_from(paths), min_size=1, max_size=min(len(paths), 12), unique=True))
    batch = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    return torch.tensor(chosen), sizes, batch, seed


def _table_scorer(sizes, seed):
    """Log-probs of the next code as a fixed random function of (level, previous code, code)."""
    generator = torch.Generator().manual_seed(seed)
    tables = [torch.randn(max(sizes) + 1, size, generator=generator) * 3 for size in sizes]

    def step(prefixes):
        level = prefixes.shape[2]
        previous = prefixes[:, :, -1] + 1 if level else torch.zeros(prefixes.shape[:2], dtype=torch.long)
        return torch.log_softmax(tables[level][previous], dim=-1)

    return step


@settings(max_examples=60, deadline=None)
@given(tries(), st.booleans())
def test_constrained_beam_search_emits_only_valid_allowed_items(trie_case, use_allow_list):
    codes, sizes, batch, seed = trie_case
    trie = SemanticIdTrie(codes, sizes)
    generator = torch.Generator().manual_seed(seed)
    allowed = torch.rand(batch, len(codes), generator=generator) < 0.6 if use_allow_list else None
    step = _table_scorer(sizes, seed)
    for beam_size in (1, 2, len(codes) + 1):
        result = trie.beam_search(step, batch_size=batch, beam_size=beam_size, allowed_items=allowed)
        finite = torch.isfinite(result.log_probs)
        assert bool((result.items[finite] >= 0).all()) and bool((result.items[~finite] == -1).all())
        for request, beam in zip(*finite.nonzero(as_tuple=True), strict=True):
            item = int(result.items[request, beam])
            assert torch.equal(codes[item], result.codes[request, beam])
            if allowed is not None:
                assert allowed[request, item]
    sampled, rows = (
        trie.sample(step, batch_size=batch, num_samples=3, allowed_items=allowed)
        if (allowed is None or bool(allowed.any(dim=1).all()))
        else (None, None)
    )
    if sampled is not None:
        assert bool((rows >= 0).all()) and torch.equal(codes[rows], sampled)
        if allowed is not None:
            assert bool(allowed.gather(1, rows).all())
    # With a beam at least as wide as the catalogue, beam search is exhaustive: it ranks every
    # (allowed) item by its summed log-probability, as brute force does.
    full = trie.beam_search(step, batch_size=batch, beam_size=len(codes), allowed_items=allowed)
    for request in range(batch):
        scores = {}
        for item, path in enumerate(codes.tolist()):
            if allowed is None or allowed[request, item]:
                prefix = torch.zeros(1, 1, 0, dtype=torch.long)
                total = 0.0
                for level, code in enumerate(path):
                    total += float(step(prefix)[0, 0, code])
                    prefix = torch.tensor(path[: level + 1])[None, None]
                scores[item] = total
        found = {
            int(i): float(s)
            for i, s in zip(full.items[request], full.log_probs[request], strict=True)
            if i >= 0
        }
        assert found.keys() == scores.keys()
        for item, total in scores.items():
            assert found[item] == pytest.approx(total, abs=1e-4)


def test_trie_maps_codes_back_to_items_and_raw_ids():
    codes = torch.tensor([[0, 1, 0], [0, 1, 1], [2, 0, 0]])
    trie = SemanticIdTrie(codes, [3, 2, 2], item_ids=["a", "b", "c"])
    assert trie.item_index(torch.tensor([[2, 0, 0], [0, 1, 1], [1, 1, 1]])).tolist() == [2, 1, -1]
    assert trie.raw_item_ids(torch.tensor([[2, -1]])) == [["c", None]]
    assert trie.allowed_next(torch.tensor([[0], [1]])).tolist() == [[False, True], [False, False]]
    with pytest.raises(ValueError, match="dedup digit"):
        SemanticIdTrie(torch.tensor([[0, 1], [0, 1]]))


def test_value_guided_pruning_keeps_the_high_value_path():
    codes = torch.tensor([[0, 0], [1, 0], [1, 1]])
    trie = SemanticIdTrie(codes, [2, 2])

    def step(prefixes):  # the policy prefers code 0 at the first level
        scores = torch.tensor([0.0, -1.0]) if prefixes.shape[2] == 0 else torch.tensor([-0.5, -0.9])
        return scores.expand(*prefixes.shape[:2], 2)

    greedy = trie.beam_search(step, batch_size=1, beam_size=1)
    assert greedy.items.tolist() == [[0]]

    def value(prefixes):  # the critic values prefix (1, 1) most
        return (prefixes[..., 0] == 1).float() * 2 + (prefixes[..., -1] == 1).float() * (
            prefixes.shape[2] == 2
        )

    guided = trie.beam_search(step, batch_size=1, beam_size=1, value_fn=value, value_weight=1.0)
    assert guided.items.tolist() == [[2]]


def test_indexed_catalogue_survives_the_hub_round_trip(tmp_path):
    points, _ = _blobs()
    quantizer = SemanticIdQuantizer(input_size=8, num_levels=2, codebook_size=3, method="rq_kmeans")
    quantizer.fit(points)
    raw_ids = [f"item{row}" for row in range(len(points))]
    trie = quantizer.index_catalogue(points, raw_ids)
    assert trie.level_sizes[:2] == [3, 3] and trie.num_levels == 3
    ids = quantizer.assign(points)
    assert torch.equal(trie.item_index(ids), torch.arange(len(points)))
    quantizer.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert "tokenizer/collision_rate" in card and "RQ-KMeans" in card
    loaded = SemanticIdQuantizer.from_pretrained(tmp_path)
    assert loaded.trie().raw_item_ids(loaded.trie().item_index(ids[:3])) == raw_ids[:3]
