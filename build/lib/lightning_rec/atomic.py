"""Atomic file writes: a reader sees the old file or the whole new one, never a partial one.

Below every layer (standard library only), so data, hub and any later layer share one way to do it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_directory", "atomic_path"]


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_directory(path: str | Path, is_complete: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield an empty staging folder beside ``path``; on success it is renamed to ``path``.

    If another process completed ``path`` first (the rename fails and ``is_complete(path)`` holds),
    its copy is kept and ours dropped: both were built from the same inputs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield staging
        try:
            os.replace(staging, path)
        except OSError:
            if not is_complete(path):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # already gone when the rename succeeded
