"""Tests for lightning_rec/blocks/prompts.py on tiny random ViT and BERT encoders built from configs."""

import pytest
import torch
from einops import rearrange

from lightning_rec.blocks import DeepPrompts, tiny_vit_config

BERT_CONFIG = {
    "model_type": "bert",
    "vocab_size": 50,
    "hidden_size": 16,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 64,
}


def vit_prompts(**overrides) -> DeepPrompts:
    torch.manual_seed(0)
    arguments = {"num_experts": 3, "prompt_length": 4, "prompt_layers": (0, 1), **overrides}
    return DeepPrompts(tiny_vit_config(), **arguments)


def pixels(batch: int = 5) -> torch.Tensor:
    return torch.rand(batch, 1, 8, 8, generator=torch.Generator().manual_seed(1))


def manual_vit(model: DeepPrompts, images: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """The official FlyGCL loop written out: append the expert's prompts before each prompted block,
    drop them after it, final LayerNorm, CLS token; the prompts carry the CLS position embedding
    (``prompts + pos_embed[:, :1, :]``) unless the model was built without it."""
    backbone = model.backbone
    hidden = backbone.embeddings(images)
    length = hidden.shape[1]
    cls_position = backbone.embeddings.position_embeddings[0, 0] if model.add_cls_position else 0.0
    for index, layer in enumerate(backbone.layers):
        if index in model.prompt_layers:
            prompts = model.prompts[experts, model.prompt_layers.index(index)] + cls_position
            hidden = torch.cat([hidden, prompts], dim=1)
        hidden = layer(hidden, None)[:, :length]
    return backbone.layernorm(hidden)[:, 0]


@pytest.mark.parametrize("add_cls_position", [True, False])
def test_vit_prompts_equal_the_official_loop_written_out(add_cls_position):
    model = vit_prompts(add_cls_position=add_cls_position)
    with torch.no_grad():
        model.prompts.normal_()  # distinct prompts per expert and layer
    experts = torch.tensor([2, 0, 1, 2, 0])
    images = pixels()
    torch.testing.assert_close(model({"pixel_values": images}, experts), manual_vit(model, images, experts))
    # Without experts (the router's feature), the frozen encoder alone.
    plain = model.backbone(pixel_values=images).last_hidden_state[:, 0]
    torch.testing.assert_close(model({"pixel_values": images}), plain)
    assert not torch.allclose(model({"pixel_values": images}, experts), plain)


def bert_prompts() -> DeepPrompts:
    torch.manual_seed(0)
    model = DeepPrompts(BERT_CONFIG, num_experts=2, prompt_length=3, prompt_layers=(0, 2), pooling="mean")
    with torch.no_grad():
        model.prompts.normal_()
    return model


def test_bert_prompts_equal_a_manual_loop_and_ignore_padding():
    model = bert_prompts()
    ids = torch.tensor([[2, 7, 9, 4, 3], [2, 11, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    experts = torch.tensor([1, 0])
    features = model({"input_ids": ids, "attention_mask": mask}, experts)

    backbone = model.backbone
    hidden = backbone.embeddings(input_ids=ids)
    keys = torch.cat([mask, torch.ones(2, 3, dtype=mask.dtype)], dim=1)  # prompts are always visible
    additive = rearrange((1.0 - keys.float()) * torch.finfo(torch.float32).min, "b k -> b 1 1 k")
    cls_position = backbone.embeddings.position_embeddings.weight[0]  # BERT's position 0
    for index, layer in enumerate(backbone.encoder.layer):
        if index in model.prompt_layers:
            prompts = model.prompts[experts, model.prompt_layers.index(index)] + cls_position
            hidden = torch.cat([hidden, prompts], dim=1)
            hidden = layer(hidden, additive)[:, :5]
        else:
            hidden = layer(hidden, additive[..., :5])
    weights = rearrange(mask.float(), "b n -> b n 1")
    expected = (hidden * weights).sum(1) / weights.sum(1)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)

    # The padded row gives what it gives alone, unpadded.
    alone = model({"input_ids": ids[1:, :3], "attention_mask": mask[1:, :3]}, experts[1:])
    torch.testing.assert_close(features[1:], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", ["vit", "bert"])
def test_from_model_wraps_an_existing_instance_with_its_weights(family, tmp_path):
    from transformers import AutoConfig, BertModel, ViTForImageClassification

    torch.manual_seed(5)
    if family == "vit":
        config = AutoConfig.for_model(**{**tiny_vit_config(), "num_labels": 4})
        users_model = ViTForImageClassification(config)  # a task model: its ViT encoder is wrapped
        encoder, inputs = users_model.vit, {"pixel_values": pixels()}
    else:
        users_model = encoder = BertModel(AutoConfig.for_model(**BERT_CONFIG))
        inputs = {
            "input_ids": torch.randint(0, 50, (5, 6)),
            "attention_mask": torch.ones(5, 6, dtype=torch.long),
        }
    wrapped = DeepPrompts.from_model(users_model, num_experts=2, prompt_length=3, prompt_layers=(0, 1))
    assert wrapped.backbone is encoder and not any(p.requires_grad for p in encoder.parameters())
    # Oracle: the same encoder built from its config with the user's weights copied in.
    arguments = wrapped.config_tree()["init_args"]
    rebuilt = DeepPrompts(
        arguments["backbone_config"], 2, 3, (0, 1), add_pooling_layer=arguments["add_pooling_layer"]
    )
    rebuilt.load_state_dict(wrapped.state_dict())
    experts = torch.tensor([0, 1, 1, 0, 1])
    with torch.no_grad():
        wrapped.prompts.normal_()
        rebuilt.prompts.copy_(wrapped.prompts)
    torch.testing.assert_close(wrapped(inputs, experts), rebuilt(inputs, experts))
    plain = encoder(**inputs).last_hidden_state[:, 0]
    torch.testing.assert_close(wrapped(inputs), plain)
    wrapped.save_pretrained(tmp_path)
    torch.testing.assert_close(
        DeepPrompts.from_pretrained(tmp_path)(inputs, experts), wrapped(inputs, experts)
    )
    with pytest.raises(TypeError, match="Hugging Face model"):
        DeepPrompts.from_model(torch.nn.Linear(3, 3))


def test_gradients_reach_only_the_used_experts_prompts_and_never_the_backbone():
    model = vit_prompts().train()
    assert not model.backbone.training, "the frozen backbone stays in eval mode (no dropout)"
    features = model({"pixel_values": pixels()}, torch.tensor([0, 0, 2, 2, 0]))
    # A random readout: the plain sum of a LayerNorm output is constant, so its gradient is zero.
    (features * torch.randn(features.shape, generator=torch.Generator().manual_seed(3))).sum().backward()
    used = model.prompts.grad.abs().sum(dim=(1, 2, 3))
    assert used[0] > 0 and used[2] > 0 and used[1] == 0
    assert all(parameter.grad is None for parameter in model.backbone.parameters())
    assert {name for name, p in model.named_parameters() if p.requires_grad} == {"prompts"}


def test_init_expert_takes_the_mean_of_the_earlier_experts():
    model = vit_prompts(num_experts=4)
    with torch.no_grad():
        model.prompts.normal_()
    earlier = model.prompts[:2].detach().clone()
    model.init_expert(2)
    torch.testing.assert_close(model.prompts[2], earlier.mean(dim=0))
    first = model.prompts[0].detach().clone()
    model.init_expert(0)
    assert torch.equal(model.prompts[0], first), "expert 0 keeps its initialisation"


def test_zero_prompt_length_is_the_frozen_encoder():
    model = vit_prompts(prompt_length=0)
    images = pixels()
    assert not model.prompts.requires_grad
    torch.testing.assert_close(
        model({"pixel_values": images}, torch.zeros(5, dtype=torch.long)), model({"pixel_values": images})
    )


def test_bad_arguments_name_what_was_expected():
    with pytest.raises(ValueError, match="model_type"):
        DeepPrompts({"hidden_size": 8})
    with pytest.raises(ValueError, match=r"prompt_layers must be distinct block indices in \[0, 2\)"):
        DeepPrompts(tiny_vit_config(), prompt_layers=(0, 5))
    with pytest.raises(ValueError, match="pooling"):
        DeepPrompts(tiny_vit_config(), prompt_layers=(0,), pooling="max")
    with pytest.raises(ValueError, match=r"experts must have shape \(5,\)"):
        vit_prompts()({"pixel_values": pixels()}, torch.zeros(4, dtype=torch.long))
