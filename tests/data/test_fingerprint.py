"""`input_fingerprint`: the digest of the run's data inputs that the pipeline's validate step hands to
preprocess, so that Kubeflow's step cache notices a changed file behind an unchanged URI."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from kubetune.data.stages import input_fingerprint, preprocess
from kubetune.errors import ConfigError, DataError

from .conftest import ledger, make_config, write_table


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    return {
        "uri": write_table(ledger(40), tmp_path / "train.csv"),
        "validation_uri": write_table(ledger(10, seed=1), tmp_path / "validation.parquet"),
        "test_uri": write_table(ledger(10, seed=2), tmp_path / "test.jsonl"),
    }


def config_of(files: dict[str, Path]):
    return make_config(data={key: str(path) for key, path in files.items()})


def test_fingerprint_is_short_hex_and_stable(files: dict[str, Path]):
    fingerprint = input_fingerprint(config_of(files))
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint)
    assert input_fingerprint(config_of(files)) == fingerprint


@pytest.mark.parametrize("key", ["uri", "validation_uri", "test_uri"])
def test_fingerprint_changes_when_any_input_file_changes(files: dict[str, Path], key: str):
    before = input_fingerprint(config_of(files))
    write_table(ledger(10, seed=7), files[key])
    assert input_fingerprint(config_of(files)) != before


def test_fingerprint_follows_content_not_location(tmp_path: Path, files: dict[str, Path]):
    before = input_fingerprint(config_of(files))
    moved = tmp_path / "elsewhere" / "train.csv"
    moved.parent.mkdir()
    shutil.copyfile(files["uri"], moved)
    assert input_fingerprint(config_of({**files, "uri": moved})) == before


def test_fingerprint_tells_which_input_is_which(files: dict[str, Path]):
    swapped = {**files, "validation_uri": files["test_uri"], "test_uri": files["validation_uri"]}
    assert input_fingerprint(config_of(swapped)) != input_fingerprint(config_of(files))


def test_fingerprint_of_a_dataset_directory_changes_with_its_files(tmp_path: Path):
    directory = write_table(ledger(20), tmp_path / "ledger_hf")
    config = make_config(data={"uri": str(directory)})
    before = input_fingerprint(config)
    shutil.rmtree(directory)
    write_table(ledger(20, seed=3), directory)
    assert input_fingerprint(config) != before


def test_demo_uri_fingerprint_is_its_text():
    first = input_fingerprint(make_config(data={"uri": "demo://ledger?rows=100&seed=0"}))
    assert input_fingerprint(make_config(data={"uri": "demo://ledger?rows=100&seed=0"})) == first
    assert input_fingerprint(make_config(data={"uri": "demo://ledger?rows=100&seed=1"})) != first
    assert input_fingerprint(make_config(data={"uri": "demo://ledger?rows=101&seed=0"})) != first


@pytest.mark.parametrize("key", ["uri", "validation_uri", "test_uri"])
def test_missing_input_is_a_one_line_error_naming_its_key(tmp_path: Path, files: dict[str, Path], key: str):
    absent = tmp_path / "absent.csv"
    with pytest.raises(DataError, match=rf"^data\.{key}: {re.escape(str(absent))} not found \(relative paths start at "
                                        rf".*\); point data\.{key} at an existing file or dataset directory$"):
        input_fingerprint(config_of({**files, key: absent}))


def test_bad_demo_uri_is_an_error_naming_data_uri():
    with pytest.raises(DataError, match=r"^data\.uri: unknown demo data 'demo://ledgers'"):
        input_fingerprint(make_config(data={"uri": "demo://ledgers"}))


def test_no_data_uri_is_an_error():
    with pytest.raises(ConfigError, match=r"^data\.uri: no data given"):
        input_fingerprint(make_config())


def test_preprocess_records_the_fingerprint(tmp_path: Path, files: dict[str, Path]):
    config = config_of(files)
    preprocess(config, str(tmp_path / "pre"))
    metadata = json.loads((tmp_path / "pre" / "dataset_metadata.json").read_text())
    assert metadata["input_fingerprint"] == input_fingerprint(config)


@pytest.mark.slow
def test_fingerprint_of_an_s3_object_follows_its_etag(tmp_path: Path, s3_bucket: str):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    config = make_config(data={"uri": f"s3://{s3_bucket}/ledger.csv"})
    fs.put(str(write_table(ledger(30), tmp_path / "a.csv")), f"{s3_bucket}/ledger.csv")
    before = input_fingerprint(config)
    assert input_fingerprint(config) == before
    fs.put(str(write_table(ledger(30, seed=4), tmp_path / "b.csv")), f"{s3_bucket}/ledger.csv")
    assert input_fingerprint(config) != before
    with pytest.raises(DataError, match=rf"^data\.test_uri: s3://{s3_bucket}/absent\.csv not found in object storage"):
        input_fingerprint(make_config(data={"uri": f"s3://{s3_bucket}/ledger.csv", "test_uri": f"s3://{s3_bucket}/absent.csv"}))
