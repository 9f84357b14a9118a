"""Shared fixtures: an in-memory interaction source, a per-session data cache, a local Hub."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from huggingface_hub import constants

from lightning_rec.data.records import Interaction, ItemMeta, ReadReport
from lightning_rec.hub.testing import LocalHub, hub_endpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tests use tiny tensors: one intra-op thread per test process avoids OpenMP oversubscription
# when pytest-xdist runs two workers on two cores.
torch.set_num_threads(1)


class ListSource:
    """An :class:`~lightning_rec.data.InteractionSource` over Python lists, for tests."""

    def __init__(
        self, interactions: list[Interaction], items: list[ItemMeta] | None = None, tag: str = ""
    ) -> None:
        self._interactions = interactions
        self._items = items or []
        self.tag = tag
        self.reports: list[ReadReport] = []
        self.reads = 0

    def interactions(self) -> Iterator[Interaction]:
        self.reads += 1
        yield from self._interactions

    def items(self) -> Iterator[ItemMeta]:
        yield from self._items

    def fingerprint(self) -> str:
        return f"list-{self.tag}-{len(self._interactions)}"


@pytest.fixture
def list_source() -> type[ListSource]:
    return ListSource


@pytest.fixture
def ddp_env() -> dict[str, str]:
    """Environment for a ``strategy="ddp"`` subprocess: CPU only, the repo importable, and a free
    port of its own, so two DDP tests on two pytest-xdist workers never meet on one port."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = str(Path(__file__).resolve().parents[1])
    python_path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "MASTER_PORT": str(port), "PYTHONPATH": python_path}


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One cache folder per test session, so generated synthetic data is reused across tests."""
    return str(tmp_path_factory.mktemp("lightning_rec_cache"))


@pytest.fixture
def local_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """A started LocalHub with ``huggingface_hub`` pointed at it and its cache under `tmp_path`."""
    hf_home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    with LocalHub() as hub, hub_endpoint(hub.url):
        yield hub


@pytest.fixture
def hub_token() -> str:
    """A token to pass explicitly (``token=hub_token``) where the client requires one, e.g. ``whoami``.

    Implicit tokens are off inside ``hub_endpoint``; the local Hub accepts any token.
    """
    return "test-token"


class TrainBatchMetrics(L.Callback):
    """Keeps every training batch's ``train/`` metrics: ``trainer.callback_metrics`` holds the last only."""

    def __init__(self) -> None:
        self.seen: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        self.seen.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})


@pytest.fixture
def train_batch_metrics() -> TrainBatchMetrics:
    """A callback to pass to a Trainer; its ``seen`` lists each training batch's logged metrics."""
    return TrainBatchMetrics()
