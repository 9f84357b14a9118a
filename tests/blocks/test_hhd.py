"""GPR's Heterogeneous Hierarchical Decoder: hybrid mask, typed norms, PTD level-wise codes, HTE, MTP."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_rec.blocks import HeterogeneousHierarchicalDecoder, MultiTokenPredictionHeads
from lightning_rec.blocks.hhd import (
    ENVIRONMENT,
    ITEM,
    ORGANIC,
    PAD,
    USER,
    TypedLayerNorm,
    hybrid_attention_mask,
)

PROMPT = {USER, ORGANIC, ENVIRONMENT}


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(st.sampled_from([PAD, USER, ORGANIC, ENVIRONMENT, ITEM]), min_size=5, max_size=5),
        min_size=1,
        max_size=3,
    )
)
def test_hybrid_mask_is_bidirectional_over_the_prompt_and_causal_elsewhere(rows):
    types = torch.tensor(rows)
    mask = hybrid_attention_mask(types)[:, 0]
    for b, row in enumerate(rows):
        for i in range(5):
            for j in range(5):
                sees = row[j] in PROMPT if row[i] in PROMPT else (row[j] in PROMPT or j <= i)
                expected = i == j or (row[j] != PAD and sees)
                assert bool(mask[b, i, j]) == expected


def _tokens(generator, types):
    codes = torch.stack(
        [torch.randint(0, size, types.shape, generator=generator) for size in (4, 4, 2)], dim=-1
    )
    return codes, types, torch.zeros_like(types)


def test_hsd_outputs_follow_the_mask():
    torch.manual_seed(0)
    model = HeterogeneousHierarchicalDecoder(
        level_sizes=(4, 4, 2), hidden_size=16, max_len=8, dropout=0.0
    ).eval()
    generator = torch.Generator().manual_seed(1)
    types = torch.tensor([[USER, ORGANIC, ITEM, ORGANIC, ITEM, ENVIRONMENT]])
    codes, types, features = _tokens(generator, types)
    hidden = model.hsd(codes, types, features)
    # Changing the I token at position 4 changes neither the prompt nor the I token before it ...
    changed = codes.clone()
    changed[0, 4] = (changed[0, 4] + 1) % 2
    other = model.hsd(changed, types, features)
    assert torch.allclose(hidden[:, [0, 1, 2, 3, 5]], other[:, [0, 1, 2, 3, 5]], atol=1e-6)
    assert not torch.allclose(hidden[:, 4], other[:, 4], atol=1e-4)
    # ... while the O token at position 3 is read by every token, the earlier prompt and I ones included.
    changed = codes.clone()
    changed[0, 3] = (changed[0, 3] + 1) % 2
    other = model.hsd(changed, types, features)
    for position in range(6):
        assert not torch.allclose(hidden[:, position], other[:, position], atol=1e-4)


def test_typed_layer_norm_applies_each_types_gain_and_bias():
    norm = TypedLayerNorm(6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    hidden, types = torch.randn(2, 3, 6), torch.tensor([[USER, ITEM, ORGANIC], [PAD, ENVIRONMENT, ITEM]])
    out = norm(hidden, types)
    for b in range(2):
        for n in range(3):
            kind = types[b, n]
            expected = torch.nn.functional.layer_norm(hidden[b, n], (6,), norm.weight[kind], norm.bias[kind])
            assert torch.allclose(out[b, n], expected, atol=1e-6)


def test_level_wise_decoding_agrees_with_teacher_forcing():
    torch.manual_seed(0)
    model = HeterogeneousHierarchicalDecoder(level_sizes=(4, 4, 2), hidden_size=16, max_len=8).eval()
    intent = torch.randn(5, 16)
    targets = torch.stack([torch.randint(0, size, (5,)) for size in (4, 4, 2)], dim=1)
    log_probs, values = model.teacher_forced(intent, targets)
    for level in range(3):
        step_log_probs, step_values = model.next_code_log_probs(intent, targets[:, :level])
        assert torch.allclose(step_log_probs, log_probs[level], atol=1e-6)
        assert torch.allclose(step_values, values[:, level], atol=1e-6)
        assert torch.allclose(step_log_probs.exp().sum(-1), torch.ones(5), atol=1e-5)


def test_intents_come_from_thinking_refining_and_the_heads():
    model, (codes, types, features, targets) = HeterogeneousHierarchicalDecoder.hub_example()
    model.eval()
    intents, thoughts = model.intents(codes, types, features)
    assert intents.shape == (3, 2, 16) and thoughts.shape == (3, 2, 16)
    refined = model.diffusion(thoughts)
    assert torch.allclose(intents, model.heads(refined))
    log_probs = model(codes, types, features, targets)
    assert log_probs.shape == (3, 2, 3) and bool((log_probs <= 0).all())


def test_prediction_heads_start_at_the_shared_intent_and_normalise_their_weights():
    heads = MultiTokenPredictionHeads(hidden_size=8, num_heads=3, weights=[2, 1, 1])
    intent = torch.randn(4, 8)
    assert torch.equal(heads(intent), intent[:, None].expand(4, 3, 8))
    assert heads.weights.tolist() == [0.5, 0.25, 0.25]
