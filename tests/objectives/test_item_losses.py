import math

import pytest
import torch
import torch.nn.functional as F

from lightning_rec.objectives import (
    bce_loss,
    chunked_cross_entropy,
    gbce_beta,
    gbce_loss,
    log_expected_candidate_count,
    sampled_softmax_loss,
    uninformed_logit,
)


def _inputs(positions: int, items: int, hidden: int = 8, seed: int = 0, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    hidden_states = torch.randn(positions, hidden, generator=generator, dtype=dtype, requires_grad=True)
    item_embeddings = torch.randn(items, hidden, generator=generator, dtype=dtype, requires_grad=True)
    targets = torch.randint(1, items, (positions,), generator=generator)
    return hidden_states, item_embeddings, targets


def _full_cross_entropy(hidden, item_embeddings, targets):
    logits = hidden @ item_embeddings.T
    logits = torch.cat([torch.full_like(logits[:, :1], float("-inf")), logits[:, 1:]], dim=1)
    return F.cross_entropy(logits, targets)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 16, 1000])
@pytest.mark.parametrize("seed", [0, 1])
def test_chunked_cross_entropy_equals_full_cross_entropy_in_loss_and_gradients(chunk_size, seed):
    hidden, items, targets = _inputs(positions=13, items=17, seed=seed)
    expected = _full_cross_entropy(hidden, items, targets)
    expected_grads = torch.autograd.grad(expected, (hidden, items))
    loss = chunked_cross_entropy(hidden, items, targets, chunk_size=chunk_size)
    grads = torch.autograd.grad(loss, (hidden, items))
    torch.testing.assert_close(loss, expected)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)
    assert grads[1][0].abs().max() == 0  # the padding row is never a candidate


def test_chunked_cross_entropy_matches_in_float32_with_large_logits_and_an_upstream_gradient():
    hidden, items, targets = _inputs(positions=40, items=300, hidden=16, seed=3, dtype=torch.float32)
    with torch.no_grad():
        items.mul_(4.0)  # logits of order 50: the running log-sum-exp must not overflow
    weight = torch.rand(())
    expected_grads = torch.autograd.grad(
        weight * _full_cross_entropy(hidden, items, targets), (hidden, items)
    )
    grads = torch.autograd.grad(weight * chunked_cross_entropy(hidden, items, targets, 64), (hidden, items))
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_chunked_cross_entropy_saves_no_positions_by_catalogue_tensor():
    positions, num_items, chunk = 32, 4096, 128
    hidden, items, targets = _inputs(positions=positions, items=num_items, dtype=torch.float32)
    saved_sizes: list[int] = []

    def record(tensor):
        saved_sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(record, lambda tensor: tensor):
        chunked_cross_entropy(hidden, items, targets, chunk_size=chunk).backward()
    assert saved_sizes and max(saved_sizes) <= num_items * hidden.shape[1]  # the inputs themselves
    with torch.autograd.graph.saved_tensors_hooks(record, lambda tensor: tensor):
        _full_cross_entropy(hidden, items, targets)
    assert max(saved_sizes) >= positions * num_items  # the hook does see the dense path's logits


def test_sampled_softmax_over_every_item_once_is_the_full_cross_entropy():
    hidden, items, targets = _inputs(positions=9, items=12)
    negatives = torch.arange(1, 12)  # every item exactly once: Q_j = 1, log Q_j = 0
    loss = sampled_softmax_loss(
        hidden, items, targets, negatives, torch.zeros(12, dtype=torch.float64), in_batch=False
    )
    torch.testing.assert_close(loss, _full_cross_entropy(hidden, items, targets))


def test_sampled_softmax_matches_a_brute_force_loop_with_in_batch_negatives_and_log_q():
    hidden, items, targets = _inputs(positions=6, items=10, seed=4)
    targets = torch.tensor([1, 2, 2, 5, 9, 1])  # repeated targets: accidental hits in the batch
    negatives = torch.tensor([3, 5, 5, 7])
    log_q = torch.log(torch.rand(10, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.1)
    candidates = [*targets.tolist(), *negatives.tolist()]
    expected = []
    for row in range(6):
        target = int(targets[row])
        logits = [hidden[row] @ items[target]]
        logits += [hidden[row] @ items[c] - log_q[c] for c in candidates if c != target]
        expected.append(-torch.log_softmax(torch.stack(logits), 0)[0])
    loss = sampled_softmax_loss(hidden, items, targets, negatives, log_q)
    torch.testing.assert_close(loss, torch.stack(expected).mean())


def test_log_q_correction_makes_popularity_sampled_softmax_consistent():
    # With many popularity-sampled negatives, the corrected sampled softmax approaches the full CE, in
    # loss and gradient; uncorrected, it stays biased (popular items are over-counted).
    hidden, items, targets = _inputs(positions=20, items=50, seed=5)
    generator = torch.Generator().manual_seed(6)
    popularity = torch.rand(50, generator=generator, dtype=torch.float64) ** 2 + 0.01
    popularity[0] = 0
    popularity /= popularity.sum()
    negatives = torch.multinomial(popularity, 50_000, replacement=True, generator=generator)
    full = _full_cross_entropy(hidden, items, targets)
    (full_grad,) = torch.autograd.grad(full, hidden)
    log_q = log_expected_candidate_count(popularity, 0, popularity, len(negatives))
    corrected = sampled_softmax_loss(hidden, items, targets, negatives, log_q, in_batch=False)
    (corrected_grad,) = torch.autograd.grad(corrected, hidden)
    uncorrected_log_q = torch.full((50,), math.log(len(negatives) / 49), dtype=torch.float64)
    uncorrected = sampled_softmax_loss(hidden, items, targets, negatives, uncorrected_log_q, in_batch=False)
    (uncorrected_grad,) = torch.autograd.grad(uncorrected, hidden)
    torch.testing.assert_close(corrected, full, rtol=0.02, atol=0.0)
    assert float((corrected_grad - full_grad).norm() / full_grad.norm()) < 0.03
    assert float((uncorrected_grad - full_grad).norm() / full_grad.norm()) > 0.1


def test_gbce_beta_interpolates_between_bce_and_full_calibration():
    assert gbce_beta(num_negatives=4, num_items=101, calibration=0.0) == pytest.approx(1.0)
    assert gbce_beta(num_negatives=4, num_items=101, calibration=1.0) == pytest.approx(4 / 100)
    assert gbce_beta(num_negatives=100, num_items=101, calibration=0.75) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="calibration"):
        gbce_beta(4, 101, 1.5)


def test_gbce_matches_a_hand_computation():
    hidden, items, targets = _inputs(positions=7, items=30, seed=2)
    negatives = torch.randint(1, 30, (7, 5), generator=torch.Generator().manual_seed(0))
    positive = (hidden * items[targets]).sum(-1)
    negative = torch.einsum("md,mgd->mg", hidden, items[negatives])
    alpha = 5 / 28  # 29 real items
    beta = alpha * (0.75 * (1 - 1 / alpha) + 1 / alpha)
    per_position = -beta * torch.log(torch.sigmoid(positive)) - torch.log(1 - torch.sigmoid(negative)).sum(1)
    expected = per_position.sum() / (7 * 6)
    torch.testing.assert_close(gbce_loss(hidden, items, targets, negatives, calibration=0.75), expected)


def test_shared_negatives_equal_the_same_negatives_repeated_per_position():
    hidden, items, targets = _inputs(positions=7, items=30, seed=3)
    shared = torch.tensor([4, 9, 9, 21])
    per_position = shared.expand(7, -1)
    torch.testing.assert_close(
        gbce_loss(hidden, items, targets, shared), gbce_loss(hidden, items, targets, per_position)
    )
    torch.testing.assert_close(
        bce_loss(hidden, items, targets, shared), bce_loss(hidden, items, targets, per_position)
    )


def test_bce_matches_a_hand_computation():
    hidden, items, targets = _inputs(positions=7, items=30, seed=2)
    negatives = torch.randint(1, 30, (7, 3), generator=torch.Generator().manual_seed(0))
    positive = (hidden * items[targets]).sum(-1)
    negative = torch.einsum("md,mgd->mg", hidden, items[negatives])
    expected = -torch.log(torch.sigmoid(positive)).mean() - torch.log(1 - torch.sigmoid(negative)).mean()
    torch.testing.assert_close(bce_loss(hidden, items, targets, negatives), expected)


def test_invalid_inputs_are_named():
    hidden, items, targets = _inputs(positions=4, items=10)
    with pytest.raises(ValueError, match="targets must lie in"):
        chunked_cross_entropy(hidden, items, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_cross_entropy(hidden, items, targets, chunk_size=0)
    with pytest.raises(ValueError, match="negatives must be"):
        gbce_loss(hidden, items, targets, torch.ones(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="one value per item"):
        sampled_softmax_loss(hidden, items, targets, torch.tensor([1]), torch.zeros(3))


@pytest.mark.parametrize("loss_name", ["bce", "gbce"])
def test_an_offset_is_added_to_every_logit(loss_name):
    hidden, items, targets = _inputs(positions=7, items=30, seed=4)
    negatives = torch.randint(1, 30, (7, 5), generator=torch.Generator().manual_seed(1))
    offset = torch.tensor(-2.5)
    positive = (hidden * items[targets]).sum(-1) + offset
    negative = torch.einsum("md,mgd->mg", hidden, items[negatives]) + offset
    if loss_name == "bce":
        expected = -torch.log(torch.sigmoid(positive)).mean() - torch.log(1 - torch.sigmoid(negative)).mean()
        actual = bce_loss(hidden, items, targets, negatives, offset)
    else:
        beta = gbce_beta(5, 29, 0.75)
        kept = -torch.log(1 - torch.sigmoid(negative)).sum(1)
        expected = (-beta * torch.log(torch.sigmoid(positive)) + kept).sum() / (7 * 6)
        actual = gbce_loss(hidden, items, targets, negatives, 0.75, offset)
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize(("num_negatives", "calibration"), [(1, 0.0), (16, 0.5), (256, 0.75)])
def test_uninformed_logit_minimises_the_loss_of_an_uninformed_model(num_negatives, calibration):
    """``p beta softplus(-s) + alpha softplus(s)`` with ``p = 1/n`` and ``alpha = g/(n-1)``, minimised
    by a dense grid, lands on ``log(beta/g)`` (exact up to ``log((n-1)/n)``, 1e-4 at n = 10^4)."""
    n = 10_000
    beta = gbce_beta(num_negatives, n, calibration)
    s = torch.linspace(-15, 5, 200_001, dtype=torch.float64)
    loss = beta / n * F.softplus(-s) + num_negatives / (n - 1) * F.softplus(s)
    assert float(s[loss.argmin()]) == pytest.approx(uninformed_logit(num_negatives, beta), abs=1e-3)
    with pytest.raises(ValueError, match="num_negatives"):
        uninformed_logit(0)
