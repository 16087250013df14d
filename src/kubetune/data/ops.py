"""`data.ops`: small operations on the loaded rows, applied in order before the split (`task: sft`).

Each operation is a plain function of a pandas DataFrame; `apply_ops` runs a config's list of them.
A column an operation names that the rows don't have is a DataError naming the op's key
(`data.ops.<i>.<op>`) and the column; no operation runs code from the config (a filter is a column
condition, a map a format template).
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kubetune.errors import DataError

if TYPE_CHECKING:
    from kubetune.config import DataOp, FilterOp


def apply_ops(frame: pd.DataFrame, ops: Sequence[DataOp], key: str = "data.ops") -> pd.DataFrame:
    """`frame` after every op of `ops`, in order; an op that leaves no rows is an error naming it."""
    for index, op in enumerate(ops):
        name = op.name
        op_key = f"{key}.{index}.{name}"
        value = getattr(op, name)
        if name == "select_columns":
            frame = select_columns(frame, value, op_key)
        elif name == "select_rows":
            frame = select_rows(frame, value, op_key)
        elif name == "filter":
            frame = filter_rows(frame, value, op_key)
        elif name == "map":
            frame = map_template(frame, value.column, value.template, op_key)
        elif name == "fraction":
            frame = fraction(frame, value.share, value.seed)
        elif name == "shuffle":
            frame = shuffle(frame, value.seed)
        else:  # the config's DataOp and this dispatch list the same names
            raise DataError(f"{op_key}: unknown operation {name!r}")
        if len(frame) == 0:
            raise DataError(f"{op_key}: no rows are left after this operation; loosen it")
    return frame


def _check_columns(frame: pd.DataFrame, columns: Sequence[str], key: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{key}: column {', '.join(map(repr, missing))} not in the rows (columns: "
                        f"{', '.join(map(str, frame.columns))})")


def select_columns(frame: pd.DataFrame, columns: Sequence[str], key: str = "select_columns") -> pd.DataFrame:
    """Only `columns`, in this order."""
    _check_columns(frame, columns, key)
    return frame[list(columns)]


def select_rows(frame: pd.DataFrame, rows: Sequence[int] | str, key: str = "select_rows") -> pd.DataFrame:
    """The rows at these positions (from 0), or a slice `start:stop[:step]` of them."""
    if isinstance(rows, str):
        parts = [int(p) if p.strip() else None for p in rows.split(":")]
        return frame.iloc[slice(*parts)].reset_index(drop=True)
    positions = np.asarray(list(rows), dtype=np.int64)
    bad = positions[(positions < 0) | (positions >= len(frame))]
    if len(bad):
        raise DataError(f"{key}: row {int(bad[0])} does not exist; the rows are numbered 0..{len(frame) - 1}")
    return frame.iloc[positions].reset_index(drop=True)


def filter_rows(frame: pd.DataFrame, condition: FilterOp, key: str = "filter") -> pd.DataFrame:
    """The rows whose `condition.column` meets `condition.op` with `condition.value`."""
    _check_columns(frame, [condition.column], key)
    column = frame[condition.column]
    op, value = condition.op, condition.value
    try:
        if op == "is_null":
            keep = column.isna()
        elif op == "not_null":
            keep = column.notna()
        elif op == "in":
            keep = column.isin(value)
        elif op == "not_in":
            keep = ~column.isin(value)
        elif op == "contains":
            keep = column.astype("string").str.contains(str(value), regex=False)
        else:
            keep = {"==": column.__eq__, "!=": column.__ne__, "<": column.__lt__, "<=": column.__le__,
                    ">": column.__gt__, ">=": column.__ge__}[op](value)
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise DataError(f"{key}: cannot compare column {condition.column!r} ({column.dtype}) {op} {value!r} "
                        f"({type(exc).__name__}); compare it with a value of its type") from None
    return frame[keep.fillna(False).astype(bool).to_numpy()].reset_index(drop=True)


def _template_parts(template: str, key: str) -> list[tuple[str, str | None]]:
    try:
        return [(literal, field) for literal, field, _, _ in string.Formatter().parse(template)]
    except ValueError as exc:
        raise DataError(f"{key}: template {template!r} is not a valid format string ({exc})") from None


def map_template(frame: pd.DataFrame, column: str, template: str, key: str = "map") -> pd.DataFrame:
    """`column` written as `template` with each `{name}` replaced by the row's value of column `name`
    (a missing value: empty text). Fields are column names, looked up as they are (no attribute access)."""
    parts = _template_parts(template, key)
    fields = [field for _, field in parts if field is not None]
    if "" in fields:
        raise DataError(f"{key}: template {template!r} has an empty field {{}}; name a column, e.g. {{instruction}}")
    _check_columns(frame, fields, key)

    def text(value: Any) -> str:
        return "" if value is None or (not isinstance(value, (list, dict, np.ndarray)) and pd.isna(value)) else str(value)

    values = {f: [text(v) for v in frame[f].tolist()] for f in dict.fromkeys(fields)}
    rendered = ["".join(literal + (values[field][i] if field is not None else "") for literal, field in parts)
                for i in range(len(frame))]
    out = frame.copy()
    out[column] = pd.Series(rendered, index=frame.index, dtype="string[pyarrow]")
    return out


def fraction(frame: pd.DataFrame, share: float, seed: int = 0) -> pd.DataFrame:
    """A seeded sample of round(share x rows) rows (at least one), in their original order."""
    count = max(1, round(share * len(frame)))
    chosen = np.sort(np.random.default_rng(seed).choice(len(frame), size=count, replace=False))
    return frame.iloc[chosen].reset_index(drop=True)


def shuffle(frame: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """The rows in a seeded random order."""
    return frame.iloc[np.random.default_rng(seed).permutation(len(frame))].reset_index(drop=True)
