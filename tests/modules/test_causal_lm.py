"""CausalLM pretraining on the catalogue corpus: loss oracle, schedule, a fit beating unigram, HF export."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from lightning_rec.agents import HFCausalLM
from lightning_rec.data.catalogue_corpus import collate_blocks
from lightning_rec.datamodules import CatalogueCorpusDataModule
from lightning_rec.modules import CausalLM
from lightning_rec.modules.causal_lm import _warmup_cosine

TINY_QWEN2 = {
    "model_type": "qwen2",
    "vocab_size": 512,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "tie_word_embeddings": True,
}


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory) -> CatalogueCorpusDataModule:
    data = CatalogueCorpusDataModule(
        num_users=120, num_items=60, num_categories=6, mean_length=12, max_history=6, heldout_fraction=0.1,
        vocab_size=512, block_size=32, batch_size=16, eval_batch_size=64,
        cache_dir=str(tmp_path_factory.mktemp("cache")),
    )  # fmt: skip
    data.prepare_data()
    return data


def test_token_nll_matches_the_transformers_loss(datamodule):
    model = CausalLM(model_config=TINY_QWEN2)
    batch = collate_blocks(
        list(torch.from_numpy(datamodule.blocks["valid"][-3:])), datamodule.tokenizer.pad_token_id
    )
    assert (batch.labels == -100).any()  # the last block is padded: padding must not count
    nll, tokens = model.token_nll(batch)
    reference = model.model(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels
    )
    torch.testing.assert_close(nll / tokens, reference.loss, atol=1e-5, rtol=1e-5)
    assert int(tokens) == int((batch.labels[:, 1:] != -100).sum())


def test_warmup_then_cosine_schedule():
    factor = _warmup_cosine(warmup_steps=4, total_steps=14, min_ratio=0.1)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(14) == pytest.approx(0.1) and factor(100) == pytest.approx(0.1)


def test_the_cache_returns_the_same_tokenizer_and_blocks(datamodule):
    again = CatalogueCorpusDataModule(**{**datamodule.hparams})
    assert again.tokenizer.get_vocab() == datamodule.tokenizer.get_vocab()
    for split, blocks in datamodule.blocks.items():
        np.testing.assert_array_equal(again.blocks[split], blocks)


def test_fit_beats_unigram_and_exports_a_plain_transformers_folder(datamodule, tmp_path):
    train = datamodule.blocks["train"]
    counts = np.bincount(train[:, 1:][train[:, 1:] >= 0], minlength=TINY_QWEN2["vocab_size"]) + 1.0
    heldout = datamodule.blocks["test"][:, 1:]
    unigram = math.exp(-np.log(counts / counts.sum())[heldout[heldout >= 0]].mean())

    model = CausalLM(
        model_config=TINY_QWEN2, learning_rate=1e-2, warmup_steps=5, export_dir=str(tmp_path / "lm")
    )
    trainer = L.Trainer(
        max_steps=40, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, gradient_clip_val=1.0,
    )  # fmt: skip
    trainer.fit(model, datamodule=datamodule)
    perplexity = trainer.test(model, datamodule=datamodule, verbose=False)[0]["test/perplexity"]
    assert perplexity < 0.5 * unigram, (perplexity, unigram)

    from transformers import AutoModelForCausalLM

    folder = tmp_path / "lm"
    loaded = AutoModelForCausalLM.from_pretrained(folder, use_safetensors=True).eval()
    probe = torch.from_numpy(np.clip(datamodule.blocks["test"][:2], 0, None))
    with torch.no_grad():
        torch.testing.assert_close(loaded(probe).logits, model.model.eval()(probe).logits)
    assert "catalogue" in (folder / "README.md").read_text()
    backend = HFCausalLM(str(folder))
    with torch.no_grad():
        generation = backend.generate(["History: "], max_new_tokens=8, temperature=0.0)
    assert generation.completion_tokens.item() >= 1 and generation.texts[0]


def test_a_vocabulary_too_small_for_the_tokenizer_is_refused(datamodule):
    model = CausalLM(model_config={**TINY_QWEN2, "vocab_size": 16})
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="vocab_size is 16"):
        trainer.fit(model, datamodule=datamodule)


CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "catalogue_lm"


def test_the_tiny_config_fits_from_the_cli_and_exports(tmp_path, monkeypatch):
    from lightning_rec.cli import run_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["lightning-rec"])
    monkeypatch.setenv("LIGHTNING_REC_CACHE", str(tmp_path / "cache"))
    small = [
        "--data.init_args.num_users",
        "60",
        "--data.init_args.num_items",
        "40",
        "--trainer.max_steps",
        "2",
    ]
    fit = run_cli(
        ["fit", "--config", str(CONFIGS / "tiny.yaml"), *small, "--trainer.val_check_interval", "2"]
    )
    assert isinstance(fit.model, CausalLM) and isinstance(fit.datamodule, CatalogueCorpusDataModule)
    assert fit.trainer.global_step == 2
    assert (tmp_path / "outputs" / "catalogue-lm-tiny" / "model" / "model.safetensors").is_file()


def test_push_to_hub_then_load_by_repo_id(datamodule, local_hub):
    model = CausalLM(model_config=TINY_QWEN2)
    model.tokenizer = datamodule.tokenizer
    model.push_to_hub("org/catalogue-lm-tiny", token="test-token")
    pulled = HFCausalLM("org/catalogue-lm-tiny")
    with torch.no_grad():
        expected = HFCausalLM(model.model, tokenizer=datamodule.tokenizer).generate(
            ["Item:"], 5, temperature=0.0
        )
        assert pulled.generate(["Item:"], 5, temperature=0.0).token_ids == expected.token_ids
