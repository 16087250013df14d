"""How a 2-rank run ends, seen by the user: SIGTERM to torchrun (a pod's main process) or to the local
launcher saves a checkpoint and exits 143, and the rerun ends exactly like an unbroken run; a user error
detected inside the trainer ends the launcher's step with one `kubetune: error:` line and exit 2."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kubetune.train.checkpoints import MARKER

from .conftest import REPO_ROOT, build_tokenized, free_port, torchrun_command, write_config

pytestmark = pytest.mark.slow

# 64 rows, 4 per rank and step on 2 ranks: 8 steps per epoch, 5 epochs.
MAX_STEPS, STEPS_PER_EPOCH = 40, 8
LOSS_LINE = re.compile(r"'loss'.*'epoch': '?([0-9.]+)")  # PrinterCallback shows floats as '1.125'
STOPPED = re.compile(r"stopped by SIGTERM at step (\d+) after saving checkpoint-(\d+)")

# The train step of the pipeline as the local launcher runs it (kubetune.pipeline.steps.run_step).
STEP_SCRIPT = textwrap.dedent("""
    import sys
    from kubetune.config import load_config
    from kubetune.launchers import TrainRequest
    from kubetune.launchers.local import LocalLauncher
    from kubetune.pipeline.steps import run_step

    config, data, output = sys.argv[1:4]
    request = TrainRequest(config=load_config(config, sys.argv[4:]), data_uri=data, output_uri=output, run_id="test-run")
    run_step("train", lambda: LocalLauncher().launch(request))
""")


def environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def data(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenized(tmp_path_factory.mktemp("endings-data"), tiny_bert, sizes={"train": 64, "validation": 13})


@pytest.fixture(scope="module")
def config(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The default sampler (length grouping) and no checkpoints but SIGTERM's and the last one's.
    return write_config(
        tmp_path_factory.mktemp("endings-config") / "run.yaml", tiny_bert,
        deepspeed={"enable": True, "stage": 2},
        cluster={"gpus_per_worker": 2},
        training={"batch_size": 4, "max_steps": MAX_STEPS, "logging_steps": 1, "save_steps": 1000},
    )


def train_args(config: Path, data: Path, out: Path) -> list[str]:
    return ["train", "--config", str(config), "--data", str(data), "--output", str(out)]


def wrapper_command(config: Path, data: Path, out: Path) -> list[str]:
    """What a training pod runs: kubetune's torchrun."""
    return [sys.executable, "-m", "kubetune.launchers.torchrun", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), "-m", "kubetune", *train_args(config, data, out)]


def step_command(config: Path, data: Path, out: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-c", STEP_SCRIPT, str(config), str(data), str(out), *overrides]


@pytest.fixture(scope="module")
def unbroken(config: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("endings-unbroken") / "out"
    result = subprocess.run(torchrun_command(2, *train_args(config, data, out)), cwd=REPO_ROOT, env=environment(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    return out


def sigterm_after_the_first_epoch(command: list[str]) -> tuple[int, str, str]:
    """Start `command`, SIGTERM its process (only it) once training logs a step of the second epoch."""
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        seen = []
        for line in process.stdout:
            seen.append(line)
            match = LOSS_LINE.search(line)
            if match and float(match.group(1)) > 1.0:
                process.send_signal(signal.SIGTERM)
                break
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, "".join(seen) + stdout, stderr


def logged_steps(out: Path, after: int) -> list[dict]:
    state = json.loads((out / "checkpoints" / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry and entry["step"] > after]


def assert_same_run(out: Path, reference: Path, resumed_at: int) -> None:
    """The same step count, adapter and head weights (bit for bit), per-step losses, learning rates and
    gradient norms after the resume point, and train_loss, as the unbroken run."""
    expected, got = load_file(reference / "model" / "adapter_model.safetensors"), load_file(out / "model" / "adapter_model.safetensors")
    assert sorted(got) == sorted(expected) and any("classifier" in name for name in expected)
    for name, tensor in expected.items():
        assert torch.equal(got[name], tensor), name
    after = logged_steps(reference, resumed_at)
    assert [entry["step"] for entry in after] == list(range(resumed_at + 1, MAX_STEPS + 1))
    assert logged_steps(out, resumed_at) == after
    metrics, reference_metrics = (json.loads((o / "model" / "training_metrics.json").read_text()) for o in (out, reference))
    assert metrics["global_step"] == reference_metrics["global_step"] == MAX_STEPS
    assert metrics["train_loss"] == reference_metrics["train_loss"]


def stopped_step(stderr: str, out: Path) -> int:
    [(step, saved)] = STOPPED.findall(stderr)
    assert step == saved
    step = int(step)
    assert STEPS_PER_EPOCH < step < MAX_STEPS  # after the first epoch, before the end
    assert (out / "checkpoints" / f"checkpoint-{step}" / MARKER).is_file()
    assert not (out / "model").exists() and not (out / MARKER).exists()
    return step


@pytest.mark.parametrize("launch", ["wrapper", "local-launcher"])
def test_sigterm_exits_143_and_the_rerun_matches_an_unbroken_run(launch: str, config: Path, data: Path, unbroken: Path,
                                                                 tmp_path: Path):
    """SIGTERM to `python -m kubetune.launchers.torchrun` alone (what the kubelet does to a pod's main process),
    or to the local launcher's train step: a checkpoint, one line, 143; the same command resumes exactly."""
    out = tmp_path / "out"
    command = (wrapper_command if launch == "wrapper" else step_command)(config, data, out)
    code, _, stderr = sigterm_after_the_first_epoch(command)
    assert code == 143, stderr[-5000:]
    step = stopped_step(stderr, out)
    assert "ChildFailedError" not in stderr and "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if line.startswith("kubetune:")] == [
        f"kubetune: stopped by SIGTERM at step {step} after saving checkpoint-{step} to {out}/checkpoints; "
        "run the same command to resume"
    ]

    again = subprocess.run(command, cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-5000:]
    assert f"resuming from checkpoint-{step}" in again.stdout
    assert_same_run(out, unbroken, step)


def test_a_user_error_inside_the_trainer_is_one_line_and_exit_2(config: Path, data: Path, tmp_path: Path):
    # Only the trainer can tell: the tokenized data has 4 classes, too few for top-5 accuracy.
    result = subprocess.run(step_command(config, data, tmp_path / "out", "training.metric_for_best_model=top5_accuracy"),
                            cwd=REPO_ROOT, env=environment(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-5000:]
    shown = result.stdout + result.stderr
    assert [line for line in shown.splitlines() if "kubetune: error:" in line] == [
        "kubetune: error: training.metric_for_best_model: top5_accuracy needs more than 5 classes and the data has 4; "
        "choose macro_f1 or accuracy"
    ]
    assert "ChildFailedError" not in shown and "Traceback" not in shown
