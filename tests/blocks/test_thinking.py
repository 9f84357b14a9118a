import pytest
import torch
from torch import nn

from lightning_rec.blocks import (
    HSTU,
    BERT4Rec,
    GRU4Rec,
    SASRec,
    ThinkingBackbone,
    ThinkingTokenEncoder,
    as_sequence_encoder,
)

ENCODERS = [SASRec, BERT4Rec, GRU4Rec, HSTU]


def _opened(thinking: ThinkingTokenEncoder) -> ThinkingTokenEncoder:
    """Gates at 1: each thought is the encoder's output at its position (ReaRec's plain recursion)."""
    with torch.no_grad():
        thinking.gate.fill_(1.0)
    return thinking


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
    # K markers and K gates of width d.
    assert sum(p.numel() for p in thinking.parameters() if id(p) in own) == 2 * 3 * 16
    assert thinking.encoder is encoder


@pytest.mark.parametrize("encoder_class", ENCODERS)
def test_thoughts_follow_the_recursive_definition(encoder_class):
    """Brute force: run the encoder by hand step by step on each row alone (no padding)."""
    torch.manual_seed(0)
    encoder = encoder_class(num_items=30, hidden_size=16, max_len=12).eval()
    thinking = _opened(ThinkingTokenEncoder(encoder, num_thinking_tokens=2)).eval()
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


def test_gradients_open_the_gate_then_reach_the_markers():
    torch.manual_seed(0)
    encoder = SASRec(num_items=30, hidden_size=16, max_len=12)
    thinking = ThinkingTokenEncoder(encoder, num_thinking_tokens=2)
    ids = _histories(torch.Generator().manual_seed(5))
    thinking(ids)[:, -1].pow(2).sum().backward()
    # Closed gates: the thought is the backbone state, and only the gate of the last step learns.
    assert thinking.gate.grad[-1].abs().sum() > 0
    assert thinking.reasoning_position_embedding.weight.grad.abs().sum() == 0
    assert encoder.layers[0].qkv.weight.grad.abs().sum() > 0
    thinking.zero_grad()
    _opened(thinking)(ids)[:, -1].pow(2).sum().backward()
    assert thinking.reasoning_position_embedding.weight.grad.abs().sum() > 0


def test_bad_arguments():
    encoder = SASRec(num_items=30, hidden_size=16, max_len=12)
    with pytest.raises(ValueError, match="num_thinking_tokens"):
        ThinkingTokenEncoder(encoder, num_thinking_tokens=0)
    with pytest.raises(ValueError, match="feedback"):
        ThinkingTokenEncoder(encoder, feedback="raw")
    with pytest.raises(ValueError, match=r"appended must have shape \(b, k, 16\)"):
        encoder(torch.ones(2, 3, dtype=torch.long), appended=torch.zeros(2, 1, 8))
    assert isinstance(ThinkingTokenEncoder(encoder).reasoning_position_embedding, nn.Embedding)


@pytest.mark.parametrize("encoder_class", [SASRec, GRU4Rec, HSTU])
def test_thinking_at_inner_positions(encoder_class):
    """At the last position it is the plain call; at an inner position of a GRU/HSTU window it equals
    thinking over the history cut at that position (both encoders are exactly causal)."""
    torch.manual_seed(0)
    encoder = encoder_class(num_items=30, hidden_size=16, max_len=12, dropout=0.0).eval()
    thinking = _opened(ThinkingTokenEncoder(encoder, num_thinking_tokens=2)).eval()
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


@pytest.mark.parametrize("encoder_class", ENCODERS)
def test_gated_think_stage_is_the_backbone_at_init(encoder_class):
    """Gates at zero: every thought is exactly the backbone's last state, in train mode too."""
    torch.manual_seed(0)
    encoder = encoder_class(num_items=30, hidden_size=16, max_len=12, dropout=0.5).train()
    thinking = ThinkingTokenEncoder(encoder, num_thinking_tokens=3)
    ids = _histories(torch.Generator().manual_seed(7))
    prefix = encoder.encode_prefix(ids)
    thoughts = thinking(ids, prefix=prefix)
    assert torch.equal(thoughts, prefix[0][:, -1:].expand(-1, 3, -1))
    with torch.no_grad():
        assert torch.equal(thinking.eval()(ids), encoder.eval()(ids)[:, -1:].expand(-1, 3, -1))


def test_projected_feedback_enters_at_an_item_inputs_scale():
    """The raw fed-back state is a LayerNorm output (norm ~ sqrt(d) = 8 at d 64), 6x an item input
    (item embedding * sqrt(d), norm ~ 1.3); the projection brings it to the item's scale."""
    torch.manual_seed(0)
    encoder = SASRec(num_items=300, hidden_size=64, max_len=12).eval()
    thinking = ThinkingTokenEncoder(encoder, feedback="projected").eval()
    ids = torch.randint(1, 301, (32, 12), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        state = encoder(ids)[:, -1]
        item_norm = (encoder.item_embedding(ids) * 8.0).norm(dim=-1).mean()
        raw, fed = state.norm(dim=-1).mean(), thinking._fed_back(state).norm(dim=-1).mean()
        assert raw > 4 * item_norm
        assert 0.5 < fed / item_norm < 2.0
        assert thinking(ids).shape == (32, 2, 64)
    assert not hasattr(thinking, "gate")


@pytest.mark.parametrize("encoder_class", [SASRec, GRU4Rec, HSTU])
def test_thought_positions_get_no_dropout_unless_asked(encoder_class):
    torch.manual_seed(0)
    encoder = encoder_class(num_items=30, hidden_size=16, max_len=12, dropout=0.5).train()
    ids = _histories(torch.Generator().manual_seed(9))
    prefix = encoder.encode_prefix(ids)
    quiet = _opened(ThinkingTokenEncoder(encoder))
    assert torch.equal(quiet(ids, prefix=prefix), quiet(ids, prefix=prefix))
    assert encoder.training and all(module.training for module in encoder.modules())
    noisy = _opened(ThinkingTokenEncoder(encoder, thought_dropout=True))
    assert not torch.equal(noisy(ids, prefix=prefix), noisy(ids, prefix=prefix))


class MyEncoder(nn.Module):
    """Issue 19's user encoder: an nn.Embedding and an nn.GRU, no lightning-rec base class."""

    def __init__(self, num_items: int = 30, width: int = 16) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_items + 1, width, padding_idx=0)
        self.gru = nn.GRU(width, width, batch_first=True)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.gru(self.embedding(input_ids))[0]


class MyEmbeddingEncoder(nn.Module):
    """A module of embeddings (b n d) -> (b n d)."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.gru = nn.GRU(width, width, batch_first=True)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.gru(embeddings)[0]


def test_a_users_id_encoder_thinks_through_the_adapter():
    """Oracle: the recursion run by hand with the user's GRU on [item embeddings, fed-back thoughts]."""
    torch.manual_seed(0)
    user = MyEncoder()
    assert not isinstance(user, ThinkingBackbone)
    thinking = _opened(ThinkingTokenEncoder(user, num_thinking_tokens=2))  # wrapped automatically
    assert isinstance(thinking.encoder, ThinkingBackbone) and thinking.encoder.module is user
    ids = _histories(torch.Generator().manual_seed(10))
    markers = thinking.reasoning_position_embedding.weight
    with torch.no_grad():
        thoughts = thinking(ids)
        items = user.embedding(ids)
        h = user(ids)[:, -1]
        t1 = user.gru(torch.cat([items, (h + markers[0])[:, None]], dim=1))[0][:, -1]
        appended = torch.stack([h + markers[0], t1 + markers[1]], dim=1)
        t2 = user.gru(torch.cat([items, appended], dim=1))[0][:, -1]
    torch.testing.assert_close(thoughts, torch.stack([t1, t2], dim=1))
    # Gradient reaches the user's weights through the re-encoded thoughts.
    thinking(ids)[:, -1].pow(2).sum().backward()
    assert user.gru.weight_hh_l0.grad.abs().sum() > 0


def test_a_users_embedding_encoder_thinks_at_inner_positions():
    """Embeddings mode; a request at position t equals thinking over the window cut after t (the
    user's GRU reads padding, so the cut keeps the window's left padding)."""
    torch.manual_seed(0)
    table = nn.Embedding(31, 16, padding_idx=0)
    backbone = as_sequence_encoder(MyEmbeddingEncoder(), embedding=table, takes_embeddings=True)
    thinking = _opened(ThinkingTokenEncoder(backbone, num_thinking_tokens=2))
    ids = _histories(torch.Generator().manual_seed(11))
    positions = torch.tensor([[9, 7], [9, 4], [9, 8], [9, 6]])
    with torch.no_grad():
        thoughts = thinking(ids, positions=positions)
        torch.testing.assert_close(thoughts[:, 0], thinking(ids))
        for row in range(4):
            cut = ids[row : row + 1, : positions[row, 1] + 1]
            torch.testing.assert_close(thoughts[row, 1], thinking(cut)[0])


def test_adapter_errors_name_the_fix():
    class TwoTables(MyEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.other = nn.Embedding(5, 16)

    with pytest.raises(ValueError, match="embedding="):
        ThinkingTokenEncoder(TwoTables())
    with pytest.raises(ValueError, match="needs embedding="):
        as_sequence_encoder(MyEmbeddingEncoder(), takes_embeddings=True)
    with pytest.raises(ValueError, match="must be a layer of module"):
        as_sequence_encoder(MyEncoder(), embedding=nn.Embedding(31, 16))
    wrong = as_sequence_encoder(nn.Sequential(nn.Embedding(31, 16), nn.Linear(16, 8)))
    with pytest.raises(ValueError, match=r"must map \(b, n\) to \(b, n, d\)"):
        wrong.encode_prefix(torch.ones(2, 3, dtype=torch.long))
    two_tables = TwoTables()
    chosen = as_sequence_encoder(two_tables, embedding=two_tables.embedding)
    assert ThinkingTokenEncoder(chosen)(torch.ones(2, 3, dtype=torch.long)).shape == (2, 2, 16)


def test_any_module_with_the_protocol_is_used_as_is():
    """hidden_size, encode_prefix and extend are the whole protocol (no base class, no `causal`)."""

    class Minimal(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = SASRec(num_items=30, hidden_size=16, max_len=12, dropout=0.0)
            self.hidden_size = 16

        def encode_prefix(self, input_ids):
            return self.inner.encode_prefix(input_ids)

        def extend(self, prefix, appended, positions=None):
            return self.inner.extend(prefix, appended, positions)

    torch.manual_seed(0)
    minimal = Minimal().eval()
    thinking = _opened(ThinkingTokenEncoder(minimal)).eval()
    assert thinking.encoder is minimal
    ids = _histories(torch.Generator().manual_seed(12))
    reference = _opened(ThinkingTokenEncoder(minimal.inner)).eval()
    reference.load_state_dict(thinking.state_dict(), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(thinking(ids), reference(ids))
