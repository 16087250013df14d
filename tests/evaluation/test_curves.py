"""The learning-curves picture: a sane PNG for every history, the same bytes for the same history."""

from __future__ import annotations

import struct

import pytest

from kubetune.evaluation.curves import learning_curves_png
from kubetune.train.history import TrainingHistory

TRAIN = [{"step": s, "epoch": s / 8, "loss": 1.5 - 0.05 * s, "learning_rate": 0.01} for s in range(2, 25, 2)]
EVALS = [{"step": s, "epoch": s / 8, "eval_loss": 1.4 - 0.1 * s / 8, "eval_accuracy": 0.5 + 0.1 * s / 8,
          "eval_macro_f1": 0.3 + 0.1 * s / 8} for s in (8, 16, 24)]


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


@pytest.mark.parametrize("history", [
    TrainingHistory(TRAIN, EVALS),
    TrainingHistory(TRAIN, EVALS[:1]),  # a single evaluation
    TrainingHistory(TRAIN, []),  # evaluated too rarely for this run's steps
    TrainingHistory([], []),
    TrainingHistory([{**TRAIN[0], "loss": None}, {**TRAIN[1], "loss": float("nan")}, *TRAIN[2:]],
                    [{**EVALS[0], "eval_loss": None, "eval_macro_f1": None}, *EVALS[1:]]),  # a diverged run
    TrainingHistory([{"step": 4, "loss": 1.0}], [{"step": 4, "eval_loss": 1.0, "eval_macro_f1": 0.5}]),  # no epochs
], ids=["full", "one-eval", "no-evals", "empty", "nan", "steps-only"])
def test_every_history_draws_a_sane_png(history):
    width, height = png_size(learning_curves_png(history))
    assert (width, height) == (1100, 400)


def test_the_same_history_draws_the_same_bytes():
    history = TrainingHistory(TRAIN, EVALS)
    assert learning_curves_png(history) == learning_curves_png(history)
    assert learning_curves_png(history) != learning_curves_png(TrainingHistory(TRAIN, EVALS[:2]))
