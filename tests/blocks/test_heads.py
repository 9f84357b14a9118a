"""ScoreHead: a linear read-out at one position per sequence."""

from __future__ import annotations

import pytest
import torch

from lightning_rec.blocks import ScoreHead, last_token_positions


def test_score_is_the_linear_map_of_the_hidden_state_at_the_score_position():
    head, (hidden, positions) = ScoreHead.hub_example()
    nn_bias = torch.nn.init.normal_(head.linear.bias)
    scores = head(hidden, positions)
    expected = torch.stack([hidden[row, position] for row, position in enumerate(positions.tolist())])
    torch.testing.assert_close(scores, expected @ head.linear.weight[0] + nn_bias)


def test_gradient_reaches_only_the_score_positions():
    head, (hidden, positions) = ScoreHead.hub_example()
    hidden.requires_grad_()
    head(hidden, positions).sum().backward()
    touched = hidden.grad.abs().sum(-1) > 0
    expected = torch.zeros_like(touched)
    expected[torch.arange(3), positions] = True
    assert torch.equal(touched, expected)


def test_fresh_head_scores_every_candidate_equally_and_rejects_bad_positions():
    head = ScoreHead(hidden_size=4)
    scores = head(torch.randn(5, 3, 4), torch.tensor([0, 1, 2, 2, 1]))
    assert torch.equal(scores, torch.zeros(5))
    with pytest.raises(ValueError, match=r"positions must lie in \[0, 3\)"):
        head(torch.randn(2, 3, 4), torch.tensor([0, 3]))


def test_last_token_positions_for_left_and_right_padding():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0]])
    assert last_token_positions(mask).tolist() == [3, 2, 0]
    with pytest.raises(ValueError, match="at least one real token"):
        last_token_positions(torch.zeros(1, 3))
