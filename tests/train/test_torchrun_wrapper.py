"""kubetune's torchrun: which line and exit code a run's ending gets, from what its ranks said; and the
one-rank-per-GPU check that runs before the local launcher starts anything."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from kubetune.config import load_config
from kubetune.errors import ConfigError
from kubetune.launchers import TrainRequest
from kubetune.launchers.local import LocalLauncher
from kubetune.launchers.torchrun import OUTCOME_DIR_ENV, Outcome, read_outcomes, record_rank_outcome, verdict
from kubetune.train.arguments import check_gpu_ranks, init_distributed

BAD = "training.metric_for_best_model: top5_accuracy needs more than 5 classes and the data has 4; choose macro_f1 or accuracy"
STOPPED = "stopped by SIGTERM at step 12 after saving checkpoint-12 to /out/checkpoints; run the same command to resume"


def test_a_user_error_on_one_rank_is_the_runs_line_and_exit_2():
    # rank 1 found the problem; torchrun then stopped rank 0 with SIGTERM
    result = verdict({1: Outcome(2, BAD, 1)}, {0: -signal.SIGTERM, 1: 2})
    assert (result.exit_code, result.message, result.rank) == (2, BAD, 1)


def test_the_lowest_ranks_user_error_stands_when_several_report_one():
    result = verdict({0: Outcome(2, BAD, 0), 1: Outcome(2, "other", 1)}, {0: 2, 1: 2})
    assert (result.exit_code, result.message) == (2, BAD)


def test_sigterm_to_torchrun_ends_143_with_the_ranks_line():
    # torchrun got SIGTERM and raised before it collected the ranks' exit codes
    result = verdict({0: Outcome(143, STOPPED, 0), 1: Outcome(143, STOPPED, 1)}, {}, signaled=signal.SIGTERM)
    assert (result.exit_code, result.message) == (143, STOPPED)


def test_sigterm_before_any_checkpoint_still_ends_143():
    result = verdict({}, {0: -signal.SIGTERM, 1: -signal.SIGTERM})
    assert result.exit_code == 143
    assert result.message.startswith("stopped by SIGTERM before a checkpoint was saved")


def test_a_crashed_rank_is_named_with_its_exit_code():
    result = verdict({}, {0: -signal.SIGTERM, 1: 1})
    assert (result.exit_code, result.message) == (1, "training failed: rank 1 exited with code 1; its log above says why")
    killed = verdict({}, {1: -signal.SIGKILL})
    assert killed.message == "training failed: rank 1 was killed by SIGKILL; its log above says why"


def test_success_is_exit_0():
    assert verdict({}, {}).exit_code == 0


def test_a_rank_records_its_outcome_for_the_wrapper_and_for_plain_torchrun(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv(OUTCOME_DIR_ENV, str(tmp_path / "outcomes"))
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(tmp_path / "error.json"))
    record_rank_outcome(2, BAD)
    assert read_outcomes(tmp_path / "outcomes") == {1: Outcome(2, BAD, 1)}
    # the format torchrun's ProcessFailure reads: its failure summary shows the line
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    failure = ProcessFailure(local_rank=1, pid=1, exitcode=2, error_file=str(tmp_path / "error.json"))
    assert failure.message["message"] == BAD
    assert json.loads((tmp_path / "error.json").read_text())["message"]["extraInfo"]["py_callstack"] == BAD


# ------------------------------------------------------------------------------------ ranks per GPU
@pytest.fixture
def one_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


GPU_ERROR = (r"^cluster\.gpus_per_worker: 2 ranks per node \(torchrun --nproc_per_node\) but this machine has 1 GPU; "
             r"set cluster\.gpus_per_worker: 1 \(one rank per GPU\)$")


def test_more_ranks_than_gpus_is_refused_before_the_launcher_starts_anything(one_gpu, tmp_path: Path):
    config = load_config(None, ["cluster.gpus_per_worker=2"])
    request = TrainRequest(config=config, data_uri=str(tmp_path / "data"), output_uri=str(tmp_path / "out"), run_id="r")
    with pytest.raises(ConfigError, match=GPU_ERROR):
        LocalLauncher().launch(request)
    assert not (tmp_path / "out").exists()  # not even config.yaml was written


def test_kubetune_run_refuses_more_ranks_than_gpus_before_any_step(one_gpu, tmp_path: Path):
    from kubetune.pipeline.local import run_local

    runs = tmp_path / "runs"
    with pytest.raises(ConfigError, match=GPU_ERROR):
        run_local(None, ["cluster.gpus_per_worker=2", f"storage.runs_uri={runs}"], run_id="r")
    assert not runs.exists()  # no step ran, no folder was made


def test_more_ranks_than_gpus_is_refused_by_the_trainer_under_plain_torchrun(one_gpu, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=GPU_ERROR):
        init_distributed(load_config(None))


def test_as_many_ranks_as_gpus_pass(one_gpu):
    check_gpu_ranks(1)


def test_without_a_gpu_cpu_ranks_are_allowed(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    check_gpu_ranks(2)


def test_the_train_step_ends_143_with_the_stop_line_after_sigterm(capsys):
    from kubetune.errors import Terminated
    from kubetune.pipeline.steps import run_step

    def stopped():
        raise Terminated(STOPPED)

    with pytest.raises(SystemExit) as exited:
        run_step("train", stopped)
    assert exited.value.code == 143
    assert capsys.readouterr().err == f"kubetune: {STOPPED}\n"
