"""Text-task files: one record per JSON line or CSV/TSV row, with named fields (layer 1: no Lightning).

Two adapters, the continual-learning streams and Reasoning to Rank's SFT train on text records:

- classification: ``{"text": "...", "label": "..."}`` (:func:`read_text_records` with
  ``fields=("text", "label")``);
- instruction tuning: ``{"prompt": "...", "response": "..."}`` (``fields=("prompt", "response")``);
- teacher rationales (Reasoning to Rank): ``{"user_id": "...", "item_id": "...", "rationale": "..."}``
  (:func:`read_rationales`).

The field names are arguments, so a user's own file with other column names needs no conversion.
JSON lines (``.jsonl``, ``.json``, gzip or plain) and CSV/TSV with a header (``.csv``, ``.tsv``) are
read; the format is taken from the suffix (before a ``.gz``). A structural error raises
:class:`~lightning_rec.data.DataFormatError` naming the file, the line and the field.

:class:`SyntheticTitleCategories` writes the synthetic catalogue's item-title -> category task in
this format, so examples and benchmarks run the same reader as a user's files.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from lightning_rec.atomic import atomic_path
from lightning_rec.data.records import (
    BadLinePolicy,
    DataFormatError,
    ReadReport,
    check_bad_line_policy,
    read_records,
)
from lightning_rec.data.synthetic import SyntheticCatalogue
from lightning_rec.data.text_files import default_cache_dir, fingerprint_files, numbered_lines, open_text

__all__ = ["SyntheticTitleCategories", "read_rationales", "read_text_records", "text_record_format"]


def text_record_format(path: str | Path) -> str:
    """``"jsonl"``, ``"csv"`` or ``"tsv"`` from the file name (a trailing ``.gz`` is ignored)."""
    suffixes = [suffix.lower() for suffix in Path(path).suffixes if suffix.lower() != ".gz"]
    suffix = suffixes[-1] if suffixes else ""
    formats = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".tsv": "tsv"}
    if suffix not in formats:
        raise ValueError(
            f"{path}: unknown text-record format {suffix!r}; expected .jsonl, .json, .csv or .tsv"
        )
    return formats[suffix]


def read_text_records(
    path: str | Path,
    fields: Sequence[str] = ("text", "label"),
    on_bad_line: BadLinePolicy = "error",
    reports: list[ReadReport] | None = None,
) -> Iterator[tuple[str, ...]]:
    """Stream the ``fields`` of every record of ``path`` as a tuple of strings, in file order.

    Every field must be present and a non-empty string (a JSON number is written in decimal, so
    integer labels work). ``reports`` (optional) receives the file's :class:`ReadReport`.
    """
    check_bad_line_policy(on_bad_line)
    fields = tuple(fields)
    if not fields:
        raise ValueError("fields must name at least one field")
    record_format = text_record_format(path)
    rows = _json_rows(path) if record_format == "jsonl" else _table_rows(path, fields, record_format)

    def parse(number: int, row: dict) -> tuple[str, ...]:
        return tuple(_text_field(row, field, path, number) for field in fields)

    yield from read_records(path, rows, parse, on_bad_line, reports if reports is not None else [])


def read_rationales(path: str | Path) -> dict[tuple[str, str], str]:
    """``{(user_id, item_id): rationale}`` from a JSON-lines (or CSV/TSV) file with those three fields.

    Every field must be a non-empty string; a malformed line raises
    :class:`~lightning_rec.data.DataFormatError` naming the file, the line and the field, and a pair
    given twice raises ``ValueError`` naming it.
    """
    rationales: dict[tuple[str, str], str] = {}
    for user_id, item_id, rationale in read_text_records(path, ("user_id", "item_id", "rationale")):
        if (user_id, item_id) in rationales:
            raise ValueError(f"{path}: user_id {user_id!r}, item_id {item_id!r} has two rationales")
        rationales[(user_id, item_id)] = rationale
    return rationales


def _json_rows(path: str | Path) -> Iterator[tuple[int, dict]]:
    for number, line in numbered_lines(path):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            yield number, _BadRow(f"not valid JSON ({error.msg})")
            continue
        yield number, row if isinstance(row, dict) else _BadRow("expected a JSON object")


def _table_rows(path: str | Path, fields: tuple[str, ...], record_format: str) -> Iterator[tuple[int, dict]]:
    with open_text(path) as handle:
        reader = csv.DictReader(handle, delimiter="\t" if record_format == "tsv" else ",")
        missing = [field for field in fields if field not in (reader.fieldnames or [])]
        if missing:
            raise DataFormatError(
                path, 1, missing[0], f"missing column (header has {list(reader.fieldnames or [])})"
            )
        for row in reader:
            # The reader's line_num is the physical line the row ended on (quoted newlines count).
            yield reader.line_num, row


class _BadRow(dict):
    """A row that could not be parsed; ``parse`` turns it into a located error."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason


def _text_field(row: dict, field: str, path: str | Path, line: int) -> str:
    if isinstance(row, _BadRow):
        raise DataFormatError(path, line, None, row.reason)
    value = row.get(field)
    if value is None:
        raise DataFormatError(path, line, field, "missing")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(path, line, field, "expected a non-empty string")
    return value


class SyntheticTitleCategories:
    """The synthetic catalogue's text-classification task: item title -> category name.

    Writes one JSON line ``{"text": <title>, "label": <category>}`` per item, in item order, to
    ``<cache_dir>/synthetic/title-categories-<hash of the arguments>.jsonl`` (atomically, once), so
    every consumer reads it with :func:`read_text_records`. Titles are "<brand> <adjective>
    <colour> <material> <category noun>"; with more than 30 categories the nouns repeat with a
    number ("Lamp 2"), which makes the task harder than spotting the noun.

    Args:
        num_items: items (examples).
        num_categories: categories (classes); every category has at least one item.
        seed: the catalogue's seed.
        cache_dir: default :func:`~lightning_rec.data.default_cache_dir`.
    """

    def __init__(
        self, num_items: int = 3000, num_categories: int = 50, seed: int = 0, cache_dir: str | None = None
    ) -> None:
        self.catalogue = SyntheticCatalogue(
            num_users=1, num_items=num_items, num_categories=num_categories, seed=seed
        )
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()

    def path(self) -> Path:
        """The JSONL file, written on first use."""
        key = fingerprint_files([], {"synthetic": self.catalogue.config(), "task": "title-category"})
        path = self.cache_dir / "synthetic" / f"title-categories-{key}.jsonl"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
                for item in range(self.catalogue.num_items):
                    category = self.catalogue.category_name(int(self.catalogue.item_category[item]))
                    handle.write(
                        json.dumps({"text": self.catalogue.item_title(item), "label": category}) + "\n"
                    )
        return path
