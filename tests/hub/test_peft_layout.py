"""PEFT's on-disk adapter layout: our writer/reader against PEFT's own save_pretrained / from_pretrained."""

import json
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForSequenceClassification

from lightning_rec.hub.peft_layout import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    PEFT_KEY_PREFIX,
    check_adapter_keys,
    read_peft_adapter,
    read_peft_adapter_config,
    write_peft_adapter,
)

BERT = BertConfig(
    vocab_size=60,
    hidden_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=32,
    num_labels=3,
)


def _bert(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(BERT).eval()


def _trained_lora(seed: int = 0) -> PeftModel:
    model = get_peft_model(
        _bert(seed), LoraConfig(task_type="SEQ_CLS", target_modules=["query", "value"], r=2)
    )
    torch.manual_seed(seed + 100)
    with torch.no_grad():  # as if trained: B away from its zero init
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_()
    return model.eval()


def test_write_then_read_round_trips_with_peft_prefix(tmp_path):
    tensors = {"encoder.q.lora_A": torch.randn(2, 5), "head.weight": torch.arange(6.0).reshape(2, 3).T}
    config = {"peft_type": "LORA", "r": 2, "target_modules": ["q"]}
    write_peft_adapter(tmp_path, config, tensors)
    on_disk = load_file(tmp_path / ADAPTER_WEIGHTS_FILE)
    assert set(on_disk) == {PEFT_KEY_PREFIX + key for key in tensors}
    read_config, read_tensors = read_peft_adapter(tmp_path)
    assert read_config == config == read_peft_adapter_config(tmp_path)
    assert read_tensors.keys() == tensors.keys()
    assert all(torch.equal(read_tensors[key], tensors[key]) for key in tensors)


def test_peft_save_pretrained_folder_reads_as_peft_state(tmp_path):
    """PEFT is the oracle: what its save_pretrained writes is what get_peft_model_state_dict holds."""
    model = _trained_lora()
    model.save_pretrained(tmp_path)
    config, tensors = read_peft_adapter(tmp_path)
    assert config["peft_type"] == "LORA" and config["r"] == 2
    expected = get_peft_model_state_dict(model)
    assert {PEFT_KEY_PREFIX + key for key in tensors} == set(expected)
    assert all(
        torch.equal(tensors[key.removeprefix(PEFT_KEY_PREFIX)], value) for key, value in expected.items()
    )


def test_folder_we_write_loads_in_peft_with_identical_outputs(tmp_path):
    model = _trained_lora()
    state = get_peft_model_state_dict(model)
    config = model.peft_config["default"].to_dict()
    config = {key: sorted(value) if isinstance(value, set) else value for key, value in config.items()}
    write_peft_adapter(
        tmp_path, config, {key.removeprefix(PEFT_KEY_PREFIX): value for key, value in state.items()}
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # PEFT warns about missing adapter keys: none allowed
        loaded = PeftModel.from_pretrained(_bert(), tmp_path).eval()
    ids = torch.randint(0, 60, (3, 7))
    assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_pickled_weights_are_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (tmp_path / ADAPTER_CONFIG_FILE).write_text(json.dumps({"peft_type": "LORA"}))
    (tmp_path / "adapter_model.bin").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(FileNotFoundError, match=r"adapter_model\.bin"):
        read_peft_adapter(tmp_path)
    assert not marker.exists()


def test_malformed_folders_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=ADAPTER_CONFIG_FILE):
        read_peft_adapter_config(tmp_path)
    (tmp_path / ADAPTER_CONFIG_FILE).write_text('{"r": 2}')
    with pytest.raises(ValueError, match="peft_type"):
        read_peft_adapter_config(tmp_path)
    (tmp_path / ADAPTER_CONFIG_FILE).write_text('{"peft_type": "LORA",')
    with pytest.raises(ValueError, match="not valid JSON"):
        read_peft_adapter_config(tmp_path)
    (tmp_path / ADAPTER_CONFIG_FILE).write_text('{"peft_type": "LORA"}')
    save_file({"encoder.q.lora_A": torch.zeros(2)}, tmp_path / ADAPTER_WEIGHTS_FILE)
    with pytest.raises(ValueError, match=r"'encoder\.q\.lora_A' lacks"):
        read_peft_adapter(tmp_path)
    with pytest.raises(ValueError, match="peft_type"):
        write_peft_adapter(tmp_path, {"r": 2}, {"a": torch.zeros(1)})


def test_check_adapter_keys_names_missing_and_unexpected():
    check_adapter_keys({"a": torch.zeros(1)}, {"a"}, "x")
    with pytest.raises(
        RuntimeError, match=r"x does not match.*missing keys \['b'\].*unexpected keys \['c'\]"
    ):
        check_adapter_keys({"a": torch.zeros(1), "c": torch.zeros(1)}, {"a", "b"}, "x")


def test_reads_from_a_hub_repo(tmp_path, local_hub, hub_token):
    from huggingface_hub import HfApi

    model = _trained_lora()
    model.save_pretrained(tmp_path / "adapter")
    HfApi().create_repo("org/lora-tiny", token=hub_token)
    HfApi().upload_folder(repo_id="org/lora-tiny", folder_path=tmp_path / "adapter", token=hub_token)
    config, tensors = read_peft_adapter("org/lora-tiny")
    local_config, local_tensors = read_peft_adapter(tmp_path / "adapter")
    assert config == local_config and tensors.keys() == local_tensors.keys()
    assert all(torch.equal(tensors[key], local_tensors[key]) for key in tensors)
