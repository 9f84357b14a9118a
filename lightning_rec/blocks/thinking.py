"""Thinking tokens: K latent reasoning steps over any sequence encoder.

The "Think" stage of DiffuReason (arXiv 2602.09744); the paper gives no code, so the form follows
ReaRec ("Think before recommend", arXiv 2503.22675): the encoder's output at the last position is
fed back as a new input position, marked by a learned reasoning-position embedding, and the same
encoder runs again over history + thoughts. Repeating K times yields K thought vectors; the last is
the intent hypothesis h0 that the diffusion head refines.

The block reuses the encoder's weights (it holds the encoder, it does not copy it) and adds only
the K reasoning-position embeddings, `K d` parameters.

Axis legend: b batch, n history positions, k thinking steps, d hidden size.
"""

from __future__ import annotations

import torch
from einops import repeat
from torch import Tensor, nn

from lightning_rec.blocks.sequence import SASRec, SequenceEncoder
from lightning_rec.hub.mixin import HubMixin

__all__ = ["ThinkingTokenEncoder"]


class ThinkingTokenEncoder(HubMixin, nn.Module):
    """K latent thinking steps over a :class:`SequenceEncoder`: item ids `b n` -> thoughts `b k d`.

    Step k (1..K) runs ``encoder(history, appended=[h + r_1, t_1 + r_2, ..., t_{k-1} + r_k])``, where
    h is the encoder's output at the last history position, t_j the j-th thought and r_j the
    j-th reasoning-position embedding; the output at the last appended position is t_k.

    Args:
        encoder: any sequence encoder; its weights are shared, not copied.
        num_thinking_tokens: K, the number of reasoning steps (ReaRec and DiffuReason use 2).
    """

    def __init__(self, encoder: SequenceEncoder, num_thinking_tokens: int = 2) -> None:
        super().__init__()
        if num_thinking_tokens < 1:
            raise ValueError(f"num_thinking_tokens must be >= 1, got {num_thinking_tokens}")
        self.encoder = encoder
        self.num_thinking_tokens = num_thinking_tokens
        self.reasoning_position_embedding = nn.Embedding(num_thinking_tokens, encoder.hidden_size)
        # The encoder's own position embeddings start at std 0.02; a thought should first be read
        # as "the summary of the history", so its marker starts equally small.
        nn.init.normal_(self.reasoning_position_embedding.weight, std=0.02)

    @classmethod
    def hub_example(cls) -> tuple[ThinkingTokenEncoder, tuple[Tensor]]:
        """A tiny SASRec with 2 thinking steps, and a left-padded batch of ids ``(3 8)``."""
        encoder, inputs = SASRec.hub_example()
        return cls(encoder, num_thinking_tokens=2), inputs

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
            # Inputs [h + r_1, t_1 + r_2, ..., t_step + r_(step+1)]: each appended position is the
            # previous step's output plus that step's marker.
            inputs = torch.stack([start, *thoughts], dim=2)  # (b r step+1 d)
            inputs = inputs + self.reasoning_position_embedding.weight[: step + 1]
            if positions is None:
                thoughts.append(self.encoder.extend(state, inputs[:, 0])[:, None, -1])
            else:
                thoughts.append(self.encoder.extend(state, inputs, positions)[:, :, -1])
        thoughts_tensor = torch.stack(thoughts, dim=2)  # (b r k d)
        return thoughts_tensor[:, 0] if positions is None else thoughts_tensor
