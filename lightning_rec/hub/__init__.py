"""Hugging Face Hub integration (layer 1): the mixin every block and module inherits, PEFT's layout."""

from lightning_rec.hub.config_tree import UntrustedClassError, instantiate_tree, register_trusted_class
from lightning_rec.hub.mixin import CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE, HubMixin, check_vocab, read_json
from lightning_rec.hub.peft_layout import (
    ADAPTER_CONFIG_FILE,
    ADAPTER_WEIGHTS_FILE,
    PEFT_KEY_PREFIX,
    check_adapter_keys,
    read_peft_adapter,
    read_peft_adapter_config,
    write_peft_adapter,
)
from lightning_rec.hub.pretrained import MINILM_HUB_ID, push_saved_folder, resolve_pretrained

__all__ = [
    "ADAPTER_CONFIG_FILE",
    "ADAPTER_WEIGHTS_FILE",
    "CONFIG_FILE",
    "MINILM_HUB_ID",
    "PEFT_KEY_PREFIX",
    "VOCAB_FILE",
    "WEIGHTS_FILE",
    "HubMixin",
    "UntrustedClassError",
    "check_adapter_keys",
    "check_vocab",
    "instantiate_tree",
    "push_saved_folder",
    "read_json",
    "read_peft_adapter",
    "read_peft_adapter_config",
    "register_trusted_class",
    "resolve_pretrained",
    "write_peft_adapter",
]
