"""Convert once, cache by checksum: a stage output is reused when its cache key matches.

A cache key hashes everything that decides a stage's output: the kubetune version, checksums of the
inputs (sha256 of local files; ETag and size of objects in object storage, which are free to read),
the config sections the stage uses, and for tokenize the tokenizer itself. It is stored in the
output's dataset_metadata.json; a complete output (with the `_COMPLETE` marker) holding the same key
is the result, and the stage returns at once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune import storage
from kubetune.data import demo

if TYPE_CHECKING:
    from kubetune.config import StorageConfig

METADATA_FILE = "dataset_metadata.json"
_CHUNK = 1 << 20


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digest(value: Any) -> str:
    """A short stable hash of a JSON-able value."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_checksum(uri: str, storage_config: StorageConfig | None = None, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """{uri, size, sha256 | etag} of a file or of every file of a directory (names in `exclude` skipped)."""
    if demo.is_demo_uri(uri):
        rows, seed = demo.parse_demo_uri(uri)
        # Generated data is fully decided by its parameters (and the kubetune version, in every key).
        return {"uri": uri, "generator": "demo ledger", "rows": rows, "seed": seed}
    uri = storage.normalize_uri(uri)
    fs, path = storage.filesystem(uri, storage_config)
    if storage.is_remote(uri):
        return _remote_checksum(fs, uri, path, exclude, storage_config)
    local = Path(path)
    if local.is_file():
        return {"uri": uri, "size": local.stat().st_size, "sha256": sha256_file(local)}
    files = sorted(p for p in local.rglob("*") if p.is_file() and p.name not in exclude)
    combined = hashlib.sha256()
    for file in files:
        combined.update(f"{file.relative_to(local).as_posix()}\0{sha256_file(file)}\n".encode())
    return {"uri": uri, "size": sum(f.stat().st_size for f in files), "sha256": combined.hexdigest()}


def _remote_checksum(fs, uri: str, path: str, exclude: frozenset[str], storage_config: StorageConfig | None) -> dict[str, Any]:
    info = storage.with_retries(lambda: fs.info(path), f"checking {uri}", config=storage_config)
    if info.get("type") != "directory":
        return {"uri": uri, "size": int(info.get("size") or 0), "etag": str(info.get("ETag", "")).strip('"')}
    listing = storage.with_retries(lambda: fs.find(path, detail=True), f"listing {uri}", config=storage_config)
    entries = sorted(
        (name[len(path.rstrip("/")) + 1 :], str(meta.get("ETag", "")).strip('"'), int(meta.get("size") or 0))
        for name, meta in listing.items()
        if name.rsplit("/", 1)[-1] not in exclude
    )
    return {"uri": uri, "size": sum(size for _, _, size in entries), "etag": digest(entries)}


def read_complete_metadata(uri: str, storage_config: StorageConfig | None = None) -> dict[str, Any] | None:
    """The dataset_metadata.json of a complete stage output at `uri`, or None (absent, incomplete, unreadable)."""
    if not storage.is_complete(uri, storage_config):
        return None
    try:
        return json.loads(storage.read_text(f"{storage.normalize_uri(uri).rstrip('/')}/{METADATA_FILE}", storage_config))
    except (FileNotFoundError, json.JSONDecodeError):
        # A complete output we can't read is not a cache hit: the stage recomputes and replaces it.
        return None
