"""Shared fixtures: a small in-memory interaction source and a per-session data cache."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from lightning_rec.data.records import Interaction, ItemMeta, ReadReport

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


@pytest.fixture(scope="session")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One cache folder per test session, so generated synthetic data is reused across tests."""
    return str(tmp_path_factory.mktemp("lightning_rec_cache"))
