"""training_history.json from the Trainer's log history, and what the summaries make of it."""

from __future__ import annotations

import json
import math

from kubetune.train.history import (
    TrainingHistory,
    evaluation_rows,
    history_from_log,
    more_epochs_hint,
)

# What transformers' Trainer logs: training losses with the callbacks' extras, evaluations with timings,
# the end-of-training summary, then (after training) the final evaluation of the saved model.
LOG = [
    {"loss": 1.5, "grad_norm": 2.0, "learning_rate": 0.03, "speed/samples_per_second": 90.0, "epoch": 0.5, "step": 4},
    {"loss": 1.3, "grad_norm": 1.0, "learning_rate": 0.025, "epoch": 1.0, "step": 8},
    {"eval_loss": 1.2, "eval_accuracy": 0.5, "eval_macro_f1": 0.4, "eval_runtime": 0.3,
     "eval_samples_per_second": 200.0, "eval_steps_per_second": 7.0, "epoch": 1.0, "step": 8},
    {"loss": 1.1, "grad_norm": 1.0, "learning_rate": 0.02, "epoch": 1.5, "step": 12},
    {"loss": float("nan"), "grad_norm": 1.0, "learning_rate": 0.015, "epoch": 2.0, "step": 16},
    {"eval_loss": 0.9, "eval_accuracy": 0.75, "eval_macro_f1": 0.7, "eval_runtime": 0.3, "epoch": 2.0, "step": 16},
    {"train_runtime": 9.0, "train_samples_per_second": 50.0, "train_loss": 1.2, "epoch": 2.0, "step": 16},
]


def history(evals: list[dict], metric: str = "eval_macro_f1", greater_is_better: bool = True) -> TrainingHistory:
    return TrainingHistory(train=[], eval=evals, metric=metric, greater_is_better=greater_is_better)


def test_history_keeps_the_losses_and_the_evaluations_without_timings():
    saved = history_from_log(LOG, "macro_f1", greater_is_better=True)
    assert saved["train"] == [
        {"step": 4, "epoch": 0.5, "loss": 1.5, "learning_rate": 0.03},
        {"step": 8, "epoch": 1.0, "loss": 1.3, "learning_rate": 0.025},
        {"step": 12, "epoch": 1.5, "loss": 1.1, "learning_rate": 0.02},
        {"step": 16, "epoch": 2.0, "loss": None, "learning_rate": 0.015},  # NaN: strict JSON has no NaN
    ]
    assert saved["eval"] == [
        {"step": 8, "epoch": 1.0, "eval_accuracy": 0.5, "eval_loss": 1.2, "eval_macro_f1": 0.4},
        {"step": 16, "epoch": 2.0, "eval_accuracy": 0.75, "eval_loss": 0.9, "eval_macro_f1": 0.7},
    ]
    assert (saved["metric_for_best_model"], saved["greater_is_better"], saved["best_step"]) == ("eval_macro_f1", True, 16)
    json.dumps(saved, allow_nan=False)


def test_the_best_evaluation_is_the_first_of_equals_and_lowest_for_a_loss():
    points = [{"step": 5, "eval_loss": 0.8, "eval_macro_f1": 0.6}, {"step": 10, "eval_loss": 0.7, "eval_macro_f1": 0.6},
              {"step": 15, "eval_loss": 0.75, "eval_macro_f1": None}]
    assert history(points).best_step() == 5  # the Trainer keeps the first of equal checkpoints
    assert history(points, "eval_loss", greater_is_better=False).best_step() == 10
    assert history([]).best_step() is None


def test_rows_hold_the_mean_training_loss_since_the_previous_evaluation():
    rows = evaluation_rows(TrainingHistory.from_dict(history_from_log(LOG, "macro_f1", True)))
    assert [(r.epoch, r.step, r.eval_loss, r.eval_accuracy, r.eval_macro_f1, r.best) for r in rows] == [
        (1.0, 8, 1.2, 0.5, 0.4, False), (2.0, 16, 0.9, 0.75, 0.7, True)]
    assert rows[0].train_loss == 1.4  # (1.5 + 1.3) / 2
    assert math.isnan(rows[1].train_loss)  # a diverged step is not averaged away


def test_the_hint_only_when_the_last_evaluation_is_clearly_the_best():
    def evals(*f1: float) -> TrainingHistory:
        return history([{"step": 10 * (i + 1), "epoch": float(i + 1), "eval_macro_f1": v} for i, v in enumerate(f1)])

    assert more_epochs_hint(evals(0.25, 0.46)) == (
        "validation macro F1 still rising at the last evaluation (epoch 2: 0.2500 → 0.4600): "
        "more epochs may help (training.epochs)")
    assert more_epochs_hint(evals(0.25, 0.46, 0.462)) is None  # a gain within the noise
    assert more_epochs_hint(evals(0.5, 0.4, 0.45)) is None  # the best was earlier
    assert more_epochs_hint(evals(0.5)) is None  # nothing to compare with
    assert more_epochs_hint(evals()) is None
    falling = history([{"step": 1, "epoch": 1.0, "eval_loss": 0.9}, {"step": 2, "epoch": 2.0, "eval_loss": 0.8}],
                      "eval_loss", greater_is_better=False)
    assert more_epochs_hint(falling).startswith("validation loss still falling at the last evaluation (epoch 2")
