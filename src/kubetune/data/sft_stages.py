"""The data stages of `task: sft`: `preprocess` (load sources → ops → split) and `tokenize` (render, tokenize,
pack), with the same outputs, caching, rank handling and summaries as the classification stages
(kubetune.data.stages), which call into here when `task: sft`.

preprocess → PREPROCESSED/: a DatasetDict (train, validation, test) holding the format's columns
(kubetune.data.sft.format_columns) and `dataset_metadata.json` (no label_map.json: there are no labels).
tokenize → TOKENIZED/: input_ids, labels (-100 where no loss), length, and attention_mask (unpacked rows)
or position_ids (rows packed at tokenize time); the test split also keeps its rows' format columns as
`raw.<column>` (the champion gate renders them its own way: kubetune.promotion); `tokenize_diagnostics.json` as
for classification, plus the rows dropped for lack of a trained token.
"""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kubetune import __version__, storage
from kubetune.data import cache
from kubetune.data.ops import apply_ops
from kubetune.data.sft import (
    align_columns,
    check_sft_tokenizer,
    decoded_samples,
    encode_rows,
    format_columns,
    load_source,
    pack_split,
    source_uris,
)
from kubetune.data.split import SPLITS, TEST, TRAIN, VALIDATION
from kubetune.distributed import is_main_process, rank
from kubetune.errors import DataError, KubetuneError

if TYPE_CHECKING:
    import datasets
    import pandas as pd

    from kubetune.config import RunConfig
    from kubetune.data.stages import PreprocessResult, TokenizeResult

# Bumped when the SFT tokenize output's columns change, so an old cached output is made again.
# 2: the test split keeps its raw format columns (raw.<column>).
SFT_TOKENIZED_LAYOUT = 2
_SEPARATE = {VALIDATION: "data.validation_uri", TEST: "data.test_uri"}


def _inputs(config: RunConfig) -> dict[str, str]:
    """Config key → URI of every input."""
    inputs = dict(source_uris(config))
    for split, key in _SEPARATE.items():
        uri = config.data.validation_uri if split == VALIDATION else config.data.test_uri
        if uri:
            inputs[key] = uri
    return inputs


def _checksums(config: RunConfig) -> dict[str, dict[str, Any]]:
    from kubetune.data.load import check_exists

    checksums = {}
    for key, uri in _inputs(config).items():
        check_exists(uri, key, config.storage)
        checksums[key] = cache.input_checksum(uri, config.storage)
    return checksums


def input_fingerprint(config: RunConfig) -> str:
    """As kubetune.data.stages.input_fingerprint, over `data.sources` (or `data.uri`) and the separate splits."""
    from kubetune.data.stages import _fingerprint_of

    return _fingerprint_of(_checksums(config))


# ======================================================================================= preprocess
def preprocess(config: RunConfig, output_uri: str) -> PreprocessResult:
    from kubetune.data.stages import _rank_zero_first

    source_uris(config)  # no data at all: an error before anything else
    with _rank_zero_first():
        return _preprocess(config, storage.normalize_uri(output_uri))


def _preprocess(config: RunConfig, output_uri: str) -> PreprocessResult:
    import datasets

    from kubetune.data.stages import _fingerprint_of, _info, _write_json

    inputs = _checksums(config)
    neutral = config.model_copy(update={"data": config.data.model_copy(update={
        "uri": None, "validation_uri": None, "test_uri": None, "sources": []})})
    key = cache.digest({
        "stage": "preprocess", "task": "sft", "kubetune_version": __version__,
        "inputs": {k: {f: v for f, v in c.items() if f != "uri"} for k, c in inputs.items()},
        "config": neutral.fingerprint("data", "split", "sft"),
    })
    metadata = cache.read_complete_metadata(output_uri, config.storage)
    if metadata is not None and metadata.get("cache_key") == key:
        _info("preprocess: reusing %s (cache key %s: same inputs, config and kubetune version)", output_uri, key)
        return _result(output_uri, metadata, reused=True)
    if not is_main_process():
        raise KubetuneError(f"rank {rank()}: no complete preprocess output at {output_uri} after rank 0 ran; see rank 0's log")

    frames = {TRAIN: load_rows(config)}
    for split, source_key in _SEPARATE.items():
        uri = config.data.validation_uri if split == VALIDATION else config.data.test_uri
        if uri:
            frames[split] = _format_only(load_source(uri, source_key, config), config, source_key, uri)
    carve = tuple(name for name in (TEST, VALIDATION) if name not in frames)
    parts = split_frame(frames[TRAIN], config, carve)
    parts.update({name: frames[name] for name in frames if name != TRAIN})
    dataset = datasets.DatasetDict({name: datasets.Dataset.from_pandas(parts[name].reset_index(drop=True), preserve_index=False)
                                    for name in SPLITS})
    rows = {name: len(dataset[name]) for name in SPLITS}
    metadata = {
        "stage": "preprocess", "task": "sft", "kubetune_version": __version__, "cache_key": key,
        "config": config.model_dump(mode="json", include={"task", "data", "split", "sft"}),
        "inputs": inputs, "input_fingerprint": _fingerprint_of(inputs), "rows": rows,
        "columns": format_columns(config.sft),
        "split": {"method": "random", "seed": config.split.seed,
                  "sizes": {"test": config.split.test_size, "validation": config.split.val_size}, "carved": list(carve)},
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _info("preprocess: writing %s", output_uri)
    with storage.atomic_output_dir(output_uri, "preprocess", config.storage) as staging:
        dataset.save_to_disk(str(staging))
        _write_json(staging / cache.METADATA_FILE, metadata)
    return _result(output_uri, metadata, reused=False)


def load_rows(config: RunConfig) -> pd.DataFrame:
    """The train input's rows: every source, columns aligned, then `data.ops`, cut to the format's columns."""
    from kubetune.data.stages import _info

    sources = source_uris(config)
    frames = []
    for key, uri in sources:
        _info("preprocess: loading %s %s", key, uri)
        frames.append(load_source(uri, key, config))
    frame = align_columns(frames, [f"{key} {uri}" for key, uri in sources])
    frame = apply_ops(frame, config.data.ops)
    return _format_only(frame, config, sources[0][0] if len(sources) == 1 else "data.sources",
                        ", ".join(uri for _, uri in sources))


def _format_only(frame: pd.DataFrame, config: RunConfig, source_key: str, uri: str) -> pd.DataFrame:
    from kubetune.data.load import check_columns

    columns = format_columns(config.sft)
    after = " after data.ops" if config.data.ops and source_key.startswith(("data.uri", "data.sources")) else ""
    check_columns(frame, {key: [column] for key, column in columns.items()}, source_key, uri + after)
    return frame[list(dict.fromkeys(columns.values()))]


def split_frame(frame: pd.DataFrame, config: RunConfig, carve: tuple[str, ...]) -> dict[str, pd.DataFrame]:
    """Random train/validation/test rows (seeded by split.seed): causal-LM examples have no label to stratify by."""
    order = np.random.default_rng(config.split.seed).permutation(len(frame))
    sizes = {TEST: config.split.test_size, VALIDATION: config.split.val_size}
    parts: dict[str, Any] = {}
    start = 0
    for name in (TEST, VALIDATION):
        if name in carve:
            count = round(sizes[name] * len(frame))
            if sizes[name] > 0:
                count = max(count, 1)
            parts[name] = frame.iloc[order[start:start + count]]
            start += count
    parts[TRAIN] = frame.iloc[np.sort(order[start:])]
    if len(parts[TRAIN]) == 0:
        raise DataError(f"the train split is empty ({len(frame)} rows); lower split.test_size and split.val_size")
    return parts


def _result(output_uri: str, metadata: dict[str, Any], reused: bool) -> PreprocessResult:
    from kubetune.console import print_table
    from kubetune.data.stages import PreprocessResult

    result = PreprocessResult(output_uri=output_uri, rows=dict(metadata["rows"]), num_real_labels=0, max_classes=0,
                              reused=reused, cache_key=metadata["cache_key"])
    total = sum(result.rows.values())
    print_table(["split", "rows", "share"],
                [[name, count, f"{100 * count / total:.1f}%" if total else "-"] for name, count in result.rows.items()],
                title=f"preprocess → {output_uri} (sft, random split{', reused' if reused else ''})")
    return result


# ========================================================================================= tokenize
def tokenize(config: RunConfig, input_uri: str, output_uri: str) -> TokenizeResult:
    from kubetune.data.stages import _rank_zero_first

    with _rank_zero_first():
        return _tokenize(config, storage.normalize_uri(input_uri), storage.normalize_uri(output_uri))


def tokenize_cache_key(config: RunConfig, checksum: dict[str, Any], tokenizer_hash: str) -> str:
    neutral = config.model_copy(update={"tokenize": config.tokenize.model_copy(update={"num_proc": 1, "batch_size": 1000,
                                                                                        "model_name": None})})
    return cache.digest({
        "stage": "tokenize", "task": "sft", "kubetune_version": __version__, "layout": SFT_TOKENIZED_LAYOUT,
        "input": {f: v for f, v in checksum.items() if f != "uri"},
        "config": neutral.fingerprint("tokenize", "sft"), "tokenizer": tokenizer_hash,
    })


def _tokenize(config: RunConfig, input_uri: str, output_uri: str) -> TokenizeResult:
    from kubetune.data.sft import tokenizer_digest
    from kubetune.data.stages import _NOT_CONTENT, reuse_tokenized
    from kubetune.data.tokenization import load_tokenizer, tokenizer_source

    if not storage.is_complete(input_uri, config.storage):
        raise DataError(f"tokenize input {input_uri} is not a complete kubetune preprocess output (no "
                        f"{storage.COMPLETE_MARKER} marker); run `kubetune preprocess` into it first")
    with tempfile.TemporaryDirectory(prefix="kubetune-tokenize-") as scratch_name:
        scratch = Path(scratch_name)
        source = tokenizer_source(config, scratch)
        tokenizer_hash = tokenizer_digest(source)
        checksum = cache.input_checksum(input_uri, config.storage, exclude=_NOT_CONTENT)
        key = tokenize_cache_key(config, checksum, tokenizer_hash)
        reused = reuse_tokenized(config, output_uri, key)
        if reused is not None:
            return reused
        if not is_main_process():
            raise KubetuneError(f"rank {rank()}: no complete tokenize output at {output_uri} after rank 0 ran; see rank 0's log")
        tokenizer = load_tokenizer(config, source)
        check_sft_tokenizer(tokenizer, config.sft, config.tokenizer_name)
        return _tokenize_into(config, tokenizer, tokenizer_hash, input_uri, output_uri, key, scratch)


def tokenize_splits(config: RunConfig, tokenizer: Any, dataset: datasets.DatasetDict,
                    scratch: Path | None = None, key: str = "") -> tuple[dict[str, datasets.Dataset], dict[str, int]]:
    """Each split rendered and tokenized (kubetune.data.sft.encode_rows), rows without a trained token dropped
    (their count per split returned), the train split packed when `sft.packing` with `concatenate`. The test
    split keeps each row's raw columns beside its tokens, as `raw.<column>`."""
    import datasets

    from kubetune.data.stages import RAW_PREFIX, _procs

    sft = config.sft
    encoded, dropped = {}, {}
    for name, split in dataset.items():
        kwargs = {"cache_file_name": str(scratch / f"tokenized-{name}.arrow"), "new_fingerprint": f"{key}-{name}"} if scratch else {}
        tokens = split.map(encode_rows, batched=True, with_indices=True, batch_size=config.tokenize.batch_size,
                           fn_kwargs={"tokenizer": tokenizer, "sft": sft}, remove_columns=split.column_names,
                           num_proc=_procs(config.tokenize.num_proc, len(split)), desc=f"tokenize {name}", **kwargs)
        if name == TEST:
            raw = split.rename_columns({c: f"{RAW_PREFIX}{c}" for c in split.column_names})
            tokens = datasets.concatenate_datasets([tokens, raw], axis=1)
        trained = np.asarray(tokens["trained"]) if len(tokens) else np.zeros(0)
        dropped[name] = int((trained == 0).sum())
        if dropped[name]:
            tokens = tokens.select(np.flatnonzero(trained > 0))
        encoded[name] = tokens
    return encoded, dropped


def _tokenize_into(config: RunConfig, tokenizer: Any, tokenizer_hash: str, input_uri: str, output_uri: str,
                   key: str, scratch: Path) -> TokenizeResult:
    import datasets

    from kubetune.data.stages import (
        DIAGNOSTICS_FILE,
        TokenizeResult,
        _info,
        _print_tokenize_summary,
        _warn,
        _write_json,
    )
    from kubetune.data.tokenization import split_diagnostics

    sft = config.sft
    local_input = storage.download(input_uri, scratch / "input", config.storage)
    try:
        input_metadata = json.loads((local_input / cache.METADATA_FILE).read_text())
    except FileNotFoundError:
        raise DataError(f"tokenize input {input_uri} has no {cache.METADATA_FILE}; run `kubetune preprocess` into it") from None
    if input_metadata.get("task") != "sft":
        raise DataError(f"tokenize input {input_uri} was preprocessed for classification, not task: sft; run "
                        "`kubetune preprocess` with this config into it")
    dataset = datasets.load_from_disk(str(local_input))
    for name, split in dataset.items():
        missing = [f"{k} ({c!r})" for k, c in format_columns(sft).items() if c not in split.column_names]
        if missing:
            raise DataError(f"tokenize input {input_uri}: split {name} lacks the column of {', '.join(missing)}; "
                            "run `kubetune preprocess` with this config into it")
    _info("tokenize: %s with %s (%s format, max_seq_length %d%s)", input_uri, config.tokenizer_name, sft.format,
          sft.max_seq_length, f", packing by {sft.packing_method}" if sft.packing else "")
    encoded, dropped = tokenize_splits(config, tokenizer, dataset, scratch, key)
    warnings: list[str] = []
    for name, count in dropped.items():
        if count:
            _warn(warnings, f"tokenize: dropped {count} rows of the {name} split with no response token left within "
                            f"sft.max_seq_length ({sft.max_seq_length}); raise it")
    for name in (TRAIN, VALIDATION):
        if len(encoded[name]) == 0:
            raise DataError(f"the {name} split has no rows left to train on after tokenizing; raise sft.max_seq_length "
                            "or check the response column")

    settings = config.tokenize.diagnostics
    rng = np.random.default_rng(settings.seed)
    splits = {}
    for name, split in encoded.items():
        stats = split_diagnostics(np.asarray(split["full_length"]), sft.max_seq_length, settings.percentiles)
        stats["dropped_rows"] = dropped[name]
        stats["trained_tokens"] = int(np.asarray(split["trained"]).sum()) if len(split) else 0
        stats["samples"] = decoded_samples(split, tokenizer, settings.sample_size, rng)
        splits[name] = stats
    diagnostics = {"tokenizer": config.tokenizer_name, "max_length": sft.max_seq_length,
                   "percentiles": list(settings.percentiles), "splits": splits}

    from kubetune.data.stages import RAW_PREFIX

    columns = ["input_ids", "attention_mask", "labels", "length"]
    result_set = {name: split.select_columns(columns + [c for c in split.column_names if c.startswith(RAW_PREFIX)])
                  for name, split in encoded.items()}
    if sft.packing and sft.packing_method == "concatenate":
        before = len(result_set[TRAIN])
        result_set[TRAIN] = pack_split(result_set[TRAIN], sft.max_seq_length)
        diagnostics["packing"] = {"method": "concatenate", "examples": before, "rows": len(result_set[TRAIN])}
    result = datasets.DatasetDict(result_set)
    metadata = {
        **input_metadata,
        "tokenize": {
            "cache_key": key, "task": "sft", "tokenizer": config.tokenizer_name, "tokenizer_hash": tokenizer_hash,
            "input": input_uri, "format": sft.format, "max_seq_length": sft.max_seq_length,
            "completion_only_loss": sft.masks_prompt, "packing": sft.packing_method if sft.packing else None,
            "chat_template": tokenizer.chat_template if sft.renders_chat else None,
            "pad_token_id": tokenizer.pad_token_id, "columns": {name: split.column_names for name, split in result.items()},
            "warnings": warnings, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
    _info("tokenize: writing %s", output_uri)
    with storage.atomic_output_dir(output_uri, "tokenize", config.storage) as staging:
        result.save_to_disk(str(staging))
        _write_json(staging / cache.METADATA_FILE, metadata)
        _write_json(staging / DIAGNOSTICS_FILE, diagnostics)
    from kubetune.data.stages import diagnostics_split_rows

    tokenize_result = TokenizeResult(output_uri, diagnostics_split_rows(diagnostics), False, key, diagnostics)
    _print_tokenize_summary(diagnostics, tokenize_result)
    return tokenize_result
