"""``CatalogueCorpusDataModule``: packed token blocks of the synthetic catalogue's text corpus.

The corpus and the split are described in :mod:`lightning_rec.data.catalogue_corpus`. The BPE
tokenizer is trained on the training documents only, then every split is tokenized and packed into
blocks of ``block_size`` tokens. Tokenizer and blocks are cached on disk under a key of every option,
so a second run starts in seconds.
"""

from __future__ import annotations

import json
import logging
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from lightning_rec.atomic import atomic_directory
from lightning_rec.data.catalogue_corpus import (
    CausalLMBatch,
    collate_blocks,
    pack_token_blocks,
    render_catalogue_corpus,
    train_bpe_tokenizer,
)
from lightning_rec.data.synthetic import SyntheticCatalogue
from lightning_rec.data.text_files import default_cache_dir, fingerprint_files

__all__ = ["CatalogueCorpusDataModule"]

log = logging.getLogger(__name__)
_CACHE_FORMAT = 2
_SPLITS = ("train", "valid", "test")


class CatalogueCorpusDataModule(L.LightningDataModule):
    """Next-token blocks of the catalogue corpus, with the BPE tokenizer trained on it.

    Args:
        num_users, num_items, num_categories, mean_length, catalogue_seed: the
            :class:`~lightning_rec.data.SyntheticCatalogue` (``catalogue_seed`` is its ``seed``).
        max_history: titles per history document.
        heldout_fraction: share of users in validation, and again in test.
        vocab_size: the BPE vocabulary's upper bound (training stops earlier when every word of the
            corpus is one token).
        block_size: tokens per training block (the model's context).
        batch_size, eval_batch_size: blocks per training / evaluation batch.
        num_workers: DataLoader worker processes.
        cache_dir: where the tokenizer and blocks are cached (default
            :func:`~lightning_rec.data.default_cache_dir`); ``""`` disables caching.
        seed: seed of the user split.
    """

    def __init__(
        self,
        num_users: int = 2000,
        num_items: int = 1000,
        num_categories: int = 20,
        mean_length: float = 25.0,
        catalogue_seed: int = 0,
        max_history: int = 10,
        heldout_fraction: float = 0.1,
        vocab_size: int = 1024,
        block_size: int = 128,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.catalogue = SyntheticCatalogue(
            num_users=num_users,
            num_items=num_items,
            num_categories=num_categories,
            mean_length=mean_length,
            seed=catalogue_seed,
        )
        self.max_history, self.heldout_fraction, self.seed = max_history, heldout_fraction, seed
        self.vocab_size, self.block_size = vocab_size, block_size
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.cache_dir: Path | None = None if cache_dir == "" else Path(cache_dir or default_cache_dir())
        self._tokenizer = None
        self._blocks: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ data
    def _key(self) -> str:
        options = {
            "catalogue": self.catalogue.config(),
            "max_history": self.max_history,
            "heldout_fraction": self.heldout_fraction,
            "vocab_size": self.vocab_size,
            "block_size": self.block_size,
            "seed": self.seed,
            "format": _CACHE_FORMAT,
        }
        return fingerprint_files([], options)

    def _build(self, directory: Path | None) -> None:
        corpus = render_catalogue_corpus(self.catalogue, self.max_history, self.heldout_fraction, self.seed)
        tokenizer = train_bpe_tokenizer(corpus.train, self.vocab_size)
        blocks = {
            split: pack_token_blocks(
                tokenizer(getattr(corpus, split))["input_ids"], tokenizer.eos_token_id, self.block_size
            )
            for split in _SPLITS
        }
        if directory is not None:
            with atomic_directory(directory, lambda done: (done / "blocks.npz").is_file()) as staging:
                tokenizer.save_pretrained(staging / "tokenizer")
                np.savez(staging / "blocks.npz", **blocks)
                (staging / "corpus_sample.json").write_text(
                    json.dumps({split: getattr(corpus, split)[:3] for split in _SPLITS}, indent=2)
                )
            log.info("Cached the catalogue corpus in %s", directory)
        self._tokenizer, self._blocks = tokenizer, blocks

    def _load(self) -> None:
        directory = None if self.cache_dir is None else self.cache_dir / "catalogue_lm" / self._key()
        if directory is None or not (directory / "blocks.npz").is_file():
            self._build(directory)
            return
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
        with np.load(directory / "blocks.npz", allow_pickle=False) as arrays:
            self._blocks = {split: arrays[split] for split in _SPLITS}

    @property
    def tokenizer(self):
        """The ``transformers`` fast tokenizer trained on the training documents."""
        if self._tokenizer is None:
            self._load()
        return self._tokenizer

    @property
    def blocks(self) -> dict[str, np.ndarray]:
        """``{"train" | "valid" | "test": (blocks, block_size)}`` token ids, ``-1`` on padding."""
        if self._blocks is None:
            self._load()
        return self._blocks

    def token_counts(self) -> dict[str, int]:
        """Real tokens in each split (padding excluded)."""
        return {split: int((blocks >= 0).sum()) for split, blocks in self.blocks.items()}

    def prepare_data(self) -> None:
        self.blocks  # noqa: B018  (renders, trains the tokenizer and caches once, in the main process)

    def setup(self, stage: str) -> None:
        log.info("Catalogue corpus: %s tokens, vocabulary %d", self.token_counts(), len(self.tokenizer))

    # ----------------------------------------------------------- dataloaders
    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            torch.from_numpy(self.blocks[split]),
            batch_size=batch_size,
            shuffle=shuffle,
            collate_fn=partial(collate_blocks, pad_token_id=self.tokenizer.pad_token_id),
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader[CausalLMBatch]:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[CausalLMBatch]:
        return self._loader("valid", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader[CausalLMBatch]:
        return self._loader("test", self.eval_batch_size, shuffle=False)
