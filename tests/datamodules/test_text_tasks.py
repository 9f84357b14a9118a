"""TextTaskDataModule: JSONL / CSV text tasks, seeded hold-out splits, label ids, batches of strings."""

import csv
import json

import pytest
import torch

from lightning_rec.data import DataFormatError, SyntheticTitleCategories, read_text_records
from lightning_rec.datamodules import ClassificationBatch, InstructionBatch, TextTaskDataModule

RECORDS = [(f"title number {i}", ["Lamp", "Mug", "Desk"][i % 3]) for i in range(40)]


def _write(tmp_path, name, rows, fields=("text", "label")):
    path = tmp_path / name
    if name.endswith(".csv"):
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(fields)
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(dict(zip(fields, row, strict=True))) + "\n" for row in rows))
    return str(path)


def test_jsonl_and_csv_give_the_same_disjoint_seeded_splits(tmp_path):
    modules = [
        TextTaskDataModule(
            train_file=_write(tmp_path, name, RECORDS), val_fraction=0.2, test_fraction=0.25, seed=3
        )
        for name in ("t.jsonl", "t.csv")
    ]
    splits = [module.splits for module in modules]
    assert splits[0] == splits[1]
    sizes = {name: len(records) for name, records in splits[0].items()}
    assert sizes == {"val": 8, "test": 10, "train": 22}
    assert sorted(r for split in splits[0].values() for r in split) == sorted(RECORDS)  # a partition
    again = TextTaskDataModule(
        train_file=_write(tmp_path, "t.jsonl", RECORDS), val_fraction=0.2, test_fraction=0.25, seed=4
    )
    assert again.splits["test"] != splits[0]["test"]  # the seed chooses the hold-out


def test_labels_are_sorted_ids_and_batches_carry_them(tmp_path):
    module = TextTaskDataModule(
        train_file=_write(tmp_path, "t.jsonl", RECORDS), batch_size=8, eval_batch_size=16
    )
    assert module.label_names == ["Desk", "Lamp", "Mug"] and module.num_labels == 3
    assert module.vocab() == {"labels": ["Desk", "Lamp", "Mug"]}
    for loader, size in ((module.train_dataloader(), 8), (module.test_dataloader(), 4)):
        batch = next(iter(loader))
        assert (
            isinstance(batch, ClassificationBatch) and len(batch) == size and batch.labels.dtype == torch.long
        )
        for text, label in zip(batch.texts, batch.labels.tolist(), strict=True):
            assert dict(RECORDS)[text] == module.label_names[label]
    seen = [text for batch in module.train_dataloader() for text in batch.texts]
    assert sorted(seen) == sorted(text for text, _ in module.splits["train"])  # every record once per epoch


def test_given_validation_and_test_files_are_used_as_they_are(tmp_path):
    module = TextTaskDataModule(
        train_file=_write(tmp_path, "train.jsonl", RECORDS[:30]),
        val_file=_write(tmp_path, "val.csv", RECORDS[30:34]),
        test_file=_write(tmp_path, "test.jsonl", [*RECORDS[34:], ("odd one", "Vase")]),
    )
    assert sorted(module.splits["train"]) == sorted(RECORDS[:30])
    assert module.splits["val"] == RECORDS[30:34]
    assert module.splits["test"] == [*RECORDS[34:], ("odd one", "Vase")]
    assert module.label_names == ["Desk", "Lamp", "Mug", "Vase"]  # labels of every split
    assert module.dataset_name == "train.jsonl"


def test_instruction_task_reads_prompts_and_responses(tmp_path):
    rows = [(f"Question {i}?", f"Answer {i}.") for i in range(10)]
    path = _write(tmp_path, "chat.jsonl", rows, fields=("prompt", "response"))
    module = TextTaskDataModule(
        task="instruction", train_file=path, val_fraction=0.0, test_fraction=0.2, batch_size=4
    )
    batch = next(iter(module.train_dataloader()))
    assert isinstance(batch, InstructionBatch) and len(batch) == 4
    assert all(
        dict(rows)[prompt] == response
        for prompt, response in zip(batch.prompts, batch.responses, strict=True)
    )
    assert module.vocab() == {}
    with pytest.raises(AttributeError, match="classification"):
        _ = module.label_names


def test_synthetic_default_is_the_title_category_task(data_cache):
    source = SyntheticTitleCategories(num_items=120, num_categories=7, seed=0, cache_dir=data_cache)
    module = TextTaskDataModule(source=source)
    assert module.num_labels == 7 and module.dataset_name == "SyntheticTitleCategories"
    assert sorted(r for split in module.splits.values() for r in split) == sorted(
        read_text_records(source.path())
    )
    # The same file as an instruction task: title -> category name.
    instruction = TextTaskDataModule(task="instruction", source=source, fields=("text", "label"))
    assert instruction.splits == module.splits


def test_bad_files_and_arguments_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok", "label": "A"}\n{"text": "no label"}\n')
    with pytest.raises(DataFormatError, match="label") as raised:
        _ = TextTaskDataModule(train_file=str(bad)).splits
    assert raised.value.line == 2 and str(bad) in str(raised.value)
    with pytest.raises(ValueError, match="task"):
        TextTaskDataModule(task="regression")
    with pytest.raises(ValueError, match="val_fraction"):
        TextTaskDataModule(train_file=str(bad), val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(ValueError, match="two fields"):
        TextTaskDataModule(train_file=str(bad), fields=("text",))
