"""Every input the trainer can reject, checked before the model is loaded.

Each problem is one line that names the config key or data column and says what to do (the CLI
prints it and exits 2). Every rank runs the same checks on the same inputs, so a bad input stops
all ranks together instead of leaving some waiting in a collective.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.config import RunConfig
from kubetune.data.labels import LabelMap
from kubetune.errors import ConfigError, DataError, KubetuneError, short_reason
from kubetune.hub import resolve_model_path
from kubetune.train.metrics import METRIC_NAMES, TOP_K

if TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("input_ids", "attention_mask", "labels", "length")
TRAIN, VALIDATION, TEST = "train", "validation", "test"
METADATA_FILE = "dataset_metadata.json"


@dataclass(frozen=True)
class TrainingData:
    directory: Path
    splits: DatasetDict
    label_map: LabelMap
    metadata: dict[str, Any]


def load_training_data(directory: Path, data_uri: str, config: RunConfig) -> TrainingData:
    """The tokenize stage's output (DEVELOPERS.md "tokenize → TOKENIZED/"), checked split by split."""
    from datasets import DatasetDict, load_from_disk

    if not (directory / "dataset_dict.json").is_file():
        raise DataError(
            f"--data {data_uri} is not a tokenized dataset (no dataset_dict.json); pass the output folder of "
            "`kubetune tokenize`"
        )
    label_map = LabelMap.load(directory)
    metadata_file = directory / METADATA_FILE
    if not metadata_file.is_file():
        raise DataError(f"--data {data_uri} has no {METADATA_FILE}; pass the output folder of `kubetune tokenize`")
    metadata = json.loads(metadata_file.read_text())
    names = json.loads((directory / "dataset_dict.json").read_text()).get("splits", [])
    empty = stored_empty_splits(directory, names)
    for name in empty:
        if name != TEST:
            _raise_empty(name)
    # Split by split: `datasets` cannot load a DatasetDict holding a split saved without rows.
    splits = DatasetDict({name: load_from_disk(str(directory / name)) for name in names if name not in empty})
    check_splits(splits, label_map, config)
    return TrainingData(directory=directory, splits=splits, label_map=label_map, metadata=metadata)


def check_splits(splits: DatasetDict, label_map: LabelMap, config: RunConfig) -> None:
    configured = config.split.max_classes
    if configured is not None and configured != label_map.max_classes:
        raise DataError(
            f"split.max_classes is {configured} but the tokenized data has {label_map.max_classes} label slots "
            f"(label_map.json); re-run preprocess and tokenize with this config, or set split.max_classes: "
            f"{label_map.max_classes}"
        )
    for name in (TRAIN, VALIDATION):
        if name not in splits:
            raise DataError(f"the tokenized data has no {name!r} split (it has {', '.join(splits)}); re-run `kubetune preprocess`")
    for name in (TRAIN, VALIDATION):
        if len(splits[name]) == 0:
            _raise_empty(name)
    for name, split in splits.items():
        if name == TEST and len(split) == 0:
            continue  # no test rows: the trainer's final evaluation on test is skipped
        missing = [column for column in REQUIRED_COLUMNS if column not in split.column_names]
        if missing:
            raise DataError(
                f"the {name!r} split has no column {', '.join(repr(c) for c in missing)} (it has "
                f"{', '.join(split.column_names)}); pass the output of `kubetune tokenize`, not of preprocess"
            )
        check_label_ids(name, split, label_map)


def stored_empty_splits(directory: Path, names: list[str]) -> list[str]:
    """Splits saved without rows: `datasets` writes them with no data file, and its DatasetDict loader
    then fails with an IndexError deep inside; their state.json tells them apart."""
    empty = []
    for name in names:
        state = directory / name / "state.json"
        if state.is_file() and not json.loads(state.read_text()).get("_data_files"):
            empty.append(name)
    return empty


def _raise_empty(split: str) -> None:
    if split == TRAIN:
        raise DataError(
            "the 'train' split is empty; lower split.test_size and split.val_size (or check data.uri) so rows remain for training"
        )
    if split == VALIDATION:
        raise DataError(
            "the 'validation' split is empty; set split.val_size above 0 or data.validation_uri, so the trainer can evaluate"
        )
    raise DataError(f"the {split!r} split is empty; re-run `kubetune preprocess` (split.test_size, data.test_uri)")


def check_label_ids(split_name: str, split: Dataset, label_map: LabelMap) -> None:
    """Every `labels` value must be a real label slot: not negative, not a dummy slot, not past the head."""
    import pyarrow.compute as pc

    column = split.data.column("labels")
    if column.null_count:
        raise DataError(f"the {split_name!r} split has {column.null_count} rows without a value in column 'labels'; re-run `kubetune preprocess`")
    low, high = pc.min_max(column).values()
    low, high = low.as_py(), high.as_py()
    if low < 0 or high >= label_map.max_classes:
        bad = low if low < 0 else high
        raise DataError(
            f"the {split_name!r} split holds label id {bad} in column 'labels' but the label map has slots "
            f"0..{label_map.max_classes - 1} (split.max_classes); the data and label_map.json disagree — "
            "re-run `kubetune preprocess` and `kubetune tokenize`"
        )
    if high >= label_map.num_real_labels:
        raise DataError(
            f"the {split_name!r} split holds label id {high} in column 'labels', a dummy slot "
            f"({label_map.labels[high]!r}); only the first {label_map.num_real_labels} slots are real labels — "
            "re-run `kubetune preprocess`"
        )


def check_vocabulary(splits: DatasetDict, vocab_size: int | None, config: RunConfig) -> None:
    """Token ids past the model's vocabulary mean the data was tokenized for another model."""
    import pyarrow.compute as pc

    if not vocab_size:
        return
    for name, split in splits.items():
        if len(split) == 0:
            continue
        highest = pc.max(pc.list_flatten(split.data.column("input_ids"))).as_py()
        if highest is not None and highest >= vocab_size:
            raise DataError(
                f"the {name!r} split holds token id {highest} in column 'input_ids' but model.name "
                f"({config.model.name}) has {vocab_size} tokens: the data was tokenized for another model; "
                "re-run `kubetune tokenize` with this config (tokenize.model_name unset or the same model)"
            )


def check_model(config: RunConfig, model_path: str) -> Any:
    """The base model's config (cheap to load), or a one-line error naming model.name."""
    from transformers import AutoConfig

    name = config.model.name
    if looks_like_path(name) and not Path(model_path).expanduser().exists():
        raise ConfigError([f"model.name: {name} does not exist; give a model folder, a packaged model or a hub id"])
    try:
        return AutoConfig.from_pretrained(model_path, trust_remote_code=config.model.trust_remote_code)
    except (OSError, ValueError) as exc:
        reason = short_reason(exc)
        raise ConfigError([f"model.name: cannot load {name!r} ({reason}); give a model folder, a packaged model or a hub id"]) from None


def check_model_build(config: RunConfig, model_config: Any) -> None:
    """What building the model would reject (`model.dropout`, `lora.modules_to_save`, `lora.target_modules`),
    checked on a weightless copy of the architecture: it costs no memory and runs before OUT is touched."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from kubetune.train.model import HEAD_DROPOUT_KEYS, head_module_names, linear_layer_names
    from kubetune.train.pooling import MEAN, resolve_pooling

    if config.model.dropout is not None and not any(hasattr(model_config, key) for key in HEAD_DROPOUT_KEYS):
        raise ConfigError([
            f"model.dropout: {type(model_config).__name__} has no dropout in front of its classification head; "
            "remove model.dropout"
        ])
    lora = config.lora
    if not lora.enable and config.model.pooling != MEAN:
        return
    try:
        with torch.device("meta"):
            skeleton = AutoModelForSequenceClassification.from_config(
                model_config, trust_remote_code=config.model.trust_remote_code)
    except (OSError, ValueError) as exc:
        # Not fatal here: instantiate_model loads the real thing and reports its own error.
        logger.debug("no weightless copy of %s (%s); LoRA targets are checked when the model is built", config.model.name, exc)
        return
    if config.model.pooling == MEAN:
        resolve_pooling(MEAN, "", skeleton)  # an architecture without a pooler to replace is an error
    if not lora.enable:
        return
    head_module_names(skeleton, lora)
    if isinstance(lora.target_modules, list):
        names = [name for name, _ in skeleton.named_modules()]
        # PEFT's rule for a list: a module matches when its name is the target or ends with ".target".
        missing = [t for t in lora.target_modules if not any(n == t or n.endswith(f".{t}") for n in names)]
        if missing:
            raise ConfigError([
                f"lora.target_modules: {type(skeleton).__name__} has no module named {', '.join(missing)}; its "
                f"linear layers are {', '.join(linear_layer_names(skeleton))}"
            ])


def looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).suffix in (".bin", ".safetensors")


def resolve_model_name(config: RunConfig, local_copy: Path | None) -> str:
    """A path `from_pretrained` can load: the downloaded copy of an s3:// model, or kubetune.hub's answer."""
    return str(local_copy) if local_copy is not None else resolve_model_path(config.model.name)


def stage_tokenizer(config: RunConfig, model_path: str, scratch: Path) -> Path:
    """A local folder with the tokenizer training uses, `config.tokenizer_name` (tokenize.model_name, else the
    base model's), found the way the tokenize stage found it: a local or packaged model, the tokenizer
    files of an s3:// model, or the Hugging Face cache."""
    from kubetune.data.tokenization import tokenizer_source
    from kubetune.distributed import rank

    if config.tokenize.model_name in (None, config.model.name) and Path(model_path).is_dir():
        return Path(model_path)  # the base model's folder, already local (an s3:// model was downloaded)
    # Each rank fetches its own copy (a few small files): no rank reads a folder another is writing.
    return tokenizer_source(config, scratch / f"tokenizer-rank-{rank()}")


def check_tokenizer(config: RunConfig, data: TrainingData, data_uri: str, source: Path) -> None:
    """The tokenizer must be the one the data was tokenized with (its files' hash, in dataset_metadata.json):
    with another, batches are padded with the wrong id and OUT/model ships a tokenizer that doesn't
    match the token ids the model learned."""
    from kubetune.data.tokenization import tokenizer_files_digest

    recorded = data.metadata.get("tokenize") or {}
    expected = recorded.get("tokenizer_hash")
    if not expected:
        return  # tokenized before kubetune recorded the hash: nothing to compare with
    found = tokenizer_files_digest(source)
    if found != expected:
        made_with = recorded.get("tokenizer", "another tokenizer")
        raise ConfigError([
            f"tokenize.model_name: --data {data_uri} was tokenized with {made_with} (tokenizer files {expected}) but "
            f"this config's tokenizer is {config.tokenizer_name} (files {found}); set tokenize.model_name: {made_with}, "
            "or re-run `kubetune tokenize` with this config"
        ])


def check_training_keys(config: RunConfig) -> None:
    """Keys whose mistakes transformers would only report after the model is loaded."""
    metric = config.training.metric_for_best_model.removeprefix("eval_")
    known = [*METRIC_NAMES, "loss"]
    if metric not in known:
        raise ConfigError([
            f"training.metric_for_best_model: unknown metric {metric!r}; choose one of {', '.join(known)}"
        ])
    if config.deepspeed.enable:
        try:
            import deepspeed  # noqa: F401
        except ImportError as exc:
            raise KubetuneError(f"deepspeed.enable is true but DeepSpeed cannot be imported ({short_reason(exc)}); install it or set deepspeed.enable: false") from None
        if config.lora.merge_on_save and zero_stage(config) == 3:
            raise ConfigError(["lora.merge_on_save: merging needs the whole model on one rank, which ZeRO-3 shards; use deepspeed.stage: 2 or merge afterwards"])


def check_metric_available(config: RunConfig, label_map: LabelMap) -> None:
    metric = config.training.metric_for_best_model.removeprefix("eval_")
    if metric == f"top{TOP_K}_accuracy" and label_map.num_real_labels <= TOP_K:
        raise ConfigError([
            f"training.metric_for_best_model: top{TOP_K}_accuracy needs more than {TOP_K} classes and the data has "
            f"{label_map.num_real_labels}; choose macro_f1 or accuracy"
        ])


def zero_stage(config: RunConfig) -> int:
    if config.deepspeed.config:
        return int(config.deepspeed.config.get("zero_optimization", {}).get("stage", config.deepspeed.stage))
    return config.deepspeed.stage
