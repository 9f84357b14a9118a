from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_rec.blocks import BERT4Rec, GRU4Rec
from lightning_rec.blocks import SASRec as SASRecEncoder
from lightning_rec.cli import run_cli
from lightning_rec.data.batches import TrainBatch
from lightning_rec.data.synthetic import SyntheticReviews
from lightning_rec.datamodules import SequentialRecDataModule
from lightning_rec.modules import MostPopular, SASRec

SYNTHETIC_1M = Path(__file__).resolve().parents[2] / "configs" / "sasrec" / "synthetic-1m.yaml"


def _trainer(**kwargs) -> L.Trainer:
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                    enable_model_summary=False, accelerator="cpu", devices=1)  # fmt: skip
    return L.Trainer(**{**defaults, **kwargs})


@pytest.fixture(scope="module")
def small_data(data_cache) -> SequentialRecDataModule:
    source = SyntheticReviews(num_users=600, num_items=300, num_categories=12, cache_dir=data_cache)
    return SequentialRecDataModule(source=source, cache_dir=data_cache, batch_size=64, eval_batch_size=256)


def test_sasrec_beats_most_popular_by_a_wide_margin(small_data):
    torch.manual_seed(0)
    popular = MostPopular(num_items=small_data.num_items)
    popular.set_counts(small_data.item_popularity())
    baseline = _trainer().test(popular, small_data, verbose=False)[0]

    encoder = SASRecEncoder(
        num_items=small_data.num_items, hidden_size=32, num_layers=2, num_heads=2, dropout=0.2
    )
    model = SASRec(encoder=encoder, learning_rate=3e-3)
    _trainer(max_epochs=12, check_val_every_n_epoch=100).fit(model, small_data)
    result = _trainer().test(model, small_data, verbose=False)[0]
    assert result["test/ndcg@10"] > 2.0 * baseline["test/ndcg@10"]
    assert result["test/recall@10"] > 1.5 * baseline["test/recall@10"]


def _batch(num_items: int, seed: int = 0) -> TrainBatch:
    generator = torch.Generator().manual_seed(seed)
    windows = torch.randint(1, num_items + 1, (8, 11), generator=generator)
    windows[:4, :5] = 0  # left padding on half the rows
    inputs = windows[:, :-1]
    return TrainBatch(inputs, torch.where(inputs > 0, windows[:, 1:], torch.zeros_like(inputs)))


@pytest.mark.parametrize("loss", ["ce", "ce_chunked", "sampled_softmax", "gbce", "bce"])
def test_training_losses_are_finite_and_fall_on_a_fixed_batch(loss):
    torch.manual_seed(0)
    model = SASRec(encoder=SASRecEncoder(num_items=20, hidden_size=16, max_len=10, dropout=0.0),
                   loss=loss, num_negatives=4, loss_chunk_size=6)  # fmt: skip
    model.set_item_popularity(torch.arange(21.0))
    model.log = lambda *args, **kwargs: None
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = _batch(20)
    losses = []
    for _ in range(60):
        loss_value = model.training_step(batch, 0)
        optimizer.zero_grad()
        loss_value.backward()
        optimizer.step()
        losses.append(loss_value.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0]


def test_cross_entropy_matches_a_hand_computed_softmax():
    torch.manual_seed(0)
    model = SASRec(encoder=SASRecEncoder(num_items=12, hidden_size=8, max_len=10, dropout=0.0))
    model.eval()
    batch = _batch(12)
    hidden = model.encoder(batch.input_ids)
    mask = batch.target_ids > 0
    logits = hidden[mask] @ model.item_embeddings()[1:].T  # padding column dropped
    expected = torch.nn.functional.cross_entropy(logits, batch.target_ids[mask] - 1)
    torch.testing.assert_close(model._next_item_loss(hidden[mask], batch.target_ids[mask]), expected)


def test_cloze_masks_real_items_only_and_always_the_last():
    torch.manual_seed(0)
    model = SASRec(encoder=BERT4Rec(num_items=30, hidden_size=8, max_len=10), cloze_mask_prob=0.5)
    sequence = _batch(30).target_ids
    cloze_input, targets = model._cloze(sequence)
    masked = cloze_input == model.encoder.mask_token_id
    assert torch.equal(masked, targets > 0)
    assert torch.equal(targets[masked], sequence[masked])
    assert torch.equal(cloze_input[~masked], sequence[~masked])
    assert not masked[sequence == 0].any()
    assert masked[:, -1].all()
    assert 0.3 < masked[sequence > 0].float().mean() < 0.8


def test_bidirectional_encoder_predicts_from_an_appended_mask_token():
    torch.manual_seed(0)
    model = SASRec(encoder=BERT4Rec(num_items=30, hidden_size=8, max_len=6, dropout=0.0)).eval()
    history = torch.tensor([[0, 3, 4, 5, 6, 7]])
    expected_input = torch.tensor([[3, 4, 5, 6, 7, model.encoder.mask_token_id]])
    torch.testing.assert_close(model.user_representation(history), model.encoder(expected_input)[:, -1])


def test_forward_scores_and_recommend_agree_with_brute_force():
    torch.manual_seed(0)
    model = SASRec(encoder=GRU4Rec(num_items=25, hidden_size=8, max_len=10)).eval()
    history = _batch(25).input_ids
    scores = model(history)
    assert torch.isneginf(scores[:, 0]).all()
    torch.testing.assert_close(
        scores[:, 1:], model.user_representation(history) @ model.item_embeddings()[1:].T
    )
    items, top_scores = model.recommend(history, k=5)
    for row in range(len(history)):
        seen = set(history[row].tolist())
        ranked = [i for i in scores[row].argsort(descending=True).tolist() if i not in seen and i != 0][:5]
        assert items[row].tolist() == ranked
        torch.testing.assert_close(top_scores[row], scores[row, ranked])


def test_warmup_scales_the_learning_rate_linearly():
    model = SASRec(encoder=SASRecEncoder(num_items=10, hidden_size=8, max_len=4), learning_rate=1.0,
                   warmup_steps=4)  # fmt: skip
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(6):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="loss must be"):
        SASRec(encoder=SASRecEncoder(num_items=10), loss="mse")
    with pytest.raises(ValueError, match="num_negatives"):
        SASRec(encoder=SASRecEncoder(num_items=10), loss="gbce", num_negatives=0)
    with pytest.raises(ValueError, match="negative_sampler"):
        SASRec(encoder=SASRecEncoder(num_items=10), negative_sampler="hard")


def test_chunked_cross_entropy_gives_the_full_cross_entropy_gradients_of_every_parameter():
    torch.manual_seed(0)
    encoder = SASRecEncoder(num_items=30, hidden_size=8, max_len=10, dropout=0.0)
    batch = _batch(30)
    gradients = {}
    for loss in ("ce", "ce_chunked"):
        model = SASRec(encoder=encoder, loss=loss, loss_chunk_size=7)
        model.log = lambda *args, **kwargs: None
        model.zero_grad()
        model.training_step(batch, 0).backward()
        gradients[loss] = {name: p.grad.clone() for name, p in model.named_parameters()}
    for name, grad in gradients["ce"].items():
        torch.testing.assert_close(gradients["ce_chunked"][name], grad, rtol=1e-4, atol=1e-6)


def test_sampled_softmax_needs_the_popularity_and_takes_it_from_the_datamodule(small_data):
    model = SASRec(encoder=SASRecEncoder(num_items=small_data.num_items, hidden_size=8, num_layers=1),
                   loss="sampled_softmax", num_negatives=8)  # fmt: skip
    model.log = lambda *args, **kwargs: None
    batch = _batch(small_data.num_items)
    with pytest.raises(ValueError, match="popularity"):
        model.training_step(batch, 0)
    _trainer(max_steps=2, limit_val_batches=0).fit(model, small_data)
    counts = small_data.item_popularity() + 1
    counts[0] = 0
    torch.testing.assert_close(model.item_popularity, counts / counts.sum())


def test_the_million_item_config_trains_when_shrunk(tmp_path, monkeypatch, data_cache):
    # The shipped YAML as written (sampled softmax, candidate-sampled catalogue, 1-core), only smaller.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_REC_CACHE", data_cache)
    monkeypatch.setattr("sys.argv", ["lightning-rec"])
    small = ["--data.source.init_args.num_users", "80", "--data.source.init_args.num_items", "3000",
             "--data.source.init_args.num_categories", "5", "--model.init_args.num_negatives", "32",
             "--trainer.max_epochs", "3", "--trainer.max_steps", "3", "--trainer.val_check_interval", "1.0",
             "--trainer.logger", "false",
             "--trainer.enable_progress_bar", "false", "--trainer.enable_checkpointing", "false"]  # fmt: skip
    fit = run_cli(["fit", "--config", str(SYNTHETIC_1M), *small])
    assert fit.model.loss_name == "sampled_softmax"
    assert fit.model.item_popularity is not None
    assert fit.datamodule.source.catalogue.choice_candidates == 64
    assert fit.trainer.global_step == 3
    assert torch.isfinite(fit.trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize("loss", ["bce", "gbce"])
def test_logit_offset_starts_at_the_uninformed_logit_and_learns(loss):
    from lightning_rec.objectives import gbce_beta, uninformed_logit

    torch.manual_seed(0)
    model = SASRec(encoder=SASRecEncoder(num_items=20, hidden_size=16, max_len=10, dropout=0.0),
                   loss=loss, num_negatives=8, logit_offset=True)  # fmt: skip
    beta = gbce_beta(8, 20, 0.75) if loss == "gbce" else 1.0
    assert float(model.logit_offset) == pytest.approx(uninformed_logit(8, beta))
    model.log = lambda *args, **kwargs: None
    model.training_step(_batch(20), 0).backward()
    assert model.logit_offset.grad is not None and float(model.logit_offset.grad.abs()) > 0
    # Without the option there is no parameter, so earlier checkpoints load unchanged.
    assert "logit_offset" not in SASRec(encoder=SASRecEncoder(num_items=20), loss=loss).state_dict()


def test_logit_offset_is_refused_for_softmax_losses():
    with pytest.raises(ValueError, match="logit_offset applies to loss 'bce' or 'gbce'"):
        SASRec(encoder=SASRecEncoder(num_items=10), loss="ce", logit_offset=True)
