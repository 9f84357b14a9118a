"""``DeepPrompts``: per-expert deep prompts for a frozen Hugging Face encoder (ViT, BERT-style).

FlyPrompt (arXiv 2602.01976) trains no backbone weight: each expert is a set of prompt tokens
inserted at chosen blocks of a frozen ViT (20 tokens at each of blocks 0-4 in the official code).
At every prompted block the expert's tokens are appended after the sequence, the block runs, and
they are removed again, so each block sees fresh prompts and the output keeps the input's length.
As in the official code (``prompts + backbone.pos_embed[:, :1, :]``), every prompt token first gets
the position embedding of the CLS token (position 0) added; ``add_cls_position=False`` inserts the
raw prompts.

This works on any Hugging Face encoder whose blocks are an ``nn.ModuleList`` called as
``layer(hidden_states, attention_mask, ...)`` (ViT, DeiT, BERT, MiniLM, RoBERTa, ...): a forward
pre-hook appends the prompts (and extends the attention mask so every token may attend to them) and
a forward hook removes them. The backbone is built from its config (weights are loaded by the
caller, e.g. :class:`~lightning_rec.modules.FlyPrompt`) or wraps a model instance with its weights
(:meth:`DeepPrompts.from_model`), frozen, and kept in eval mode (no dropout).

Axis legend:
    b  batch
    n  tokens (patches + CLS, or word pieces)
    e  experts
    l  prompted layers
    p  prompt tokens per layer
    d  hidden size
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from einops import rearrange
from torch import Tensor, nn

from lightning_rec.hub.mixin import HubMixin

__all__ = ["DeepPrompts", "Pooling", "tiny_vit_config"]

Pooling = Literal["cls", "mean"]


class DeepPrompts(HubMixin, nn.Module):
    """A frozen Hugging Face encoder with one set of deep prompts per expert.

    Args:
        backbone_config: the encoder's Hugging Face config as a dict (``config.to_diff_dict()``); it
            must name its ``model_type``. The default is ViT-B/16's architecture (random weights
            until the caller loads pretrained ones into ``backbone``).
        num_experts: prompt sets ``e``.
        prompt_length: prompt tokens ``p`` per prompted layer; 0 gives the frozen encoder alone
            (a linear-probe baseline).
        prompt_layers: indices of the blocks that receive prompts.
        pooling: ``"cls"`` (the first token, ViT's and FlyPrompt's choice) or ``"mean"`` (the mean
            over real tokens, as sentence-transformers pools MiniLM).
        add_cls_position: add the backbone's position-0 (CLS) position embedding to every prompt
            token (the official code); ``False`` inserts the prompts as they are.
        add_pooling_layer: build the encoder with its pooler (unused here; ``False`` matches the
            encoder inside a task model such as ``ViTForImageClassification``, which has none).
        backbone: an existing encoder to wrap instead of building one from ``backbone_config``
            (use :meth:`from_model`).

    Parameters: ``prompts (e l p d)``, initialised uniformly in [0, 1) as in the official code.
    """

    def __init__(
        self,
        backbone_config: dict[str, Any] | None = None,
        num_experts: int = 1,
        prompt_length: int = 20,
        prompt_layers: Sequence[int] = (0, 1, 2, 3, 4),
        pooling: Pooling = "cls",
        add_cls_position: bool = True,
        add_pooling_layer: bool = True,
        backbone: nn.Module | None = None,
    ) -> None:
        super().__init__()
        backbone_config = dict(backbone_config or {"model_type": "vit"})
        if "model_type" not in backbone_config:
            raise ValueError(
                "backbone_config must name its 'model_type' (e.g. 'vit', 'bert'), got keys "
                f"{sorted(backbone_config)}"
            )
        if num_experts < 1 or prompt_length < 0:
            raise ValueError(
                "DeepPrompts: num_experts must be >= 1 and prompt_length >= 0, got "
                f"{num_experts} and {prompt_length}"
            )
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")
        # Imported here: the package itself must import without the [llm] extra.
        from transformers import AutoConfig, AutoModel

        if backbone is None:
            config = AutoConfig.for_model(**backbone_config)
            # Passed only when off: encoders without a pooler do not take the argument.
            pooler = {} if add_pooling_layer else {"add_pooling_layer": False}
            backbone = AutoModel.from_config(config, **pooler)
        config = backbone.config
        self.backbone = backbone
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        layers = _encoder_layers(self.backbone)
        self.prompt_layers = tuple(int(index) for index in prompt_layers)
        if len(set(self.prompt_layers)) != len(self.prompt_layers) or any(
            not 0 <= index < len(layers) for index in self.prompt_layers
        ):
            raise ValueError(
                f"prompt_layers must be distinct block indices in [0, {len(layers)}), "
                f"got {list(prompt_layers)}"
            )
        self.num_experts = num_experts
        self.prompt_length = prompt_length
        self.pooling = pooling
        self.hidden_size = int(config.hidden_size)
        self.add_cls_position = add_cls_position
        if add_cls_position:
            _cls_position_embedding(self.backbone)  # fail now, not at the first forward
        self.prompts = nn.Parameter(
            torch.rand(num_experts, len(self.prompt_layers), prompt_length, self.hidden_size),
            requires_grad=prompt_length > 0,
        )
        # The prompts of the current call, `b l p d`; set only for the duration of a forward.
        self._inserted: Tensor | None = None
        for slot, index in enumerate(self.prompt_layers):
            layers[index].register_forward_pre_hook(_PromptInsertion(self, slot), with_kwargs=True)
            layers[index].register_forward_hook(_PromptRemoval(self))

    hub_config_exclude = ("backbone",)  # recorded as backbone_config; its weights are in the state dict

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        num_experts: int = 1,
        prompt_length: int = 20,
        prompt_layers: Sequence[int] = (0, 1, 2, 3, 4),
        pooling: Pooling = "cls",
        add_cls_position: bool = True,
    ) -> DeepPrompts:
        """Deep prompts on an existing Hugging Face encoder instance (``ViTModel``, ``BertModel``, or a
        task model such as ``ViTForImageClassification``, whose base encoder is taken), with its
        weights: the model is used in place (and frozen), not copied."""
        encoder = getattr(model, "base_model", model)
        config = getattr(encoder, "config", None)
        if config is None or not getattr(config, "model_type", None):
            raise TypeError(
                f"from_model needs a Hugging Face model with a config naming its model_type, got "
                f"{type(model).__name__}"
            )
        backbone_config = {**config.to_diff_dict(), "model_type": config.model_type}
        return cls(
            backbone_config,
            num_experts,
            prompt_length,
            prompt_layers,
            pooling,
            add_cls_position,
            add_pooling_layer=getattr(encoder, "pooler", None) is not None,
            backbone=encoder,
        )

    @classmethod
    def hub_example(cls) -> tuple[DeepPrompts, tuple[dict[str, Tensor], Tensor]]:
        """Prompts (2 experts, 3 tokens at blocks 0 and 1) on a tiny random ViT over 8x8 grey
        images, and 2 images with their experts."""
        prompts = cls(tiny_vit_config(), num_experts=2, prompt_length=3, prompt_layers=(0, 1))
        pixels = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        return prompts, ({"pixel_values": pixels}, torch.tensor([0, 1]))

    def train(self, mode: bool = True) -> DeepPrompts:
        """Switch the prompts' mode; the frozen backbone stays in eval mode (no dropout)."""
        super().train(mode)
        self.backbone.eval()
        return self

    def forward(self, inputs: Mapping[str, Tensor], experts: Tensor | None = None) -> Tensor:
        """Pooled features ``(b d)`` of the backbone's inputs (``pixel_values (b c h w)``, or
        ``input_ids (b n)`` + ``attention_mask (b n)``), with each sample's expert prompts
        (``experts (b)``, long) or without prompts (``experts=None``: the frozen encoder alone)."""
        if experts is not None and self.prompt_length > 0:
            batch = next(iter(inputs.values())).shape[0]
            if experts.shape != (batch,):
                raise ValueError(f"experts must have shape ({batch},), got {tuple(experts.shape)}")
            prompts = self.prompts[experts.long()]  # (b l p d)
            if self.add_cls_position:
                prompts = prompts + _cls_position_embedding(self.backbone).to(prompts.dtype)
            self._inserted = prompts
        try:
            hidden = self.backbone(**inputs).last_hidden_state  # (b n d)
        finally:
            self._inserted = None
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = inputs.get("attention_mask")
        if mask is None:
            return hidden.mean(dim=1)
        weights = rearrange(mask.to(hidden.dtype), "b n -> b n 1")
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)

    @torch.no_grad()
    def init_expert(self, expert: int) -> None:
        """Start ``expert``'s prompts at the mean of the earlier experts' (FlyPrompt's new expert)."""
        if not 0 <= expert < self.num_experts:
            raise ValueError(f"expert must lie in [0, {self.num_experts}), got {expert}")
        if expert > 0:
            self.prompts[expert] = self.prompts[:expert].mean(dim=0)


class _PromptInsertion:
    """Forward pre-hook of a prompted block: append this call's prompts for the block's slot."""

    def __init__(self, owner: DeepPrompts, slot: int) -> None:
        self.owner = owner
        self.slot = slot

    def __call__(self, layer: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        inserted = self.owner._inserted
        if inserted is None:
            return None
        hidden, *rest = args
        prompts = inserted[:, self.slot].to(hidden.dtype)  # (b p d)
        hidden = torch.cat([hidden, prompts], dim=1)
        if rest:
            rest[0] = _extend_mask(rest[0], prompts.shape[1])
        elif "attention_mask" in kwargs:
            kwargs = {**kwargs, "attention_mask": _extend_mask(kwargs["attention_mask"], prompts.shape[1])}
        return (hidden, *rest), kwargs


class _PromptRemoval:
    """Forward hook of a prompted block: drop the prompt tokens from its output."""

    def __init__(self, owner: DeepPrompts) -> None:
        self.owner = owner

    def __call__(self, layer: nn.Module, args: tuple, output: Any) -> Any:
        inserted = self.owner._inserted
        if inserted is None:
            return None
        length = inserted.shape[2]
        if isinstance(output, tuple):  # older transformers return (hidden_states, ...)
            return (output[0][:, :-length], *output[1:])
        return output[:, :-length]


def _extend_mask(mask: Tensor | None, extra: int) -> Tensor | None:
    """Attention mask ``(b 1 q k)`` (bool "may attend", or additive float) -> ``(b 1 q+p k+p)``.

    Every query may attend to the prompts; the prompts' own query rows may attend to every key
    (their outputs are dropped, and a fully masked row would be NaN).
    """
    if mask is None:
        return None
    if mask.dim() != 4:
        raise ValueError(f"DeepPrompts supports 4-d attention masks (b 1 q k), got shape {tuple(mask.shape)}")
    open_value = True if mask.dtype == torch.bool else 0.0
    b, h, q, k = mask.shape
    mask = torch.cat([mask, mask.new_full((b, h, q, extra), open_value)], dim=3)
    if q == 1:  # broadcast over queries
        return mask
    return torch.cat([mask, mask.new_full((b, h, extra, k + extra), open_value)], dim=2)


def _cls_position_embedding(backbone: nn.Module) -> Tensor:
    """``(d)``: the position embedding of position 0 (the CLS token's): ViT's learned ``(1 n d)``
    parameter, or row 0 of BERT-style ``nn.Embedding`` positions."""
    positions = getattr(getattr(backbone, "embeddings", None), "position_embeddings", None)
    if isinstance(positions, nn.Embedding):
        return positions.weight[0]
    if isinstance(positions, Tensor) and positions.dim() == 3:
        return positions[0, 0]
    raise ValueError(
        f"{type(backbone).__name__} has no learned position embeddings (embeddings.position_embeddings) to "
        "add to the prompts; use add_cls_position=False"
    )


def _encoder_layers(backbone: nn.Module) -> nn.ModuleList:
    """The backbone's list of transformer blocks: the ``nn.ModuleList`` of ``num_hidden_layers`` modules."""
    depth = backbone.config.num_hidden_layers
    for module in backbone.modules():
        if isinstance(module, nn.ModuleList) and len(module) == depth:
            return module
    raise ValueError(
        f"{type(backbone).__name__} has no nn.ModuleList of its {depth} blocks; DeepPrompts supports "
        "Hugging Face encoders such as ViT and BERT"
    )


def tiny_vit_config(image_size: int = 8, num_channels: int = 1, hidden_size: int = 32) -> dict[str, Any]:
    """A tiny ViT's config (patches of 2 pixels, 2 blocks, 2 heads), for tests and CI runs on digits.

    Its random weights are drawn with std 0.2 rather than ViT's 0.02: with 0.02 the frozen encoder's
    CLS output is nearly the same for every image (a linear probe on digits scores 0.53 instead of 0.75).
    """
    return {
        "model_type": "vit",
        "image_size": image_size,
        "patch_size": 2,
        "num_channels": num_channels,
        "hidden_size": hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 2 * hidden_size,
        "initializer_range": 0.2,
    }
