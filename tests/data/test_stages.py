"""The preprocess and tokenize stages: output layout, metadata, column checks, the cache, S3 outputs."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import datasets
import pytest

import kubetune
from kubetune.data import stages
from kubetune.data.serialize import WHOLE_TEXT, format_value
from kubetune.data.stages import preprocess, tokenize
from kubetune.errors import ConfigError, DataError, KubetuneError

from .conftest import ledger, make_config, write_table


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return write_table(ledger(100), tmp_path / "ledger.csv")


def test_preprocess_output_layout_and_metadata(tmp_path: Path, data: Path):
    result = preprocess(make_config(data={"uri": str(data)}, split={"max_classes": 6}), str(tmp_path / "pre"))
    out = tmp_path / "pre"
    assert sorted(p.name for p in out.iterdir()) == [
        "_COMPLETE", "dataset_dict.json", "dataset_metadata.json", "label_map.json", "test", "train", "validation"]
    dataset = datasets.load_from_disk(str(out))
    assert list(dataset) == ["train", "validation", "test"]
    assert dataset["train"].column_names == dataset["validation"].column_names == ["text", "labels", "line_id"]
    # The test split also keeps each row's raw columns but the label (the champion gate scores other models on them).
    raw = ["raw.line_id", "raw.supplier", "raw.description", "raw.amount", "raw.payment_date"]
    assert dataset["test"].column_names == ["text", "labels", "line_id", *raw]
    assert dataset["train"].features["labels"] == datasets.Value("int64")
    assert result == stages.PreprocessResult(str(out), {"train": 70, "validation": 10, "test": 20}, 4, 6, False, result.cache_key)

    metadata = json.loads((out / "dataset_metadata.json").read_text())
    assert set(metadata) == {"stage", "kubetune_version", "cache_key", "config", "inputs", "input_fingerprint", "rows",
                             "class_counts", "label_map", "split", "text_columns", "warnings", "created_at"}
    assert metadata["stage"] == "preprocess" and metadata["kubetune_version"] == kubetune.__version__
    assert set(metadata["config"]) == {"data", "split", "serialize"} and metadata["config"]["data"]["uri"] == str(data)
    assert metadata["inputs"]["data.uri"]["sha256"] and metadata["inputs"]["data.uri"]["size"] == data.stat().st_size
    assert metadata["rows"] == result.rows
    assert sum(metadata["class_counts"]["test"].values()) == 20
    assert metadata["label_map"]["labels"] == ["4010", "4020", "5100", "6100", "dummy1", "dummy2"]
    assert metadata["split"]["method"] == "stratified" and metadata["split"]["seed"] == 1

    # Rows keep their label: line_id → account_code of the input agrees with the stored slots.
    frame = ledger(100).set_index("line_id")
    names = metadata["label_map"]["labels"]
    for row in dataset["test"]:
        assert names[row["labels"]] == frame.loc[row["line_id"], "account_code"]
        assert row["raw.amount"] == frame.loc[row["line_id"], "amount"] and row["raw.line_id"] == row["line_id"]
        assert row["text"].startswith(f"supplier: {frame.loc[row['line_id'], 'supplier']}, description: order ")


def test_grouped_split_through_the_stage(tmp_path: Path, data: Path):
    config = make_config(data={"uri": str(data)}, split={"group_column": "supplier", "test_size": 0.2, "val_size": 0.2})
    preprocess(config, str(tmp_path / "pre"))
    dataset = datasets.load_from_disk(str(tmp_path / "pre"))
    frame = ledger(100).set_index("line_id")
    sides = {name: {frame.loc[i, "supplier"] for i in dataset[name]["line_id"]} for name in dataset}
    assert not (sides["train"] & sides["test"]) and not (sides["train"] & sides["validation"])
    metadata = json.loads((tmp_path / "pre" / "dataset_metadata.json").read_text())
    assert metadata["split"]["groups"] == {name: len(s) for name, s in sides.items()}


def test_separate_test_file_is_used_as_given(tmp_path: Path, data: Path):
    test_file = write_table(ledger(15, seed=9), tmp_path / "test.parquet")
    result = preprocess(make_config(data={"uri": str(data), "test_uri": str(test_file)}), str(tmp_path / "pre"))
    assert result.rows == {"train": 90, "validation": 10, "test": 15}
    test = datasets.load_from_disk(str(tmp_path / "pre"))["test"]
    assert list(test["line_id"]) == list(ledger(15, seed=9)["line_id"])


def test_data_uri_argument_overrides_the_config(tmp_path: Path, data: Path):
    result = preprocess(make_config(data={"uri": "/nowhere.csv"}), str(tmp_path / "pre"), data_uri=str(data))
    assert sum(result.rows.values()) == 100


def test_demo_data_through_the_stage(tmp_path: Path):
    config = make_config(data={"uri": "demo://ledger?rows=300&seed=1"},
                         serialize={"text_columns": [], "retain_columns": ["line_id"]})
    result = preprocess(config, str(tmp_path / "pre"))
    assert sum(result.rows.values()) == 300
    text = datasets.load_from_disk(str(tmp_path / "pre"))["train"][0]["text"]
    assert text.startswith("line_id: L001") and ", payment_date: 202" in text  # default text columns: all but the label


def test_serialize_options_reach_the_texts(tmp_path: Path):
    from kubetune.data.demo import generate_ledger

    config = make_config(data={"uri": "demo://ledger?rows=300&seed=1"},
                         serialize={"text_columns": ["supplier", "amount"], "include_column_names": False,
                                    "significant_digits": 2, "retain_columns": ["line_id"]})
    preprocess(config, str(tmp_path / "pre"))
    row = datasets.load_from_disk(str(tmp_path / "pre"))["train"][0]
    source = generate_ledger(300, 1).set_index("line_id").loc[row["line_id"]]
    assert row["text"] == f"{source['supplier']}, {format_value(source['amount'], 2)}"


def test_column_dropout_shortens_training_texts_only(tmp_path: Path, tiny_bert: Path):
    def texts(dropout: float, name: str) -> dict[str, dict[str, str]]:
        config = make_config(tiny_bert, data={"uri": "demo://ledger?rows=400&seed=1"},
                             serialize={"text_columns": ["supplier", "description", "department"],
                                        "include_column_names": True, "column_dropout": dropout,
                                        "retain_columns": ["line_id"]})
        preprocess(config, str(tmp_path / name))
        loaded = datasets.load_from_disk(str(tmp_path / name))
        return {split: dict(zip(loaded[split]["line_id"], loaded[split]["text"], strict=True)) for split in loaded}

    whole, dropped, again = texts(0.0, "whole"), texts(0.4, "dropped"), texts(0.4, "again")
    assert dropped == again  # the same texts on every run
    loaded = datasets.load_from_disk(str(tmp_path / "dropped"))
    # The whole training texts stay beside, for the baseline; validation and test rows need none.
    assert dict(zip(loaded["train"]["line_id"], loaded["train"][WHOLE_TEXT], strict=True)) == whole["train"]
    assert WHOLE_TEXT not in loaded["validation"].column_names and WHOLE_TEXT not in loaded["test"].column_names
    assert WHOLE_TEXT not in datasets.load_from_disk(str(tmp_path / "whole"))["train"].column_names
    config = make_config(tiny_bert, serialize={"column_dropout": 0.4, "retain_columns": ["line_id"]})
    tokenize(config, str(tmp_path / "dropped"), str(tmp_path / "tokenized"))
    tokenized = datasets.load_from_disk(str(tmp_path / "tokenized"))["train"]
    assert tokenized["text"] == loaded["train"]["text"] and tokenized[WHOLE_TEXT] == loaded["train"][WHOLE_TEXT]
    assert dropped["validation"] == whole["validation"] and dropped["test"] == whole["test"]
    assert dropped["train"].keys() == whole["train"].keys()  # the same rows, the split untouched
    shortened = [line for line, text in dropped["train"].items() if text != whole["train"][line]]
    assert 0.5 * len(whole["train"]) < len(shortened) < 0.9 * len(whole["train"])  # 1 - 0.6**3 - 0.4**3 = 72 %
    for line in shortened:
        parts = dropped["train"][line].split(", ")
        assert parts and set(parts) < set(whole["train"][line].split(", "))


# --------------------------------------------------------------------------------- column checks
@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"split": {"label_column": "code"}}, "split.label_column"),
        ({"serialize": {"text_columns": ["supplier", "memo"]}}, "serialize.text_columns"),
        ({"serialize": {"retain_columns": ["row_id"]}}, "serialize.retain_columns"),
        ({"split": {"group_column": "vendor"}}, "split.group_column"),
        ({"split": {"time_column": "posted"}}, "split.time_column"),
    ],
)
def test_missing_column_names_its_key(tmp_path: Path, data: Path, sections: dict, key: str):
    config = make_config(data={"uri": str(data)}, **sections)
    with pytest.raises(DataError, match=rf"^{key.replace('.', '[.]')}: column '\w+' not in data\.uri .*ledger\.csv \(columns found: "
                                        r"line_id, supplier, description, amount, payment_date, account_code\)"):
        preprocess(config, str(tmp_path / "pre"))


def test_missing_column_in_a_separate_file_names_that_file_key(tmp_path: Path, data: Path):
    validation = write_table(ledger(10).drop(columns=["description"]), tmp_path / "validation.csv")
    config = make_config(data={"uri": str(data), "validation_uri": str(validation)})
    with pytest.raises(DataError, match=r"^serialize\.text_columns: column 'description' not in data\.validation_uri "):
        preprocess(config, str(tmp_path / "pre"))


def test_retained_column_clashing_with_an_output_column_is_an_error(tmp_path: Path, data: Path):
    with pytest.raises(ConfigError, match=r"^serialize\.retain_columns: 'labels' would be overwritten"):
        preprocess(make_config(data={"uri": str(data)}, serialize={"retain_columns": ["labels"]}), str(tmp_path / "pre"))


def test_no_data_uri_is_an_error(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"^data\.uri: no data given"):
        preprocess(make_config(), str(tmp_path / "pre"))


def test_output_that_is_a_users_directory_is_never_replaced(tmp_path: Path, data: Path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("precious")
    with pytest.raises(KubetuneError, match="exists and is not a kubetune preprocess output"):
        preprocess(make_config(data={"uri": str(data)}), str(mine))
    assert (mine / "thesis.txt").read_text() == "precious"


# ------------------------------------------------------------------------------------------ cache
def arrow_mtimes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*.arrow")}


def test_preprocess_same_inputs_and_config_reuse_the_output(tmp_path: Path, data: Path, caplog: pytest.LogCaptureFixture):
    config = make_config(data={"uri": str(data)})
    first = preprocess(config, str(tmp_path / "pre"))
    before = arrow_mtimes(tmp_path / "pre")
    started = time.perf_counter()
    with caplog.at_level("INFO", logger="kubetune.data.stages"):
        again = preprocess(config, str(tmp_path / "pre"))
    assert time.perf_counter() - started < 2
    assert again.reused and not first.reused
    assert again.cache_key == first.cache_key and again.rows == first.rows
    assert arrow_mtimes(tmp_path / "pre") == before
    assert any(m.startswith(f"preprocess: reusing {tmp_path / 'pre'} (cache key {first.cache_key}") for m in caplog.messages)


def test_preprocess_changed_config_key_recomputes(tmp_path: Path, data: Path):
    first = preprocess(make_config(data={"uri": str(data)}), str(tmp_path / "pre"))
    old_test = list(datasets.load_from_disk(str(tmp_path / "pre"))["test"]["line_id"])
    second = preprocess(make_config(data={"uri": str(data)}, split={"seed": 2}), str(tmp_path / "pre"))
    assert not second.reused and second.cache_key != first.cache_key
    assert list(datasets.load_from_disk(str(tmp_path / "pre"))["test"]["line_id"]) != old_test
    assert json.loads((tmp_path / "pre" / "dataset_metadata.json").read_text())["cache_key"] == second.cache_key
    assert not list(tmp_path.glob(".pre.*"))  # no staging or retired directories left behind


def test_preprocess_changed_input_recomputes(tmp_path: Path, data: Path):
    config = make_config(data={"uri": str(data)})
    first = preprocess(config, str(tmp_path / "pre"))
    write_table(ledger(100, seed=1), data)
    second = preprocess(config, str(tmp_path / "pre"))
    assert not second.reused and second.cache_key != first.cache_key


def test_preprocess_cache_ignores_paths_and_process_counts(tmp_path: Path, data: Path):
    first = preprocess(make_config(data={"uri": str(data)}), str(tmp_path / "pre"))
    moved = tmp_path / "elsewhere" / "copy.csv"
    moved.parent.mkdir()
    shutil.copyfile(data, moved)
    config = make_config(data={"uri": str(moved)}, split={"labelize_num_proc": 2}, serialize={"num_proc": 2})
    again = preprocess(config, str(tmp_path / "pre"))
    assert again.reused and again.cache_key == first.cache_key


def test_new_kubetune_version_recomputes(tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch):
    config = make_config(data={"uri": str(data)})
    first = preprocess(config, str(tmp_path / "pre"))
    monkeypatch.setattr(stages, "__version__", "99.0.0")
    second = preprocess(config, str(tmp_path / "pre"))
    assert not second.reused and second.cache_key != first.cache_key


def test_tokenize_cache_reuse_and_invalidation(tmp_path: Path, data: Path, tiny_bert: Path, tiny_qwen2: Path):
    config = make_config(tiny_bert, data={"uri": str(data)})
    preprocess(config, str(tmp_path / "pre"))
    first = tokenize(config, str(tmp_path / "pre"), str(tmp_path / "tok"))
    before = arrow_mtimes(tmp_path / "tok")
    again = tokenize(make_config(tiny_bert, data={"uri": str(data)}, tokenize={"num_proc": 2, "batch_size": 7}),
                     str(tmp_path / "pre"), str(tmp_path / "tok"))
    assert again.reused and again.cache_key == first.cache_key and again.diagnostics == first.diagnostics
    assert arrow_mtimes(tmp_path / "tok") == before

    longer = tokenize(make_config(tiny_bert, tokenize={"max_length": 40}), str(tmp_path / "pre"), str(tmp_path / "tok"))
    assert not longer.reused and longer.cache_key != first.cache_key

    other_tokenizer = tokenize(make_config(tiny_qwen2, tokenize={"max_length": 40}), str(tmp_path / "pre"), str(tmp_path / "tok"))
    assert not other_tokenizer.reused and other_tokenizer.cache_key != longer.cache_key

    preprocess(make_config(data={"uri": str(data)}, split={"seed": 5}), str(tmp_path / "pre"))
    new_input = tokenize(make_config(tiny_qwen2, tokenize={"max_length": 40}), str(tmp_path / "pre"), str(tmp_path / "tok"))
    assert not new_input.reused and new_input.cache_key != other_tokenizer.cache_key


def test_tokenize_output_metadata_extends_the_preprocess_metadata(tmp_path: Path, data: Path, tiny_bert: Path):
    config = make_config(tiny_bert, data={"uri": str(data)})
    preprocess(config, str(tmp_path / "pre"))
    result = tokenize(config, str(tmp_path / "pre"), str(tmp_path / "tok"))
    out = tmp_path / "tok"
    assert sorted(p.name for p in out.iterdir()) == [
        "_COMPLETE", "dataset_dict.json", "dataset_metadata.json", "label_map.json", "test", "tokenize_diagnostics.json",
        "train", "validation"]
    assert (out / "label_map.json").read_text() == (tmp_path / "pre" / "label_map.json").read_text()
    pre = json.loads((tmp_path / "pre" / "dataset_metadata.json").read_text())
    metadata = json.loads((out / "dataset_metadata.json").read_text())
    assert {k: v for k, v in metadata.items() if k != "tokenize"} == pre
    assert metadata["tokenize"]["cache_key"] == result.cache_key
    assert metadata["tokenize"]["tokenizer"] == str(tiny_bert) and metadata["tokenize"]["max_length"] == 64
    assert metadata["tokenize"]["columns"] == ["input_ids", "attention_mask", "labels", "length", "text", "line_id"]


# ------------------------------------------------------------------------------------------- S3
@pytest.mark.slow
def test_stages_read_and_write_object_storage(tmp_path: Path, s3_bucket: str, tiny_bert: Path):
    import s3fs

    local = write_table(ledger(80), tmp_path / "ledger.csv.gz")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.put(str(local), f"{s3_bucket}/in/ledger.csv.gz")
    config = make_config(tiny_bert, data={"uri": f"s3://{s3_bucket}/in/ledger.csv.gz"})
    pre = preprocess(config, f"s3://{s3_bucket}/pre")
    tok = tokenize(config, f"s3://{s3_bucket}/pre", f"s3://{s3_bucket}/tok")
    assert fs.exists(f"{s3_bucket}/tok/_COMPLETE") and fs.exists(f"{s3_bucket}/tok/tokenize_diagnostics.json")
    fs.get(f"{s3_bucket}/tok/", str(tmp_path / "tok") + "/", recursive=True)
    loaded = datasets.load_from_disk(str(tmp_path / "tok"))
    assert {name: len(split) for name, split in loaded.items()} == pre.rows == tok.rows

    metadata = json.loads(fs.cat_file(f"{s3_bucket}/pre/dataset_metadata.json"))
    assert set(metadata["inputs"]["data.uri"]) == {"uri", "size", "etag"}
    assert preprocess(config, f"s3://{s3_bucket}/pre").reused
    assert tokenize(config, f"s3://{s3_bucket}/pre", f"s3://{s3_bucket}/tok").reused


# ------------------------------------------------------------------------------------------ ranks
def test_other_ranks_reuse_rank_zeros_output_silently(tmp_path: Path, data: Path, tiny_bert: Path,
                                                      monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    config = make_config(tiny_bert, data={"uri": str(data)})
    first = preprocess(config, str(tmp_path / "pre"))
    tokenized = tokenize(config, str(tmp_path / "pre"), str(tmp_path / "tok"))
    capsys.readouterr()
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert preprocess(config, str(tmp_path / "pre")) == stages.PreprocessResult(
        first.output_uri, first.rows, first.num_real_labels, first.max_classes, True, first.cache_key)
    assert tokenize(config, str(tmp_path / "pre"), str(tmp_path / "tok")).reused
    assert tokenized.cache_key == json.loads((tmp_path / "tok" / "dataset_metadata.json").read_text())["tokenize"]["cache_key"]
    assert capsys.readouterr().out == ""


def test_other_ranks_never_write(tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(KubetuneError, match=r"^rank 1: no complete preprocess output at .*pre after rank 0 ran"):
        preprocess(make_config(data={"uri": str(data)}), str(tmp_path / "pre"))
    assert not (tmp_path / "pre").exists()
