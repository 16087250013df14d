"""load: every input format, local and from S3 (moto), and the one-line errors naming the key."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from kubetune.data.cache import input_checksum, sha256_file
from kubetune.data.load import check_columns, detect_format, load_table
from kubetune.errors import DataError

from .conftest import ledger, write_table

FORMATS = ["ledger.csv", "ledger.csv.gz", "ledger.parquet", "ledger.jsonl", "ledger_hf"]


def as_records(frame: pd.DataFrame) -> list[dict]:
    return [{k: (None if pd.isna(v) else v) for k, v in row.items()} for row in frame.astype(object).to_dict("records")]


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_loads_the_same_rows(tmp_path: Path, name: str):
    frame = ledger(30)
    path = write_table(frame, tmp_path / name)
    loaded = load_table(str(path), "data.uri", text_columns=["account_code"])
    assert list(loaded.columns) == list(frame.columns)
    expected = frame.assign(account_code=frame["account_code"].astype(str))
    assert as_records(loaded) == as_records(expected)


def test_csv_gz_is_really_compressed(tmp_path: Path):
    path = write_table(ledger(10), tmp_path / "ledger.csv.gz")
    with gzip.open(path, "rt") as handle:
        assert handle.readline().startswith("line_id,")


def test_label_column_keeps_leading_zeros_in_csv(tmp_path: Path):
    path = tmp_path / "codes.csv"
    path.write_text("text,code\nrent,0420\nfuel,0007\n")
    loaded = load_table(str(path), "data.uri", text_columns=["code"])
    assert loaded["code"].tolist() == ["0420", "0007"]


def test_integer_column_with_gaps_stays_integer(tmp_path: Path):
    path = tmp_path / "gaps.csv"
    path.write_text("dept,label\n12,a\n,b\n7,c\n")
    loaded = load_table(str(path), "data.uri")
    assert loaded["dept"].tolist()[0] == 12 and isinstance(loaded["dept"].tolist()[0], int)
    assert pd.isna(loaded["dept"].tolist()[1])


def test_column_mixing_numbers_and_text_becomes_text(tmp_path: Path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"amount": 12.5, "label": "a"}\n{"amount": "(3.00)", "label": "b"}\n')
    loaded = load_table(str(path), "data.uri")
    assert loaded["amount"].tolist() == ["12.5", "(3.00)"]


def test_max_rows_reads_the_first_rows(tmp_path: Path):
    path = write_table(ledger(50), tmp_path / "ledger.csv")
    loaded = load_table(str(path), "data.uri", max_rows=7)
    assert loaded["line_id"].tolist() == [f"L{i:04d}" for i in range(7)]


def test_explicit_format_overrides_the_name(tmp_path: Path):
    path = tmp_path / "export.txt"
    ledger(5).to_csv(path, index=False)
    assert len(load_table(str(path), "data.uri", data_format="csv")) == 5


def test_demo_uri_generates_the_ledger():
    loaded = load_table("demo://ledger?rows=40&seed=3", "data.uri")
    assert len(loaded) == 40 and "account_code" in loaded.columns


# ---------------------------------------------------------------------------------------- errors
def test_missing_file_names_the_key(tmp_path: Path):
    with pytest.raises(DataError, match=r"^data\.test_uri: .*nope\.csv not found"):
        load_table(str(tmp_path / "nope.csv"), "data.test_uri")


def test_unknown_format_names_data_format(tmp_path: Path):
    path = tmp_path / "ledger.xlsx"
    path.write_text("x")
    with pytest.raises(DataError, match=r"^data\.uri: cannot tell the format of .*set data\.format"):
        load_table(str(path), "data.uri")


def test_detect_format_from_names():
    assert [detect_format(n, "auto", "data.uri", False) for n in ("a.csv", "a.CSV.gz", "a.parquet", "a.jsonl", "a.json")] == [
        "csv", "csv", "parquet", "jsonl", "jsonl"]
    assert detect_format("some/dir", "auto", "data.uri", True) == "hf"


def test_empty_file_is_an_error(tmp_path: Path):
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(DataError, match=r"^data\.uri: .*empty\.csv has no rows"):
        load_table(str(path), "data.uri")


def test_header_only_file_is_an_error(tmp_path: Path):
    path = tmp_path / "header.csv"
    path.write_text("text,label\n")
    with pytest.raises(DataError, match=r"^data\.uri: .*header\.csv has no rows"):
        load_table(str(path), "data.uri")


def test_unreadable_parquet_is_an_error(tmp_path: Path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"^data\.uri: cannot read .*broken\.parquet as parquet"):
        load_table(str(path), "data.uri")


def test_directory_that_is_not_a_dataset_is_an_error(tmp_path: Path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"^data\.uri: .*not a saved Hugging Face dataset"):
        load_table(str(tmp_path / "folder"), "data.uri")


def test_dataset_dict_directory_asks_for_one_split(tmp_path: Path):
    import datasets

    split = datasets.Dataset.from_pandas(ledger(6), preserve_index=False)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"^data\.uri: .*holds several splits \(train, test\); .*dd/train"):
        load_table(str(tmp_path / "dd"), "data.uri")


def test_missing_column_names_the_key_and_lists_the_columns():
    frame = ledger(3)
    with pytest.raises(DataError, match=r"^split\.label_column: column 'code' not in data\.uri x\.csv \(columns found: "
                                        r"line_id, supplier, description, amount, payment_date, account_code\)"):
        check_columns(frame, {"split.label_column": ["code"]}, "data.uri", "x.csv")


# ------------------------------------------------------------------------------------------- s3
@pytest.mark.slow
@pytest.mark.parametrize("name", FORMATS)
def test_every_format_loads_from_s3(tmp_path: Path, s3_bucket: str, name: str):
    import s3fs

    frame = ledger(20)
    local = write_table(frame, tmp_path / name)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.put(str(local), f"{s3_bucket}/in/{name}", recursive=local.is_dir())
    loaded = load_table(f"s3://{s3_bucket}/in/{name}", "data.uri", text_columns=["account_code"])
    assert as_records(loaded) == as_records(frame.assign(account_code=frame["account_code"].astype(str)))


@pytest.mark.slow
def test_missing_s3_object_names_the_key(s3_bucket: str):
    with pytest.raises(DataError, match=r"^data\.uri: s3://.*/absent\.csv not found in object storage"):
        load_table(f"s3://{s3_bucket}/absent.csv", "data.uri")


@pytest.mark.slow
def test_checksums_sha256_locally_and_etag_on_s3(tmp_path: Path, s3_bucket: str):
    import s3fs

    local = write_table(ledger(10), tmp_path / "ledger.csv")
    assert input_checksum(str(local)) == {"uri": str(local), "size": local.stat().st_size, "sha256": sha256_file(local)}
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.put(str(local), f"{s3_bucket}/ledger.csv")
    remote = input_checksum(f"s3://{s3_bucket}/ledger.csv")
    assert remote["size"] == local.stat().st_size
    assert remote["etag"] and "sha256" not in remote
