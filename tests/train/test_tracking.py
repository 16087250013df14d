"""MLflow from the trainer: names of the metrics, and a dead server that never stops training."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

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


def test_the_pipeline_run_is_named_described_and_given_its_datasets_once(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    from kubetune import tracking
    from kubetune.config import validate_config

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = validate_config({
        "data": {"uri": "s3://bucket/ledger.csv", "test_uri": "s3://bucket/holdout.csv"},
        "model": {"name": "bert-base-uncased"},
        "tracking": {"tracking_uri": uri, "experiment_name": "lifecycle", "tags": {"team": "finance"}},
    })
    first = tracking.open_pipeline_run(config, "20261202-0945-ab12", fingerprint="f00dfeed", config_name="configs/x.yaml",
                                       on_kubeflow=True)
    again = tracking.open_pipeline_run(config, "20261202-0945-ab12", fingerprint="f00dfeed")
    assert again == first  # a retried validate step finds its run again

    client = MlflowClient(uri)
    [run] = client.search_runs([client.get_experiment_by_name("lifecycle").experiment_id])
    assert run.info.run_id == first and run.info.status == "RUNNING"
    assert run.info.run_name == "20261202-0945-ab12"
    assert run.data.tags[tracking.RUN_ID_TAG] == run.data.tags[tracking.KFP_RUN_ID_TAG] == "20261202-0945-ab12"
    assert run.data.tags["team"] == "finance"
    assert run.data.tags[tracking.DESCRIPTION_TAG] == (
        "kubetune run of `configs/x.yaml`\n- data: `s3://bucket/ledger.csv`\n- base model: `bert-base-uncased`\n"
        "- test data: `s3://bucket/holdout.csv`")
    assert run.data.params["training.learning_rate"] == str(config.training.learning_rate)
    inputs = {tag.value: entry.dataset for entry in run.inputs.dataset_inputs for tag in entry.tags
              if tag.key == tracking.CONTEXT_TAG}
    assert set(inputs) == {"train", "validation", "test"}
    assert {split: (d.name, d.digest, json.loads(d.source)["uri"], d.source_type) for split, d in inputs.items()} == {
        "train": ("ledger.csv:train", "f00dfeed", "s3://bucket/ledger.csv", "s3"),
        "validation": ("ledger.csv:validation", "f00dfeed", "s3://bucket/ledger.csv", "s3"),
        "test": ("holdout.csv:test", "f00dfeed", "s3://bucket/holdout.csv", "s3"),
    }


def test_a_pipeline_run_ends_once_with_its_end_time(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    from kubetune import tracking
    from kubetune.config import validate_config

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = validate_config({"data": {"uri": "demo://ledger"}, "tracking": {"tracking_uri": uri}})
    mlflow_run_id = tracking.open_pipeline_run(config, "r1")
    assert tracking.finish_pipeline_run(config, "r1", "KILLED") == mlflow_run_id
    assert tracking.finish_pipeline_run(config, "r1", "FAILED") == mlflow_run_id  # ended already: stays KILLED
    info = MlflowClient(uri).get_run(mlflow_run_id).info
    assert info.status == "KILLED" and info.end_time >= info.start_time
    assert tracking.finish_pipeline_run(config, "never-opened", "FAILED") is None
    # A rerun under the same run id (resuming the stopped run) runs it again; it ends as the rerun ends.
    assert tracking.open_pipeline_run(config, "r1") == mlflow_run_id
    assert MlflowClient(uri).get_run(mlflow_run_id).info.status == "RUNNING"
    tracking.finish_pipeline_run(config, "r1", "FINISHED")
    rerun = MlflowClient(uri).get_run(mlflow_run_id).info
    assert rerun.status == "FINISHED" and rerun.end_time >= info.end_time
    with pytest.raises(ValueError, match="not 'DONE'"):
        tracking.end_run(MlflowClient(uri), mlflow_run_id, "DONE")
    assert [tracking.status_of_kfp_state(s) for s in ("SUCCEEDED", "FAILED", "CANCELLED", "CANCELED", "")] == [
        "FINISHED", "FAILED", "KILLED", "KILLED", "FAILED"]
