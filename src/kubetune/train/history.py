"""OUT/model/training_history.json: the training loss and the validation metrics of every evaluation.

    {
      "format": 1,
      "metric_for_best_model": "eval_macro_f1",   the metric that picks the best checkpoint
      "greater_is_better": true,
      "best_step": 16,                            the evaluation best by that metric (the first one on a tie,
                                                  as the Trainer picks it); null without evaluations
      "train": [{"step": 4, "epoch": 0.5, "loss": 1.38, "learning_rate": 0.03}, ...],
      "eval":  [{"step": 8, "epoch": 1.0, "eval_loss": 1.21, "eval_accuracy": 0.61, "eval_macro_f1": 0.52, ...}, ...]
    }

`train` holds each logged training loss (the mean over the `training.logging_steps` before it), `eval`
each evaluation on the validation split during training (every epoch, or every `training.eval_steps`),
with every eval_* metric but the timings; a value that is not finite (a diverged run's loss) is null, so
the file is strict JSON. Both come from the Trainer's log_history when training ends;
a resumed run's Trainer state holds the part before its checkpoint, so the history is the whole run's.
The final evaluation of the saved model is training_metrics.json, not a point here.

Readers (the evaluate stage's learning curves, `kubetune run`'s summary) take a missing file as a
model trained before the file existed: no history, no error. Importing this module loads no torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TRAINING_HISTORY_FILE = "training_history.json"
FORMAT = 1
TRAIN_FIELDS = ("step", "epoch", "loss", "learning_rate")
# The Trainer's timings of an evaluation: how long it took, not how good the model is.
_EVAL_TIMINGS = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
# A last evaluation better than every earlier one by at least this much (of accuracy or F1, 0.5 points)
# counts as still improving; smaller gains are within the noise of a validation split.
CLEAR_GAIN = 0.005


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def history_from_log(log_history: Iterable[Mapping[str, Any]], metric_for_best_model: str | None,
                     greater_is_better: bool) -> dict[str, Any]:
    """training_history.json's content from the Trainer's `state.log_history` (taken before any evaluation
    after training, which would add a point of the final model)."""
    name = metric_for_best_model or "loss"  # the Trainer's own default
    metric = name if name.startswith("eval_") else f"eval_{name}"
    train, evals = [], []
    for entry in log_history:
        if "loss" in entry and _number(entry["loss"]):
            point = {key: entry[key] for key in TRAIN_FIELDS if key in entry}
            train.append({**point, "loss": _finite(entry["loss"])})
        elif "eval_loss" in entry:
            point = {"step": entry["step"], "epoch": entry.get("epoch")}
            point.update({key: _finite(value) for key, value in sorted(entry.items())
                          if key.startswith("eval_") and key not in _EVAL_TIMINGS and _number(value)})
            evals.append(point)
    history = TrainingHistory(train=train, eval=evals, metric=metric, greater_is_better=greater_is_better)
    return {"format": FORMAT, "metric_for_best_model": metric, "greater_is_better": greater_is_better,
            "best_step": history.best_step(), "train": train, "eval": evals}


@dataclass(frozen=True)
class TrainingHistory:
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    metric: str = "eval_macro_f1"
    greater_is_better: bool = True

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingHistory:
        return cls(train=list(data.get("train", [])), eval=list(data.get("eval", [])),
                   metric=data.get("metric_for_best_model", "eval_macro_f1"),
                   greater_is_better=bool(data.get("greater_is_better", True)))

    def best_step(self) -> int | None:
        """The step of the evaluation best by `metric` (the first on a tie, as the Trainer picks it)."""
        best, best_value = None, None
        for point in self.eval:
            value = point.get(self.metric)
            if not _number(value) or math.isnan(value):
                continue
            if best_value is None or (value > best_value if self.greater_is_better else value < best_value):
                best, best_value = point["step"], value
        return best


def read_training_history(model_dir: str | Path) -> TrainingHistory | None:
    """The history saved with a model folder; None for a model saved without one."""
    path = Path(model_dir) / TRAINING_HISTORY_FILE
    if not path.is_file():
        return None
    return TrainingHistory.from_dict(json.loads(path.read_text()))


@dataclass(frozen=True)
class EvaluationRow:
    """One evaluation during training, as the summaries show it."""

    epoch: float | None
    step: int
    train_loss: float | None  # the mean of the training losses logged since the previous evaluation (NaN if one was)
    eval_loss: float | None
    eval_accuracy: float | None
    eval_macro_f1: float | None
    best: bool


def evaluation_rows(history: TrainingHistory) -> list[EvaluationRow]:
    best = history.best_step()
    rows, previous = [], -1
    for point in history.eval:
        step = point["step"]
        losses = [math.nan if p.get("loss") is None else p["loss"] for p in history.train if previous < p["step"] <= step]
        rows.append(EvaluationRow(
            epoch=point.get("epoch"), step=step, train_loss=sum(losses) / len(losses) if losses else None,
            eval_loss=point.get("eval_loss"), eval_accuracy=point.get("eval_accuracy"),
            eval_macro_f1=point.get("eval_macro_f1"), best=step == best,
        ))
        previous = step
    return rows


def metric_label(metric: str) -> str:
    """`eval_macro_f1` → "validation macro F1"."""
    name = metric.removeprefix("eval_")
    return "validation " + {"macro_f1": "macro F1", "weighted_f1": "weighted F1"}.get(name, name.replace("_", " "))


def more_epochs_hint(history: TrainingHistory) -> str | None:
    """One line when the last evaluation is the best and clearly better than every earlier one; else None."""
    values = [p.get(history.metric) for p in history.eval]
    if len(values) < 2 or not all(_number(v) and math.isfinite(v) for v in values):
        return None
    last, earlier = values[-1], values[:-1]
    best_earlier = max(earlier) if history.greater_is_better else min(earlier)
    gain = last - best_earlier if history.greater_is_better else best_earlier - last
    if gain < CLEAR_GAIN:
        return None
    trend = "rising" if history.greater_is_better else "falling"
    epoch = history.eval[-1].get("epoch")
    where = f"epoch {_epoch(epoch)}" if epoch is not None else f"step {history.eval[-1]['step']}"
    return (f"{metric_label(history.metric)} still {trend} at the last evaluation ({where}: {best_earlier:.4f} → "
            f"{last:.4f}): more epochs may help (training.epochs)")


HEADERS = ("epoch", "step", "train loss", "val loss", "val accuracy", "val macro F1", "")


def table_rows(rows: Iterable[EvaluationRow]) -> list[tuple[str, ...]]:
    """`rows` as cells under HEADERS; the best evaluation marked."""
    return [(_epoch(r.epoch), str(r.step), _value(r.train_loss), _value(r.eval_loss), _value(r.eval_accuracy),
             _value(r.eval_macro_f1), "← best" if r.best else "") for r in rows]


def _epoch(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return str(round(epoch)) if abs(epoch - round(epoch)) < 1e-6 else f"{epoch:.2f}"


def _value(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
