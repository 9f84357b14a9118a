"""Resume an epoch loop exactly where it stopped: one snapshot file, written at every epoch start.

A peer's training can outlast a sitting (RecBole's SASRec on ml-100k runs up to 3 h at 2 threads),
and a seed re-run from scratch would hit the same wall every time, since the runs are deterministic.
:class:`EpochSnapshot` makes such a run survive an interruption with the **same curve**: at the
start of every epoch the loop hands it everything that decides the rest of the run (model and
optimizer state, the global ``torch`` / ``numpy`` / ``random`` generators, the data loaders' own
``torch.Generator``\\ s, and the caller's bookkeeping such as early-stopping counters and timing
lists); it writes them to one file atomically (a temporary file, then ``os.replace``), so a kill at
any moment leaves either the previous snapshot or the new one, never half of one. On the next start
the loop restores them and continues from that epoch; the epoch that was cut short is run again
from its start, so its partial time is not counted.

When the loop is done, :meth:`EpochSnapshot.save_result` stores its final result (JSON) beside the
snapshot, and a later start with the same key returns it at once instead of training again.

Each snapshot carries a **key** (seed, epoch budget, a hash of the data, library versions, ...).
Restoring against a different key is an error naming the field, never a silent mix of two runs.

Standard library, ``numpy`` and ``torch`` only: the peers' runners import it from their own
virtual environments (``bench/`` is on their ``sys.path`` as the script's folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

__all__ = ["EpochSnapshot", "capture_rng", "file_digest", "restore_rng"]


def file_digest(paths: Iterable[Path]) -> str:
    """SHA-256 over the bytes of ``paths`` (in the given order): a data set's part of a snapshot key."""
    digest = hashlib.sha256()
    for path in paths:
        data = Path(path).read_bytes()
        digest.update(len(data).to_bytes(8, "little"))  # so that no two file lists hash alike
        digest.update(data)
    return digest.hexdigest()


def capture_rng(generators: Sequence[torch.Generator] = ()) -> dict[str, Any]:
    """The state of ``random``, ``numpy``, the global ``torch`` generator and ``generators``."""
    return {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generators": [generator.get_state() for generator in generators],
    }


def restore_rng(state: dict[str, Any], generators: Sequence[torch.Generator] = ()) -> None:
    """Put back what :func:`capture_rng` took; ``generators`` in the same order as then."""
    if len(generators) != len(state["generators"]):
        raise ValueError(
            f"restore_rng: the snapshot holds {len(state['generators'])} loader generator(s), "
            f"{len(generators)} were given"
        )
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    for generator, saved in zip(generators, state["generators"], strict=True):
        generator.set_state(saved)


def _write_atomically(target: Path, write: Callable[[BinaryIO], Any]) -> None:
    """``write`` into ``<target>.partial``, flush it to disk, then rename it over ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with open(partial, "wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, target)


class EpochSnapshot:
    """One resumable run's snapshot file.

    Args:
        path: the snapshot file; its folder is created on the first :meth:`save`.
        key: what identifies the run (JSON-like values: seed, epochs, data digest, versions).
            :meth:`load` refuses a snapshot saved under another key.

    The state handed to :meth:`save` is the caller's: a dict that ``torch.save`` can write (tensors,
    state dicts, lists, numbers, bytes). It must include ``"epoch"``, the index of the epoch about to
    run, which :meth:`load` returns with the rest.
    """

    def __init__(self, path: Path, key: dict[str, Any]) -> None:
        self.path = Path(path)
        self.key = dict(key)

    def load(self) -> dict[str, Any] | None:
        """The saved state, or ``None`` when there is no snapshot yet.

        Raises:
            ValueError: the snapshot was saved under another key (names the first differing field).
        """
        if not self.path.exists():
            return None
        # Our own file, written by `save` on this machine; it holds numpy RNG tuples and python
        # containers, so it is not a weights-only checkpoint.
        saved = torch.load(self.path, map_location="cpu", weights_only=False)
        for field in sorted(set(self.key) | set(saved["key"])):
            if self.key.get(field) != saved["key"].get(field):
                raise ValueError(
                    f"{self.path}: snapshot of another run: key field {field!r} is "
                    f"{saved['key'].get(field)!r} there, {self.key.get(field)!r} here; remove the "
                    "file or choose another state folder"
                )
        return saved["state"]

    def save(self, state: dict[str, Any]) -> None:
        """Write ``state`` (with ``"epoch"``) atomically: a kill leaves the old or the new file."""
        if "epoch" not in state:
            raise ValueError("EpochSnapshot.save: the state needs 'epoch', the epoch about to run")
        _write_atomically(self.path, lambda handle: torch.save({"key": self.key, "state": state}, handle))

    @property
    def result_path(self) -> Path:
        """Where :meth:`save_result` writes: beside the snapshot, ``<name>.result.json``."""
        return self.path.with_name(self.path.name + ".result.json")

    def save_result(self, result: dict[str, Any]) -> None:
        """Record the finished run's ``result`` (JSON-serialisable), atomically, under the key."""
        text = json.dumps({"key": self.key, "result": result}, indent=1) + "\n"
        _write_atomically(self.result_path, lambda handle: handle.write(text.encode("utf-8")))

    def load_result(self) -> dict[str, Any] | None:
        """The finished run's result, or ``None`` if it has not finished under this key."""
        if not self.result_path.exists():
            return None
        saved = json.loads(self.result_path.read_text(encoding="utf-8"))
        # JSON turns tuples into lists: compare the key as it reads back from JSON.
        return saved["result"] if saved["key"] == json.loads(json.dumps(self.key)) else None
