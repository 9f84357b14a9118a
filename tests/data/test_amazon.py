"""Tests for lightning_rec/data/amazon.py on small files in each release's real layout."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from lightning_rec.data import AmazonReviews, DataFormatError, Interaction, InteractionSource, ItemMeta


def write_lines(path: Path, lines: list[str]) -> Path:
    """Write ``lines`` to ``path``, gzip-compressed when the name ends with ``.gz``."""
    data = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def review_2014(user: str, item: str, rating: float, time: int) -> str:
    record = {
        "reviewerID": user,
        "asin": item,
        "reviewerName": "R",
        "helpful": [0, 0],
        "reviewText": "ok",
        "overall": rating,
        "summary": "ok",
        "unixReviewTime": time,
        "reviewTime": "09 13, 2009",
    }
    return json.dumps(record)


def review_2018(user: str, item: str, rating: float, time: int) -> str:
    record = {
        "overall": rating,
        "verified": True,
        "reviewTime": "09 1, 2016",
        "reviewerID": user,
        "asin": item,
        "reviewerName": "R",
        "reviewText": "ok",
        "unixReviewTime": time,
    }
    return json.dumps(record)


def review_2023(user: str, item: str, rating: float, time_ms: int) -> str:
    record = {
        "rating": rating,
        "title": "ok",
        "text": "fine",
        "images": [],
        "asin": item + "-child",
        "parent_asin": item,
        "user_id": user,
        "timestamp": time_ms,
        "helpful_vote": 0,
        "verified_purchase": True,
    }
    return json.dumps(record)


@pytest.fixture
def dump_2014(tmp_path: Path) -> tuple[Path, Path]:
    reviews = write_lines(
        tmp_path / "reviews_Beauty_5.json.gz",
        [
            review_2014("A1", "B001", 5.0, 1252800000),
            # older 2014 dumps hold Python literals, not JSON
            "{'reviewerID': 'A2', 'asin': 'B002', 'helpful': [1, 2], 'overall': 4.0, "
            "'unixReviewTime': 1300000000}",
        ],
    )
    meta = write_lines(
        tmp_path / "meta_Beauty.json.gz",
        [
            "{'asin': 'B001', 'title': 'Lip Balm', 'price': 3.5, 'brand': 'Burt', 'description': 'Soothes.',"
            " 'categories': [['Beauty', 'Skin Care', 'Lips'], ['Beauty', 'Makeup']], 'salesRank': {'A': 9}}",
            "{'asin': 'B002', 'related': {'also_bought': ['B001']}}",
        ],
    )
    return reviews, meta


@pytest.fixture
def dump_2018(tmp_path: Path) -> tuple[Path, Path]:
    reviews = write_lines(
        tmp_path / "Luxury_Beauty.json",
        [review_2018("U1", "I1", 5.0, 1472688000), review_2018("U2", "I2", 2.0, 1472774400)],
    )
    meta = write_lines(
        tmp_path / "meta_Luxury_Beauty.json.gz",
        [
            json.dumps({"asin": "I1", "title": "Mug", "category": ["Home", "Kitchen", "Home"],
                        "price": "$1.99", "brand": "Acme", "description": ["Holds tea.", "Washable."]}),
            json.dumps({"asin": "I2", "title": "", "category": [], "price": "", "description": []}),
            json.dumps({"asin": "I3", "price": "$10.00 - $20.00", "description": "One line."}),
            json.dumps({"asin": "I4", "price": "$1,299.00"}),
            json.dumps({"asin": "I5", "price": ".a-box-inner{background-color:#fff} 12px"}),
        ],
    )  # fmt: skip
    return reviews, meta


@pytest.fixture
def dump_2023(tmp_path: Path) -> tuple[Path, Path]:
    reviews = write_lines(
        tmp_path / "All_Beauty.jsonl.gz",
        [review_2023("AGX", "P0A", 5.0, 1588687728923), review_2023("AHB", "P0B", 1.0, 1588615855070)],
    )
    meta = write_lines(
        tmp_path / "meta_All_Beauty.jsonl",
        [
            json.dumps({"main_category": "All Beauty", "title": "Serum", "average_rating": 4.2,
                        "features": ["Vegan", "30 ml"], "description": ["Light serum."], "price": 12.5,
                        "store": "Glow", "categories": ["Beauty", "Skin"], "parent_asin": "P0A"}),
            json.dumps({"title": "Comb", "features": [], "description": [], "price": None, "store": None,
                        "categories": [], "parent_asin": "P0B"}),
        ],
    )  # fmt: skip
    return reviews, meta


def test_2014_reviews_and_python_literal_meta(dump_2014: tuple[Path, Path]) -> None:
    reader = AmazonReviews(*dump_2014)
    assert reader.version == "2014"
    assert isinstance(reader, InteractionSource)
    assert list(reader.interactions()) == [
        Interaction("A1", "B001", 5.0, 1252800000.0),
        Interaction("A2", "B002", 4.0, 1300000000.0),
    ]
    assert list(reader.items()) == [
        ItemMeta("B001", "Lip Balm", ("Beauty", "Skin Care", "Lips", "Makeup"), 3.5, "Burt", "Soothes."),
        ItemMeta("B002"),
    ]


def test_2018_meta_prices_categories_and_descriptions(dump_2018: tuple[Path, Path]) -> None:
    reader = AmazonReviews(*dump_2018)
    assert reader.version == "2018"
    assert list(reader.interactions()) == [
        Interaction("U1", "I1", 5.0, 1472688000.0),
        Interaction("U2", "I2", 2.0, 1472774400.0),
    ]
    assert list(reader.items()) == [
        ItemMeta("I1", "Mug", ("Home", "Kitchen"), 1.99, "Acme", "Holds tea.\nWashable."),
        ItemMeta("I2"),  # "" price and empty title, categories, description are missing, not errors
        ItemMeta("I3", price=10.0, description="One line."),
        ItemMeta("I4", price=1299.0),
        ItemMeta("I5"),  # page markup where the price should be
    ]
    assert reader.reports[-1].num_skipped == 0


def test_2023_milliseconds_and_store(dump_2023: tuple[Path, Path]) -> None:
    reader = AmazonReviews(*dump_2023)
    assert reader.version == "2023"
    assert list(reader.interactions()) == [
        Interaction("AGX", "P0A", 5.0, 1588687728.923),
        Interaction("AHB", "P0B", 1.0, 1588615855.07),
    ]
    assert list(reader.items()) == [
        ItemMeta("P0A", "Serum", ("Beauty", "Skin"), 12.5, "Glow", "Light serum.\nVegan\n30 ml"),
        ItemMeta("P0B", "Comb"),
    ]


def test_auto_detection_skips_unreadable_first_lines(tmp_path: Path) -> None:
    reviews = write_lines(tmp_path / "r.json", ["not json", '{"foo": 1}', review_2023("U", "I", 3.0, 1000)])
    assert AmazonReviews(reviews, on_bad_line="skip").version == "2023"


def test_explicit_version_overrides_detection(dump_2018: tuple[Path, Path]) -> None:
    # Read as 2014, the 2018 meta has no "categories" key: the categories come out empty.
    reader = AmazonReviews(*dump_2018, version="2014")
    assert reader.version == "2014"
    assert next(reader.items()).categories == ()


def test_auto_detection_refuses_to_guess_between_2014_and_2018(tmp_path: Path) -> None:
    line = json.dumps({"reviewerID": "U", "asin": "I", "overall": 1.0, "unixReviewTime": 5})
    reviews = write_lines(tmp_path / "r.json", [line])
    with pytest.raises(DataFormatError, match="version='2014' or version='2018'"):
        AmazonReviews(reviews)
    assert AmazonReviews(reviews, version="2018").version == "2018"


def test_auto_detection_without_any_review_record(tmp_path: Path) -> None:
    reviews = write_lines(tmp_path / "r.json", ['{"user": "U", "item": "I"}'])
    with pytest.raises(DataFormatError, match="found no record") as caught:
        AmazonReviews(reviews)
    assert str(reviews) in str(caught.value)


@pytest.mark.parametrize(
    ("bad_line", "field", "reason"),
    [
        ("{this is not json", None, "not JSON"),
        ("[1, 2, 3]", None, "expected an object"),
        (json.dumps({"reviewerID": "U3", "asin": "I3", "overall": 3.0, "verified": True}), "unixReviewTime",
         "missing"),
        (review_2018("U3", "I3", 3.0, 0).replace('"unixReviewTime": 0', '"unixReviewTime": "yesterday"'),
         "unixReviewTime", "expected a number"),
        (review_2018("U3", "I3", 3.0, 0).replace('"overall": 3.0', '"overall": "three"'), "overall",
         "expected a number"),
        (review_2018("U3", "I3", 3.0, 0).replace('"asin": "I3"', '"asin": ""'), "asin", "non-empty id"),
    ],
)  # fmt: skip
def test_structural_errors_name_file_line_and_field(
    tmp_path: Path, bad_line: str, field: str | None, reason: str
) -> None:
    reviews = write_lines(tmp_path / "Cat.json.gz", [review_2018("U1", "I1", 5.0, 1), bad_line])
    reader = AmazonReviews(reviews, version="2018")
    with pytest.raises(DataFormatError) as caught:
        list(reader.interactions())
    error = caught.value
    assert (error.path, error.line, error.field) == (str(reviews), 2, field)
    assert f"{reviews}:2:" in str(error)
    assert reason in str(error)
    if field is not None:
        assert repr(field) in str(error)


def test_2023_non_numeric_timestamp(tmp_path: Path) -> None:
    bad = review_2023("U", "I", 3.0, 0).replace('"timestamp": 0', '"timestamp": "soon"')
    reviews = write_lines(tmp_path / "Cat.jsonl", [review_2023("U", "I", 3.0, 1000), bad])
    with pytest.raises(DataFormatError, match=r"Cat\.jsonl:2: field 'timestamp': expected a number"):
        list(AmazonReviews(reviews).interactions())


def test_2014_line_neither_json_nor_python_literal(tmp_path: Path) -> None:
    reviews = write_lines(tmp_path / "reviews_Cat_5.json", [review_2014("U", "I", 3.0, 1), "{'asin': oops}"])
    with pytest.raises(DataFormatError, match=r":2: neither JSON nor a Python literal"):
        list(AmazonReviews(reviews).interactions())


def test_skip_keeps_good_records_and_counts_reasons(tmp_path: Path) -> None:
    good = [
        review_2018("U1", "I1", 5.0, 10),
        review_2018("U2", "I2", 4.0, 20),
        review_2018("U3", "I3", 3.0, 30),
    ]
    no_time = json.dumps({"reviewerID": "U9", "asin": "I9", "overall": 1.0, "verified": False})
    bad_time = review_2018("U9", "I9", 1.0, 0).replace('"unixReviewTime": 0', '"unixReviewTime": "x"')
    reviews = write_lines(
        tmp_path / "Cat.json", [good[0], "garbage", no_time, good[1], bad_time, "nope", good[2]]
    )
    reader = AmazonReviews(reviews, on_bad_line="skip")
    assert [r.user_id for r in reader.interactions()] == ["U1", "U2", "U3"]
    (report,) = reader.reports
    assert (report.path, report.lines, report.records) == (str(reviews), 7, 3)
    assert dict(report.skipped) == {
        "not JSON": 2,
        "unixReviewTime: missing": 1,
        "unixReviewTime: expected a number": 1,
    }


def test_meta_without_item_id_is_a_structural_error(tmp_path: Path) -> None:
    reviews = write_lines(tmp_path / "Cat.json", [review_2018("U1", "I1", 5.0, 10)])
    meta = write_lines(
        tmp_path / "meta_Cat.json", [json.dumps({"asin": "I1"}), json.dumps({"title": "Orphan"})]
    )
    with pytest.raises(DataFormatError, match=r"meta_Cat\.json:2: field 'asin': missing"):
        list(AmazonReviews(reviews, meta).items())
    reader = AmazonReviews(reviews, meta, on_bad_line="skip")
    assert list(reader.items()) == [ItemMeta("I1")]
    assert dict(reader.reports[0].skipped) == {"asin: missing": 1}


def test_rereading_replaces_the_files_report(dump_2018: tuple[Path, Path]) -> None:
    reader = AmazonReviews(*dump_2018)
    for _ in range(2):
        list(reader.interactions())
        list(reader.items())
    assert [(r.path, r.records) for r in reader.reports] == [(str(dump_2018[0]), 2), (str(dump_2018[1]), 5)]


def test_no_meta_yields_no_items(dump_2018: tuple[Path, Path]) -> None:
    reader = AmazonReviews(dump_2018[0])
    assert list(reader.items()) == []
    assert reader.reports == []


def test_fingerprint_follows_files_and_options(dump_2018: tuple[Path, Path]) -> None:
    reviews, meta = dump_2018
    base = AmazonReviews(reviews, meta).fingerprint()
    assert AmazonReviews(reviews, meta).fingerprint() == base
    assert AmazonReviews(reviews, meta, on_bad_line="skip").fingerprint() != base
    assert AmazonReviews(reviews, meta, version="2014").fingerprint() != base
    assert AmazonReviews(reviews).fingerprint() != base
    stat = meta.stat()
    meta.write_bytes(meta.read_bytes() + b" ")
    os.utime(meta, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: the new size alone must show
    assert AmazonReviews(reviews, meta).fingerprint() != base


def test_constructor_validates_arguments(tmp_path: Path, dump_2018: tuple[Path, Path]) -> None:
    reviews, _ = dump_2018
    with pytest.raises(FileNotFoundError, match="reviews="):
        AmazonReviews(tmp_path / "missing.json.gz")
    with pytest.raises(FileNotFoundError, match="meta="):
        AmazonReviews(reviews, tmp_path / "missing_meta.json.gz")
    with pytest.raises(ValueError, match="version='2020'"):
        AmazonReviews(reviews, version="2020")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="on_bad_line='ignore'"):
        AmazonReviews(reviews, on_bad_line="ignore")  # type: ignore[arg-type]


def test_html_entities_in_meta_text_are_unescaped(tmp_path: Path) -> None:
    reviews = write_lines(tmp_path / "Toys.json", [review_2018("U1", "I1", 5.0, 1472688000)])
    meta = {
        "asin": "I1",
        "title": "Tom &amp; Jerry &quot;Deluxe&quot; &#39;Set&#39; &lt;2 pack&gt;",
        "category": ["Clothing, Shoes &amp; Jewelry", "Caf&eacute;"],
        "brand": "A&amp;B",
        "description": ["Fish &amp; chips &amp;amp; more"],  # escaped twice in the page: one level is kept
    }
    item = next(AmazonReviews(reviews, write_lines(tmp_path / "meta_Toys.json", [json.dumps(meta)])).items())
    assert item.title == "Tom & Jerry \"Deluxe\" 'Set' <2 pack>"
    assert item.categories == ("Clothing, Shoes & Jewelry", "Café")
    assert item.brand == "A&B"
    assert item.description == "Fish & chips &amp; more"
