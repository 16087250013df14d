"""Serialize: one text per table row, e.g. `supplier: ACME Ltd, amount: 1125.00, date: 2019-03-31`.

The text follows `serialize.text_columns` (default: every column but the label), in that order,
joined by `serialize.separator`, each part `column: value` or, without
`serialize.include_column_names`, the value alone.

Values are formatted so the same value always gives the same text, whatever the file format it
came from (a tokenizer sees `1125`, `1125.0` and `1.125e3` as different words):

| value | text |
|---|---|
| missing: null, NaN, NaT, empty or blank string | skipped (no part at all, no separator) |
| whole number (int) | `1125`, `-3` (no thousands separator) |
| float, decimal | fixed point with two decimals, no exponent: `1125.0` → `1125.00`, `0.125` → `0.12` (round half to even), `-0.0` → `0.00`, `1e20` → `100000000000000000000.00`; amounts are money, and a column that needs more precision should be given as text |
| infinity | `inf`, `-inf` |
| bool | `true`, `false` |
| date | `2019-03-31` |
| date-time | `2019-03-31` at midnight, else `2019-03-31 14:05:09` (seconds; fractions dropped; `+01:00` when it has a time zone) |
| text | as written, with runs of white space (newlines, tabs) made one space and ends trimmed |

CSV and JSON Lines values that are text stay text: a CSV amount written `997.5` is not reformatted.

With `serialize.significant_digits: N`, int and float values are first rounded to N significant digits
(half to even) and written without trailing zeros after the point: with 2, `1125.37` → `1100`,
`54.09` → `54`, `0.1234` → `0.12`, `-7.25` → `-7.2`, `0` → `0`. A ledger amount's magnitude tells its
account; its pennies do not, and each distinct number is one more word a model has to learn.

With `serialize.column_dropout: p`, each value of a training row is left out of its text with probability
p (as if missing), drawn once from `split.seed` and the row's position in the split, so a rerun writes the
same texts whatever `num_proc` is. A row whose values would all be left out (drawn out or missing) stays
whole. Validation and test rows are never touched: they are what the model meets in use. The training
rows' whole texts are kept beside (`whole_text`) for the TF-IDF baseline, which fits on them: the
yardstick is not weakened.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

WHOLE_TEXT = "whole_text"  # a training row's text with every value, beside `text` when column dropout shortened it


def format_value(value: Any, significant_digits: int | None = None) -> str | None:
    """The text of one value, or None when it is missing (see the module docstring)."""
    if significant_digits is not None and isinstance(value, int | float | np.integer | np.floating | decimal.Decimal) \
            and not isinstance(value, bool | np.bool_):
        rounded = round_significant(value, significant_digits)
        if rounded is not None:
            return rounded
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, str):
        text = " ".join(value.split())
        return text or None
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating | decimal.Decimal):
        number = float(value)
        if math.isnan(number):
            return None
        if math.isinf(number):
            return "inf" if number > 0 else "-inf"
        text = f"{number:.2f}"
        return "0.00" if text == "-0.00" else text
    if isinstance(value, dt.datetime):  # before date: a datetime is a date too
        if value.time() == dt.time(0) and value.tzinfo is None:
            return value.date().isoformat()
        return value.replace(microsecond=0).isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dt.time):
        return value.replace(microsecond=0).isoformat()
    if isinstance(value, np.datetime64):
        return format_value(pd.Timestamp(value).to_pydatetime())
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    return format_value(str(value))


def round_significant(value: Any, digits: int) -> str | None:
    """`value` rounded to `digits` significant digits, in fixed point; None for NaN and infinities."""
    number = decimal.Decimal(str(value)) if not isinstance(value, decimal.Decimal) else value
    if not number.is_finite():
        return None
    if number.is_zero():
        return "0"
    exponent = number.adjusted() - digits + 1  # the place of the last digit kept
    rounded = number.quantize(decimal.Decimal(1).scaleb(exponent), rounding=decimal.ROUND_HALF_EVEN)
    text = f"{rounded:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def serialize_row(values: Mapping[str, Any], columns: Sequence[str], separator: str, include_column_names: bool,
                  significant_digits: int | None = None) -> str:
    return join_parts(format_parts(values, columns, significant_digits), columns, separator, include_column_names)


def format_parts(values: Mapping[str, Any], columns: Sequence[str], significant_digits: int | None) -> dict[str, str]:
    """The text of each of `columns` that has a value (missing ones are absent)."""
    texts = {column: format_value(values[column], significant_digits) for column in columns}
    return {column: text for column, text in texts.items() if text is not None}


def join_parts(parts: Mapping[str, str], columns: Sequence[str], separator: str, include_column_names: bool) -> str:
    """The row's text: the parts of `columns` present in `parts`, in the order of `columns`."""
    return separator.join(
        f"{column}: {parts[column]}" if include_column_names else parts[column] for column in columns if column in parts
    )


def kept_columns(columns: Sequence[str], dropout: float, seed: int, row: int) -> list[str]:
    """The columns of row number `row` that stay in its text under column dropout `dropout` (all when none would)."""
    if dropout <= 0:
        return list(columns)
    draws = np.random.default_rng([seed, row]).random(len(columns))
    kept = [column for column, draw in zip(columns, draws, strict=True) if draw >= dropout]
    return kept or list(columns)


def serialize_batch(
    batch: Mapping[str, list], columns: Sequence[str], separator: str, include_column_names: bool,
    significant_digits: int | None = None,
) -> dict[str, list[str]]:
    """datasets.map function (batched): the `text` of each row; `columns` is not empty."""
    rows = len(batch[columns[0]])
    return {
        "text": [
            serialize_row({c: batch[c][i] for c in columns}, columns, separator, include_column_names, significant_digits)
            for i in range(rows)
        ]
    }


def serialize_split_batch(
    batch: Mapping[str, list], indices: Sequence[int], columns: Sequence[str], separator: str,
    include_column_names: bool, significant_digits: int | None, column_dropout: float, seed: int,
) -> dict[str, list[str]]:
    """datasets.map function (batched, with_indices) of the preprocess step: serialize_batch, with each row's
    values left out under `column_dropout` (see kept_columns). With a dropout, the whole texts come too, as
    `whole_text`: what the baseline fits on (a yardstick weakened by the model's regulariser is no yardstick)."""
    if column_dropout <= 0:
        return serialize_batch(batch, columns, separator, include_column_names, significant_digits)
    texts, whole_texts = [], []
    for i, row in enumerate(indices):
        parts = format_parts({c: batch[c][i] for c in columns}, columns, significant_digits)
        whole = join_parts(parts, columns, separator, include_column_names)
        kept = kept_columns(columns, column_dropout, seed, row)
        # Kept columns can all be missing values in this row: then it stays whole too, never empty.
        texts.append(join_parts(parts, kept, separator, include_column_names) or whole)
        whole_texts.append(whole)
    return {"text": texts, WHOLE_TEXT: whole_texts}
