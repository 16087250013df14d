"""Score raw rows with a trained model: `kubetune predict`, the batch-scoring step and the MLflow model.

A `Predictor` is a trained model/ folder ready to classify rows of the training data's shape. Everything
inference must do as training did is read from that folder, never re-specified by hand:

- the serialization (`serialize` section: columns, separator, column names, number rounding) and the
  label column: model_metadata.json's `"inference"` entry, written by the trainer (`inference_metadata`);
  a folder written before it falls back to the training run's OUT/config.yaml beside model/;
- the tokenizer and its max_length: the tokenizer files in the folder, max_length from the same entry;
- the label map: label_map.json. Probabilities are a softmax over the real labels only, so a dummy
  (spare) slot can never be predicted.

Rows are serialized by the very function preprocess maps over its datasets (kubetune.data.serialize), after
the same trip through Arrow, so a row's text is byte-identical to the text the model was trained on.
Scoring sorts rows by token length and batches neighbours (little padding), each batch as many rows as fit
in the padded tokens of `batch_size` rows of max_length (short rows go many to a batch), in
torch.inference_mode with the LoRA merged, bf16 autocast on a CUDA GPU that has it; results come back in
input order.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from kubetune import storage
from kubetune.config import SerializeConfig, StorageConfig
from kubetune.data.labels import LABEL_MAP_FILE, LabelMap
from kubetune.errors import DataError, KubetuneError, short_reason

if TYPE_CHECKING:
    from kubetune.config import RunConfig

logger = logging.getLogger(__name__)

INFERENCE_KEY = "inference"  # model_metadata.json's entry that says how to turn raw rows into model inputs
MODEL_METADATA_FILE = "model_metadata.json"  # = kubetune.train.model.MODEL_METADATA_FILE (not imported: torch)
TRAIN_CONFIG_FILE = "config.yaml"  # the trainer's resolved config, in OUT/ beside OUT/model
REGISTRY_SCHEME = "models:/"
DEFAULT_BATCH_SIZE = 64
# Output columns predict adds; a retained id column of the same name would be overwritten.
PREDICTED_LABEL, PROBABILITY, TOP_LABELS, TOP_PROBABILITIES, NEEDS_REVIEW = (
    "predicted_label", "probability", "top_labels", "top_probabilities", "needs_review")
OUTPUT_COLUMNS = (PREDICTED_LABEL, PROBABILITY, TOP_LABELS, TOP_PROBABILITIES, NEEDS_REVIEW)
# Parquet schema metadata that marks a file written by `kubetune predict`: the only kind of existing
# file predict replaces (as atomic_output_dir replaces only folders with its _COMPLETE marker).
PREDICTIONS_MARKER = b"kubetune.predictions"
SHOWN_LABELS = 10  # labels listed in the summary


def inference_metadata(config: RunConfig, data_metadata: dict[str, Any]) -> dict[str, Any]:
    """model_metadata.json's `"inference"` entry: what turns a raw row into the model's input.

    Taken from the training data's own metadata where it records it (the serialize settings preprocess
    used, with `text_columns` resolved when the config left them empty: every column but the label),
    else from the run's config.
    """
    from pydantic import ValidationError

    recorded = (data_metadata.get("config") or {}).get("serialize")
    try:
        serialize = SerializeConfig(**recorded) if recorded else config.serialize
    except ValidationError:  # data made by a kubetune whose serialize section differed: the run's own settings
        serialize = config.serialize
    text_columns = data_metadata.get("text_columns") or serialize.text_columns
    label_column = ((data_metadata.get("config") or {}).get("split") or {}).get("label_column") or config.split.label_column
    max_length = (data_metadata.get("tokenize") or {}).get("max_length") or config.tokenize.max_length
    return {
        "serialize": {**serialize.model_dump(mode="json"), "text_columns": list(text_columns)},
        "label_column": label_column,
        "max_length": int(max_length),
    }


# ------------------------------------------------------------------------------------- model folders
@dataclass(frozen=True)
class InferenceSpec:
    """How raw rows become model inputs, as the model's training did it."""

    serialize: SerializeConfig
    label_column: str
    max_length: int

    @property
    def input_columns(self) -> tuple[str, ...]:
        return tuple(self.serialize.text_columns)


def _spec_from_training_config(reference: str, config_text: str | None) -> InferenceSpec:
    """A model folder written before model_metadata.json had its `"inference"` entry: the run's config.yaml."""
    from kubetune.config import config_from_yaml_text

    too_old = (f"{reference} predates `kubetune predict` (its {MODEL_METADATA_FILE} has no {INFERENCE_KEY!r} "
               f"entry{{why}}); retrain it with this kubetune to score raw rows")
    if config_text is None:
        raise DataError(too_old.format(why=f" and no {TRAIN_CONFIG_FILE} is beside it"))
    config = config_from_yaml_text(config_text, source=f"{reference}/../{TRAIN_CONFIG_FILE}")
    if not config.serialize.text_columns:
        raise DataError(too_old.format(why=f", and its {TRAIN_CONFIG_FILE} leaves serialize.text_columns to the data"))
    return InferenceSpec(config.serialize, config.split.label_column, config.tokenize.max_length)


def read_inference_spec(model_dir: Path, reference: str, parent_config: str | None = None) -> InferenceSpec:
    """The folder's InferenceSpec; `parent_config`: the text of OUT/config.yaml when the folder is remote."""
    try:
        metadata = json.loads((model_dir / MODEL_METADATA_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"--model: {reference}/{MODEL_METADATA_FILE} is not JSON ({short_reason(exc)}); "
                        "give a model/ folder written by `kubetune train`") from None
    entry = metadata.get(INFERENCE_KEY)
    if entry is None:
        if parent_config is None and (model_dir.parent / TRAIN_CONFIG_FILE).is_file():
            parent_config = (model_dir.parent / TRAIN_CONFIG_FILE).read_text()
        return _spec_from_training_config(reference, parent_config)
    try:
        spec = InferenceSpec(SerializeConfig(**entry["serialize"]), str(entry["label_column"]), int(entry["max_length"]))
    except (KeyError, TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise DataError(f"{reference}: its {MODEL_METADATA_FILE} has an {INFERENCE_KEY!r} entry this kubetune cannot "
                        f"read ({short_reason(exc)}); score it with the kubetune that trained it, or retrain it") from None
    if not spec.input_columns:
        raise DataError(f"{reference}: its {MODEL_METADATA_FILE} names no input columns ({INFERENCE_KEY}.serialize."
                        "text_columns is empty); retrain it with this kubetune")
    return spec


def check_model_task(model_dir: Path, reference: str, task: str) -> None:
    """A model of the other task than the config's is one line naming both (model_metadata.json's `task`,
    classification when absent); a folder without readable metadata is left to the caller's own checks."""
    try:
        found = json.loads((model_dir / MODEL_METADATA_FILE).read_text()).get("task") or "classification"
    except (OSError, ValueError, AttributeError):
        return
    if found != task:
        raise DataError(f"--model: {reference} is a task: {found} model and this config has task: {task}; "
                        f"pass --config with the task: {found} config it was trained with")


def check_model_folder(model_dir: Path, reference: str) -> None:
    """A kubetune model/ folder: one line naming what is missing otherwise."""
    if not model_dir.exists():
        raise KubetuneError(f"--model: {reference} not found; give a train output's model/ folder, an s3:// model/ "
                            "prefix or models:/<name>@<alias>")
    if not model_dir.is_dir():
        raise KubetuneError(f"--model: {reference} is a file; give a train output's model/ folder")
    if not (model_dir / LABEL_MAP_FILE).is_file():  # a causal LM has none: then the config's task is the mistake
        check_model_task(model_dir, reference, "classification")
    for name in (LABEL_MAP_FILE, MODEL_METADATA_FILE):
        if not (model_dir / name).is_file():
            raise DataError(f"--model: {reference} has no {name}: it is not a model/ folder written by `kubetune train`")


def _download_model_folder(reference: str, scratch: Path, config: StorageConfig | None) -> tuple[Path, str | None]:
    """(local copy of an s3:// model/ prefix, the text of OUT/config.yaml beside it or None)."""
    uri = storage.normalize_uri(reference).rstrip("/")
    fs, path = storage.filesystem(uri, config)
    if not storage.with_retries(lambda: fs.isdir(path), f"checking {uri}", config=config):
        raise KubetuneError(f"--model: {reference} not found in object storage; give a train output's model/ prefix")
    local = storage.download(uri, scratch / "model", config)
    parent_config = f"{uri.rsplit('/', 1)[0]}/{TRAIN_CONFIG_FILE}"
    text = storage.read_text(parent_config, config) if storage.exists(parent_config, config) else None
    return local, text


def _registry_reference(reference: str) -> tuple[str, str | None, str | None]:
    """models:/<name>@<alias> → (name, alias, None); models:/<name>/<version> → (name, None, version)."""
    rest = reference[len(REGISTRY_SCHEME):].strip("/")
    if "@" in rest:
        name, alias = rest.rsplit("@", 1)
        if name and alias and "/" not in name:
            return name, alias, None
    elif rest.count("/") == 1:
        name, version = rest.split("/")
        if name and version.isdigit():
            return name, None, version
    raise KubetuneError(f"--model: {reference!r} is not a registry reference; write models:/<name>@<alias> or "
                        "models:/<name>/<version>")


def download_registered_model(reference: str, scratch: Path, tracking_uri: str | None, task: str = "classification") -> Path:
    """The model/ folder inside the artifacts of a registered model version (the folder holding model_metadata.json,
    with label_map.json for a classifier); a version of the other task is one line saying so."""
    from mlflow.exceptions import MlflowException

    from kubetune import tracking

    name, alias, version = _registry_reference(reference)
    if not tracking_uri:
        raise KubetuneError(f"--model: {reference} is in an MLflow registry but no tracking URI is set; set "
                            "tracking.tracking_uri or $MLFLOW_TRACKING_URI (local `kubetune run`s keep theirs in "
                            "<storage.runs_uri>/mlflow.db: none there)")
    client = tracking.client_for(tracking_uri)
    try:
        found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
    except MlflowException as exc:
        which = f"alias {alias!r}" if alias else f"version {version}"
        code = getattr(exc, "error_code", "")
        if code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
            raise KubetuneError(f"--model: {reference}: the MLflow registry at {tracking_uri} has no registered model "
                                f"{name!r} with {which}") from None
        raise KubetuneError(f"--model: cannot read {reference} from the MLflow registry at {tracking_uri} "
                            f"({short_reason(exc)})") from None
    import mlflow.artifacts

    from kubetune.serving import tracking_uri_set

    target = scratch / "registered"
    target.mkdir(parents=True, exist_ok=True)
    try:
        # The process's URI too: the registry's download resolves a version's source (models:/<model id>) with it.
        with tracking_uri_set(tracking_uri):
            mlflow.artifacts.download_artifacts(artifact_uri=f"{REGISTRY_SCHEME}{name}/{found.version}",
                                                dst_path=str(target), tracking_uri=tracking_uri)
    except MlflowException as exc:
        raise KubetuneError(f"--model: cannot download {reference} (version {found.version}) from {tracking_uri} "
                            f"({short_reason(exc)})") from None
    # A merged/ copy inside the folder holds the same files: the shallowest is the model/ folder itself.
    folders = sorted((p.parent for p in target.rglob(MODEL_METADATA_FILE)), key=lambda p: len(p.parts))
    if not folders:
        raise DataError(f"--model: {reference} (version {found.version}) holds no kubetune model folder "
                        f"(no {MODEL_METADATA_FILE}); register a model logged by kubetune")
    check_model_task(folders[0], f"{reference} (version {found.version})", task)
    if task == "classification" and not (folders[0] / LABEL_MAP_FILE).is_file():
        raise DataError(f"--model: {reference} (version {found.version}) holds no kubetune model folder "
                        f"({MODEL_METADATA_FILE} and {LABEL_MAP_FILE}); register a model logged by kubetune")
    return folders[0]


def token_budget_batches(sorted_lengths: np.ndarray, budget: int) -> list[tuple[int, int]]:
    """(start, stop) of consecutive batches over rows sorted longest first, each as many rows as fit in `budget`
    padded tokens (rows x its longest row), at least one: short rows go many to a batch, long ones few."""
    batches, start = [], 0
    while start < len(sorted_lengths):
        rows = max(1, budget // max(1, int(sorted_lengths[start])))
        stop = min(len(sorted_lengths), start + rows)
        batches.append((start, stop))
        start = stop
    return batches


# ----------------------------------------------------------------------------------------- Predictor
@dataclass
class Predictor:
    """A trained kubetune model/ folder ready to score raw rows: serialization, tokenizer (and its max_length)
    and label map all read from the model folder, never re-specified by hand.

    `load` checks the folder and reads its metadata; the weights load on first use (`load_weights`), so a
    command can check its other arguments before the expensive part.
    """

    model_dir: Path  # the local model/ folder it was loaded from
    label_map: LabelMap
    spec: InferenceSpec
    reference: str  # what the user gave (a path, an s3:// URI, a models:/ reference), for messages
    _weights: tuple[Any, Any] | None = field(default=None, repr=False)  # (model, tokenizer) once loaded
    _scratch: tempfile.TemporaryDirectory | None = field(default=None, repr=False)  # the downloaded copy's home

    @property
    def input_columns(self) -> tuple[str, ...]:
        """Raw columns the model serializes (its training serialize.text_columns)."""
        return self.spec.input_columns

    @property
    def label_column(self) -> str:
        return self.spec.label_column

    @property
    def retain_columns(self) -> tuple[str, ...]:
        """Its training serialize.retain_columns: id columns copied into the predictions."""
        return tuple(c for c in self.spec.serialize.retain_columns if c not in OUTPUT_COLUMNS)

    @classmethod
    def load(cls, reference: str, *, storage: StorageConfig | None = None,
             tracking_uri: str | None = None) -> Predictor:
        """A local model/ folder, an s3:// model/ prefix, or models:/<name>@<alias> / models:/<name>/<version>
        (the MLflow registry of `tracking_uri`, else $MLFLOW_TRACKING_URI). A bad reference is one line naming it."""
        import os

        from kubetune import storage as object_storage

        scratch: tempfile.TemporaryDirectory | None = None
        parent_config = None
        if reference.startswith(REGISTRY_SCHEME):
            scratch = tempfile.TemporaryDirectory(prefix="kubetune-predict-model-")
            model_dir = download_registered_model(reference, Path(scratch.name),
                                                   tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
        else:
            object_storage.check_location("--model", reference)
            if object_storage.is_remote(object_storage.normalize_uri(reference)):
                scratch = tempfile.TemporaryDirectory(prefix="kubetune-predict-model-")
                model_dir, parent_config = _download_model_folder(reference, Path(scratch.name), storage)
            else:
                model_dir = Path(object_storage.normalize_uri(reference)).expanduser()
        check_model_folder(model_dir, reference)
        label_map = LabelMap.load(model_dir)
        spec = read_inference_spec(model_dir, reference, parent_config)
        return cls(model_dir=model_dir, label_map=label_map, spec=spec, reference=reference, _scratch=scratch)

    # ------------------------------------------------------------------------------------- the model
    def load_weights(self) -> tuple[Any, Any]:
        """(model, tokenizer), loaded once (kubetune.train.model.load_trained_classifier) with the LoRA merged in,
        on the GPU when there is one."""
        if self._weights is None:
            import torch

            from kubetune.train.model import install_dummy_slot_mask, load_trained_classifier

            model, tokenizer, _ = load_trained_classifier(self.model_dir)
            if hasattr(model, "merge_and_unload"):
                # Fold the adapters into the base weights (in memory): the forward pass skips the LoRA matmuls.
                model = model.merge_and_unload()
                install_dummy_slot_mask(model, self.label_map.num_real_labels)  # its hook was on the wrapper
            model.to(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
            self._weights = (model, tokenizer)
        return self._weights

    # ------------------------------------------------------------------------------------ the inputs
    def check_columns(self, frame: pd.DataFrame, source: str) -> None:
        """Every input column is in `frame` (`source` names it in the message), else one line naming the missing."""
        missing = [c for c in self.input_columns if c not in frame.columns]
        if missing:
            found = ", ".join(str(c) for c in frame.columns)
            raise DataError(
                f"{source}: column {', '.join(map(repr, missing))} missing (columns found: {found}); the model "
                f"{self.reference} reads {', '.join(self.input_columns)} (its training serialize.text_columns)"
            )

    def texts(self, frame: pd.DataFrame) -> list[str]:
        """The serialized text of each row, byte-identical to what preprocess made of the same row.

        Preprocess serializes rows of a datasets.Dataset made from its DataFrame, so its values reach
        serialize_batch as Arrow gives them to Python (a date as datetime.date, an integer with gaps still
        an int): they take the same trip here.
        """
        import pyarrow as pa

        from kubetune.data.load import _text_where_mixed
        from kubetune.data.serialize import serialize_batch

        self.check_columns(frame, "data")
        columns = list(self.input_columns)
        table = _text_where_mixed(frame[columns].reset_index(drop=True).copy())
        batch = pa.Table.from_pandas(table, preserve_index=False).to_pydict()
        settings = self.spec.serialize
        return serialize_batch(batch, columns, settings.separator, settings.include_column_names,
                               settings.significant_digits)["text"]

    # ------------------------------------------------------------------------------------ the scores
    def probabilities(self, frame: pd.DataFrame, *, batch_size: int = DEFAULT_BATCH_SIZE,
                      progress: bool = False) -> np.ndarray:
        """(rows, num_real_labels) probabilities, columns in the order of label_map.real_labels."""
        return self.probabilities_of_texts(self.texts(frame), batch_size=batch_size, progress=progress)

    def probabilities_of_texts(self, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH_SIZE,
                               progress: bool = False) -> np.ndarray:
        """`probabilities` of rows already serialized (a preprocess output's `text` column, made with the same
        serialize settings as this model's training data: compare `spec.serialize`)."""
        import torch
        from tqdm.auto import tqdm

        model, tokenizer = self.load_weights()
        num_real = self.label_map.num_real_labels
        if not texts:
            return np.zeros((0, num_real), dtype=np.float32)
        encoded = tokenizer(list(texts), truncation=True, max_length=self.spec.max_length, padding=False, verbose=False)
        lengths = np.fromiter((len(ids) for ids in encoded["input_ids"]), dtype=np.int64, count=len(texts))
        # Longest first: a batch too big for memory fails at once, not at the end.
        order = np.argsort(-lengths, kind="stable")
        device = next(model.parameters()).device
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        names = list(encoded.keys())
        scores = np.empty((len(texts), num_real), dtype=np.float32)
        batches = token_budget_batches(lengths[order], batch_size * self.spec.max_length)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            for start, stop in tqdm(batches, desc="predict", unit="batch", disable=not progress):
                rows = order[start:stop]
                batch = tokenizer.pad({name: [encoded[name][i] for i in rows] for name in names}, return_tensors="pt")
                logits = model(**{k: v.to(device) for k, v in batch.items()}).logits.float()
                # Softmax over the real labels only: the dummy slots are no label at all.
                scores[rows] = torch.softmax(logits[:, :num_real], dim=-1).cpu().numpy()
        return scores

    def predict(self, frame: pd.DataFrame, *, top_k: int = 3, review_threshold: float = 0.5,
                progress: bool = False, batch_size: int = DEFAULT_BATCH_SIZE) -> pd.DataFrame:
        """One row per input row, in input order: the retain_columns present in `frame`, then `predicted_label`
        (str), `probability` (of the predicted label), `top_labels` (the k best), `top_probabilities` and
        `needs_review` (probability < review_threshold)."""
        probabilities = self.probabilities(frame, batch_size=batch_size, progress=progress)
        return self.predictions_frame(frame, probabilities, top_k=top_k, review_threshold=review_threshold)

    def predictions_frame(self, frame: pd.DataFrame, probabilities: np.ndarray, *, top_k: int,
                          review_threshold: float) -> pd.DataFrame:
        """`predict`'s output from probabilities already computed."""
        real = np.asarray(self.label_map.real_labels, dtype=object)
        k = max(1, min(top_k, len(real)))
        # Best first; ties keep the label map's order (a stable sort of the negated scores).
        best = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(probabilities, best, axis=1)
        out = pd.DataFrame({c: frame[c].to_numpy() for c in self.retain_columns if c in frame.columns})
        out[PREDICTED_LABEL] = real[best[:, 0]].astype(str) if len(best) else np.asarray([], dtype=str)
        out[PROBABILITY] = best_scores[:, 0].astype(np.float64) if len(best) else np.zeros(0)
        out[TOP_LABELS] = [list(real[row]) for row in best]
        out[TOP_PROBABILITIES] = [[float(p) for p in row] for row in best_scores]
        out[NEEDS_REVIEW] = out[PROBABILITY].to_numpy() < review_threshold
        return out


# ---------------------------------------------------------------------------------------- predict_file
@dataclass(frozen=True)
class PredictionSummary:
    """What `kubetune predict` and the batch-scoring step report."""

    model: str
    data: str
    output: str
    rows: int
    seconds: float  # scoring: serialize, tokenize and the forward passes (not loading the model or the data)
    review_threshold: float
    needs_review: int
    label_counts: dict[str, int]  # predicted label → rows, most frequent first
    labelled_rows: int = 0  # rows with a label the model knows: what the metrics cover
    unknown_label_rows: int = 0  # rows whose label the model was never trained on (excluded from the metrics)
    unlabelled_rows: int = 0  # rows with an empty label (excluded from the metrics)
    metrics: dict[str, float] | None = None  # when the data has the label column

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else math.inf

    @property
    def review_share(self) -> float:
        return self.needs_review / self.rows if self.rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "data": self.data, "output": self.output, "rows": self.rows,
            "seconds": round(self.seconds, 3), "rows_per_second": round(self.rows_per_second, 1),
            "review_threshold": self.review_threshold, "needs_review": self.needs_review,
            "review_share": self.review_share, "label_counts": dict(self.label_counts),
            "labelled_rows": self.labelled_rows, "unknown_label_rows": self.unknown_label_rows,
            "unlabelled_rows": self.unlabelled_rows, "metrics": self.metrics,
        }

    def lines(self) -> list[str]:
        """The summary as plain lines (the CLI prints them; to_markdown dresses them up)."""
        out = [
            f"{self.rows:,} rows scored in {self.seconds:.1f} s ({self.rows_per_second:,.1f} rows/s) → {self.output}",
            f"needs review (probability < {self.review_threshold:g}): {self.needs_review:,} rows "
            f"({100 * self.review_share:.1f}%)",
        ]
        if self.metrics is not None:
            out.append(f"against the label column, on {self.labelled_rows:,} rows: accuracy {self.metrics['accuracy']:.4f}, "
                       f"macro F1 {self.metrics['macro_f1']:.4f}")
        excluded = []
        if self.unknown_label_rows:
            excluded.append(f"{self.unknown_label_rows:,} rows with a label the model was not trained on")
        if self.unlabelled_rows:
            excluded.append(f"{self.unlabelled_rows:,} rows without a label")
        if excluded and self.metrics is not None:
            out.append(f"left out of the metrics: {' and '.join(excluded)}")
        return out

    def top_labels(self, limit: int = SHOWN_LABELS) -> list[tuple[str, int, float]]:
        """(label, rows, share) of the most predicted labels."""
        return [(label, n, n / self.rows if self.rows else 0.0) for label, n in list(self.label_counts.items())[:limit]]

    def to_markdown(self) -> str:
        table = ["| predicted label | rows | share |", "|---|---:|---:|"]
        table += [f"| {label} | {n:,} | {100 * share:.1f}% |" for label, n, share in self.top_labels()]
        return "\n".join(["# kubetune predict", "", f"model: `{self.model}`; data: `{self.data}`", "",
                          *[f"- {line}" for line in self.lines()], "", *table, ""])


def predict_file(model: str, data: str, output: str, config: RunConfig) -> PredictionSummary:
    """Score `data` (CSV / Parquet / JSON Lines / a saved dataset, local or s3://) with `model` and write the
    predictions to `output` (Parquet, atomically); every argument is checked before the model's weights load."""
    from kubetune import tracking
    from kubetune.data.load import load_table

    check_predictions_output(output, config.storage)
    predictor = Predictor.load(model, storage=config.storage, tracking_uri=tracking.tracking_uri_or_local_store(config))
    label_column = predictor.label_column
    frame = load_table(data, "--data", config.predict.format, config.storage, text_columns=[label_column])
    predictor.check_columns(frame, f"--data {data}")
    predictor.load_weights()
    settings = config.predict
    started = time.perf_counter()
    probabilities = predictor.probabilities(frame, batch_size=settings.batch_size, progress=True)
    seconds = time.perf_counter() - started
    predictions = predictor.predictions_frame(frame, probabilities, top_k=settings.top_k,
                                              review_threshold=settings.review_threshold)
    scored = _scored_against_labels(frame, predictor, probabilities) if label_column in frame.columns else {}
    write_predictions(predictions, output, config.storage)
    counts = Counter(predictions[PREDICTED_LABEL].tolist())
    return PredictionSummary(
        model=model, data=data, output=output, rows=len(frame), seconds=seconds,
        review_threshold=settings.review_threshold, needs_review=int(predictions[NEEDS_REVIEW].sum()),
        label_counts=dict(counts.most_common()), **scored,
    )


def _scored_against_labels(frame: pd.DataFrame, predictor: Predictor, probabilities: np.ndarray) -> dict[str, Any]:
    """Metrics over the rows whose label the model knows; the others counted."""
    from kubetune.data.labelize import label_texts
    from kubetune.train.metrics import classification_metrics

    labels = label_texts(frame[predictor.label_column])
    slot = {name: i for i, name in enumerate(predictor.label_map.real_labels)}
    present = labels.notna().to_numpy()
    known = np.asarray([present[i] and labels.iat[i] in slot for i in range(len(labels))], dtype=bool)
    ids = np.asarray([slot[labels.iat[i]] for i in np.flatnonzero(known)], dtype=np.int64)
    metrics = classification_metrics(probabilities[known], ids, predictor.label_map.num_real_labels) if known.any() else None
    return {"labelled_rows": int(known.sum()), "unknown_label_rows": int((present & ~known).sum()),
            "unlabelled_rows": int((~present).sum()), "metrics": metrics}


# --------------------------------------------------------------------------------------------- output
def _is_predictions_file(uri: str, config: StorageConfig | None) -> bool:
    import pyarrow.parquet as pq

    fs, path = storage.filesystem(uri, config)
    try:
        with fs.open(path, "rb") as handle:
            metadata = pq.read_schema(handle).metadata or {}
    except (OSError, ValueError):  # not Parquet at all (pyarrow's ArrowInvalid is a ValueError)
        return False
    return PREDICTIONS_MARKER in metadata


def check_predictions_output(output: str, config: StorageConfig | None = None) -> None:
    """`output` can take the predictions: a file name in a writable place, and not a file of the user's (an
    existing file is replaced only when it is an earlier `kubetune predict` output)."""
    storage.check_output_location("--output", output, file=True, config=config)
    uri = storage.normalize_uri(output)
    if storage.is_remote(uri):
        fs, path = storage.filesystem(uri, config)
        if storage.with_retries(lambda: fs.isdir(path), f"checking {uri}", config=config):
            raise KubetuneError(f"--output: {output} is a folder in object storage; give a file name")
        present = storage.exists(uri, config)
    else:
        present = Path(uri).expanduser().exists()
    if present and not _is_predictions_file(uri, config):
        raise KubetuneError(f"--output: {output} exists and is not a `kubetune predict` output; choose another path")


def write_predictions(predictions: pd.DataFrame, output: str, config: StorageConfig | None = None) -> None:
    """Write Parquet atomically: a temporary file renamed into place (local), or one PUT (object storage)."""
    import uuid

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(predictions, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), PREDICTIONS_MARKER: b"1"})
    uri = storage.normalize_uri(output)
    if storage.is_remote(uri):
        with tempfile.TemporaryDirectory(prefix="kubetune-predict-") as scratch:
            local = Path(scratch) / "predictions.parquet"
            pq.write_table(table, local)
            fs, path = storage.filesystem(uri, config)
            storage.with_retries(lambda: fs.put_file(str(local), path), f"uploading {output}", config=config)
        return
    target = Path(uri).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        pq.write_table(table, temporary)
        temporary.replace(target)
    finally:
        if temporary.exists():
            temporary.unlink()


__all__ = ["INFERENCE_KEY", "InferenceSpec", "PredictionSummary", "Predictor", "check_predictions_output",
           "inference_metadata", "predict_file", "write_predictions"]
