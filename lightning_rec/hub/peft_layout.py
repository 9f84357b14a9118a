"""PEFT's on-disk adapter layout: ``adapter_config.json`` + ``adapter_model.safetensors``.

A folder (or Hub repo) in this layout is what ``PeftModel.save_pretrained`` writes and what
``PeftModel.from_pretrained`` reads:

- ``adapter_config.json``: the adapter's configuration, a JSON object with at least ``peft_type``;
- ``adapter_model.safetensors``: the adapter's tensors, each key named after the base model's module
  path with PEFT's ``base_model.model.`` prefix and without an adapter name
  (``base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight``).

This module knows no adapter method: it writes and reads a config dict and a tensor dict whose keys
are relative to the base model (the prefix is added on write and checked and removed on read).
Reading never unpickles: a folder with only ``adapter_model.bin`` is refused. A downloaded config is
checked before any of it is used: its size, and the types of the fields every PEFT adapter shares
(``r``, ``lora_alpha``, ``lora_dropout``, ``target_modules``, ``modules_to_save``); a rank larger than
every dimension of the adapter's tensors is refused, so a hostile ``r`` cannot allocate a huge adapter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download
from safetensors.torch import load_file, save_file
from torch import Tensor

from lightning_rec.atomic import atomic_path
from lightning_rec.hub.mixin import read_json

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_WEIGHTS_FILE",
    "PEFT_KEY_PREFIX",
    "check_adapter_keys",
    "read_peft_adapter",
    "read_peft_adapter_config",
    "write_peft_adapter",
]

ADAPTER_CONFIG_FILE = "adapter_config.json"
ADAPTER_WEIGHTS_FILE = "adapter_model.safetensors"
#: the prefix PEFT gives every saved key (``PeftModel.base_model`` is the tuner, whose ``.model`` is yours).
PEFT_KEY_PREFIX = "base_model.model."


def write_peft_adapter(
    directory: str | Path, config: Mapping[str, Any], tensors: Mapping[str, Tensor]
) -> None:
    """Write ``config`` and ``tensors`` (keys relative to the base model) in PEFT's layout in ``directory``.

    Each file is replaced atomically; ``config`` must be JSON-serialisable and name its ``peft_type``.
    """
    if not isinstance(config.get("peft_type"), str):
        raise ValueError(f"config must name its 'peft_type' (a string), got {config.get('peft_type')!r}")
    if not tensors:
        raise ValueError("tensors is empty: an adapter needs at least one tensor")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / ADAPTER_CONFIG_FILE) as path:
        path.write_text(json.dumps(dict(config), indent=2, sort_keys=True))
    # safetensors stores each tensor on its own: detach from autograd and own the memory.
    prefixed = {PEFT_KEY_PREFIX + key: value.detach().contiguous().clone() for key, value in tensors.items()}
    with atomic_path(directory / ADAPTER_WEIGHTS_FILE) as path:
        save_file(prefixed, str(path), metadata={"format": "pt"})


def read_peft_adapter_config(
    source: str | Path,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> dict[str, Any]:
    """The ``adapter_config.json`` of a folder or Hub repo, as a dict (checked to name its ``peft_type``)."""
    folder = _folder(source, [ADAPTER_CONFIG_FILE], revision, token, local_files_only)
    return _read_config(folder, source)


def read_peft_adapter(
    source: str | Path,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    device: str = "cpu",
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The config and tensors of a PEFT-layout folder or Hub repo; tensor keys are relative to the base model.

    Raises ``FileNotFoundError`` when a file is missing (naming pickled weights found instead, which
    are never loaded) and ``ValueError`` for a key without PEFT's ``base_model.model.`` prefix.
    """
    folder = _folder(source, [ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE], revision, token, local_files_only)
    config = _read_config(folder, source)
    weights = folder / ADAPTER_WEIGHTS_FILE
    if not weights.is_file():
        pickled = sorted(name for name in os.listdir(folder) if name.startswith("adapter_model."))
        note = f" (it has {', '.join(pickled)}, which would need unpickling)" if pickled else ""
        raise FileNotFoundError(
            f"{source}: no {ADAPTER_WEIGHTS_FILE}; adapters load from safetensors only{note}"
        )
    tensors = {}
    loaded = load_file(str(weights), device=device)
    largest = max((max(value.shape, default=1) for value in loaded.values()), default=0)
    if isinstance(config.get("r"), int) and config["r"] > largest:
        raise ValueError(
            f"{source}/{ADAPTER_CONFIG_FILE}: r={config['r']} exceeds every dimension of the adapter's "
            f"tensors (largest {largest}); a low-rank adapter's rank is at most its layers' width"
        )
    for key, value in loaded.items():
        if not key.startswith(PEFT_KEY_PREFIX):
            raise ValueError(
                f"{source}/{ADAPTER_WEIGHTS_FILE}: key {key!r} lacks PEFT's {PEFT_KEY_PREFIX!r} prefix"
            )
        tensors[key.removeprefix(PEFT_KEY_PREFIX)] = value
    return config, tensors


def _folder(
    source: str | Path,
    files: list[str],
    revision: str | None,
    token: str | bool | None,
    local_files_only: bool,
) -> Path:
    if os.path.isdir(source):
        return Path(source)
    return Path(
        snapshot_download(
            repo_id=str(source),
            revision=revision,
            token=token,
            local_files_only=local_files_only,
            allow_patterns=files,
        )
    )


def _read_config(folder: Path, source: str | Path) -> dict[str, Any]:
    path = folder / ADAPTER_CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no {ADAPTER_CONFIG_FILE}, so it is not a PEFT adapter")
    config = read_json(path, str(source))
    if not isinstance(config, dict) or not isinstance(config.get("peft_type"), str):
        raise ValueError(f"{source}/{ADAPTER_CONFIG_FILE}: expected a JSON object with a 'peft_type' string")
    for field, (check, expected) in _FIELD_TYPES.items():
        if field in config and not check(config[field]):
            raise ValueError(
                f"{source}/{ADAPTER_CONFIG_FILE}: {field!r} is {config[field]!r}, expected {expected}"
            )
    return config


def _names(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(name, str) for name in value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# The fields PEFT's tuners share, as written by PEFT and by lightning-rec; other fields pass unchecked.
_FIELD_TYPES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "r": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a positive integer"),
    "lora_alpha": (_number, "a number"),
    "lora_dropout": (lambda v: _number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "target_modules": (lambda v: v is None or isinstance(v, str) or _names(v), "a list of names or a string"),
    "modules_to_save": (lambda v: v is None or _names(v), "a list of names or null"),
}


def check_adapter_keys(tensors: Mapping[str, Tensor], expected: set[str], source: str) -> None:
    """Raise ``RuntimeError`` naming the ``expected`` keys missing from ``tensors`` and its other keys."""
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise RuntimeError(
            f"{source} does not match the model: missing keys {missing}, unexpected keys {unexpected}"
        )
