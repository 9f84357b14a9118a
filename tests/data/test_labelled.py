"""Tests for lightning_rec/data/labelled.py: every labelled source against its raw files."""

import json

import numpy as np
import pytest
import torch

from lightning_rec.data import (
    DataFormatError,
    DigitsExamples,
    DiskDatasetExamples,
    ImageFolderExamples,
    SyntheticTitleExamples,
    TextRecordExamples,
    read_text_records,
)


def test_digits_are_sklearns_images_scaled_to_unit_range():
    from sklearn.datasets import load_digits

    examples = DigitsExamples().load()
    raw = load_digits()
    assert examples.inputs.shape == (1797, 1, 8, 8)
    torch.testing.assert_close(examples.inputs[:, 0] * 16, torch.from_numpy(raw.images).float())
    assert examples.labels.tolist() == raw.target.tolist()
    assert examples.class_names == [str(d) for d in range(10)]
    assert examples.inputs.min() >= 0 and examples.inputs.max() <= 1


def write_pgm(path, pixels: np.ndarray, comment: bool = False) -> None:
    header = (
        b"P5\n"
        + (b"# a comment\n" if comment else b"")
        + f"{pixels.shape[1]} {pixels.shape[0]}\n255\n".encode()
    )
    path.write_bytes(header + pixels.astype(np.uint8).tobytes())


def test_image_folder_reads_npy_and_pgm_with_sorted_class_names(tmp_path):
    rng = np.random.default_rng(0)
    expected = {}
    for name in ("zebra", "ant"):
        (tmp_path / name / "nested").mkdir(parents=True)
        for index in range(3):
            pixels = rng.integers(0, 256, size=(4, 6)).astype(np.uint8)
            if index == 2:
                write_pgm(tmp_path / name / "nested" / f"{index}.pgm", pixels, comment=True)
            else:
                np.save(tmp_path / name / f"{index}.npy", pixels)
            expected.setdefault(name, []).append(pixels)
        (tmp_path / name / "notes.txt").write_text("not an image")
    examples = ImageFolderExamples(str(tmp_path)).load()
    assert examples.class_names == ["ant", "zebra"]
    assert examples.inputs.shape == (6, 1, 4, 6)
    assert examples.labels.tolist() == [0, 0, 0, 1, 1, 1]
    # Files in sorted path order: 0.npy, 1.npy, nested/2.pgm.
    for row, (label, index) in enumerate(
        [("ant", 0), ("ant", 1), ("ant", 2), ("zebra", 0), ("zebra", 1), ("zebra", 2)]
    ):
        torch.testing.assert_close(
            examples.inputs[row, 0] * 255, torch.from_numpy(expected[label][index]).float()
        )


def test_image_folder_resizes_or_names_the_file_of_another_size(tmp_path):
    for name, shape in (("a", (4, 4)), ("b", (6, 6))):
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "x.npy", np.full(shape, 0.5, dtype=np.float32))
    with pytest.raises(DataFormatError, match=r"b/x\.npy.*image_size"):
        ImageFolderExamples(str(tmp_path)).load()
    resized = ImageFolderExamples(str(tmp_path), image_size=5).load()
    assert resized.inputs.shape == (2, 1, 5, 5)
    torch.testing.assert_close(resized.inputs, torch.full((2, 1, 5, 5), 0.5))


def test_disk_dataset_with_class_label_and_with_integer_images(tmp_path):
    import datasets

    text = datasets.Dataset.from_dict(
        {"sentence": ["good", "bad", "fine"], "label": [1, 0, 1]},
        features=datasets.Features(
            {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
        ),
    )
    datasets.DatasetDict({"train": text}).save_to_disk(str(tmp_path / "text"))
    examples = DiskDatasetExamples(str(tmp_path / "text"), input_field="sentence").load()
    assert examples.inputs == ["good", "bad", "fine"]
    assert examples.labels.tolist() == [1, 0, 1] and examples.class_names == ["neg", "pos"]
    with pytest.raises(ValueError, match="no split 'test'"):
        DiskDatasetExamples(str(tmp_path / "text"), input_field="sentence", split="test").load()
    with pytest.raises(DataFormatError, match=r"'text'.*missing column"):
        DiskDatasetExamples(str(tmp_path / "text")).load()

    images = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2) * 20
    datasets.Dataset.from_dict({"image": images.tolist(), "label": [10, 2, 10]}).save_to_disk(
        str(tmp_path / "images")
    )
    loaded = DiskDatasetExamples(str(tmp_path / "images"), input_field="image").load()
    assert loaded.class_names == ["2", "10"] and loaded.labels.tolist() == [1, 0, 1]
    torch.testing.assert_close(loaded.inputs[:, 0], torch.from_numpy(images).float())  # ints, not uint8: kept


def test_text_records_and_the_synthetic_title_task(tmp_path, data_cache):
    path = tmp_path / "reviews.csv"
    path.write_text("body,topic\nnice lamp,home\ngreat novel,books\nsoft scarf,home\n")
    examples = TextRecordExamples(str(path), text_field="body", label_field="topic").load()
    assert examples.inputs == ["nice lamp", "great novel", "soft scarf"]
    assert examples.class_names == ["books", "home"] and examples.labels.tolist() == [1, 0, 1]
    assert examples.select([2, 0]) == ["soft scarf", "nice lamp"]

    titles = SyntheticTitleExamples(num_items=120, num_categories=12, seed=3, cache_dir=data_cache).load()
    records = list(
        read_text_records(titles_path := SyntheticTitleExamples(120, 12, 3, data_cache).task.path())
    )
    assert titles.inputs == [text for text, _ in records]
    assert [titles.class_names[label] for label in titles.labels.tolist()] == [label for _, label in records]
    assert len(titles.class_names) == 12 and titles_path.suffix == ".jsonl"
    json.loads(titles_path.read_text().splitlines()[0])  # the reader's own format


def test_mismatched_labels_are_refused():
    from lightning_rec.data import LabelledExamples

    with pytest.raises(ValueError, match="labels must lie in"):
        LabelledExamples(["a", "b"], torch.tensor([0, 2]), ["x", "y"])
    with pytest.raises(ValueError, match="2 inputs"):
        LabelledExamples(["a", "b"], torch.tensor([0]), ["x"])
