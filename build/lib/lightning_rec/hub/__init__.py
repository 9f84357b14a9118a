"""Hugging Face Hub integration (layer 1): the mixin every block and module inherits."""

from lightning_rec.hub.config_tree import UntrustedClassError, instantiate_tree, register_trusted_class
from lightning_rec.hub.mixin import CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE, HubMixin

__all__ = [
    "CONFIG_FILE",
    "VOCAB_FILE",
    "WEIGHTS_FILE",
    "HubMixin",
    "UntrustedClassError",
    "instantiate_tree",
    "register_trusted_class",
]
