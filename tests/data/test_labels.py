"""Label-map rules: slots, order, dummy names, too many labels, missing labels, labels unseen in train."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kubetune.data.labelize import label_texts, missing_label_rows, unseen_in_train
from kubetune.data.labels import LabelMap
from kubetune.data.stages import preprocess
from kubetune.errors import DataError

from .conftest import ledger, make_config, write_table


def test_real_labels_sorted_first_then_dummy_slots():
    label_map = LabelMap.build(["b", "a", "c", "a"], "code", max_classes=5, dummy_prefix="dummy")
    assert label_map.labels == ("a", "b", "c", "dummy1", "dummy2")
    assert label_map.num_real_labels == 3 and label_map.max_classes == 5
    assert label_map.is_dummy(3) and not label_map.is_dummy(2)


def test_without_max_classes_there_are_no_dummy_slots():
    assert LabelMap.build(["y", "x"], "code", max_classes=None, dummy_prefix="dummy").labels == ("x", "y")


def test_dummy_names_skip_names_of_real_labels():
    label_map = LabelMap.build(["dummy1", "a"], "code", max_classes=4, dummy_prefix="dummy")
    assert label_map.labels == ("a", "dummy1", "dummy2", "dummy3")


def test_too_many_labels_gives_count_and_key():
    with pytest.raises(DataError, match=r"has 3 distinct labels but split\.max_classes is 2; raise split\.max_classes to at least 3"):
        LabelMap.build(["a", "b", "c"], "code", max_classes=2, dummy_prefix="dummy")


def test_label_map_json_round_trip(tmp_path: Path):
    label_map = LabelMap.build(["b", "a"], "code", max_classes=3, dummy_prefix="spare")
    label_map.save(tmp_path)
    assert json.loads((tmp_path / "label_map.json").read_text()) == {
        "label_column": "code", "max_classes": 3, "num_real_labels": 2, "labels": ["a", "b", "spare1"]}
    assert LabelMap.load(tmp_path) == label_map


def test_label_texts_normalise_values():
    values = pd.Series([4010.0, " 4020 ", None, "", np.nan, 7, "A"])
    assert label_texts(values).tolist() == ["4010", "4020", pd.NA, pd.NA, pd.NA, "7", "A"]


def test_dummy_label_counts_as_missing():
    texts = pd.Series(["a", "UNKNOWN", None, "b"], dtype="string")
    assert missing_label_rows(texts, "UNKNOWN").tolist() == [1, 2]
    assert missing_label_rows(texts, None).tolist() == [2]


def test_unseen_in_train_counts_per_split():
    counts = {"train": {"a": 5}, "validation": {"a": 1, "b": 2}, "test": {"c": 3, "b": 1}}
    assert unseen_in_train(counts) == {"validation": {"b": 2}, "test": {"b": 1, "c": 3}}


# --------------------------------------------------------------------------- through the stage
def ledger_with_missing(tmp_path: Path) -> Path:
    frame = ledger(60).astype({"account_code": object})
    frame.loc[[3, 10], "account_code"] = None
    frame.loc[20, "account_code"] = "UNKNOWN"
    return write_table(frame, tmp_path / "ledger.csv")


def test_missing_labels_are_an_error_with_count_and_rows(tmp_path: Path):
    path = ledger_with_missing(tmp_path)
    config = make_config(data={"uri": str(path)}, split={"dummy_label": "UNKNOWN"})
    with pytest.raises(DataError, match=r"^split\.label_column: 3 rows of data\.uri have no label \(empty or 'UNKNOWN'\) "
                                        r"in column 'account_code' \(rows 4, 11, 21; first data row = 1\); fill them in, "
                                        r"or set split\.missing_labels: drop$"):
        preprocess(config, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_missing_labels_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    import datasets

    path = ledger_with_missing(tmp_path)
    config = make_config(data={"uri": str(path)}, split={"dummy_label": "UNKNOWN", "missing_labels": "drop"})
    with caplog.at_level(logging.WARNING, logger="kubetune.data.stages"):
        result = preprocess(config, str(tmp_path / "out"))
    assert sum(result.rows.values()) == 57
    message = "labels: dropped 3 rows of data.uri without a label in column 'account_code' (split.missing_labels: drop)"
    assert message in caplog.messages
    kept = set().union(*(datasets.load_from_disk(str(tmp_path / "out"))[s]["line_id"] for s in result.rows))
    assert not kept & {"L0003", "L0010", "L0020"}
    assert message in json.loads((tmp_path / "out" / "dataset_metadata.json").read_text())["warnings"]


def test_labels_unseen_in_train_are_a_warning_with_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    train = write_table(ledger(40), tmp_path / "train.csv")
    test_frame = ledger(8, seed=5)
    test_frame.loc[[0, 1], "account_code"] = "9999"
    test_frame.loc[2, "account_code"] = "8888"
    test = write_table(test_frame, tmp_path / "test.csv")
    config = make_config(data={"uri": str(train), "test_uri": str(test)})
    with caplog.at_level(logging.WARNING, logger="kubetune.data.stages"):
        result = preprocess(config, str(tmp_path / "out"))
    assert "labels: 2 labels of the test split (3 rows) never occur in train; the model cannot learn them" in caplog.messages
    label_map = LabelMap.load(tmp_path / "out")
    assert {"8888", "9999"} <= set(label_map.real_labels)  # they get slots, so the rows can be evaluated
    assert result.num_real_labels == 6


def test_too_many_labels_stops_before_any_output(tmp_path: Path):
    path = write_table(ledger(40), tmp_path / "ledger.csv")
    config = make_config(data={"uri": str(path)}, split={"max_classes": 3})
    with pytest.raises(DataError, match=r"column 'account_code' has 4 distinct labels but split\.max_classes is 3"):
        preprocess(config, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
