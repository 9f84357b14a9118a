"""Streaming access to text files, gzip or plain, with line numbers for error messages."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

__all__ = ["default_cache_dir", "fingerprint_files", "numbered_lines", "open_text"]


def default_cache_dir() -> Path:
    """``$LIGHTNING_REC_CACHE`` or ``~/.cache/lightning_rec``: where data is fetched and cached."""
    return Path(os.environ.get("LIGHTNING_REC_CACHE", Path.home() / ".cache" / "lightning_rec"))


def open_text(path: str | Path, encoding: str = "utf-8") -> TextIO:
    """Open ``path`` for reading text; gzip is detected from the magic bytes, not the suffix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with path.open("rb") as raw:
        magic = raw.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, newline="")
    return path.open("r", encoding=encoding, newline="")


def numbered_lines(path: str | Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` with 1-based numbers and the line ending stripped; skips blank lines."""
    with open_text(path, encoding) as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line


def fingerprint_files(paths: Iterable[str | Path], options: dict[str, Any]) -> str:
    """A short hash of the files' resolved paths, sizes and mtimes plus the reading options."""
    entries = []
    for path in paths:
        stat = Path(path).stat()
        entries.append([str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns])
    payload = json.dumps({"files": entries, "options": options}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
