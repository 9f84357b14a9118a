"""Hub fixtures: a running :class:`~lightning_rec.hub.testing.LocalHub` that ``huggingface_hub`` talks to.

Every other test runs with ``HF_HUB_OFFLINE=1``; inside ``local_hub`` the client is online, but
only towards the local Hub, and its cache lives in the test's temporary folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import constants

from lightning_rec.hub.testing import LocalHub, hub_endpoint


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
