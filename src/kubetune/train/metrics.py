"""Classification metrics over the real classes only.

Dummy label slots exist only to keep the head's shape; they are never a prediction (the argmax runs
over the real classes' logits) and never count in an average. Macro averages run over the classes
present in the evaluated split's labels or predictions: a real class that neither occurs nor is
predicted there (a rare account missing from a small test split) has no F1 to speak of, and counting
it as 0 would drag macro F1 down by the share of such classes (hundreds, on ledger data). The Trainer gathers logits and labels
from every rank (dropping the samples it repeated to even out the last batch) before
`compute_metrics` runs, so these numbers cover the whole evaluation split, not one rank's shard.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transformers import EvalPrediction

TOP_K = 5
METRIC_NAMES: tuple[str, ...] = (
    "accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall",
    "weighted_precision", "weighted_recall", f"top{TOP_K}_accuracy",
)
# Those computed from the predicted labels alone (label_metrics); top-5 accuracy needs every label's score.
LABEL_METRIC_NAMES: tuple[str, ...] = METRIC_NAMES[:-1]
LOWER_IS_BETTER = frozenset({"loss", "perplexity"})  # perplexity: task: sft


def greater_is_better(metric: str) -> bool:
    return metric.removeprefix("eval_") not in LOWER_IS_BETTER


def real_class_predictions(logits: np.ndarray, num_real_labels: int) -> np.ndarray:
    """The predicted slot of each row: the best of the real classes (a dummy slot can never win)."""
    return np.asarray(logits)[:, :num_real_labels].argmax(axis=-1)


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_real_labels: int) -> dict[str, float]:
    """Accuracy, macro/weighted F1, precision and recall (zero_division=0), and top-5 accuracy when
    there are more than 5 real classes — over the real classes in `labels` ∪ predictions only."""
    logits = np.asarray(logits)
    labels = np.asarray(labels).reshape(-1)
    predictions = real_class_predictions(logits, num_real_labels)
    metrics = label_metrics(labels, predictions)
    if num_real_labels > TOP_K:
        top = np.argpartition(-logits[:, :num_real_labels], TOP_K - 1, axis=-1)[:, :TOP_K]
        metrics[f"top{TOP_K}_accuracy"] = float((top == labels[:, None]).any(axis=-1).mean()) if len(labels) else 0.0
    return metrics


def label_metrics(labels, predictions) -> dict[str, float]:
    """The metrics that depend on the predicted label alone (LABEL_METRIC_NAMES), for labels of any kind: slot ids,
    or label names (the champion gate compares two models whose label maps differ by name)."""
    from sklearn.metrics import precision_recall_fscore_support

    labels = np.asarray(labels).reshape(-1)
    predictions = np.asarray(predictions).reshape(-1)
    # zero_division=0 still applies inside this set: a class predicted but never present has recall 0
    # and F1 0, a class present but never predicted has precision 0 and F1 0.
    classes = sorted(set(labels.tolist()) | set(predictions.tolist()))
    metrics: dict[str, float] = {"accuracy": float((predictions == labels).mean()) if len(labels) else 0.0}
    for average in ("macro", "weighted"):
        if not classes:  # an empty split: nothing to average
            metrics.update({f"{average}_f1": 0.0, f"{average}_precision": 0.0, f"{average}_recall": 0.0})
            continue
        precision, recall, f1, _ = precision_recall_fscore_support(
            labels, predictions, labels=classes, average=average, zero_division=0
        )
        metrics[f"{average}_f1"] = float(f1)
        metrics[f"{average}_precision"] = float(precision)
        metrics[f"{average}_recall"] = float(recall)
    return metrics


def build_compute_metrics(num_real_labels: int) -> Callable[[EvalPrediction], dict[str, float]]:
    """The Trainer's `compute_metrics` for a head whose first `num_real_labels` slots are real."""

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions
        if isinstance(logits, tuple):  # models that also return hidden states put the logits first
            logits = logits[0]
        return classification_metrics(logits, prediction.label_ids, num_real_labels)

    return compute_metrics
