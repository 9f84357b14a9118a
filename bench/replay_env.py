"""A separate virtual environment holding RePlay 0.22, for the SASRec benchmark.

RePlay (``replay-rec[torch]``) pins its own Lightning and polars stack, so it never goes into the
project's environment. ``ensure_replay_venv`` builds ``.venv-replay`` with the CPU torch wheel first
(an unpinned torch would resolve a CUDA build), then RePlay; a stamp file holds a hash of the pinned
list, and a different hash rebuilds it.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

DEFAULT_VENV = Path(__file__).resolve().parents[1] / ".venv-replay"
REQUIREMENTS: tuple[str, ...] = ("torch==2.13.0", "replay-rec[torch]==0.22.0")
STAMP_NAME = ".requirements.sha256"


def ensure_replay_venv(path: Path = DEFAULT_VENV) -> Path:
    """Build (or reuse) the RePlay venv at ``path`` and return its python interpreter."""
    path = Path(path).absolute()
    python = path / "bin" / "python"
    stamp = path / STAMP_NAME
    wanted = hashlib.sha256("\n".join([sys.version, *REQUIREMENTS]).encode()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        return python
    print(f"[replay-env] creating {path}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
    for requirement in REQUIREMENTS:  # torch alone first: the CPU wheel, before RePlay asks for torch
        subprocess.run([str(python), "-m", "pip", "install", "-q", requirement], check=True)
    subprocess.run([str(python), "-c", "import replay, torch"], check=True)
    stamp.write_text(wanted + "\n")
    return python


if __name__ == "__main__":
    print(ensure_replay_venv())
