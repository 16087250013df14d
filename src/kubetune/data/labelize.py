"""Labelize: label values → label slots of the LabelMap (see kubetune.data.labels).

Labels are compared as text with surrounding spaces removed; a float that is a whole number is
written as an integer (a Parquet column of codes 4010.0 is the label "4010"). An empty value, a
missing one, or `split.dummy_label` means "no label": an error by default, dropped with a warning
under `split.missing_labels: drop`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from kubetune.errors import DataError

SHOWN_ROWS = 5  # row numbers quoted in an error message


def label_text(value: Any) -> str | None:
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return None
        if float(value).is_integer():
            value = int(value)
    text = str(value).strip()
    return text or None


def label_texts(values: pd.Series) -> pd.Series:
    """The label column as text (see module docstring); missing values are <NA>. Keeps the index."""
    return pd.Series([label_text(v) for v in values.tolist()], index=values.index, dtype="string")


def missing_label_rows(texts: pd.Series, dummy_label: str | None) -> np.ndarray:
    """Row numbers (0-based, from the index) of rows without a label."""
    missing = texts.isna().to_numpy(dtype=bool)
    if dummy_label is not None:
        missing = missing | (texts == dummy_label.strip()).fillna(False).to_numpy(dtype=bool)
    return texts.index.to_numpy()[missing]


def missing_labels_error(rows: np.ndarray, column: str, source_key: str, dummy_label: str | None) -> DataError:
    shown = ", ".join(str(int(r) + 1) for r in rows[:SHOWN_ROWS]) + (", ..." if len(rows) > SHOWN_ROWS else "")
    what = f"no label (empty or {dummy_label!r})" if dummy_label is not None else "no label"
    return DataError(
        f"split.label_column: {len(rows)} rows of {source_key} have {what} in column {column!r} "
        f"(rows {shown}; first data row = 1); fill them in, or set split.missing_labels: drop"
    )


def encode_labels(batch: Mapping[str, list], column: str, label2id: Mapping[str, int]) -> dict[str, list[int]]:
    """datasets.map function: the label column (already text) → `labels`, the slot numbers."""
    return {"labels": [label2id[value] for value in batch[column]]}


def unseen_in_train(counts: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Per non-train split: {label: rows} of labels that never occur in train."""
    seen = set(counts.get("train", {}))
    return {
        split: {label: n for label, n in sorted(per_label.items()) if label not in seen}
        for split, per_label in counts.items()
        if split != "train" and any(label not in seen for label in per_label)
    }
