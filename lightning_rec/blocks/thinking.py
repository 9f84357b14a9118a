"""Thinking tokens: K latent reasoning steps over any sequence encoder.

The "Think" stage of DiffuReason (arXiv 2602.09744); the paper gives no code, so the form follows
ReaRec ("Think before recommend", arXiv 2503.22675): the encoder's output at the last position is
fed back as a new input position, marked by a learned reasoning-position embedding, and the same
encoder runs again over history + thoughts. Repeating K times yields K thought vectors; the last is
the intent hypothesis h0 that the diffusion head refines.

The block reuses the encoder's weights (it holds the encoder, it does not copy it) and adds only
the K reasoning-position embeddings, plus the feedback's few parameters (see ``feedback``).

**The encoder protocol** (:class:`ThinkingBackbone`): an ``nn.Module`` with ``hidden_size`` (d),
``encode_prefix(input_ids (b n)) -> (hidden (b n d), state)`` and
``extend(state, appended (b k d)) -> (b k d)`` (plus ``positions`` (b r) with appended ``(b r k d)``
for causal encoders: thinking at inner positions). Every :class:`SequenceEncoder` implements it,
transformers with a KV cache so that each thinking step costs its appended positions only. Any other
module mapping ids ``(b n)`` -> ``(b n d)`` (through an ``nn.Embedding``), or embeddings
``(b n d)`` -> ``(b n d)``, becomes one with :func:`as_sequence_encoder`, which re-encodes the
history at every step (there is no cache to extend).

Axis legend: b batch, n history positions, r requests per row, k thinking steps, d hidden size.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, Protocol, runtime_checkable

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from lightning_rec.blocks.sequence import PADDING_ID, SASRec
from lightning_rec.hub.mixin import HubMixin

__all__ = ["ModuleSequenceEncoder", "ThinkingBackbone", "ThinkingTokenEncoder", "as_sequence_encoder"]

FeedbackName = Literal["gated", "projected"]
FEEDBACKS = ("gated", "projected")


@runtime_checkable
class ThinkingBackbone(Protocol):
    """What :class:`ThinkingTokenEncoder` needs of its encoder (every ``SequenceEncoder`` has it).

    Attributes:
        hidden_size: d, the width of the outputs and of the appended input vectors.

    Thinking at inner positions (``positions``) also needs the encoder to be causal (the output at
    t depends on no item after t); ``extend`` rejects ``positions`` otherwise.
    """

    hidden_size: int

    def encode_prefix(self, input_ids: Tensor) -> tuple[Tensor, object]:
        """Item ids `b n` (left-padded, 0 = padding) -> hidden states `b n d` and a state for `extend`."""
        ...

    def extend(self, prefix: object, appended: Tensor, positions: Tensor | None = None) -> Tensor:
        """The state of `encode_prefix`, appended input vectors `b k d` placed after the last position
        -> their outputs `b k d`. With ``positions`` `b r`: appended `b r k d`, request r's vectors
        follow position ``positions[b, r]`` and see the history up to it only -> `b r k d`."""
        ...


class ModuleSequenceEncoder(HubMixin, nn.Module):
    """A user's module as a :class:`ThinkingBackbone`, by re-encoding; built by :func:`as_sequence_encoder`.

    ``module`` maps item ids `b n` -> `b n d` and looks its inputs up in its own ``nn.Embedding``
    named ``embedding_name`` (``module.get_submodule(embedding_name)``): appended vectors replace
    that embedding's outputs at the appended positions, whose ids are padding. With
    ``takes_embeddings`` the module maps `b n d` -> `b n d` and the adapter looks the ids up in
    ``embedding`` (then a submodule of the adapter) itself. The layer is named rather than passed in
    ids mode so that ``save_pretrained`` writes it once, inside ``module``; a ``module`` of your own
    class saves once it is registered (``lightning_rec.hub.register_trusted_class``).

    Padding is id 0 on the left, as the data pipeline makes it; the module sees it as it is, so a
    module that does not mask padding reads it like an item.

    forward: item ids `b n`, appended `b k d` (optional) -> `b (n + k) d`.
    """

    def __init__(
        self,
        module: nn.Module,
        embedding_name: str = "",
        embedding: nn.Embedding | None = None,
        takes_embeddings: bool = False,
        causal: bool = True,
    ) -> None:
        super().__init__()
        self.module = module
        self.takes_embeddings = takes_embeddings
        if takes_embeddings:
            if embedding is None:
                raise ValueError("takes_embeddings=True needs embedding=nn.Embedding(...) to look the ids up")
            self.embedding = embedding
        else:
            embedding = module.get_submodule(embedding_name)
            if not isinstance(embedding, nn.Embedding):
                raise ValueError(
                    f"module.{embedding_name} is a {type(embedding).__name__}, not an nn.Embedding"
                )
            # The module owns (and saves) this layer; a second registration would save it twice.
            object.__setattr__(self, "_input_embedding", embedding)
        self.hidden_size = embedding.embedding_dim
        self.causal = causal

    @classmethod
    def hub_example(cls) -> tuple[ModuleSequenceEncoder, tuple[Tensor]]:
        """An ``nn.Sequential(Embedding, Linear)`` over 10 items, and a left-padded batch ``(3 8)``."""
        module = nn.Sequential(nn.Embedding(11, 8, padding_idx=PADDING_ID), nn.Linear(8, 8))
        return cls(module, embedding_name="0"), (torch.randint(0, 11, (3, 8)),)

    def forward(self, input_ids: Tensor, appended: Tensor | None = None) -> Tensor:
        batch, n = input_ids.shape
        if appended is None:
            appended = input_ids.new_zeros(batch, 0, self.hidden_size, dtype=torch.float32)
        if appended.dim() != 3 or appended.shape[0] != batch or appended.shape[2] != self.hidden_size:
            raise ValueError(
                f"appended must have shape (b, k, {self.hidden_size}) with b={batch}, "
                f"got {tuple(appended.shape)}"
            )
        ids = torch.cat([input_ids, input_ids.new_full(appended.shape[:2], PADDING_ID)], dim=1)
        return self._encode(ids, appended, input_ids.new_full((batch,), n))

    def _encode(self, ids: Tensor, appended: Tensor, at: Tensor) -> Tensor:
        """ids `b L` (padding where the appended vectors go), appended `b k d` placed at positions
        `at[b] .. at[b] + k - 1` -> the module's outputs `b L d`."""
        batch, length = ids.shape
        k = appended.shape[1]
        slot = torch.arange(length, device=ids.device) - rearrange(at, "b -> b 1")  # (b L)
        in_slot = rearrange((slot >= 0) & (slot < k), "b L -> b L 1")

        def place(inputs: Tensor) -> Tensor:
            if k == 0:
                return inputs
            index = repeat(slot.clamp(0, k - 1), "b L -> b L d", d=appended.shape[2])
            return torch.where(in_slot, appended.gather(1, index).to(inputs.dtype), inputs)

        if self.takes_embeddings:
            hidden = self.module(place(self.embedding(ids)))
        else:

            def place_appended(layer: nn.Module, args: tuple, output: Tensor) -> Tensor:
                if output.shape[:2] != (batch, length):
                    raise ValueError(
                        f"the module called its embedding on shape {tuple(output.shape[:2])}, expected the "
                        f"ids (b, n) = {(batch, length)}; pass the embedding that reads the module's input"
                    )
                return place(output)

            handle = self._input_embedding.register_forward_hook(place_appended)
            try:
                hidden = self.module(ids)
            finally:
                handle.remove()
        if tuple(hidden.shape) != (batch, length, self.hidden_size):
            raise ValueError(
                f"{type(self.module).__name__} returned shape {tuple(hidden.shape)}; a thinking backbone "
                f"must map (b, n) to (b, n, d) = {(batch, length, self.hidden_size)}"
            )
        return hidden

    def encode_prefix(self, input_ids: Tensor) -> tuple[Tensor, object]:
        return self(input_ids), input_ids

    def extend(self, prefix: object, appended: Tensor, positions: Tensor | None = None) -> Tensor:
        input_ids = prefix
        n = input_ids.shape[1]
        if positions is None:
            return self(input_ids, appended)[:, n:]
        if not self.causal:
            raise ValueError(
                "thinking at inner positions needs a causal module (as_sequence_encoder(causal=True))"
            )
        # Request (b, r) re-encodes the window with its items after t = positions[b, r] dropped and
        # the k appended vectors at t + 1 .. t + k: the history keeps the window's layout (its left
        # padding included), so a module that reads padding sees what the window's state at t saw,
        # and the padding after the appended vectors is invisible to them (causal).
        r, k = positions.shape[1], appended.shape[2]
        flat_positions = rearrange(positions, "b r -> (b r)")
        ids = torch.cat(
            [repeat(input_ids, "b n -> (b r) n", r=r), input_ids.new_zeros(len(flat_positions), k)], 1
        )
        ids = torch.where(torch.arange(n + k, device=ids.device) > flat_positions[:, None], PADDING_ID, ids)
        hidden = self._encode(ids, rearrange(appended, "b r k d -> (b r) k d"), flat_positions + 1)
        offsets = rearrange(flat_positions, "m -> m 1 1") + 1 + torch.arange(k, device=ids.device)[:, None]
        outputs = hidden.gather(1, offsets.expand(-1, -1, self.hidden_size))
        return rearrange(outputs, "(b r) k d -> b r k d", r=r)


def as_sequence_encoder(
    module: nn.Module,
    embedding: nn.Embedding | None = None,
    takes_embeddings: bool = False,
    causal: bool = True,
) -> ModuleSequenceEncoder:
    """Wrap any module mapping item ids `b n` -> `b n d` (or embeddings `b n d` -> `b n d`) for thinking.

    Args:
        module: the encoder. By default it takes item ids and looks them up in an ``nn.Embedding``
            of its own whose width is d.
        embedding: ids mode: that embedding layer inside ``module`` (default: its only
            ``nn.Embedding``). Embeddings mode: the table the adapter looks the ids up in (required).
        takes_embeddings: ``module`` maps embeddings `b n d` instead of ids.
        causal: the module's output at t ignores later positions (needed to think at inner positions).

    Each thinking step re-encodes the whole history with the appended vectors: k steps cost k + 1
    encoder passes, against one pass plus k short extensions for this library's transformers.
    """
    if takes_embeddings and embedding is None:
        raise ValueError("takes_embeddings=True needs embedding=nn.Embedding(...) to look the item ids up")
    if embedding is None:
        found = [layer for layer in module.modules() if isinstance(layer, nn.Embedding)]
        if len(found) != 1:
            raise ValueError(
                f"{type(module).__name__} has {len(found)} nn.Embedding layers; as_sequence_encoder needs "
                "exactly one, or embedding=<the layer that reads the item ids>, or takes_embeddings=True "
                "with an embedding table"
            )
        embedding = found[0]
    elif not takes_embeddings and not any(layer is embedding for layer in module.modules()):
        raise ValueError(
            "embedding must be a layer of module (ids mode): the one whose outputs appended vectors extend"
        )
    if takes_embeddings:
        return ModuleSequenceEncoder(module, embedding=embedding, takes_embeddings=True, causal=causal)
    name = next(name for name, layer in module.named_modules() if layer is embedding)
    return ModuleSequenceEncoder(module, embedding_name=name, causal=causal)


class ThinkingTokenEncoder(HubMixin, nn.Module):
    """K latent thinking steps over a :class:`ThinkingBackbone`: item ids `b n` -> thoughts `b k d`.

    Step k (1..K) runs ``encoder(history, appended=[f(h) + r_1, f(t_1) + r_2, ..., f(t_{k-1}) + r_k])``,
    where h is the encoder's output at the last history position, t_j the j-th thought, r_j the j-th
    reasoning-position embedding and f the feedback; the output at the last appended position is o_k.

    ``feedback`` (why the Think stage must start as the backbone: the fed-back state is a LayerNorm
    output, norm about sqrt(d), 6x an item input at init, and a fresh thought replaces a trained
    backbone state with an untrained one):

    - ``"gated"`` (default): f is the identity and t_k = h + g_k * (o_k - h), with per-dimension gates
      g `k d` initialised to zero (ReZero-style). At init every thought is h, so a model that ranks
      with the last thought is exactly the backbone, and the gate opens as far as the loss pays for.
    - ``"projected"``: f = Linear(LayerNorm(.)), the Linear initialised N(0, 0.02^2), so a fed-back
      thought enters at an item input's scale (item embedding std 0.02 times sqrt(d)); t_k = o_k.

    ``thought_dropout`` False (default): thought positions are encoded without dropout (the encoder
    runs in eval mode for the appended positions; encoders that re-encode the history for them read
    it without dropout too). The backbone's dropout (0.5 on ml-100k) regularises item inputs; on the
    one vector that carries the whole reasoning it is noise the ranking loss then has to average out.

    Args:
        encoder: the backbone; its weights are shared, not copied. A module that is no
            :class:`ThinkingBackbone` is wrapped with ``as_sequence_encoder(encoder)``.
        num_thinking_tokens: K, the number of reasoning steps (ReaRec and DiffuReason use 2).
        feedback: ``"gated"`` or ``"projected"``, see above.
        thought_dropout: apply the encoder's dropout to thought positions.
    """

    def __init__(
        self,
        encoder: nn.Module,
        num_thinking_tokens: int = 2,
        feedback: FeedbackName = "gated",
        thought_dropout: bool = False,
    ) -> None:
        super().__init__()
        if num_thinking_tokens < 1:
            raise ValueError(f"num_thinking_tokens must be >= 1, got {num_thinking_tokens}")
        if feedback not in FEEDBACKS:
            raise ValueError(f"feedback must be one of {FEEDBACKS}, got {feedback!r}")
        self.encoder = encoder if isinstance(encoder, ThinkingBackbone) else as_sequence_encoder(encoder)
        self.num_thinking_tokens = num_thinking_tokens
        self.feedback = feedback
        self.thought_dropout = thought_dropout
        d = self.encoder.hidden_size
        self.reasoning_position_embedding = nn.Embedding(num_thinking_tokens, d)
        # The encoder's own position embeddings start at std 0.02; a thought should first be read
        # as "the summary of the history", so its marker starts equally small.
        nn.init.normal_(self.reasoning_position_embedding.weight, std=0.02)
        if feedback == "gated":
            self.gate = nn.Parameter(torch.zeros(num_thinking_tokens, d))
        else:
            self.feedback_norm = nn.LayerNorm(d)
            self.feedback_projection = nn.Linear(d, d)
            nn.init.normal_(self.feedback_projection.weight, std=0.02)
            nn.init.zeros_(self.feedback_projection.bias)

    @classmethod
    def hub_example(cls) -> tuple[ThinkingTokenEncoder, tuple[Tensor]]:
        """A tiny SASRec with 2 thinking steps, and a left-padded batch of ids ``(3 8)``.

        The zero-initialised gates are opened so that the example's output depends on every weight.
        """
        encoder, inputs = SASRec.hub_example()
        thinking = cls(encoder, num_thinking_tokens=2)
        nn.init.normal_(thinking.gate, mean=1.0, std=0.1)
        return thinking, inputs

    def forward(
        self, input_ids: Tensor, prefix: tuple[Tensor, object] | None = None, positions: Tensor | None = None
    ) -> Tensor:
        """Item ids `b n` (left-padded) -> thoughts `b k d`; the last, `[:, -1]`, is the intent hypothesis.

        ``prefix`` (optional): ``encoder.encode_prefix(input_ids)`` when the caller has it already
        (a training step needs the hidden states for the next-item loss), saving one encoder pass.
        Causal transformers extend a KV cache, so each step costs its appended positions only.

        ``positions`` (optional, `b r` long, causal encoders): think at these positions instead of
        the last, each from the history up to it -> thoughts `b r k d`. One encoded window then
        yields r requests, as a next-item loss at every position does.
        """
        hidden, state = prefix if prefix is not None else self.encoder.encode_prefix(input_ids)
        if positions is None:
            start = hidden[:, -1:]  # (b 1 d): one request, at the last position
        else:
            start = hidden.gather(1, repeat(positions, "b r -> b r d", d=hidden.shape[-1]))  # (b r d)
        thoughts: list[Tensor] = []
        for step in range(self.num_thinking_tokens):
            # Inputs [f(h) + r_1, f(t_1) + r_2, ..., f(t_step) + r_(step+1)]: each appended position
            # is the previous step's thought, fed back, plus that step's marker.
            inputs = self._fed_back(torch.stack([start, *thoughts], dim=2))  # (b r step+1 d)
            inputs = inputs + self.reasoning_position_embedding.weight[: step + 1]
            with self._thought_dropout_mode():
                if positions is None:
                    output = self.encoder.extend(state, inputs[:, 0])[:, None, -1]
                else:
                    output = self.encoder.extend(state, inputs, positions)[:, :, -1]
            if self.feedback == "gated":
                output = start + self.gate[step] * (output - start)
            thoughts.append(output)
        thoughts_tensor = torch.stack(thoughts, dim=2)  # (b r k d)
        return thoughts_tensor[:, 0] if positions is None else thoughts_tensor

    def _fed_back(self, thoughts: Tensor) -> Tensor:
        """f: the thoughts `... d` as the encoder's next inputs `... d`."""
        if self.feedback == "gated":
            return thoughts
        return self.feedback_projection(self.feedback_norm(thoughts))

    @contextmanager
    def _thought_dropout_mode(self) -> Iterator[None]:
        """Eval mode for the encoder while it encodes thought positions, unless ``thought_dropout``.

        Each submodule's own mode is restored afterwards, so a caller's mixed modes survive.
        """
        if self.thought_dropout or not self.encoder.training:
            yield
            return
        modes = [(module, module.training) for module in self.encoder.modules()]
        self.encoder.eval()
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training
