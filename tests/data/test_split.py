"""split: each method, its determinism, the rare-class fallback and the empty-split errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kubetune.config import SplitConfig
from kubetune.data.split import split_rows
from kubetune.errors import DataError

CARVE = ("test", "validation")


def frame_with(labels: list[str], **columns) -> tuple[pd.DataFrame, pd.Series]:
    frame = pd.DataFrame({"label": labels, **columns})
    return frame, frame["label"].astype(str)


def assert_partition(outcome, rows: int) -> None:
    joined = np.concatenate(list(outcome.positions.values()))
    assert sorted(joined.tolist()) == list(range(rows))


def test_random_split_sizes_and_determinism():
    frame, labels = frame_with(["a"] * 100)
    config = SplitConfig(stratify=False, test_size=0.2, val_size=0.1, seed=7)
    first = split_rows(frame, labels, config, CARVE)
    again = split_rows(frame, labels, config, CARVE)
    other = split_rows(frame, labels, SplitConfig(stratify=False, test_size=0.2, val_size=0.1, seed=8), CARVE)
    assert first.method == "random"
    assert {k: len(v) for k, v in first.positions.items()} == {"train": 70, "test": 20, "validation": 10}
    assert_partition(first, 100)
    assert all(np.array_equal(first.positions[k], again.positions[k]) for k in first.positions)
    assert not np.array_equal(first.positions["test"], other.positions["test"])


def test_stratified_split_keeps_class_shares():
    frame, labels = frame_with(["a"] * 60 + ["b"] * 30 + ["c"] * 10)
    outcome = split_rows(frame, labels, SplitConfig(test_size=0.2, val_size=0.1, seed=1), CARVE)
    assert outcome.method == "stratified"
    assert_partition(outcome, 100)
    counts = {name: labels.iloc[pos].value_counts().to_dict() for name, pos in outcome.positions.items()}
    assert counts == {
        "test": {"a": 12, "b": 6, "c": 2},
        "validation": {"a": 6, "b": 3, "c": 1},
        "train": {"a": 42, "b": 21, "c": 7},
    }


def test_rare_classes_go_to_train_whole_and_are_reported():
    # With test 0.2 and val 0.1 a class needs 5 rows (round(0.5) = 1 for validation); 4 rows is too few.
    frame, labels = frame_with(["big"] * 50 + ["rare"] * 4 + ["tiny"] * 1 + ["five"] * 5)
    outcome = split_rows(frame, labels, SplitConfig(test_size=0.2, val_size=0.1, seed=0), CARVE)
    in_train = set(labels.iloc[outcome.positions["train"]])
    assert {"rare", "tiny"} <= in_train
    assert "rare" not in set(labels.iloc[outcome.positions["test"]]) | set(labels.iloc[outcome.positions["validation"]])
    assert set(labels.iloc[outcome.positions["validation"]]) == {"big", "five"}
    assert outcome.details == {"rare_classes_in_train_only": 2, "rare_rows": 5}
    assert outcome.notes == ["2 classes (5 rows) have too few rows to appear in every split and went to train whole"]


def test_stratified_with_only_rare_classes_is_an_empty_split_error():
    frame, labels = frame_with(["a", "a", "b", "b"])
    with pytest.raises(DataError, match=r"^split: the test split would be empty \(stratified split\); every class is too small"):
        split_rows(frame, labels, SplitConfig(test_size=0.2, val_size=0.1), CARVE)


def test_grouped_split_keeps_each_group_on_one_side():
    rng = np.random.default_rng(0)
    groups = [f"supplier{int(g)}" for g in rng.integers(0, 40, size=400)]
    frame, labels = frame_with(["x"] * 400, supplier=groups)
    outcome = split_rows(frame, labels, SplitConfig(group_column="supplier", test_size=0.2, val_size=0.1, seed=3), CARVE)
    assert outcome.method == "grouped"
    assert_partition(outcome, 400)
    sides = {name: set(frame["supplier"].iloc[pos]) for name, pos in outcome.positions.items()}
    assert not (sides["train"] & sides["test"]) and not (sides["train"] & sides["validation"])
    assert not (sides["test"] & sides["validation"])
    assert outcome.details["groups"] == {name: len(s) for name, s in sides.items()}
    # Each carved split lands within half a group of its target (groups here hold ~10 rows).
    assert abs(len(outcome.positions["test"]) - 80) <= 15
    assert abs(len(outcome.positions["validation"]) - 40) <= 15


def test_grouped_split_puts_missing_group_values_together():
    frame, labels = frame_with(["x"] * 12, supplier=["a", "a", None, "b", None, "c", "c", "d", "e", None, "f", "g"])
    outcome = split_rows(frame, labels, SplitConfig(group_column="supplier", test_size=0.3, val_size=0.2, seed=0), CARVE)
    where = {name for name, pos in outcome.positions.items() for p in pos if p in (2, 4, 9)}
    assert len(where) == 1
    assert outcome.details["missing_values"] == 3


def test_grouped_split_with_one_huge_group_is_an_empty_split_error():
    frame, labels = frame_with(["x"] * 20, supplier=["big"] * 10 + ["other"] * 10)
    with pytest.raises(DataError, match=r"^split: the test split would be empty \(grouped split\); every group is too "
                                        r"large for split\.test_size"):
        split_rows(frame, labels, SplitConfig(group_column="supplier", test_size=0.2, val_size=0.05), ("test",))


def test_time_split_latest_dates_are_test():
    dates = pd.date_range("2023-01-01", periods=100, freq="D").strftime("%Y-%m-%d").tolist()
    shuffled = list(np.random.default_rng(0).permutation(dates))
    frame, labels = frame_with(["x"] * 100, date=shuffled)
    outcome = split_rows(frame, labels, SplitConfig(time_column="date", test_size=0.2, val_size=0.1), CARVE)
    assert outcome.method == "time"
    spans = {name: sorted(frame["date"].iloc[pos]) for name, pos in outcome.positions.items()}
    assert spans["test"] == dates[80:]
    assert spans["validation"] == dates[70:80]
    assert spans["train"] == dates[:70]
    assert outcome.details["ranges"]["test"] == ["2023-03-22T00:00:00", "2023-04-10T00:00:00"]


def test_time_split_keeps_rows_of_one_date_together():
    dates = ["2023-01-01"] * 5 + ["2023-01-02"] * 5 + ["2023-01-03"] * 6 + ["2023-01-04"] * 4
    frame, labels = frame_with(["x"] * 20, date=dates)
    outcome = split_rows(frame, labels, SplitConfig(time_column="date", test_size=0.25, val_size=0.25), CARVE)
    sides = {name: set(frame["date"].iloc[pos]) for name, pos in outcome.positions.items()}
    assert sides == {"test": {"2023-01-04"}, "validation": {"2023-01-03"}, "train": {"2023-01-01", "2023-01-02"}}


def test_unparseable_dates_name_the_key_and_rows():
    frame, labels = frame_with(["x"] * 4, date=["2023-01-01", "31/12/2023", None, "2023-02-01"])
    with pytest.raises(DataError, match=r"^split\.time_column: 2 values of column 'date' are missing or not ISO 8601 "
                                        r"dates \(rows 2, 3; first data row = 1\)"):
        split_rows(frame, labels, SplitConfig(time_column="date"), CARVE)


def test_separate_files_carve_only_what_is_missing():
    frame, labels = frame_with(["a"] * 50 + ["b"] * 50)
    outcome = split_rows(frame, labels, SplitConfig(test_size=0.2, val_size=0.1), ("validation",))
    assert set(outcome.positions) == {"train", "validation"}
    assert len(outcome.positions["validation"]) == 10
    given = split_rows(frame, labels, SplitConfig(), ())
    assert given.method == "given" and len(given.positions["train"]) == 100


def test_zero_share_without_a_file_is_an_error():
    frame, labels = frame_with(["a"] * 10)
    with pytest.raises(DataError, match=r"^split\.test_size is 0 and data\.test_uri is unset"):
        split_rows(frame, labels, SplitConfig(test_size=0.0, val_size=0.1), CARVE)


def test_stratified_split_totals_match_the_shares_across_many_classes():
    # 30 classes of 7 rows: 7 * 0.15 = 1.05 rows of test each; rounding each class alone gives 30, the share 31.5 → 32.
    frame, labels = frame_with([f"c{k}" for k in range(30) for _ in range(7)])
    outcome = split_rows(frame, labels, SplitConfig(test_size=0.15, val_size=0.15, seed=0), CARVE)
    assert {k: len(v) for k, v in outcome.positions.items()} == {"test": 32, "validation": 32, "train": 146}
    for name in ("test", "validation"):
        per_class = labels.iloc[outcome.positions[name]].value_counts()
        assert len(per_class) == 30 and set(per_class) == {1, 2}
