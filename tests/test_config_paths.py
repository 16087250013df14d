"""Data paths in a config file are read relative to the file; on the command line, relative to the cwd."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_shipped_config_data_paths_do_not_depend_on_the_working_directory(tmp_path: Path, monkeypatch):
    expected = REPO.parent / "shared" / "datasets" / "banking77"
    for cwd in (REPO, tmp_path):
        monkeypatch.chdir(cwd)
        config = load_config(REPO / "configs" / "banking77.yaml")
        assert config.data.uri == str(expected / "train.csv")
        assert config.data.test_uri == str(expected / "test.csv")


def test_relative_data_paths_resolve_against_the_config_file(tmp_path: Path, monkeypatch):
    folder = tmp_path / "project" / "configs"
    folder.mkdir(parents=True)
    (folder / "run.yaml").write_text(
        "data:\n  uri: ../data/lines.csv\n  validation_uri: val.csv\n  test_uri: /abs/test.csv\n"
        "split:\n  label_column: code\n"
    )
    monkeypatch.chdir(tmp_path)
    config = load_config("project/configs/run.yaml")
    assert config.data.uri == str(tmp_path / "project" / "data" / "lines.csv")
    assert config.data.validation_uri == str(folder / "val.csv")
    assert config.data.test_uri == "/abs/test.csv"


def test_remote_and_generated_uris_are_left_as_written(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  uri: s3://bucket/lines.parquet\n  test_uri: demo://ledger?rows=10&seed=0\n")
    config = load_config(path)
    assert (config.data.uri, config.data.test_uri) == ("s3://bucket/lines.parquet", "demo://ledger?rows=10&seed=0")


@pytest.mark.parametrize("override", ["data.uri=lines.csv", "data.uri=./lines.csv"])
def test_an_override_is_relative_to_the_working_directory(tmp_path: Path, monkeypatch, override: str):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "run.yaml").write_text("data:\n  uri: other.csv\n")
    monkeypatch.chdir(tmp_path)
    config = load_config("configs/run.yaml", [override])
    assert config.data.uri == override.split("=", 1)[1]
