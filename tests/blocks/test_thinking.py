import pytest
import torch
from torch import nn

from lightning_rec.blocks import HSTU, BERT4Rec, GRU4Rec, SASRec, ThinkingTokenEncoder

ENCODERS = [SASRec, BERT4Rec, GRU4Rec, HSTU]


def _histories(generator: torch.Generator, num_items: int = 30) -> torch.Tensor:
    ids = torch.randint(1, num_items + 1, (4, 10), generator=generator)
    ids[0, :6] = 0
    ids[1, :2] = 0
    return ids


@pytest.mark.parametrize("encoder_class", ENCODERS)
def test_shapes_shared_weights_and_only_k_d_new_parameters(encoder_class):
    torch.manual_seed(0)
    encoder = encoder_class(num_items=30, hidden_size=16, max_len=12)
    thinking = ThinkingTokenEncoder(encoder, num_thinking_tokens=3)
    thoughts = thinking(_histories(torch.Generator().manual_seed(1)))
    assert thoughts.shape == (4, 3, 16) and torch.isfinite(thoughts).all()
    own = {id(p) for p in thinking.parameters()} - {id(p) for p in encoder.parameters()}
    assert sum(p.numel() for p in thinking.parameters() if id(p) in own) == 3 * 16
    assert thinking.encoder is encoder


@pytest.mark.parametrize("encoder_class", ENCODERS)
def test_thoughts_follow_the_recursive_definition(encoder_class):
    """Brute force: run the encoder by hand step by step on each row alone (no padding)."""
    torch.manual_seed(0)
    encoder = encoder_class(num_items=30, hidden_size=16, max_len=12).eval()
    thinking = ThinkingTokenEncoder(encoder, num_thinking_tokens=2).eval()
    ids = _histories(torch.Generator().manual_seed(2))
    markers = thinking.reasoning_position_embedding.weight
    with torch.no_grad():
        batched = thinking(ids)
        for row in range(len(ids)):
            items = ids[row][ids[row] > 0][None]  # (1 m) unpadded
            h = encoder(items)[:, -1]
            t1 = encoder(items, appended=(h + markers[0])[:, None])[:, -1]
            t2 = encoder(items, appended=torch.stack([h + markers[0], t1 + markers[1]], dim=1))[:, -1]
            torch.testing.assert_close(batched[row], torch.cat([t1, t2]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("encoder_class", [SASRec, GRU4Rec, HSTU])
def test_causal_encoders_items_never_see_appended_positions(encoder_class):
    torch.manual_seed(0)
    encoder = encoder_class(num_items=30, hidden_size=16, max_len=12).eval()
    ids = _histories(torch.Generator().manual_seed(3))
    appended = torch.randn(4, 2, 16)
    with torch.no_grad():
        plain = encoder(ids)
        extended = encoder(ids, appended=appended)
        other = encoder(ids, appended=torch.randn(4, 2, 16))
    assert extended.shape == (4, 12, 16)
    torch.testing.assert_close(extended[:, :10], plain)
    # The first appended output does not depend on the second appended input.
    torch.testing.assert_close(extended[:, 10], encoder(ids, appended=appended[:, :1])[:, 10])
    assert not torch.allclose(extended[:, 11], other[:, 11])


def test_gru_appended_vectors_continue_the_recurrence():
    """Oracle: nn.GRU over [item embeddings, appended] of the unpadded row, then the projection."""
    torch.manual_seed(0)
    encoder = GRU4Rec(num_items=30, hidden_size=16, max_len=12).eval()
    ids = _histories(torch.Generator().manual_seed(4))
    appended = torch.randn(4, 2, 16)
    with torch.no_grad():
        out = encoder(ids, appended=appended)
        for row in range(4):
            items = ids[row][ids[row] > 0]
            inputs = torch.cat([encoder.item_embedding(items), appended[row]])[None]
            expected = encoder.projection(encoder.gru(inputs)[0])[0, -2:]
            torch.testing.assert_close(out[row, -2:], expected, atol=1e-5, rtol=1e-4)


def test_gradients_reach_the_encoder_and_the_markers():
    torch.manual_seed(0)
    encoder = SASRec(num_items=30, hidden_size=16, max_len=12)
    thinking = ThinkingTokenEncoder(encoder, num_thinking_tokens=2)
    thinking(_histories(torch.Generator().manual_seed(5)))[:, -1].pow(2).sum().backward()
    assert thinking.reasoning_position_embedding.weight.grad.abs().sum() > 0
    assert encoder.layers[0].qkv.weight.grad.abs().sum() > 0


def test_bad_arguments():
    encoder = SASRec(num_items=30, hidden_size=16, max_len=12)
    with pytest.raises(ValueError, match="num_thinking_tokens"):
        ThinkingTokenEncoder(encoder, num_thinking_tokens=0)
    with pytest.raises(ValueError, match=r"appended must have shape \(b, k, 16\)"):
        encoder(torch.ones(2, 3, dtype=torch.long), appended=torch.zeros(2, 1, 8))
    assert isinstance(ThinkingTokenEncoder(encoder).reasoning_position_embedding, nn.Embedding)


@pytest.mark.parametrize("encoder_class", [SASRec, GRU4Rec, HSTU])
def test_thinking_at_inner_positions(encoder_class):
    """At the last position it is the plain call; at an inner position of a GRU/HSTU window it equals
    thinking over the history cut at that position (both encoders are exactly causal)."""
    torch.manual_seed(0)
    encoder = encoder_class(num_items=30, hidden_size=16, max_len=12, dropout=0.0).eval()
    thinking = ThinkingTokenEncoder(encoder, num_thinking_tokens=2).eval()
    ids = _histories(torch.Generator().manual_seed(6))
    positions = torch.tensor([[9, 7], [9, 4], [9, 8], [9, 6]])
    with torch.no_grad():
        thoughts = thinking(ids, positions=positions)
        assert thoughts.shape == (4, 2, 2, 16)
        torch.testing.assert_close(thoughts[:, 0], thinking(ids), atol=1e-5, rtol=1e-4)
        if encoder_class is not SASRec:  # SASRec numbers positions from the window's end
            for row in range(4):
                cut = ids[row : row + 1, : positions[row, 1] + 1]
                torch.testing.assert_close(thoughts[row, 1], thinking(cut)[0], atol=1e-5, rtol=1e-4)
