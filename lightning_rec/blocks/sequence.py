"""Sequence encoders for sequential recommendation: SASRec, BERT4Rec, GRU4Rec, HSTU.

Axis legend:
    b  batch
    n  sequence positions (queries i, keys j)
    d  hidden size
    h  attention heads
    v  item vocabulary (padding + items, plus extra tokens such as BERT4Rec's mask)

One interface for every encoder (`SequenceEncoder`): item ids `b n` in, hidden states `b n d` out.
Item id 0 is padding and real items are 1..num_items. The data pipeline pads on the LEFT, but every
encoder gives the same outputs at the real positions for left padding, right padding, and any
amount of either, because no encoder reads the index of a position in the padded tensor:

- SASRec and BERT4Rec count absolute positions from the END of the real items (the most recent
  item is position 0). This is what the original SASRec does: it left-pads to max_len and numbers
  the padded array 0..max_len-1, so its last item always has the same position. Appending an item
  therefore renumbers the earlier ones; outputs are causal in item identities (the output at t
  depends on which items come after t only through how many there are, never through which ones).
- HSTU uses relative position biases on (i - j), which padding at either end does not change.
- GRU4Rec runs its recurrence over the real items only.

Scores for full ranking are `hidden @ encoder.item_embeddings().T`: the output layer is tied to
the input item embedding, without extra tokens, and row 0 (padding) is all zeros.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from lightning_rec.hub.mixin import HubMixin

__all__ = ["HSTU", "SEQUENCE_ENCODERS", "BERT4Rec", "GRU4Rec", "SASRec", "SequenceEncoder"]

PADDING_ID = 0


class SequenceEncoder(HubMixin, nn.Module, ABC):
    """Base class of every sequence encoder: item ids `b n` -> hidden states `b n d`.

    Attributes:
        causal: True when the output at position t depends on no item after t (train with
            next-item prediction); False for bidirectional encoders (train with masked items).
        num_items: real items are 1..num_items; 0 is padding.
        hidden_size: d.
        max_len: the longest input (n) the encoder accepts.
        item_embedding: `nn.Embedding(num_items + 1 + extra_tokens, d, padding_idx=0)`.
        mask_token_id: id of the mask token (num_items + 1) for encoders that have one, else None.
    """

    causal: ClassVar[bool]

    def __init__(self, num_items: int, hidden_size: int, max_len: int, extra_tokens: int = 0) -> None:
        super().__init__()
        for name, value in (("num_items", num_items), ("hidden_size", hidden_size), ("max_len", max_len)):
            if value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be >= 1, got {value}")
        self.num_items = num_items
        self.hidden_size = hidden_size
        self.max_len = max_len
        self.mask_token_id: int | None = None
        self.item_embedding = nn.Embedding(num_items + 1 + extra_tokens, hidden_size, padding_idx=PADDING_ID)
        # BERT-style small init (as RecBole); PyTorch's N(0, 1) default would dwarf the position
        # embeddings once scaled by sqrt(d). The padding row must stay exactly zero.
        nn.init.normal_(self.item_embedding.weight, std=0.02)
        with torch.no_grad():
            self.item_embedding.weight[PADDING_ID].zero_()

    @classmethod
    def hub_example(cls) -> tuple[SequenceEncoder, tuple[Tensor]]:
        """A tiny encoder (20 items, d 16, max_len 8) and a left-padded batch of ids ``(3 8)``."""
        generator = torch.Generator().manual_seed(0)
        input_ids = torch.randint(1, 21, (3, 8), generator=generator)
        input_ids[0, :5] = 0
        return cls(num_items=20, hidden_size=16, max_len=8), (input_ids,)

    def item_embeddings(self) -> Tensor:
        """The output-layer item table `(num_items + 1) d` for dot-product scoring.

        Tied to the input embedding without the extra tokens. Row 0 (padding) is a constant zero
        row rather than the stored one: a softmax over all columns would otherwise train it away
        from zero (`padding_idx` only blocks the input side's gradient). Callers still exclude
        column 0 from ranking.
        """
        return F.pad(self.item_embedding.weight[1 : self.num_items + 1], (0, 0, 1, 0))

    def forward(self, input_ids: Tensor, appended: Tensor | None = None) -> Tensor:
        """Encode item ids `b n` (LongTensor, 0 = padding) into hidden states `b n d`.

        ``appended`` (optional, `b k d`): vectors in the encoder's input space placed as k extra
        positions after the last real item (the thinking tokens of
        :class:`~lightning_rec.blocks.ThinkingTokenEncoder`). They get no item position embedding
        (they carry their own), causal encoders let them see every item and the earlier appended
        vectors, and the items never see them. The output is then `b (n + k) d`, the appended
        positions last.

        Outputs at padding positions are zeros.
        """
        is_item = self.check_input_ids(input_ids)
        if appended is None:
            appended = self.item_embedding.weight.new_zeros(len(input_ids), 0, self.hidden_size)
        elif (
            appended.dim() != 3
            or appended.shape[0] != len(input_ids)
            or appended.shape[2] != self.hidden_size
        ):
            raise ValueError(
                f"{type(self).__name__}: appended must have shape (b, k, {self.hidden_size}) with "
                f"b={len(input_ids)}, got {tuple(appended.shape)}"
            )
        hidden = self.encode(input_ids, is_item, appended)
        # Padding outputs are whatever the layers made of them; zero them so that a loss or a
        # pooling that forgets the mask still sees nothing there.
        is_real = torch.cat([is_item, is_item.new_ones(appended.shape[:2])], dim=1)
        return hidden * rearrange(is_real, "b n -> b n 1")

    def encode_prefix(self, input_ids: Tensor) -> tuple[Tensor, object]:
        """Encode a history `b n` for later extension: hidden states `b n d` and a prefix state.

        :meth:`extend` then computes appended positions without re-encoding the history. Causal
        transformers keep their per-layer keys and values (a KV cache), so each extension costs
        k positions instead of n + k; other encoders keep the ids and re-encode.
        """
        return self(input_ids), input_ids

    def extend(self, prefix: object, appended: Tensor, positions: Tensor | None = None) -> Tensor:
        """Prefix state from :meth:`encode_prefix`, appended vectors -> their outputs, same shape.

        Without ``positions``: appended `b k d` follow the last position; equal to
        ``self(input_ids, appended=appended)[:, n:]``.

        With ``positions`` `b r` (long, indices into the n positions): appended `b r k d`, where the k
        vectors of request r follow position t = ``positions[b, r]`` and see the history's states up
        to t only, as encoded in this window (the states a next-item loss at t reads); requests do
        not see each other. Causal encoders only. GRU4Rec and HSTU are causal in everything, so
        this re-encodes each request's history with the items after t replaced by padding; SASRec
        reads its KV cache instead (its states at t as this window encodes them; with
        ``position_order="from_start"`` they equal the states of the history alone).
        """
        input_ids = prefix
        if positions is None:
            return self(input_ids, appended=appended)[:, input_ids.shape[1] :]
        self._check_requests(appended, positions)
        # Re-encode each request's history with the later items replaced by padding.
        n, r = input_ids.shape[1], positions.shape[1]
        later = torch.arange(n, device=input_ids.device) > rearrange(positions, "b r -> b r 1")  # (b r n)
        histories = torch.where(later, PADDING_ID, rearrange(input_ids, "b n -> b 1 n"))
        outputs = self(
            rearrange(histories, "b r n -> (b r) n"), appended=rearrange(appended, "b r k d -> (b r) k d")
        )
        return rearrange(outputs[:, n:], "(b r) k d -> b r k d", r=r)

    def _check_requests(self, appended: Tensor, positions: Tensor) -> None:
        if not self.causal:
            raise ValueError(
                f"{type(self).__name__} is bidirectional: its history outputs depend on later items, so "
                "appended vectors can only follow the last position (call extend without positions)"
            )
        if positions.dim() != 2 or appended.dim() != 4 or appended.shape[:2] != positions.shape:
            raise ValueError(
                f"{type(self).__name__}.extend: positions must be (b, r) and appended (b, r, k, d); got "
                f"{tuple(positions.shape)} and {tuple(appended.shape)}"
            )

    def check_input_ids(self, input_ids: Tensor) -> Tensor:
        """Validate item ids `b n`; returns the real-item mask `b n` (bool)."""
        if input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise ValueError(
                f"{type(self).__name__} expects item ids of shape (b, n) and dtype torch.long, "
                f"got shape {tuple(input_ids.shape)} and dtype {input_ids.dtype}"
            )
        if input_ids.shape[1] > self.max_len:
            raise ValueError(
                f"{type(self).__name__}: input has {input_ids.shape[1]} positions, more than "
                f"max_len={self.max_len}; keep the most recent max_len items"
            )
        return input_ids != PADDING_ID

    @abstractmethod
    def encode(self, input_ids: Tensor, is_item: Tensor, appended: Tensor) -> Tensor:
        """Item ids `b n`, the real-item mask `b n` (bool) and appended vectors `b k d` (k may be 0)
        -> hidden states `b (n + k) d`.

        Values at padding positions are free (`forward` zeros them) but must be finite.
        """


def positions_from_end(is_item: Tensor) -> Tensor:
    """Real-item mask `b n` (bool) -> position of each item counted from the last real item `b n`.

    The most recent item is position 0, so left or right padding of any length gives a real item
    the same position (see the module docstring). Values at padding positions are in [0, n) and
    meaningless.
    """
    counts = is_item.long()
    return counts.sum(dim=1, keepdim=True) - counts.cumsum(dim=1)


def positions_from_start(is_item: Tensor) -> Tensor:
    """Real-item mask `b n` (bool) -> position of each item counted from the first real item `b n`.

    The oldest item in the sequence is position 0 (RecBole's and the SASRec paper's numbering for
    left-aligned sequences). With a causal encoder, the output at item j of a sequence then equals
    the output for the prefix ending at j encoded alone, so one pass over a training window trains
    every prefix of it exactly as evaluation encodes a history. Values at padding positions are 0.
    """
    counts = is_item.long()
    return (counts.cumsum(dim=1) - 1).clamp(min=0)


PositionOrder = Literal["from_end", "from_start"]


@dataclass
class _KeyValueCache:
    """A causal transformer's encoded history: per-layer keys and values `b h n d_head`, item mask `b n`."""

    keys_values: list[tuple[Tensor, Tensor]]
    is_item: Tensor


def with_appended(hidden: Tensor, is_item: Tensor, appended: Tensor) -> tuple[Tensor, Tensor]:
    """Item inputs `b n d` + appended vectors `b k d` -> inputs `b (n + k) d` and real mask `b (n + k)`."""
    hidden = torch.cat([hidden, appended.to(hidden.dtype)], dim=1)
    return hidden, torch.cat([is_item, is_item.new_ones(appended.shape[:2])], dim=1)


def attention_mask(is_item: Tensor, causal: bool) -> Tensor:
    """Real-item mask `b n` -> boolean mask `b 1 n n` (True = query i may attend to key j).

    Keys at padding are hidden; causal masks also hide keys after the query. Every query may also
    attend to itself: a padding query under left padding would otherwise attend to nothing, and a
    softmax over an empty set is NaN (the failure described in specs/data.md). Self-attention of
    a padding query never reaches a real query, because padding is never a key for one.
    """
    n = is_item.shape[1]
    allowed = rearrange(is_item, "b j -> b 1 1 j")
    self_only = torch.eye(n, dtype=torch.bool, device=is_item.device)
    if causal:
        allowed = allowed & torch.ones(n, n, dtype=torch.bool, device=is_item.device).tril()
    return allowed | self_only


class TransformerBlock(nn.Module):
    """Pre-LN transformer block: `x + Attn(LN(x))`, then `x + FFN(LN(x))`; `b n d` -> `b n d`.

    Pre-LN trains stably without warm-up (Xiong et al. 2020, arXiv 2002.04745); the encoders end
    with a LayerNorm, as the original SASRec does.
    """

    def __init__(
        self, hidden_size: int, num_heads: int, dropout: float, ffn_size: int, activation: nn.Module
    ) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.dropout = dropout
        self.attention_norm = nn.LayerNorm(hidden_size)
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.attention_out = nn.Linear(hidden_size, hidden_size)
        self.ffn_norm = nn.LayerNorm(hidden_size)
        self.ffn = nn.Sequential(
            nn.Linear(hidden_size, ffn_size),
            activation,
            nn.Dropout(dropout),
            nn.Linear(ffn_size, hidden_size),
        )
        self.residual_dropout = nn.Dropout(dropout)

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        """hidden `b n d`, mask `b 1 n n` (bool, True = may attend) -> `b n d`."""
        return self.forward_with_keys_values(hidden, mask)[0]

    def forward_with_keys_values(
        self, hidden: Tensor, mask: Tensor, prefix: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """As ``forward``, also returning this call's keys and values `b h n d_head` (a cache).

        ``prefix``: cached keys and values `b h m d_head` of m earlier positions that the n queries
        also attend to; ``mask`` is then `b 1 n (m + n)`, prefix keys first.
        """
        q, k, v = rearrange(
            self.qkv(self.attention_norm(hidden)),
            "b n (three h d) -> three b h n d",
            three=3,
            h=self.num_heads,
        )
        keys, values = (
            (k, v) if prefix is None else (torch.cat([prefix[0], k], 2), torch.cat([prefix[1], v], 2))
        )
        # Looked up on F at call time so tests can count the calls.
        attended = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        attended = self.attention_out(rearrange(attended, "b h n d -> b n (h d)"))
        hidden = hidden + self.residual_dropout(attended)
        return hidden + self.residual_dropout(self.ffn(self.ffn_norm(hidden))), (k, v)


class _TransformerEncoder(SequenceEncoder):
    """Shared body of SASRec and BERT4Rec: embeddings + positions, transformer blocks, LayerNorm."""

    def __init__(
        self,
        num_items: int,
        hidden_size: int,
        max_len: int,
        num_layers: int,
        num_heads: int,
        dropout: float,
        ffn_size: int,
        activation: type[nn.Module],
        extra_tokens: int,
        scale_item_embeddings: bool = True,
        position_order: PositionOrder = "from_end",
    ) -> None:
        super().__init__(num_items, hidden_size, max_len, extra_tokens)
        if position_order not in ("from_end", "from_start"):
            raise ValueError(f"position_order must be 'from_end' or 'from_start', got {position_order!r}")
        self.item_scale = math.sqrt(hidden_size) if scale_item_embeddings else 1.0
        self.position_order = position_order
        self._positions = positions_from_end if position_order == "from_end" else positions_from_start
        self.position_embedding = nn.Embedding(max_len, hidden_size)
        nn.init.normal_(self.position_embedding.weight, std=0.02)
        self.embedding_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            TransformerBlock(hidden_size, num_heads, dropout, ffn_size, activation())
            for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(hidden_size)

    def embed(self, input_ids: Tensor, is_item: Tensor) -> Tensor:
        """Item ids `b n` -> layer inputs `b n d`."""
        # Item embeddings scaled by sqrt(d) as in the original SASRec (and the Transformer), so the
        # item signal is not drowned by the position embedding at init. RecBole does not scale
        # (`scale_item_embeddings=False`): items and positions then start at the same magnitude.
        hidden = self.item_embedding(input_ids) * self.item_scale
        hidden = hidden + self.position_embedding(self._positions(is_item))
        return self.embedding_dropout(hidden * rearrange(is_item, "b n -> b n 1"))

    def encode(self, input_ids: Tensor, is_item: Tensor, appended: Tensor) -> Tensor:
        hidden, is_real = with_appended(self.embed(input_ids, is_item), is_item, appended)
        mask = attention_mask(is_real, causal=self.causal)
        for layer in self.layers:
            hidden = layer(hidden, mask)
        return self.final_norm(hidden)

    def encode_prefix(self, input_ids: Tensor) -> tuple[Tensor, object]:
        if not self.causal:  # items attend to appended positions: nothing to cache
            return super().encode_prefix(input_ids)
        is_item = self.check_input_ids(input_ids)
        hidden = self.embed(input_ids, is_item)
        mask = attention_mask(is_item, causal=True)
        cache = []
        for layer in self.layers:
            hidden, keys_values = layer.forward_with_keys_values(hidden, mask)
            cache.append(keys_values)
        return self.final_norm(hidden) * rearrange(is_item, "b n -> b n 1"), _KeyValueCache(cache, is_item)

    def extend(self, prefix: object, appended: Tensor, positions: Tensor | None = None) -> Tensor:
        if not isinstance(prefix, _KeyValueCache):
            return super().extend(prefix, appended, positions)
        is_item = prefix.is_item
        if positions is None:
            positions = torch.full((len(is_item), 1), is_item.shape[1] - 1, device=is_item.device)
            return self.extend(prefix, rearrange(appended, "b k d -> b 1 k d"), positions)[:, 0]
        self._check_requests(appended, positions)
        # Appended vector (r, i) attends to the items up to position[r] and to (r, j <= i).
        n, (r, k) = is_item.shape[1], appended.shape[1:3]
        sees_item = torch.arange(n, device=is_item.device) <= rearrange(positions, "b r -> b r 1")
        history = repeat(sees_item & rearrange(is_item, "b n -> b 1 n"), "b r n -> b 1 (r k) n", k=k)
        own = torch.block_diag(*[torch.ones(k, k, dtype=torch.bool, device=is_item.device).tril()] * r)
        mask = torch.cat([history, own.expand(len(is_item), 1, r * k, r * k)], dim=-1)
        hidden = rearrange(appended, "b r k d -> b (r k) d")
        for layer, keys_values in zip(self.layers, prefix.keys_values, strict=True):
            hidden, _ = layer.forward_with_keys_values(hidden, mask, prefix=keys_values)
        return rearrange(self.final_norm(hidden), "b (r k) d -> b r k d", r=r)


class SASRec(_TransformerEncoder):
    """SASRec: causal self-attention over the item sequence (Kang & McAuley 2018, arXiv 1808.09781).

    Item embedding * sqrt(d) + learned absolute position embedding counted from the most recent
    item, dropout, `num_layers` pre-LN blocks with causal, padding-masked
    `scaled_dot_product_attention` and a ReLU feed-forward, final LayerNorm.

    `ffn_multiplier` sets the feed-forward width to `ffn_multiplier * hidden_size`. The paper uses
    1; the default 4 matches RecBole's SASRec (inner_size 256 at d 64), our reference numbers.
    `scale_item_embeddings=False` drops the sqrt(d) factor on the input item embeddings (RecBole's
    choice).

    `position_order` numbers the positions ``"from_end"`` (the most recent item is 0: every history
    puts its latest item on the same embedding) or ``"from_start"`` (the oldest item is 0, as RecBole
    and the paper number left-aligned sequences). With ``"from_start"`` the output at item j of a
    window equals the output for that window's prefix ending at j encoded alone, so a training
    window trains each of its prefixes as evaluation encodes a history; with ``"from_end"`` only the
    window's last position is in the configuration evaluation uses.

    forward: item ids `b n` -> hidden states `b n d`.
    """

    causal = True

    def __init__(
        self,
        num_items: int,
        hidden_size: int = 64,
        max_len: int = 50,
        num_layers: int = 2,
        num_heads: int = 2,
        dropout: float = 0.2,
        ffn_multiplier: int = 4,
        scale_item_embeddings: bool = True,
        position_order: PositionOrder = "from_end",
    ) -> None:
        super().__init__(
            num_items,
            hidden_size,
            max_len,
            num_layers,
            num_heads,
            dropout,
            ffn_size=ffn_multiplier * hidden_size,
            activation=nn.ReLU,
            extra_tokens=0,
            scale_item_embeddings=scale_item_embeddings,
            position_order=position_order,
        )


class BERT4Rec(_TransformerEncoder):
    """BERT4Rec: bidirectional self-attention trained by masked-item prediction (Sun et al. 2019,
    arXiv 1904.06690).

    As SASRec, but attention sees every real item (key padding mask only), the feed-forward uses
    GELU, and the vocabulary has a mask token at `mask_token_id = num_items + 1`. The training
    module replaces items by the mask token and scores the hidden states at those positions
    against `item_embeddings()`; at inference it appends the mask token after the history.

    forward: item ids `b n` (may contain `mask_token_id`) -> hidden states `b n d`.
    """

    causal = False

    def __init__(
        self,
        num_items: int,
        hidden_size: int = 64,
        max_len: int = 50,
        num_layers: int = 2,
        num_heads: int = 2,
        dropout: float = 0.2,
        ffn_multiplier: int = 4,
    ) -> None:
        super().__init__(
            num_items,
            hidden_size,
            max_len,
            num_layers,
            num_heads,
            dropout,
            ffn_size=ffn_multiplier * hidden_size,
            activation=nn.GELU,
            extra_tokens=1,
        )
        self.mask_token_id = num_items + 1


class GRU4Rec(SequenceEncoder):
    """GRU4Rec: a GRU over item embeddings, then a linear projection (Hidasi et al. 2016,
    arXiv 1511.06939), in RecBole's form: embedding dropout, GRU, dense layer.

    A GRU's state moves even on zero inputs (its biases), so padding before the first item would
    change the state the items see. The recurrence therefore runs over the real items moved to the
    front of each row, and the outputs are moved back; no padding is ever fed before an item.

    forward: item ids `b n` -> hidden states `b n d`.
    """

    causal = True

    def __init__(
        self,
        num_items: int,
        hidden_size: int = 64,
        max_len: int = 50,
        num_layers: int = 1,
        dropout: float = 0.2,
    ) -> None:
        super().__init__(num_items, hidden_size, max_len)
        self.embedding_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(hidden_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.projection = nn.Linear(hidden_size, hidden_size)

    def encode(self, input_ids: Tensor, is_item: Tensor, appended: Tensor) -> Tensor:
        # Appended vectors continue the recurrence right after the last real item. Stable sort
        # puts the real positions (items, then appended) first, in their original order:
        # `order[b, k]` is the position of the k-th real one; `argsort(order)` is the inverse.
        inputs, is_real = with_appended(
            self.embedding_dropout(self.item_embedding(input_ids)), is_item, appended
        )
        order = torch.argsort((~is_real).to(torch.uint8), dim=1, stable=True)
        front_aligned = torch.gather(inputs, 1, rearrange(order, "b n -> b n 1").expand_as(inputs))
        states, _ = self.gru(front_aligned)
        hidden = self.projection(states)
        inverse = rearrange(torch.argsort(order, dim=1), "b n -> b n 1").expand_as(hidden)
        return torch.gather(hidden, 1, inverse)


class HSTULayer(nn.Module):
    """One HSTU layer (Zhai et al. 2024, arXiv 2402.17152, Eq. 1-3); `b n d` -> `b n d`.

    U, V, Q, K = split(SiLU(f1(LN(x))))                       (Eq. 1)
    A = SiLU(Q K^T / sqrt(d_head) + rab(i - j)) / max_len      (Eq. 2, pointwise: no softmax)
    Y = f2(Dropout(LN(A V) * U)) + x                          (Eq. 3)

    The reference code divides by the padded length n, which is max_len in its pipeline; dividing
    by max_len keeps that scale and makes the output independent of how much padding there is.
    Without a softmax, masking is a multiplication by 0/1, and a query with no visible key simply
    gets zeros (no NaN).
    """

    def __init__(self, hidden_size: int, num_heads: int, max_len: int, dropout: float) -> None:
        super().__init__()
        if hidden_size % num_heads != 0:
            raise ValueError(f"hidden_size={hidden_size} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.max_len = max_len
        self.input_norm = nn.LayerNorm(hidden_size)
        self.f1 = nn.Linear(hidden_size, 4 * hidden_size)
        # One learned scalar per distance bucket (i - j) clipped to max_len - 1, shared by the
        # heads as in the reference rab^p. Zero init: attention starts purely content-based.
        self.relative_position_bias = nn.Parameter(torch.zeros(max_len))
        self.attention_norm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.f2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        """hidden `b n d`, mask `b 1 n n` (bool, True = may attend) -> `b n d`."""
        n = hidden.shape[1]
        u, v, q, k = F.silu(self.f1(self.input_norm(hidden))).chunk(4, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.num_heads) for t in (q, k, v))
        positions = torch.arange(n, device=hidden.device)
        distance = (rearrange(positions, "i -> i 1") - rearrange(positions, "j -> 1 j")).clamp(
            0, self.max_len - 1
        )
        scores = torch.einsum("b h i d, b h j d -> b h i j", q, k) / math.sqrt(q.shape[-1])
        weights = F.silu(scores + self.relative_position_bias[distance]) / self.max_len * mask
        attended = rearrange(torch.einsum("b h i j, b h j d -> b h i d", weights, v), "b h n d -> b n (h d)")
        return hidden + self.f2(self.dropout(self.attention_norm(attended) * u))


class HSTU(SequenceEncoder):
    """HSTU: Hierarchical Sequential Transduction Units (Zhai et al. 2024, "Actions Speak Louder
    than Words", arXiv 2402.17152), item-id only (no timestamps, no action tokens).

    Item embedding * sqrt(d), dropout, `num_layers` HSTU layers with causal, padding-masked
    pointwise attention and relative position bias, final LayerNorm (the reference L2-normalizes
    instead; we keep LayerNorm so every encoder feeds the same dot-product scoring).

    forward: item ids `b n` -> hidden states `b n d`.
    """

    causal = True

    def __init__(
        self,
        num_items: int,
        hidden_size: int = 64,
        max_len: int = 50,
        num_layers: int = 2,
        num_heads: int = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__(num_items, hidden_size, max_len)
        self.embedding_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            HSTULayer(hidden_size, num_heads, max_len, dropout) for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(hidden_size)

    def encode(self, input_ids: Tensor, is_item: Tensor, appended: Tensor) -> Tensor:
        hidden = self.item_embedding(input_ids) * math.sqrt(self.hidden_size)
        hidden = self.embedding_dropout(hidden * rearrange(is_item, "b n -> b n 1"))
        hidden, is_real = with_appended(hidden, is_item, appended)
        mask = attention_mask(is_real, causal=True).to(hidden.dtype)
        for layer in self.layers:
            hidden = layer(hidden, mask)
        return self.final_norm(hidden)


SEQUENCE_ENCODERS: dict[str, type[SequenceEncoder]] = {
    encoder.__name__: encoder for encoder in (SASRec, BERT4Rec, GRU4Rec, HSTU)
}
