"""Amazon Reviews dumps (2014, 2018 and 2023 releases): one JSON record per line, gzip or plain.

============  =========================================  ==============================================
release       reviews (user, item, rating, time)         meta (id, title, categories, price, brand, text)
============  =========================================  ==============================================
2014 [1]_     ``reviews_<Cat>_5.json.gz``: reviewerID,   ``meta_<Cat>.json.gz``, often Python literals:
              asin, overall, unixReviewTime (s)          asin, title, categories (list of lists),
                                                         price (number), brand, description
2018 [2]_     ``<Cat>.json.gz`` / ``<Cat>_5.json.gz``:   ``meta_<Cat>.json.gz``: asin, title, category,
              same fields as 2014                        price ("$12.99", "" or a range), brand,
                                                         description (list)
2023 [3]_     ``<Cat>.jsonl(.gz)``: user_id,             ``meta_<Cat>.jsonl(.gz)``: parent_asin, title,
              parent_asin, rating, timestamp (ms)        categories, price (number or null), store,
                                                         description + features (lists)
============  =========================================  ==============================================

.. [1] McAuley et al., "Image-based recommendations on styles and substitutes", SIGIR 2015.
.. [2] Ni, Li, McAuley, "Justifying recommendations using distantly-labeled reviews", EMNLP 2019.
.. [3] Hou et al., "Bridging language and items for retrieval and recommendation", 2024.
"""

from __future__ import annotations

import ast
import html
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

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
from lightning_rec.data.text_files import fingerprint_files, numbered_lines

__all__ = ["AmazonReviews"]

AmazonVersion = Literal["2014", "2018", "2023"]


@dataclass(frozen=True)
class _Layout:
    """Which key holds each field in one release. Titles and prices are under ``title``/``price``."""

    user: str
    item: str  # the item id key, in the reviews and in the meta file alike
    rating: str
    timestamp: str
    ticks_per_second: float  # 2023 timestamps are milliseconds
    categories: str
    brand: str
    description: tuple[str, ...]
    python_literals: bool  # 2014 meta (and old 2014 review dumps) are Python literals, not JSON


_LAYOUTS: dict[str, _Layout] = {
    "2014": _Layout(
        user="reviewerID", item="asin", rating="overall", timestamp="unixReviewTime", ticks_per_second=1.0,
        categories="categories", brand="brand", description=("description",), python_literals=True,
    ),
    "2018": _Layout(
        user="reviewerID", item="asin", rating="overall", timestamp="unixReviewTime", ticks_per_second=1.0,
        categories="category", brand="brand", description=("description",), python_literals=False,
    ),
    "2023": _Layout(
        user="user_id", item="parent_asin", rating="rating", timestamp="timestamp", ticks_per_second=1e3,
        categories="categories", brand="store", description=("description", "features"),
        python_literals=False,
    ),
}  # fmt: skip

# A price string starts with the number, after an optional dollar sign ("$1,299.00", "$5.99 - $9.99").
# Anchoring matters: some 2018 price fields hold page CSS whose first digits are not a price.
_PRICE = re.compile(r"\s*\$?\s*(\d[\d,]*(?:\.\d+)?)")


class AmazonReviews:
    """Reads one category of an Amazon Reviews dump: the reviews file and, optionally, its meta file.

    Every review is an :class:`Interaction` with the rating; 2023 timestamps are converted from
    milliseconds to seconds. A review line that is not JSON (nor a Python literal, in 2014 files), lacks
    a user, item, rating or timestamp, or holds a non-numeric rating or timestamp is a structural error.
    A meta line without an item id is a structural error; other missing meta fields are ``None``
    (``()`` for categories), and a price that does not start with a number (``""``, page markup) is
    ``None``. Meta records are yielded as they come: the 2018 dumps repeat some items.

    Args:
        reviews: the reviews file (``.json``, ``.jsonl``, gzip or plain).
        meta: the matching meta file, or ``None``; then :meth:`items` yields nothing.
        version: the release, or ``"auto"``: decided from the first review record with known keys
            (``user_id`` + ``parent_asin`` is 2023; ``reviewerID`` + ``asin`` with ``verified`` is 2018,
            with ``helpful`` is 2014). The resolved release is in ``self.version``.
        on_bad_line: ``"error"`` raises :class:`DataFormatError` at the first structural error;
            ``"skip"`` counts the line in the file's :class:`ReadReport` and goes on.
    """

    def __init__(
        self,
        reviews: str | Path,
        meta: str | Path | None = None,
        version: Literal["auto", "2014", "2018", "2023"] = "auto",
        on_bad_line: BadLinePolicy = "error",
    ) -> None:
        self.reviews = _existing_file(reviews, "reviews")
        self.meta = None if meta is None else _existing_file(meta, "meta")
        self.on_bad_line = check_bad_line_policy(on_bad_line)
        if version == "auto":
            self.version: AmazonVersion = _detect_version(self.reviews)
        elif version in _LAYOUTS:
            self.version = version
        else:
            raise ValueError(f"version={version!r}: expected 'auto', '2014', '2018' or '2023'")
        self.reports: list[ReadReport] = []

    def interactions(self) -> Iterator[Interaction]:
        """Stream the reviews file, one :class:`Interaction` per valid line, in file order."""
        parse = partial(_parse_review, _LAYOUTS[self.version], self.reviews)
        yield from read_records(
            self.reviews, numbered_lines(self.reviews), parse, self.on_bad_line, self.reports
        )

    def items(self) -> Iterator[ItemMeta]:
        """Stream the meta file, one :class:`ItemMeta` per valid line; nothing when there is no meta file."""
        if self.meta is not None:
            parse = partial(_parse_meta, _LAYOUTS[self.version], self.meta)
            yield from read_records(
                self.meta, numbered_lines(self.meta), parse, self.on_bad_line, self.reports
            )

    def fingerprint(self) -> str:
        """A hash of the files (paths, sizes, mtimes), the release and the bad-line policy."""
        files = [self.reviews] if self.meta is None else [self.reviews, self.meta]
        options = {
            "reader": type(self).__name__,
            "version": self.version,
            "on_bad_line": self.on_bad_line,
            "text": "html-unescaped",  # caches of the reader that kept entities are not reused
        }
        return fingerprint_files(files, options)


def _parse_review(layout: _Layout, path: Path, number: int, line: str) -> Interaction:
    record = _decode(line, path, number, layout.python_literals)
    return Interaction(
        user_id=parse_id(record.get(layout.user), path, number, layout.user),
        item_id=parse_id(record.get(layout.item), path, number, layout.item),
        rating=parse_number(record.get(layout.rating), path, number, layout.rating),
        timestamp=parse_number(record.get(layout.timestamp), path, number, layout.timestamp)
        / layout.ticks_per_second,
    )


def _parse_meta(layout: _Layout, path: Path, number: int, line: str) -> ItemMeta:
    record = _decode(line, path, number, layout.python_literals)
    return ItemMeta(
        item_id=parse_id(record.get(layout.item), path, number, layout.item),
        title=_joined_text(record.get("title")),
        categories=tuple(dict.fromkeys(_strings(record.get(layout.categories)))),
        price=_price(record.get("price")),
        brand=_joined_text(record.get(layout.brand)),
        description=_joined_text([record.get(key) for key in layout.description]),
    )


def _existing_file(path: str | Path, argument: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{argument}={str(path)!r}: no such file, expected an Amazon Reviews file")
    return path


def _decode(line: str, path: Path, number: int, python_literals: bool) -> dict[str, Any]:
    """One line as a dict: JSON, or a Python literal when the release writes those."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        if not python_literals:
            raise DataFormatError(path, number, None, "not JSON") from None
        try:
            record = ast.literal_eval(line)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise DataFormatError(path, number, None, "neither JSON nor a Python literal") from None
    if not isinstance(record, dict):
        raise DataFormatError(path, number, None, "expected an object ({...}) per line")
    return record


def _detect_version(reviews: Path) -> AmazonVersion:
    """The release of a reviews file, from the keys of its first record that has a user and an item."""
    for number, line in numbered_lines(reviews):
        try:
            keys = _decode(line, reviews, number, python_literals=True).keys()
        except DataFormatError:
            continue  # auto-detection looks for the first valid record; reading reports this line
        if {"user_id", "parent_asin"} <= keys:
            return "2023"
        if {"reviewerID", "asin"} <= keys:
            if "verified" in keys:
                return "2018"
            if "helpful" in keys:
                return "2014"
            raise DataFormatError(
                reviews,
                number,
                None,
                "version='auto' cannot tell 2014 (has 'helpful') from 2018 (has "
                "'verified'): neither key is here; pass version='2014' or version='2018'",
            )
    raise DataFormatError(
        reviews,
        None,
        None,
        "version='auto' found no record with reviewerID + asin (2014, 2018) or user_id + parent_asin (2023)",
    )


def _strings(value: object) -> Iterator[str]:
    """The non-blank strings in a meta value (a string, or nested lists of strings), stripped.

    The dumps keep the HTML entities of the scraped pages (``Shoes &amp; Jewelry``, ``&quot;``,
    ``&#39;``), so each string is unescaped once, as the page showed it.
    """
    if isinstance(value, str):
        text = html.unescape(value).strip()
        if text:
            yield text
    elif isinstance(value, list | tuple):
        for element in value:
            yield from _strings(element)


def _joined_text(value: object) -> str | None:
    """A text field as one string, list entries joined by newlines; ``None`` when there is no text."""
    return "\n".join(_strings(value)) or None


def _price(value: object) -> float | None:
    """A number, or the first number of a price string; ``None`` when there is none."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str) and (match := _PRICE.match(value)):
        return float(match.group(1).replace(",", ""))
    return None
