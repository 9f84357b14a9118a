"""Tests for lightning_rec/metrics/continual.py against torchmetrics and brute-force definitions."""

import math

import pytest
import torch
from torchmetrics.classification import MulticlassAccuracy

from lightning_rec.metrics import SeenClassAccuracy, StreamEvaluations, backward_transfer, last_forgetting


def test_seen_class_accuracy_matches_torchmetrics_over_several_updates():
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 6, (300,), generator=generator)
    labels[labels == 4] = 5  # class 4 never evaluated
    predictions = torch.where(
        torch.rand(300, generator=generator) < 0.6, labels, torch.randint(0, 7, (300,), generator=generator)
    )
    metric = SeenClassAccuracy(num_classes=7)
    for start in range(0, 300, 64):
        metric.update(predictions[start : start + 64], labels[start : start + 64])
    result = metric.compute()
    micro = MulticlassAccuracy(num_classes=7, average="micro")(predictions, labels)
    per_class = MulticlassAccuracy(num_classes=7, average="none")(predictions, labels)
    torch.testing.assert_close(result["accuracy"], micro)
    present = torch.bincount(labels, minlength=7) > 0
    torch.testing.assert_close(result["per_class"][present], per_class[present])
    assert result["per_class"][~present].eq(0).all()
    assert result["count"].tolist() == torch.bincount(labels, minlength=7).float().tolist()
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 7\)"):
        metric.update(torch.tensor([0]), torch.tensor([7]))


def brute_forgetting(matrix: list[list[float]]) -> float:
    last = matrix[-1]
    gaps = []
    for j in range(len(last)):
        best = max(row[j] for row in matrix[:-1])
        if best > 0:
            gaps.append(best - last[j])
    return sum(gaps) / len(gaps)


def brute_bwt(matrix: list[list[float]]) -> float:
    """The official definition: from the first split end where the class's accuracy is above 0."""
    gaps = []
    for j in range(len(matrix[0])):
        first = next((i for i, row in enumerate(matrix) if row[j] > 0), None)
        if first is not None and first < len(matrix) - 1:
            gaps.append(matrix[-1][j] - matrix[first][j])
    return sum(gaps) / len(gaps)


@pytest.mark.parametrize("seed", range(5))
def test_forgetting_and_bwt_equal_their_definitions_on_random_histories(seed):
    generator = torch.Generator().manual_seed(seed)
    splits, classes = 5, 12
    first_seen = torch.randint(0, splits, (classes,), generator=generator)
    evaluated = torch.arange(splits).unsqueeze(1) >= first_seen.unsqueeze(0)  # (k c): seen from then on
    accuracies = torch.rand(splits, classes, generator=generator, dtype=torch.float64) * evaluated
    accuracies[torch.rand(splits, classes, generator=generator) < 0.2] = 0.0  # seen, but none right yet
    assert last_forgetting(accuracies) == pytest.approx(brute_forgetting(accuracies.tolist()), abs=1e-12)
    assert backward_transfer(accuracies) == pytest.approx(brute_bwt(accuracies.tolist()), abs=1e-12)


def test_stream_summary_by_hand():
    evaluations = StreamEvaluations()
    count = torch.tensor([5.0, 5.0, 0.0])
    evaluations.record(100, 0.9, torch.tensor([0.9, 0.0, 0.0]), periodic=True, split_end=False)
    evaluations.record(150, 0.8, torch.tensor([0.8, 0.0, 0.0]), periodic=False, split_end=True)
    evaluations.record(200, 0.6, torch.tensor([0.5, 0.7, 0.0]), periodic=True, split_end=False)
    evaluations.record(260, 0.5, torch.tensor([0.4, 0.6, 0.0]), periodic=False, split_end=True)
    summary = evaluations.summary()
    assert summary["A_auc"] == pytest.approx((0.9 + 0.6) / 2)
    assert summary["A_last"] == pytest.approx(0.5)
    assert summary["A_avg"] == pytest.approx((0.8 + 0.5) / 2)
    assert summary["F_last"] == pytest.approx(0.8 - 0.4)  # only class 0 had an earlier best above 0
    assert summary["BWT"] == pytest.approx(0.4 - 0.8)  # class 1 was first seen at the last split end
    with pytest.raises(ValueError, match="stream order"):
        evaluations.record(10, 0.1, count, periodic=True, split_end=False)


def test_undefined_summaries_are_nan_not_errors():
    evaluations = StreamEvaluations()
    evaluations.record(10, 0.5, torch.tensor([0.5]), periodic=False, split_end=True)
    summary = evaluations.summary()
    assert summary["A_last"] == 0.5 and summary["A_avg"] == 0.5
    assert all(math.isnan(summary[name]) for name in ("A_auc", "F_last", "BWT"))
    with pytest.raises(ValueError, match="no sample"):
        SeenClassAccuracy(3).compute()
