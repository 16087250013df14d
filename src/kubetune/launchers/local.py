"""The `local` launcher: torchrun on this machine, the way the PyTorchJob runs it in each pod.

Without a GPU, torchrun starts `cluster.gpus_per_worker` CPU ranks (DeepSpeed's CPU accelerator and
gloo), so the distributed path that runs on the cluster is the one exercised here. With GPUs, it
refuses to start more ranks than there are GPUs (a rank on a missing `cuda:1` fails deep inside).

torchrun runs through kubetune.launchers.torchrun, which turns the ranks' endings into one line and
an exit code; the launcher raises that line as a KubetuneError (exit 2) or Terminated (exit 143).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from kubetune.errors import EXIT_TERMINATED, KubetuneError, Terminated
from kubetune.launchers import TrainRequest, TrainResult, write_run_config
from kubetune.launchers.torchrun import FAILURE_FILE_ENV
from kubetune.train.arguments import check_gpu_ranks


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_command(request: TrainRequest, config_uri: str) -> list[str]:
    nproc = request.config.cluster.gpus_per_worker
    return [
        sys.executable, "-m", "kubetune.launchers.torchrun",
        "--nnodes", "1", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "kubetune", "train", "--config", config_uri, "--data", request.data_uri, "--output", request.output_uri,
    ]


def trainer_environment(request: TrainRequest) -> dict[str, str]:
    env = {**os.environ, **request.env, "KUBETUNE_RUN_ID": request.run_id}
    if request.mlflow_run_id:
        env["MLFLOW_RUN_ID"] = request.mlflow_run_id
    cores = os.cpu_count() or 1
    # torchrun would pin every rank to one thread; give each rank its share of the cores instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // request.config.cluster.gpus_per_worker)))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


class LocalLauncher:
    def launch(self, request: TrainRequest) -> TrainResult:
        check_gpu_ranks(request.config.cluster.gpus_per_worker)  # before anything starts or is written
        config_uri = write_run_config(request)
        command = torchrun_command(request, config_uri)
        print("launching: " + " ".join(command[1:]), flush=True)
        with tempfile.TemporaryDirectory(prefix="kubetune-launch-") as scratch:
            failure_file = Path(scratch) / "failure.json"
            env = {**trainer_environment(request), FAILURE_FILE_ENV: str(failure_file)}
            code = self._run(command, env)
            failure = json.loads(failure_file.read_text()) if failure_file.is_file() else None
        if code == 0:
            return TrainResult(output_uri=request.output_uri)
        if failure is None:
            raise KubetuneError(f"training failed (torchrun exit code {code}); the trainer's log above says why")
        if failure["exit_code"] == EXIT_TERMINATED:
            raise Terminated(failure["message"])
        error = KubetuneError(failure["message"])
        error.exit_code = failure["exit_code"]  # 2: a user error; 1: a rank crashed (its traceback is above)
        raise error

    @staticmethod
    def _run(command: list[str], env: dict[str, str]) -> int:
        # Own process group: a cancelled step stops every rank, and each rank saves a checkpoint on SIGTERM.
        process = subprocess.Popen(command, env=env, start_new_session=True)
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def forward(signum: int, _frame: object) -> None:
            os.killpg(process.pid, signal.SIGTERM)

        for sig in previous:
            signal.signal(sig, forward)
        try:
            return process.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
