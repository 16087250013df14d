"""`kubetune run`: the whole KFP pipeline executed by kfp.local on this machine, with a tiny model.

These start real subprocesses per step (kfp.local's SubprocessRunner) and a real torchrun for training,
so they take a minute or two; they are what proves the local path is the cluster pipeline, only smaller.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubetune.errors import KubetuneError
from kubetune.pipeline.local import run_local

pytestmark = pytest.mark.slow


def write_config(directory: Path, model_dir: Path, **sections) -> Path:
    config = {
        "data": {"uri": "demo://ledger?rows=400&seed=3"},
        "split": {"label_column": "account_code", "test_size": 0.2, "val_size": 0.1, "max_classes": 64},
        "serialize": {"text_columns": ["supplier", "description", "amount"], "include_column_names": False},
        "tokenize": {"max_length": 32},
        "model": {"name": str(model_dir)},
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["query", "value"]},
        "deepspeed": {"enable": False},
        "training": {"batch_size": 16, "eval_batch_size": 64, "max_steps": 6, "logging_steps": 2,
                     "learning_rate": 5.0e-3},
        "tracking": {"experiment_name": "pipeline-test"},
        "storage": {"runs_uri": str(directory / "runs")},
        "cluster": {"launcher": "local", "workers": 1, "gpus_per_worker": 1},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    path = directory / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_whole_pipeline_runs_locally_and_a_second_run_reuses_the_data_steps(tmp_path, tiny_bert):
    config = write_config(tmp_path, tiny_bert)

    first = run_local(str(config), [], run_id="first")

    assert all(seconds is not None for seconds in first.step_seconds.values()), first.step_seconds
    assert {"accuracy", "macro_f1", "weighted_f1"} <= set(first.test_metrics)
    assert first.test_metrics == json.loads((Path(first.evaluation_dir) / "metrics.json").read_text())
    # The TF-IDF baseline, scored on the same rows, is on by default.
    assert first.baseline_metrics == json.loads((Path(first.evaluation_dir) / "baseline_metrics.json").read_text())
    assert set(first.baseline_metrics) == set(first.test_metrics)
    [evaluate_output] = (tmp_path / "runs" / "kfp").glob("*/evaluate/executor_output.json")
    kfp_metrics = json.loads(evaluate_output.read_text())["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert kfp_metrics == {**first.test_metrics, **{f"baseline/{k}": v for k, v in first.baseline_metrics.items()}}
    model_dir = Path(first.model_dir)
    assert (model_dir / "adapter_config.json").exists() and (model_dir / "label_map.json").exists()
    assert json.loads((model_dir / "model_metadata.json").read_text())["label_slots"] == 64
    assert first.report.endswith("report.html")
    report = Path(first.report).read_text()
    assert report.lstrip().lower().startswith("<!doctype html") and "confusion" in report.lower()
    assert (tmp_path / "runs" / "first" / "summary.json").exists()
    # max_steps 6 ends inside the first epoch: the Trainer evaluates there, once.
    assert [row.step for row in first.evaluations] == [6] and first.evaluations[0].best
    assert (Path(first.evaluation_dir) / "learning_curves.png").exists() and "Learning curves" in report

    # One MLflow run per pipeline run, tagged with the run id; train and evaluate both logged into it.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=first.mlflow_tracking_uri)
    run = client.get_run(first.mlflow_run_id)
    assert run.data.tags["kubetune.run_id"] == "first" and run.info.status == "FINISHED"
    assert run.data.metrics["test/accuracy"] == first.test_metrics["accuracy"] and "train/loss" in run.data.metrics
    assert run.data.metrics["baseline/test/macro_f1"] == first.baseline_metrics["macro_f1"]
    assert "evaluation" in {entry.path for entry in client.list_artifacts(run.info.run_id)}

    second = run_local(str(config), [], run_id="second")

    assert second.step_seconds["preprocess"] is None and second.step_seconds["tokenize"] is None
    assert all(second.step_seconds[step] is not None for step in ("validate", "train", "evaluate"))
    assert second.mlflow_run_id != first.mlflow_run_id


def test_a_new_learning_rate_reuses_the_data_steps_and_new_data_does_not(tmp_path, tiny_bert):
    data = tmp_path / "ledger.csv"
    subprocess.run([sys.executable, "-m", "kubetune", "demo-data", str(data), "--rows", "300"], check=True)
    config = write_config(tmp_path, tiny_bert, data={"uri": str(data)}, training={"max_steps": 2})
    run_local(str(config), [], run_id="one")

    relearned = run_local(str(config), ["training.learning_rate=0.001"], run_id="two")
    assert relearned.step_seconds["preprocess"] is None and relearned.step_seconds["tokenize"] is None

    # Same path, different content: the data fingerprint changes, so preprocess runs again.
    subprocess.run([sys.executable, "-m", "kubetune", "demo-data", str(data), "--rows", "320"], check=True)
    changed = run_local(str(config), [], run_id="three")
    assert changed.step_seconds["preprocess"] is not None


def test_missing_data_fails_the_first_step_with_the_cli_message(tmp_path, tiny_bert):
    config = write_config(tmp_path, tiny_bert, data={"uri": str(tmp_path / "nowhere.csv")})
    output = io.StringIO()
    with contextlib.redirect_stdout(output), pytest.raises(KubetuneError) as failure:
        run_local(str(config), [], run_id="missing")
    message = str(failure.value)
    assert message.startswith("the pipeline failed: data.uri:") and "nowhere.csv" in message
    assert "\n" not in message
    assert "Traceback" not in output.getvalue()
    # Nothing after validate ran, and the failed run left no folder behind: only the MLflow store.
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["mlflow.db"]


def empty_folders(root: Path) -> list[Path]:
    return [path for path in [root, *root.rglob("*")] if path.is_dir() and not any(p.is_file() for p in path.rglob("*"))]


def test_a_failed_train_step_ends_the_mlflow_run_failed_and_leaves_no_empty_folder(tmp_path, tiny_bert):
    import shutil

    from mlflow.tracking import MlflowClient

    # Weights that can't be read: only the trainer finds out, after validate opened the MLflow run.
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_bert, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    config = write_config(tmp_path, broken)
    output = io.StringIO()
    with contextlib.redirect_stdout(output), pytest.raises(KubetuneError, match="^the pipeline failed: "):
        run_local(str(config), [], run_id="broken-weights")
    logs = output.getvalue()
    assert re.search(r"Task \S*'train'\S* finished with status \S*FAILURE", logs), logs[-3000:]

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("pipeline-test").experiment_id])
    assert run.data.tags["kubetune.run_id"] == "broken-weights" and run.info.run_name == "broken-weights"
    assert run.info.status == "FAILED"  # ended by the pipeline's exit handler
    assert run.info.end_time is not None and run.info.end_time >= run.info.start_time
    assert f"MLflow run {run.info.run_id} ended FAILED" in logs
    assert empty_folders(tmp_path / "runs") == []


def test_broken_config_text_fails_the_validate_step_with_one_line(tmp_path, capfd):
    """Through the compiled pipeline's own entry (as on a cluster), not `kubetune run`'s early check."""
    from kfp import local

    from kubetune.config import ClusterConfig
    from kubetune.pipeline.pipeline import kubetune_pipeline_for

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"),
               raise_on_error=True)
    with pytest.raises(RuntimeError):
        kubetune_pipeline_for(ClusterConfig())(config="training:\n  epoch: 2\n", launcher="local", run_id="broken")
    captured = capfd.readouterr()
    logs = captured.out + captured.err
    errors = [line for line in logs.splitlines() if "kubetune: error:" in line]
    assert len(errors) == 1, logs[-3000:]
    assert "training.epoch" in errors[0] and "training.epochs" in errors[0]
    assert "Traceback" not in logs


def test_the_cli_reports_a_pipeline_failure_in_one_line(tmp_path, tiny_bert):
    config = write_config(tmp_path, tiny_bert, data={"uri": str(tmp_path / "nowhere.csv")})
    result = subprocess.run([sys.executable, "-m", "kubetune", "run", "--config", str(config)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("kubetune: error: the pipeline failed: data.uri:")


def test_sigterm_to_kubetune_run_stops_the_steps_and_ends_the_mlflow_run_killed(tmp_path, tiny_bert):
    import os
    import signal
    import time

    import psutil
    from mlflow.tracking import MlflowClient

    config = write_config(tmp_path, tiny_bert, training={"max_steps": 100000, "logging_steps": 50})
    process = subprocess.Popen([sys.executable, "-m", "kubetune", "run", "--config", str(config), "--run-id", "stopped"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    started = tmp_path / "runs" / "stopped" / "train" / "run.json"  # the trainer is past its set-up
    deadline = time.monotonic() + 300
    while not started.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert started.exists(), process.stderr.read() if process.poll() is not None else "training never started"
    descendants = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGTERM)  # to `kubetune run` alone, as `kill` or Kubernetes does
    _, stderr = process.communicate(timeout=180)

    assert process.returncode == 143, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "kubetune: terminated; the steps were stopped and the MLflow run ended KILLED"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("pipeline-test").experiment_id])
    assert run.info.run_name == "stopped" and run.info.status == "KILLED"
    assert run.info.end_time is not None and run.info.end_time >= run.info.start_time
    # The step and the trainer it started were stopped too, not left running without their pipeline.
    psutil.wait_procs(descendants, timeout=60)
    assert not [p.pid for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
