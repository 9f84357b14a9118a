"""The ``class_path`` / ``init_args`` tree that rebuilds a model, and its safe instantiation.

``config.json`` on the Hub holds the same nested tree LightningCLI saves::

    {"class_path": "lightning_rec.modules.sasrec.SASRec",
     "init_args": {"encoder": {"class_path": "lightning_rec.blocks.sequence.SASRec",
                               "init_args": {"num_items": 1682, "hidden_size": 64}},
                   "learning_rate": 0.001}}

A downloaded tree names code to run, so :func:`instantiate_tree` builds only ``nn.Module`` classes
found in three tables, by name, with nothing imported:

- :class:`~lightning_rec.hub.HubMixin` subclasses (the blocks and modules; a class joins the table
  when it is defined, see :data:`HUB_CLASSES`);
- the common ``torch.nn`` layers of :data:`TORCH_LAYERS`, written ``torch.nn.Linear`` and so on;
- the classes a user registers with :func:`register_trusted_class`.

A reader, datamodule, cache or callback is in none of them (none is an ``nn.Module``): those touch
files and the network when built. The root's class is checked against the class the caller expects,
and every node's class and argument names are checked, before anything is built.

The same tables save: a ``HubMixin`` records its constructor arguments when created, and a
``torch.nn`` layer or registered class has its arguments read back from its attributes.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

__all__ = [
    "HUB_CLASSES",
    "TORCH_LAYERS",
    "UntrustedClassError",
    "class_path_of",
    "encode_init_value",
    "instantiate_tree",
    "register_trusted_class",
    "trusted_class",
]

#: every ``HubMixin`` subclass by class path, filled by ``HubMixin.__init_subclass__``.
HUB_CLASSES: dict[str, type[nn.Module]] = {}


class UntrustedClassError(ValueError):
    """A config names a class outside the allowlist, or not the class the caller expects."""


@dataclass(frozen=True)
class TrustedLayer:
    """A buildable ``nn.Module`` that does not record its own constructor arguments.

    ``init_args(module)`` reads them back from the module's attributes (JSON values or modules);
    ``build(**init_args)`` makes a new module from them (by default ``cls(**init_args)``).
    """

    cls: type[nn.Module]
    init_args: Callable[[nn.Module], dict[str, Any]]
    build: Callable[..., nn.Module] | None = None

    @property
    def constructor(self) -> Callable[..., nn.Module]:
        """What ``init_args`` are passed to, as keywords."""
        return self.build if self.build is not None else self.cls


def _inplace(module: nn.Module) -> dict[str, Any]:
    return {"inplace": module.inplace}


def _no_args(module: nn.Module) -> dict[str, Any]:
    return {}


def _sequential_args(module: nn.Module) -> dict[str, Any]:
    names = list(module._modules)
    if names != [str(position) for position in range(len(names))]:
        # Sequential(OrderedDict(...)) names its children; Sequential(*modules) numbers them, and the
        # state-dict keys follow the names, so only the numbered form is rebuilt exactly.
        raise TypeError(f"an nn.Sequential with named children {names} cannot be saved; number them")
    return {"modules": list(module)}


def _sequential(modules: list[nn.Module]) -> nn.Sequential:
    return nn.Sequential(*modules)


def _layer_norm_args(module: nn.Module) -> dict[str, Any]:
    return {
        "normalized_shape": list(module.normalized_shape),
        "eps": module.eps,
        "elementwise_affine": module.elementwise_affine,
        "bias": module.bias is not None or not module.elementwise_affine,
    }


#: the ``torch.nn`` layers a config may name, by their public name (``torch.nn.Linear``).
TORCH_LAYERS: dict[str, TrustedLayer] = {
    f"torch.nn.{layer.cls.__name__}": layer
    for layer in (
        TrustedLayer(
            nn.Linear,
            lambda m: {
                "in_features": m.in_features,
                "out_features": m.out_features,
                "bias": m.bias is not None,
            },
        ),
        TrustedLayer(
            nn.Embedding,
            lambda m: {
                "num_embeddings": m.num_embeddings,
                "embedding_dim": m.embedding_dim,
                "padding_idx": m.padding_idx,
                "max_norm": m.max_norm,
                "norm_type": m.norm_type,
                "scale_grad_by_freq": m.scale_grad_by_freq,
                "sparse": m.sparse,
            },
        ),
        TrustedLayer(nn.LayerNorm, _layer_norm_args),
        TrustedLayer(nn.Dropout, lambda m: {"p": m.p, "inplace": m.inplace}),
        TrustedLayer(nn.Identity, _no_args),
        TrustedLayer(nn.ReLU, _inplace),
        TrustedLayer(nn.SiLU, _inplace),
        TrustedLayer(nn.GELU, lambda m: {"approximate": m.approximate}),
        TrustedLayer(nn.Tanh, _no_args),
        TrustedLayer(nn.Sigmoid, _no_args),
        TrustedLayer(nn.LeakyReLU, lambda m: {"negative_slope": m.negative_slope, "inplace": m.inplace}),
        TrustedLayer(nn.ELU, lambda m: {"alpha": m.alpha, "inplace": m.inplace}),
        TrustedLayer(nn.Softplus, lambda m: {"beta": m.beta, "threshold": m.threshold}),
        TrustedLayer(nn.Sequential, _sequential_args, build=_sequential),
    )
}

_REGISTERED: dict[str, TrustedLayer] = {}


def class_path_of(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_trusted_class(
    cls: type[nn.Module],
    init_args: Callable[[nn.Module], dict[str, Any]] | None = None,
    build: Callable[..., nn.Module] | None = None,
) -> type[nn.Module]:
    """Allow your own ``nn.Module`` class in saved and downloaded configs.

    ``init_args(module)`` returns the constructor arguments of an instance, read from its
    attributes (JSON values, or modules that are themselves saveable), so a block holding one saves;
    building calls ``build(**init_args)`` (default ``cls``), and a downloaded config may name only
    ``build``'s arguments. Give a ``build`` that takes just what ``init_args`` writes when the class
    has constructor arguments that read files or download (weights to load, a cache folder): a
    downloaded config then cannot reach them. A :class:`~lightning_rec.hub.HubMixin` subclass records
    its arguments itself and is allowed when defined: it needs no registration.

    Example::

        register_trusted_class(MyGRU, lambda m: {"num_items": m.num_items, "hidden_size": m.hidden_size})
    """
    if not (inspect.isclass(cls) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_trusted_class expects an nn.Module subclass, got {cls!r}")
    if init_args is None:
        if class_path_of(cls) in HUB_CLASSES:
            return cls
        raise TypeError(
            f"register_trusted_class({cls.__name__}) needs init_args: a function reading the constructor "
            "arguments back from an instance (or make the class a lightning_rec.hub.HubMixin subclass)"
        )
    _REGISTERED[class_path_of(cls)] = TrustedLayer(cls, init_args, build)
    return cls


def _allowed() -> str:
    return (
        "lightning_rec.hub.HubMixin subclasses, the torch.nn layers "
        f"{sorted(name.removeprefix('torch.nn.') for name in TORCH_LAYERS)}, "
        "and classes registered with lightning_rec.hub.register_trusted_class"
    )


def trusted_class(class_path: Any, expected: type | tuple[type, ...] = nn.Module) -> type[nn.Module]:
    """The ``nn.Module`` class named ``class_path`` if it is on the allowlist and a subclass of
    ``expected`` (one of them); ``UntrustedClassError`` otherwise. Looks names up in tables: imports
    nothing."""
    if not isinstance(class_path, str):
        raise UntrustedClassError(f"class_path must be a string, got {type(class_path).__name__}")
    found: type | None = HUB_CLASSES.get(class_path)
    if found is None:
        layer = TORCH_LAYERS.get(class_path) or _REGISTERED.get(class_path)
        found = layer.cls if layer is not None else None
    if found is None:
        raise UntrustedClassError(
            f"refusing to build {class_path!r}: a config may only name {_allowed()} "
            "(a HubMixin subclass must be imported before loading)"
        )
    if not issubclass(found, expected):
        names = " or ".join(
            class_path_of(cls) for cls in (expected if isinstance(expected, tuple) else (expected,))
        )
        raise UntrustedClassError(f"refusing to build {class_path!r}: it is not a {names}")
    return found


def _is_tree(value: Any) -> bool:
    return isinstance(value, dict) and "class_path" in value


def instantiate_tree(tree: Any, expected: type) -> Any:
    """Build the ``expected`` object a ``class_path`` / ``init_args`` tree describes.

    Every node is checked first: its class against the allowlist (the root's also against
    ``expected``), its keys, and its argument names against the constructor's signature, so a hostile
    or malformed node anywhere stops the load with nothing imported or built.
    """
    if not _is_tree(tree):
        raise ValueError(f"a config tree is an object with a 'class_path', got {type(tree).__name__}")
    _check(tree, expected)
    return _build(tree)


def _check(value: Any, expected: type | tuple[type, ...] = nn.Module) -> None:
    if _is_tree(value):
        trusted_class(value["class_path"], expected)
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
        _check_argument_names(value["class_path"], init_args)
        # A module argument must be what the constructor declares (an encoder slot takes an encoder):
        # an allowlisted module in the wrong slot is refused before it is built.
        declared = _declared_module_types(value["class_path"])
        for name, item in init_args.items():
            _check(item, declared.get(name, nn.Module))
    elif isinstance(value, list):
        for item in value:
            _check(item)
    elif isinstance(value, dict):
        for item in value.values():
            _check(item)


def _constructor(class_path: str) -> Callable[..., nn.Module]:
    if class_path in HUB_CLASSES:
        return HUB_CLASSES[class_path]
    return (TORCH_LAYERS.get(class_path) or _REGISTERED[class_path]).constructor


def _declared_module_types(class_path: str) -> dict[str, tuple[type, ...]]:
    """The ``nn.Module`` classes each constructor argument is annotated with (``X | None`` gives X);
    arguments annotated otherwise, or not at all, are absent (any allowlisted module)."""
    constructor = _constructor(class_path)
    try:
        hints = typing.get_type_hints(constructor.__init__ if inspect.isclass(constructor) else constructor)
    except (NameError, TypeError):  # an annotation that only resolves for type checkers
        return {}
    declared = {}
    for name, hint in hints.items():
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        members = typing.get_args(hint) if union else (hint,)
        classes = tuple(m for m in members if inspect.isclass(m) and issubclass(m, nn.Module))
        if classes:
            declared[name] = classes
    return declared


def _check_argument_names(class_path: str, init_args: dict[str, Any]) -> None:
    parameters = inspect.signature(_constructor(class_path)).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = {name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL}
    unknown = sorted(set(init_args) - accepted)
    if unknown:
        raise ValueError(f"{class_path!r} takes no arguments {unknown} (it takes {sorted(accepted)})")


def _build(value: Any) -> Any:
    if _is_tree(value):
        init_args = {name: _build(item) for name, item in value.get("init_args", {}).items()}
        return _constructor(value["class_path"])(**init_args)
    if isinstance(value, list):
        return [_build(item) for item in value]
    if isinstance(value, dict):
        return {key: _build(item) for key, item in value.items()}
    return value


def encode_init_value(name: str, value: Any) -> Any:
    """JSON form of one constructor argument; nested modules become trees (see ``HubMixin``)."""
    if isinstance(value, nn.Module):
        return _module_tree(name, value)
    if isinstance(value, (list, tuple)):
        return [encode_init_value(name, item) for item in value]
    if isinstance(value, dict):
        return {str(key): encode_init_value(name, item) for key, item in value.items()}
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"argument {name!r} of type {type(value).__name__} cannot be written to config.json")


def _module_tree(name: str, module: nn.Module) -> dict[str, Any]:
    config_tree = getattr(module, "config_tree", None)
    if config_tree is not None and class_path_of(type(module)) in HUB_CLASSES:
        return config_tree()
    # Exact types only: a subclass of nn.Linear may take other arguments or hold other weights.
    class_path = f"torch.nn.{type(module).__name__}"
    layer = TORCH_LAYERS.get(class_path)
    if layer is None or layer.cls is not type(module):
        class_path = class_path_of(type(module))
        layer = _REGISTERED.get(class_path)
    if layer is None:
        raise TypeError(
            f"argument {name!r} is a {type(module).__name__}, which does not record its constructor "
            "arguments, so config.json cannot rebuild it. Make its class a lightning_rec.hub.HubMixin "
            "subclass, or register it with lightning_rec.hub.register_trusted_class(cls, init_args); "
            f"the torch.nn layers {sorted(n.removeprefix('torch.nn.') for n in TORCH_LAYERS)} need neither"
        )
    arguments = layer.init_args(module)
    return {
        "class_path": class_path,
        "init_args": {key: encode_init_value(f"{name}.{key}", item) for key, item in arguments.items()},
    }
