"""Split the rows of `data.uri` into train, validation and test; the same seed gives the same split.

Only the splits that no separate file provides are carved out (`data.validation_uri`,
`data.test_uri`): `split.test_size` and `split.val_size` are shares of the rows of `data.uri`.

Methods, chosen from the config:

- grouped (`split.group_column`): every value of the column (e.g. a supplier) is one group and goes
  whole to one split, so the test set measures generalisation to unseen groups. Groups are taken in
  a seeded random order; a group joins test (then validation) when that brings the split's row
  count closer to its target, otherwise it goes to train. Rows without a value form one group.
- time (`split.time_column`): ISO 8601 dates (or a date/timestamp column); the latest dates go to
  test, the ones before to validation, the earliest to train. Rows of one date stay together.
- stratified (`split.stratify`, the default otherwise): each class is split in the given shares,
  so every split sees the classes in the same proportions; the rows that rounding leaves over go to
  the classes with the largest remainders, so each split's total matches its share. Rare classes:
  a class too small to put a row in every carved split (its share rounded to a whole row) and keep
  one for training goes to train whole (with test_size 0.2 and val_size 0.1: a class of fewer than
  5 rows); the split report counts these classes and their rows.
- random: one seeded shuffle of all rows.

Grouped and time splits are not stratified: keeping groups or periods apart comes first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kubetune.errors import DataError

if TYPE_CHECKING:
    from kubetune.config import SplitConfig

TRAIN, VALIDATION, TEST = "train", "validation", "test"
SPLITS = (TRAIN, VALIDATION, TEST)
_SIZE_KEY = {VALIDATION: "split.val_size", TEST: "split.test_size"}
_URI_KEY = {VALIDATION: "data.validation_uri", TEST: "data.test_uri"}


@dataclass
class SplitOutcome:
    """Row positions of each carved split (sorted) and what the split did, for the metadata."""

    method: str
    positions: dict[str, np.ndarray]
    details: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # things the user should hear about (rare classes, ...)


def round_half_up(value: float) -> int:
    return int(np.floor(value + 0.5))


def split_rows(frame: pd.DataFrame, labels: pd.Series, config: SplitConfig, carve: tuple[str, ...]) -> SplitOutcome:
    """Split the rows of `frame` into train plus the `carve`d splits (validation and/or test)."""
    shares = {name: config.val_size if name == VALIDATION else config.test_size for name in carve}
    for name, share in shares.items():
        if share == 0:
            raise DataError(
                f"{_SIZE_KEY[name]} is 0 and {_URI_KEY[name]} is unset: the {name} split would be empty; "
                f"set {_SIZE_KEY[name]} above 0 or give {_URI_KEY[name]}"
            )
    if not carve:
        outcome = SplitOutcome("given", {TRAIN: np.arange(len(frame))})
    elif config.group_column:
        outcome = _grouped(frame[config.group_column], shares, config.seed)
    elif config.time_column:
        outcome = _by_time(frame[config.time_column], shares, config.time_column)
    elif config.stratify:
        outcome = _stratified(labels, shares, config.seed)
    else:
        outcome = _random(len(frame), shares, config.seed)
    _check_not_empty(outcome, carve)
    return outcome


def _random(rows: int, shares: dict[str, float], seed: int) -> SplitOutcome:
    order = np.random.default_rng(seed).permutation(rows)
    positions, start = {}, 0
    for name, share in shares.items():
        count = round_half_up(rows * share)
        positions[name] = np.sort(order[start : start + count])
        start += count
    positions[TRAIN] = np.sort(order[start:])
    return SplitOutcome("random", positions)


def _stratified(labels: pd.Series, shares: dict[str, float], seed: int) -> SplitOutcome:
    rng = np.random.default_rng(seed)
    codes, classes = pd.factorize(labels.astype(str), sort=True)
    sizes = np.bincount(codes, minlength=len(classes))
    rounded = {name: np.floor(sizes * share + 0.5).astype(np.int64) for name, share in shares.items()}
    eligible = np.all([r >= 1 for r in rounded.values()], axis=0) & (sizes - sum(rounded.values()) >= 1)
    counts = _class_counts(sizes, eligible, shares)

    parts: dict[str, list[np.ndarray]] = {name: [] for name in (TRAIN, *shares)}
    by_class = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[by_class], np.arange(len(classes) + 1))
    for k in range(len(classes)):
        members = rng.permutation(by_class[bounds[k] : bounds[k + 1]])
        start = 0
        for name in shares:
            parts[name].append(members[start : start + counts[name][k]])
            start += counts[name][k]
        parts[TRAIN].append(members[start:])
    positions = {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}
    rare_classes, rare_rows = int((~eligible).sum()), int(sizes[~eligible].sum())
    outcome = SplitOutcome("stratified", positions, {"rare_classes_in_train_only": rare_classes, "rare_rows": rare_rows})
    if rare_classes:
        outcome.notes.append(
            f"{rare_classes} classes ({rare_rows} rows) have too few rows to appear in every split and went to train whole"
        )
    return outcome


def _class_counts(sizes: np.ndarray, eligible: np.ndarray, shares: dict[str, float]) -> dict[str, np.ndarray]:
    """Rows per class for each carved split: at least one per eligible class, and in total as close to
    the split's share of the eligible rows as the classes allow (largest remainders get the spare rows),
    so that many classes rounding the same way don't add up to a split far off its size."""
    counts: dict[str, np.ndarray] = {}
    left = np.where(eligible, sizes - 1, 0)  # rows still free, keeping one for train
    for name, share in shares.items():
        exact = np.where(eligible, sizes * share, 0.0)
        count = np.where(eligible, np.maximum(np.floor(exact), 1), 0).astype(np.int64)
        count = np.minimum(count, left)
        spare = round_half_up(float(exact.sum())) - int(count.sum())
        if spare > 0:
            remainder = np.where(eligible & (count < left), exact - count, -np.inf)
            for k in np.argsort(-remainder, kind="stable")[:spare]:
                if remainder[k] > -np.inf:
                    count[k] += 1
        left = left - count
        counts[name] = count
    return counts


def _allocate(sizes: np.ndarray, shares: dict[str, float], total: int, contiguous: bool) -> np.ndarray:
    """Assign ordered groups (sizes) to splits: index into (train, *shares) per group.

    A group joins the first carved split whose row count it brings closer to the target. With
    `contiguous` (time), a split stops at the first group that doesn't fit, so periods don't interleave.
    """
    names = list(shares)
    targets = [total * shares[name] for name in names]
    counts = [0] * len(names)
    assigned = np.zeros(len(sizes), dtype=np.int64)  # 0: train
    current = 0
    for g, size in enumerate(sizes):
        if contiguous:
            while current < len(names) and counts[current] + size / 2 > targets[current]:
                current += 1
            if current < len(names):
                assigned[g] = current + 1
                counts[current] += size
            continue
        for i, target in enumerate(targets):
            if counts[i] + size / 2 <= target:
                assigned[g] = i + 1
                counts[i] += size
                break
    return assigned


def _grouped(groups: pd.Series, shares: dict[str, float], seed: int) -> SplitOutcome:
    # Missing values are one group of their own, so such rows still stay together.
    keys = groups.astype("string").fillna("\0missing")
    codes, uniques = pd.factorize(keys, sort=True)
    sizes = np.bincount(codes, minlength=len(uniques))
    order = np.random.default_rng(seed).permutation(len(uniques))
    assigned = np.empty(len(uniques), dtype=np.int64)
    assigned[order] = _allocate(sizes[order], shares, len(keys), contiguous=False)
    names = [TRAIN, *shares]
    row_split = assigned[codes]
    positions = {name: np.flatnonzero(row_split == i) for i, name in enumerate(names)}
    details = {
        "column": groups.name,
        "groups": {name: int((assigned == i).sum()) for i, name in enumerate(names)},
        "missing_values": int(groups.isna().sum()),
    }
    return SplitOutcome("grouped", positions, details)


def parse_times(values: pd.Series, column: str) -> pd.Series:
    """The time column as timestamps; missing or non-ISO-8601 values are an error naming the rows."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype) or str(values.dtype).startswith(("timestamp", "date32", "date64")):
        parsed = pd.to_datetime(values.astype(object), errors="coerce")
    else:
        parsed = pd.to_datetime(values.astype("string").str.strip(), errors="coerce", format="ISO8601")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        # The index holds the row numbers of the file (rows dropped for missing labels leave gaps).
        rows = ", ".join(str(int(values.index[i]) + 1) for i in bad[:5])
        raise DataError(
            f"split.time_column: {len(bad)} values of column {column!r} are missing or not ISO 8601 dates "
            f"(rows {rows}{', ...' if len(bad) > 5 else ''}; first data row = 1); fix them or split another way"
        )
    return parsed


def _by_time(values: pd.Series, shares: dict[str, float], column: str) -> SplitOutcome:
    times = parse_times(values, column)
    codes, uniques = pd.factorize(times, sort=True)
    sizes = np.bincount(codes, minlength=len(uniques))
    # Walk from the latest date back: test is the newest period, validation the one before.
    latest_first = np.arange(len(uniques))[::-1]
    ordered_shares = {name: shares[name] for name in (TEST, VALIDATION) if name in shares}
    allocated = _allocate(sizes[latest_first], ordered_shares, len(times), contiguous=True)
    names = [TRAIN, *ordered_shares]
    assigned = np.empty(len(uniques), dtype=np.int64)
    assigned[latest_first] = allocated
    row_split = assigned[codes]
    positions = {name: np.flatnonzero(row_split == i) for i, name in enumerate(names)}
    ranges = {}
    for name, rows in positions.items():
        if len(rows):
            span = times.iloc[rows]
            ranges[name] = [span.min().isoformat(), span.max().isoformat()]
    return SplitOutcome("time", positions, {"column": column, "ranges": ranges})


def _check_not_empty(outcome: SplitOutcome, carve: tuple[str, ...]) -> None:
    for name in (TRAIN, *carve):
        if len(outcome.positions.get(name, ())) == 0:
            if name == TRAIN:
                hint = "lower split.test_size or split.val_size"
            elif outcome.method == "grouped":
                hint = f"every group is too large for {_SIZE_KEY[name]}; raise it, or give {_URI_KEY[name]}"
            elif outcome.method == "time":
                hint = f"the latest date alone is too large for {_SIZE_KEY[name]}; raise it, or give {_URI_KEY[name]}"
            elif outcome.method == "stratified":
                hint = f"every class is too small to reach it; raise {_SIZE_KEY[name]}, set split.stratify: false, or add data"
            else:
                hint = f"raise {_SIZE_KEY[name]} or add data"
            raise DataError(f"split: the {name} split would be empty ({outcome.method} split); {hint}")
