"""compute_metrics: over the real classes only; dummy slots are never a prediction."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import EvalPrediction

from kubetune.train.metrics import build_compute_metrics, classification_metrics, greater_is_better


def logits_predicting(predictions: list[int], slots: int, dummy_score: float = 100.0, num_real: int = 3) -> np.ndarray:
    """Logits whose best real class is `predictions[i]` while every dummy slot scores higher still."""
    logits = np.zeros((len(predictions), slots), dtype=np.float32)
    logits[:, num_real:] = dummy_score
    for row, prediction in enumerate(predictions):
        logits[row, prediction] = 5.0
    return logits


def test_metrics_ignore_dummy_slots():
    labels = np.array([0, 0, 1, 2])
    metrics = classification_metrics(logits_predicting([0, 1, 1, 2], slots=6), labels, num_real_labels=3)
    assert metrics["accuracy"] == pytest.approx(0.75)
    # per class F1: 2/3, 2/3, 1 → macro 7/9 (dummy classes would drag it to 7/18 if they counted)
    assert metrics["macro_f1"] == pytest.approx(7 / 9)
    assert metrics["macro_precision"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert metrics["macro_recall"] == pytest.approx((0.5 + 1 + 1) / 3)
    # weighted by support 2, 1, 1
    assert metrics["weighted_f1"] == pytest.approx((2 * 2 / 3 + 2 / 3 + 1) / 4)


def test_macro_averages_skip_classes_absent_from_labels_and_predictions():
    labels = np.array([0, 0, 1, 1])
    metrics = classification_metrics(logits_predicting([0, 0, 1, 1], slots=8, num_real=6), labels, num_real_labels=6)
    # classes 2..5 neither occur nor are predicted: they must not count as F1 0 (that would give 2/6)
    assert metrics["macro_f1"] == pytest.approx(1.0)
    assert metrics["macro_precision"] == pytest.approx(1.0)
    assert metrics["macro_recall"] == pytest.approx(1.0)


def test_zero_division_counts_as_zero_for_classes_present_on_one_side():
    # class 1 occurs but is never predicted; class 2 is predicted but never occurs; class 3 is neither
    labels = np.array([0, 1, 0])
    metrics = classification_metrics(logits_predicting([0, 0, 2], slots=5, num_real=4), labels, num_real_labels=4)
    # per class (P, R, F1): 0 → (1/2, 1/2, 1/2), 1 → (0, 0, 0), 2 → (0, 0, 0); class 3 not averaged
    assert metrics["macro_precision"] == pytest.approx(0.5 / 3)
    assert metrics["macro_recall"] == pytest.approx(0.5 / 3)
    assert metrics["macro_f1"] == pytest.approx(0.5 / 3)
    # weighted by support (2, 1, 0): only class 0 contributes
    assert metrics["weighted_f1"] == pytest.approx(2 * 0.5 / 3)


def test_empty_split_gives_zeros_not_an_error():
    metrics = classification_metrics(np.zeros((0, 4)), np.zeros(0, dtype=np.int64), num_real_labels=3)
    assert metrics == {"accuracy": 0.0, "macro_f1": 0.0, "weighted_f1": 0.0, "macro_precision": 0.0,
                       "macro_recall": 0.0, "weighted_precision": 0.0, "weighted_recall": 0.0}


def test_top5_accuracy_only_with_more_than_five_classes():
    assert "top5_accuracy" not in classification_metrics(np.eye(5), np.arange(5), num_real_labels=5)
    logits = np.tile(np.arange(8, dtype=np.float32), (2, 1))  # class 7 best, then 6, 5, 4, 3; two dummy slots above all
    metrics = classification_metrics(np.concatenate([logits, np.full((2, 2), 99.0)], axis=1), np.array([3, 2]), num_real_labels=8)
    assert metrics["top5_accuracy"] == pytest.approx(0.5)
    assert metrics["accuracy"] == 0.0


def test_compute_metrics_takes_the_trainers_gathered_predictions():
    compute = build_compute_metrics(num_real_labels=3)
    logits = logits_predicting([0, 1, 1, 2], slots=4)
    result = compute(EvalPrediction(predictions=(logits, np.zeros((4, 2))), label_ids=np.array([0, 0, 1, 2])))
    assert result["accuracy"] == pytest.approx(0.75)


def test_loss_is_the_only_metric_where_lower_is_better():
    assert greater_is_better("macro_f1") and greater_is_better("eval_accuracy")
    assert not greater_is_better("loss") and not greater_is_better("eval_loss")
