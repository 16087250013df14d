"""MLflow from the trainer: names of the metrics, and a dead server that never stops training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from kubetune.config import load_config
from kubetune.train.recipe import train
from kubetune.train.tracking import metric_key, numeric_metrics

from .conftest import free_port, write_config


def test_trainer_log_names_become_mlflow_names():
    assert metric_key("loss") == "train/loss"
    assert metric_key("grad_norm") == "train/grad_norm"
    assert metric_key("train_runtime") == "train/runtime"
    assert metric_key("train_loss") == "train/mean_loss"
    assert metric_key("eval_macro_f1") == "eval/macro_f1"
    assert metric_key("test_accuracy") == "test/accuracy"
    assert metric_key("speed/tokens_per_second") == "speed/tokens_per_second"


def test_only_finite_numbers_are_sent():
    logs = {"loss": 0.5, "epoch": 1, "eval_note": "text", "grad_norm": float("nan"), "flag": True}
    assert numeric_metrics(logs) == {"train/loss": 0.5, "train/epoch": 1.0}


def test_training_finishes_with_the_server_down_and_says_what_was_not_logged(
    tiny_bert: Path, bert_tokenized: Path, tmp_path: Path, caplog
):
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = load_config(write_config(tmp_path / "run.yaml", tiny_bert, tracking={"enable": True, "tracking_uri": dead}),
                         ["training.max_steps=8"])
    with caplog.at_level(logging.WARNING, logger="kubetune.train.tracking"):
        metrics = train(config, str(bert_tokenized), str(tmp_path / "out"))
    assert metrics["global_step"] == 8
    assert (tmp_path / "out" / "_COMPLETE").exists()
    failures = [r.getMessage() for r in caplog.records if "training goes on" in r.getMessage()]
    assert len(failures) == 1  # warned once, not once per call
    assert f"MLflow at {dead} failed (MlflowException: [Errno 111] Connection refused)" in failures[0]
    [summary] = [r.getMessage() for r in caplog.records if "not logged:" in r.getMessage()]
    assert f"MLflow at {dead}: not logged:" in summary
    assert " params; " in summary and " metric values; " in summary and "model/adapter_model.safetensors" in summary
    assert json.loads((tmp_path / "out" / "run.json").read_text())["mlflow_run_id"] is None
