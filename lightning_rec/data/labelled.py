"""Labelled-example sources for continual-learning streams (layer 1: no Lightning).

A :class:`LabelledSource` loads a whole labelled dataset as :class:`LabelledExamples`: images
``(n c h w)`` in [0, 1] or texts, integer labels, and the class names. The continual-stream
DataModule turns any of them into a stream, so a new format never touches it.

Sources:

- :class:`DigitsExamples`: scikit-learn's bundled digits (1,797 grey 8x8 images, 10 classes).
- :class:`ImageFolderExamples`: ``root/<class name>/<image>`` (``.npy``, binary PGM/PPM, and PNG or
  JPEG when Pillow is installed).
- :class:`DiskDatasetExamples`: a Hugging Face ``datasets`` folder written by ``save_to_disk``.
- :class:`TextRecordExamples`: JSON lines or CSV/TSV text records
  (:func:`~lightning_rec.data.read_text_records`).
- :class:`SyntheticTitleExamples`: the synthetic catalogue's item-title -> category task.

Class indices follow the sorted class names (or a ``ClassLabel`` feature's own order), so a
dataset gives the same numbering on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_rec.data.records import DataFormatError
from lightning_rec.data.text_records import SyntheticTitleCategories, read_text_records

__all__ = [
    "IMAGE_SUFFIXES",
    "DigitsExamples",
    "DiskDatasetExamples",
    "ImageFolderExamples",
    "LabelledExamples",
    "LabelledSource",
    "SyntheticTitleExamples",
    "TextRecordExamples",
]

#: suffixes :class:`ImageFolderExamples` reads (PNG/JPEG/BMP/GIF through Pillow).
IMAGE_SUFFIXES = (".npy", ".pgm", ".ppm", ".png", ".jpg", ".jpeg", ".bmp", ".gif")
_PILLOW_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")


@dataclass
class LabelledExamples:
    """A labelled dataset in memory.

    Attributes:
        inputs: images ``(n c h w)`` (float, in [0, 1]) or a list of ``n`` texts.
        labels: ``(n)`` class indices (long) into ``class_names``.
        class_names: the name of each class index.
    """

    inputs: Tensor | list[str]
    labels: Tensor
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.labels.dim() != 1 or len(self.inputs) != len(self.labels):
            raise ValueError(
                f"LabelledExamples: {len(self.inputs)} inputs but labels of shape {tuple(self.labels.shape)}"
            )
        if len(self.labels) and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= len(self.class_names)
        ):
            raise ValueError(f"LabelledExamples: labels must lie in [0, {len(self.class_names)})")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def is_text(self) -> bool:
        return isinstance(self.inputs, list)

    def select(self, indices: Sequence[int] | np.ndarray | Tensor) -> Tensor | list[str]:
        """The inputs at ``indices``, as a batch: images ``(b c h w)`` or a list of ``b`` texts."""
        if isinstance(self.inputs, list):
            return [self.inputs[int(index)] for index in indices]
        return self.inputs[torch.as_tensor(np.asarray(indices), dtype=torch.long)]


class LabelledSource(Protocol):
    """Anything that loads a :class:`LabelledExamples`; ``name`` appears in model cards."""

    name: str

    def load(self) -> LabelledExamples: ...


def _index_labels(names: Sequence[str]) -> tuple[Tensor, list[str]]:
    """Label names -> indices into the sorted distinct names, and those names."""
    class_names = sorted(set(names))
    index = {name: position for position, name in enumerate(class_names)}
    return torch.tensor([index[name] for name in names], dtype=torch.long), class_names


class DigitsExamples:
    """scikit-learn's bundled handwritten digits: 1,797 grey images ``(1 8 8)``, classes "0".."9"."""

    name = "sklearn-digits"

    def load(self) -> LabelledExamples:
        from sklearn.datasets import load_digits  # the [bench] extra; imported on use

        digits = load_digits()
        images = torch.from_numpy(digits.images).float().div(16.0).unsqueeze(1)
        labels = torch.from_numpy(digits.target).long()
        return LabelledExamples(images, labels, [str(digit) for digit in range(10)])


class ImageFolderExamples:
    """Images in ``root/<class name>/...`` (sub-folders allowed; other files are ignored).

    Reads ``.npy`` arrays (``(h w)`` grey or ``(h w c)`` channels-last; uint8 is divided by 255,
    floats are kept), binary PGM/PPM (``P5``/``P6``), and PNG/JPEG/BMP/GIF when Pillow is installed.

    Args:
        root: the folder of class folders.
        image_size: resize every image to ``image_size x image_size`` (bilinear); without it, all
            images must have the same size.
    """

    def __init__(self, root: str, image_size: int | None = None) -> None:
        self.root = Path(root)
        self.image_size = image_size
        self.name = self.root.name

    def load(self) -> LabelledExamples:
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such image folder")
        class_dirs = sorted(
            path for path in self.root.iterdir() if path.is_dir() and not path.name.startswith(".")
        )
        if not class_dirs:
            raise DataFormatError(
                self.root, None, None, "no class folders (expected root/<class name>/<image>)"
            )
        images: list[Tensor] = []
        labels: list[int] = []
        first: Path | None = None
        for label, class_dir in enumerate(class_dirs):
            files = sorted(path for path in class_dir.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DataFormatError(
                    class_dir, None, None, f"no images (read suffixes: {', '.join(IMAGE_SUFFIXES)})"
                )
            for path in files:
                image = _read_image(path)
                if self.image_size is not None:
                    image = F.interpolate(
                        image.unsqueeze(0),
                        size=(self.image_size, self.image_size),
                        mode="bilinear",
                        antialias=True,
                    )[0]
                if images and image.shape != images[0].shape:
                    raise DataFormatError(
                        path, None, None,
                        f"image of shape (c h w) {tuple(image.shape)} differs from {first}'s "
                        f"{tuple(images[0].shape)}; pass image_size to resize, and use one channel count",
                    )  # fmt: skip
                first = first or path
                images.append(image)
                labels.append(label)
        return LabelledExamples(torch.stack(images), torch.tensor(labels), [path.name for path in class_dirs])


def _read_image(path: Path) -> Tensor:
    """One image file -> ``(c h w)`` float in [0, 1]."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        array = np.load(path, allow_pickle=False)
    elif suffix in (".pgm", ".ppm"):
        array = _read_netpbm(path)
    else:
        try:
            from PIL import Image
        except ImportError as error:
            raise ImportError(
                f"{path}: reading {suffix} images needs Pillow (pip install pillow); "
                ".npy and PGM/PPM need nothing"
            ) from error
        with Image.open(path) as image:
            array = np.asarray(image.convert("L" if image.mode in ("1", "L", "I", "F") else "RGB"))
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise DataFormatError(
            path, None, None, f"expected an (h w) or (h w c) image, got shape {array.shape}"
        )
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))).float() / scale


def _read_netpbm(path: Path) -> np.ndarray:
    """Binary PGM (``P5``) or PPM (``P6``) -> ``(h w)`` or ``(h w 3)`` array scaled to uint8 range."""
    data = path.read_bytes()
    fields: list[bytes] = []
    position = 0
    while len(fields) < 4:
        while position < len(data) and data[position : position + 1].isspace():
            position += 1
        if data[position : position + 1] == b"#":
            position = data.index(b"\n", position) + 1
            continue
        start = position
        while position < len(data) and not data[position : position + 1].isspace():
            position += 1
        if start == position:
            raise DataFormatError(path, None, None, "truncated PGM/PPM header")
        fields.append(data[start:position])
    magic, width, height, maxval = fields[0], int(fields[1]), int(fields[2]), int(fields[3])
    if magic not in (b"P5", b"P6"):
        raise DataFormatError(path, None, None, f"expected a binary PGM/PPM (P5/P6), got {magic!r}")
    channels = 3 if magic == b"P6" else 1
    dtype = np.dtype(">u2") if maxval > 255 else np.dtype(np.uint8)
    pixels = np.frombuffer(data, dtype=dtype, offset=position + 1, count=width * height * channels)
    image = pixels.reshape(height, width, channels) if channels == 3 else pixels.reshape(height, width)
    return (image.astype(np.float64) * (255.0 / maxval)).round().astype(np.uint8)


class DiskDatasetExamples:
    """A Hugging Face ``datasets`` folder saved with ``save_to_disk`` (a Dataset or a DatasetDict).

    Args:
        path: the folder.
        input_field: the column of inputs: strings (texts) or numeric arrays (images, ``(h w)`` or
            ``(h w c)``; uint8 is divided by 255). Image columns are decoded by ``datasets``
            (which needs Pillow).
        label_field: the column of labels: a ``ClassLabel`` (its names and order are kept), integers
            or strings.
        split: the split of a DatasetDict (ignored for a single Dataset).
    """

    def __init__(
        self, path: str, input_field: str = "text", label_field: str = "label", split: str = "train"
    ) -> None:
        self.path = Path(path)
        self.input_field = input_field
        self.label_field = label_field
        self.split = split
        self.name = self.path.name

    def load(self) -> LabelledExamples:
        import datasets  # installed with the [dev] extras; imported on use

        loaded = datasets.load_from_disk(str(self.path))
        if isinstance(loaded, datasets.DatasetDict):
            if self.split not in loaded:
                raise ValueError(f"{self.path}: no split {self.split!r}; it has {sorted(loaded)}")
            loaded = loaded[self.split]
        for field in (self.input_field, self.label_field):
            if field not in loaded.column_names:
                raise DataFormatError(
                    self.path, None, field, f"missing column (columns: {loaded.column_names})"
                )
        feature = loaded.features[self.label_field]
        raw_labels = loaded[self.label_field]
        if isinstance(feature, datasets.ClassLabel):
            labels, class_names = torch.tensor(list(raw_labels), dtype=torch.long), list(feature.names)
        else:
            numeric = all(isinstance(label, (int, np.integer)) for label in raw_labels)
            names = [str(label) for label in raw_labels]
            labels, class_names = _index_labels(names)
            if numeric:  # "10" after "9", not after "1"
                order = sorted(set(int(label) for label in raw_labels))
                labels = torch.tensor([order.index(int(label)) for label in raw_labels], dtype=torch.long)
                class_names = [str(label) for label in order]
        values = loaded[self.input_field]
        if all(isinstance(value, str) for value in values):
            return LabelledExamples(list(values), labels, class_names)
        arrays = [np.asarray(value) for value in values]
        if len({array.shape for array in arrays}) != 1 or arrays[0].ndim not in (2, 3):
            raise DataFormatError(
                self.path, None, self.input_field,
                "expected strings or images of one shape, (h w) or (h w c)",
            )  # fmt: skip
        stacked = np.stack(arrays)
        scale = 255.0 if stacked.dtype == np.uint8 else 1.0
        images = torch.from_numpy(stacked.astype(np.float32)) / scale
        images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2).contiguous()
        return LabelledExamples(images, labels, class_names)


class TextRecordExamples:
    """Text classification records in JSON lines or CSV/TSV
    (see :func:`~lightning_rec.data.read_text_records`).

    Args:
        path: the file (``.jsonl``, ``.json``, ``.csv``, ``.tsv``, optionally gzipped).
        text_field: the field holding the text.
        label_field: the field holding the class name.
    """

    def __init__(self, path: str, text_field: str = "text", label_field: str = "label") -> None:
        self.path = Path(path)
        self.text_field = text_field
        self.label_field = label_field
        self.name = self.path.name

    def load(self) -> LabelledExamples:
        records = list(read_text_records(self.path, fields=(self.text_field, self.label_field)))
        if not records:
            raise DataFormatError(self.path, None, None, "no records")
        texts = [text for text, _ in records]
        labels, class_names = _index_labels([label for _, label in records])
        return LabelledExamples(texts, labels, class_names)


class SyntheticTitleExamples:
    """The synthetic catalogue's item-title -> category task
    (:class:`~lightning_rec.data.SyntheticTitleCategories`), written to the data cache and read back
    through the text-record reader.

    Args:
        num_items: examples.
        num_categories: classes.
        seed: the catalogue's seed.
        cache_dir: default :func:`~lightning_rec.data.default_cache_dir`.
    """

    def __init__(
        self, num_items: int = 3000, num_categories: int = 50, seed: int = 0, cache_dir: str | None = None
    ) -> None:
        self.task = SyntheticTitleCategories(num_items, num_categories, seed, cache_dir)
        self.name = f"synthetic-title-categories-{num_categories}"

    def load(self) -> LabelledExamples:
        return TextRecordExamples(str(self.task.path())).load()
