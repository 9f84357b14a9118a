"""``TextTaskDataModule``: text classification or instruction tuning over JSONL / CSV / TSV files.

Records are read with :func:`lightning_rec.data.read_text_records`, so a malformed file fails with
its path, line and field. Batches hold raw strings: the model owns its tokenizer (it knows the base
checkpoint), so one data config serves every base model.

- ``task="classification"``: records ``(text, label)``; labels are mapped to ids ``0..num_labels-1``
  in sorted order of the label strings of all splits, and batches are :class:`ClassificationBatch`.
- ``task="instruction"``: records ``(prompt, response)``; batches are :class:`InstructionBatch`.

With no ``train_file``, the data is the synthetic catalogue's item-title -> category task
(:class:`~lightning_rec.data.SyntheticTitleCategories`, a JSONL file with fields ``text`` and
``label``; for instruction tuning name them with ``fields: [text, label]``). Without ``val_file`` /
``test_file``, seeded shares of the training records are held out instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from lightning_rec.data.text_records import SyntheticTitleCategories, read_text_records

__all__ = ["ClassificationBatch", "InstructionBatch", "TextTaskDataModule"]

TextTask = Literal["classification", "instruction"]
_DEFAULT_FIELDS = {"classification": ("text", "label"), "instruction": ("prompt", "response")}


@dataclass
class ClassificationBatch:
    """``texts``: ``b`` strings; ``labels (b)``: class ids."""

    texts: list[str]
    labels: Tensor

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class InstructionBatch:
    """``prompts`` and ``responses``: ``b`` strings each; the loss is on the responses only."""

    prompts: list[str]
    responses: list[str]

    def __len__(self) -> int:
        return len(self.prompts)


class TextTaskDataModule(L.LightningDataModule):
    """Train / validation / test splits of a text task, as batches of strings.

    Args:
        task: ``"classification"`` (text, label) or ``"instruction"`` (prompt, response).
        train_file, val_file, test_file: ``.jsonl`` / ``.json`` / ``.csv`` / ``.tsv`` (optionally ``.gz``).
            With no ``train_file`` the records come from ``source``.
        fields: the two field (column) names to read; default ``[text, label]`` for classification and
            ``[prompt, response]`` for instruction tuning.
        source: the synthetic title -> category task used without ``train_file`` (default: 3,000 items,
            50 categories, seed 0).
        val_fraction, test_fraction: shares of the training records held out when ``val_file`` /
            ``test_file`` is not given (seeded by ``seed``).
        batch_size, eval_batch_size: records per training / evaluation batch.
        num_workers: DataLoader worker processes.
        seed: seed of the hold-out split.
    """

    def __init__(
        self,
        task: TextTask = "classification",
        train_file: str | None = None,
        val_file: str | None = None,
        test_file: str | None = None,
        fields: tuple[str, str] | None = None,
        source: SyntheticTitleCategories | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        batch_size: int = 32,
        eval_batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if task not in _DEFAULT_FIELDS:
            raise ValueError(f"task must be 'classification' or 'instruction', got {task!r}")
        if fields is not None and len(fields) != 2:
            raise ValueError(f"fields must name two fields (input, target), got {fields!r}")
        if train_file is None and source is None:
            source = SyntheticTitleCategories()
        held_out = (val_fraction if val_file is None else 0.0) + (test_fraction if test_file is None else 0.0)
        if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and held_out < 1.0):
            raise ValueError(
                f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must leave training data"
            )
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError(f"batch sizes must be >= 1, got {batch_size} and {eval_batch_size}")
        self.save_hyperparameters(ignore=["source"])
        self.task = task
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        self.fields = tuple(fields) if fields is not None else _DEFAULT_FIELDS[task]
        self.source = source
        self.fractions = {"val": val_fraction, "test": test_fraction}
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._splits: dict[str, list[tuple[str, str]]] | None = None

    # ------------------------------------------------------------------ data
    @property
    def splits(self) -> dict[str, list[tuple[str, str]]]:
        """``{"train": [(input, target), ...], "val": [...], "test": [...]}``, read on first access."""
        if self._splits is None:
            self._splits = self._read_splits()
        return self._splits

    def _read_splits(self) -> dict[str, list[tuple[str, str]]]:
        train_path = self.files["train"] or self.source.path()
        records = list(read_text_records(train_path, fields=self.fields))
        order = torch.randperm(len(records), generator=torch.Generator().manual_seed(self.seed)).tolist()
        splits: dict[str, list[tuple[str, str]]] = {}
        start = 0
        for name in ("val", "test"):
            if self.files[name] is not None:
                splits[name] = list(read_text_records(self.files[name], fields=self.fields))
            else:
                count = round(self.fractions[name] * len(records))
                splits[name] = [records[index] for index in order[start : start + count]]
                start += count
        splits["train"] = [records[index] for index in order[start:]]
        if not splits["train"]:
            raise ValueError(f"{train_path}: no training records left after holding out validation and test")
        return splits

    @cached_property
    def label_ids(self) -> dict[str, int]:
        """Label string -> class id, in sorted order of the labels of all splits (classification only)."""
        if self.task != "classification":
            raise AttributeError("labels exist for task='classification' only")
        labels = sorted({label for split in self.splits.values() for _, label in split})
        return {label: index for index, label in enumerate(labels)}

    @property
    def label_names(self) -> list[str]:
        """The labels by class id: id ``j`` is ``label_names[j]``."""
        return list(self.label_ids)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def dataset_name(self) -> str:
        """A short name for model cards: the training file's name, or the synthetic task's."""
        return Path(self.files["train"]).name if self.files["train"] else type(self.source).__name__

    def vocab(self) -> dict[str, Any]:
        """What a trained model needs to map outputs back to strings (``vocab.json`` on the Hub)."""
        return {"labels": self.label_names} if self.task == "classification" else {}

    # ----------------------------------------------------------- loaders
    def _collate(self, records: list[tuple[str, str]]) -> ClassificationBatch | InstructionBatch:
        inputs = [text for text, _ in records]
        if self.task == "instruction":
            return InstructionBatch(prompts=inputs, responses=[response for _, response in records])
        labels = torch.tensor([self.label_ids[label] for _, label in records])
        return ClassificationBatch(texts=inputs, labels=labels)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            self.splits[split],
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=self._collate,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)
