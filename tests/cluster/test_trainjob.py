"""The TrainJob built from every shipped config, field by field; the MPI path's command and rank detection."""

from __future__ import annotations

import json
import os
import sys

import kubernetes_validate
import pytest

from kubetune import distributed, images
from kubetune.cluster import job as jobs
from kubetune.cluster import trainjob
from kubetune.config import load_config
from kubetune.errors import ConfigError, KubetuneError
from kubetune.launchers import mpirun
from tests.cluster.test_job import (
    KUBERNETES_VERSION,
    OUTPUT_URI,
    REPO,
    RUN_ID,
    SHIPPED_CONFIGS,
    by_name,
    request_for,
)

RUNTIMES = ("torch-distributed", "deepspeed-distributed")
TRAIN_ARGS = ["train", "--config", f"{OUTPUT_URI}/launch-config.yaml",
              "--data", "s3://mlpipeline/v2/artifacts/kubetune/tokenize/dataset", "--output", OUTPUT_URI]


def build(config, **kwargs) -> dict:
    return trainjob.serialize(trainjob.build_trainjob(request_for(config, **kwargs)))


def patched_jobs(job: dict) -> dict[str, dict]:
    """replicated job name → its pod template patch, from kubetune's runtimePatches entry."""
    (patch,) = job["spec"]["runtimePatches"]
    assert patch["manager"] == "kubetune.io/launcher"
    replicated = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    return {item["name"]: item["template"]["spec"]["template"] for item in replicated}


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_trainjob_from_shipped_config(path, runtime, monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)
    config = load_config(path, [f"cluster.runtime={runtime}"])
    cluster = config.cluster
    job = build(config, mlflow_run_id="mlflow-run-1")
    pytorchjob = jobs.serialize(jobs.build_pytorchjob(request_for(config, mlflow_run_id="mlflow-run-1")))

    name = jobs.job_name(RUN_ID)
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    # Same name, namespace, labels and annotations as the PyTorchJob: `kubectl get trainjobs -l kubetune.io/run-id=`.
    assert job["metadata"] == pytorchjob["metadata"]
    assert job["metadata"]["labels"]["kubetune.io/run-id"] == RUN_ID and job["metadata"]["name"] == name

    spec = job["spec"]
    assert spec["runtimeRef"] == {"name": runtime, "kind": "ClusterTrainingRuntime", "apiGroup": "trainer.kubeflow.org"}
    assert spec["activeDeadlineSeconds"] == cluster.timeout_seconds
    assert "managedBy" not in spec and "suspend" not in spec
    trainer = spec["trainer"]
    assert trainer["image"] == (cluster.image or images.TRAINER_IMAGE)
    assert trainer["numNodes"] == cluster.workers
    assert trainer["numProcPerNode"] == cluster.gpus_per_worker
    resources = {"cpu": cluster.cpu, "memory": cluster.memory, "nvidia.com/gpu": str(cluster.gpus_per_worker)}
    assert trainer["resourcesPerNode"] == {"requests": resources, "limits": resources}
    # The environment is the PyTorchJob's, item for item: Secrets by reference, the rest by value.
    master = pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    assert trainer["env"] == master["spec"]["containers"][0]["env"]
    env = by_name(trainer["env"])
    assert env["AWS_SECRET_ACCESS_KEY"] == {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {
        "secretKeyRef": {"name": cluster.storage_secret, "key": "AWS_SECRET_ACCESS_KEY", "optional": False}}}
    if runtime == "torch-distributed":
        assert trainer["command"] == ["python", "-m", "kubetune.launchers.torchrun"]
        assert trainer["args"] == ["--module", "kubetune", *TRAIN_ARGS]
    else:
        assert trainer["command"] == ["python", "-m", "kubetune.launchers.mpirun"]
        assert trainer["args"] == ["--np", str(cluster.workers * cluster.gpus_per_worker),
                                   "--forward", ",".join(env), "--", "kubetune", *TRAIN_ARGS]

    patches = patched_jobs(job)
    assert set(patches) == set(trainjob.REPLICATED_JOBS[runtime])
    for template in patches.values():
        # The PyTorchJob's pod settings, as far as a TrainJob may patch them.
        assert template["metadata"] == master["metadata"]
        pod, source = template["spec"], master["spec"]
        for key in ("serviceAccountName", "terminationGracePeriodSeconds", "volumes", "securityContext"):
            assert pod[key] == source[key], key
        assert pod.get("nodeSelector", {}) == cluster.node_selector
        assert pod.get("tolerations", []) == source.get("tolerations", [])
        assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cluster.shm_size}}]
        (container,) = pod["containers"]
        assert container == {"name": "node", "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
                             "securityContext": source["containers"][0]["securityContext"]}


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_patched_pod_settings_are_valid_kubernetes_objects(path):
    """What the TrainJob patches into the runtime's pods, checked as a pod template of its own."""
    job = build(load_config(path))
    template = patched_jobs(job)["node"]
    trainer = job["spec"]["trainer"]
    container = {**template["spec"]["containers"][0], "image": trainer["image"], "command": trainer["command"],
                 "args": trainer["args"], "env": trainer["env"], "resources": trainer["resourcesPerNode"]}
    pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": job["metadata"]["name"]},
                    "template": {**template, "spec": {**template["spec"], "containers": [container]}}}
    kubernetes_validate.validate(pod_template, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_no_secret_value_in_the_trainjob(runtime, monkeypatch):
    canaries = {
        "AWS_ACCESS_KEY_ID": "CANARYACCESSKEY0001",
        "AWS_SECRET_ACCESS_KEY": "canary-secret-4f1d9b2c7e",
        "MLFLOW_TRACKING_PASSWORD": "canary-password-8a7b6c",
        "MLFLOW_TRACKING_TOKEN": "canary-token-1e2d3c",
    }
    for name, value in canaries.items():
        monkeypatch.setenv(name, value)
    config = load_config(REPO / "configs/qwen2.5-0.5b-lora-zero2.yaml", [
        "cluster.mlflow_secret=mlflow-auth", "tracking.tracking_uri=http://mlflow.kubetune:5000", f"cluster.runtime={runtime}"])
    text = json.dumps(build(config))
    assert [name for name, value in canaries.items() if value in text] == []
    assert "mlflow-auth" in text and "kubetune-s3" in text  # the references are there, the values are not
    if runtime == "deepspeed-distributed":  # mpirun forwards them to the ranks by name only
        assert "MLFLOW_TRACKING_PASSWORD" in build(config)["spec"]["trainer"]["args"][3].split(",")


def test_secret_value_smuggled_into_a_trainjob_is_refused(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-secret-4f1d9b2c7e")
    config = load_config(REPO / "configs/bert-base-lora.yaml")
    with pytest.raises(KubetuneError, match="the TrainJob spec would contain the value of AWS_SECRET_ACCESS_KEY"):
        trainjob.build_trainjob(request_for(config, env={"DEBUG_COPY": "canary-secret-4f1d9b2c7e"}))


def test_trainjob_request_is_validated_like_a_pytorchjob():
    config = load_config(REPO / "configs/bert-base-lora.yaml", ["cluster.memory=lots"])
    with pytest.raises(ConfigError, match=r"cluster\.memory: 'lots' is not a Kubernetes quantity"):
        trainjob.build_trainjob(request_for(config))


def test_unknown_runtime_is_a_config_error():
    with pytest.raises(ConfigError, match="cluster.runtime"):
        load_config(REPO / "configs/bert-base-lora.yaml", ["cluster.runtime=mpi-distributed"])


# ------------------------------------------------------------------------------------- the MPI path
def test_mpirun_command_starts_every_rank_with_the_first_host_as_master(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# written by Kubeflow Trainer\nkubetune-r-launcher-0-0.kubetune-r slots=4\n"
                        "kubetune-r-node-0-0.kubetune-r slots=4\n")
    command = mpirun.mpirun_command(8, hostfile, ["AWS_SECRET_ACCESS_KEY", "KUBETUNE_RUN_ID"], ["kubetune", "train", "--config", "c"])
    assert command == [
        "mpirun", "--hostfile", str(hostfile), "-np", "8", "--bind-to", "none", "--map-by", "slot",
        "-x", "MASTER_ADDR=kubetune-r-launcher-0-0.kubetune-r", "-x", "MASTER_PORT=29500",
        "-x", "AWS_SECRET_ACCESS_KEY", "-x", "KUBETUNE_RUN_ID",
        sys.executable, "-m", "kubetune", "train", "--config", "c",
    ]


def test_mpirun_without_a_hostfile_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(mpirun.HOSTFILE_ENV, str(tmp_path / "absent"))
    assert mpirun.main(["--np", "2", "--", "kubetune", "train"]) == 2
    assert f"kubetune: error: the MPI hostfile {tmp_path / 'absent'} is missing" in capsys.readouterr().err


def test_empty_hostfile_is_one_clear_error(tmp_path):
    (tmp_path / "hostfile").write_text("# nothing\n")
    with pytest.raises(KubetuneError, match="lists no host"):
        mpirun.first_host(tmp_path / "hostfile")


def test_ranks_started_by_mpirun_are_ranks_to_kubetune(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        # set, then removed: monkeypatch then also removes what adopt_mpi_environment sets, after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "5")
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "8")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "4")
    assert distributed.rank() == 0  # before: Open MPI's names alone say nothing to torch or kubetune
    distributed.adopt_mpi_environment()
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (5, 8, 1)
    assert os.environ["LOCAL_WORLD_SIZE"] == "4"
    assert not distributed.is_main_process()


def test_torchrun_ranks_are_left_alone(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    distributed.adopt_mpi_environment()
    assert distributed.rank() == 0
