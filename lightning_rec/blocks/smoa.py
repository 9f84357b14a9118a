"""SMoA, the structured modulation adapter (arXiv 2601.07507): a high-rank, mergeable update of a weight.

SMoA freezes the pretrained weight ``W0`` (``d_out x d_in``) and learns to amplify or suppress its own
entries inside ``K`` aligned diagonal blocks::

    W' = W0 + (alpha / r) ΔW,    ΔW[rows_k, cols_k] = (B_k A_k) ∘ W0[rows_k, cols_k],    ΔW = 0 elsewhere

The rank budget ``r`` is split over the blocks (``B_k``: ``o_k x r_k``, ``A_k``: ``r_k x i_k``), so a
layer trains about ``r (d_in + d_out) / K`` parameters, ``1/K`` of a rank-``r`` LoRA, while
``rank(X ∘ Y) <= rank X · rank Y`` lets each block of ``ΔW`` reach full rank: the update's rank is
bounded by ``min(d_in, d_out)``, not by ``r``. As in LoRA, ``A_k`` starts Kaiming-uniform and ``B_k``
at zero, so ``W' = W0`` at step 0, and the update can be merged into ``W0`` for inference.

Shapes need not divide by ``K`` (the official code, misonsky/SMoA ``cpeft/tuners/smoa.py``): rows,
columns and the rank are cut as ``torch.tensor_split`` cuts, the first ``n % K`` blocks one larger
(:func:`split_sizes`), and ``branch_ranks`` sets the per-block ranks ``r_k`` explicitly (summing to
``r``; a block of rank 0 stays frozen).

Partition: ``"spectral"`` takes one SVD ``W0 = U diag(s) Vᵀ`` at injection, gives row ``i`` the spectral
centre of mass ``Σ_j j U_ij² s_j² / Σ_j U_ij² s_j²`` (columns likewise with ``V``), sorts rows and
columns by it and cuts both into ``K`` slices, so block ``k`` pairs the rows and columns dominated by
the same band of singular directions. ``"contiguous"`` cuts the natural order instead (no SVD). The
orders are stored with the adapter (integer buffers ``rows``, ``cols``), so a saved adapter is
reproduced exactly on any device without trusting a second SVD to sort near-ties the same way.

Anchors: the blocks ``W0[rows_k, cols_k]`` are copied once, frozen, in ``W0``'s dtype (non-persistent
buffers, ``d_out d_in / K`` entries per adapter), as the official code does. The update therefore
never reads the live base weight: :meth:`SMoALinear.delta_weight` is right after a merge, and unmerging
writes the anchors back bit for bit. Loading a state dict whose partition differs re-gathers them.

Factors are float32 by default whatever the base weight's dtype (a bf16 base trains fp32 factors, as
PEFT does); ``factor_dtype=None`` keeps the base dtype.

Layers: ``nn.Linear`` and its subclasses, and Transformers' ``Conv1D`` (GPT-2; its weight is stored
``d_in x d_out``, PEFT's ``fan_in_fan_out``). Quantised bases are not supported.

Cost: the forward never builds the ``d_out x d_in`` update; it modulates the ``K`` anchors and applies
them block by block: ``1/K`` of the base layer's multiply-adds per token.

On-disk layout (:func:`save_smoa`, :func:`load_smoa`): PEFT's (``adapter_config.json`` +
``adapter_model.safetensors``) with the official cpeft config (``peft_type: "SMOA"``, ``r``,
``num_blocks``, ``branch_ranks``, ``lora_alpha``, ``lora_dropout``, ``fan_in_fan_out``, ``bias``,
``target_modules``, ``layers_to_transform``, ``layers_pattern``) plus ``partition`` and ``factor_dtype``;
keys ``base_model.model.<module>.smoa.{lora_A_<k>, lora_B_<k>, rows, cols}`` (PEFT's naming with the
adapter name removed). Plain PEFT does not know ``peft_type: "SMOA"`` and refuses the folder, instead
of silently building ordinary LoRA layers. :func:`load_smoa` also reads checkpoints written by the
official code (keys ``<module>.lora_A.<k>.weight``, no stored partition: it is recomputed by SVD).

Through PEFT itself: ``PeftModel.from_pretrained(base, folder, config=smoa_lora_config(**config))`` and
``get_peft_model(base, smoa_lora_config(...))`` use PEFT's custom-module route; limits: one SMoA
adapter per model there (several named adapters: :func:`inject_smoa` with ``adapter_name`` and
:func:`set_smoa_adapter`).

Axes: o rows of a block, i columns of a block, r rank of a block, m tokens (the input's leading axes
flattened), ``...`` the input's leading axes.
"""

from __future__ import annotations

import functools
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from lightning_rec.hub.mixin import HubMixin
from lightning_rec.hub.peft_layout import check_adapter_keys, read_peft_adapter, write_peft_adapter

if TYPE_CHECKING:
    from peft import LoraConfig

__all__ = [
    "SMOA_PEFT_TYPE",
    "SMoALinear",
    "block_partition",
    "inject_smoa",
    "load_smoa",
    "save_smoa",
    "set_smoa_adapter",
    "smoa_adapter_config",
    "smoa_lora_config",
    "smoa_state_dict",
    "split_sizes",
]

PartitionName = Literal["spectral", "contiguous"]
BiasName = Literal["none", "all", "lora_only"]
TargetModules = str | Sequence[str]
#: the ``peft_type`` of SMoA adapters, the official code's (PEFT itself has no such type, so it refuses them).
SMOA_PEFT_TYPE = "SMOA"
#: PEFT's default names of the layer lists that ``layers_to_transform`` counts in.
COMMON_LAYERS_PATTERN = ("layers", "h", "block", "blocks", "layer")


def split_sizes(total: int, parts: int) -> list[int]:
    """``parts`` sizes summing to ``total``, the first ``total % parts`` one larger (``torch.tensor_split``'s
    rule, and the official code's ``_split_rank``)."""
    if parts < 1 or total < 0:
        raise ValueError(f"cannot split {total} into {parts} parts")
    return [total // parts + (index < total % parts) for index in range(parts)]


def block_partition(
    weight: Tensor, num_blocks: int, partition: PartitionName = "spectral"
) -> tuple[Tensor, Tensor]:
    """Orders of the rows ``(d_out)`` and the columns ``(d_in)`` of ``weight (d_out d_in)``, long tensors.

    Block ``k`` covers ``weight[r_k][:, c_k]`` with ``r_k = torch.tensor_split(rows, num_blocks)[k]``
    (likewise ``c_k``). ``"spectral"`` sorts by the spectral centre of mass (see the module docstring);
    ``"contiguous"`` keeps the natural order.
    """
    d_out, d_in = weight.shape
    if not 1 <= num_blocks <= min(d_out, d_in):
        raise ValueError(
            f"a {d_out} x {d_in} weight cannot be cut into num_blocks={num_blocks} diagonal blocks "
            f"(expected 1 <= num_blocks <= {min(d_out, d_in)})"
        )
    if partition == "contiguous":
        return torch.arange(d_out, device=weight.device), torch.arange(d_in, device=weight.device)
    if partition != "spectral":
        raise ValueError(f"partition must be 'spectral' or 'contiguous', got {partition!r}")
    # float64 on the CPU: the same W0 gives the same order on any machine up to true ties.
    u, s, vh = torch.linalg.svd(weight.detach().to("cpu", torch.float64), full_matrices=False)
    return _spectral_order(u, s).to(weight.device), _spectral_order(vh.T, s).to(weight.device)


def _spectral_order(vectors: Tensor, singular_values: Tensor) -> Tensor:
    """Indices sorted by ``Σ_j j v_ij² s_j² / Σ_j v_ij² s_j²``; ``vectors (d q)``, ``singular_values (q)``."""
    energy = vectors.square() * singular_values.square()  # (d q)
    index = torch.arange(len(singular_values), dtype=energy.dtype)
    centre = (energy * index).sum(1) / energy.sum(1).clamp_min(torch.finfo(energy.dtype).tiny)
    return torch.argsort(centre, stable=True)


def _fan_in_fan_out(layer: nn.Module) -> bool | None:
    """Whether ``layer`` stores its weight ``d_in x d_out`` (Transformers' ``Conv1D``: True), ``d_out x d_in``
    (``nn.Linear`` and subclasses: False), or is no layer SMoA adapts (None)."""
    pytorch_utils = sys.modules.get("transformers.pytorch_utils")  # a Conv1D exists only once imported
    if pytorch_utils is not None and isinstance(layer, pytorch_utils.Conv1D):
        return True
    return False if isinstance(layer, nn.Linear) else None


def _effective_weight(layer: nn.Module, fan_in_fan_out: bool) -> Tensor:
    """``(d_out d_in)``: the base weight as ``nn.Linear`` stores it (a view, so writes reach the layer)."""
    return layer.weight.T if fan_in_fan_out else layer.weight


class _SMoAUpdate(nn.Module):
    """One SMoA adapter of one layer: the partition, the frozen anchors and the factors ``B_k``, ``A_k``.

    Shared by :class:`SMoALinear` and the PEFT layer. State: ``lora_A_<k> (r_k i_k)``,
    ``lora_B_<k> (o_k r_k)``, ``rows (d_out)``, ``cols (d_in)``; anchors ``anchor_<k> (o_k i_k)`` are
    non-persistent (rebuilt from ``W0``).
    """

    def __init__(
        self,
        weight: Tensor,
        r: int,
        num_blocks: int,
        alpha: float,
        dropout: float,
        partition: PartitionName,
        branch_ranks: Sequence[int] | None = None,
        factor_dtype: str | None = "float32",
    ) -> None:
        super().__init__()
        d_out, d_in = weight.shape
        if r < 1:
            raise ValueError(f"r must be >= 1, got {r}")
        ranks = list(branch_ranks) if branch_ranks is not None else split_sizes(r, max(num_blocks, 1))
        if len(ranks) != num_blocks or sum(ranks) != r or min(ranks) < 0:
            raise ValueError(
                f"branch_ranks must be num_blocks={num_blocks} non-negative ranks summing to r={r}, "
                f"got {ranks}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        rows, cols = block_partition(weight, num_blocks, partition)
        self.register_buffer("rows", rows)
        self.register_buffer("cols", cols)
        self.num_blocks, self.branch_ranks, self.scaling = num_blocks, ranks, alpha / r
        dtype = _dtype(factor_dtype, weight.dtype)
        factory = {"dtype": dtype, "device": weight.device}
        outs, ins = split_sizes(d_out, num_blocks), split_sizes(d_in, num_blocks)
        # Parameters `lora_A_<k>`, `lora_B_<k>`: the adapter name of a `ModuleDict` of these updates is then
        # second to last in every key, where PEFT's checkpoint naming removes it.
        for index, (rank, rows_k, cols_k) in enumerate(zip(ranks, outs, ins, strict=True)):
            factor_a = nn.Parameter(torch.empty(rank, cols_k, **factory))
            if rank:
                # nn.Linear(i_k, r_k)'s default init, as LoRA's A: the product starts at zero through B.
                nn.init.kaiming_uniform_(factor_a, a=math.sqrt(5))
            self.register_parameter(f"lora_A_{index}", factor_a)
            self.register_parameter(f"lora_B_{index}", nn.Parameter(torch.zeros(rows_k, rank, **factory)))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.set_anchors(weight)

    @property
    def lora_A(self) -> list[nn.Parameter]:
        """``A_k (r_k i_k)`` per block."""
        return [getattr(self, f"lora_A_{index}") for index in range(self.num_blocks)]

    @property
    def lora_B(self) -> list[nn.Parameter]:
        """``B_k (o_k r_k)`` per block."""
        return [getattr(self, f"lora_B_{index}") for index in range(self.num_blocks)]

    def blocks(self) -> list[tuple[Tensor, Tensor]]:
        """``(rows_k (o_k), cols_k (i_k))`` of each block."""
        return list(
            zip(
                torch.tensor_split(self.rows, self.num_blocks),
                torch.tensor_split(self.cols, self.num_blocks),
                strict=True,
            )
        )

    @torch.no_grad()
    def set_anchors(self, weight: Tensor) -> None:
        """Copy the diagonal blocks of the unmerged ``weight (d_out d_in)`` as the frozen anchors."""
        for index, (rows, cols) in enumerate(self.blocks()):
            self.register_buffer(
                f"anchor_{index}", weight[rows[:, None], cols[None, :]].clone(), persistent=False
            )

    def anchors(self) -> list[Tensor]:
        """``(o_k i_k)`` per block: the frozen ``W0[rows_k, cols_k]``."""
        return [getattr(self, f"anchor_{index}") for index in range(self.num_blocks)]

    def block_updates(self) -> list[Tensor]:
        """``(o_k i_k)`` per block: ``(alpha / r) (B_k A_k) ∘ W0[rows_k, cols_k]``, ΔW's nonzero blocks."""
        return [
            self.scaling * (b @ a) * anchor.to(a.dtype)
            for a, b, anchor in zip(self.lora_A, self.lora_B, self.anchors(), strict=True)
        ]

    def forward(self, x: Tensor, base_output: Tensor) -> Tensor:
        """``base_output (... d_out) + ΔW x`` for ``x (... d_in)``, block by block."""
        tokens = self.dropout(x).to(self.lora_A[0].dtype).reshape(-1, x.shape[-1])  # (m d_in)
        outputs = [
            tokens.index_select(-1, cols) @ update.T
            for (_, cols), update in zip(self.blocks(), self.block_updates(), strict=True)
        ]
        # Outputs come in block order: undo the row permutation with its inverse.
        y = torch.cat(outputs, dim=-1).index_select(-1, torch.argsort(self.rows))  # (m d_out)
        return base_output + y.reshape(base_output.shape).to(base_output.dtype)

    def delta_weight(self) -> Tensor:
        """``(d_out d_in)``: the whole scaled update (for merge checks and rank analysis; not the forward)."""
        first = self.lora_A[0]
        delta = first.new_zeros(len(self.rows), len(self.cols))
        for (rows, cols), update in zip(self.blocks(), self.block_updates(), strict=True):
            delta[rows[:, None], cols[None, :]] = update
        return delta

    @torch.no_grad()
    def merge_into(self, weight: Tensor) -> None:
        """Add the update into ``weight (d_out d_in)`` (a view of the base layer's weight)."""
        for (rows, cols), update in zip(self.blocks(), self.block_updates(), strict=True):
            weight[rows[:, None], cols[None, :]] += update.to(weight.dtype)

    @torch.no_grad()
    def unmerge_from(self, weight: Tensor) -> None:
        # Off-diagonal entries were never touched, so writing the anchors back restores W0 exactly.
        for (rows, cols), anchor in zip(self.blocks(), self.anchors(), strict=True):
            weight[rows[:, None], cols[None, :]] = anchor


def _dtype(name: str | None, default: torch.dtype) -> torch.dtype:
    if name is None:
        return default
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(
            f"factor_dtype must name a floating torch dtype ('float32', 'bfloat16') or be None, got {name!r}"
        )
    return dtype


def _refresh_anchors(layer: nn.Module, incompatible_keys: Any) -> None:
    """Load-state-dict post hook: a loaded partition may differ from the SVD's, so re-gather the anchors."""
    if getattr(layer, "merged_adapter", None) is not None or getattr(layer, "merged_adapters", None):
        raise RuntimeError("load SMoA state into an unmerged layer: call unmerge() first")
    weight = _effective_weight(layer.base_layer, layer.fan_in_fan_out)
    for update in layer.smoa.values():
        update.set_anchors(weight)


class SMoALinear(HubMixin, nn.Module):
    """A frozen ``nn.Linear`` (or subclass, or Transformers ``Conv1D``) with SMoA adapters:
    ``y = (W0 + (alpha / r) ΔW) x + b`` with the active adapter's ``ΔW``.

    Args:
        base: the pretrained layer; its parameters are frozen.
        r: rank budget, split over the blocks (``branch_ranks`` or :func:`split_sizes`).
        num_blocks: ``K``, the number of diagonal blocks (at most ``min(d_in, d_out)``).
        alpha: scale numerator: the update is multiplied by ``alpha / r``.
        dropout: dropout on the adapter's input (the base path sees the clean input).
        partition: ``"spectral"`` (SVD centre-of-mass order, once here) or ``"contiguous"``.
        branch_ranks: the per-block ranks (``K`` of them, summing to ``r``); default an even split.
        factor_dtype: the factors' dtype (``"float32"``), or ``None`` for the base weight's.
        adapter_name: the name of this first adapter (more with :meth:`add_adapter`).

    Shapes: ``forward`` maps ``(... d_in)`` to ``(... d_out)``.
    State dict: ``base_layer.{weight, bias}`` and ``smoa.<adapter>.{lora_A_<k> (r_k i_k),
    lora_B_<k> (o_k r_k), rows (d_out), cols (d_in)}``.
    A merged layer's state dict holds the merged weight (as PEFT's): unmerge before saving it.
    """

    hub_config_exclude = ("base",)  # a base layer records no arguments: config_tree writes its shape

    def __init__(
        self,
        base: nn.Module,
        r: int = 8,
        num_blocks: int = 2,
        alpha: float = 16.0,
        dropout: float = 0.0,
        partition: PartitionName = "spectral",
        branch_ranks: Sequence[int] | None = None,
        factor_dtype: str | None = "float32",
        adapter_name: str = "default",
    ) -> None:
        super().__init__()
        fan_in_fan_out = _fan_in_fan_out(base)
        if fan_in_fan_out is None:
            raise TypeError(
                f"base must be an nn.Linear (or subclass) or a Transformers Conv1D, got {type(base).__name__}"
            )
        self.base_layer = base.requires_grad_(False)
        self.fan_in_fan_out = fan_in_fan_out
        self.smoa = nn.ModuleDict()
        self.settings: dict[str, dict[str, Any]] = {}
        self.active_adapter = adapter_name
        self.merged_adapter: str | None = None
        #: which biases train with the adapters (``inject_smoa``'s ``bias``), saved in the adapter config.
        self.bias_mode: BiasName = "none"
        self.add_adapter(adapter_name, r, num_blocks, alpha, dropout, partition, branch_ranks, factor_dtype)
        self.register_load_state_dict_post_hook(_refresh_anchors)

    def add_adapter(
        self,
        adapter_name: str,
        r: int = 8,
        num_blocks: int = 2,
        alpha: float = 16.0,
        dropout: float = 0.0,
        partition: PartitionName = "spectral",
        branch_ranks: Sequence[int] | None = None,
        factor_dtype: str | None = "float32",
    ) -> None:
        """Add a named adapter (not made active: see :meth:`set_adapter`)."""
        if adapter_name in self.smoa:
            raise ValueError(f"this layer already has an SMoA adapter named {adapter_name!r}")
        if self.merged_adapter is not None:
            raise RuntimeError("add adapters to an unmerged layer: call unmerge() first")
        self.smoa[adapter_name] = _SMoAUpdate(
            self.base_weight.detach(), r, num_blocks, alpha, dropout, partition, branch_ranks, factor_dtype
        )
        self.settings[adapter_name] = {
            "r": r,
            "num_blocks": num_blocks,
            "alpha": alpha,
            "dropout": dropout,
            "partition": partition,
            "branch_ranks": list(self.smoa[adapter_name].branch_ranks),
            "factor_dtype": factor_dtype,
        }

    def set_adapter(self, adapter_name: str) -> None:
        """Make ``adapter_name`` the one the forward applies (unmerging first if another is merged)."""
        if adapter_name not in self.smoa:
            raise ValueError(f"no SMoA adapter named {adapter_name!r}; this layer has {sorted(self.smoa)}")
        if self.merged_adapter is not None and self.merged_adapter != adapter_name:
            self.unmerge()
        self.active_adapter = adapter_name

    @property
    def base_weight(self) -> Tensor:
        """``(d_out d_in)``: the base weight as ``nn.Linear`` stores it (a view for ``Conv1D``)."""
        return _effective_weight(self.base_layer, self.fan_in_fan_out)

    # Hugging Face code reads `.weight` / `.bias` of the layers it owns (dtype probes, tied heads).
    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    @property
    def merged(self) -> bool:
        return self.merged_adapter is not None

    def forward(self, x: Tensor) -> Tensor:
        output = self.base_layer(x)
        if self.merged:
            return output
        return self.smoa[self.active_adapter](x, output)

    def delta_weight(self, adapter_name: str | None = None) -> Tensor:
        """``(d_out d_in)``: the scaled update ``(alpha / r) ΔW`` of an adapter (default the active one),
        merged or not (it reads the frozen anchors, not the live weight)."""
        return self.smoa[adapter_name or self.active_adapter].delta_weight()

    def merge(self) -> None:
        """Add the active adapter into the base weight (the forward then costs what the base layer costs)."""
        if self.merged:
            raise RuntimeError(f"SMoA adapter {self.merged_adapter!r} is already merged")
        self.smoa[self.active_adapter].merge_into(self.base_weight)
        self.merged_adapter = self.active_adapter

    def unmerge(self) -> None:
        """Restore the base weight exactly (the diagonal blocks are written back, not subtracted)."""
        if not self.merged:
            raise RuntimeError("no SMoA adapter is merged")
        self.smoa[self.merged_adapter].unmerge_from(self.base_weight)
        self.merged_adapter = None

    def config_tree(self) -> dict[str, Any]:
        """The base layer is recorded by its class and shape; its weights, in the state dict."""
        tree = super().config_tree()
        d_out, d_in = self.base_weight.shape
        has_bias = self.base_layer.bias is not None
        if self.fan_in_fan_out:
            base = {"class_path": "transformers.pytorch_utils.Conv1D", "init_args": {"nf": d_out, "nx": d_in}}
        else:
            base = {
                "class_path": "torch.nn.Linear",
                "init_args": {"in_features": d_in, "out_features": d_out, "bias": has_bias},
            }
        tree["init_args"] = {"base": base, **tree["init_args"]}
        return tree

    @classmethod
    def hub_example(cls) -> tuple[SMoALinear, tuple[Tensor]]:
        """An uneven ``13 -> 8`` layer (K = 3, r = 4) with trained-looking factors, and an input
        ``(3 5 13)``."""
        layer = cls(nn.Linear(13, 8), r=4, num_blocks=3, alpha=8.0)
        with torch.no_grad():
            for factor in layer.smoa["default"].lora_B:
                factor.normal_()
        return layer, (torch.randn(3, 5, 13),)

    def extra_repr(self) -> str:
        return f"adapters={sorted(self.smoa)}, active={self.active_adapter!r}, merged={self.merged_adapter!r}"


# ---------------------------------------------------------------------------------------- injection
def _is_target(name: str, target_modules: TargetModules) -> bool:
    """PEFT's rule: a string is a regex on the full module name; a list matches a name or a name suffix."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == target or name.endswith(f".{target}") for target in target_modules)


def _layer_index(name: str, layers_pattern: str | Sequence[str] | None) -> int | None:
    """The index ``n`` of ``...<pattern>.<n>....`` in a module name (PEFT's ``layers_to_transform`` rule)."""
    patterns = (
        [layers_pattern] if isinstance(layers_pattern, str) else (layers_pattern or COMMON_LAYERS_PATTERN)
    )
    for pattern in patterns:
        match = re.match(rf"(?:.*\.)?{re.escape(pattern)}\.(\d+)\.", name)
        if match is not None:
            return int(match.group(1))
    return None


def inject_smoa(
    model: nn.Module,
    target_modules: TargetModules,
    r: int = 8,
    num_blocks: int = 2,
    alpha: float = 16.0,
    dropout: float = 0.0,
    partition: PartitionName = "spectral",
    *,
    branch_ranks: Sequence[int] | None = None,
    bias: BiasName = "none",
    layers_to_transform: int | Sequence[int] | None = None,
    layers_pattern: str | Sequence[str] | None = None,
    factor_dtype: str | None = "float32",
    adapter_name: str = "default",
) -> nn.Module:
    """Give every ``nn.Linear`` / ``Conv1D`` of ``model`` named by ``target_modules`` an SMoA adapter.

    ``target_modules`` follows PEFT: a list of names matches a module whose full name equals one of
    them or ends with ``.<name>`` (``["query", "value"]``, ``["c_attn"]``); a string is a regular
    expression on the full name. ``layers_to_transform`` keeps only the matches inside those layer
    indices of ``layers_pattern`` (default PEFT's ``layers``, ``h``, ``block``, ``blocks``, ``layer``).
    A layer that already has SMoA gets another adapter named ``adapter_name``; the first adapter stays
    active until :func:`set_smoa_adapter`.

    Then every parameter of ``model`` is frozen except the active adapters' factors and, with
    ``bias="all"``, every bias, or with ``"lora_only"``, the adapted layers' biases (unfreeze a task
    head yourself). The model is changed in place and returned.
    """
    if bias not in ("none", "all", "lora_only"):
        raise ValueError(f"bias must be 'none', 'all' or 'lora_only', got {bias!r}")
    if not isinstance(target_modules, str) and not target_modules:
        raise ValueError("target_modules is empty")
    indices = {layers_to_transform} if isinstance(layers_to_transform, int) else layers_to_transform
    # Inside an SMoA layer only the layer itself is a target, not its base layer or its adapters.
    inside = tuple(f"{name}." for name, _ in _smoa_layers(model))
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if name
        and not name.startswith(inside or ("\0",))
        and _is_target(name, target_modules)
        and (indices is None or _layer_index(name, layers_pattern) in set(indices))
    ]
    if not targets:
        linear = sorted(
            {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if _fan_in_fan_out(m) is not None}
        )
        raise ValueError(
            f"target_modules={target_modules!r} (layers_to_transform={layers_to_transform!r}) matched no "
            f"module; the model's linear layers are {linear}"
        )
    for name, module in targets:
        if isinstance(module, SMoALinear):
            if adapter_name in module.smoa:
                raise ValueError(f"{name} already has an SMoA adapter named {adapter_name!r}")
            if bias != "none":
                raise ValueError("a second SMoA adapter needs bias='none' (the biases are shared)")
        elif _fan_in_fan_out(module) is None:
            raise TypeError(
                f"target {name} is a {type(module).__name__}; SMoA adapts nn.Linear and Conv1D layers only"
            )
    settings = (r, num_blocks, alpha, dropout, partition, branch_ranks, factor_dtype)
    for name, module in targets:
        if isinstance(module, SMoALinear):
            module.add_adapter(adapter_name, *settings)
            continue
        parent_name, _, child = name.rpartition(".")
        layer = SMoALinear(module, *settings, adapter_name=adapter_name)
        layer.bias_mode = bias
        setattr(model.get_submodule(parent_name), child, layer)
    _freeze_all_but_active(model, bias)
    return model


def _freeze_all_but_active(model: nn.Module, bias: BiasName) -> None:
    model.requires_grad_(False)
    for name, parameter in model.named_parameters():
        if bias == "all" and name.rpartition(".")[2] == "bias":
            parameter.requires_grad_(True)
    for _, layer in _smoa_layers(model):
        layer.smoa[layer.active_adapter].requires_grad_(True)
        if bias == "lora_only" and layer.base_layer.bias is not None:
            layer.base_layer.bias.requires_grad_(True)


def set_smoa_adapter(model: nn.Module, adapter_name: str) -> nn.Module:
    """Make ``adapter_name`` active in every SMoA layer of ``model`` and the only adapter that trains."""
    layers = _smoa_layers(model)
    if not layers:
        raise ValueError("the model has no SMoA layer: call inject_smoa first")
    for _, layer in layers:
        layer.set_adapter(adapter_name)
    for _, layer in layers:
        for name, update in layer.smoa.items():
            update.requires_grad_(name == adapter_name)
    return model


def _is_under_module(key: str, module_name: str) -> bool:
    """Whether state key ``key`` lies in a module matched by ``module_name`` (PEFT's modules_to_save rule)."""
    parts = key.split(".")
    return any(_is_target(".".join(parts[:end]), [module_name]) for end in range(1, len(parts)))


def _smoa_layers(model: nn.Module) -> list[tuple[str, SMoALinear]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, SMoALinear)]


def smoa_state_dict(model: nn.Module, adapter_name: str | None = None) -> dict[str, Tensor]:
    """The adapters' tensors: the factors ``lora_A_<k>`` / ``lora_B_<k>`` and the integer partition
    ``rows`` / ``cols`` of every SMoA layer. No base weight. They share memory with the live tensors.

    ``adapter_name=None`` gives every adapter, keyed by its name in ``model.state_dict()``
    (``<module>.smoa.<adapter>.lora_A_0``); a name gives that adapter keyed as on disk, the adapter
    name removed as PEFT does (``<module>.smoa.lora_A_0``).
    """
    state = {}
    for name, layer in _smoa_layers(model):
        for adapter, update in layer.smoa.items():
            if adapter_name is not None and adapter != adapter_name:
                continue
            prefix = f"{name}.smoa." if adapter_name is not None else f"{name}.smoa.{adapter}."
            for key, value in update.state_dict(keep_vars=True).items():
                state[prefix + key] = value.detach()
    if adapter_name is not None and not state:
        raise ValueError(f"the model has no SMoA adapter named {adapter_name!r}")
    return state


def smoa_adapter_config(
    model: nn.Module, adapter_name: str = "default", **peft_fields: Any
) -> dict[str, Any]:
    """The ``adapter_config.json`` of ``model``'s adapter ``adapter_name``: the official cpeft ``SMOA``
    fields plus ``partition`` / ``factor_dtype``; ``peft_fields`` adds more (``task_type``,
    ``modules_to_save``, ``base_model_name_or_path``). ``target_modules`` lists the adapted layers by
    full name."""
    layers = [(name, layer) for name, layer in _smoa_layers(model) if adapter_name in layer.smoa]
    if not layers:
        raise ValueError(f"the model has no SMoA adapter named {adapter_name!r}: call inject_smoa first")
    settings = {repr(layer.settings[adapter_name]) for _, layer in layers}
    if len(settings) > 1:
        raise ValueError(f"the model's SMoA layers differ in their settings of {adapter_name!r}: {settings}")
    setting = layers[0][1].settings[adapter_name]
    fan_in_fan_out = {layer.fan_in_fan_out for _, layer in layers}
    if len(fan_in_fan_out) > 1:
        raise ValueError("the adapted layers mix nn.Linear and Conv1D; save them as two adapters")
    return {
        "peft_type": SMOA_PEFT_TYPE,
        "r": setting["r"],
        "num_blocks": setting["num_blocks"],
        "branch_ranks": setting["branch_ranks"],
        "lora_alpha": setting["alpha"],
        "lora_dropout": setting["dropout"],
        "partition": setting["partition"],
        "factor_dtype": setting["factor_dtype"],
        "target_modules": [name for name, _ in layers],
        "bias": getattr(layers[0][1], "bias_mode", "none"),
        "fan_in_fan_out": fan_in_fan_out.pop(),
        "init_lora_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        **peft_fields,
    }


def _trainable_biases(model: nn.Module, bias: str) -> dict[str, Tensor]:
    if bias == "all":
        return {name: p.detach() for name, p in model.named_parameters() if name.rpartition(".")[2] == "bias"}
    if bias == "lora_only":
        return {
            f"{name}.base_layer.bias": layer.base_layer.bias.detach()
            for name, layer in _smoa_layers(model)
            if layer.base_layer.bias is not None
        }
    return {}


def save_smoa(
    model: nn.Module,
    directory: str | Path,
    modules_to_save: Sequence[str] = (),
    adapter_name: str = "default",
    **peft_fields: Any,
) -> None:
    """Write ``model``'s SMoA adapter ``adapter_name`` in PEFT's layout (adapter_config.json,
    adapter_model.safetensors).

    ``modules_to_save`` names whole modules saved beside the adapter (a trained task head,
    ``["classifier"]``), as PEFT does; trained biases (``bias="all"`` / ``"lora_only"``) are saved too;
    ``peft_fields`` go into the config (see :func:`smoa_adapter_config`).
    """
    config = smoa_adapter_config(
        model, adapter_name, modules_to_save=list(modules_to_save) or None, **peft_fields
    )
    tensors = smoa_state_dict(model, adapter_name) | _trainable_biases(model, config["bias"])
    for module_name in modules_to_save:
        for key, value in model.get_submodule(module_name).state_dict().items():
            tensors[f"{module_name}.{key}"] = value
    write_peft_adapter(directory, config, tensors)


def load_smoa(model: nn.Module, source: str | Path, adapter_name: str = "default") -> nn.Module:
    """Load an SMoA adapter (a folder or Hub repo) into ``model`` as ``adapter_name``, in place.

    Reads :func:`save_smoa` folders and the official code's checkpoints (cpeft: keys
    ``<module>.lora_A.<k>.weight``, the partition recomputed by SVD, see the module docstring).
    Injects the SMoA layers its config names unless ``model`` already has this adapter, then loads the
    factors, the partition, trained biases and the ``modules_to_save`` with strict checking: a missing
    or unexpected key is an error naming it.
    """
    config, tensors = read_peft_adapter(source)
    if config.get("peft_type") != SMOA_PEFT_TYPE:
        raise ValueError(
            f"{source} is not an SMoA adapter: its adapter_config.json has peft_type "
            f"{config.get('peft_type')!r}, expected {SMOA_PEFT_TYPE!r}"
        )
    if not (
        isinstance(config.get("target_modules"), list)
        and all(isinstance(t, str) for t in config["target_modules"])
    ):
        # save_smoa always writes the adapted layers' names; a downloaded regex would reach re.fullmatch
        # (catastrophic backtracking), so a string is refused rather than matched.
        raise ValueError(
            f"{source}: adapter_config.json 'target_modules' must be a list of module names, "
            f"got {type(config.get('target_modules')).__name__}"
        )
    official = not any(".smoa." in key for key in tensors)
    if official:
        tensors = _from_official_layout(tensors)
    has_adapter = any(adapter_name in layer.smoa for _, layer in _smoa_layers(model))
    if not has_adapter:
        inject_smoa(
            model,
            target_modules=config["target_modules"],
            r=config["r"],
            num_blocks=config["num_blocks"],
            alpha=config["lora_alpha"],
            dropout=config["lora_dropout"],
            partition=config.get("partition", "spectral"),
            branch_ranks=config.get("branch_ranks"),
            bias=config.get("bias", "none"),
            layers_to_transform=config.get("layers_to_transform"),
            layers_pattern=config.get("layers_pattern"),
            factor_dtype=config.get("factor_dtype", "float32"),
            adapter_name=adapter_name,
        )
    on_disk = smoa_state_dict(model, adapter_name)
    expected = set(on_disk) | set(_trainable_biases(model, config.get("bias", "none")))
    for module_name in config.get("modules_to_save") or ():
        expected |= {key for key in model.state_dict() if _is_under_module(key, module_name)}
    # The official code stores neither the partition (it recomputes the SVD's) nor rank-0 blocks.
    implied = {
        key for key in on_disk if official and (key.endswith((".rows", ".cols")) or on_disk[key].numel() == 0)
    } - set(tensors)
    tensors = {**tensors, **{key: on_disk[key].clone() for key in implied}}
    check_adapter_keys(tensors, expected, str(source))
    # Back to the state-dict names: `<module>.smoa.<key>` -> `<module>.smoa.<adapter>.<key>`.
    renamed = {
        re.sub(r"\.smoa\.", f".smoa.{adapter_name}.", key, count=1) if key in on_disk else key: value
        for key, value in tensors.items()
    }
    model.load_state_dict(renamed, strict=False)
    return model


def _from_official_layout(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The official code's keys -> ours: ``<m>.lora_A.<k>.weight`` -> ``<m>.smoa.lora_A_<k>`` (likewise B),
    ``<m>.bias`` of an adapted layer -> ``<m>.base_layer.bias``. Rank-0 blocks (the official code's
    ``nn.Identity``, saved as nothing) and the partition are not in these checkpoints."""
    factor = re.compile(r"(.+)\.lora_([AB])\.(\d+)\.weight")
    converted: dict[str, Tensor] = {}
    adapted = set()
    for key, value in tensors.items():
        match = factor.fullmatch(key)
        if match is None:
            continue
        module, which, block = match.groups()
        adapted.add(module)
        converted[f"{module}.smoa.lora_{which}_{block}"] = value
    for key, value in tensors.items():
        if factor.fullmatch(key):
            continue
        module = key.rpartition(".")[0]
        converted[f"{module}.base_layer.bias" if module in adapted and key.endswith(".bias") else key] = value
    return converted


# ------------------------------------------------------------------------------------ PEFT route
#: adapter_config.json fields of SMoA -> the SMoALoraConfig fields that hold them.
_SMOA_FIELDS = {
    "num_blocks": "smoa_num_blocks",
    "partition": "smoa_partition",
    "branch_ranks": "smoa_branch_ranks",
    "factor_dtype": "smoa_factor_dtype",
}


def smoa_lora_config(**fields: Any) -> LoraConfig:
    """A PEFT ``LoraConfig`` whose ``nn.Linear`` / ``Conv1D`` targets become SMoA layers (PEFT's
    custom-module route).

    ``fields`` are an SMoA ``adapter_config.json``'s
    (``smoa_lora_config(**read_peft_adapter_config(folder))``, then
    ``PeftModel.from_pretrained(base, folder, config=...)``) or ``LoraConfig`` fields plus ``num_blocks``
    (default 2), ``partition``, ``branch_ranks``, ``factor_dtype`` (``smoa_lora_config(r=8,
    target_modules=["query", "value"])`` for ``get_peft_model``). Needs ``peft``.
    """
    config_class, _ = _peft_classes()
    fields = dict(fields)
    if fields.pop("peft_type", SMOA_PEFT_TYPE) not in (SMOA_PEFT_TYPE, "LORA"):
        raise ValueError("smoa_lora_config reads SMoA adapter configs (peft_type 'SMOA')")
    for ours, theirs in _SMOA_FIELDS.items():
        if ours in fields:
            fields[theirs] = fields.pop(ours)
    return config_class(**fields)


@functools.cache
def _peft_classes() -> tuple[type, type]:
    """Build the PEFT-facing classes on first use, so importing this module does not need ``peft``."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers.pytorch_utils import Conv1D

    @dataclass
    class SMoALoraConfig(LoraConfig):
        """``LoraConfig`` + the SMoA fields + the SMoA layer for ``nn.Linear`` and ``Conv1D``."""

        smoa_num_blocks: int = 2
        smoa_partition: str = "spectral"
        smoa_branch_ranks: list[int] | None = None
        smoa_factor_dtype: str | None = "float32"

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.use_dora or self.lora_bias:
                raise ValueError("SMoA supports neither use_dora nor lora_bias")
            self._register_custom_module({nn.Linear: PeftSMoALinear, Conv1D: PeftSMoALinear})

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
            self.fan_in_fan_out = bool(_fan_in_fan_out(base_layer))
            update = _SMoAUpdate(
                _effective_weight(base_layer, self.fan_in_fan_out).detach(),
                r,
                config.smoa_num_blocks,
                lora_alpha,
                config.lora_dropout,
                config.smoa_partition,
                config.smoa_branch_ranks,
                config.smoa_factor_dtype,
            )
            self.smoa = nn.ModuleDict({adapter_name: update})
            self._active_adapter = adapter_name
            self.merged_adapters = []
            self.register_load_state_dict_post_hook(_refresh_anchors)

        def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
            if self.disable_adapters and self.merged:
                self.unmerge()
            output = self.base_layer(x, *args, **kwargs)
            if self.disable_adapters or self.merged:
                return output
            for name in self.active_adapters:
                if name in self.smoa:
                    output = self.smoa[name](x, output)
            return output

        def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
            weight = _effective_weight(self.base_layer, self.fan_in_fan_out)
            for name in adapter_names or self.active_adapters:
                if name in self.smoa and name not in self.merged_adapters:
                    self.smoa[name].merge_into(weight)
                    self.merged_adapters.append(name)

        def unmerge(self) -> None:
            weight = _effective_weight(self.base_layer, self.fan_in_fan_out)
            while self.merged_adapters:
                self.smoa[self.merged_adapters.pop()].unmerge_from(weight)

        def get_delta_weight(self, adapter_name: str) -> Tensor:
            delta = self.smoa[adapter_name].delta_weight()
            return delta.T if self.fan_in_fan_out else delta

    return SMoALoraConfig, PeftSMoALinear
