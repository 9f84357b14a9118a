"""Readers for real on-disk formats and the records they yield (layer 1: no Lightning).

Every reader is an :class:`InteractionSource`: it streams :class:`Interaction` and :class:`ItemMeta`
records, keeps a :class:`ReadReport` per file, and raises :class:`DataFormatError` naming the file,
line and field of a structural error (or skips the line, with ``on_bad_line="skip"``).
"""

from lightning_rec.data.amazon import AmazonReviews
from lightning_rec.data.item_embeddings import item_text_embeddings
from lightning_rec.data.labelled import (
    DigitsExamples,
    DiskDatasetExamples,
    ImageFolderExamples,
    LabelledExamples,
    LabelledSource,
    SyntheticTitleExamples,
    TextRecordExamples,
)
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
from lightning_rec.data.score_cache import ScoreCache
from lightning_rec.data.streams import (
    SiBlurrySampler,
    Stream,
    StreamKind,
    build_stream,
    disjoint_stream,
    gaussian_blurry_stream,
    hold_out,
    si_blurry_stream,
)
from lightning_rec.data.synthetic import SyntheticCatalogue, SyntheticReviews
from lightning_rec.data.text_files import default_cache_dir, fingerprint_files, numbered_lines, open_text
from lightning_rec.data.text_records import (
    SyntheticTitleCategories,
    read_rationales,
    read_text_records,
    text_record_format,
)

__all__ = [
    "AmazonReviews",
    "BadLinePolicy",
    "DataFormatError",
    "DigitsExamples",
    "DiskDatasetExamples",
    "ImageFolderExamples",
    "Interaction",
    "InteractionSource",
    "ItemMeta",
    "LabelledExamples",
    "LabelledSource",
    "MovieLens",
    "ReadReport",
    "RecBoleAtomic",
    "RecBoleExample",
    "ScoreCache",
    "SiBlurrySampler",
    "Stream",
    "StreamKind",
    "SyntheticCatalogue",
    "SyntheticReviews",
    "SyntheticTitleCategories",
    "SyntheticTitleExamples",
    "TextRecordExamples",
    "build_stream",
    "check_bad_line_policy",
    "default_cache_dir",
    "disjoint_stream",
    "fingerprint_files",
    "gaussian_blurry_stream",
    "hold_out",
    "item_text_embeddings",
    "numbered_lines",
    "open_text",
    "parse_id",
    "parse_number",
    "read_rationales",
    "read_records",
    "read_text_records",
    "recbole_example_dir",
    "si_blurry_stream",
    "text_record_format",
]
