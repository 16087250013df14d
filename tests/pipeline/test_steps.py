"""The pipeline steps' plain-Python side: config resolution, per-step config slices, one-line failures."""

from __future__ import annotations

import json

import pytest
import yaml

from kubetune.errors import ConfigError, KubetuneError
from kubetune.pipeline import steps
from kubetune.pipeline.steps import (
    PREPROCESS_SECTIONS,
    read_config_source,
    resolve_run_config,
    run_step,
    sections_yaml,
    tokenize_config_yaml,
)


def test_explicit_parameters_override_config_and_overrides():
    config = resolve_run_config(
        "training:\n  epochs: 5\n  learning_rate: 0.001\n", ["training.epochs=4", "lora.r=4"],
        data_uri="s3://bucket/data.csv", epochs=2, workers=3,
    )
    assert config.training.epochs == 2  # the parameter beats both the file and the override
    assert config.training.learning_rate == 0.001  # 0.0 parameter: unset, the config's value stays
    assert config.lora.r == 4 and config.cluster.workers == 3 and config.data.uri == "s3://bucket/data.csv"


def test_empty_config_means_defaults():
    assert resolve_run_config("", []).training.epochs == 3.0


def test_config_parameter_can_be_a_path(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("split:\n  label_column: code\n")
    assert read_config_source(str(path)) == {"split": {"label_column": "code"}}


def test_bad_config_parameter_is_one_line():
    with pytest.raises(KubetuneError, match="config: the `config` parameter must be YAML sections"):
        read_config_source("just words")


def test_parameter_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"cluster\.workers: Input should be greater than or equal to 1"):
        resolve_run_config("cluster:\n  workers: 0\n  gpus_per_worker: 1\n", [], workers=-2)


def test_step_config_slices_hold_only_what_the_step_uses():
    config = resolve_run_config("training:\n  epochs: 1\n", [])
    other = resolve_run_config("training:\n  epochs: 9\n", [])
    # A new learning schedule doesn't change what preprocess and tokenize see, so KFP's cache holds.
    assert sections_yaml(config, PREPROCESS_SECTIONS) == sections_yaml(other, PREPROCESS_SECTIONS)
    assert tokenize_config_yaml(config) == tokenize_config_yaml(other)
    assert set(yaml.safe_load(sections_yaml(config, PREPROCESS_SECTIONS))) == set(PREPROCESS_SECTIONS)


def test_tokenize_slice_resolves_the_tokenizer_from_the_model():
    config = resolve_run_config("", [], base_model="/models/qwen")
    assert yaml.safe_load(tokenize_config_yaml(config))["tokenize"]["model_name"] == "/models/qwen"


def test_run_step_turns_user_errors_into_exit_2(capsys):
    def broken():
        raise KubetuneError("split.label_column: column 'code' not found")

    with pytest.raises(SystemExit) as info:
        run_step("preprocess", broken)
    assert info.value.code == 2
    assert capsys.readouterr().err == "kubetune: error: split.label_column: column 'code' not found\n"


def test_run_step_records_timings(tmp_path, monkeypatch):
    timings = tmp_path / "t.jsonl"
    monkeypatch.setenv(steps.TIMINGS_ENV, str(timings))
    clock = iter([100.0, 102.5, 200.0, 260.0])
    monkeypatch.setattr(steps.time, "perf_counter", lambda: next(clock))
    assert run_step("tokenize", lambda: 7) == 7
    assert run_step("train", lambda: 8, outputs={"model": "/kfp/train/model"}) == 8
    entries = [json.loads(line) for line in timings.read_text().splitlines()]
    assert entries == [
        {"step": "tokenize", "seconds": 2.5, "outputs": {}},
        {"step": "train", "seconds": 60.0, "outputs": {"model": "/kfp/train/model"}},
    ]


def test_config_name_is_the_file_the_config_parameter_names(monkeypatch):
    monkeypatch.setenv(steps.CONFIG_NAME_ENV, "configs/demo.yaml")
    assert steps.config_name("s3://bucket/configs/banking77.yaml") == "s3://bucket/configs/banking77.yaml"
    # YAML text: `kubetune run` hands the steps the resolved config, and says which file it came from.
    assert steps.config_name("training:\n  epochs: 1\n") == "configs/demo.yaml"
    monkeypatch.delenv(steps.CONFIG_NAME_ENV)
    assert steps.config_name("training:\n  epochs: 1\n") == ""


def test_finalize_step_ends_the_pipeline_run_with_the_status_of_the_steps(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    from kubetune.tracking import open_pipeline_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = f"tracking:\n  tracking_uri: {uri}\n  experiment_name: fin\ndata:\n  uri: demo://ledger\n"
    runs = {}
    for run_id in ("ok", "broken", "cancelled"):
        runs[run_id] = open_pipeline_run(resolve_run_config(config, []), run_id)
    assert steps.finalize_step(config, [], "ok", "SUCCEEDED") == "FINISHED"
    assert steps.finalize_step(config, [], "broken", "FAILED") == "FAILED"
    assert steps.finalize_step(config, [], "cancelled", "CANCELLED") == "KILLED"
    client = MlflowClient(uri)
    ended = {run_id: client.get_run(mlflow_run_id).info for run_id, mlflow_run_id in runs.items()}
    assert {run_id: info.status for run_id, info in ended.items()} == {
        "ok": "FINISHED", "broken": "FAILED", "cancelled": "KILLED"}
    assert all(info.end_time and info.end_time >= info.start_time for info in ended.values())
    assert f"MLflow run {runs['broken']} ended FAILED" in capsys.readouterr().out
    # A config that never resolved opened no run: nothing to end, and the exit handler doesn't fail.
    assert steps.finalize_step("training:\n  epoch: 2\n", [], "typo", "FAILED") == "FAILED"


def test_train_output_uri_is_stable_per_run(tmp_path):
    config = resolve_run_config("", [f"storage.runs_uri={tmp_path}"])
    assert steps.train_output_uri(config, "r1") == f"{tmp_path}/r1/train"
    remote = resolve_run_config("", ["storage.runs_uri=s3://bucket/runs/"])
    assert steps.train_output_uri(remote, "r1") == "s3://bucket/runs/r1/train"
