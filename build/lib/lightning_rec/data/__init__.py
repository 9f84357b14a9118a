"""Readers for real on-disk formats and the records they yield (layer 1: no Lightning).

Every reader is an :class:`InteractionSource`: it streams :class:`Interaction` and :class:`ItemMeta`
records, keeps a :class:`ReadReport` per file, and raises :class:`DataFormatError` naming the file,
line and field of a structural error (or skips the line, with ``on_bad_line="skip"``).
"""

from lightning_rec.data.amazon import AmazonReviews
from lightning_rec.data.movielens import MovieLens
from lightning_rec.data.recbole_atomic import RecBoleAtomic, RecBoleExample, recbole_example_dir
from lightning_rec.data.records import (
    BadLinePolicy,
    DataFormatError,
    Interaction,
    InteractionSource,
    ItemMeta,
    ReadReport,
    check_bad_line_policy,
    parse_id,
    parse_number,
    read_records,
)
from lightning_rec.data.synthetic import SyntheticCatalogue, SyntheticReviews
from lightning_rec.data.text_records import SyntheticTitleCategories, read_text_records, text_record_format
from lightning_rec.data.text_files import default_cache_dir, fingerprint_files, numbered_lines, open_text

__all__ = [
    "AmazonReviews",
    "BadLinePolicy",
    "DataFormatError",
    "Interaction",
    "InteractionSource",
    "ItemMeta",
    "MovieLens",
    "ReadReport",
    "RecBoleAtomic",
    "RecBoleExample",
    "SyntheticCatalogue",
    "SyntheticReviews",
    "SyntheticTitleCategories",
    "check_bad_line_policy",
    "default_cache_dir",
    "fingerprint_files",
    "numbered_lines",
    "open_text",
    "parse_id",
    "parse_number",
    "read_records",
    "read_text_records",
    "recbole_example_dir",
    "text_record_format",
]
