"""``ScoreCache``: judge scores on disk, keyed by (user context, item, judge version), computed once.

S-GRec (arXiv 2602.10606) calls its LLM judge offline: each (user, candidate) is scored once and the
scores are reused across epochs and runs. This is that store. It holds fixed-width float vectors (the
judge's aspect evidence, or a user's feature vector) and knows nothing of what computes them.

On disk, one safetensors file per (name, judge version) under ``directory``: the tensor ``scores
(r w)`` and, in the header metadata, the judge version, the width and the keys as JSON. It is written
atomically (a temporary file renamed over the old one), so a reader sees a whole file or the previous
one, never a partial write, and it is never pickled. A file read back is checked (one float32 tensor,
finite, keys a list of string pairs, width and version as expected) before any entry is used.

Axes: r cached rows, w score width, q queried keys.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from lightning_rec.atomic import atomic_path

__all__ = ["ScoreCache"]

_FORMAT = "1"


class ScoreCache:
    """A (user, item) -> score vector store for one judge version, in memory and optionally on disk.

    Args:
        width: floats per entry (``w``).
        judge_version: what computed the scores (backend, model, prompts, aspects). Entries of another
            version live in another file and are never returned.
        directory: where the file lives; ``None`` keeps the cache in memory only.
        name: what is cached (``"aspects"``, ``"user_features"``), part of the file name.

    Attributes:
        hits, misses: keys answered from the cache and keys computed, since creation.
    """

    def __init__(
        self, width: int, judge_version: str, directory: str | Path | None = None, name: str = "scores"
    ) -> None:
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if not judge_version:
            raise ValueError("judge_version must be a non-empty string naming what computed the scores")
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(
                f"name must be letters, digits, '_' or '-' (it is part of a file name), got {name!r}"
            )
        self.width = width
        self.judge_version = judge_version
        self.name = name
        digest = hashlib.sha256(judge_version.encode()).hexdigest()[:16]
        self.path = None if directory is None else Path(directory) / f"{name}-{digest}.safetensors"
        self._rows: dict[tuple[str, str], Tensor] = {}
        self._unsaved = 0
        self.hits = 0
        self.misses = 0
        if self.path is not None and self.path.is_file():
            self._load(self.path)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._rows

    def get_or_compute(
        self, users: Sequence[str], items: Sequence[str], compute: Callable[[list[int]], Tensor]
    ) -> Tensor:
        """Scores `q w` of the keys (users[k], items[k]); the missing ones come from ``compute``.

        Args:
            users, items: `q` aligned key parts (a user context and an item, as strings).
            compute: called once with the positions (into ``users``) of the keys not cached, in order,
                unless none is missing; returns their scores `m w` (m = number of positions). A key
                repeated in the query is computed once.

        Returns:
            `q w` float32 scores, on the CPU.
        """
        if len(users) != len(items):
            raise ValueError(f"users and items must have the same length, got {len(users)} and {len(items)}")
        keys = list(zip(users, items, strict=True))
        first_missing: dict[tuple[str, str], int] = {}
        for position, key in enumerate(keys):
            if key not in self._rows and key not in first_missing:
                first_missing[key] = position
        self.hits += len(keys) - len(first_missing)
        if first_missing:
            positions = list(first_missing.values())
            computed = compute(positions)
            if tuple(computed.shape) != (len(positions), self.width):
                raise ValueError(
                    f"compute returned shape {tuple(computed.shape)}, expected "
                    f"({len(positions)}, {self.width}) = (missing keys, width)"
                )
            if not torch.isfinite(computed).all():
                raise ValueError("compute returned non-finite scores; they would be cached for good")
            computed = computed.detach().to("cpu", torch.float32)
            for key, row in zip(first_missing, computed, strict=True):
                self._rows[key] = row.clone()
            self.misses += len(positions)
            self._unsaved += len(positions)
        if not keys:
            return torch.empty(0, self.width)
        return torch.stack([self._rows[key] for key in keys])

    def save(self) -> None:
        """Write every entry to ``path`` atomically; a no-op in memory-only mode or when nothing is new."""
        if self.path is None or self._unsaved == 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self._rows)
        scores = torch.stack([self._rows[key] for key in keys]) if keys else torch.empty(0, self.width)
        metadata = {
            "format": _FORMAT,
            "judge_version": self.judge_version,
            "name": self.name,
            "width": str(self.width),
            "keys": json.dumps(keys),
        }
        with atomic_path(self.path) as tmp:
            save_file({"scores": scores.contiguous()}, str(tmp), metadata=metadata)
        self._unsaved = 0

    def _load(self, path: Path) -> None:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            for field in ("judge_version", "width", "keys"):
                if field not in metadata:
                    raise ValueError(f"{path}: not a score cache (no {field!r} in the safetensors metadata)")
            if metadata["judge_version"] != self.judge_version:
                raise ValueError(
                    f"{path}: holds judge version {metadata['judge_version']!r}, "
                    f"expected {self.judge_version!r}"
                )
            if metadata["width"] != str(self.width):
                raise ValueError(f"{path}: field 'width' is {metadata['width']!r}, expected {self.width}")
            if list(handle.keys()) != ["scores"]:
                raise ValueError(f"{path}: holds tensors {list(handle.keys())}, expected only 'scores'")
            scores = handle.get_tensor("scores")
        try:
            keys = json.loads(metadata["keys"])
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: field 'keys' is not JSON ({error})") from error
        pairs = isinstance(keys, list) and all(
            isinstance(key, list) and len(key) == 2 and all(isinstance(part, str) for part in key)
            for key in keys
        )
        if not pairs:
            raise ValueError(f"{path}: field 'keys' must be a list of [user, item] string pairs")
        if scores.dtype != torch.float32 or not torch.isfinite(scores).all():
            raise ValueError(f"{path}: tensor 'scores' must be finite float32, got {scores.dtype}")
        if scores.dim() != 2 or tuple(scores.shape) != (len(keys), self.width):
            raise ValueError(
                f"{path}: tensor 'scores' has shape {tuple(scores.shape)}, expected "
                f"({len(keys)}, {self.width}) = (keys in the metadata, width)"
            )
        self._rows = {(user, item): row for (user, item), row in zip(keys, scores, strict=True)}
