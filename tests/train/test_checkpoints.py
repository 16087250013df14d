"""Checkpoints: only complete ones are resumed, rotation never loses the newest complete one, a restart
continues the step count and the MLflow run, and SIGTERM saves a checkpoint before exiting."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from kubetune.config import StorageConfig, load_config
from kubetune.errors import KubetuneError
from kubetune.train.checkpoints import (
    MARKER,
    CheckpointCallback,
    mark_complete,
    newest_complete,
    prepare_resume,
    remove_incomplete,
    rotate,
)
from kubetune.train.outputs import OutputPaths
from kubetune.train.recipe import EXIT_TERMINATED, train

from .conftest import REPO_ROOT, kubetune_command, write_config


def make_checkpoints(root: Path, complete: list[int], incomplete: list[int] = ()) -> None:
    for step in [*complete, *incomplete]:
        folder = root / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text("{}")
        if step in complete:
            mark_complete(folder, world_size=1)


def test_a_checkpoint_without_marker_is_never_resumed(tmp_path: Path):
    make_checkpoints(tmp_path, complete=[10, 20], incomplete=[30])
    assert newest_complete(tmp_path).name == "checkpoint-20"


def test_prepare_resume_deletes_what_a_killed_run_was_writing(tmp_path: Path):
    paths = OutputPaths.for_output(str(tmp_path / "out"), StorageConfig())
    make_checkpoints(paths.checkpoints, complete=[10], incomplete=[20])
    assert prepare_resume(paths, world_size=1, deepspeed=False) == paths.checkpoints / "checkpoint-10"
    assert sorted(p.name for p in paths.checkpoints.iterdir()) == ["checkpoint-10"]


def test_remove_incomplete_returns_what_it_removed(tmp_path: Path):
    make_checkpoints(tmp_path, complete=[5], incomplete=[3, 7])
    assert [p.name for p in remove_incomplete(tmp_path)] == ["checkpoint-3", "checkpoint-7"]


def test_rotation_keeps_the_newest_and_the_best(tmp_path: Path):
    make_checkpoints(tmp_path, complete=[10, 20, 30, 40])
    removed = rotate(tmp_path, keep=2, protect=tmp_path / "checkpoint-10")
    assert [p.name for p in removed] == ["checkpoint-20"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-30", "checkpoint-40"]


def test_a_step_saved_again_is_unmarked_before_it_is_rewritten(tmp_path: Path):
    from types import SimpleNamespace

    paths = OutputPaths.for_output(str(tmp_path / "out"), StorageConfig())
    make_checkpoints(paths.checkpoints, complete=[8])
    callback = CheckpointCallback(paths, save_total_limit=2, world_size=1)
    args, state = SimpleNamespace(output_dir=str(paths.checkpoints)), SimpleNamespace(global_step=8)
    callback.on_step_end(args, state, SimpleNamespace(should_save=False))
    assert (paths.checkpoints / "checkpoint-8" / MARKER).exists()
    callback.on_step_end(args, state, SimpleNamespace(should_save=True))
    assert not (paths.checkpoints / "checkpoint-8" / MARKER).exists()


def test_deepspeed_checkpoint_of_another_world_size_is_refused(tmp_path: Path):
    paths = OutputPaths.for_output(str(tmp_path / "out"), StorageConfig())
    make_checkpoints(paths.checkpoints, complete=[10])
    mark_complete(paths.checkpoints / "checkpoint-10", world_size=2)
    with pytest.raises(KubetuneError, match="written by 2 ranks but this run has 1"):
        prepare_resume(paths, world_size=1, deepspeed=True)


def test_marker_records_the_step_and_ranks(tmp_path: Path):
    make_checkpoints(tmp_path, complete=[12])
    marker = json.loads((tmp_path / "checkpoint-12" / MARKER).read_text())
    assert (marker["step"], marker["world_size"]) == (12, 1)


def test_restart_resumes_the_step_count_and_the_mlflow_run(tiny_bert: Path, bert_tokenized: Path, tmp_path: Path):
    config_file = write_config(tmp_path / "run.yaml", tiny_bert, tracking={"enable": True})
    out = tmp_path / "out"
    train(load_config(config_file, ["training.max_steps=4", "training.save_steps=2"]), str(bert_tokenized), str(out))
    first = json.loads((out / "model" / "model_metadata.json").read_text())
    metrics = train(load_config(config_file, ["training.max_steps=6", "training.save_steps=2"]), str(bert_tokenized), str(out))
    second = json.loads((out / "model" / "model_metadata.json").read_text())
    assert second["training"]["resumed_from"] == "checkpoint-4"
    assert metrics["global_step"] == 6
    assert second["mlflow_run_id"] == first["mlflow_run_id"] is not None
    assert json.loads((out / "run.json").read_text())["mlflow_run_id"] == first["mlflow_run_id"]


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_same_command_resumes(tiny_bert: Path, bert_tokenized: Path, tmp_path: Path):
    config = write_config(tmp_path / "run.yaml", tiny_bert, training={"max_steps": 5000, "logging_steps": 1, "save_steps": 10000,
                                                                     "eval_steps": 10000})
    out = tmp_path / "out"
    command = kubetune_command("train", "--config", str(config), "--data", str(bert_tokenized), "--output", str(out))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if "'loss'" in line:  # training is under way
            process.send_signal(signal.SIGTERM)
            break
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == EXIT_TERMINATED, stderr[-3000:]
    [stop] = [line for line in stderr.splitlines() if "stopped by SIGTERM" in line]
    step = int(stop.split("at step ")[1].split()[0])
    assert 0 < step < 5000
    assert (out / "checkpoints" / f"checkpoint-{step}" / MARKER).is_file()
    assert not (out / "model").exists() and not (out / MARKER).exists()

    again = subprocess.run([*command, f"training.max_steps={step + 2}"], cwd=REPO_ROOT, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from checkpoint-{step}" in again.stdout
    assert json.loads((out / "model" / "training_metrics.json").read_text())["global_step"] == step + 2
