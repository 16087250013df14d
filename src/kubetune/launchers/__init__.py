"""How the train step runs the trainer: a small interface with one implementation per way.

`local` runs `torchrun --nproc_per_node N -m kubetune train ...` as a subprocess on this machine;
`pytorchjob` submits a Kubeflow Training Operator (v1) PyTorchJob and waits for it; `trainjob` does the
same with a Kubeflow Trainer (v2) TrainJob (both in `cluster_job`). The train component
picks one by name from LAUNCHERS and calls `launch`; it never branches on the kind itself.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Protocol

from kubetune.config import RunConfig


@dataclass(frozen=True)
class TrainRequest:
    """Everything a launcher needs to start one training run."""

    config: RunConfig  # the resolved run config; travels to the trainer as YAML text
    data_uri: str  # the tokenize step's output (local path or s3:// URI)
    output_uri: str  # where the trainer writes checkpoints/ and model/ (local path or s3:// URI)
    run_id: str  # the pipeline run's id (KFP run id, or a local one): labels the job, tags MLflow
    mlflow_run_id: str | None = None  # the pipeline's MLflow run: the trainer logs into it
    env: dict[str, str] = field(default_factory=dict)  # extra non-secret environment for the trainer


@dataclass(frozen=True)
class TrainResult:
    output_uri: str  # holds model/ and training_metrics.json
    job_name: str | None = None  # the training job's name (pytorchjob and trainjob launchers)
    job_kind: str | None = None  # "PyTorchJob" or "TrainJob"


class Launcher(Protocol):
    def launch(self, request: TrainRequest) -> TrainResult:
        """Run training to the end; raise KubetuneError (or a subclass) when it fails."""
        ...


# launcher name (cluster.launcher) → "module:class"
LAUNCHERS: dict[str, str] = {
    "local": "kubetune.launchers.local:LocalLauncher",
    "pytorchjob": "kubetune.launchers.pytorchjob:PyTorchJobLauncher",
    "trainjob": "kubetune.launchers.trainjob:TrainJobLauncher",
}


# The config a launcher hands the trainer. Not OUT/config.yaml: that one is the trainer's record of the
# run that wrote OUT, and a launch whose config the trainer then rejects must leave it as it was.
LAUNCH_CONFIG_FILE = "launch-config.yaml"


def launch_config_uri(output_uri: str) -> str:
    from kubetune import storage

    return f"{storage.normalize_uri(output_uri).rstrip('/')}/{LAUNCH_CONFIG_FILE}"


def write_run_config(request: TrainRequest) -> str:
    """Put the resolved config at <output>/launch-config.yaml, where the trainer (on any node) reads it."""
    from kubetune import storage

    uri = launch_config_uri(request.output_uri)
    storage.write_text(uri, request.config.to_yaml(), request.config.storage)
    return uri


def get_launcher(name: str) -> Launcher:
    try:
        target = LAUNCHERS[name]
    except KeyError:
        from kubetune.errors import KubetuneError

        raise KubetuneError(f"cluster.launcher: unknown launcher {name!r}; choose one of {sorted(LAUNCHERS)}") from None
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)()
