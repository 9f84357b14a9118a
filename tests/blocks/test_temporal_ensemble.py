"""Tests for lightning_rec/blocks/temporal_ensemble.py: EMA closed form, ensemble rule, freezing."""

import pytest
import torch

from lightning_rec.blocks import ClassifierHead, TemporalEnsembleHeads

IN_FEATURES, CLASSES = 6, 4


def heads(num_experts: int = 2, decays=(0.9, 0.99)) -> TemporalEnsembleHeads:
    torch.manual_seed(0)
    return TemporalEnsembleHeads(ClassifierHead(IN_FEATURES, CLASSES), num_experts, decays).double()


@pytest.mark.parametrize("decays", [(0.9, 0.99), (0.5,), (0.0, 0.75, 0.999)])
def test_averages_follow_the_closed_form_after_n_updates(decays):
    model = heads(num_experts=3, decays=decays)
    generator = torch.Generator().manual_seed(1)
    model.start_expert(1)
    start = [parameter.detach().clone() for parameter in model.head.parameters()]
    history = []
    for _ in range(7):
        with torch.no_grad():
            for parameter in model.head.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float64))
        history.append([parameter.detach().clone() for parameter in model.head.parameters()])
        model.update(1)
    n = len(history)
    for slot, decay in enumerate(decays):
        average = list(model.averages[1][slot].parameters())
        for index, value in enumerate(average):
            # ema_n = d^n w_0 + sum_t (1 - d) d^(n - t) w_t
            expected = decay**n * start[index] + sum(
                (1 - decay) * decay ** (n - t) * history[t - 1][index] for t in range(1, n + 1)
            )
            torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    # The other experts' averages kept their initial copy of the head (it was not touched before
    # the loop, so it equals the start of expert 1).
    for expert in (0, 2):
        for average in model.averages[expert]:
            for value, first in zip(average.parameters(), start, strict=True):
                assert torch.equal(value, first)


def test_start_expert_copies_the_online_head_and_leaves_other_experts():
    model = heads()
    before = [p.clone() for p in model.averages[0][0].parameters()]
    with torch.no_grad():
        model.head.linear.weight.add_(1.0)
    model.start_expert(1)
    for average in model.averages[1]:
        for value, online in zip(average.parameters(), model.head.parameters(), strict=True):
            assert torch.equal(value, online)
    for value, earlier in zip(model.averages[0][0].parameters(), before, strict=True):
        assert torch.equal(value, earlier)


def test_forward_is_the_elementwise_max_of_the_members_softmaxes_over_allowed_classes():
    model = heads(num_experts=2)
    generator = torch.Generator().manual_seed(2)
    for expert in (0, 1):
        model.start_expert(expert)
        for _ in range(3):
            with torch.no_grad():
                model.head.linear.weight.add_(
                    torch.randn(CLASSES, IN_FEATURES, generator=generator, dtype=torch.float64)
                )
            model.update(expert)
    features = torch.randn(5, IN_FEATURES, generator=generator, dtype=torch.float64)
    experts = torch.tensor([1, 0, 1, 1, 0])
    allowed = torch.tensor([True, False, True, True])
    probabilities = model(features, experts, allowed)
    for row in range(5):
        members = [model.head, *model.averages[int(experts[row])]]
        softmaxes = []
        for member in members:
            logits = member(features[row : row + 1])[0]
            softmaxes.append(torch.softmax(logits[allowed], dim=0))
        expected = torch.zeros(CLASSES, dtype=torch.float64)
        expected[allowed] = torch.stack(softmaxes).amax(dim=0)
        torch.testing.assert_close(probabilities[row], expected, rtol=1e-12, atol=1e-12)
    assert probabilities[:, 1].eq(0).all()
    assert (probabilities.sum(dim=1) >= 1 - 1e-12).all()


def test_averages_are_frozen_and_outside_the_optimizer():
    model = heads()
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert trainable == {"head.linear.weight", "head.linear.bias"}
    loss = model(torch.randn(3, IN_FEATURES, dtype=torch.float64), torch.tensor([0, 1, 0])).sum()
    loss.backward()
    assert all(parameter.grad is None for parameter in model.averages.parameters())


def test_bad_arguments_name_what_was_expected():
    with pytest.raises(ValueError, match="decays"):
        TemporalEnsembleHeads(ClassifierHead(2, 2), decays=(1.0,))
    with pytest.raises(ValueError, match=r"expert must lie in \[0, 2\)"):
        heads().update(2)
    with pytest.raises(ValueError, match="experts must have shape"):
        heads()(torch.randn(3, IN_FEATURES, dtype=torch.float64), torch.tensor([0, 1]))
