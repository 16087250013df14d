"""Learning curves: what training did, epoch by epoch, as one picture (learning_curves.png, report.html).

Left: the training loss and the validation loss. Right: validation accuracy and macro F1. The best
evaluation (by training.metric_for_best_model, the checkpoint a run with load_best_model_at_end ends
with) is marked on both. A curve still climbing at its right edge says more epochs may help.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

from kubetune.train.history import TrainingHistory, metric_label


def _series(points: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(epochs, values) of `key`; a missing or infinite value becomes NaN, a gap in the line."""
    xs, ys = [], []
    for point in points:
        x = point.get("epoch", point.get("step"))
        if x is None:
            continue
        value = point.get(key)
        xs.append(float(x))
        ys.append(float(value) if isinstance(value, (int, float)) and math.isfinite(value) else math.nan)
    return xs, ys


def learning_curves_png(history: TrainingHistory) -> bytes:
    """PNG bytes; the same history gives the same bytes (no timestamp or version in the file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (losses, scores) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    best_step = history.best_step()
    best = next((p for p in history.eval if p["step"] == best_step), None)
    best_x = best.get("epoch", best["step"]) if best is not None else None

    xs, ys = _series(history.train, "loss")
    losses.plot(xs, ys, color="#2680c2", linewidth=1.2, label="train loss")
    xs, ys = _series(history.eval, "eval_loss")
    losses.plot(xs, ys, color="#e12d39", marker="o", markersize=4, linewidth=1.2, label="validation loss")
    losses.set_title("Loss")
    losses.set_ylabel("loss")

    for key, color in (("eval_accuracy", "#2680c2"), ("eval_macro_f1", "#e8a600")):
        xs, ys = _series(history.eval, key)
        scores.plot(xs, ys, color=color, marker="o", markersize=4, linewidth=1.2, label=metric_label(key))
    scores.set_title("Validation")
    scores.set_ylim(0.0, 1.0)

    for ax in (losses, scores):
        if all(math.isnan(y) for line in ax.get_lines() for y in line.get_ydata()):
            ax.text(0.5, 0.5, "nothing logged", transform=ax.transAxes, ha="center", va="center", color="#52606d")
        if best_x is not None:
            value = best.get(history.metric)
            ax.axvline(float(best_x), color="#52606d", linestyle="--", linewidth=1,
                       label=f"best: {metric_label(history.metric)} {value:.4f}" if ax is scores else "best evaluation")
        ax.set_xlabel("epoch" if any("epoch" in p for p in (*history.train, *history.eval)) else "step")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()
