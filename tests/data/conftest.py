"""Small tables the data tests write in every format, configs built from dicts (S3: the root conftest's s3_bucket)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from kubetune.config import RunConfig, deep_merge, validate_config

SUPPLIERS = ["Acme Ltd", "Brightmart", "Castle Print", "Dunmore Digital", "Elm Catering", "Foxley Fuels"]
CODES = ["4010", "4020", "5100", "6100"]


def ledger(rows: int = 120, seed: int = 0) -> pd.DataFrame:
    """A small ledger: every supplier under one code, codes with leading-zero-free text labels, dates over 2023."""
    import numpy as np

    rng = np.random.default_rng(seed)
    supplier_index = rng.integers(0, len(SUPPLIERS), size=rows)
    return pd.DataFrame({
        "line_id": [f"L{i:04d}" for i in range(rows)],
        "supplier": [SUPPLIERS[i] for i in supplier_index],
        "description": [f"order {int(n)}" for n in rng.integers(100, 999, size=rows)],
        "amount": np.round(rng.uniform(1, 2000, size=rows), 2),
        "payment_date": [f"2023-{m:02d}-{d:02d}" for m, d in zip(rng.integers(1, 13, size=rows), rng.integers(1, 29, size=rows), strict=True)],
        "account_code": [CODES[i % len(CODES)] for i in supplier_index],
    })


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """Write `frame` in the format its name says (.csv, .csv.gz, .parquet, .jsonl, or a directory: HF dataset)."""
    name = path.name
    if name.endswith((".csv", ".csv.gz")):
        frame.to_csv(path, index=False)
    elif name.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    elif name.endswith(".jsonl"):
        frame.to_json(path, orient="records", lines=True)
    else:
        import datasets

        datasets.Dataset.from_pandas(frame, preserve_index=False).save_to_disk(str(path))
    return path


def make_config(tokenizer: Path | None = None, **sections: dict[str, Any]) -> RunConfig:
    """A config for the small ledger (label account_code, all columns but line_id as text), updated by `sections`."""
    base: dict[str, Any] = {
        "split": {"label_column": "account_code", "test_size": 0.2, "val_size": 0.1, "seed": 1},
        "serialize": {"text_columns": ["supplier", "description", "amount", "payment_date"], "retain_columns": ["line_id"]},
        "tokenize": {"max_length": 64},
    }
    if tokenizer is not None:
        base["tokenize"]["model_name"] = str(tokenizer)
    return validate_config(deep_merge(base, sections))
