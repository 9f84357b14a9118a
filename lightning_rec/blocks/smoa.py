"""SMoA, the structured modulation adapter (arXiv 2601.07507): a high-rank, mergeable update of a Linear.

SMoA freezes the pretrained weight ``W0`` (``d_out x d_in``) and learns to amplify or suppress its own
entries inside ``K`` aligned diagonal blocks::

    W' = W0 + (alpha / r) ΔW,    ΔW[rows_k, cols_k] = (B_k A_k) ∘ W0[rows_k, cols_k],    ΔW = 0 elsewhere

The rank budget ``r`` is split evenly across the blocks (``B_k``: ``d_out/K x r/K``, ``A_k``:
``r/K x d_in/K``), so a layer trains ``r (d_in + d_out) / K`` parameters, ``1/K`` of a rank-``r`` LoRA,
while ``rank(X ∘ Y) <= rank X · rank Y`` lets each block of ``ΔW`` reach full rank: the update's
rank is bounded by ``min(d_in, d_out)``, not by ``r``. As in LoRA, ``A_k`` starts Kaiming-uniform and
``B_k`` at zero, so ``W' = W0`` at step 0, and the update can be merged into ``W0`` for inference.

Partition (the official code, misonsky/SMoA, ``cpeft/tuners/smoa.py``): ``"spectral"`` takes one SVD
``W0 = U diag(s) Vᵀ`` at injection, gives row ``i`` the spectral centre of mass
``Σ_j j U_ij² s_j² / Σ_j U_ij² s_j²`` (columns likewise with ``V``), sorts rows and columns by it and
cuts both into ``K`` equal slices, so block ``k`` pairs the rows and columns dominated by the same band
of singular directions. ``"contiguous"`` cuts the natural order instead (no SVD). The partition is
stored with the adapter (integer buffers ``rows``, ``cols``), so a saved adapter is reproduced exactly
on any device without trusting a second SVD to sort near-ties the same way.

Cost: the forward never builds the ``d_out x d_in`` update. It gathers the ``K`` anchors
``W0[rows_k, cols_k]`` (``d_out d_in / K`` entries, read from the base weight at each call, so no
copy of ``W0`` is kept), modulates them, and applies them as one batched matmul of ``K`` blocks:
``1/K`` of the base layer's multiply-adds per token.

Interoperation with PEFT (0.21):

- :func:`save_smoa` writes PEFT's on-disk layout (``adapter_config.json`` with ``peft_type: "LORA"``
  and the SMoA fields ``smoa_num_blocks`` / ``smoa_partition``; ``adapter_model.safetensors`` with
  keys ``base_model.model.<module>.smoa.{lora_A, lora_B, rows, cols}``), and :func:`load_smoa` reads it.
- The same folder loads through PEFT's custom-module route (``LoraConfig._register_custom_module``):
  ``PeftModel.from_pretrained(base, folder, config=smoa_lora_config(**read_peft_adapter_config(folder)))``.
  :func:`smoa_lora_config` builds a ``LoraConfig`` subclass that carries the SMoA fields and maps
  ``nn.Linear`` to an SMoA layer written to PEFT's tuner-layer conventions; ``get_peft_model`` with
  it trains SMoA through PEFT as well. Limits: one SMoA adapter per model (PEFT would wrap a second
  one around the first), ``nn.Linear`` targets only, and no DoRA / LoRA bias / ``fan_in_fan_out``.
  A plain ``PeftModel.from_pretrained(base, folder)`` without ``config=`` cannot know the SMoA layer:
  PEFT's ``LoraConfig`` drops the unknown SMoA fields with a warning, builds ordinary LoRA layers
  and warns about missing adapter keys: the SMoA update is absent (only ``modules_to_save``, such
  as a classification head, loads).

Axes: k blocks, o rows per block (``d_out / K``), i columns per block (``d_in / K``), r rank per block
(``r / K``), ``...`` the input's leading axes.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from einops import einsum, rearrange
from torch import Tensor, nn

from lightning_rec.hub.mixin import HubMixin
from lightning_rec.hub.peft_layout import check_adapter_keys, read_peft_adapter, write_peft_adapter

if TYPE_CHECKING:
    from peft import LoraConfig

__all__ = [
    "SMoALinear",
    "block_partition",
    "inject_smoa",
    "load_smoa",
    "save_smoa",
    "smoa_adapter_config",
    "smoa_lora_config",
    "smoa_state_dict",
]

PartitionName = Literal["spectral", "contiguous"]
TargetModules = str | Sequence[str]


def block_partition(
    weight: Tensor, num_blocks: int, partition: PartitionName = "spectral"
) -> tuple[Tensor, Tensor]:
    """Split the rows and the columns of ``weight (d_out d_in)`` into ``num_blocks`` aligned groups.

    Returns ``rows (k o)`` and ``cols (k i)``, long tensors: block ``k`` covers
    ``weight[rows[k]][:, cols[k]]``. ``"spectral"`` orders rows and columns by their spectral centre of
    mass (see the module docstring); ``"contiguous"`` keeps the natural order.
    """
    d_out, d_in = weight.shape
    if num_blocks < 1 or d_out % num_blocks or d_in % num_blocks:
        raise ValueError(
            f"a {d_out} x {d_in} weight cannot be cut into num_blocks={num_blocks} equal diagonal blocks"
        )
    if partition == "contiguous":
        row_order = torch.arange(d_out, device=weight.device)
        col_order = torch.arange(d_in, device=weight.device)
    elif partition == "spectral":
        # float64 on the CPU: the same W0 gives the same order on any machine up to true ties.
        u, s, vh = torch.linalg.svd(weight.detach().to("cpu", torch.float64), full_matrices=False)
        row_order = _spectral_order(u, s).to(weight.device)
        col_order = _spectral_order(vh.T, s).to(weight.device)
    else:
        raise ValueError(f"partition must be 'spectral' or 'contiguous', got {partition!r}")
    rows = rearrange(row_order, "(k o) -> k o", k=num_blocks)
    cols = rearrange(col_order, "(k i) -> k i", k=num_blocks)
    return rows, cols


def _spectral_order(vectors: Tensor, singular_values: Tensor) -> Tensor:
    """Indices sorted by ``Σ_j j v_ij² s_j² / Σ_j v_ij² s_j²``; ``vectors (d q)``, ``singular_values (q)``."""
    energy = vectors.square() * singular_values.square()  # (d q)
    index = torch.arange(len(singular_values), dtype=energy.dtype)
    centre = (energy * index).sum(1) / energy.sum(1).clamp_min(torch.finfo(energy.dtype).tiny)
    return torch.argsort(centre, stable=True)


class _SMoAUpdate(nn.Module):
    """The adapter part of one SMoA layer: the block partition and the per-block factors ``B_k``, ``A_k``.

    Shared by :class:`SMoALinear` and the PEFT layer, so both name their tensors ``lora_A (k r i)``,
    ``lora_B (k o r)``, ``rows (k o)``, ``cols (k i)``. It holds no copy of ``W0``: every method takes
    the base weight, and ``merge_into`` keeps the overwritten anchors so ``unmerge_from`` restores
    them bit for bit.
    """

    def __init__(
        self, weight: Tensor, r: int, num_blocks: int, alpha: float, dropout: float, partition: PartitionName
    ) -> None:
        super().__init__()
        d_out, d_in = weight.shape
        if num_blocks < 1 or r < num_blocks or r % num_blocks:
            raise ValueError(
                f"r must be a positive multiple of num_blocks={num_blocks} (r/K per block), got {r}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        rows, cols = block_partition(weight, num_blocks, partition)
        self.register_buffer("rows", rows)
        self.register_buffer("cols", cols)
        block_rank = r // num_blocks
        factory = {"dtype": weight.dtype, "device": weight.device}
        self.lora_A = nn.Parameter(torch.empty(num_blocks, block_rank, d_in // num_blocks, **factory))
        self.lora_B = nn.Parameter(torch.zeros(num_blocks, d_out // num_blocks, block_rank, **factory))
        for block in self.lora_A:
            # nn.Linear(d_in / K, r / K)'s default init, as LoRA's A: the product starts at zero through B.
            nn.init.kaiming_uniform_(block, a=math.sqrt(5))
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.register_buffer("premerge_anchors", None, persistent=False)

    @property
    def merged(self) -> bool:
        return self.premerge_anchors is not None

    def anchors(self, weight: Tensor) -> Tensor:
        """``(k o i)``: the frozen diagonal blocks ``W0[rows_k, cols_k]``."""
        return weight[self.rows[:, :, None], self.cols[:, None, :]]

    def block_updates(self, weight: Tensor) -> Tensor:
        """``(k o i)``: ``(alpha / r) (B_k A_k) ∘ W0[rows_k, cols_k]``, the nonzero blocks of scaled ΔW."""
        modulation = einsum(self.lora_B, self.lora_A, "k o r, k r i -> k o i")
        return self.scaling * modulation * self.anchors(weight).to(modulation.dtype)

    def forward(self, x: Tensor, weight: Tensor, base_output: Tensor) -> Tensor:
        """``base_output (... d_out) + ΔW x`` for ``x (... d_in)``, block by block (one batched matmul)."""
        tokens = self.dropout(x).to(self.lora_A.dtype).reshape(-1, x.shape[-1])  # (m d_in), m = prod(...)
        # Gather the columns in block order; the (m k i) -> (k m i) transpose is a view bmm reads as is.
        x_blocks = rearrange(
            tokens.index_select(-1, self.cols.flatten()), "m (k i) -> k m i", k=len(self.cols)
        )
        y = torch.bmm(x_blocks, self.block_updates(weight).transpose(1, 2))  # (k m o)
        # Outputs come in block order: undo the row permutation with its inverse.
        y = rearrange(y, "k m o -> m (k o)").index_select(-1, torch.argsort(self.rows.flatten()))
        return base_output + y.reshape(base_output.shape).to(base_output.dtype)

    def delta_weight(self, weight: Tensor) -> Tensor:
        """``(d_out d_in)``: the whole scaled update (for merge checks and rank analysis; not the forward)."""
        delta = torch.zeros_like(weight, dtype=self.lora_A.dtype)
        delta[self.rows[:, :, None], self.cols[:, None, :]] = self.block_updates(weight)
        return delta

    @torch.no_grad()
    def merge_into(self, weight: Tensor) -> None:
        if self.merged:
            raise RuntimeError("this SMoA update is already merged")
        updates = self.block_updates(weight)
        self.premerge_anchors = self.anchors(weight).clone()
        weight[self.rows[:, :, None], self.cols[:, None, :]] += updates.to(weight.dtype)

    @torch.no_grad()
    def unmerge_from(self, weight: Tensor) -> None:
        if not self.merged:
            raise RuntimeError("this SMoA update is not merged")
        # Off-diagonal entries were never touched, so writing the anchors back restores W0 exactly.
        weight[self.rows[:, :, None], self.cols[:, None, :]] = self.premerge_anchors
        self.premerge_anchors = None


class SMoALinear(HubMixin, nn.Module):
    """A frozen ``nn.Linear`` with an SMoA update: ``y = (W0 + (alpha / r) ΔW) x + b``.

    Args:
        base: the pretrained layer; its parameters are frozen.
        r: rank budget, split evenly over the blocks (a multiple of ``num_blocks``).
        num_blocks: ``K``, the number of diagonal blocks (must divide ``in_features`` and ``out_features``).
        alpha: scale numerator: the update is multiplied by ``alpha / r``.
        dropout: dropout on the adapter's input (the base path sees the clean input).
        partition: ``"spectral"`` (SVD centre-of-mass order, once here) or ``"contiguous"``.

    Shapes: ``forward`` maps ``(... in_features)`` to ``(... out_features)``.
    State dict: ``base_layer.{weight, bias}`` and ``smoa.{lora_A (k r/K i), lora_B (k o r/K), rows (k o),
    cols (k i)}``.
    A merged layer's state dict holds the merged weight (as PEFT's): unmerge before saving it.
    """

    hub_config_exclude = ("base",)  # an nn.Linear records no arguments: config_tree writes its shape

    def __init__(
        self,
        base: nn.Linear,
        r: int = 8,
        num_blocks: int = 2,
        alpha: float = 16.0,
        dropout: float = 0.0,
        partition: PartitionName = "spectral",
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"base must be an nn.Linear, got {type(base).__name__}")
        self.base_layer = base.requires_grad_(False)
        self.smoa = _SMoAUpdate(base.weight.detach(), r, num_blocks, alpha, dropout, partition)
        self.r, self.num_blocks, self.alpha, self.dropout, self.partition = (
            r,
            num_blocks,
            alpha,
            dropout,
            partition,
        )

    # Hugging Face code reads `.weight` / `.bias` of the layers it owns (dtype probes, tied heads).
    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    @property
    def merged(self) -> bool:
        return self.smoa.merged

    def forward(self, x: Tensor) -> Tensor:
        output = self.base_layer(x)
        if self.merged:
            return output
        return self.smoa(x, self.base_layer.weight, output)

    def delta_weight(self) -> Tensor:
        """``(out_features in_features)``: the scaled update ``(alpha / r) ΔW`` of the current factors."""
        if self.merged:
            raise RuntimeError("delta_weight() needs the unmerged W0: call unmerge() first")
        return self.smoa.delta_weight(self.base_layer.weight)

    def merge(self) -> None:
        """Add the update into the base weight (the forward then costs what the base layer costs)."""
        self.smoa.merge_into(self.base_layer.weight)

    def unmerge(self) -> None:
        """Restore the base weight exactly (the diagonal blocks are written back, not subtracted)."""
        self.smoa.unmerge_from(self.base_layer.weight)

    def config_tree(self) -> dict[str, Any]:
        """The base layer is recorded by its shape (``torch.nn.Linear``); its weights, in the state dict."""
        tree = super().config_tree()
        base = {
            "class_path": "torch.nn.Linear",
            "init_args": {
                "in_features": self.base_layer.in_features,
                "out_features": self.base_layer.out_features,
                "bias": self.base_layer.bias is not None,
            },
        }
        tree["init_args"] = {"base": base, **tree["init_args"]}
        return tree

    @classmethod
    def hub_example(cls) -> tuple[SMoALinear, tuple[Tensor]]:
        """A ``12 -> 8`` layer with trained-looking (nonzero) factors, and an input ``(3 5 12)``."""
        layer = cls(nn.Linear(12, 8), r=4, num_blocks=2, alpha=8.0)
        with torch.no_grad():
            layer.smoa.lora_B.normal_()
        return layer, (torch.randn(3, 5, 12),)

    def extra_repr(self) -> str:
        return f"r={self.r}, num_blocks={self.num_blocks}, alpha={self.alpha}, partition={self.partition!r}"


# ---------------------------------------------------------------------------------------- injection
def _is_target(name: str, target_modules: TargetModules) -> bool:
    """PEFT's rule: a string is a regex on the full module name; a list matches a name or a name suffix."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == target or name.endswith(f".{target}") for target in target_modules)


def inject_smoa(
    model: nn.Module,
    target_modules: TargetModules,
    r: int = 8,
    num_blocks: int = 2,
    alpha: float = 16.0,
    dropout: float = 0.0,
    partition: PartitionName = "spectral",
) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` named by ``target_modules`` with an :class:`SMoALinear`.

    ``target_modules`` follows PEFT: a list of names matches a module whose full name equals one of
    them or ends with ``.<name>`` (``["query", "value"]``, ``["q_proj", "v_proj"]``); a string is a
    regular expression on the full name. Every parameter of ``model`` is then frozen except the SMoA
    factors (unfreeze a task head yourself). The model is changed in place and returned.
    """
    if isinstance(target_modules, Sequence) and not isinstance(target_modules, str) and not target_modules:
        raise ValueError("target_modules is empty")
    targets = [
        (name, module) for name, module in model.named_modules() if name and _is_target(name, target_modules)
    ]
    if not targets:
        linear = sorted(
            {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ValueError(
            f"target_modules={target_modules!r} matched no module; the model's linear layers are {linear}"
        )
    for name, module in targets:
        if isinstance(module, SMoALinear):
            raise ValueError(f"{name} already has an SMoA adapter")
        if type(module) is not nn.Linear:
            raise TypeError(f"target {name} is a {type(module).__name__}; SMoA adapts nn.Linear layers only")
    model.requires_grad_(False)
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, SMoALinear(module, r, num_blocks, alpha, dropout, partition))
    return model


def _is_under_module(key: str, module_name: str) -> bool:
    """Whether state key ``key`` lies in a module matched by ``module_name`` (PEFT's modules_to_save rule)."""
    parts = key.split(".")
    return any(_is_target(".".join(parts[:end]), [module_name]) for end in range(1, len(parts)))


def _smoa_layers(model: nn.Module) -> list[tuple[str, SMoALinear]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, SMoALinear)]


def smoa_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter's tensors, keyed by their names in ``model``: the trainable factors ``*.smoa.lora_A`` /
    ``*.smoa.lora_B`` of every SMoA layer, and the integer block partition ``*.smoa.rows`` / ``*.smoa.cols``
    they were trained on (frozen; a few bytes per row). No base weight."""
    state = {}
    for name, layer in _smoa_layers(model):
        for key, value in layer.smoa.state_dict().items():
            state[f"{name}.smoa.{key}"] = value.detach()
    return state


def smoa_adapter_config(model: nn.Module, **peft_fields: Any) -> dict[str, Any]:
    """The ``adapter_config.json`` of ``model``'s SMoA layers: PEFT ``LoraConfig`` fields plus
    ``smoa_num_blocks`` / ``smoa_partition``; ``peft_fields`` adds more (``task_type``, ``modules_to_save``,
    ``base_model_name_or_path``). ``target_modules`` lists the adapted layers by full name."""
    layers = _smoa_layers(model)
    if not layers:
        raise ValueError("the model has no SMoA layer: call inject_smoa first")
    settings = {
        (layer.r, layer.num_blocks, layer.alpha, layer.dropout, layer.partition) for _, layer in layers
    }
    if len(settings) > 1:
        raise ValueError(
            f"the model's SMoA layers differ in (r, num_blocks, alpha, dropout, partition): {settings}"
        )
    r, num_blocks, alpha, dropout, partition = settings.pop()
    return {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": [name for name, _ in layers],
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "smoa_num_blocks": num_blocks,
        "smoa_partition": partition,
        **peft_fields,
    }


def save_smoa(
    model: nn.Module,
    directory: str | Path,
    modules_to_save: Sequence[str] = (),
    **peft_fields: Any,
) -> None:
    """Write ``model``'s SMoA adapter in PEFT's layout (adapter_config.json, adapter_model.safetensors).

    ``modules_to_save`` names whole modules saved beside the adapter (a trained task head,
    ``["classifier"]``), as PEFT does; ``peft_fields`` go into the config (see :func:`smoa_adapter_config`).
    """
    tensors = smoa_state_dict(model)
    for module_name in modules_to_save:
        for key, value in model.get_submodule(module_name).state_dict().items():
            tensors[f"{module_name}.{key}"] = value
    config = smoa_adapter_config(model, modules_to_save=list(modules_to_save) or None, **peft_fields)
    write_peft_adapter(directory, config, tensors)


def load_smoa(model: nn.Module, source: str | Path) -> nn.Module:
    """Load an adapter written by :func:`save_smoa` (a folder or Hub repo) into ``model``, in place.

    Injects the SMoA layers its config names unless ``model`` already has SMoA layers, then loads the
    factors, the partition and the ``modules_to_save`` with strict checking: a missing or unexpected
    key, or a shape that differs, is an error naming it.
    """
    config, tensors = read_peft_adapter(source)
    if config.get("peft_type") != "LORA" or "smoa_num_blocks" not in config:
        raise ValueError(
            f"{source} is not an SMoA adapter (its adapter_config.json has no 'smoa_num_blocks')"
        )
    if not _smoa_layers(model):
        inject_smoa(
            model,
            target_modules=config["target_modules"],
            r=config["r"],
            num_blocks=config["smoa_num_blocks"],
            alpha=config["lora_alpha"],
            dropout=config["lora_dropout"],
            partition=config["smoa_partition"],
        )
    expected = set(smoa_state_dict(model))
    state = model.state_dict()
    for module_name in config.get("modules_to_save") or ():
        expected |= {key for key in state if _is_under_module(key, module_name)}
    check_adapter_keys(tensors, expected, str(source))
    model.load_state_dict(tensors, strict=False)
    return model


# ------------------------------------------------------------------------------------ PEFT route
def smoa_lora_config(**fields: Any) -> LoraConfig:
    """A PEFT ``LoraConfig`` whose ``nn.Linear`` targets become SMoA layers (PEFT's custom-module route).

    ``fields`` are ``LoraConfig`` fields plus ``smoa_num_blocks`` (default 2) and ``smoa_partition``
    (default ``"spectral"``), e.g. ``smoa_lora_config(**read_peft_adapter_config(folder))`` to load a
    :func:`save_smoa` folder with ``PeftModel.from_pretrained(base, folder, config=...)``, or
    ``smoa_lora_config(r=8, target_modules=["query", "value"])`` for ``get_peft_model``. Needs ``peft``.
    """
    config_class, _ = _peft_classes()
    return config_class(**fields)


@functools.cache
def _peft_classes() -> tuple[type, type]:
    """Build the PEFT-facing classes on first use, so importing this module does not need ``peft``."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import BaseTunerLayer

    @dataclass
    class SMoALoraConfig(LoraConfig):
        """``LoraConfig`` + the SMoA fields (saved in adapter_config.json) + the SMoA layer for nn.Linear."""

        smoa_num_blocks: int = 2
        smoa_partition: str = "spectral"

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.use_dora or self.lora_bias or self.fan_in_fan_out:
                raise ValueError("SMoA supports neither use_dora, lora_bias nor fan_in_fan_out")
            self._register_custom_module({nn.Linear: PeftSMoALinear})

    class PeftSMoALinear(nn.Module, BaseTunerLayer):
        """An SMoA layer written to PEFT's tuner-layer conventions (``base_layer`` + per-adapter ``smoa``)."""

        adapter_layer_names = ("smoa",)

        def __init__(
            self, base_layer: nn.Module, adapter_name: str, config: Any, r: int, lora_alpha: float, **_
        ):
            super().__init__()
            if isinstance(base_layer, BaseTunerLayer):
                raise ValueError(
                    "PEFT's SMoA route supports one adapter per model: this layer already has one"
                )
            self.base_layer = base_layer
            update = _SMoAUpdate(
                base_layer.weight.detach(),
                r,
                config.smoa_num_blocks,
                lora_alpha,
                config.lora_dropout,
                config.smoa_partition,
            )
            self.smoa = nn.ModuleDict({adapter_name: update})
            self._active_adapter = adapter_name
            self.merged_adapters = []

        def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            if self.disable_adapters and self.merged:
                self.unmerge()
            output = self.base_layer(x, *args, **kwargs)
            if self.disable_adapters or self.merged:
                return output
            for name in self.active_adapters:
                if name in self.smoa:
                    output = self.smoa[name](x, self.base_layer.weight, output)
            return output

        def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
            for name in adapter_names or self.active_adapters:
                if name in self.smoa and name not in self.merged_adapters:
                    self.smoa[name].merge_into(self.base_layer.weight)
                    self.merged_adapters.append(name)

        def unmerge(self) -> None:
            while self.merged_adapters:
                self.smoa[self.merged_adapters.pop()].unmerge_from(self.base_layer.weight)

        def get_delta_weight(self, adapter_name: str) -> Tensor:
            return self.smoa[adapter_name].delta_weight(self.base_layer.weight)

    return SMoALoraConfig, PeftSMoALinear
