"""Item content embeddings from item text through a sentence encoder, cached on disk by their inputs.

Semantic-ID tokenizers (GPR, arXiv 2511.10138, Sec. 3.1; TIGER, arXiv 2305.05065) quantise a content
embedding of each item. Here it is the sentence-transformers recipe over the item's text (mean of the
last hidden states over the tokens, L2-normalised) with all-MiniLM-L6-v2 by default, resolved
offline by :func:`~lightning_rec.hub.resolve_pretrained`.

Encoding a catalogue takes minutes on a CPU, so the result is a safetensors file under
``<cache_dir>/item_embeddings/<key>.safetensors`` whose key hashes the encoder name, the texts in
order and the options: the second run reads it in milliseconds and a changed text is a new file.
The file is written atomically and never unpickled.

Axes: i items (texts), n tokens, e embedding size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from lightning_rec.atomic import atomic_path
from lightning_rec.blocks.pooling import mean_pooled_sentence_vectors
from lightning_rec.data.text_files import default_cache_dir
from lightning_rec.hub.pretrained import MINILM_HUB_ID, resolve_pretrained

__all__ = ["item_text_embeddings"]

_FORMAT = "1"


def item_text_embeddings(
    texts: Sequence[str],
    model_name: str = MINILM_HUB_ID,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    max_length: int = 64,
) -> Tensor:
    """Texts `i` -> L2-normalised embeddings `i e` (float32, CPU), computed once per inputs.

    Args:
        texts: one text per item (e.g. its title), in the order of the rows returned.
        model_name: a Hugging Face encoder id or folder (``AutoModel``, safetensors only).
        cache_dir: where the cache lives (default ``<default_cache_dir()>/item_embeddings``); the
            empty string disables the cache.
        batch_size: texts per encoder call.
        max_length: tokens per text (longer texts are truncated).
    """
    if batch_size < 1 or max_length < 1:
        raise ValueError(f"batch_size and max_length must be >= 1, got {batch_size} and {max_length}")
    options = {"model": model_name, "max_length": max_length, "format": _FORMAT}
    digest = hashlib.sha256(json.dumps({"options": options, "texts": list(texts)}).encode()).hexdigest()[:24]
    if cache_dir == "":
        return _encode(texts, model_name, batch_size, max_length)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "item_embeddings"
    path = directory / f"{digest}.safetensors"
    if path.is_file():
        with safe_open(str(path), framework="pt") as handle:
            embeddings = handle.get_tensor("embeddings")
        if embeddings.dim() != 2 or embeddings.shape[0] != len(texts):
            raise ValueError(
                f"{path}: tensor 'embeddings' has shape {tuple(embeddings.shape)}, expected ({len(texts)}, e)"
            )
        return embeddings
    embeddings = _encode(texts, model_name, batch_size, max_length)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(
            {"embeddings": embeddings.contiguous()},
            str(tmp),
            metadata={k: str(v) for k, v in options.items()},
        )
    return embeddings


@torch.no_grad()
def _encode(texts: Sequence[str], model_name: str, batch_size: int, max_length: int) -> Tensor:
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as error:
        raise ImportError(
            "item text embeddings need transformers: pip install 'lightning-rec[llm]'"
        ) from error
    path = resolve_pretrained(model_name)
    # Safetensors only and never trust_remote_code: a Hub id names weights, not code to run.
    encoder = AutoModel.from_pretrained(path, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    chunks = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=max_length,
            return_tensors="pt",
        )
        hidden = encoder(**tokens).last_hidden_state  # (i n e)
        chunks.append(mean_pooled_sentence_vectors(hidden, tokens["attention_mask"]))
    if not chunks:
        return torch.empty(0, int(encoder.config.hidden_size))
    return torch.cat(chunks)
