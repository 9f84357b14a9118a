"""A separate virtual environment holding RecBole 1.2.1, for the SASRec benchmark.

RecBole 1.2.1 needs an old stack (NumPy 1 aliases, pandas < 2.3) and its declared pins
(ray<=2.6.3, exact colorlog and colorama versions) break a modern one, so it never goes into the
project's environment. ``ensure_recbole_venv`` builds ``.venv-recbole`` with the CPU torch wheel
that lies on local disk, then RecBole with ``--no-deps`` plus only the packages that
``recbole.config``, ``recbole.data``, ``recbole.model.sequential_recommender.sasrec``,
``recbole.trainer`` and ``recbole.utils`` import at run time (``recbole.quick_start`` is never
imported: it needs ray). A stamp file holds a hash of the pinned list; a different hash rebuilds it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

DEFAULT_VENV = Path(".venv-recbole")
# ``+cpu`` can only match the local CPU wheel: plain ``torch`` would pull a multi-GB CUDA build.
TORCH_REQUIREMENT = "torch==2.13.0+cpu"
RECBOLE_REQUIREMENT = "recbole==1.2.1"
RUNTIME_REQUIREMENTS: tuple[str, ...] = (
    "numpy==1.26.4",
    "pandas==2.2.3",
    "scipy==1.13.1",
    "scikit-learn==1.5.2",
    "pyyaml==6.0.2",
    "colorlog==4.7.2",
    "colorama==0.4.4",
    "tensorboard==2.18.0",
    "texttable==1.7.0",
    "psutil==6.1.1",
    "tqdm==4.67.1",
    "tabulate==0.9.0",
)
IMPORT_CHECK = (
    "import recbole.config, recbole.data, recbole.model.sequential_recommender.sasrec, "
    "recbole.trainer, recbole.utils"
)
STAMP_NAME = ".requirements.sha256"


def _log(message: str) -> None:
    print(f"[recbole-env] {message}", flush=True)


def _requirements_hash() -> str:
    text = "\n".join(
        [
            f"python {sys.version_info.major}.{sys.version_info.minor}",
            TORCH_REQUIREMENT,
            RECBOLE_REQUIREMENT,
            *RUNTIME_REQUIREMENTS,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()


def _venv_python(path: Path) -> Path:
    return path / "bin" / "python"


def _find_links() -> list[str]:
    """``--find-links`` options for the folders that hold local wheels (the CPU torch wheel)."""
    folders = [*os.environ.get("PIP_FIND_LINKS", "").split(), "/opt/wheels"]
    return [
        arg for folder in dict.fromkeys(folders) if Path(folder).is_dir() for arg in ("--find-links", folder)
    ]


def _pip(python: Path, *args: str) -> None:
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", *args]
    _log("$ " + " ".join(command))
    subprocess.run(command, check=True)


def ensure_recbole_venv(path: Path = DEFAULT_VENV) -> Path:
    """Build (or reuse) the RecBole venv at ``path`` and return its python interpreter."""
    path = Path(path).absolute()
    python = _venv_python(path)
    stamp = path / STAMP_NAME
    wanted = _requirements_hash()
    if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
        _log(f"reusing {path}")
        return python
    _log(f"creating {path} (missing or stale stamp)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(path)], check=True)
    _log(f"installing {TORCH_REQUIREMENT} from the local CPU wheel")
    _pip(python, *_find_links(), TORCH_REQUIREMENT)
    _log("installing RecBole's runtime dependencies (old stack: numpy<2, pandas<2.3)")
    _pip(python, *_find_links(), *RUNTIME_REQUIREMENTS, TORCH_REQUIREMENT)
    _log(f"installing {RECBOLE_REQUIREMENT} without its declared dependencies (ray pin)")
    _pip(python, "--no-deps", RECBOLE_REQUIREMENT)
    _log("checking the RecBole imports the benchmark needs")
    subprocess.run([str(python), "-c", IMPORT_CHECK], check=True)
    stamp.write_text(wanted + "\n")
    _log(f"ready: {python}")
    return python


def recbole_ml100k_dir(path: Path = DEFAULT_VENV) -> Path:
    """The ml-100k atomic files folder shipped inside the recbole package of the venv at ``path``."""
    python = _venv_python(Path(path).absolute())
    code = "import importlib.util as u; print(u.find_spec('recbole').submodule_search_locations[0])"
    out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True)
    folder = Path(out.stdout.strip()) / "dataset_example" / "ml-100k"
    if not (folder / "ml-100k.inter").is_file():
        raise FileNotFoundError(f"no ml-100k.inter in {folder}")
    return folder


if __name__ == "__main__":
    venv_python = ensure_recbole_venv()
    print(venv_python)
    print(recbole_ml100k_dir())
