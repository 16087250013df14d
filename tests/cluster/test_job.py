"""The PyTorchJob built from every shipped config, serialized as the API server gets it, field by field."""

from __future__ import annotations

import json
import re
from pathlib import Path

import kubernetes_validate
import pytest

from kubetune import images
from kubetune.cluster import job as jobs
from kubetune.config import load_config
from kubetune.errors import ConfigError, KubetuneError
from kubetune.launchers import TrainRequest

REPO = Path(__file__).resolve().parents[2]
# The Kubernetes version the pod templates are validated against (kubernetes-validate's schemas).
KUBERNETES_VERSION = "1.32.0"
SHIPPED_CONFIGS = sorted(REPO.glob("configs/**/*.yaml")) + sorted((REPO / "src/kubetune/configs").glob("**/*.yaml"))
RUN_ID = "5d0c1f9e-7b1a-4c57-9a3e-2f6f3b8a9c01"
DATA_URI = "minio://mlpipeline/v2/artifacts/kubetune/tokenize/dataset"
OUTPUT_URI = "s3://kubetune/runs/5d0c1f9e/train"


def request_for(config, run_id: str = RUN_ID, **kwargs) -> TrainRequest:
    return TrainRequest(config=config, data_uri=kwargs.pop("data_uri", DATA_URI),
                        output_uri=kwargs.pop("output_uri", OUTPUT_URI), run_id=run_id, **kwargs)


def by_name(env: list[dict]) -> dict[str, dict]:
    return {item["name"]: item for item in env}


def test_shipped_configs_are_found():
    names = {path.name for path in SHIPPED_CONFIGS}
    assert {"demo.yaml", "bert-base-lora.yaml", "qwen2.5-0.5b-lora-zero2.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_job_from_shipped_config(path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    config = load_config(path)
    cluster = config.cluster
    job = jobs.serialize(jobs.build_pytorchjob(request_for(config, mlflow_run_id="mlflow-run-1")))

    name = jobs.job_name(RUN_ID)
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob"
    assert job["metadata"]["name"] == name == f"kubetune-{RUN_ID}"
    assert job["metadata"]["namespace"] == cluster.namespace
    expected_labels = {
        "kubetune.io/run-id": RUN_ID,
        "app.kubernetes.io/name": "kubetune",
        "app.kubernetes.io/component": "trainer",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/version": images.TAG,
        "app.kubernetes.io/managed-by": "kubetune",
    }
    assert job["metadata"]["labels"] == expected_labels
    assert job["metadata"]["annotations"] == {"kubetune.io/run-id": RUN_ID, "kubetune.io/output-uri": OUTPUT_URI}

    spec = job["spec"]
    assert spec["nprocPerNode"] == str(cluster.gpus_per_worker)
    assert spec["runPolicy"] == {
        "backoffLimit": cluster.backoff_limit,
        "cleanPodPolicy": cluster.clean_pod_policy,
        "ttlSecondsAfterFinished": cluster.ttl_seconds_after_finished,
        "activeDeadlineSeconds": cluster.timeout_seconds,
    }
    replicas = spec["pytorchReplicaSpecs"]
    assert set(replicas) == ({"Master", "Worker"} if cluster.workers > 1 else {"Master"})
    assert replicas["Master"]["replicas"] == 1
    if cluster.workers > 1:
        assert replicas["Worker"]["replicas"] == cluster.workers - 1
        assert replicas["Worker"]["template"] == replicas["Master"]["template"]

    for replica in replicas.values():
        assert replica["restartPolicy"] == "OnFailure"
        template = replica["template"]
        assert template["metadata"]["labels"] == expected_labels
        pod = template["spec"]
        assert pod["serviceAccountName"] == cluster.service_account
        assert pod["automountServiceAccountToken"] is False
        assert pod.get("nodeSelector", {}) == cluster.node_selector
        assert pod.get("tolerations", []) == [t.model_dump(exclude_none=True) for t in cluster.tolerations]
        assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": cluster.shm_size}}]
        assert pod["securityContext"]["runAsNonRoot"] is True

        (container,) = pod["containers"]
        assert container["name"] == "pytorch"
        assert container["image"] == (cluster.image or images.TRAINER_IMAGE)
        assert container["command"] == [
            "python", "-m", "kubetune.launchers.torchrun", "--module", "kubetune", "train",
            "--config", f"{OUTPUT_URI}/launch-config.yaml",
            "--data", "s3://mlpipeline/v2/artifacts/kubetune/tokenize/dataset",
            "--output", OUTPUT_URI,
        ]
        resources = {"cpu": cluster.cpu, "memory": cluster.memory, "nvidia.com/gpu": str(cluster.gpus_per_worker)}
        assert container["resources"] == {"requests": resources, "limits": resources}
        assert container["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]

        env = by_name(container["env"])
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert env[key] == {"name": key, "valueFrom": {"secretKeyRef": {"name": cluster.storage_secret, "key": key, "optional": False}}}
        assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": cluster.storage_secret, "key": "AWS_SESSION_TOKEN", "optional": True}
        assert "MLFLOW_TRACKING_PASSWORD" not in env  # no cluster.mlflow_secret in the shipped configs
        assert env["KUBETUNE_RUN_ID"] == {"name": "KUBETUNE_RUN_ID", "value": RUN_ID}
        assert env["MLFLOW_RUN_ID"] == {"name": "MLFLOW_RUN_ID", "value": "mlflow-run-1"}
        # kubelet → torchrun → ranks: torchrun SIGKILLs the ranks 15 s before the kubelet would kill the pod.
        assert pod["terminationGracePeriodSeconds"] == cluster.termination_grace_period_seconds == 120
        assert env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == {"name": "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "value": "105"}
        if config.storage.endpoint_url:
            assert env["AWS_ENDPOINT_URL"] == {"name": "AWS_ENDPOINT_URL", "value": config.storage.endpoint_url}
        else:
            assert "AWS_ENDPOINT_URL" not in env
        assert all("value" in item for item in container["env"] if item["name"] not in jobs.SECRET_ENV_NAMES)


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_pod_template_is_a_valid_kubernetes_object(path):
    job = jobs.serialize(jobs.build_pytorchjob(request_for(load_config(path))))
    template = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": job["metadata"]["name"]}, "template": template}
    kubernetes_validate.validate(pod_template, KUBERNETES_VERSION, strict=True)


def test_mlflow_secret_and_non_secret_environment(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    config = load_config(REPO / "configs/qwen2.5-0.5b-lora-zero2.yaml", [
        "cluster.mlflow_secret=mlflow-auth", "tracking.tracking_uri=http://mlflow.kubetune:5000",
        "storage.endpoint_url=http://minio.kubetune:9000", "cluster.workers=3", "cluster.image=registry.local/trainer:dev",
    ])
    job = jobs.serialize(jobs.build_pytorchjob(request_for(config, env={"NCCL_DEBUG": "WARN"})))
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    container = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.local/trainer:dev"
    env = by_name(container["env"])
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-auth", "key": key, "optional": True}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow.kubetune:5000"
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.kubetune:9000"
    assert env["AWS_DEFAULT_REGION"]["value"] == "eu-west-1"
    assert env["NCCL_DEBUG"]["value"] == "WARN"


def test_no_secret_value_in_the_job(monkeypatch):
    canaries = {
        "AWS_ACCESS_KEY_ID": "CANARYACCESSKEY0001",
        "AWS_SECRET_ACCESS_KEY": "canary-secret-4f1d9b2c7e",
        "MLFLOW_TRACKING_PASSWORD": "canary-password-8a7b6c",
        "MLFLOW_TRACKING_TOKEN": "canary-token-1e2d3c",
    }
    for name, value in canaries.items():
        monkeypatch.setenv(name, value)
    config = load_config(REPO / "configs/qwen2.5-0.5b-lora-zero2.yaml", [
        "cluster.mlflow_secret=mlflow-auth", "tracking.tracking_uri=http://mlflow.kubetune:5000"])
    text = json.dumps(jobs.serialize(jobs.build_pytorchjob(request_for(config))))
    found = [name for name, value in canaries.items() if value in text]
    assert found == []
    assert "mlflow-auth" in text and "kubetune-s3" in text  # the references are there, the values are not


def test_secret_value_smuggled_in_extra_env_is_refused(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-secret-4f1d9b2c7e")
    config = load_config(REPO / "configs/bert-base-lora.yaml")
    with pytest.raises(KubetuneError, match="would contain the value of AWS_SECRET_ACCESS_KEY"):
        jobs.build_pytorchjob(request_for(config, env={"DEBUG_COPY": "canary-secret-4f1d9b2c7e"}))


# ------------------------------------------------------------------------- one test per rule
def test_local_output_is_refused():
    config = load_config(REPO / "configs/bert-base-lora.yaml")
    with pytest.raises(ConfigError, match=r"output of the train step is a local path .*storage\.runs_uri"):
        jobs.build_pytorchjob(request_for(config, output_uri="/tmp/runs/x/train"))


def test_local_data_is_refused():
    config = load_config(REPO / "configs/bert-base-lora.yaml")
    with pytest.raises(ConfigError, match=r"data of the train step is a local path"):
        jobs.build_pytorchjob(request_for(config, data_uri="runs/x/tokenize"))


@pytest.mark.parametrize("key", ["cpu", "memory", "shm_size"])
def test_bad_quantity_names_its_key(key):
    config = load_config(REPO / "configs/bert-base-lora.yaml", [f"cluster.{key}=lots"])
    with pytest.raises(ConfigError, match=rf"cluster\.{key}: 'lots' is not a Kubernetes quantity"):
        jobs.build_pytorchjob(request_for(config))


def test_shm_larger_than_memory_is_refused():
    config = load_config(REPO / "configs/bert-base-lora.yaml", ["cluster.memory=16Gi", "cluster.shm_size=32Gi"])
    with pytest.raises(ConfigError, match=r"cluster\.shm_size \(32Gi\) is larger than cluster\.memory \(16Gi\)"):
        jobs.build_pytorchjob(request_for(config))


def test_secret_name_in_extra_env_is_refused():
    config = load_config(REPO / "configs/bert-base-lora.yaml")
    with pytest.raises(ConfigError, match="AWS_SECRET_ACCESS_KEY is set by a Kubernetes Secret"):
        jobs.build_pytorchjob(request_for(config, env={"AWS_SECRET_ACCESS_KEY": "x"}))


def test_kubetune_variable_in_extra_env_is_refused():
    config = load_config(REPO / "configs/bert-base-lora.yaml")
    with pytest.raises(ConfigError, match="KUBETUNE_RUN_ID is set by kubetune"):
        jobs.build_pytorchjob(request_for(config, env={"KUBETUNE_RUN_ID": "other"}))


def test_password_in_tracking_uri_is_refused():
    config = load_config(REPO / "configs/bert-base-lora.yaml", ["tracking.tracking_uri=http://bob:hunter2@mlflow:5000"])
    with pytest.raises(ConfigError, match=r"tracking\.tracking_uri holds a password; .*cluster\.mlflow_secret"):
        jobs.build_pytorchjob(request_for(config))


def test_empty_run_id_is_refused():
    config = load_config(REPO / "configs/bert-base-lora.yaml")
    with pytest.raises(ConfigError, match="empty run id"):
        jobs.build_pytorchjob(request_for(config, run_id=" "))


# ------------------------------------------------------------------------------------ names
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


@pytest.mark.parametrize("run_id", [RUN_ID, "Run_2024/05/01 12:00", "x" * 200, "--", "UPPER.case-ok", "a"])
def test_names_are_valid_kubernetes_names(run_id):
    name = jobs.job_name(run_id)
    assert DNS_1035.match(name) and len(name) <= jobs.MAX_JOB_NAME
    assert len(f"{name}-worker-9999999") <= 63
    label = jobs.run_id_label(run_id)
    assert LABEL_VALUE.match(label) and 0 < len(label) <= 63


def test_a_valid_run_id_is_kept_as_it_is():
    assert jobs.job_name("20250101-120000-ab12") == "kubetune-20250101-120000-ab12"
    assert jobs.run_id_label("Run_2025.01") == "Run_2025.01"


def test_sanitised_run_ids_do_not_collide():
    assert jobs.job_name("run_1") != jobs.job_name("run.1") != jobs.job_name("run-1")
    assert jobs.run_id_label("run/1") != jobs.run_id_label("run:1")
