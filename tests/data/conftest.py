"""Small tables the data tests write in every format, configs built from dicts, and a moto S3 server."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 for the whole session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A fresh bucket; endpoint and (fake) credentials come from the environment, as on a cluster."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = "kt-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return bucket
