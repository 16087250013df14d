"""serialize: one text per row, values formatted the same way whatever file they came from."""

from __future__ import annotations

import datetime as dt
import decimal

import numpy as np
import pandas as pd
import pytest

from kubetune.data.serialize import (
    format_value,
    kept_columns,
    serialize_batch,
    serialize_row,
    serialize_split_batch,
)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1125.0, "1125.00"),
        (1125, "1125"),
        (np.int64(-3), "-3"),
        (0.125, "0.12"),
        (2.5, "2.50"),
        (-0.0, "0.00"),
        (1e20, "100000000000000000000.00"),
        (np.float32(3.5), "3.50"),
        (decimal.Decimal("19.999"), "20.00"),
        (float("inf"), "inf"),
        (float("-inf"), "-inf"),
        (True, "true"),
        (np.bool_(False), "false"),
        (dt.date(2019, 3, 31), "2019-03-31"),
        (dt.datetime(2019, 3, 31), "2019-03-31"),
        (dt.datetime(2019, 3, 31, 14, 5, 9, 123456), "2019-03-31 14:05:09"),
        (dt.datetime(2019, 3, 31, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=1))), "2019-03-31 00:00:00+01:00"),
        (pd.Timestamp("2019-03-31 08:00"), "2019-03-31 08:00:00"),
        (np.datetime64("2019-03-31"), "2019-03-31"),
        ("  ACME \n Ltd\t", "ACME Ltd"),
        ("997.5", "997.5"),
    ],
)
def test_format_value(value, text):
    assert format_value(value) == text


@pytest.mark.parametrize("value", [None, float("nan"), np.nan, pd.NA, pd.NaT, "", "   ", decimal.Decimal("NaN")])
def test_missing_values_have_no_text(value):
    assert format_value(value) is None


def test_row_with_column_names_skips_missing_values():
    row = {"supplier": "ACME Ltd", "description": None, "amount": 1125.0, "date": dt.date(2019, 3, 31)}
    text = serialize_row(row, ["supplier", "description", "amount", "date"], ", ", include_column_names=True)
    assert text == "supplier: ACME Ltd, amount: 1125.00, date: 2019-03-31"


def test_row_without_column_names_follows_column_order_and_separator():
    row = {"a": "x", "b": 2, "c": float("nan"), "d": "y"}
    assert serialize_row(row, ["d", "b", "c", "a"], " | ", include_column_names=False) == "y | 2 | x"


def test_row_with_every_value_missing_is_empty():
    assert serialize_row({"a": None, "b": ""}, ["a", "b"], ", ", include_column_names=True) == ""


def test_batch_gives_one_text_per_row():
    batch = {"supplier": ["A", "B", None], "amount": [1.0, None, 3.25]}
    out = serialize_batch(batch, ["supplier", "amount"], ", ", include_column_names=True)
    assert out == {"text": ["supplier: A, amount: 1.00", "supplier: B", "amount: 3.25"]}


# ------------------------------------------------------------------------------ column dropout
COLUMNS = ["supplier", "description", "department", "amount"]


def test_column_dropout_zero_keeps_every_column():
    assert all(kept_columns(COLUMNS, 0.0, seed=42, row=row) == COLUMNS for row in range(100))


def test_column_dropout_leaves_values_out_at_its_rate_and_keeps_the_order():
    kept = [kept_columns(COLUMNS, 0.3, seed=42, row=row) for row in range(4000)]
    for columns in kept:
        assert columns and columns == [c for c in COLUMNS if c in columns]  # never empty, order kept
    for column in COLUMNS:
        left_out = sum(column not in columns for columns in kept) / len(kept)
        assert 0.26 < left_out < 0.32  # 0.3, less the rows kept whole because all four were drawn out (0.3**4)


def test_column_dropout_is_drawn_from_the_seed_and_the_row_alone():
    first = [kept_columns(COLUMNS, 0.5, seed=7, row=row) for row in range(200)]
    assert first == [kept_columns(COLUMNS, 0.5, seed=7, row=row) for row in range(200)]
    assert first != [kept_columns(COLUMNS, 0.5, seed=8, row=row) for row in range(200)]


def test_a_row_whose_values_would_all_go_stays_whole():
    rows = range(2000)
    whole = [row for row in rows if kept_columns(COLUMNS, 0.9, seed=1, row=row) == COLUMNS]
    # All kept by the draw (0.1**4) or all drawn out (0.9**4 = 66 %): both give the whole row.
    assert 0.6 < len(whole) / len(rows) < 0.72


def test_split_batch_serializes_the_kept_columns_of_each_row():
    batch = {"supplier": ["A", "B", "C"], "amount": [1.0, 2.0, 3.0]}
    indices = [10, 11, 12]
    out = serialize_split_batch(batch, indices, ["supplier", "amount"], ", ", False, None, column_dropout=0.5, seed=3)
    expected = []
    for i, row in enumerate(indices):
        parts = {"supplier": batch["supplier"][i], "amount": f"{batch['amount'][i]:.2f}"}
        expected.append(", ".join(parts[c] for c in kept_columns(["supplier", "amount"], 0.5, 3, row)))
    assert out == {"text": expected, "whole_text": ["A, 1.00", "B, 2.00", "C, 3.00"]}
    assert out["text"] != out["whole_text"]  # seed 3 leaves something out of these rows
    assert serialize_split_batch(batch, indices, ["supplier", "amount"], ", ", False, None, 0.0, 3) == \
        serialize_batch(batch, ["supplier", "amount"], ", ", False)


def test_split_batch_keeps_a_row_whole_when_its_kept_columns_have_no_value():
    columns = ["supplier", "amount"]
    # Rows whose draw keeps the supplier alone: with no supplier, that would leave an empty text.
    rows = [row for row in range(200) if kept_columns(columns, 0.5, seed=3, row=row) == ["supplier"]][:3]
    batch = {"supplier": [None, "", "B"], "amount": [1.0, 2.0, 3.0]}
    out = serialize_split_batch(batch, rows, columns, ", ", False, None, column_dropout=0.5, seed=3)
    assert out == {"text": ["1.00", "2.00", "B"], "whole_text": ["1.00", "2.00", "B, 3.00"]}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1125.37, "1100"),
        (54.09, "54"),
        (0.1234, "0.12"),
        (-7.25, "-7.2"),  # half to even
        (99.96, "100"),
        (12345, "12000"),
        (7, "7"),
        (0.0, "0"),
        (-0.0, "0"),
        (np.float32(180.98), "180"),
        (decimal.Decimal("2.675"), "2.7"),
        (1e20, "100000000000000000000"),
        (float("inf"), "inf"),
        (True, "true"),  # not a number here
        ("997.5", "997.5"),  # text stays text
    ],
)
def test_significant_digits_round_numbers_only(value, text):
    assert format_value(value, significant_digits=2) == text
    assert format_value(float("nan"), significant_digits=2) is None


def test_significant_digits_in_a_row():
    row = {"supplier": "ACME Ltd", "amount": 1125.37, "lines": 3}
    assert serialize_row(row, ["supplier", "amount", "lines"], ", ", True, significant_digits=2) == \
        "supplier: ACME Ltd, amount: 1100, lines: 3"
    assert serialize_row(row, ["amount"], ", ", False) == "1125.37"
