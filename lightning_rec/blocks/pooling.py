"""Sentence vectors from a text encoder's token states: the sentence-transformers recipe.

Axes: t texts, n tokens, d hidden size.
"""

from __future__ import annotations

import torch.nn.functional as F
from einops import rearrange, reduce
from torch import Tensor

__all__ = ["mean_pooled_sentence_vectors"]


def mean_pooled_sentence_vectors(hidden: Tensor, attention_mask: Tensor) -> Tensor:
    """Token states `t n d` and their attention mask `t n` -> unit-norm float32 sentence vectors `t d`:
    the mean over the real tokens (padding excluded), L2-normalised, as sentence-transformers'
    MiniLM models are trained to be read."""
    weights = rearrange(attention_mask, "t n -> t n 1").to(hidden.dtype)
    pooled = reduce(hidden * weights, "t n d -> t d", "sum") / reduce(weights, "t n 1 -> t 1", "sum")
    return F.normalize(pooled.float(), dim=-1)
