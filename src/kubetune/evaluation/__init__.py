"""The evaluate stage: score a trained model on the test split and write what a person reads.

EVALUATION/ holds metrics.json (the same metrics as training, over the real classes), confusion.json
(the full matrix), per_class.csv, predictions.parquet (one row per test row: the retained columns,
the true and predicted label and the model's confidence), confusion.png and report.html; and
learning_curves.png when the model folder has a training_history.json (kubetune.train.history).
"""

from __future__ import annotations

import csv
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kubetune import storage
from kubetune.config import RunConfig
from kubetune.errors import DataError
from kubetune.evaluation.curves import learning_curves_png
from kubetune.evaluation.report import (
    confusion_matrix,
    confusion_png,
    fold_matrix,
    per_class_rows,
    render_html,
    worst_confusions,
)
from kubetune.train.history import read_training_history

logger = logging.getLogger(__name__)

# Classes drawn in the KFP UI's confusion matrix and the report's picture; the rest fold into "other".
SHOWN_CLASSES = 25
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
LEARNING_CURVES_FILE = "learning_curves.png"


@dataclass(frozen=True)
class EvaluationResult:
    output_uri: str
    metrics: dict[str, float]
    confusion_labels: list[str]  # folded: the most frequent classes, then "other"
    confusion_matrix: list[list[int]]
    report_path: str


def predict_logits(model, tokenizer, split, batch_size: int) -> np.ndarray:
    """Logits for every row of a tokenized split, batched by similar length so little padding is computed."""
    import torch
    from transformers import DataCollatorWithPadding

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    columns = [c for c in MODEL_INPUTS if c in split.column_names]
    lengths = np.asarray(split["length"]) if "length" in split.column_names else np.asarray([len(x) for x in split["input_ids"]])
    order = np.argsort(-lengths, kind="stable")
    collate = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if device.type == "cuda" else None)
    features = {column: split[column] for column in columns}
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    chunks = []
    from tqdm.auto import tqdm

    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
        for start in tqdm(range(0, len(order), batch_size), desc="evaluate", unit="batch"):
            indices = order[start : start + batch_size]
            batch = collate([{c: features[c][i] for c in columns} for i in indices])
            batch = {k: v.to(device) for k, v in batch.items()}
            chunks.append(model(**batch).logits.float().cpu().numpy())
    logits = np.concatenate(chunks) if chunks else np.zeros((0, model.config.num_labels), dtype=np.float32)
    unsorted = np.empty_like(logits)
    unsorted[order] = logits
    return unsorted


def evaluate(
    config: RunConfig,
    model_uri: str,
    data_uri: str,
    output_uri: str,
    mlflow_run_id: str | None = None,
    split: str = "test",
) -> EvaluationResult:
    """Score `model_uri` (a trainer's model/ folder) on `split` of the tokenized data at `data_uri`."""
    from datasets import load_from_disk

    from kubetune.train.metrics import classification_metrics, real_class_predictions
    from kubetune.train.model import load_trained_classifier

    # The scratch copies live until the end: the model folder is also what the MLflow model is made of.
    with tempfile.TemporaryDirectory(prefix="kubetune-evaluate-") as scratch:
        data_dir = storage.download(data_uri, Path(scratch) / "data", config.storage)
        model_dir = storage.download(model_uri, Path(scratch) / "model", config.storage)
        splits = load_from_disk(str(data_dir))
        if split not in splits:
            raise DataError(f"the tokenized data at {data_uri} has no {split!r} split (it has {', '.join(splits)})")
        rows = splits[split]
        if len(rows) == 0:
            raise DataError(f"the {split!r} split of {data_uri} is empty; raise split.test_size")
        model, tokenizer, label_map = load_trained_classifier(model_dir)
        history = read_training_history(model_dir)
        logits = predict_logits(model, tokenizer, rows, config.training.eval_batch_size)

        labels = np.asarray(rows["labels"])
        num_real = label_map.num_real_labels
        predictions = real_class_predictions(logits, num_real)
        metrics = classification_metrics(logits, labels, num_real)
        matrix = confusion_matrix(labels, predictions, label_map.max_classes)[:num_real, :num_real]
        real = list(label_map.real_labels)
        class_rows = per_class_rows(matrix, real)
        folded_labels, folded = fold_matrix(matrix, real, SHOWN_CLASSES)

        with storage.atomic_output_dir(output_uri, "evaluate", config.storage) as out:
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
            (out / "confusion.json").write_text(json.dumps({"labels": real, "matrix": matrix.tolist()}) + "\n")
            _write_per_class(out / "per_class.csv", class_rows)
            _write_predictions(out / "predictions.parquet", rows, labels, predictions, logits, label_map)
            png = confusion_png(folded_labels, folded)
            (out / "confusion.png").write_bytes(png)
            facts = {
                "split": f"{split} ({len(rows):,} rows)",
                "model": str(model_uri),
                "classes": f"{num_real} real of {label_map.max_classes} slots",
            }
            curves = learning_curves_png(history) if history is not None else None
            if curves is not None:
                (out / LEARNING_CURVES_FILE).write_bytes(curves)
            html = render_html("kubetune evaluation", metrics, class_rows, worst_confusions(matrix, real), png, facts,
                               curves_png=curves)
            (out / "report.html").write_text(html)
            if mlflow_run_id:
                _log_to_mlflow(config, mlflow_run_id, split, metrics, out, model_dir)
    report = f"{storage.normalize_uri(output_uri).rstrip('/')}/report.html"
    return EvaluationResult(output_uri, metrics, folded_labels, folded, report)


def _write_per_class(path: Path, rows) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "support", "predicted", "precision", "recall", "f1"])
        for r in rows:
            writer.writerow([r.label, r.support, r.predicted, f"{r.precision:.6f}", f"{r.recall:.6f}", f"{r.f1:.6f}"])


def _write_predictions(path: Path, rows, labels, predictions, logits, label_map) -> None:
    import pandas as pd

    real = logits[:, : label_map.num_real_labels]
    shifted = np.exp(real - real.max(axis=1, keepdims=True))
    confidence = (shifted.max(axis=1) / shifted.sum(axis=1)) if len(real) else np.zeros(0)
    names = label_map.labels
    retained = [c for c in rows.column_names if c not in (*MODEL_INPUTS, "labels", "length")]
    frame = pd.DataFrame({c: rows[c] for c in retained})
    frame["label"] = [names[i] for i in labels]
    frame["predicted"] = [names[i] for i in predictions]
    frame["confidence"] = confidence.astype(np.float32)
    frame["correct"] = labels == predictions
    frame.to_parquet(path, index=False)


def _log_to_mlflow(config: RunConfig, run_id: str, split: str, metrics: dict[str, float], out: Path,
                   model_dir: Path) -> None:
    """Into the pipeline's run: the metrics (as <split>/<name>, once each: the trainer scores validation only),
    the report, and the model as the run's MLflow model (kubetune.serving). Never fails the step."""
    from kubetune import tracking

    uri = tracking.tracking_uri(config)
    if uri is None:
        logger.warning("MLflow: no tracking.tracking_uri and no $MLFLOW_TRACKING_URI; evaluation results were not logged")
        return
    try:
        from mlflow.entities import Metric

        client = tracking.client_for(uri)
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(f"{split}/{name}", float(value), now, 0) for name, value in metrics.items()])
        for name in ("report.html", "per_class.csv", "confusion.json", "confusion.png", LEARNING_CURVES_FILE):
            if (out / name).exists():
                client.log_artifact(run_id, str(out / name), artifact_path="evaluation")
        if config.tracking.log_model:
            from kubetune.serving import log_model

            log_model(client, run_id, model_dir)
    except Exception as exc:  # noqa: BLE001 - tracking never fails a step
        logger.warning("MLflow: evaluation results were not logged (%s: %s)", type(exc).__name__, exc)
