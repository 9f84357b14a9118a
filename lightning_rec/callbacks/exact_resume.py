"""``ExactResume``: a resumed run ends where the uninterrupted run would have, bit for bit.

Lightning restores the weights, the optimiser and the loop counters from a checkpoint, but not the
random number generators. A fresh process resuming from ``last.ckpt`` then starts from the seed of
``seed_everything`` instead of where the interrupted run was, so it draws other dropout masks, cloze
masks, diffusion noise, GRPO samples and another shuffle order (a ``DataLoader`` without a generator
of its own seeds its sampler from torch's global generator at every epoch).

This callback saves, with every checkpoint, the states of the generators the run draws from:
torch's CPU generator, every CUDA device's, NumPy's and Python's global ones, and the ``generator``
of every training ``DataLoader`` and of its sampler. Resuming ``fit`` puts the global ones back in
``on_fit_start``: after the checkpoint is restored, and before Lightning creates the first training
iterator (which draws a seed from the global generator). The states are plain tensors, ints and
lists, so the checkpoint still loads with ``torch.load(weights_only=True)``.

Limits, where Lightning gives no hook:

- A ``DataLoader`` with a ``generator`` of its own exists only once training starts, after Lightning
  drew its first iterator's seed from it; its state is restored then (``on_train_start``), so its
  shuffle order continues the saved run's but is not identical to it. ``SequentialRecDataModule``
  shuffles from the global generator and resumes exactly.
- A checkpoint saved in the middle of an epoch resumes in Lightning's own way (its loaders are not
  stateful), so exactness holds for checkpoints saved at epoch ends (``last.ckpt``,
  validation-monitored ones).
- Under DDP each process restores the states of rank 0, the one that writes the checkpoint: a
  resumed multi-process run is reproducible, not identical to the uninterrupted one.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

__all__ = ["ExactResume"]


class ExactResume(L.Callback):
    """Save the random generators' states in checkpoints and restore them when ``fit`` resumes."""

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None
        self._restored: dict[str, Any] | None = None

    # ------------------------------------------------------------------ save
    def state_dict(self) -> dict[str, Any]:
        numpy_state = np.random.get_state()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
                "position": int(numpy_state[2]),
                "has_gauss": int(numpy_state[3]),
                "cached_gaussian": float(numpy_state[4]),
            },
            "python": _python_state_to_lists(random.getstate()),
            "dataloaders": [],
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        if self._trainer is not None:
            state["dataloaders"] = [
                generator.get_state() for generator in _loader_generators(self._trainer.train_dataloader)
            ]
        return state

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer  # state_dict() takes no trainer, and saves the training loaders' states

    # ------------------------------------------------------------------ load
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Called while restoring, before `on_fit_start`; applied there (for `fit` only).
        self._restored = state_dict

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restored is None:
            return
        state = self._restored
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        numpy_state = state["numpy"]
        np.random.set_state(
            (
                "MT19937",
                numpy_state["keys"].numpy().astype(np.uint32),
                numpy_state["position"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            )
        )
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._restored is None:
            return
        state, self._restored = self._restored, None
        generators = _loader_generators(trainer.train_dataloader)
        if len(generators) != len(state["dataloaders"]):
            raise ValueError(
                f"the checkpoint holds {len(state['dataloaders'])} training dataloader generator states, "
                f"this run has {len(generators)} generators: resume with the same data configuration"
            )
        for generator, saved in zip(generators, state["dataloaders"], strict=True):
            generator.set_state(saved)


def _python_state_to_lists(state: tuple) -> list[Any]:
    version, internal, gauss_next = state
    return [version, list(internal), gauss_next]


def _loader_generators(loaders: Any) -> list[torch.Generator]:
    """The distinct ``torch.Generator`` objects of the training loaders (loader, sampler, batch sampler)."""
    found: list[torch.Generator] = []
    for loader in _flatten(loaders):
        candidates = [
            getattr(loader, "generator", None),
            getattr(loader.sampler, "generator", None),
            getattr(getattr(loader.batch_sampler, "sampler", None), "generator", None),
        ]
        for generator in candidates:
            if isinstance(generator, torch.Generator) and all(generator is not seen for seen in found):
                found.append(generator)
    return found


def _flatten(loaders: Any) -> list[DataLoader]:
    if isinstance(loaders, DataLoader):
        return [loaders]
    if isinstance(loaders, dict):
        return [loader for value in loaders.values() for loader in _flatten(value)]
    if isinstance(loaders, (list, tuple)):
        return [loader for value in loaders for loader in _flatten(value)]
    return []
