"""bench/resume.py: a run split by interruptions repeats the uninterrupted run, value for value."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from resume import EpochSnapshot, capture_rng, file_digest, restore_rng

EPOCHS = 6


class Interrupted(Exception):
    pass


def _train(
    snapshot: EpochSnapshot | None, stop_after: int | None = None, restore: bool = True
) -> list[float]:
    """One "process": seed, build, maybe resume, train; every source of randomness is used per epoch.

    Dropout and the model's init use torch's global generator, the loader's shuffle its own
    generator, and a numpy and a ``random`` draw perturb every epoch's targets, as augmentations do.
    """
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    features, targets = torch.randn(64, 8), torch.randn(64, 1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(features, targets), batch_size=16, shuffle=True, generator=generator
    )
    losses: list[float] = []
    start = 0
    state = snapshot.load() if snapshot is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        losses, start = state["losses"], state["epoch"]
        if restore:
            restore_rng(state["rng"], [generator])
    for epoch in range(start, EPOCHS):
        if snapshot is not None and epoch > start:
            snapshot.save(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "losses": losses,
                    "rng": capture_rng([generator]),
                }
            )
            if stop_after is not None and epoch - start >= stop_after:
                raise Interrupted
        scale = float(np.random.uniform(0.9, 1.1)) * random.uniform(0.9, 1.1)
        total = 0.0
        for x, y in loader:
            loss = nn.functional.mse_loss(model(x), y * scale)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        losses.append(total)
    return losses


def _split(snapshot: EpochSnapshot, pieces: list[int], restore: bool = True) -> list[float]:
    for stop_after in pieces:
        with pytest.raises(Interrupted):
            _train(snapshot, stop_after, restore)
        torch.manual_seed(1234)  # another process: the global generators are wherever they are
        np.random.seed(1234)
        random.seed(1234)
    return _train(snapshot, None, restore)


def test_an_interrupted_run_repeats_the_uninterrupted_one_exactly(tmp_path: Path) -> None:
    reference = _train(None)
    split = _split(EpochSnapshot(tmp_path / "run.snapshot", {"seed": 0}), [2, 1, 2])
    assert split == reference  # bitwise: same losses, epoch for epoch


def test_without_the_generators_the_curve_changes(tmp_path: Path) -> None:
    """The control: what the test above would catch if the RNG states were not carried over."""
    reference = _train(None)
    split = _split(EpochSnapshot(tmp_path / "run.snapshot", {"seed": 0}), [2], restore=False)
    assert split[:2] == reference[:2] and split[2:] != reference[2:]


def test_a_snapshot_of_another_run_is_refused_naming_the_field(tmp_path: Path) -> None:
    EpochSnapshot(tmp_path / "s", {"seed": 0, "epochs": 200}).save({"epoch": 3})
    assert EpochSnapshot(tmp_path / "s", {"seed": 0, "epochs": 200}).load() == {"epoch": 3}
    with pytest.raises(ValueError, match="'epochs' is 200 there, 100 here"):
        EpochSnapshot(tmp_path / "s", {"seed": 0, "epochs": 100}).load()
    with pytest.raises(ValueError, match="'data_sha256'"):
        EpochSnapshot(tmp_path / "s", {"seed": 0, "epochs": 200, "data_sha256": "ab"}).load()
    assert EpochSnapshot(tmp_path / "missing", {}).load() is None
    with pytest.raises(ValueError, match="'epoch'"):
        EpochSnapshot(tmp_path / "s", {}).save({"model": 1})


def test_a_save_killed_midway_leaves_the_previous_snapshot(tmp_path: Path, monkeypatch: Any) -> None:
    snapshot = EpochSnapshot(tmp_path / "s", {"seed": 0})
    snapshot.save({"epoch": 4, "weights": torch.ones(3)})

    def dies_after_writing_some_bytes(obj: Any, handle: Any) -> None:
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_after_writing_some_bytes)
    with pytest.raises(KeyboardInterrupt):
        snapshot.save({"epoch": 5, "weights": torch.zeros(3)})
    monkeypatch.undo()
    state = snapshot.load()
    assert state["epoch"] == 4 and torch.equal(state["weights"], torch.ones(3))


def test_the_data_digest_follows_the_bytes(tmp_path: Path) -> None:
    first, second = tmp_path / "a.inter", tmp_path / "b.inter"
    first.write_text("user\titem\n1\t2\n")
    second.write_text("user\titem\n1\t3\n")
    assert file_digest([first]) == file_digest([tmp_path / "a.inter"])
    assert file_digest([first]) != file_digest([second])
    assert file_digest([first, second]) != file_digest([second, first])


def test_a_finished_result_is_returned_only_under_its_own_key(tmp_path: Path) -> None:
    key = {"seed": 2, "epochs": 200, "shape": (3, 4)}  # a tuple reads back from JSON as a list
    snapshot = EpochSnapshot(tmp_path / "s", key)
    assert snapshot.load_result() is None
    result = {"test": {"ndcg@10": 0.07}, "epochs": [1.5, 2.5]}
    snapshot.save_result(result)
    assert EpochSnapshot(tmp_path / "s", key).load_result() == result
    assert EpochSnapshot(tmp_path / "s", {**key, "seed": 3}).load_result() is None
    assert not list(tmp_path.glob("*.partial"))
