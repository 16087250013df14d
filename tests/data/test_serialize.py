"""serialize: one text per row, values formatted the same way whatever file they came from."""

from __future__ import annotations

import datetime as dt
import decimal

import numpy as np
import pandas as pd
import pytest

from kubetune.data.serialize import format_value, serialize_batch, serialize_row


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
