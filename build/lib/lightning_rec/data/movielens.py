"""MovieLens ratings and movies, in each of the layouts GroupLens has shipped.

=========  ===============================================  ===============================================
variant    ratings                                          movies
=========  ===============================================  ===============================================
``100k``   ``u.data``: user id, item id, rating, timestamp  ``u.item`` (latin-1): movie id | movie title |
           (tab separated)                                  release date | video release date | IMDb URL |
                                                            one 0/1 flag per genre of ``u.genre``
``1m``     ``ratings.dat``: UserID::MovieID::Rating::       ``movies.dat`` (latin-1): MovieID::Title::
           Timestamp                                        Genre|Genre
``csv``    ``ratings.csv`` (20m, 25m, 32m, latest): header  ``movies.csv``: header movieId,title,genres;
           userId,movieId,rating,timestamp                  quoted titles may hold commas
=========  ===============================================  ===============================================

Harper and Konstan, "The MovieLens Datasets: History and Context", ACM TiiS 2015.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

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
from lightning_rec.data.text_files import fingerprint_files, numbered_lines, open_text

__all__ = ["MovieLens"]

MovieLensVariant = Literal["100k", "1m", "csv"]

# The files of each variant: (ratings, movies).
_FILES: dict[str, tuple[str, str]] = {
    "100k": ("u.data", "u.item"),
    "1m": ("ratings.dat", "movies.dat"),
    "csv": ("ratings.csv", "movies.csv"),
}
# The genre flags of u.item, in order, as listed in the ML-100K README (and in its u.genre file).
_ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
_NO_GENRES = "(no genres listed)"  # the csv releases' placeholder for a movie without genres


@dataclass(frozen=True)
class _Table:
    """One delimited file and where the fields a parser reads sit in each line.

    ``separator`` is ``None`` for the csv releases, which are read with :mod:`csv` (quoted titles)
    after a header line; ``names`` are the fields' names as the release documents them.
    """

    path: Path
    separator: str | None
    encoding: str
    width: int
    columns: tuple[int, ...]
    names: tuple[str, ...]


class MovieLens:
    """Reads a MovieLens release folder: ratings as :class:`Interaction`, movies as :class:`ItemMeta`.

    Ids are kept as the strings in the files; ratings are floats and timestamps seconds. A movie's
    categories are its genres (ml-100k: the genres whose flag is 1, named by ``u.genre`` when the folder
    has one, else by the 19 genres of the ML-100K README). A line with the wrong number of fields, an
    empty id, or a non-numeric rating or timestamp is a structural error.

    Args:
        root: the unpacked release folder (``ml-100k/``, ``ml-1m/``, ``ml-25m/``, ``ml-latest-small/``...).
        variant: ``"100k"``, ``"1m"``, ``"csv"`` (20m, 25m, 32m and latest), or ``"auto"``: the variant
            whose ratings file is in ``root``. The resolved variant is in ``self.variant``.
        on_bad_line: ``"error"`` raises :class:`DataFormatError` at the first structural error;
            ``"skip"`` counts the line in the file's :class:`ReadReport` and goes on.
    """

    def __init__(
        self,
        root: str | Path,
        variant: Literal["auto", "100k", "1m", "csv"] = "auto",
        on_bad_line: BadLinePolicy = "error",
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotADirectoryError(f"root={str(self.root)!r}: no such folder, expected a MovieLens release")
        self.on_bad_line = check_bad_line_policy(on_bad_line)
        self.reports: list[ReadReport] = []
        self.variant: MovieLensVariant = self._resolve_variant(variant)
        for name in _FILES[self.variant]:
            if not (self.root / name).is_file():
                raise FileNotFoundError(
                    f"root={str(self.root)!r}: no {name}, expected the MovieLens {self.variant} files "
                    f"{' and '.join(_FILES[self.variant])}"
                )
        genre_file = self.root / "u.genre"
        self.genre_file = genre_file if self.variant == "100k" and genre_file.is_file() else None
        self._ratings, self._movies, self._genres = self._tables()

    def interactions(self) -> Iterator[Interaction]:
        """Stream the ratings file, one :class:`Interaction` per valid line, in file order."""
        parse = partial(_parse_rating, self._ratings)
        yield from read_records(
            self._ratings.path, _rows(self._ratings), parse, self.on_bad_line, self.reports
        )

    def items(self) -> Iterator[ItemMeta]:
        """Stream the movies file, one :class:`ItemMeta` (title, genres) per valid line."""
        if self.variant == "100k":
            parse = partial(_parse_genre_flags, self._movies, self._genres)
        else:
            parse = partial(_parse_genre_list, self._movies)
        yield from read_records(self._movies.path, _rows(self._movies), parse, self.on_bad_line, self.reports)

    def fingerprint(self) -> str:
        """A hash of the files (paths, sizes, mtimes), the variant and the bad-line policy."""
        files = [self._ratings.path, self._movies.path]
        if self.genre_file is not None:
            files.append(self.genre_file)
        options = {"reader": type(self).__name__, "variant": self.variant, "on_bad_line": self.on_bad_line}
        return fingerprint_files(files, options)

    def _resolve_variant(self, variant: str) -> MovieLensVariant:
        if variant in _FILES:
            return variant  # type: ignore[return-value]
        if variant != "auto":
            raise ValueError(f"variant={variant!r}: expected 'auto', '100k', '1m' or 'csv'")
        found = [name for name, (ratings, _) in _FILES.items() if (self.root / ratings).is_file()]
        if not found:
            expected = ", ".join(f"{ratings} ({name})" for name, (ratings, _) in _FILES.items())
            raise FileNotFoundError(f"root={str(self.root)!r}: variant='auto' found none of {expected}")
        if len(found) > 1:
            raise ValueError(
                f"root={str(self.root)!r}: variant='auto' found the ratings of {' and '.join(found)}; "
                "pass variant= to pick one"
            )
        return found[0]  # type: ignore[return-value]

    def _tables(self) -> tuple[_Table, _Table, tuple[str, ...]]:
        """The ratings and movies tables of this variant, and the ml-100k genre names (else ``()``)."""
        ratings, movies = (self.root / name for name in _FILES[self.variant])
        if self.variant == "100k":
            genres = _ML100K_GENRES if self.genre_file is None else self._read_genres(self.genre_file)
            names = ("user id", "item id", "rating", "timestamp")
            return (
                _Table(ratings, "\t", "latin-1", 4, (0, 1, 2, 3), names),
                _Table(movies, "|", "latin-1", 5 + len(genres), (0, 1), ("movie id", "movie title")),
                genres,
            )
        if self.variant == "1m":
            names = ("UserID", "MovieID", "Rating", "Timestamp")
            return (
                _Table(ratings, "::", "latin-1", 4, (0, 1, 2, 3), names),
                _Table(movies, "::", "latin-1", 3, (0, 1, 2), ("MovieID", "Title", "Genres")),
                (),
            )
        return (
            _csv_table(ratings, ("userId", "movieId", "rating", "timestamp")),
            _csv_table(movies, ("movieId", "title", "genres")),
            (),
        )

    def _read_genres(self, path: Path) -> tuple[str, ...]:
        """The genre names of ``u.genre`` (``name|index`` lines) in index order.

        Always read strictly: a skipped line would shift every later genre flag of ``u.item``.
        """
        parse = partial(_parse_genre, path)
        genres = sorted(read_records(path, numbered_lines(path, "latin-1"), parse, "error", self.reports))
        indices = [index for index, _ in genres]
        if indices != list(range(len(genres))):
            raise DataFormatError(
                path, None, "index", f"expected 0..{len(genres) - 1} once each, got {indices}"
            )
        return tuple(name for _, name in genres)


def _csv_table(path: Path, required: tuple[str, ...]) -> _Table:
    """A csv release file, located by its header: the ``required`` columns must all be there."""
    with open_text(path) as handle:
        header = next(csv.reader(handle), [])
    for name in required:
        if name not in header:
            raise DataFormatError(
                path, 1, name, f"missing from the header {header}, expected {list(required)}"
            )
    return _Table(path, None, "utf-8", len(header), tuple(header.index(name) for name in required), required)


def _rows(table: _Table) -> Iterator[tuple[int, list[str]]]:
    """Numbered lines of ``table`` split into fields; the csv releases' header is left out."""
    if table.separator is None:
        with open_text(table.path, table.encoding) as handle:
            reader = csv.reader(handle)
            next(reader, None)
            for row in reader:
                if row:
                    yield reader.line_num, row
    else:
        for number, line in numbered_lines(table.path, table.encoding):
            yield number, line.split(table.separator)


def _fields(table: _Table, number: int, fields: list[str]) -> list[str]:
    """The fields a parser reads, in ``table.names`` order, once the line's width is checked."""
    if len(fields) != table.width:
        raise DataFormatError(table.path, number, None, f"expected {table.width} fields")
    return [fields[column] for column in table.columns]


def _parse_rating(table: _Table, number: int, fields: list[str]) -> Interaction:
    user, item, rating, timestamp = _fields(table, number, fields)
    user_name, item_name, rating_name, timestamp_name = table.names
    return Interaction(
        user_id=parse_id(user, table.path, number, user_name),
        item_id=parse_id(item, table.path, number, item_name),
        rating=parse_number(rating, table.path, number, rating_name),
        timestamp=parse_number(timestamp, table.path, number, timestamp_name),
    )


def _parse_genre_list(table: _Table, number: int, fields: list[str]) -> ItemMeta:
    """A ml-1m or csv movie: ``Genre|Genre`` (``(no genres listed)`` means none)."""
    item, title, genres = _fields(table, number, fields)
    return ItemMeta(
        item_id=parse_id(item, table.path, number, table.names[0]),
        title=title or None,
        categories=() if genres == _NO_GENRES else tuple(genre for genre in genres.split("|") if genre),
    )


def _parse_genre_flags(table: _Table, genres: tuple[str, ...], number: int, fields: list[str]) -> ItemMeta:
    """A ml-100k movie: its genres are those whose 0/1 flag, after the IMDb URL, is 1."""
    item, title = _fields(table, number, fields)
    flags = fields[5:]
    for genre, flag in zip(genres, flags, strict=True):
        if flag not in ("0", "1"):
            raise DataFormatError(table.path, number, genre, "expected a genre flag 0 or 1")
    return ItemMeta(
        item_id=parse_id(item, table.path, number, table.names[0]),
        title=title or None,
        categories=tuple(genre for genre, flag in zip(genres, flags, strict=True) if flag == "1"),
    )


def _parse_genre(path: Path, number: int, line: str) -> tuple[int, str]:
    """One ``u.genre`` line, ``name|index``."""
    fields = line.split("|")
    if len(fields) != 2 or not fields[0]:
        raise DataFormatError(path, number, None, "expected 'name|index'")
    name, index = fields
    if not index.isdigit():
        raise DataFormatError(path, number, "index", "expected a non-negative integer")
    return int(index), name
