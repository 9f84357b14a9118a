"""The records every reader yields, the error they raise, and the protocol a data source follows.

A reader turns one real on-disk format into two streams: :class:`Interaction` (who touched what,
when, with which rating) and :class:`ItemMeta` (the item side table). Everything downstream
(k-core, splits, id maps) works on these two types only, so adding a format never touches the
DataModules.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TypeVar, get_args, runtime_checkable

__all__ = [
    "BadLinePolicy",
    "DataFormatError",
    "Interaction",
    "InteractionSource",
    "ItemMeta",
    "ReadReport",
    "check_bad_line_policy",
    "parse_id",
    "parse_number",
    "read_records",
]

BadLinePolicy = Literal["error", "skip"]
Row = TypeVar("Row")
Record = TypeVar("Record")


class DataFormatError(ValueError):
    """A structural error in an input file, located by file, line number (1-based) and field."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f" field {field!r}:" if field else ""
        super().__init__(f"{where}:{what} {message}")


@dataclass(frozen=True, slots=True)
class Interaction:
    """One user-item event. ``timestamp`` is in seconds since the epoch (readers convert ms)."""

    user_id: str
    item_id: str
    rating: float | None
    timestamp: float


@dataclass(frozen=True, slots=True)
class ItemMeta:
    """One row of the item side table. Missing fields are ``None`` (or ``()`` for categories)."""

    item_id: str
    title: str | None = None
    categories: tuple[str, ...] = ()
    price: float | None = None
    brand: str | None = None
    description: str | None = None


@dataclass
class ReadReport:
    """What a reader saw in one file: lines read, records yielded, and skipped lines by reason."""

    path: str
    lines: int = 0
    records: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def skip(self, error: DataFormatError) -> None:
        self.skipped[error.reason if error.field is None else f"{error.field}: {error.reason}"] += 1

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        text = f"{self.path}: {self.records} records from {self.lines} lines"
        if self.skipped:
            reasons = ", ".join(f"{n} x {reason}" for reason, n in self.skipped.most_common())
            text += f"; skipped {self.num_skipped} ({reasons})"
        return text


@runtime_checkable
class InteractionSource(Protocol):
    """A dataset on disk, read lazily. Implemented by every reader in :mod:`lightning_rec.data`.

    ``fingerprint()`` identifies the content and the reading options (file paths, sizes, mtimes and
    options); preprocessing caches are keyed by it. ``reports`` holds one :class:`ReadReport` per
    file read so far.
    """

    reports: list[ReadReport]

    def interactions(self) -> Iterator[Interaction]: ...

    def items(self) -> Iterator[ItemMeta]: ...

    def fingerprint(self) -> str: ...


def check_bad_line_policy(on_bad_line: str) -> BadLinePolicy:
    """Return ``on_bad_line`` if it is a :data:`BadLinePolicy`; raise ``ValueError`` otherwise."""
    if on_bad_line not in get_args(BadLinePolicy):
        raise ValueError(f"on_bad_line={on_bad_line!r}: expected one of {get_args(BadLinePolicy)}")
    return on_bad_line  # type: ignore[return-value]


def parse_id(value: object, path: str | Path, line: int, field: str) -> str:
    """An id as a string: a non-empty string is kept as is, an integer is written in decimal."""
    if value is None:
        raise DataFormatError(path, line, field, "missing")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(path, line, field, "expected a non-empty id")
    return value


def parse_number(value: object, path: str | Path, line: int, field: str) -> float:
    """A finite float from a JSON number or a numeric string; anything else is a structural error."""
    if value is None:
        raise DataFormatError(path, line, field, "missing")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise DataFormatError(path, line, field, "expected a number")
    try:
        number = float(value)
    except ValueError:
        raise DataFormatError(path, line, field, "expected a number") from None
    if not math.isfinite(number):
        raise DataFormatError(path, line, field, "expected a finite number")
    return number


def read_records(
    path: str | Path,
    rows: Iterable[tuple[int, Row]],
    parse: Callable[[int, Row], Record],
    on_bad_line: BadLinePolicy,
    reports: list[ReadReport],
) -> Iterator[Record]:
    """Parse the numbered ``rows`` of one file into records under the bad-line policy.

    The file's :class:`ReadReport` replaces any earlier report for the same path in ``reports`` (so
    reading a file twice does not count it twice) and fills up as the stream is consumed. A
    :class:`DataFormatError` from ``parse(line_number, row)`` propagates when ``on_bad_line`` is
    ``"error"`` and is counted in the report when it is ``"skip"``. Errors raised by ``rows`` itself
    (a bad header, an unreadable file) always propagate: they concern the whole file, not a line.
    """
    report = ReadReport(str(path))
    earlier = [index for index, seen in enumerate(reports) if seen.path == report.path]
    if earlier:
        reports[earlier[0]] = report
    else:
        reports.append(report)
    for number, row in rows:
        report.lines += 1
        try:
            record = parse(number, row)
        except DataFormatError as error:
            if on_bad_line == "error":
                raise
            report.skip(error)
            continue
        report.records += 1
        yield record
