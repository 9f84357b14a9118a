"""``HubMixin``: save, load and push any lightning-rec block or module as a Hugging Face Hub repo.

A repo (or folder) holds:

- ``config.json``: the ``class_path`` / ``init_args`` tree that rebuilds the object, injected
  blocks included (``huggingface_hub.ModelHubMixin`` alone silently drops ``nn.Module`` arguments);
- ``model.safetensors``: the weights, loaded with ``strict=True``;
- ``vocab.json`` (modules trained on a datamodule): the id maps and item side table, so a pulled
  model scores raw item ids;
- ``README.md``: the model card.

Loading never unpickles: only JSON and safetensors are read, every class in ``config.json`` must be
on the allowlist of :mod:`lightning_rec.hub.config_tree` (``nn.Module`` classes only, the root the
class asked for, checked before anything is built), ``vocab.json`` is checked for size and types,
and a repo with pickled weights only (``pytorch_model.bin``, ``*.ckpt``) is refused.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from huggingface_hub import HfApi, ModelHubMixin, snapshot_download
from safetensors import safe_open
from safetensors.torch import load_model, save_model

from lightning_rec.atomic import atomic_path
from lightning_rec.hub.config_tree import HUB_CLASSES, class_path_of, encode_init_value, instantiate_tree

__all__ = [
    "CONFIG_FILE",
    "MAX_JSON_BYTES",
    "VOCAB_FILE",
    "WEIGHTS_FILE",
    "HubMixin",
    "check_vocab",
    "read_json",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
VOCAB_FILE = "vocab.json"
_PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl", ".pickle")
#: the largest ``config.json`` or ``vocab.json`` read (a catalogue of millions of titled items fits).
MAX_JSON_BYTES = 1 << 30

T = TypeVar("T", bound="HubMixin")


class HubMixin(
    ModelHubMixin,
    library_name="lightning-rec",
    tags=["lightning-rec", "recommendation"],
    repo_url="https://github.com/lightning-rec/lightning-rec",
):
    """Mix into an ``nn.Module`` (first in the bases) to get ``save_pretrained`` / ``from_pretrained``
    / ``push_to_hub`` with the full constructor tree, injected blocks included.

    The constructor arguments are recorded when the object is created, so every argument must be
    JSON-like, a :class:`HubMixin` (lightning-rec blocks are), one of the common ``torch.nn`` layers
    (``Linear``, ``Embedding``, ``LayerNorm``, ``Dropout``, activations, ``Sequential`` of these,
    see :data:`~lightning_rec.hub.config_tree.TORCH_LAYERS`), or a class registered with
    :func:`~lightning_rec.hub.register_trusted_class`.
    """

    #: constructor arguments left out of ``config.json`` (e.g. where to fetch starting weights).
    hub_config_exclude: ClassVar[tuple[str, ...]] = ()

    #: every HubMixin subclass by class path, filled as classes are defined (the zoo's registry, and
    #: the classes a downloaded ``config.json`` may name besides common ``torch.nn`` layers).
    registry: ClassVar[dict[str, type[HubMixin]]] = HUB_CLASSES

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        HubMixin.registry[class_path_of(cls)] = cls

    @classmethod
    def hub_example(cls) -> tuple[HubMixin, tuple[Any, ...]]:
        """A tiny instance and an input for its ``forward``: what the registry round-trip test runs.

        Every concrete block and module defines it, so it is tested the day it is registered.
        """
        raise NotImplementedError(f"{cls.__qualname__} defines no hub_example()")

    def __new__(cls, *args: Any, **kwargs: Any) -> HubMixin:
        instance = super().__new__(cls, *args, **kwargs)
        signature = inspect.signature(cls.__init__)
        # bind_partial: copy.deepcopy and unpickling call __new__ without arguments, then restore
        # __dict__ (recorded arguments included).
        bound = signature.bind_partial(None, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop(next(iter(signature.parameters)))  # self
        object.__setattr__(instance, "_hub_init_arguments", arguments)
        return instance

    # ------------------------------------------------------------------ save
    def config_tree(self) -> dict[str, Any]:
        """``{"class_path": ..., "init_args": {...}}`` that rebuilds this object (before weights)."""
        arguments = self._hub_init_arguments
        return {
            "class_path": class_path_of(type(self)),
            "init_args": {
                name: encode_init_value(name, value)
                for name, value in arguments.items()
                if name not in self.hub_config_exclude
            },
        }

    def config_hparams(self) -> dict[str, Any]:
        """The constructor tree as Lightning hyperparameters: JSON-only, and rebuilt by
        ``LightningModule.load_from_checkpoint`` through LightningCLI's instantiator."""
        tree = self.config_tree()
        return {
            "_class_path": tree["class_path"],  # the keys LightningCLI itself writes
            **tree["init_args"],
            "_instantiator": "lightning.pytorch.cli.instantiate_module",
        }

    def hub_vocab(self) -> dict[str, Any] | None:
        """Extra JSON saved as ``vocab.json`` (id maps, item side table); ``None`` writes nothing."""
        return getattr(self, "vocab", None)

    def _save_pretrained(self, save_directory: Path) -> None:
        with atomic_path(save_directory / CONFIG_FILE) as config:
            config.write_text(json.dumps(self.config_tree(), indent=2))
        with atomic_path(save_directory / WEIGHTS_FILE) as weights:
            save_model(self, str(weights), metadata={"format": "pt", "class_path": class_path_of(type(self))})
        vocab = self.hub_vocab()
        if vocab is not None:
            with atomic_path(save_directory / VOCAB_FILE) as vocab_file:
                vocab_file.write_text(json.dumps(vocab))

    def push_to_hub(
        self, repo_id: str, *, model_card_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> Any:
        """Save to a temporary folder and upload it to ``repo_id`` as one commit (the card names the repo)."""
        card_kwargs = {"repo_id": repo_id, **(model_card_kwargs or {})}
        return super().push_to_hub(repo_id, model_card_kwargs=card_kwargs, **kwargs)

    # ------------------------------------------------------------------ load
    @classmethod
    def from_pretrained(
        cls: type[T],
        pretrained_model_name_or_path: str | Path,
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        token: str | bool | None = None,
        local_files_only: bool = False,
        device: str = "cpu",
    ) -> T:
        """Load a model saved by :meth:`save_pretrained` from a folder or a Hub repo id.

        Returns the model in eval mode. Raises ``FileNotFoundError`` when the repo has no
        ``model.safetensors`` (pickled weights are never loaded), ``UntrustedClassError`` when
        ``config.json`` names a class outside the allowlist or another class than ``cls`` (checked
        before anything is built), ``RuntimeError`` naming missing or unexpected weights, and
        ``ValueError`` for a malformed ``config.json`` or ``vocab.json``.
        """
        source = str(pretrained_model_name_or_path)
        if os.path.isdir(source):
            folder = Path(source)
        else:
            folder = Path(
                snapshot_download(
                    repo_id=source,
                    revision=revision,
                    cache_dir=cache_dir,
                    force_download=force_download,
                    token=token,
                    local_files_only=local_files_only,
                    allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE, "README.md"],
                )
            )
        weights = folder / WEIGHTS_FILE
        if not weights.is_file():
            raise FileNotFoundError(
                f"{source}: no {WEIGHTS_FILE}. lightning-rec loads weights from safetensors only and never "
                f"unpickles a repo's files{_pickle_note(source, folder, revision, token, local_files_only)}"
            )
        config_path = folder / CONFIG_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"{source}: no {CONFIG_FILE} to rebuild the model from")
        tree = read_json(config_path, source)
        _check_weight_shapes(tree, cls, weights, source)
        model = instantiate_tree(tree, expected=cls)
        try:
            load_model(model, str(weights), strict=True, device=device)
        except RuntimeError as error:
            raise RuntimeError(
                f"{source}: the weights in {WEIGHTS_FILE} do not match the model: {error}"
            ) from error
        vocab_path = folder / VOCAB_FILE
        if vocab_path.is_file():
            model.vocab = check_vocab(read_json(vocab_path, source), source)
        return model.eval()


def _check_weight_shapes(tree: Any, cls: type, weights: Path, source: str) -> None:
    """Refuse a config whose model would not hold exactly the tensors of ``weights``, before building it.

    The tree is built on the ``meta`` device (shapes only: no memory, no data) and compared with the
    safetensors header, so a config with huge sizes cannot make the loader allocate them. A
    constructor that computes on its weights (SMoA's spectral partition) cannot run on ``meta``; such a
    model is checked by the strict load after it is built.
    """
    try:
        with torch.device("meta"):
            skeleton = instantiate_tree(tree, expected=cls)
    except (NotImplementedError, RuntimeError):
        return
    with safe_open(str(weights), framework="pt") as handle:
        saved = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    # save_model writes one of the names of a tensor shared by several modules (DiffuReason's thinking
    # encoder is its encoder): group names by tensor.
    names_of: dict[int, list[str]] = {}
    tensors = skeleton.state_dict(keep_vars=True)
    for name, tensor in tensors.items():
        names_of.setdefault(id(tensor), []).append(name)
    problems = [f"unexpected {sorted(set(saved) - set(tensors))}"] if set(saved) - set(tensors) else []
    for names in names_of.values():
        on_disk = [name for name in names if name in saved]
        if not on_disk:
            problems.append(f"missing {names[0]}")
        for name in on_disk:
            if saved[name] != tuple(tensors[name].shape):
                problems.append(
                    f"{name} is {saved[name]} in {WEIGHTS_FILE}, {tuple(tensors[name].shape)} in the config"
                )
    if problems:
        raise RuntimeError(
            f"{source}: the weights in {WEIGHTS_FILE} do not match the model config.json describes "
            f"(checked before building it): {'; '.join(problems[:10])}"
        )


def read_json(path: Path, source: str) -> Any:
    """The JSON in a downloaded file, refused above :data:`MAX_JSON_BYTES` (so a hostile repo cannot
    exhaust memory) or when it is not valid JSON."""
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise ValueError(f"{source}/{path.name} is {size} bytes, more than the {MAX_JSON_BYTES} allowed")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{source}/{path.name}: not valid JSON ({error})") from error


def check_vocab(vocab: Any, source: str) -> dict[str, list[Any]]:
    """``vocab`` if it is what :meth:`HubMixin.hub_vocab` writes: a JSON object of lists or objects
    (``item_ids`` a list of strings, the other ``item_*`` lists as long); ``ValueError`` otherwise.

    Parsed JSON is plain data (no code, and the file's size is capped before parsing), so nested
    values such as a quantizer's code lists pass; a block checks the fields it reads itself.
    """
    if not isinstance(vocab, dict):
        raise ValueError(f"{source}/{VOCAB_FILE}: expected a JSON object, got {type(vocab).__name__}")
    for key, values in vocab.items():
        if not isinstance(values, (list, dict)):
            raise ValueError(
                f"{source}/{VOCAB_FILE}: {key!r} must be a list or an object, got {type(values).__name__}"
            )
    item_ids = vocab.get("item_ids")
    if item_ids is not None:
        if not all(isinstance(item, str) for item in item_ids):
            raise ValueError(f"{source}/{VOCAB_FILE}: 'item_ids' must be a list of strings")
        for key, values in vocab.items():
            if key.startswith("item_") and (not isinstance(values, list) or len(values) != len(item_ids)):
                raise ValueError(
                    f"{source}/{VOCAB_FILE}: {key!r} must be a list as long as 'item_ids' ({len(item_ids)})"
                )
    return vocab


def _pickle_note(source: str, folder: Path, revision: str | None, token: Any, local_only: bool) -> str:
    if folder.is_dir() and os.path.isdir(source):
        names = os.listdir(folder)
    elif local_only:
        return ""
    else:
        try:
            names = HfApi().list_repo_files(source, revision=revision, token=token)
        except Exception:  # the note is a courtesy; the refusal stands whatever happens here
            return ""
    pickled = sorted(name for name in names if name.endswith(_PICKLE_SUFFIXES))
    return f" (it has {', '.join(pickled)}, which would need unpickling)" if pickled else ""
