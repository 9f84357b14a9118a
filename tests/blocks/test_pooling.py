"""blocks/pooling.py: the sentence vector is the normalised mean of the real tokens, whatever the padding."""

from __future__ import annotations

import torch

from lightning_rec.blocks.pooling import mean_pooled_sentence_vectors


def test_mean_over_real_tokens_equals_a_loop_and_ignores_padding_values() -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(4, 7, 5, generator=generator, dtype=torch.float64)
    lengths = [7, 1, 4, 2]
    mask = torch.tensor([[1] * k + [0] * (7 - k) for k in lengths])
    expected = torch.stack(
        [hidden[i, :k].mean(0) / hidden[i, :k].mean(0).norm() for i, k in enumerate(lengths)]
    )
    vectors = mean_pooled_sentence_vectors(hidden, mask)
    assert vectors.dtype == torch.float32
    torch.testing.assert_close(vectors, expected.float())
    garbage = torch.where(mask.bool().unsqueeze(-1), hidden, torch.randn_like(hidden) * 1e3)
    torch.testing.assert_close(mean_pooled_sentence_vectors(garbage, mask), vectors)
