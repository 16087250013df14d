"""Two CPU ranks under torchrun with DeepSpeed ZeRO-2 (gloo): evaluation over the whole split, MLflow from
rank 0 only, and a run that loses a rank to SIGKILL resumes to the same step count as an unbroken one."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import torch

from kubetune.train.checkpoints import MARKER, newest_complete

from .conftest import REPO_ROOT, torchrun_command, write_config

pytestmark = pytest.mark.slow

MAX_STEPS = 60
EVERY = 10  # logging, evaluation and checkpoint interval
EXPERIMENT = "kubetune-tests-two-ranks"


def two_rank_config(path: Path, model_dir: Path, tracking: dict) -> Path:
    return write_config(
        path, model_dir,
        deepspeed={"enable": True, "stage": 2},
        training={"batch_size": 8, "max_steps": MAX_STEPS, "logging_steps": EVERY, "eval_steps": EVERY,
                  "save_steps": EVERY},
        tracking=tracking,
    )


def train_command(config: Path, data: Path, out: Path) -> list[str]:
    return torchrun_command(2, "train", "--config", str(config), "--data", str(data), "--output", str(out))


def environment() -> dict[str, str]:
    # One thread per rank: the two ranks share the machine's cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def reference_run(tiny_bert: Path, bert_tokenized: Path, mlflow_server: str, tmp_path_factory: pytest.TempPathFactory):
    """An unbroken 2-rank ZeRO-2 run that evaluates every 10 steps and logs into a real MLflow server."""
    root = tmp_path_factory.mktemp("two-ranks")
    config = two_rank_config(root / "run.yaml", tiny_bert,
                             {"enable": True, "tracking_uri": mlflow_server, "experiment_name": EXPERIMENT})
    out = root / "out"
    result = subprocess.run(train_command(config, bert_tokenized, out), cwd=REPO_ROOT, env=environment(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    return out, result


def test_zero2_evaluation_covers_the_whole_validation_split(reference_run, bert_tokenized: Path):
    from datasets import load_from_disk

    from kubetune.train.metrics import classification_metrics
    from kubetune.train.model import load_trained_classifier

    out, _ = reference_run
    metrics = json.loads((out / "model" / "training_metrics.json").read_text())
    assert metrics["global_step"] == MAX_STEPS
    # The same model evaluated here in one process, on every validation row.
    model, tokenizer, label_map = load_trained_classifier(out / "model")
    validation = load_from_disk(str(bert_tokenized / "validation"))
    batch = tokenizer.pad({"input_ids": validation["input_ids"], "attention_mask": validation["attention_mask"]},
                          return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    expected = classification_metrics(logits.numpy(), validation["labels"], label_map.num_real_labels)
    for name in ("accuracy", "macro_f1", "weighted_f1", "macro_precision", "macro_recall"):
        assert metrics[f"eval_{name}"] == pytest.approx(expected[name], abs=1e-6), name
    loss = torch.nn.functional.cross_entropy(logits[:, : label_map.num_real_labels], torch.tensor(validation["labels"]))
    assert metrics["eval_loss"] == pytest.approx(loss.item(), abs=1e-4)


def test_zero2_checkpoints_hold_each_ranks_optimizer_shard(reference_run):
    out, _ = reference_run
    newest = newest_complete(out / "checkpoints")
    assert newest.name == f"checkpoint-{MAX_STEPS}"
    marker = json.loads((newest / MARKER).read_text())
    assert marker["world_size"] == 2
    shards = sorted(p.name for p in (newest / f"global_step{MAX_STEPS}").glob("*optim_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    assert sorted(p.name for p in newest.glob("rng_state_*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert sorted(p.name for p in newest.glob("loss_state_*.json")) == ["loss_state_0.json", "loss_state_1.json"]


def test_mlflow_gets_each_metric_once_from_rank_zero(reference_run, mlflow_server: str):
    from mlflow.tracking import MlflowClient

    out, _ = reference_run
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_id == json.loads((out / "model" / "model_metadata.json").read_text())["mlflow_run_id"]
    steps = list(range(EVERY, MAX_STEPS + 1, EVERY))
    for name in ("train/loss", "speed/samples_per_second", "speed/tokens_per_second", "memory/rss_mb"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, name)) == steps, name
    # every 10 steps, plus the final evaluation of the saved model
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "eval/macro_f1")) == [*steps, MAX_STEPS]
    # The trainer scores validation only: test/* are the evaluate stage's.
    assert not [key for key in run.data.metrics if key.startswith("test/")]
    assert [m.value for m in client.get_metric_history(run.info.run_id, "model/trainable_parameters")] == [2246.0]


def test_mlflow_gets_the_resolved_config_as_params(reference_run, mlflow_server: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    [run] = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    params = run.data.params
    assert params["training.learning_rate"] == "0.03"
    assert params["deepspeed.enable"] == "True"
    assert params["training.max_steps"] == str(MAX_STEPS)
    assert params["cluster.storage_secret"] == "***"  # secret-looking keys are masked


def test_mlflow_gets_the_model_and_data_artifacts(reference_run, mlflow_server: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    [run] = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    model_files = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"adapter_model.safetensors", "adapter_config.json", "label_map.json", "model_metadata.json",
            "training_metrics.json", "tokenizer.json"} <= model_files
    assert "dataset_metadata.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


def rank_process(launcher: psutil.Process, rank: int) -> psutil.Process | None:
    for child in launcher.children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "kubetune" in " ".join(child.cmdline()):
                return child
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def test_killed_rank_resumes_from_the_last_complete_checkpoint(reference_run, tiny_bert: Path, bert_tokenized: Path,
                                                               tmp_path: Path):
    config = two_rank_config(tmp_path / "run.yaml", tiny_bert, {"enable": True})  # local SQLite store in OUT
    out = tmp_path / "out"
    command = train_command(config, bert_tokenized, out)
    launcher = subprocess.Popen(command, cwd=REPO_ROOT, env=environment(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while newest_complete(out / "checkpoints") is None:
            assert launcher.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
            time.sleep(0.05)
        victim = rank_process(psutil.Process(launcher.pid), rank=1)
        assert victim is not None
        victim.send_signal(signal.SIGKILL)
        assert launcher.wait(timeout=300) != 0
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert not (out / MARKER).exists() and not (out / "model").exists()
    resume_point = newest_complete(out / "checkpoints")
    assert resume_point is not None and int(resume_point.name.split("-")[1]) < MAX_STEPS
    # What a rank dying mid-save leaves behind: a newer folder without the marker. It must never be loaded.
    half_written = out / "checkpoints" / f"checkpoint-{int(resume_point.name.split('-')[1]) + 1}"
    half_written.mkdir()
    shutil.copy(resume_point / "trainer_state.json", half_written / "trainer_state.json")
    run_before = json.loads((out / "run.json").read_text())["mlflow_run_id"]

    again = subprocess.run(command, cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-5000:]
    assert f"resuming from {resume_point.name}" in again.stdout
    assert not half_written.exists()
    metadata = json.loads((out / "model" / "model_metadata.json").read_text())
    reference = json.loads((reference_run[0] / "model" / "training_metrics.json").read_text())
    assert metadata["training"]["global_step"] == reference["global_step"] == MAX_STEPS
    assert metadata["training"]["resumed_from"] == resume_point.name
    assert metadata["mlflow_run_id"] == run_before  # the same MLflow run continues
