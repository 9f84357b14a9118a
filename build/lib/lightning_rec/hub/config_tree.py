"""The ``class_path`` / ``init_args`` tree that rebuilds a model, and its safe instantiation.

``config.json`` on the Hub holds the same nested tree LightningCLI saves::

    {"class_path": "lightning_rec.modules.sasrec.SASRec",
     "init_args": {"encoder": {"class_path": "lightning_rec.blocks.sequence.SASRec",
                               "init_args": {"num_items": 1682, "hidden_size": 64}},
                   "learning_rate": 0.001}}

A downloaded tree names code to run, so :func:`instantiate_tree` only instantiates classes on an
allowlist: classes defined under ``lightning_rec.`` or ``torch.nn.``, plus those a user registers
with :func:`register_trusted_class`. Anything else (``os.system``, ``builtins.eval``, a class that
is merely re-exported from an allowed module) is refused before any import of the named module.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["UntrustedClassError", "instantiate_tree", "register_trusted_class", "resolve_trusted_class"]

_TRUSTED_PREFIXES = ("lightning_rec.", "torch.nn.")
_REGISTERED: dict[str, type] = {}


class UntrustedClassError(ValueError):
    """A config names a class outside the allowlist."""


def register_trusted_class(cls: type) -> type:
    """Allow ``cls`` (your own block, say) in downloaded configs. Usable as a class decorator."""
    if not inspect.isclass(cls):
        raise TypeError(f"register_trusted_class expects a class, got {cls!r}")
    _REGISTERED[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def class_path_of(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _is_trusted_name(name: str) -> bool:
    return name in _REGISTERED or name.startswith(_TRUSTED_PREFIXES)


def resolve_trusted_class(class_path: str) -> type:
    """Import the class named ``class_path`` if, and only if, it is on the allowlist.

    The name is checked before anything is imported, and the object found must be a class that is
    *defined* under an allowed prefix (so ``lightning_rec.some_module.os`` does not pass).
    """
    if not isinstance(class_path, str) or "." not in class_path:
        raise UntrustedClassError(f"class_path must be a dotted 'module.Class' string, got {class_path!r}")
    if class_path in _REGISTERED:
        return _REGISTERED[class_path]
    allowed = ", ".join(f"{p}*" for p in _TRUSTED_PREFIXES)
    if not _is_trusted_name(class_path):
        raise UntrustedClassError(
            f"refusing to instantiate {class_path!r}: only classes under {allowed} or registered with "
            "lightning_rec.hub.register_trusted_class may be built from a config"
        )
    module_name, _, attribute = class_path.rpartition(".")
    if attribute.startswith("_"):
        raise UntrustedClassError(f"refusing to instantiate private name {class_path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise UntrustedClassError(
            f"cannot import module {module_name!r} named by {class_path!r}: {error}"
        ) from error
    found = getattr(module, attribute, None)
    if not inspect.isclass(found) or not _is_trusted_name(class_path_of(found)):
        raise UntrustedClassError(
            f"refusing {class_path!r}: it is not a class defined under {allowed} (found {found!r})"
        )
    return found


def _is_tree(value: Any) -> bool:
    return isinstance(value, dict) and "class_path" in value


def instantiate_tree(tree: dict[str, Any]) -> Any:
    """Build the object a ``class_path`` / ``init_args`` tree describes, checking every class first.

    Every ``class_path`` in the tree is checked against the allowlist before anything is built, so a
    hostile leaf stops the whole load with nothing executed.
    """
    _check_all(tree)
    return _build(tree)


def _check_all(value: Any) -> None:
    if _is_tree(value):
        resolve_trusted_class(value["class_path"])
        unexpected = set(value) - {"class_path", "init_args"}
        if unexpected:
            raise ValueError(
                f"config node for {value['class_path']!r} has unexpected keys {sorted(unexpected)}"
            )
        init_args = value.get("init_args", {})
        if not isinstance(init_args, dict):
            raise ValueError(
                f"init_args of {value['class_path']!r} must be an object, got {type(init_args).__name__}"
            )
        for item in init_args.values():
            _check_all(item)
    elif isinstance(value, list):
        for item in value:
            _check_all(item)
    elif isinstance(value, dict):
        for item in value.values():
            _check_all(item)


def _build(value: Any) -> Any:
    if _is_tree(value):
        cls = resolve_trusted_class(value["class_path"])
        return cls(**{name: _build(item) for name, item in value.get("init_args", {}).items()})
    if isinstance(value, list):
        return [_build(item) for item in value]
    if isinstance(value, dict):
        return {key: _build(item) for key, item in value.items()}
    return value


def encode_init_value(name: str, value: Any) -> Any:
    """JSON form of one constructor argument; nested modules become trees (see ``HubMixin``)."""
    from lightning_rec.hub.mixin import HubMixin  # the mixin imports this module

    if isinstance(value, HubMixin):
        return value.config_tree()
    if isinstance(value, nn.Module):
        raise TypeError(
            f"argument {name!r} is a {type(value).__name__}, which does not record its constructor "
            "arguments; inject a lightning_rec block, or subclass lightning_rec.hub.HubMixin in your block"
        )
    if isinstance(value, (list, tuple)):
        return [encode_init_value(name, item) for item in value]
    if isinstance(value, dict):
        return {str(key): encode_init_value(name, item) for key, item in value.items()}
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"argument {name!r} of type {type(value).__name__} cannot be written to config.json")
