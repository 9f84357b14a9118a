"""AdapterFineTune: SMoA / LoRA / full / frozen fine-tuning of HF models, adapter-only saving, CLI runs."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from lightning_rec.cli import run_cli
from lightning_rec.hub.peft_layout import ADAPTER_WEIGHTS_FILE
from lightning_rec.hub.pretrained import MINILM_HUB_ID, resolve_pretrained
from lightning_rec.modules import AdapterFineTune

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "smoa"
TINY_QWEN2 = {
    "model_type": "qwen2", "vocab_size": 30522, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
}  # fmt: skip
QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    monkeypatch.setattr("sys.argv", ["lightning-rec"])


def _tiny(method: str, task: str = "classification") -> AdapterFineTune:
    labels = {"num_labels": 4} if task == "classification" else {}
    targets = ["q_proj", "v_proj"]
    return AdapterFineTune(model_config=TINY_QWEN2, tokenizer=MINILM_HUB_ID, task=task, method=method,
                           target_modules=targets, r=4, **labels)  # fmt: skip


def _as_if_trained(model: AdapterFineTune) -> None:
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize(
    "method, task, files",
    [
        ("smoa", "classification", {"adapter_config.json", "adapter_model.safetensors"}),
        ("lora", "classification", {"adapter_config.json", "adapter_model.safetensors"}),
        ("smoa", "instruction", {"adapter_config.json", "adapter_model.safetensors"}),
        ("full", "classification", {"model.safetensors"}),
    ],
)
def test_only_trained_tensors_are_saved_and_reload_exactly(method, task, files, tmp_path):
    model = _tiny(method, task).eval()
    _as_if_trained(model)
    model.save_pretrained(tmp_path)
    assert {"config.json", "README.md", *files} == set(os.listdir(tmp_path))
    weights = load_file(tmp_path / next(iter(files - {"adapter_config.json"})))
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(v.numel() for v in weights.values() if v.is_floating_point()) == trained
    loaded = AdapterFineTune.from_pretrained(tmp_path)
    ids = torch.randint(1000, 2000, (3, 6))
    mask = torch.ones_like(ids)
    assert torch.equal(loaded(ids, mask), model(ids, mask))
    assert loaded.config_tree() == model.config_tree()
    # The base is rebuilt, not loaded: a fresh model of the same arguments differs only in what trained.
    assert not torch.equal(_tiny(method, task).eval()(ids, mask), model(ids, mask))


def test_instruction_encoding_learns_the_response_only():
    model = _tiny("smoa", "instruction")
    model.max_length = 12
    tokenizer = model.tokenizer
    prompts = ["what colour is the lamp", "a very long prompt " * 5]
    responses = ["red", "blue mug"]
    encoded = model.encode_instructions(prompts, responses)
    for row, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        target = [*tokenizer(response, add_special_tokens=False)["input_ids"], tokenizer.sep_token_id]
        kept = encoded["attention_mask"][row].sum().item()
        labels, ids = encoded["labels"][row, :kept], encoded["input_ids"][row, :kept]
        assert labels[labels != -100].tolist() == target == ids[-len(target) :].tolist()
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        context = ids[: kept - len(target)].tolist()
        assert context == prompt_ids[len(prompt_ids) - len(context) :]  # the prompt's last tokens
        assert (encoded["labels"][row, kept:] == -100).all() and kept <= 12
    assert encoded["attention_mask"][1].sum() == 12  # the long prompt was cut from the left


def test_the_adapter_keys_are_checked_strictly(tmp_path):
    model = _tiny("smoa")
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / ADAPTER_WEIGHTS_FILE)
    removed = "base_model.model.score.weight"
    del weights[removed]
    save_file(weights, tmp_path / ADAPTER_WEIGHTS_FILE)
    with pytest.raises(RuntimeError, match=r"missing keys \['score\.weight'\]"):
        AdapterFineTune.from_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="missing keys"):
        model.load_state_dict({"model.score.weight": torch.zeros(4, 32)})


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="exactly one of base_model"):
        AdapterFineTune(num_labels=3)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        AdapterFineTune(model_config=TINY_QWEN2, num_labels=3)
    with pytest.raises(ValueError, match="num_labels >= 2"):
        AdapterFineTune(model_config=TINY_QWEN2, tokenizer=MINILM_HUB_ID)
    with pytest.raises(ValueError, match="causal LM has none"):
        AdapterFineTune(model_config=TINY_QWEN2, tokenizer=MINILM_HUB_ID, task="instruction", method="frozen")
    with pytest.raises(ValueError, match="30522 tokens"):
        AdapterFineTune(
            model_config={**TINY_QWEN2, "vocab_size": 1000}, tokenizer=MINILM_HUB_ID, num_labels=3
        )


def test_push_and_pull_through_the_hub_and_peft(tmp_path, local_hub, hub_token):
    from peft import PeftModel

    from lightning_rec.blocks import smoa_lora_config
    from lightning_rec.hub.peft_layout import read_peft_adapter_config

    model = _tiny("smoa").eval()
    _as_if_trained(model)
    model.push_to_hub("org/smoa-tiny", token=hub_token)
    pulled = AdapterFineTune.from_pretrained("org/smoa-tiny")
    ids = torch.randint(1000, 2000, (2, 5))
    expected = model(ids, torch.ones_like(ids))
    assert torch.equal(pulled(ids, torch.ones_like(ids)), expected)
    # The same repo is a PEFT adapter of the base model.
    base = AdapterFineTune(
        model_config=TINY_QWEN2, tokenizer=MINILM_HUB_ID, num_labels=4, method="full"
    ).model
    config = smoa_lora_config(**read_peft_adapter_config("org/smoa-tiny"))
    peft_model = PeftModel.from_pretrained(base, "org/smoa-tiny", config=config).eval()
    assert torch.equal(peft_model(input_ids=ids).logits, expected)


def _accuracy(cli) -> float:
    return float(cli.trainer.callback_metrics["val/accuracy"])


MINILM_SMALL = [
    "--config", str(CONFIGS / "minilm-titles.yaml"),
    "--data.init_args.source.init_args.num_items", "400",
    "--data.init_args.source.init_args.num_categories", "20",
    "--model.init_args.num_labels", "20",
    "--data.init_args.batch_size", "16",
    "--model.init_args.warmup_steps", "2",
    "--trainer.max_epochs", "2",
    *QUIET,
]  # fmt: skip


def test_cli_fit_on_minilm_smoa_beats_the_frozen_model(tmp_path, monkeypatch, data_cache):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    from lightning_rec.blocks import smoa_lora_config
    from lightning_rec.hub.peft_layout import read_peft_adapter_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_REC_CACHE", data_cache)
    frozen = run_cli(["fit", *MINILM_SMALL, "--model.init_args.method", "frozen",
                      "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false"])  # fmt: skip
    smoa = run_cli(["fit", *MINILM_SMALL])
    assert _accuracy(smoa) > _accuracy(frozen) + 0.1, (_accuracy(smoa), _accuracy(frozen))

    # The checkpoint holds the trained tensors only, and `test` restores them.
    checkpoint = tmp_path / "outputs" / "smoa-minilm-titles" / "checkpoints" / "best.ckpt"
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert set(state) == smoa.model.trained_keys() and len(state) == 6 * 2 * 6 + 2
    tested = run_cli(["test", *MINILM_SMALL, "--ckpt_path", str(checkpoint)])
    assert all(torch.equal(tested.model.state_dict()[key], value) for key, value in state.items())
    assert float(tested.trainer.callback_metrics["test/accuracy"]) > 0.3

    # Saved for the Hub: the card names the base model; the folder is a PEFT adapter of MiniLM too.
    model = tested.model.eval()
    model.save_pretrained(tmp_path / "hub")
    card = (tmp_path / "hub" / "README.md").read_text()
    assert f"base_model: {MINILM_HUB_ID}" in card and "2601.07507" in card and "test/accuracy" in card
    assert (
        json.loads((tmp_path / "hub" / "vocab.json").read_text())["labels"] == tested.datamodule.label_names
    )
    batch = model.encode_texts(["Acme Sleek Red Wooden Lamp", "a blue mug"])
    expected = model(**batch)
    assert torch.equal(AdapterFineTune.from_pretrained(tmp_path / "hub")(**batch), expected)
    base = AutoModelForSequenceClassification.from_pretrained(
        resolve_pretrained(MINILM_HUB_ID), num_labels=20
    )
    config = smoa_lora_config(**read_peft_adapter_config(tmp_path / "hub"))
    peft_model = PeftModel.from_pretrained(base, tmp_path / "hub", config=config).eval()
    torch.testing.assert_close(peft_model(**batch).logits, expected)


def test_cli_instruction_tuning_of_a_tiny_causal_lm_lowers_the_response_loss(
    tmp_path, monkeypatch, data_cache, local_hub
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTNING_REC_CACHE", data_cache)
    small = [
        "--config", str(CONFIGS / "qwen2-tiny-instruction.yaml"),
        "--data.init_args.source.init_args.num_items", "300",
        "--trainer.max_epochs", "3",
        *QUIET,
    ]  # fmt: skip
    before = run_cli(["validate", *small])
    fitted = run_cli(["fit", *small])
    start, end = (
        float(before.trainer.callback_metrics["val/loss"]),
        float(fitted.trainer.callback_metrics["val/loss"]),
    )
    assert end < start - 0.3, (start, end)  # from ~ln(30522): the uniform guess of the untrained model
    assert fitted.model.vocab is None and fitted.datamodule.task == "instruction"

    # `lightning-rec push` turns the (adapter-only) checkpoint into an adapter repo without a config.
    from lightning_rec.cli import main

    checkpoint = tmp_path / "outputs" / "smoa-qwen2-tiny-instruction" / "checkpoints" / "best.ckpt"
    main(["push", "--ckpt_path", str(checkpoint), "--repo_id", "org/smoa-qwen2", "--token", "t"])
    pulled = AdapterFineTune.from_pretrained("org/smoa-qwen2")
    trained = fitted.model.eval()
    trained.load_state_dict(torch.load(checkpoint, weights_only=True)["state_dict"])  # the best epoch's
    ids = torch.randint(1000, 2000, (2, 6))
    assert torch.equal(pulled(ids, torch.ones_like(ids)), trained(ids, torch.ones_like(ids)))
