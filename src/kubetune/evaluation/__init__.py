"""The evaluate stage: score a trained model on the test split and write what a person reads.

EVALUATION/ holds metrics.json (the same metrics as training, over the real classes), confusion.json
(the full matrix), per_class.csv, predictions.parquet (one row per test row: the retained columns,
the true and predicted label and the model's confidence), test_rows.parquet (the same rows' raw data
columns, for the champion gate), confusion.png and report.html; and
learning_curves.png when the model folder has a training_history.json (kubetune.train.history).
Unless `evaluate.baseline: none`, a TF-IDF + linear baseline (kubetune.evaluation.baseline), fit on
the train split's serialized text, is scored on the same rows: baseline_metrics.json (the same keys
as metrics.json), a baseline_f1 column in per_class.csv, and beside the model's figures in the report.
"""

from __future__ import annotations

import csv
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from kubetune import storage
from kubetune.config import RunConfig
from kubetune.data.serialize import WHOLE_TEXT
from kubetune.data.stages import RAW_PREFIX
from kubetune.errors import DataError
from kubetune.evaluation.baseline import BASELINE_METRICS_FILE
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
TEST_ROWS_FILE = "test_rows.parquet"  # the scored rows' raw columns (kubetune.promotion scores the champion on them)


@dataclass(frozen=True)
class EvaluationResult:
    output_uri: str
    metrics: dict[str, float]
    confusion_labels: list[str]  # folded: the most frequent classes, then "other"
    confusion_matrix: list[list[int]]
    report_path: str
    baseline_metrics: dict[str, float] = field(default_factory=dict)  # empty with `evaluate.baseline: none`


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
    if config.task == "sft":
        from kubetune.evaluation.sft import evaluate_sft

        return evaluate_sft(config, model_uri, data_uri, output_uri, mlflow_run_id, split)
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
        if "input_ids" not in rows.column_names:
            raise DataError(f"the data at {data_uri} is not tokenized (its {split!r} split has no input_ids column); "
                            "give the output of `kubetune tokenize`")
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
        baseline = run_baseline(config, splits, rows, tokenizer, num_real)
        baseline_scores = baseline.metrics if baseline else {}
        if baseline:
            matrix_of_baseline = confusion_matrix(labels, baseline.predictions, num_real)
            f1_of_baseline = {r.label: r.f1 for r in per_class_rows(matrix_of_baseline, real)}
            # A class the baseline neither meets nor predicts has F1 0, as the model's would (zero_division=0).
            class_rows = [replace(r, baseline_f1=f1_of_baseline.get(r.label, 0.0)) for r in class_rows]

        with storage.atomic_output_dir(output_uri, "evaluate", config.storage) as out:
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
            if baseline:
                (out / BASELINE_METRICS_FILE).write_text(json.dumps(baseline_scores, indent=2, sort_keys=True) + "\n")
            (out / "confusion.json").write_text(json.dumps({"labels": real, "matrix": matrix.tolist()}) + "\n")
            _write_per_class(out / "per_class.csv", class_rows)
            _write_predictions(out / "predictions.parquet", rows, labels, predictions, logits, label_map)
            _write_test_rows(out / TEST_ROWS_FILE, rows)
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
            if baseline:
                facts["baseline"] = baseline.description
            html = render_html("kubetune evaluation", metrics, class_rows, worst_confusions(matrix, real), png, facts,
                               curves_png=curves, baseline=baseline_scores or None)
            (out / "report.html").write_text(html)
            if mlflow_run_id:
                log_evaluation(config, mlflow_run_id, split, metrics, out, model_dir, baseline_scores)
    report = f"{storage.normalize_uri(output_uri).rstrip('/')}/report.html"
    return EvaluationResult(output_uri, metrics, folded_labels, folded, report, baseline_scores)


def serialized_texts(split, tokenizer) -> list[str]:
    """The serialized text of each row, whole: as the model reads it in use, before tokenization.

    The tokenize stage keeps it in a `text` column, and a training row that `serialize.column_dropout`
    shortened in `whole_text` too (the baseline fits on the whole rows); data tokenized before it did is
    decoded from the token ids instead, which loses what the tokenizer drops (case, for uncased models; the
    cut end).
    """
    if WHOLE_TEXT in split.column_names:
        return list(split[WHOLE_TEXT])
    if "text" in split.column_names:
        return list(split["text"])
    logger.warning("the tokenized data has no text column (tokenized by an older kubetune): the baseline reads "
                   "text decoded from input_ids, cut at tokenize.max_length; tokenize again for the exact text")
    return tokenizer.batch_decode([list(ids) for ids in split["input_ids"]], skip_special_tokens=True)


@dataclass(frozen=True)
class BaselineScores:
    metrics: dict[str, float]  # classification_metrics' keys, as metrics.json
    predictions: np.ndarray  # the predicted slot of each scored row
    description: str  # what it was, for the report


def run_baseline(config: RunConfig, splits, rows, tokenizer, num_real: int) -> BaselineScores | None:
    """Fit the configured baseline on the train split and score it on `rows`; None with `evaluate.baseline: none`."""
    if config.evaluate.baseline == "none":
        return None
    from kubetune.evaluation.baseline import NAME, fit_baseline
    from kubetune.train.metrics import classification_metrics, real_class_predictions

    if "train" not in splits:
        raise DataError("the tokenized data has no 'train' split to fit the baseline on; set evaluate.baseline: none")
    train = splits["train"]
    started = time.perf_counter()
    baseline = fit_baseline(serialized_texts(train, tokenizer), np.asarray(train["labels"]), num_real,
                            max_features=config.evaluate.baseline_max_features,
                            max_rows=config.evaluate.baseline_max_train_rows)
    scores = baseline.decision_scores(serialized_texts(rows, tokenizer))
    seconds = time.perf_counter() - started
    labels = np.asarray(rows["labels"])
    fitted_rows = min(len(train), config.evaluate.baseline_max_train_rows)
    description = f"{NAME}, fitted on {fitted_rows:,} train rows ({seconds:.1f} s)"
    logger.info("baseline: %s; scored %d rows", description, len(rows))
    return BaselineScores(classification_metrics(scores, labels, num_real), real_class_predictions(scores, num_real),
                          description)


def _write_per_class(path: Path, rows) -> None:
    with_baseline = any(r.baseline_f1 is not None for r in rows)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["label", "support", "predicted", "precision", "recall", "f1"] + (["baseline_f1"] if with_baseline else []))
        for r in rows:
            baseline = [f"{r.baseline_f1:.6f}"] if with_baseline else []
            writer.writerow([r.label, r.support, r.predicted, f"{r.precision:.6f}", f"{r.recall:.6f}", f"{r.f1:.6f}", *baseline])


def _write_predictions(path: Path, rows, labels, predictions, logits, label_map) -> None:
    import pandas as pd

    real = logits[:, : label_map.num_real_labels]
    shifted = np.exp(real - real.max(axis=1, keepdims=True))
    confidence = (shifted.max(axis=1) / shifted.sum(axis=1)) if len(real) else np.zeros(0)
    names = label_map.labels
    retained = [c for c in rows.column_names if c not in (*MODEL_INPUTS, "labels", "length", "text", WHOLE_TEXT)
                and not c.startswith(RAW_PREFIX)]
    frame = pd.DataFrame({c: rows[c] for c in retained})
    frame["label"] = [names[i] for i in labels]
    frame["predicted"] = [names[i] for i in predictions]
    frame["confidence"] = confidence.astype(np.float32)
    frame["correct"] = labels == predictions
    frame.to_parquet(path, index=False)


def _write_test_rows(path: Path, rows) -> None:
    """The scored rows' raw columns (the data's own names and values, label aside), in the order of
    predictions.parquet: what the champion gate (kubetune.promotion) scores the current champion on. Data
    preprocessed before the test split kept its raw columns has none: no file."""
    raw = [c for c in rows.column_names if c.startswith(RAW_PREFIX)]
    if raw:
        rows.select_columns(raw).to_pandas().rename(columns=lambda c: c.removeprefix(RAW_PREFIX)).to_parquet(path, index=False)


# What the evaluate step logs as artifacts, of what it wrote (either task).
LOGGED_FILES = ("report.html", "per_class.csv", "confusion.json", "confusion.png", LEARNING_CURVES_FILE, BASELINE_METRICS_FILE)


def log_evaluation(config: RunConfig, run_id: str, split: str, metrics: dict[str, float], out: Path, model_dir: Path,
                   baseline: dict[str, float] | None = None) -> None:
    """Into the pipeline's run (either task): the metrics (as <split>/<name>, once each: the trainer scores validation
    only), the baseline's (as baseline/<split>/<name>), the files of LOGGED_FILES that `out` holds, and the model as
    the run's MLflow model (kubetune.serving). Never fails the step."""
    from kubetune import tracking

    uri = tracking.tracking_uri(config)
    if uri is None:
        logger.warning("MLflow: no tracking.tracking_uri and no $MLFLOW_TRACKING_URI; evaluation results were not logged")
        return
    try:
        from mlflow.entities import Metric

        client = tracking.client_for(uri)
        now = int(time.time() * 1000)
        logged = [Metric(f"{split}/{name}", float(value), now, 0) for name, value in metrics.items()]
        logged += [Metric(f"baseline/{split}/{name}", float(value), now, 0) for name, value in (baseline or {}).items()]
        client.log_batch(run_id, metrics=logged)
        for name in LOGGED_FILES:
            if (out / name).exists():
                client.log_artifact(run_id, str(out / name), artifact_path="evaluation")
        if config.tracking.log_model:
            from kubetune.serving import log_model

            log_model(client, run_id, model_dir, config.sft.max_new_tokens if config.task == "sft" else None)
    except Exception as exc:  # noqa: BLE001 - tracking never fails a step
        logger.warning("MLflow: evaluation results were not logged (%s: %s)", type(exc).__name__, exc)
