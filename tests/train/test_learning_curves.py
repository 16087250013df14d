"""The training history a 2-epoch run saves with its model, and the evaluate stage's learning curves from it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kubetune.config import load_config
from kubetune.evaluation import LEARNING_CURVES_FILE, evaluate
from kubetune.train.history import TRAINING_HISTORY_FILE, history_from_log
from kubetune.train.recipe import train

from .conftest import build_tokenized, write_config

# 64 rows in batches of 8: 8 steps per epoch, 16 in all; a loss logged every 4 steps, an evaluation per epoch.
STEPS_PER_EPOCH, EPOCHS, LOG_EVERY = 8, 2, 4


@pytest.fixture(scope="module")
def two_epochs(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("two-epochs")
    data = build_tokenized(root / "data", tiny_bert, sizes={"train": 64, "validation": 13, "test": 11})
    config = load_config(write_config(root / "run.yaml", tiny_bert, training={
        "batch_size": 8, "epochs": EPOCHS, "logging_steps": LOG_EVERY}))
    out = root / "out"
    train(config, str(data), str(out))
    return config, data, out


def test_the_model_holds_the_runs_history(two_epochs):
    _, _, out = two_epochs
    saved = json.loads((out / "model" / TRAINING_HISTORY_FILE).read_text())
    assert [(p["step"], p["epoch"]) for p in saved["eval"]] == [(8, 1.0), (16, 2.0)]
    assert [p["step"] for p in saved["train"]] == [4, 8, 12, 16]
    assert all({"eval_loss", "eval_accuracy", "eval_macro_f1"} <= set(p) for p in saved["eval"])
    assert all(set(p) == {"step", "epoch", "loss", "learning_rate"} for p in saved["train"])
    assert saved["metric_for_best_model"] == "eval_macro_f1" and saved["best_step"] in (8, 16)
    # The Trainer's own record of the run, less the final evaluation of the saved model.
    state = json.loads((out / "checkpoints" / "checkpoint-16" / "trainer_state.json").read_text())
    assert history_from_log(state["log_history"], "macro_f1", greater_is_better=True) == saved


def test_evaluate_draws_the_learning_curves_into_the_report_and_mlflow(two_epochs):
    from mlflow.tracking import MlflowClient

    config, data, out = two_epochs
    uri = f"sqlite:///{out.parent / 'mlflow.db'}"
    config = config.model_copy(update={"tracking": config.tracking.model_copy(
        update={"tracking_uri": uri, "log_model": False})})
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("curves", (out.parent / "artifacts").as_uri())).info.run_id
    evaluation = out.parent / "evaluation"
    evaluate(config, str(out / "model"), str(data), str(evaluation), mlflow_run_id=run_id)
    assert (evaluation / LEARNING_CURVES_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<h2>Learning curves</h2>" in (evaluation / "report.html").read_text()
    assert f"evaluation/{LEARNING_CURVES_FILE}" in {a.path for a in client.list_artifacts(run_id, "evaluation")}


def test_a_model_without_history_is_evaluated_without_curves(two_epochs):
    config, data, out = two_epochs
    older = out.parent / "older-model"  # saved by a kubetune before training_history.json
    shutil.copytree(out / "model", older)
    (older / TRAINING_HISTORY_FILE).unlink()
    evaluation = out.parent / "older-evaluation"
    evaluate(config, str(older), str(data), str(evaluation))
    assert not (evaluation / LEARNING_CURVES_FILE).exists()
    assert "Learning curves" not in (evaluation / "report.html").read_text()
