"""RecBole atomic files (``<name>.inter``, ``<name>.item``), and RecBole's bundled MovieLens-100K.

An atomic file is tab separated; its first line names each column with its type, ``name:type``,
type one of ``token``, ``token_seq`` (space-separated tokens), ``float`` and ``float_seq``::

    user_id:token   item_id:token   rating:float    timestamp:float
    196             242             3               881250949

Zhao et al., "RecBole: Towards a unified, comprehensive and efficient framework for recommendation
algorithms", CIKM 2021 (https://recbole.io/docs/user_guide/data/atomic_files.html).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from lightning_rec.atomic import atomic_directory
from lightning_rec.data.records import (
    BadLinePolicy,
    DataFormatError,
    Interaction,
    ItemMeta,
    ReadReport,
    check_bad_line_policy,
    parse_id,
    parse_number,
    read_records,
)
from lightning_rec.data.text_files import default_cache_dir, fingerprint_files, numbered_lines, open_text

__all__ = ["RecBoleAtomic", "RecBoleExample", "recbole_example_dir"]

_TYPES = ("token", "token_seq", "float", "float_seq")
_TITLE_FIELDS = ("movie_title", "title")  # the first one present is the title, unless title_field says
_CATEGORY_FIELDS = ("genre", "class", "categories")  # the first one present holds the categories
_RECBOLE_REQUIREMENT = "recbole==1.2.1"
_EXAMPLE_SUFFIXES = ("inter", "item", "user")


@dataclass(frozen=True)
class _Column:
    index: int
    type: str


class RecBoleAtomic:
    """Reads ``<root>/<name>.inter`` as :class:`Interaction` and ``<root>/<name>.item`` as :class:`ItemMeta`.

    Interaction columns: ``user_id`` and ``item_id`` (required), ``rating`` (optional: ``None`` when the
    column is absent or the cell empty) and ``timestamp`` (optional: when the column is absent, the
    line number is the timestamp, so the file's line order is the time order). Item columns:
    ``item_id`` (required); the title is ``title_field``, else ``movie_title``, else ``title``; the
    categories are ``genre``, ``class`` or ``categories`` (a ``token_seq`` is split on spaces); ``price``
    and ``brand``. Other columns are ignored. A line with the wrong number of fields, an empty id or
    a non-numeric float is a structural error; a malformed header is an error whatever the policy.

    Args:
        root: the folder holding the atomic files.
        name: the dataset name, the files' stem (``ml-100k`` for ``ml-100k.inter``).
        on_bad_line: ``"error"`` raises :class:`DataFormatError` at the first structural error;
            ``"skip"`` counts the line in the file's :class:`ReadReport` and goes on.
        title_field: the ``.item`` column that holds item titles, when it is not one of the above.
    """

    def __init__(
        self,
        root: str | Path,
        name: str,
        on_bad_line: BadLinePolicy = "error",
        title_field: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.name = name
        self.inter_file = self.root / f"{name}.inter"
        if not self.inter_file.is_file():
            raise FileNotFoundError(
                f"root={str(self.root)!r}, name={name!r}: no {self.inter_file.name}, expected the RecBole "
                "atomic file <root>/<name>.inter (and optionally <name>.item)"
            )
        self.on_bad_line = check_bad_line_policy(on_bad_line)
        self.reports: list[ReadReport] = []
        self._inter_columns = _read_header(self.inter_file, required=("user_id", "item_id"))
        item_file = self.root / f"{name}.item"
        self.item_file = item_file if item_file.is_file() else None
        self._item_columns = {} if self.item_file is None else _read_header(self.item_file, ("item_id",))
        if title_field is not None and title_field not in self._item_columns:
            raise ValueError(
                f"title_field={title_field!r}: not a column of {item_file} "
                f"({list(self._item_columns) if self.item_file else 'no such file'})"
            )
        self.title_field = title_field or next((f for f in _TITLE_FIELDS if f in self._item_columns), None)

    def interactions(self) -> Iterator[Interaction]:
        """Stream ``<name>.inter``, one :class:`Interaction` per valid line, in file order."""
        parse = partial(_parse_interaction, self.inter_file, self._inter_columns)
        yield from read_records(
            self.inter_file, _rows(self.inter_file), parse, self.on_bad_line, self.reports
        )

    def items(self) -> Iterator[ItemMeta]:
        """Stream ``<name>.item``, one :class:`ItemMeta` per valid line; nothing without an item file."""
        if self.item_file is not None:
            category_field = next((f for f in _CATEGORY_FIELDS if f in self._item_columns), None)
            parse = partial(_parse_item, self.item_file, self._item_columns, self.title_field, category_field)
            yield from read_records(
                self.item_file, _rows(self.item_file), parse, self.on_bad_line, self.reports
            )

    def fingerprint(self) -> str:
        """A hash of the files (paths, sizes, mtimes), the title field and the bad-line policy."""
        files = [self.inter_file] if self.item_file is None else [self.inter_file, self.item_file]
        options = {
            "reader": type(self).__name__,
            "title_field": self.title_field,
            "on_bad_line": self.on_bad_line,
        }
        return fingerprint_files(files, options)


class RecBoleExample(RecBoleAtomic):
    """A dataset bundled in the RecBole 1.2.1 wheel (``ml-100k``), read from the data cache.

    The wheel is fetched once with ``pip download --no-deps`` (see :func:`recbole_example_dir`); its
    licence forbids redistribution, so the files never enter this repository.

    Args:
        name: the bundled dataset's name.
        cache_dir: the data cache (default ``$LIGHTNING_REC_CACHE`` or ``~/.cache/lightning_rec``).
        on_bad_line: as for :class:`RecBoleAtomic`.
    """

    def __init__(
        self, name: str = "ml-100k", cache_dir: str | None = None, on_bad_line: BadLinePolicy = "error"
    ) -> None:
        super().__init__(recbole_example_dir(name, cache_dir), name, on_bad_line=on_bad_line)


def recbole_example_dir(name: str = "ml-100k", cache_dir: str | Path | None = None) -> Path:
    """The folder of a dataset bundled in the RecBole 1.2.1 wheel, fetched into the data cache once.

    RecBole ships MovieLens-100K as atomic files with titles (``recbole/dataset_example/ml-100k/``).
    Their licence forbids redistribution, so they are never copied into this repository: when
    ``<cache_dir>/recbole-1.2.1/<name>/`` lacks ``<name>.inter``, ``.item`` or ``.user``, the wheel alone
    is downloaded with ``pip download --no-deps`` (RecBole is not installed: its pins break a modern
    stack) and the three files are extracted from it, into a temporary folder that is then renamed,
    so an interrupted fetch never leaves a half-written dataset behind.

    Args:
        name: the dataset folder in the wheel; RecBole 1.2.1 ships ``ml-100k`` only.
        cache_dir: the data cache (default :func:`~lightning_rec.data.text_files.default_cache_dir`).

    Returns:
        The folder, ready for ``RecBoleAtomic(recbole_example_dir(), "ml-100k")``.

    Raises:
        RuntimeError: pip could not download the wheel; the message says how to fetch it by hand.
    """
    if not name or Path(name).name != name or name in (".", ".."):
        raise ValueError(f"name={name!r}: expected a dataset folder name such as 'ml-100k'")
    target = Path(cache_dir or default_cache_dir()) / "recbole-1.2.1" / name
    files = [f"{name}.{suffix}" for suffix in _EXAMPLE_SUFFIXES]
    if _has_files(target, files):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as download:
        wheel = _download_recbole_wheel(Path(download), target)
        with atomic_directory(target, lambda done: _has_files(done, files)) as staging:
            _extract_example(wheel, name, files, staging)
    return target


def _has_files(folder: Path, files: list[str]) -> bool:
    return all((folder / file).is_file() for file in files)


def _download_recbole_wheel(directory: Path, target: Path) -> Path:
    """Download the RecBole 1.2.1 wheel (no dependencies) into ``directory`` and return its path."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", _RECBOLE_REQUIREMENT, "-d", str(directory),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(directory.glob("recbole-1.2.1-*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(
            f"`{' '.join(command)}` failed (exit status {result.returncode}):\n{result.stderr[-2000:]}\n"
            f"To fetch it by hand: `pip download --no-deps {_RECBOLE_REQUIREMENT} -d <dir>` on a machine "
            f"with a network, then copy recbole/dataset_example/{target.name}/{target.name}.inter, .item "
            f"and .user out of the wheel (a zip file) into {target}/"
        )
    return wheels[0]


def _extract_example(wheel: Path, name: str, files: list[str], directory: Path) -> None:
    """Copy ``recbole/dataset_example/<name>/<file>`` for each of ``files`` out of the wheel."""
    with zipfile.ZipFile(wheel) as archive:
        members = set(archive.namelist())
        for file in files:
            member = f"recbole/dataset_example/{name}/{file}"
            if member not in members:
                shipped = sorted(
                    {m.split("/")[2] for m in members if m.startswith("recbole/dataset_example/")}
                )
                raise ValueError(f"name={name!r}: {wheel.name} has no {member}; it ships {shipped}")
            with archive.open(member) as source, (directory / file).open("wb") as destination:
                shutil.copyfileobj(source, destination)


def _read_header(path: Path, required: tuple[str, ...]) -> dict[str, _Column]:
    """The columns named by the first line, ``name:type`` separated by tabs, by name."""
    with open_text(path) as handle:
        header = handle.readline().rstrip("\r\n")
    columns: dict[str, _Column] = {}
    for index, column in enumerate(header.split("\t")):
        name, colon, kind = column.strip().partition(":")
        if not name or not colon:
            raise DataFormatError(path, 1, None, f"header column {column!r}: expected 'name:type'")
        if kind not in _TYPES:
            raise DataFormatError(path, 1, name, f"unknown type {kind!r}, expected one of {_TYPES}")
        if name in columns:
            raise DataFormatError(path, 1, name, "named twice in the header")
        columns[name] = _Column(index, kind)
    for name in required:
        if name not in columns:
            raise DataFormatError(path, 1, name, f"missing from the header, which has {list(columns)}")
    return columns


def _rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """Numbered lines after the header, split on tabs."""
    for number, line in numbered_lines(path):
        if number > 1:
            yield number, line.split("\t")


def _cells(path: Path, columns: dict[str, _Column], number: int, fields: list[str]) -> dict[str, str]:
    if len(fields) != len(columns):
        raise DataFormatError(path, number, None, f"expected {len(columns)} tab-separated fields")
    return {name: fields[column.index] for name, column in columns.items()}


def _parse_interaction(
    path: Path, columns: dict[str, _Column], number: int, fields: list[str]
) -> Interaction:
    row = _cells(path, columns, number, fields)
    rating = row.get("rating")
    timestamp = row.get("timestamp")
    return Interaction(
        user_id=parse_id(row["user_id"], path, number, "user_id"),
        item_id=parse_id(row["item_id"], path, number, "item_id"),
        rating=parse_number(rating, path, number, "rating") if rating else None,
        timestamp=float(number) if timestamp is None else parse_number(timestamp, path, number, "timestamp"),
    )


def _parse_item(
    path: Path,
    columns: dict[str, _Column],
    title_field: str | None,
    category_field: str | None,
    number: int,
    fields: list[str],
) -> ItemMeta:
    row = _cells(path, columns, number, fields)
    categories: list[str] = []
    if category_field is not None:
        value = row[category_field]
        categories = value.split(" ") if columns[category_field].type.endswith("_seq") else [value]
    price = row.get("price")
    return ItemMeta(
        item_id=parse_id(row["item_id"], path, number, "item_id"),
        title=(row[title_field] or None) if title_field is not None else None,
        categories=tuple(dict.fromkeys(category for category in categories if category)),
        price=parse_number(price, path, number, "price") if price else None,
        brand=row.get("brand") or None,
    )
