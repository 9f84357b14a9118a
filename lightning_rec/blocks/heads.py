"""``ScoreHead``: a scalar read from a language model's hidden state at a score token.

Reasoning to Rank (arXiv 2602.12530) scores each (user, candidate) pair by a linear map of the LLM's
last-layer hidden state at one position (after the rationale, or after the prompt when there is no
rationale). The scores of a user's candidates are then the utilities of a Plackett-Luce ranking
distribution (:mod:`lightning_rec.objectives.plackett_luce`).

Axis legend:
    b  sequences (one per candidate)
    t  tokens
    d  hidden size
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from lightning_rec.hub.mixin import HubMixin

__all__ = ["ScoreHead", "last_token_positions"]


class ScoreHead(HubMixin, nn.Module):
    """``hidden_states (b t d)``, ``positions (b)`` -> ``scores (b)``: w . h_{b, positions_b} + c.

    Args:
        hidden_size: d.
        bias: learn the offset c (a PL distribution ignores a shared offset; it matters only for a
            caller that reads the scores on their own).
    """

    def __init__(self, hidden_size: int = 64, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1, bias=bias)
        # Zero init: every candidate starts at the same score, so the first rankings are uniform
        # and the head's first gradient is not drowned by a random projection's scale.
        nn.init.zeros_(self.linear.weight)
        if bias:
            nn.init.zeros_(self.linear.bias)

    @classmethod
    def hub_example(cls) -> tuple[ScoreHead, tuple[Tensor, Tensor]]:
        """A head (d 8) with random weights, 3 sequences of 5 tokens and their score positions."""
        head = cls(hidden_size=8)
        generator = torch.Generator().manual_seed(0)
        nn.init.normal_(head.linear.weight, generator=generator)
        return head, (torch.randn(3, 5, 8, generator=generator), torch.tensor([4, 2, 0]))

    def forward(self, hidden_states: Tensor, positions: Tensor) -> Tensor:
        """``(b t d)`` hidden states and ``(b)`` long positions of the score tokens -> ``(b)`` scores."""
        if hidden_states.dim() != 3:
            raise ValueError(f"hidden_states must have shape (b t d), got {tuple(hidden_states.shape)}")
        b, t, _ = hidden_states.shape
        if positions.shape != (b,):
            raise ValueError(f"positions must have shape (b) = ({b},), got {tuple(positions.shape)}")
        if bool(((positions < 0) | (positions >= t)).any()):
            raise ValueError(f"positions must lie in [0, {t}), got {positions.tolist()}")
        index = rearrange(positions.long(), "b -> b 1 1").expand(b, 1, hidden_states.shape[-1])
        at_score = rearrange(hidden_states.gather(1, index), "b 1 d -> b d")
        return rearrange(self.linear(at_score), "b 1 -> b")


def last_token_positions(attention_mask: Tensor) -> Tensor:
    """``(b t)`` attention mask (1 on real tokens, any padding side) -> ``(b)`` index of each row's
    last real token: the score token of a sequence that ends where its text ends."""
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must have shape (b t), got {tuple(attention_mask.shape)}")
    real = attention_mask.bool()
    if not bool(real.any(dim=1).all()):
        raise ValueError("every row needs at least one real token")
    t = attention_mask.shape[1]
    # The last True of each row: argmax over the reversed row finds the first True from the end.
    return t - 1 - real.flip(1).long().argmax(dim=1)
