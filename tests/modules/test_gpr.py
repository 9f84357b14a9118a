"""GPR: semantic ids, the HHD, and MTP -> VAFT -> HEPO chained through checkpoints."""

import json

import lightning as L
import pytest
import torch

from lightning_rec.blocks import HeterogeneousHierarchicalDecoder, SemanticIdQuantizer
from lightning_rec.callbacks import RecommendationWriter
from lightning_rec.data import SyntheticReviews
from lightning_rec.datamodules import SequentialRecDataModule
from lightning_rec.modules import GPR
from lightning_rec.modules.gpr import ad_items
from lightning_rec.objectives.hepo import hepo_advantages, hepo_loss, process_rewards


def _datamodule(tmp_path):
    source = SyntheticReviews(
        num_users=60, num_items=80, num_categories=5, mean_length=12, seed=0, cache_dir=str(tmp_path)
    )
    return SequentialRecDataModule(
        source=source, k_core=2, max_len=10, batch_size=16, eval_batch_size=32, cache_dir=str(tmp_path)
    )


def _model(tmp_path, **overrides):
    torch.manual_seed(0)
    arguments = {
        "decoder": HeterogeneousHierarchicalDecoder(
            level_sizes=(8, 8, 8), hidden_size=16, max_len=12, num_prediction_heads=2
        ),
        "quantizer": SemanticIdQuantizer(num_levels=2, codebook_size=8, hidden_size=32),
        "quantizer_steps": 20,
        "embedding_cache_dir": str(tmp_path / "embeddings"),
        "num_candidates": 4,
        "beam_size": 10,
        "slate_size": 5,
        "ks": (5, 10),
        **overrides,
    }
    return GPR(**arguments)


def _fit(model, datamodule, tmp_path, name):
    trainer = L.Trainer(
        max_steps=3,
        limit_val_batches=1,
        limit_test_batches=1,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, datamodule=datamodule)
    path = tmp_path / f"{name}.ckpt"
    trainer.save_checkpoint(path)
    return trainer, str(path)


def test_three_stages_chain_through_checkpoints(tmp_path):
    datamodule = _datamodule(tmp_path)
    mtp = _model(tmp_path)
    _, mtp_ckpt = _fit(mtp, datamodule, tmp_path, "mtp")
    semantic_ids = mtp.vocab["semantic_ids"]
    assert len(semantic_ids) == datamodule.num_items + 1
    assert len({tuple(row) for row in semantic_ids[1:]}) == datamodule.num_items  # unique paths

    vaft = _model(tmp_path, stage="vaft", pretrained=mtp_ckpt)
    assert vaft.vocab["semantic_ids"] == semantic_ids
    for name, value in mtp.state_dict().items():
        assert torch.equal(vaft.state_dict()[name], value.cpu()), name
    _, vaft_ckpt = _fit(vaft, datamodule, tmp_path, "vaft")

    hepo = _model(tmp_path, stage="hepo", pretrained=vaft_ckpt, value_weight=0.5)
    trainer, _ = _fit(hepo, datamodule, tmp_path, "hepo")
    assert {"train/hepo_critic_loss", "train/hepo_clip_fraction", "train/mtp_loss"} <= set(
        trainer.logged_metrics
    )
    assert trainer.global_step == 4  # manual optimisation: 2 batches x ppo_epochs=2 updates (max_steps=3)
    results = trainer.test(hepo, datamodule=datamodule, verbose=False)[0]
    assert {"test/recall@10", "test/ndcg@10", "test/ecpm@5"} <= set(results)
    assert results["test/ecpm@5"] > 0

    # Decoding only ever emits catalogue items; ad requests only ads.
    history = next(iter(datamodule.test_dataloader())).input_ids[:8]
    items, log_probs = hepo.recommend(history, k=10)
    assert bool((items[torch.isfinite(log_probs)] > 0).all())
    ads, ad_log_probs = hepo.recommend(history, k=5, ads_only=True)
    assert bool(hepo._is_ad[ads[torch.isfinite(ad_log_probs)]].all())

    # predict: every user's top 12 (above beam_size=10) unseen items, as raw ids.
    writer = RecommendationWriter(output_path=str(tmp_path / "predictions.jsonl"), k=12)
    L.Trainer(
        logger=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[writer]
    ).predict(hepo, datamodule=datamodule, return_predictions=False)
    lines = [json.loads(line) for line in writer.output_path.read_text().splitlines()]
    sequences = datamodule.data
    assert [line["user_id"] for line in lines] == sequences.user_ids
    for user, line in enumerate(lines):
        seen = {
            sequences.item_ids[i]
            for i in sequences.items[sequences.offsets[user] : sequences.offsets[user + 1]]
        }
        assert len(line["items"]) == 12 and len(set(line["items"])) == 12
        assert set(line["items"]) <= set(sequences.item_ids[1:]) and not set(line["items"]) & seen
        assert line["scores"] == sorted(line["scores"], reverse=True)


def test_vaft_weights_ad_targets_by_their_value(tmp_path):
    datamodule = _datamodule(tmp_path)
    model = _model(tmp_path, stage="vaft", value_event="click", requests_per_window=2)
    model.prepare_catalogue(datamodule)
    batch = next(iter(datamodule.train_dataloader()))
    requests = model.sample_requests(batch)
    assert requests.targets.shape[0] == 2 * len(batch)
    weights = model.value_weights(batch, requests)
    targets = requests.targets
    is_ad = model._is_ad[targets] & (targets > 0)
    assert torch.equal(weights[~is_ad & (targets > 0)], torch.ones(int((~is_ad & (targets > 0)).sum())))
    assert torch.equal(weights[targets == 0], torch.zeros(int((targets == 0).sum())))
    bids = model._bids[targets[is_ad]]
    assert torch.allclose(weights[is_ad], bids / bids.mean())


def test_ads_are_a_fixed_hashed_share_of_the_items():
    raw = [f"S{index:09d}" for index in range(2000)]
    flags = ad_items(["[PAD]", *raw], 0.3)
    assert not flags[0] and 0.25 < flags[1:].float().mean() < 0.35
    assert torch.equal(flags, ad_items(["[PAD]", *raw], 0.3))
    with pytest.raises(ValueError, match="ad_share"):
        ad_items(raw, 1.5)


def test_first_hepo_update_is_the_one_step_loss_on_the_stored_log_probs(tmp_path):
    """The rollout stores the policy's own log-probs (no dropout): the first of the PPO epochs sees
    ratio 1 and its loss is HEPO's one-update loss, -sum_l c_l mean A_l + value_coef * critic; the
    second sees the moved policy and clips."""
    datamodule = _datamodule(tmp_path)
    model = _model(tmp_path, stage="hepo", mtp_loss_weight=0.0, ppo_epochs=2, clip_epsilon=0.05)
    model.prepare_catalogue(datamodule)
    batch = next(iter(datamodule.train_dataloader()))
    torch.manual_seed(1)
    rollout = model.hepo_rollout(batch)
    with torch.no_grad(), model._policy_eval():
        log_probs, values = model.candidate_log_probs(model.ad_intents(batch.input_ids), rollout.codes)
    torch.testing.assert_close(log_probs, rollout.old_log_probs, rtol=0, atol=1e-6)
    # The oracle: hepo_loss (tested against a hand computation in tests/objectives/test_hepo.py) on
    # the stored samples, current log-probs = stored ones, and a hand computation of the same.
    num_code_levels = model.quantizer.num_levels
    level_rewards = torch.zeros_like(log_probs)
    level_rewards[..., :num_code_levels] = process_rewards(
        rollout.codes[..., :num_code_levels], model.code_popularity(batch.input_ids), 0.1
    )
    expected, _ = hepo_loss(
        rollout.old_log_probs,
        rollout.old_log_probs,
        values,
        level_rewards,
        rollout.final_rewards,
        value_coef=0.5,
    )
    advantages, returns = hepo_advantages(level_rewards, rollout.final_rewards, values)
    level_weights = torch.tensor([1 / 3, 2 / 3, 1.0])
    by_hand = (
        -(advantages.mean(dim=(0, 1)) * level_weights).sum()
        + 0.5 * (values - returns).pow(2).mean(dim=(0, 1)).sum()
    )
    assert expected.item() == pytest.approx(by_hand.item(), rel=1e-5)

    losses = []
    optimizer = torch.optim.Adam(model.decoder.parameters(), lr=0.05)

    def step(loss):
        losses.append(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    logs = model.hepo_update(batch, rollout, step)
    assert len(losses) == 2
    assert losses[0].item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses[1].item() != pytest.approx(expected.item(), rel=1e-3)
    # Mean over the two updates: 1 at the first, not at the second.
    assert logs["train/hepo_ratio_mean"].item() != pytest.approx(1.0, abs=1e-4)
    assert logs["train/hepo_clip_fraction"].item() > 0


def test_hepo_stage_takes_ppo_epochs_manual_steps_per_batch_and_clips(tmp_path, train_batch_metrics):
    datamodule = _datamodule(tmp_path)
    model = _model(
        tmp_path, stage="hepo", ppo_epochs=3, num_minibatches=2, clip_epsilon=0.05, learning_rate=0.02
    )
    trainer = L.Trainer(
        max_steps=12,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
        callbacks=[train_batch_metrics],
    )
    before = {name: value.clone() for name, value in model.decoder.state_dict().items()}
    trainer.fit(model, datamodule=datamodule)
    seen = train_batch_metrics.seen
    assert trainer.global_step == 12 and len(seen) == 2  # 3 epochs x 2 minibatches per batch
    assert all(entry["train/hepo_updates"] == 6 for entry in seen)
    assert all(entry["train/hepo_ratio_max"] > 1 for entry in seen)
    assert max(entry["train/hepo_clip_fraction"] for entry in seen) > 0
    assert not torch.equal(
        before["value_heads.0.2.weight"], model.decoder.state_dict()["value_heads.0.2.weight"]
    )


@pytest.mark.parametrize("stage", ["mtp", "hepo"])
def test_every_trainable_parameter_gets_a_gradient(tmp_path, stage):
    """DDP (find_unused_parameters off) rejects a parameter that gets no gradient: every update of each
    stage reaches all of them (checked on 2 DDP processes by hand; this is its single-process guard)."""
    datamodule = _datamodule(tmp_path)
    model = _model(tmp_path, stage=stage, num_minibatches=2)
    model.prepare_catalogue(datamodule)
    batch = next(iter(datamodule.train_dataloader()))
    missing = []

    def step(loss):
        loss.backward()
        missing.append([name for name, p in model.named_parameters() if p.requires_grad and p.grad is None])
        model.zero_grad(set_to_none=True)

    if stage == "mtp":
        step(model.mtp_loss(model.sample_requests(batch))[0])
    else:
        model.hepo_update(batch, model.hepo_rollout(batch), step)
    assert len(missing) == (1 if stage == "mtp" else 4) and missing == [[]] * len(missing)
