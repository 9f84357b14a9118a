"""DiffuReason: the ablation switches, the reward, GRPO's gradient path, and end-to-end quality."""

import math

import lightning as L
import pytest
import torch

from lightning_rec.blocks import HSTU, BERT4Rec, DiffusionHead, GRU4Rec
from lightning_rec.blocks import SASRec as SASRecEncoder
from lightning_rec.data.batches import TrainBatch
from lightning_rec.data.synthetic import SyntheticReviews
from lightning_rec.datamodules import SequentialRecDataModule
from lightning_rec.hub import register_trusted_class
from lightning_rec.metrics.ranking import target_ranks
from lightning_rec.modules import DiffuReason, ItemReward, MostPopular, SASRec


def _trainer(**kwargs) -> L.Trainer:
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, accelerator="cpu", devices=1)  # fmt: skip
    return L.Trainer(**{**defaults, **kwargs})


def _batch(num_items: int, seed: int = 0) -> TrainBatch:
    generator = torch.Generator().manual_seed(seed)
    windows = torch.randint(1, num_items + 1, (8, 11), generator=generator)
    windows[:4, :5] = 0  # left padding on half the rows
    inputs = windows[:, :-1]
    return TrainBatch(inputs, torch.where(inputs > 0, windows[:, 1:], torch.zeros_like(inputs)))


def _model(encoder=None, **kwargs) -> DiffuReason:
    encoder = encoder or SASRecEncoder(num_items=20, hidden_size=16, max_len=10, dropout=0.0)
    head = DiffusionHead(hidden_size=16, num_steps=8, sampling_steps=4, dropout=0.0)
    model = DiffuReason(encoder=encoder, diffusion=head, **kwargs)
    model.log = model.log_dict = lambda *args, **kwargs: None
    return model


@pytest.fixture(scope="module")
def small_data(data_cache) -> SequentialRecDataModule:
    source = SyntheticReviews(num_users=600, num_items=300, num_categories=12, cache_dir=data_cache)
    return SequentialRecDataModule(source=source, cache_dir=data_cache, batch_size=64, eval_batch_size=256)


def test_all_three_stages_train_without_nan_and_beat_most_popular(small_data, train_batch_metrics):
    torch.manual_seed(0)
    popular = MostPopular(num_items=small_data.num_items)
    popular.set_counts(small_data.item_popularity())
    baseline = _trainer().test(popular, small_data, verbose=False)[0]

    encoder = SASRecEncoder(num_items=small_data.num_items, hidden_size=32, num_heads=2, dropout=0.2)
    model = DiffuReason(
        encoder=encoder,
        diffusion=DiffusionHead(hidden_size=32, num_steps=16, sampling_steps=4),
        grpo_warmup_steps=40,
        group_size=4,
        learning_rate=3e-3,
    )
    trainer = _trainer(max_epochs=12, check_val_every_n_epoch=100, callbacks=[train_batch_metrics])
    trainer.fit(model, small_data)
    seen = train_batch_metrics.seen
    assert all(math.isfinite(v) for step in seen for v in step.values())
    assert any("train/grpo_clip_fraction" in step for step in seen), "GRPO never ran"
    assert seen[-1]["train/diffusion_loss"] < seen[0]["train/diffusion_loss"]
    result = _trainer().test(model, small_data, verbose=False)[0]
    assert result["test/ndcg@10"] > 2.0 * baseline["test/ndcg@10"]
    assert result["test/recall@10"] > 1.5 * baseline["test/recall@10"]


def test_with_every_stage_off_it_is_the_backbone_exactly():
    """Oracle: SASRec with the same weights gives the same loss and the same scores."""
    torch.manual_seed(0)
    model = _model(use_thinking=False, use_diffusion=False, use_grpo=False)
    sasrec = SASRec(encoder=SASRecEncoder(num_items=20, hidden_size=16, max_len=10, dropout=0.0))
    sasrec.log = lambda *args, **kwargs: None
    sasrec.load_state_dict(model.state_dict(), strict=True)
    batch = _batch(20)
    torch.testing.assert_close(model.supervised_loss(batch)[0], sasrec.training_step(batch, 0))
    torch.testing.assert_close(model(batch.input_ids), sasrec(batch.input_ids))


def test_the_catalogue_scale_losses_reach_every_next_item_loss():
    """Oracle: chunked CE is the full CE to rounding in the whole supervised loss (backbone and intent
    terms); the sampled softmax is a different loss, so its value differs from both."""
    torch.manual_seed(0)
    full = _model(use_grpo=False)
    chunked = _model(use_grpo=False, loss="ce_chunked", loss_chunk_size=7)
    sampled = _model(use_grpo=False, loss="sampled_softmax", num_negatives=5, negative_sampler="popularity")
    chunked.load_state_dict(full.state_dict())
    sampled.load_state_dict(full.state_dict())
    sampled.set_item_popularity(torch.ones(21))
    batch = _batch(20)
    torch.manual_seed(1)
    expected = full.supervised_loss(batch)[0]
    torch.manual_seed(1)
    torch.testing.assert_close(chunked.supervised_loss(batch)[0], expected)
    options = (sampled.loss_name, sampled.negative_sampler, chunked.loss_chunk_size)
    assert options == ("sampled_softmax", "popularity", 7)
    torch.manual_seed(1)
    assert not torch.isclose(sampled.supervised_loss(batch)[0], expected)


def test_thinking_only_scores_with_the_last_thought():
    torch.manual_seed(0)
    model = _model(use_diffusion=False, use_grpo=False).eval()
    batch = _batch(20)
    thoughts = model.thinking(batch.input_ids)
    expected = thoughts[:, -1] @ model.item_embeddings().T
    scores = model(batch.input_ids)
    torch.testing.assert_close(scores[:, 1:], expected[:, 1:])
    assert model.diffusion is None and torch.isinf(scores[:, 0]).all()


def test_inference_is_deterministic_and_starts_from_the_hypothesis():
    torch.manual_seed(0)
    model = _model().eval()
    batch = _batch(20)
    first, second = model(batch.input_ids), model(batch.input_ids)
    assert torch.equal(first, second)
    # At initialisation the head's correction is zero: the refined intent is the last thought.
    hypothesis = model.thinking(batch.input_ids)[:, -1]
    torch.testing.assert_close(model.user_representation(batch.input_ids), hypothesis)


def test_ranking_reward_matches_the_metrics_ranks():
    torch.manual_seed(0)
    model = _model()
    intents = torch.randn(12, 16)
    targets = torch.randint(1, 21, (12,))
    scores = intents @ model.item_embeddings().T
    scores[:, 0] = float("-inf")
    ranks = target_ranks(scores, targets).float() + 1  # 0-based, ties against the target
    torch.testing.assert_close(model.ranking_reward(intents, targets), 1 / torch.log2(ranks + 1))
    model.reward_name = "reciprocal_rank"
    torch.testing.assert_close(model.ranking_reward(intents, targets), 1 / ranks)


def _train_step(model: DiffuReason, batch: TrainBatch, optimizer: torch.optim.Optimizer) -> dict:
    """What ``training_step`` does, with a plain optimizer (no Trainer): supervised, or GRPO's update."""

    def step(loss):
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    if model.use_grpo and model.global_step >= model.grpo_warmup_steps:
        return model.grpo_update(batch, step)
    loss, logs = model.supervised_loss(batch)
    step(loss)
    return logs | {"train/loss": loss.detach()}


def _trained_looking(model: DiffuReason) -> DiffuReason:
    """A random correction and open gates: the samples of a group differ (a zero correction makes
    every sample end at the hypothesis: equal rewards, zero advantages) and gradient reaches the markers."""
    torch.nn.init.normal_(model.diffusion.denoiser.output.weight, std=0.5)
    torch.nn.init.normal_(model.thinking.gate, mean=1.0, std=0.1)
    return model


def test_grpo_gradient_reaches_the_whole_policy():
    """With the intent and diffusion losses off, only the policy loss reaches the head and the gates."""
    torch.manual_seed(0)
    model = _trained_looking(
        _model(group_size=4, grpo_warmup_steps=0, intent_loss_weight=0.0, diffusion_loss_weight=0.0)
    )
    grads: dict[str, torch.Tensor] = {}

    def step(loss):
        model.zero_grad()
        loss.backward()
        grads.update({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})

    logs = model.grpo_update(_batch(20), step)
    assert {"train/grpo_clip_fraction", "train/grpo_advantage_mean", "train/grpo_reward_mean"} <= set(logs)
    assert grads["diffusion.denoiser.output.weight"].abs().sum() > 0
    assert grads["thinking.gate"].abs().sum() > 0
    assert grads["thinking.reasoning_position_embedding.weight"].abs().sum() > 0


def test_several_ppo_epochs_clip_against_the_stored_log_probs():
    """One on-policy update has ratio 1 (the stored log-probs are the policy's, evaluated without the
    head's dropout); more epochs on the same rollout move the ratio away from 1 and the clip engages."""
    batch = _batch(20)
    for ppo_epochs in (1, 4):
        torch.manual_seed(0)
        model = _trained_looking(_model(group_size=8, grpo_warmup_steps=0, ppo_epochs=ppo_epochs))
        model.diffusion.denoiser.body[3].p = 0.5  # would break ratio 1 if the policy ran with dropout
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
        logs = _train_step(model, batch, optimizer)
        assert logs["train/grpo_updates"] == ppo_epochs
        if ppo_epochs == 1:
            assert logs["train/grpo_clip_fraction"] == 0
            torch.testing.assert_close(logs["train/grpo_ratio_mean"], torch.tensor(1.0))
        else:
            assert logs["train/grpo_clip_fraction"] > 0


def test_kl_reference_is_a_frozen_snapshot_of_the_whole_policy():
    """Moving the encoder alone after the snapshot moves the KL: the reference holds encoder and
    thinking too, not only the head."""
    torch.manual_seed(0)
    model = _trained_looking(_model(group_size=4, grpo_warmup_steps=0, kl_coef=0.1))
    batch = _batch(20)
    logs = model.grpo_update(batch, lambda loss: None)  # no optimizer step: policy = reference
    assert logs["train/grpo_kl"].abs() < 1e-5
    assert set(model._reference) == {"encoder", "thinking", "diffusion"}
    assert all(not p.requires_grad for p in model._reference.parameters())
    assert "_reference" not in dict(model.named_children())
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert model.grpo_update(batch, lambda loss: None)["train/grpo_kl"] > 1e-3


@pytest.mark.parametrize("encoder_class", [BERT4Rec, GRU4Rec, HSTU])
def test_other_backbones_train(encoder_class):
    torch.manual_seed(0)
    model = _model(encoder_class(num_items=20, hidden_size=16, max_len=10), grpo_warmup_steps=0, group_size=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = _batch(20)
    losses = []
    for _ in range(15):
        losses.append(model.supervised_loss(batch)[0].item())
        logs = _train_step(model, batch, optimizer)
        assert torch.isfinite(logs["train/grpo_loss"])
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


def test_bad_switches_and_sizes_are_clear_errors():
    encoder = SASRecEncoder(num_items=20, hidden_size=16, max_len=10)
    with pytest.raises(ValueError, match="use_grpo=True needs use_diffusion=True"):
        DiffuReason(encoder=encoder, use_diffusion=False)
    with pytest.raises(ValueError, match=r"diffusion\.hidden_size=8"):
        DiffuReason(encoder=encoder, diffusion=DiffusionHead(hidden_size=8))
    with pytest.raises(ValueError, match="group_size >= 2"):
        DiffuReason(encoder=encoder, group_size=1)


def test_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    model, (inputs,) = DiffuReason.hub_example()
    model.save_pretrained(tmp_path / "repo")
    loaded = DiffuReason.from_pretrained(tmp_path / "repo")
    assert torch.equal(loaded(inputs), model.eval()(inputs))
    encoder = SASRecEncoder(num_items=20, hidden_size=16, max_len=8)
    started = DiffuReason(encoder=encoder, diffusion=DiffusionHead(16, num_steps=8, sampling_steps=4),
                          group_size=2, pretrained=str(tmp_path / "repo"))  # fmt: skip
    assert torch.equal(started.eval()(inputs), loaded(inputs))


def test_requests_inside_windows_are_the_last_position_plus_random_supervised_ones():
    torch.manual_seed(0)
    model = _model(requests_per_window=4)
    batch = _batch(20)
    positions = model.request_positions(batch.target_ids)
    assert positions.shape == (8, 4) and (positions[:, 0] == 9).all()
    assert (positions.unique(dim=1).shape[1] == 4) and all(len(set(row.tolist())) == 4 for row in positions)
    # Rows with 5 supervised positions pick them all before any padding position.
    targets = batch.target_ids.gather(1, positions)
    assert (targets > 0).all()
    # Training reads every request: more requests, different intent loss; both finite.
    single = _model(requests_per_window=1)
    single.load_state_dict(model.state_dict())
    assert torch.isfinite(model.supervised_loss(batch)[0]) and torch.isfinite(
        single.supervised_loss(batch)[0]
    )


def test_at_init_the_think_and_diffuse_stages_are_the_backbone():
    """Gated thoughts closed, correction zero: DiffuReason scores as SASRec with the same weights,
    in eval mode and in a training step's backbone state (dropout 0.5 on the backbone)."""
    torch.manual_seed(0)
    encoder = SASRecEncoder(num_items=20, hidden_size=16, max_len=10, dropout=0.5)
    model = _model(encoder, use_grpo=False).eval()
    sasrec = SASRec(encoder=SASRecEncoder(num_items=20, hidden_size=16, max_len=10, dropout=0.5)).eval()
    sasrec.encoder.load_state_dict(model.encoder.state_dict())
    batch = _batch(20)
    torch.testing.assert_close(model(batch.input_ids), sasrec(batch.input_ids))
    model.train()
    prefix = model.encoder.encode_prefix(batch.input_ids)
    thoughts = model.condition(batch.input_ids, prefix)
    assert torch.equal(thoughts, prefix[0][:, -1:].expand_as(thoughts))
    torch.testing.assert_close(model.diffusion(thoughts), prefix[0][:, -1])


def test_training_and_inference_rank_with_the_same_start():
    """The intent the training step's CE ranks with is the intent inference serves (no dropout, one
    request per window, a trained-looking correction so that the start matters)."""
    torch.manual_seed(0)
    model = _model(use_grpo=False, requests_per_window=1)
    torch.nn.init.normal_(model.diffusion.denoiser.output.weight, std=0.5)
    torch.nn.init.normal_(model.thinking.gate, mean=1.0, std=0.1)
    ranked: list[torch.Tensor] = []
    next_item_loss = model._next_item_loss

    def record(hidden, targets):
        ranked.append(hidden.detach())
        return next_item_loss(hidden, targets)

    model._next_item_loss = record
    batch = _batch(20)
    model.supervised_loss(batch)
    _backbone, intent, _hypothesis = ranked
    with torch.no_grad():
        served = model.user_representation(batch.input_ids)
    torch.testing.assert_close(intent, served)
    # A noise-started sample (what the training loss ranked with before) is a different intent.
    noise = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    noisy = model.diffusion.sample(model.condition(batch.input_ids), start_noise=noise)
    assert (noisy.x0 - served).norm() > 0.05 * served.norm()


class _ItemIndexReward(ItemReward):
    """A reward whose value is known by hand: item index / 100, whatever the history."""

    def forward(self, input_ids, items):
        return items.float() / 100


# A module saves its config with its reward model: a user's own class says how to rebuild it.
register_trusted_class(_ItemIndexReward, lambda reward: {})


@pytest.mark.parametrize("weight", [0.5, 2.0])
def test_reward_model_adds_its_weighted_mean_over_each_intents_slate(weight):
    torch.manual_seed(0)
    plain = _model(group_size=3)
    judged = _model(
        group_size=3, reward_model=_ItemIndexReward(), reward_model_weight=weight, reward_model_slate=4
    )
    judged.load_state_dict(plain.state_dict(), strict=True)  # the same policy, the same item table
    intents = torch.randn(5, 3, 16)  # (b g d)
    history = torch.randint(0, 21, (5, 10))
    targets = torch.randint(1, 21, (5,))
    base, none = plain.rollout_rewards(intents, history, targets)
    rewards, model_term = judged.rollout_rewards(intents, history, targets)
    assert none is None
    # Brute force: score every item, drop padding and the history, mean of item / 100 over the top 4.
    expected = torch.empty(5, 3)
    for b in range(5):
        for g in range(3):
            scores = intents[b, g] @ plain.item_embeddings().T
            scores[0] = float("-inf")
            scores[history[b]] = float("-inf")
            expected[b, g] = (scores.topk(4).indices.float() / 100).mean()
    torch.testing.assert_close(model_term, expected)
    torch.testing.assert_close(rewards, base + weight * expected)
    torch.testing.assert_close(base[0, 0], plain.ranking_reward(intents[0, :1], targets[:1])[0])


def test_reward_model_arguments_are_checked():
    with pytest.raises(ValueError, match="use_grpo=True"):
        _model(use_grpo=False, reward_model=_ItemIndexReward())
    with pytest.raises(ValueError, match="reward_model_slate"):
        _model(reward_model=_ItemIndexReward(), reward_model_slate=21)
    with pytest.raises(ValueError, match="reward_model_weight"):
        _model(reward_model=_ItemIndexReward(), reward_model_weight=0.0)


def test_grpo_with_a_reward_model_trains_and_leaves_the_reward_model_frozen():
    torch.manual_seed(0)
    reward_model = torch.nn.Linear(1, 1)  # a parameter that must stay out of training
    reward = _ItemIndexReward()
    reward.scale = reward_model
    model = _trained_looking(_model(group_size=4, grpo_warmup_steps=0, reward_model=reward))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    before = reward_model.weight.detach().clone()
    logs = _train_step(model, _batch(20), optimizer)
    assert not reward_model.weight.requires_grad and torch.equal(reward_model.weight, before)
    assert 0 < float(logs["train/grpo_reward_model_mean"]) <= 0.2  # item / 100 over 20 items
