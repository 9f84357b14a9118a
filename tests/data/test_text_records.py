import gzip
import json

import pytest

from lightning_rec.data import DataFormatError, ReadReport, SyntheticTitleCategories, read_text_records


def test_jsonl_gzip_csv_and_tsv_give_the_same_records(tmp_path):
    rows = [("a good lamp", "Lamp"), ('a, quoted "mug"', "Mug"), ("seven", "7")]
    (tmp_path / "t.jsonl").write_text(
        "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in rows)
    )
    with gzip.open(tmp_path / "t.jsonl.gz", "wt") as handle:
        handle.write("\n".join(json.dumps({"text": t, "label": lab}) for t, lab in rows))
    import csv

    for name, delimiter in (("t.csv", ","), ("t.tsv", "\t")):
        with (tmp_path / name).open("w", newline="") as handle:
            writer = csv.writer(handle, delimiter=delimiter)
            writer.writerow(["label", "text"])
            writer.writerows((lab, t) for t, lab in rows)
    for name in ("t.jsonl", "t.jsonl.gz", "t.csv", "t.tsv"):
        assert list(read_text_records(tmp_path / name)) == rows, name


def test_integer_label_and_custom_fields(tmp_path):
    path = tmp_path / "i.jsonl"
    path.write_text('{"prompt": "hi", "response": "there", "id": 3}\n')
    assert list(read_text_records(path, fields=("prompt", "response", "id"))) == [("hi", "there", "3")]


@pytest.mark.parametrize(
    "line, field, reason",
    [
        ('{"text": "x"}', "label", "missing"),
        ('{"text": "", "label": "y"}', "text", "non-empty"),
        ("not json", None, "not valid JSON"),
        ("[1, 2]", None, "JSON object"),
    ],
)
def test_bad_lines_name_file_line_and_field(tmp_path, line, field, reason):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok", "label": "z"}\n\n' + line + "\n")
    with pytest.raises(DataFormatError) as raised:
        list(read_text_records(path))
    assert raised.value.line == 3 and raised.value.field == field and reason in str(raised.value)
    assert str(path) in str(raised.value)
    reports: list[ReadReport] = []
    assert list(read_text_records(path, on_bad_line="skip", reports=reports)) == [("ok", "z")]
    assert reports[0].num_skipped == 1 and reports[0].records == 1


def test_csv_missing_column_and_unknown_suffix(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("text,category\nx,y\n")
    with pytest.raises(DataFormatError, match="label"):
        list(read_text_records(path))
    with pytest.raises(ValueError, match="unknown text-record format"):
        list(read_text_records(tmp_path / "c.parquet"))


def test_synthetic_title_categories(tmp_path):
    task = SyntheticTitleCategories(num_items=300, num_categories=40, seed=1, cache_dir=str(tmp_path))
    records = list(read_text_records(task.path()))
    assert len(records) == 300
    assert len({label for _, label in records}) == 40
    catalogue = task.catalogue
    for item in (0, 17, 299):
        text, label = records[item]
        assert text == catalogue.item_title(item)
        assert label == catalogue.category_name(int(catalogue.item_category[item]))
        assert text.endswith(label)
    mtime = task.path().stat().st_mtime_ns
    assert SyntheticTitleCategories(300, 40, 1, str(tmp_path)).path().stat().st_mtime_ns == mtime
