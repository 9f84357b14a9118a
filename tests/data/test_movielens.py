"""Tests for lightning_rec/data/movielens.py on small folders in each release's real layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lightning_rec.data import DataFormatError, Interaction, InteractionSource, ItemMeta, MovieLens

# 19 flags: unknown, Action, Adventure, Animation, Children's, Comedy, Crime, Documentary, Drama, Fantasy,
# Film-Noir, Horror, Musical, Mystery, Romance, Sci-Fi, Thriller, War, Western
TOY_STORY_FLAGS = "0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0"
MISERABLES_FLAGS = "0|0|0|0|0|0|0|0|1|0|0|0|1|0|0|0|0|0|0"
U_ITEM = [
    f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|{TOY_STORY_FLAGS}",
    f"543|Misérables, Les (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Mis%E9rables|{MISERABLES_FLAGS}",
]
GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
          "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
          "War", "Western"]  # fmt: skip


def write(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes("".join(line + "\n" for line in lines).encode(encoding))
    return path


@pytest.fixture
def ml_100k(tmp_path: Path) -> Path:
    root = tmp_path / "ml-100k"
    root.mkdir()
    write(root / "u.data", ["196\t242\t3\t881250949", "186\t302\t3\t891717742", "22\t377\t1\t878887116"])
    write(root / "u.item", U_ITEM, encoding="latin-1")
    return root


@pytest.fixture
def ml_1m(tmp_path: Path) -> Path:
    root = tmp_path / "ml-1m"
    root.mkdir()
    write(root / "ratings.dat", ["1::1193::5::978300760", "1::661::3::978302109"])
    write(
        root / "movies.dat",
        ["1::Toy Story (1995)::Animation|Children's|Comedy", "2716::Château de ma mère, Le (1990)::Drama"],
        encoding="latin-1",
    )
    return root


@pytest.fixture
def ml_latest(tmp_path: Path) -> Path:
    root = tmp_path / "ml-latest-small"
    root.mkdir()
    write(root / "ratings.csv", ["userId,movieId,rating,timestamp", "1,1,4.0,964982703", "1,3,4.5,964981247"])
    write(
        root / "movies.csv",
        [
            "movieId,title,genres",
            "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy",
            '11,"American President, The (1995)",Comedy|Drama|Romance',
            '1730,"Kôkaku kidôtai, ""Ghost"" (1995)",Animation|Sci-Fi',
            "182727,A Christmas Story Live! (2017),(no genres listed)",
        ],
    )
    return root


def test_100k_ratings_and_latin1_items(ml_100k: Path) -> None:
    assert b"Mis\xe9rables" in (ml_100k / "u.item").read_bytes()  # latin-1 on disk, not UTF-8
    reader = MovieLens(ml_100k)
    assert reader.variant == "100k"
    assert isinstance(reader, InteractionSource)
    assert list(reader.interactions()) == [
        Interaction("196", "242", 3.0, 881250949.0),
        Interaction("186", "302", 3.0, 891717742.0),
        Interaction("22", "377", 1.0, 878887116.0),
    ]
    assert list(reader.items()) == [
        ItemMeta("1", "Toy Story (1995)", ("Animation", "Children's", "Comedy")),
        ItemMeta("543", "Misérables, Les (1995)", ("Drama", "Musical")),
    ]


def test_100k_genre_names_come_from_u_genre(ml_100k: Path) -> None:
    renamed = [f"{name.upper()}|{index}" for index, name in enumerate(GENRES)]
    write(ml_100k / "u.genre", [*reversed(renamed), ""])  # any line order; a trailing blank line as shipped
    reader = MovieLens(ml_100k)
    assert [item.categories for item in reader.items()] == [
        ("ANIMATION", "CHILDREN'S", "COMEDY"),
        ("DRAMA", "MUSICAL"),
    ]
    assert reader.genre_file == ml_100k / "u.genre"


def test_100k_u_genre_with_a_gap_is_rejected(ml_100k: Path) -> None:
    write(ml_100k / "u.genre", ["unknown|0", "Action|2"])
    with pytest.raises(DataFormatError, match=r"u\.genre: field 'index': expected 0\.\.1 once each"):
        MovieLens(ml_100k)


def test_1m_double_colon_and_latin1(ml_1m: Path) -> None:
    reader = MovieLens(ml_1m)
    assert reader.variant == "1m"
    assert list(reader.interactions()) == [
        Interaction("1", "1193", 5.0, 978300760.0),
        Interaction("1", "661", 3.0, 978302109.0),
    ]
    assert list(reader.items()) == [
        ItemMeta("1", "Toy Story (1995)", ("Animation", "Children's", "Comedy")),
        ItemMeta("2716", "Château de ma mère, Le (1990)", ("Drama",)),
    ]


def test_csv_quoted_titles_and_no_genres(ml_latest: Path) -> None:
    reader = MovieLens(ml_latest)
    assert reader.variant == "csv"
    assert list(reader.interactions()) == [
        Interaction("1", "1", 4.0, 964982703.0),
        Interaction("1", "3", 4.5, 964981247.0),
    ]
    assert list(reader.items()) == [
        ItemMeta("1", "Toy Story (1995)", ("Adventure", "Animation", "Children", "Comedy", "Fantasy")),
        ItemMeta("11", "American President, The (1995)", ("Comedy", "Drama", "Romance")),
        ItemMeta("1730", 'Kôkaku kidôtai, "Ghost" (1995)', ("Animation", "Sci-Fi")),
        ItemMeta("182727", "A Christmas Story Live! (2017)", ()),
    ]


def test_csv_columns_are_found_by_header(tmp_path: Path) -> None:
    write(tmp_path / "ratings.csv", ["timestamp,rating,movieId,userId", "964982703,4.0,1,7"])
    write(tmp_path / "movies.csv", ["movieId,title,genres"])
    assert list(MovieLens(tmp_path).interactions()) == [Interaction("7", "1", 4.0, 964982703.0)]


def test_csv_header_without_a_required_column(ml_latest: Path) -> None:
    write(ml_latest / "ratings.csv", ["userId,movieId,rating", "1,1,4.0"])
    with pytest.raises(DataFormatError, match=r"ratings\.csv:1: field 'timestamp': missing from the header"):
        MovieLens(ml_latest)


@pytest.mark.parametrize(
    ("bad_line", "field", "reason"),
    [
        ("196\t242\t3", None, "expected 4 fields"),
        ("196\t242\t3\tyesterday", "timestamp", "expected a number"),
        ("196\t242\tgood\t881250949", "rating", "expected a number"),
        ("\t242\t3\t881250949", "user id", "expected a non-empty id"),
    ],
)
def test_100k_structural_errors_name_file_line_and_field(
    ml_100k: Path, bad_line: str, field: str | None, reason: str
) -> None:
    path = write(ml_100k / "u.data", ["196\t242\t3\t881250949", bad_line])
    with pytest.raises(DataFormatError) as caught:
        list(MovieLens(ml_100k).interactions())
    error = caught.value
    assert (error.path, error.line, error.field) == (str(path), 2, field)
    assert f"{path}:2:" in str(error)
    assert reason in str(error)
    if field is not None:
        assert repr(field) in str(error)


def test_100k_bad_genre_flag(ml_100k: Path) -> None:
    write(ml_100k / "u.item", [U_ITEM[0], U_ITEM[1].replace("|1|0|0|0|1|", "|1|0|0|0|yes|")], "latin-1")
    with pytest.raises(DataFormatError, match=r"u\.item:2: field 'Musical': expected a genre flag 0 or 1"):
        list(MovieLens(ml_100k).items())


def test_csv_error_line_numbers_count_physical_lines(ml_latest: Path) -> None:
    # The quoted title spans two lines: the bad row after it is on line 4.
    write(ml_latest / "movies.csv", ["movieId,title,genres", '5,"Two\nLines (1999)",Drama', "6,Short (2000)"])
    with pytest.raises(DataFormatError, match=r"movies\.csv:4: expected 3 fields"):
        list(MovieLens(ml_latest).items())


def test_1m_non_numeric_timestamp(ml_1m: Path) -> None:
    write(ml_1m / "ratings.dat", ["1::1193::5::978300760", "1::661::3::978302109", "2::1::4::soon"])
    with pytest.raises(DataFormatError, match=r"ratings\.dat:3: field 'Timestamp': expected a number"):
        list(MovieLens(ml_1m).interactions())


def test_skip_keeps_good_records_and_counts_reasons(ml_latest: Path) -> None:
    lines = ["userId,movieId,rating,timestamp", "1,1,4.0,10", "1,2,4.0", "1,3,x,30", "2,4,5.0,40", "2,5,1,"]
    path = write(ml_latest / "ratings.csv", lines)
    reader = MovieLens(ml_latest, on_bad_line="skip")
    assert list(reader.interactions()) == [Interaction("1", "1", 4.0, 10.0), Interaction("2", "4", 5.0, 40.0)]
    (report,) = reader.reports
    assert (report.path, report.lines, report.records) == (str(path), 5, 2)
    assert dict(report.skipped) == {"expected 4 fields": 1, "rating: expected a number": 1,
                                    "timestamp: expected a number": 1}  # fmt: skip


def test_rereading_replaces_the_files_report(ml_100k: Path) -> None:
    reader = MovieLens(ml_100k)
    for _ in range(2):
        list(reader.interactions())
        list(reader.items())
    assert [(Path(r.path).name, r.lines, r.records) for r in reader.reports] == [
        ("u.data", 3, 3),
        ("u.item", 2, 2),
    ]


def test_auto_detection_and_explicit_variant(ml_100k: Path, ml_1m: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"root=.*found none of u\.data \(100k\)"):
        MovieLens(tmp_path)
    write(ml_100k / "ratings.csv", ["userId,movieId,rating,timestamp"])
    with pytest.raises(ValueError, match="found the ratings of 100k and csv; pass variant= to pick one"):
        MovieLens(ml_100k)
    assert MovieLens(ml_100k, variant="100k").variant == "100k"
    with pytest.raises(FileNotFoundError, match=r"no movies\.csv, expected the MovieLens csv files"):
        MovieLens(ml_100k, variant="csv")
    with pytest.raises(ValueError, match="variant='10m'"):
        MovieLens(ml_1m, variant="10m")  # type: ignore[arg-type]
    with pytest.raises(NotADirectoryError, match="root="):
        MovieLens(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="on_bad_line='warn'"):
        MovieLens(ml_1m, on_bad_line="warn")  # type: ignore[arg-type]


def test_fingerprint_follows_files_and_options(ml_100k: Path) -> None:
    base = MovieLens(ml_100k).fingerprint()
    assert MovieLens(ml_100k).fingerprint() == base
    assert MovieLens(ml_100k, on_bad_line="skip").fingerprint() != base
    write(ml_100k / "u.genre", [f"{name}|{index}" for index, name in enumerate(GENRES)])
    with_genres = MovieLens(ml_100k).fingerprint()
    assert with_genres != base
    ratings = ml_100k / "u.data"
    stat = ratings.stat()
    ratings.write_text(ratings.read_text() + "1\t1\t1\t1\n")
    os.utime(ratings, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: the new size alone must show
    assert MovieLens(ml_100k).fingerprint() != with_genres
