"""Tests for lightning_rec/blocks/sequence.py, parametrized over SEQUENCE_ENCODERS.

specs/data.md ("A pitfall seen here"): an encoder that returns NaN under left padding in eval mode
once scored six times SASRec's real quality. Every encoder is therefore checked in train and eval
mode, with left and right padding, for finite outputs and causality.
"""

import inspect

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_rec.blocks import HSTU, SEQUENCE_ENCODERS, BERT4Rec, GRU4Rec, SASRec, SequenceEncoder

NUM_ITEMS = 20
HIDDEN_SIZE = 16
MAX_LEN = 8
ENCODER_NAMES = sorted(SEQUENCE_ENCODERS)
SIDES = ["left", "right"]
MODES = ["train", "eval"]

# Rows of real items, oldest first. Two rows hold a single item (all padding but one position),
# one fills max_len, the rest are in between.
SEQUENCES = [
    [3],
    [1, 2, 3, 4, 5, 6, 7, 8],
    [4, 5, 6],
    [17],
    [7, 2],
    [9, 10, 11, 12, 13],
]


def build(name: str, **overrides) -> SequenceEncoder:
    torch.manual_seed(0)
    return SEQUENCE_ENCODERS[name](NUM_ITEMS, hidden_size=HIDDEN_SIZE, max_len=MAX_LEN, **overrides)


def pad(sequences: list[list[int]], side: str, length: int = MAX_LEN) -> tuple[Tensor, list[list[int]]]:
    """Pad rows of item ids to `length` -> ids `b n` and, per row, the indices of its real items."""
    rows, real_positions = [], []
    for items in sequences:
        padding = [0] * (length - len(items))
        rows.append(padding + items if side == "left" else items + padding)
        start = len(padding) if side == "left" else 0
        real_positions.append(list(range(start, start + len(items))))
    return torch.tensor(rows), real_positions


def encode(
    encoder: SequenceEncoder, sequences: list[list[int]], side: str, length: int = MAX_LEN
) -> list[Tensor]:
    """Outputs at the real positions of each row, each `len(items) d`, in eval mode."""
    input_ids, real_positions = pad(sequences, side, length)
    with torch.no_grad():
        hidden = encoder.eval()(input_ids)
    return [hidden[row, positions] for row, positions in enumerate(real_positions)]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_output_is_finite_with_zeros_at_padding(name: str, side: str, mode: str) -> None:
    encoder = build(name).train(mode == "train")
    input_ids, _ = pad(SEQUENCES, side)
    hidden = encoder(input_ids)
    assert hidden.shape == (len(SEQUENCES), MAX_LEN, HIDDEN_SIZE)
    assert torch.isfinite(hidden).all()
    assert (hidden[input_ids == 0] == 0).all()
    # Real positions carry a signal (the final LayerNorm of an all-masked row would not).
    assert (hidden[input_ids != 0].abs().sum(dim=-1) > 0).all()


def largest_change_before_cut(encoder: SequenceEncoder, side: str) -> float:
    """Replace every item after position t by another item, for every row and cut t; return the
    largest change of an output at a position <= t. Zero for a causal encoder."""
    original = encode(encoder, SEQUENCES, side)
    cuts = [(row, cut) for row, items in enumerate(SEQUENCES) for cut in range(len(items) - 1)]
    changed = [
        SEQUENCES[row][: cut + 1] + [item % NUM_ITEMS + 1 for item in SEQUENCES[row][cut + 1 :]]
        for row, cut in cuts
    ]
    return max(
        (outputs[: cut + 1] - original[row][: cut + 1]).abs().max().item()
        for (row, cut), outputs in zip(cuts, encode(encoder, changed, side), strict=True)
    )


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_causal_encoders_ignore_later_items(name: str, side: str) -> None:
    encoder = build(name)
    change = largest_change_before_cut(encoder, side)
    if encoder.causal:
        assert change < 1e-5, f"{name}: an output moved by {change} when only later items changed"
    else:
        # The same measurement must catch a bidirectional encoder: the causality check can fail.
        assert change > 1e-3, f"{name} is declared non-causal but ignores later items"


def test_bert4rec_is_bidirectional() -> None:
    assert BERT4Rec.causal is False
    assert all(encoder.causal for name, encoder in SEQUENCE_ENCODERS.items() if name != "BERT4Rec")


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_outputs_do_not_depend_on_padding(name: str) -> None:
    """By design no encoder reads the index of a position in the padded tensor (module docstring),
    so left padding of any length and right padding give the same outputs at the real items."""
    assert_padding_invariant(build(name))


def assert_padding_invariant(encoder: SequenceEncoder) -> None:
    short = [items for items in SEQUENCES if len(items) <= 5]
    reference = encode(encoder, short, "left")
    for side, length in [("left", 5), ("right", MAX_LEN), ("right", 5)]:
        for expected, actual in zip(reference, encode(encoder, short, side, length), strict=True):
            torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("side", SIDES)
@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_gradient_reaches_item_embeddings(name: str, side: str) -> None:
    encoder = build(name).train()
    input_ids, _ = pad(SEQUENCES, side)
    targets = torch.where(input_ids == 0, -100, input_ids % NUM_ITEMS + 1)
    scores = encoder(input_ids) @ encoder.item_embeddings().T
    F.cross_entropy(scores.flatten(0, 1), targets.flatten(), ignore_index=-100).backward()
    gradient = encoder.item_embedding.weight.grad
    assert torch.isfinite(gradient).all()
    assert (gradient[input_ids.unique()[1:]].abs().sum(dim=-1) > 0).all()
    assert (gradient[0] == 0).all()


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_tiny_encoder_overfits_a_toy_task(name: str) -> None:
    """Items follow the cycle 1 -> 2 -> ... -> 20 -> 1. Causal encoders predict the next item at
    every position; bidirectional ones predict the items hidden behind the mask token."""
    encoder = build(name, dropout=0.0).train()
    starts = torch.arange(16)
    sequences = (starts[:, None] + torch.arange(MAX_LEN + 1)) % NUM_ITEMS + 1
    lengths = torch.arange(16) % MAX_LEN + 1
    is_item = torch.arange(MAX_LEN) >= MAX_LEN - lengths[:, None]  # left padding, as the datamodule
    if encoder.causal:
        input_ids = sequences[:, :-1] * is_item
        targets = torch.where(is_item, sequences[:, 1:], -100)
    else:
        masked = is_item & (torch.arange(MAX_LEN) % 3 == starts[:, None] % 3)
        input_ids = torch.where(masked, encoder.mask_token_id, sequences[:, :-1] * is_item)
        targets = torch.where(masked, sequences[:, :-1], -100)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-2)
    losses = []
    for _ in range(100):
        scores = encoder(input_ids) @ encoder.item_embeddings().T
        loss = F.cross_entropy(scores.flatten(0, 1), targets.flatten(), ignore_index=-100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("name", ["SASRec", "BERT4Rec"])
def test_attention_uses_scaled_dot_product_attention(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    original = F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(kwargs.get("attn_mask"))
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    encoder = build(name, num_layers=2)
    encoder(pad(SEQUENCES, "left")[0])
    assert len(calls) == 2
    assert all(mask is not None for mask in calls)


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_interface(name: str) -> None:
    encoder_class = SEQUENCE_ENCODERS[name]
    assert encoder_class.__name__ == name
    parameters = list(inspect.signature(encoder_class).parameters.values())
    assert parameters[0].name == "num_items"
    assert [p.name for p in parameters[1:3]] == ["hidden_size", "max_len"]
    for parameter in parameters:
        assert parameter.annotation is not inspect.Parameter.empty, parameter.name
        assert parameter.name == "num_items" or parameter.default is not inspect.Parameter.empty

    encoder = build(name)
    assert (encoder.num_items, encoder.hidden_size, encoder.max_len) == (NUM_ITEMS, HIDDEN_SIZE, MAX_LEN)
    table = encoder.item_embeddings()
    assert table.shape == (NUM_ITEMS + 1, HIDDEN_SIZE)
    assert (table[0] == 0).all()
    if encoder.causal:
        assert encoder.mask_token_id is None
        assert encoder.item_embedding.num_embeddings == NUM_ITEMS + 1
    else:
        assert encoder.mask_token_id == NUM_ITEMS + 1
        assert encoder.item_embedding.num_embeddings == NUM_ITEMS + 2


@pytest.mark.parametrize("name", ENCODER_NAMES)
def test_rejects_malformed_input(name: str) -> None:
    encoder = build(name)
    with pytest.raises(ValueError, match="max_len"):
        encoder(torch.ones(2, MAX_LEN + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"torch\.long"):
        encoder(torch.ones(2, MAX_LEN))
    with pytest.raises(ValueError, match=r"\(b, n\)"):
        encoder(torch.ones(MAX_LEN, dtype=torch.long))


@pytest.mark.parametrize("encoder_class", [SASRec, BERT4Rec, GRU4Rec, HSTU])
@pytest.mark.parametrize("train", [False, True])
def test_extending_an_encoded_prefix_equals_encoding_with_appended_positions(encoder_class, train):
    """The KV cache (causal transformers) or the re-encoding fallback gives the full pass's outputs."""
    torch.manual_seed(0)
    encoder = encoder_class(num_items=30, hidden_size=16, max_len=12, dropout=0.0).train(train)
    ids = torch.randint(1, 31, (4, 10), generator=torch.Generator().manual_seed(7))
    ids[0, :6] = 0
    appended = torch.randn(4, 3, 16)
    hidden, prefix = encoder.encode_prefix(ids)
    full = encoder(ids, appended=appended)
    torch.testing.assert_close(hidden, encoder(ids), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(encoder.extend(prefix, appended), full[:, 10:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("encoder_class", [SASRec, GRU4Rec, HSTU])
def test_requests_at_inner_positions_see_only_the_history_up_to_them(encoder_class):
    torch.manual_seed(0)
    encoder = encoder_class(num_items=30, hidden_size=16, max_len=12, dropout=0.0).eval()
    generator = torch.Generator().manual_seed(8)
    ids = torch.randint(1, 31, (3, 10), generator=generator)
    ids[0, :4] = 0
    positions = torch.tensor([[9, 5, 7], [9, 0, 3], [9, 8, 2]])
    appended = torch.randn(3, 3, 2, 16)
    with torch.no_grad():
        outputs = encoder.extend(encoder.encode_prefix(ids)[1], appended, positions)
        assert outputs.shape == (3, 3, 2, 16)
        # The request at the last position is the plain extension.
        torch.testing.assert_close(
            outputs[:, 0], encoder.extend(encoder.encode_prefix(ids)[1], appended[:, 0])
        )
        # Other items after a request's position (same count) change nothing for it.
        changed = torch.where(ids > 0, torch.randint(1, 31, ids.shape, generator=generator), ids)
        later = torch.arange(10) > positions[:, 1:2]
        other = encoder.extend(
            encoder.encode_prefix(torch.where(later, changed, ids))[1], appended, positions
        )
        torch.testing.assert_close(other[:, 1], outputs[:, 1], atol=1e-5, rtol=1e-4)
        # Requests are independent of each other.
        alone = encoder.extend(encoder.encode_prefix(ids)[1], appended[:, 1:2], positions[:, 1:2])
        torch.testing.assert_close(alone[:, 0], outputs[:, 1], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="bidirectional"):
        bert = BERT4Rec(num_items=30, hidden_size=16, max_len=12)
        bert.extend(bert.encode_prefix(ids)[1], appended, positions)


@pytest.mark.parametrize("side", SIDES)
def test_positions_from_start_make_each_window_position_its_own_prefix(side: str) -> None:
    """With ``position_order="from_start"`` the output at item j of a window equals the output for
    the prefix ending at j encoded alone (what evaluation does with a history); the default
    numbering from the end gives that only at the window's last item, so the check can fail."""
    window = SEQUENCES[1]

    def prefix_gap(encoder: SequenceEncoder) -> float:
        (whole,) = encode(encoder, [window], side)
        prefixes = encode(encoder, [window[: j + 1] for j in range(len(window))], side)
        return max(float((whole[j] - prefix[-1]).abs().max()) for j, prefix in enumerate(prefixes))

    assert prefix_gap(build("SASRec", position_order="from_start")) < 1e-5
    assert prefix_gap(build("SASRec")) > 1e-3


def test_positions_from_start_keep_outputs_independent_of_padding() -> None:
    assert_padding_invariant(build("SASRec", position_order="from_start"))


def test_position_order_is_checked() -> None:
    with pytest.raises(ValueError, match="position_order"):
        build("SASRec", position_order="backwards")
