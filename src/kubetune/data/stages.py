"""The data stages: `preprocess` (load → split → labelize → serialize) and `tokenize`.

Each stage reads its inputs, writes one output directory atomically (see DEVELOPERS.md for the
layout) and returns a small result. A stage whose output already holds the same cache key (same
inputs, same config, same kubetune version; see kubetune.data.cache) returns it at once.

Both are rank-aware: rank 0 does the work while the other ranks wait at a barrier, then find the
complete output and reuse it; only rank 0 prints, logs and writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kubetune import __version__, storage
from kubetune.console import print_table
from kubetune.data import cache
from kubetune.data.labelize import (
    encode_labels,
    label_texts,
    missing_label_rows,
    missing_labels_error,
    unseen_in_train,
)
from kubetune.data.labels import LABEL_MAP_FILE, LabelMap
from kubetune.data.load import check_columns, check_exists, load_table
from kubetune.data.serialize import WHOLE_TEXT, serialize_split_batch
from kubetune.data.split import SPLITS, TEST, TRAIN, VALIDATION, split_rows
from kubetune.data.tokenization import (
    decoded_samples,
    diagnostics_rows,
    encode_batch,
    load_tokenizer,
    split_diagnostics,
    tokenizer_files_digest,
    tokenizer_source,
)
from kubetune.distributed import is_distributed, is_main_process, main_process_first, print_main, rank
from kubetune.errors import ConfigError, DataError, KubetuneError

if TYPE_CHECKING:
    import datasets
    import pandas as pd

    from kubetune.config import RunConfig

logger = logging.getLogger(__name__)

DIAGNOSTICS_FILE = "tokenize_diagnostics.json"
# Bumped when an output's columns change, so a cached output of the old layout is made again.
# Preprocess 2 / tokenize 3: the test split keeps its rows' raw columns (RAW_PREFIX), which the champion gate
# scores the current champion on (tokenize 2: the serialized `text` column is kept for the evaluate step's baseline).
PREPROCESSED_LAYOUT = 2
TOKENIZED_LAYOUT = 3
# The test split's raw data columns, as `raw.<column>`: every column but the label, whatever the model reads, so
# that a model trained on other columns or serialized otherwise (the champion) can be scored on the same rows.
RAW_PREFIX = "raw."
# Output columns the stages make; a retained column of the same name would be overwritten.
RESERVED_COLUMNS = ("text", WHOLE_TEXT, "labels", "input_ids", "attention_mask", "token_type_ids", "length")
# Files of a preprocess output that don't decide its content: datasets' random fingerprints, the
# metadata (its created_at changes on every run) and the marker.
_NOT_CONTENT = frozenset({"state.json", cache.METADATA_FILE, storage.COMPLETE_MARKER})
_SOURCE_KEYS = {TRAIN: "data.uri", VALIDATION: "data.validation_uri", TEST: "data.test_uri"}


@dataclass(frozen=True)
class PreprocessResult:
    output_uri: str
    rows: dict[str, int]
    num_real_labels: int
    max_classes: int
    reused: bool
    cache_key: str


@dataclass(frozen=True)
class TokenizeResult:
    output_uri: str
    rows: dict[str, int]
    reused: bool
    cache_key: str
    diagnostics: dict[str, Any] = field(repr=False)


def _rank_zero_first() -> contextlib.AbstractContextManager[None]:
    """Rank 0 runs the stage first, the others after it (and reuse its output); alone, no barrier
    (whose import of torch.distributed would cost a cached run most of its time)."""
    return main_process_first() if is_distributed() else contextlib.nullcontext()


def _info(message: str, *args: object) -> None:
    if is_main_process():
        logger.info(message, *args)


def _warn(warnings: list[str], message: str) -> None:
    """Log a warning (rank 0) and keep it for the metadata."""
    warnings.append(message)
    if is_main_process():
        logger.warning(message)


# ======================================================================================= preprocess
def preprocess(config: RunConfig, output_uri: str, data_uri: str | None = None) -> PreprocessResult:
    """load → split → labelize → serialize → publish `output_uri`; `data_uri` overrides `data.uri`."""
    if config.task == "sft":
        from kubetune.data import sft_stages

        if data_uri:
            config = config.model_copy(update={"data": config.data.model_copy(update={"uri": data_uri, "sources": []})})
        return sft_stages.preprocess(config, output_uri)
    sources = _sources(config, data_uri)
    _check_preprocess_config(config)
    with _rank_zero_first():
        return _preprocess(config, storage.normalize_uri(output_uri), sources)


def _check_preprocess_config(config: RunConfig) -> None:
    clashes = [c for c in config.serialize.retain_columns if c in RESERVED_COLUMNS]
    if clashes:
        raise ConfigError([
            f"serialize.retain_columns: {', '.join(map(repr, clashes))} would be overwritten by the column of that name "
            f"the stages make ({', '.join(RESERVED_COLUMNS)}); rename the column in the data or stop retaining it"
        ])


def _sources(config: RunConfig, data_uri: str | None = None) -> dict[str, str]:
    """split → input URI: `data.uri` (or `data_uri`), plus the separate validation and test files."""
    data_uri = data_uri or config.data.uri
    if not data_uri:
        raise ConfigError(["data.uri: no data given; set data.uri to a file, a dataset directory or demo://ledger"])
    sources = {TRAIN: data_uri}
    if config.data.validation_uri:
        sources[VALIDATION] = config.data.validation_uri
    if config.data.test_uri:
        sources[TEST] = config.data.test_uri
    return sources


def _input_checksums(config: RunConfig, sources: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Config key → checksum of each input; a missing input is a DataError naming its key."""
    inputs = {}
    for split, uri in sources.items():
        check_exists(uri, _SOURCE_KEYS[split], config.storage)
        inputs[_SOURCE_KEYS[split]] = cache.input_checksum(uri, config.storage)
    return inputs


def _fingerprint_of(inputs: dict[str, dict[str, Any]]) -> str:
    # Content, not location: a copied or moved file keeps its fingerprint. Generated data has no
    # file, so its URI (which decides every row) stands for the content.
    return cache.digest({
        key: {"demo": checksum["uri"]} if checksum.get("generator") else {f: v for f, v in checksum.items() if f != "uri"}
        for key, checksum in inputs.items()
    })


def input_fingerprint(config: RunConfig) -> str:
    """A short hex digest of the run's data inputs (data.uri, data.validation_uri, data.test_uri).

    It changes when the content of any input changes (sha256 of local files, ETag and size of objects
    in object storage, the URI text of demo:// data) and not when a file only moves. Cheap: it reads
    checksums, never the rows. A missing input is the same one-line DataError preprocess gives.
    """
    if config.task == "sft":
        from kubetune.data import sft_stages

        return sft_stages.input_fingerprint(config)
    return _fingerprint_of(_input_checksums(config, _sources(config)))


def preprocess_cache_key(config: RunConfig, sources: dict[str, str]) -> tuple[str, dict[str, dict[str, Any]]]:
    """(cache key, input checksums). Input paths don't count (moving a file keeps its cache), nor do
    process counts, which don't change the result."""
    inputs = _input_checksums(config, sources)
    neutral = config.model_copy(update={
        "data": config.data.model_copy(update={"uri": None, "validation_uri": None, "test_uri": None}),
        "split": config.split.model_copy(update={"labelize_num_proc": 1}),
        "serialize": config.serialize.model_copy(update={"num_proc": 1}),
    })
    key = cache.digest({
        "stage": "preprocess",
        "kubetune_version": __version__,
        "layout": PREPROCESSED_LAYOUT,
        "inputs": {k: {f: v for f, v in c.items() if f != "uri"} for k, c in inputs.items()},
        "config": neutral.fingerprint("data", "split", "serialize"),
    })
    return key, inputs


def _preprocess(config: RunConfig, output_uri: str, sources: dict[str, str]) -> PreprocessResult:
    key, inputs = preprocess_cache_key(config, sources)
    metadata = cache.read_complete_metadata(output_uri, config.storage)
    if metadata is not None and metadata.get("cache_key") == key:
        _info("preprocess: reusing %s (cache key %s: same inputs, config and kubetune version)", output_uri, key)
        result = _preprocess_result(output_uri, metadata, reused=True)
        _print_preprocess_summary(metadata, result)
        return result
    if not is_main_process():
        raise KubetuneError(f"rank {rank()}: no complete preprocess output at {output_uri} after rank 0 ran; see rank 0's log")

    warnings: list[str] = []
    frames, text_columns = _load_sources(config, sources)
    labels = {split: _labels_of(frame, config, _SOURCE_KEYS[split], warnings) for split, frame in frames.items()}
    frames = {split: frames[split].loc[labels[split].index] for split in frames}

    all_labels = set().union(*(set(lab.unique()) for lab in labels.values()))
    label_map = LabelMap.build(all_labels, config.split.label_column, config.split.max_classes, config.split.dummy_prefix)

    carve = tuple(name for name in (TEST, VALIDATION) if name not in sources)
    _info("preprocess: splitting %d rows of data.uri (%s)", len(frames[TRAIN]), _method_name(config, carve))
    outcome = split_rows(frames[TRAIN], labels[TRAIN], config.split, carve)
    for note in outcome.notes:
        _warn(warnings, f"split: {note}")
    parts = {name: (frames[TRAIN].iloc[outcome.positions[name]], labels[TRAIN].iloc[outcome.positions[name]]) for name in (TRAIN, *carve)}
    parts.update({name: (frames[name], labels[name]) for name in sources if name != TRAIN})

    class_counts = {name: dict(sorted(Counter(parts[name][1].tolist()).items())) for name in SPLITS}
    for split, unseen in unseen_in_train(class_counts).items():
        _warn(warnings, f"labels: {len(unseen)} labels of the {split} split ({sum(unseen.values())} rows) never occur in "
                        "train; the model cannot learn them")

    dataset = _labelize_and_serialize(config, parts, text_columns, label_map, warnings)
    rows = {name: len(dataset[name]) for name in SPLITS}
    metadata = {
        "stage": "preprocess",
        "kubetune_version": __version__,
        "cache_key": key,
        "config": {
            **config.model_dump(mode="json", include={"data", "split", "serialize"}),
            "data": {**config.data.model_dump(mode="json"), "uri": sources[TRAIN]},
        },
        "inputs": inputs,
        "input_fingerprint": _fingerprint_of(inputs),
        "rows": rows,
        "class_counts": class_counts,
        "label_map": label_map.to_json(),
        "split": {"method": outcome.method, "seed": config.split.seed,
                  "sizes": {"test": config.split.test_size, "validation": config.split.val_size},
                  "carved": list(carve), **outcome.details},
        "text_columns": text_columns,
        "warnings": warnings,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _info("preprocess: writing %s", output_uri)
    with storage.atomic_output_dir(output_uri, "preprocess", config.storage) as staging:
        dataset.save_to_disk(str(staging))
        label_map.save(staging)
        _write_json(staging / cache.METADATA_FILE, metadata)
    result = _preprocess_result(output_uri, metadata, reused=False)
    _print_preprocess_summary(metadata, result)
    return result


def _method_name(config: RunConfig, carve: tuple[str, ...]) -> str:
    if not carve:
        return "validation and test from their own files"
    if config.split.group_column:
        return f"grouped by {config.split.group_column}"
    if config.split.time_column:
        return f"by time on {config.split.time_column}"
    return "stratified by label" if config.split.stratify else "random"


def _load_sources(config: RunConfig, sources: dict[str, str]) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Load every input and check, before any real work, that the configured columns are there."""
    label = config.split.label_column
    frames: dict[str, pd.DataFrame] = {}
    text_columns = list(config.serialize.text_columns)
    for split, uri in sources.items():
        source_key = _SOURCE_KEYS[split]
        _info("preprocess: loading %s %s", source_key, uri)
        frame = load_table(uri, source_key, config.data.format, config.storage,
                           config.data.max_rows if split == TRAIN else None, text_columns=[label])
        check_columns(frame, {"split.label_column": [label]}, source_key, uri)
        if split == TRAIN:
            check_columns(frame, {
                "split.group_column": [config.split.group_column] if config.split.group_column else [],
                "split.time_column": [config.split.time_column] if config.split.time_column else [],
            }, source_key, uri)
            if not text_columns:
                text_columns = [str(c) for c in frame.columns if c != label]
                if not text_columns:
                    raise DataError(f"serialize.text_columns: {uri} has no column besides the label {label!r}; "
                                    "give data with text columns")
        check_columns(frame, {"serialize.text_columns": text_columns, "serialize.retain_columns": config.serialize.retain_columns},
                      source_key, uri)
        _info("preprocess: %s: %d rows, %d columns", source_key, len(frame), len(frame.columns))
        frames[split] = frame
    return frames, text_columns


def _labels_of(frame: pd.DataFrame, config: RunConfig, source_key: str, warnings: list[str]) -> pd.Series:
    """The labels of `frame` as text, without the rows that have none (or an error, per split.missing_labels)."""
    column = config.split.label_column
    texts = label_texts(frame[column])
    missing = missing_label_rows(texts, config.split.dummy_label)
    if len(missing) == 0:
        return texts.astype(str)
    if config.split.missing_labels == "error":
        raise missing_labels_error(missing, column, source_key, config.split.dummy_label)
    kept = texts.drop(index=missing)
    if len(kept) == 0:
        raise DataError(f"split.label_column: every row of {source_key} lacks a label in column {column!r}; "
                        "check split.label_column and split.dummy_label")
    _warn(warnings, f"labels: dropped {len(missing)} rows of {source_key} without a label in column {column!r} "
                    "(split.missing_labels: drop)")
    return kept.astype(str)


def _labelize_and_serialize(
    config: RunConfig, parts: dict[str, tuple[pd.DataFrame, pd.Series]], text_columns: list[str],
    label_map: LabelMap, warnings: list[str],
) -> datasets.DatasetDict:
    import datasets

    retain = list(config.serialize.retain_columns)
    label2id = label_map.label2id
    out = {}
    for name in SPLITS:
        frame, labels = parts[name]
        needed = list(dict.fromkeys([*text_columns, *retain]))
        table = frame[needed].reset_index(drop=True)
        raw = [f"{RAW_PREFIX}{c}" for c in frame.columns if c != config.split.label_column] if name == TEST else []
        for column in raw:
            table[column] = frame[column.removeprefix(RAW_PREFIX)].reset_index(drop=True)
        # The label goes in as text under a private name: the label column itself may be retained.
        table["__label__"] = labels.to_numpy()
        split = datasets.Dataset.from_pandas(table, preserve_index=False)
        split = split.map(
            encode_labels, batched=True, fn_kwargs={"column": "__label__", "label2id": label2id},
            num_proc=_procs(config.split.labelize_num_proc, len(split)), desc=f"labelize {name}",
            remove_columns=["__label__"],
        )
        split = split.map(
            serialize_split_batch, batched=True, with_indices=True,
            fn_kwargs={"columns": text_columns, "separator": config.serialize.separator,
                       "include_column_names": config.serialize.include_column_names,
                       "significant_digits": config.serialize.significant_digits,
                       "column_dropout": config.serialize.column_dropout if name == TRAIN else 0.0,
                       "seed": config.split.seed},
            num_proc=_procs(config.serialize.num_proc, len(split)), desc=f"serialize {name}",
            remove_columns=[c for c in split.column_names if c not in retain and c not in raw and c != "labels"],
        )
        split = split.select_columns(["text", *([WHOLE_TEXT] if WHOLE_TEXT in split.column_names else []), "labels",
                                      *retain, *raw])
        if split.features["labels"] != datasets.Value("int64"):
            split = split.cast_column("labels", datasets.Value("int64"))
        empty = sum(1 for text in split["text"] if not text)
        if empty and empty == len(split):
            raise DataError(
                f"serialize.text_columns: all {empty:,} rows of the {name} split serialize to an empty text (no value "
                f"in {', '.join(text_columns)}); the model would see nothing: choose columns that hold text"
            )
        if empty:
            _warn(warnings, f"serialize: {empty} rows of the {name} split have no value in any of serialize.text_columns "
                            f"({', '.join(text_columns)}); their text is empty")
        out[name] = split
    return datasets.DatasetDict(out)


def _procs(requested: int, rows: int) -> int | None:
    """datasets.map's num_proc: None (in process) for one process or tiny splits, where forking costs more."""
    return requested if requested > 1 and rows >= 2 * requested else None


def _preprocess_result(output_uri: str, metadata: dict[str, Any], reused: bool) -> PreprocessResult:
    label_map = metadata["label_map"]
    return PreprocessResult(
        output_uri=output_uri, rows=dict(metadata["rows"]), num_real_labels=int(label_map["num_real_labels"]),
        max_classes=int(label_map["max_classes"]), reused=reused, cache_key=metadata["cache_key"],
    )


def _print_preprocess_summary(metadata: dict[str, Any], result: PreprocessResult) -> None:
    total = sum(result.rows.values())
    groups = metadata["split"].get("groups")
    headers = ["split", "rows", "share", "classes", *(["groups"] if groups else [])]
    rows = [
        [name, count, f"{100 * count / total:.1f}%" if total else "-", len(metadata["class_counts"][name]),
         *([groups.get(name, "-")] if groups else [])]
        for name, count in result.rows.items()
    ]
    reused = ", reused" if result.reused else ""
    title = (f"preprocess → {result.output_uri} ({metadata['split']['method']} split{reused}): "
             f"{result.num_real_labels} labels in {result.max_classes} slots")
    print_table(headers, rows, title=title)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


# ========================================================================================= tokenize
def reuse_tokenized(config: RunConfig, output_uri: str, key: str) -> TokenizeResult | None:
    """The complete tokenize output at `output_uri` when its cache key is `key` (its summary printed), else None."""
    metadata = cache.read_complete_metadata(output_uri, config.storage)
    if metadata is None or metadata.get("tokenize", {}).get("cache_key") != key:
        return None
    _info("tokenize: reusing %s (cache key %s: same input, tokenizer and config)", output_uri, key)
    diagnostics = json.loads(storage.read_text(f"{output_uri.rstrip('/')}/{DIAGNOSTICS_FILE}", config.storage))
    result = TokenizeResult(output_uri, dict(diagnostics_split_rows(diagnostics)), True, key, diagnostics)
    _print_tokenize_summary(diagnostics, result)
    return result


def tokenize(config: RunConfig, input_uri: str, output_uri: str) -> TokenizeResult:
    """Tokenize a preprocess output (`input_uri`) into `output_uri`, with diagnostics."""
    if config.task == "sft":
        from kubetune.data import sft_stages

        return sft_stages.tokenize(config, input_uri, output_uri)
    with _rank_zero_first():
        return _tokenize(config, storage.normalize_uri(input_uri), storage.normalize_uri(output_uri))


def _tokenize(config: RunConfig, input_uri: str, output_uri: str) -> TokenizeResult:
    if not storage.is_complete(input_uri, config.storage):
        raise DataError(f"tokenize input {input_uri} is not a complete kubetune preprocess output (no "
                        f"{storage.COMPLETE_MARKER} marker); run `kubetune preprocess` into it first")
    settings = config.tokenize
    with tempfile.TemporaryDirectory(prefix="kubetune-tokenize-") as scratch_name:
        scratch = Path(scratch_name)
        source = tokenizer_source(config, scratch)
        tokenizer_hash = tokenizer_files_digest(source)
        checksum = cache.input_checksum(input_uri, config.storage, exclude=_NOT_CONTENT)
        # The tokenizer counts by its files, not its name; process counts and batch size don't change the result.
        neutral = config.model_copy(update={"tokenize": settings.model_copy(update={"num_proc": 1, "batch_size": 1000,
                                                                                     "model_name": None})})
        key = cache.digest({
            "stage": "tokenize",
            "kubetune_version": __version__,
            "layout": TOKENIZED_LAYOUT,
            "input": {f: v for f, v in checksum.items() if f != "uri"},
            "config": neutral.fingerprint("tokenize"),
            "tokenizer": tokenizer_hash,
        })
        reused = reuse_tokenized(config, output_uri, key)
        if reused is not None:
            return reused
        if not is_main_process():
            raise KubetuneError(f"rank {rank()}: no complete tokenize output at {output_uri} after rank 0 ran; see rank 0's log")
        tokenizer = load_tokenizer(config, source)
        return _tokenize_into(config, tokenizer, tokenizer_hash, input_uri, output_uri, key, scratch)


def diagnostics_split_rows(diagnostics: dict[str, Any]) -> dict[str, int]:
    return {split: stats["rows"] for split, stats in diagnostics["splits"].items()}


def _tokenize_into(config: RunConfig, tokenizer, tokenizer_hash: str, input_uri: str, output_uri: str,
                   key: str, scratch: Path) -> TokenizeResult:
    import datasets

    settings = config.tokenize
    local_input = storage.download(input_uri, scratch / "input", config.storage)
    label_map = LabelMap.load(local_input)
    try:
        input_metadata = json.loads((local_input / cache.METADATA_FILE).read_text())
    except FileNotFoundError:
        raise DataError(f"tokenize input {input_uri} has no {cache.METADATA_FILE}; run `kubetune preprocess` into it") from None
    dataset = datasets.load_from_disk(str(local_input))
    if not isinstance(dataset, datasets.DatasetDict):
        raise DataError(f"tokenize input {input_uri} holds one dataset, not train/validation/test splits; "
                        "run `kubetune preprocess` into it")
    for name, split in dataset.items():
        missing = [c for c in ("text", "labels") if c not in split.column_names]
        if missing:
            raise DataError(f"tokenize input {input_uri}: split {name} lacks column(s) {', '.join(missing)}; "
                            "run `kubetune preprocess` into it")

    _info("tokenize: %s with %s (max_length %d, %s)", input_uri, config.tokenizer_name, settings.max_length,
          "padded to max_length" if settings.padding == "max_length" else "unpadded")
    pad = settings.padding == "max_length"
    encoded = {}
    for name, split in dataset.items():
        encoded[name] = split.map(
            encode_batch, batched=True, batch_size=settings.batch_size,
            fn_kwargs={"tokenizer": tokenizer, "max_length": settings.max_length, "truncation": settings.truncation, "pad": pad},
            num_proc=_procs(settings.num_proc, len(split)), desc=f"tokenize {name}",
            # Our own scratch files: never write datasets' cache next to the input (another stage's output).
            cache_file_name=str(scratch / f"tokenized-{name}.arrow"), new_fingerprint=f"{key}-{name}",
        )
    if not settings.truncation:
        _check_no_overlong(encoded, settings.max_length)

    diagnostics = _diagnostics(config, encoded, tokenizer, label_map)
    columns = [c for c in ("input_ids", "token_type_ids", "attention_mask") if c in encoded[TRAIN].column_names]
    # The serialized text stays: the evaluate step fits its baseline on the rows the model reads (whole_text, when
    # column dropout shortened them, passes through as a retained column). So do the retained columns, and the
    # test split's raw columns.
    def kept_columns(split: datasets.Dataset) -> list[str]:
        retained = [c for c in split.column_names if c not in {*columns, "labels", "length", "full_length", "text"}]
        return [*columns, "labels", "length", "text", *retained]

    kept = kept_columns(encoded[TRAIN])
    result_set = datasets.DatasetDict({name: split.select_columns(kept_columns(split)) for name, split in encoded.items()})
    metadata = {
        **input_metadata,
        "tokenize": {
            "cache_key": key,
            "tokenizer": config.tokenizer_name,
            "tokenizer_hash": tokenizer_hash,
            "input": input_uri,
            "max_length": settings.max_length,
            "truncation": settings.truncation,
            "padding": settings.padding,
            "pad_token_id": tokenizer.pad_token_id,
            "columns": kept,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
    _info("tokenize: writing %s", output_uri)
    with storage.atomic_output_dir(output_uri, "tokenize", config.storage) as staging:
        result_set.save_to_disk(str(staging))
        shutil.copyfile(local_input / LABEL_MAP_FILE, staging / LABEL_MAP_FILE)
        _write_json(staging / cache.METADATA_FILE, metadata)
        _write_json(staging / DIAGNOSTICS_FILE, diagnostics)
    result = TokenizeResult(output_uri, diagnostics_split_rows(diagnostics), False, key, diagnostics)
    _print_tokenize_summary(diagnostics, result)
    return result


def _check_no_overlong(encoded: dict[str, datasets.Dataset], max_length: int) -> None:
    for name, split in encoded.items():
        lengths = np.asarray(split["full_length"])
        over = np.flatnonzero(lengths > max_length)
        if len(over):
            shown = ", ".join(str(i) for i in over[:5]) + (", ..." if len(over) > 5 else "")
            raise DataError(
                f"tokenize.truncation is false but {len(over)} rows of the {name} split are longer than "
                f"tokenize.max_length ({max_length}; longest {int(lengths.max())} tokens; rows {shown}, first row = 0); "
                "raise tokenize.max_length or set tokenize.truncation: true"
            )


def _diagnostics(config: RunConfig, encoded: dict[str, datasets.Dataset], tokenizer, label_map: LabelMap) -> dict[str, Any]:
    settings = config.tokenize.diagnostics
    rng = np.random.default_rng(settings.seed)
    splits = {}
    for name, split in encoded.items():
        stats = split_diagnostics(np.asarray(split["full_length"]), config.tokenize.max_length, settings.percentiles)
        stats["samples"] = decoded_samples(split, tokenizer, label_map.labels, settings.sample_size, rng)
        splits[name] = stats
    return {
        "tokenizer": config.tokenizer_name,
        "max_length": config.tokenize.max_length,
        "percentiles": list(settings.percentiles),
        "splits": splits,
    }


def _print_tokenize_summary(diagnostics: dict[str, Any], result: TokenizeResult) -> None:
    headers, rows = diagnostics_rows(diagnostics)
    reused = " (reused)" if result.reused else ""
    print_table(headers, rows, title=f"tokenize → {result.output_uri}{reused}: token lengths before truncation, "
                                     f"{diagnostics['tokenizer']}, max_length {diagnostics['max_length']}")
    for split, stats in diagnostics["splits"].items():
        for sample in stats.get("samples", []):
            cut = ", truncated" if sample["truncated"] else ""
            print_main(f"{split} row {sample['index']} (label {sample['label']}, {sample['tokens']} tokens{cut}): {sample['decoded']}")

