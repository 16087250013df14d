"""Read the labelled data into a pandas DataFrame: CSV (.csv, .csv.gz), Parquet, JSON Lines, a saved
Hugging Face dataset directory, or the built-in demo ledger; from a local path or object storage.

Columns keep the types the file gives them, with Arrow-backed dtypes so that an integer column with
gaps stays integer (plain pandas would turn it into floats and `12` would serialize as `12.00`).
CSV and JSON Lines carry no types for text, so their values are read as written; the label column
is always read as text (account codes like `0420` keep their leading zero).

Every problem is a DataError naming the config key of the input (`data.uri`, `data.test_uri`, ...).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

import pandas as pd

from kubetune import storage
from kubetune.data import demo
from kubetune.errors import DataError, short_reason

if TYPE_CHECKING:
    from kubetune.config import StorageConfig

FORMATS = ("csv", "parquet", "jsonl", "hf")
# Files that mark a directory written by `datasets.Dataset.save_to_disk` / `DatasetDict.save_to_disk`.
HF_DATASET_FILES = ("state.json", "dataset_dict.json")


def detect_format(uri: str, configured: str, key: str, is_dir: bool) -> str:
    """The format of `uri`: `configured` unless it is `auto`, else from the name (a directory: hf)."""
    if configured != "auto":
        return configured
    if is_dir:
        return "hf"
    name = uri.rstrip("/").rsplit("/", 1)[-1].lower().removesuffix(".gz")
    for suffixes, fmt in (((".csv",), "csv"), ((".parquet", ".pq"), "parquet"), ((".jsonl", ".json", ".ndjson"), "jsonl")):
        if name.endswith(suffixes):
            return fmt
    raise DataError(
        f"{key}: cannot tell the format of {uri!r} from its name; name it .csv, .csv.gz, .parquet or .jsonl, "
        "or set data.format (csv, parquet, jsonl, hf)"
    )


def check_exists(uri: str, key: str, storage_config: StorageConfig | None = None) -> bool:
    """Raise a DataError naming `key` unless `uri` exists; return whether it is a directory."""
    if demo.is_demo_uri(uri):
        demo.parse_demo_uri(uri, key)
        return False
    uri = storage.normalize_uri(uri)
    fs, path = storage.filesystem(uri, storage_config)
    try:
        found = storage.with_retries(lambda: fs.exists(path), f"checking {uri}", config=storage_config)
        is_dir = found and storage.with_retries(lambda: fs.isdir(path), f"checking {uri}", config=storage_config)
    except PermissionError:
        raise DataError(f"{key}: access to {uri} was denied; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
    if not found:
        where = "in object storage" if storage.is_remote(uri) else f"(relative paths start at {Path.cwd()})"
        raise DataError(f"{key}: {uri} not found {where}; point {key} at an existing file or dataset directory")
    return bool(is_dir)


def load_table(
    uri: str,
    key: str,
    data_format: str = "auto",
    storage_config: StorageConfig | None = None,
    max_rows: int | None = None,
    text_columns: Sequence[str] = (),
) -> pd.DataFrame:
    """Read `uri` (named `key` in messages) into a DataFrame; `text_columns` are read as text in CSV files."""
    if demo.is_demo_uri(uri):
        frame = demo.load_demo(uri, key)
        return frame.head(max_rows) if max_rows else frame
    uri = storage.normalize_uri(uri)
    fs, path = storage.filesystem(uri, storage_config)
    is_dir = check_exists(uri, key, storage_config)
    fmt = detect_format(uri, data_format, key, is_dir)
    if is_dir and fmt != "hf":
        raise DataError(f"{key}: {uri} is a directory, not a {fmt} file; point {key} at a file or set data.format: hf")
    try:
        if fmt == "hf":
            frame = _read_hf_dataset(uri, key, storage_config, max_rows)
        else:
            with _open(fs, path, storage_config) as handle:
                frame = _read_file(handle, fmt, path.endswith(".gz"), max_rows, text_columns)
    except DataError:
        raise
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        # pandas and pyarrow report unreadable files with these; the first line says what is wrong.
        detail = short_reason(exc)
        raise DataError(f"{key}: cannot read {uri} as {fmt} ({detail}); check the file or set data.format") from None
    if len(frame) == 0:
        raise DataError(f"{key}: {uri} has no rows; give a file with data")
    return _text_where_mixed(frame)


def _text_where_mixed(frame: pd.DataFrame) -> pd.DataFrame:
    """Columns whose values mix types (JSON numbers and strings in one field) become text columns:
    Arrow, and so a dataset, needs one type per column."""
    import pyarrow as pa

    for column in frame.columns:
        if frame[column].dtype == object:
            try:
                pa.array(frame[column], from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                frame[column] = frame[column].map(lambda v: None if pd.isna(v) else str(v)).astype("string[pyarrow]")
    return frame


@contextlib.contextmanager
def _open(fs, path: str, storage_config: StorageConfig | None) -> Iterator[IO[bytes]]:
    with storage.with_retries(lambda: fs.open(path, "rb"), f"opening {path}", config=storage_config) as handle:
        yield handle


def _read_file(handle: IO[bytes], fmt: str, gzipped: bool, max_rows: int | None, text_columns: Sequence[str]) -> pd.DataFrame:
    compression = "gzip" if gzipped else None
    if fmt == "csv":
        try:
            # low_memory=False: decide each column's type from all its values, not chunk by chunk
            # (a column of numbers with a few text values is then text, not a mix of both).
            return pd.read_csv(
                handle, compression=compression, nrows=max_rows, dtype_backend="pyarrow", low_memory=False,
                dtype=dict.fromkeys(text_columns, "string[pyarrow]"),
            )
        except pd.errors.EmptyDataError:
            return pd.DataFrame()
    if fmt == "parquet":
        frame = pd.read_parquet(handle, dtype_backend="pyarrow")
        return frame.head(max_rows) if max_rows else frame
    # JSON already says which values are text and which are numbers: keep them as they are.
    return pd.read_json(handle, lines=True, nrows=max_rows, dtype=False, compression=compression, dtype_backend="pyarrow")


def _read_hf_dataset(uri: str, key: str, storage_config: StorageConfig | None, max_rows: int | None) -> pd.DataFrame:
    import datasets

    with tempfile.TemporaryDirectory(prefix="kubetune-load-") as scratch:
        local = storage.download(uri, scratch, storage_config)
        if not any((local / name).exists() for name in HF_DATASET_FILES):
            raise DataError(
                f"{key}: {uri} is a directory but not a saved Hugging Face dataset (no state.json); "
                "point it at a file or at a directory written by save_to_disk"
            )
        loaded = datasets.load_from_disk(str(local))
        if isinstance(loaded, datasets.DatasetDict):
            raise DataError(
                f"{key}: {uri} holds several splits ({', '.join(loaded)}); point {key} at one of them, "
                f"e.g. {uri.rstrip('/')}/{next(iter(loaded))}"
            )
        if max_rows:
            loaded = loaded.select(range(min(max_rows, len(loaded))))
        # Arrow all the way: nullable integers and dates keep their types.
        return loaded.with_format("arrow")[:].to_pandas(types_mapper=pd.ArrowDtype)


def check_columns(frame: pd.DataFrame, wanted: dict[str, Sequence[str]], source_key: str, uri: str) -> None:
    """Raise a DataError naming the config key whose column is not in `frame` (wanted: key → columns)."""
    found = [str(c) for c in frame.columns]
    for config_key, columns in wanted.items():
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            listed = ", ".join(repr(c) for c in missing)
            raise DataError(
                f"{config_key}: column {listed} not in {source_key} {uri} (columns found: {', '.join(found)}); "
                f"set {config_key} to columns of the data"
            )

