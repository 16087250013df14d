"""The PyTorchJob that runs the trainer: built from the run config as typed SDK objects.

One Master and `cluster.workers - 1` Workers, each pod running
`python -m kubetune.launchers.torchrun --module kubetune train ...` (torchrun with kubetune's exit
codes) on `cluster.gpus_per_worker` GPUs. The Training Operator sets
PET_NNODES / PET_NODE_RANK / PET_MASTER_ADDR / PET_MASTER_PORT / PET_NPROC_PER_NODE in every pod,
and torchrun reads them, so the command is the same on every replica.

Credentials reach the pods only as references to Kubernetes Secrets (`secretKeyRef`); the spec
never holds a secret value, and `check_no_secret_values` proves it before the job is submitted.
"""

from __future__ import annotations

import hashlib
import os
import re
from urllib.parse import urlsplit

from kubeflow.training import models as training_models
from kubeflow.training.constants import constants as training_constants
from kubernetes import client as k8s
from kubernetes.utils import parse_quantity

from kubetune import __version__, images, storage
from kubetune.config import RunConfig
from kubetune.errors import ConfigError, KubetuneError
from kubetune.launchers import TrainRequest, launch_config_uri

# The Training Operator finds the training container of a PyTorchJob replica by this name.
CONTAINER_NAME = training_constants.PYTORCHJOB_CONTAINER
RUN_ID_LABEL = "kubetune.io/run-id"
RUN_ID_ANNOTATION = "kubetune.io/run-id"
OUTPUT_ANNOTATION = "kubetune.io/output-uri"
SHM_VOLUME = "dshm"
GPU_RESOURCE = "nvidia.com/gpu"
# The trainer image's user (docker/trainer.Dockerfile); numeric so that runAsNonRoot can verify it.
TRAINER_UID = 1000

# Secret keys each Secret may hold; the pods see them as environment variables of the same name.
STORAGE_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
STORAGE_SECRET_OPTIONAL_KEYS = ("AWS_SESSION_TOKEN",)
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
SECRET_ENV_NAMES = frozenset(STORAGE_SECRET_KEYS + STORAGE_SECRET_OPTIONAL_KEYS + MLFLOW_SECRET_KEYS)
# Non-secret variables kubetune sets itself (see `_fixed_env`); an extra environment may not redefine them.
KUBETUNE_ENV_NAMES = frozenset(
    {"KUBETUNE_RUN_ID", "PYTHONUNBUFFERED", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID",
     "TORCH_ELASTIC_SHUTDOWN_TIMEOUT"}
)
# SIGTERM reaches the pod's main process (torchrun) first; torchrun passes it to the ranks and SIGKILLs
# them after its shutdown timeout. That timeout ends this much before the kubelet's own SIGKILL, so
# torchrun can still report the ranks' exit and stop cleanly.
SHUTDOWN_MARGIN_SECONDS = 15

# Pod and Service names are `<job>-master-0` / `<job>-worker-<i>` and must stay DNS-1035 labels
# (63 characters): 48 leaves room for "-worker-" and seven digits.
MAX_JOB_NAME = 48
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def job_name(run_id: str) -> str:
    """A DNS-1035 name for the run's PyTorchJob: `kubetune-<run id>`, hashed when it had to change."""
    body = re.sub(r"[^a-z0-9-]+", "-", run_id.lower()).strip("-")
    name = f"kubetune-{body}" if body else "kubetune"
    if body != run_id or len(name) > MAX_JOB_NAME:
        # Sanitising or cutting could make two run ids collide; the hash of the original keeps them apart.
        name = f"{name[: MAX_JOB_NAME - 9].rstrip('-')}-{_short_hash(run_id)}"
    return name


def run_id_label(run_id: str) -> str:
    """The run id as a valid label value (63 characters of [-_.A-Za-z0-9], alphanumeric at both ends)."""
    if len(run_id) <= 63 and _LABEL_VALUE.match(run_id):
        return run_id
    body = re.sub(r"[^-_.A-Za-z0-9]+", "-", run_id)
    body = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", body)[:54]
    body = re.sub(r"[^A-Za-z0-9]+$", "", body)
    return f"{body}-{_short_hash(run_id)}" if body else _short_hash(run_id)


def labels(run_id: str, name: str) -> dict[str, str]:
    return {
        RUN_ID_LABEL: run_id_label(run_id),
        "app.kubernetes.io/name": "kubetune",
        "app.kubernetes.io/component": "trainer",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/version": __version__,
        "app.kubernetes.io/managed-by": "kubetune",
    }


def train_arguments(request: TrainRequest) -> list[str]:
    """`train --config ... --data ... --output ...`: what every rank runs as `python -m kubetune`."""
    output = storage.normalize_uri(request.output_uri).rstrip("/")
    return [
        "train",
        "--config", launch_config_uri(output),
        "--data", storage.normalize_uri(request.data_uri),
        "--output", output,
    ]


# kubetune's torchrun (the same agent and arguments): exit 143 when the kubelet's SIGTERM stopped
# training after a checkpoint, 2 and one line for a user error on any rank (not torchrun's exit 1).
TORCHRUN = ["python", "-m", "kubetune.launchers.torchrun"]


def trainer_command(request: TrainRequest) -> list[str]:
    return [*TORCHRUN, "--module", "kubetune", *train_arguments(request)]


# ------------------------------------------------------------------------------------- validation
def validate_request(request: TrainRequest) -> None:
    """Every problem a training job would only reveal on the cluster, raised before anything is submitted."""
    cluster = request.config.cluster
    problems: list[str] = []
    if not request.run_id.strip():
        problems.append("the train step got an empty run id; the training job's name and labels are made from it")
    for key, uri in (("output", request.output_uri), ("data", request.data_uri)):
        if not storage.is_remote(uri):
            problems.append(
                f"the {key} of the train step is a local path ({uri}); training pods can only reach object "
                "storage: set storage.runs_uri to an s3:// URI (and give the data as s3:// or minio://)"
            )
    quantities = {}
    for key in ("cpu", "memory", "shm_size"):
        value = getattr(cluster, key)
        try:
            quantities[key] = parse_quantity(value)
        except ValueError:
            problems.append(f"cluster.{key}: {value!r} is not a Kubernetes quantity (e.g. \"8\", \"500m\", \"64Gi\")")
    if "memory" in quantities and "shm_size" in quantities and quantities["shm_size"] > quantities["memory"]:
        problems.append(
            f"cluster.shm_size ({cluster.shm_size}) is larger than cluster.memory ({cluster.memory}); /dev/shm is "
            "memory and counts against the pod's limit: lower cluster.shm_size or raise cluster.memory"
        )
    reserved = sorted(set(request.env) & (SECRET_ENV_NAMES | KUBETUNE_ENV_NAMES))
    for name in reserved:
        where = "a Kubernetes Secret (cluster.storage_secret / cluster.mlflow_secret)" if name in SECRET_ENV_NAMES else "kubetune"
        problems.append(f"the trainer environment variable {name} is set by {where}; remove it from the extra environment")
    tracking_uri = _tracking_uri(request.config)
    if tracking_uri and urlsplit(tracking_uri).password:
        problems.append(
            "tracking.tracking_uri holds a password; put the MLflow credentials in the Secret named by "
            "cluster.mlflow_secret (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD) instead"
        )
    if problems:
        raise ConfigError(problems)


def _tracking_uri(config: RunConfig) -> str | None:
    if not config.tracking.enable:
        return None
    return config.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


def _fixed_env(request: TrainRequest) -> dict[str, str]:
    """The non-secret environment kubetune gives the trainer (what the step's own environment knows)."""
    config = request.config
    env = {"KUBETUNE_RUN_ID": request.run_id, "PYTHONUNBUFFERED": "1",
           "TORCH_ELASTIC_SHUTDOWN_TIMEOUT": str(torchrun_shutdown_timeout(config))}
    endpoint = storage.endpoint_url(config.storage)
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    region = config.storage.region or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        env["AWS_DEFAULT_REGION"] = region
    tracking_uri = _tracking_uri(config)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    if request.mlflow_run_id:
        env["MLFLOW_RUN_ID"] = request.mlflow_run_id
    return env


def torchrun_shutdown_timeout(config: RunConfig) -> int:
    """Seconds torchrun gives its ranks after SIGTERM: the pod's grace period minus a margin."""
    return config.cluster.termination_grace_period_seconds - SHUTDOWN_MARGIN_SECONDS


def _secret_env(secret: str, key: str, optional: bool) -> k8s.V1EnvVar:
    return k8s.V1EnvVar(
        name=key,
        value_from=k8s.V1EnvVarSource(secret_key_ref=k8s.V1SecretKeySelector(name=secret, key=key, optional=optional)),
    )


def environment(request: TrainRequest) -> list[k8s.V1EnvVar]:
    cluster = request.config.cluster
    env = [_secret_env(cluster.storage_secret, key, optional=False) for key in STORAGE_SECRET_KEYS]
    env += [_secret_env(cluster.storage_secret, key, optional=True) for key in STORAGE_SECRET_OPTIONAL_KEYS]
    if cluster.mlflow_secret and request.config.tracking.enable:
        # A server needs either a user and password or a token: each key may be missing.
        env += [_secret_env(cluster.mlflow_secret, key, optional=True) for key in MLFLOW_SECRET_KEYS]
    fixed = _fixed_env(request)
    env += [k8s.V1EnvVar(name=name, value=value) for name, value in {**request.env, **fixed}.items()]
    return env


# ------------------------------------------------------------------------------------------ the job
def pod_template(request: TrainRequest, name: str) -> k8s.V1PodTemplateSpec:
    cluster = request.config.cluster
    resources = {"cpu": cluster.cpu, "memory": cluster.memory, GPU_RESOURCE: str(cluster.gpus_per_worker)}
    container = k8s.V1Container(
        name=CONTAINER_NAME,
        image=cluster.image or images.TRAINER_IMAGE,
        image_pull_policy="IfNotPresent",
        command=trainer_command(request),
        env=environment(request),
        # requests = limits: the pod gets the Guaranteed QoS class and is the last to be evicted.
        resources=k8s.V1ResourceRequirements(requests=dict(resources), limits=dict(resources)),
        volume_mounts=[k8s.V1VolumeMount(name=SHM_VOLUME, mount_path="/dev/shm")],
        security_context=k8s.V1SecurityContext(
            allow_privilege_escalation=False,
            capabilities=k8s.V1Capabilities(drop=["ALL"]),
        ),
    )
    spec = k8s.V1PodSpec(
        containers=[container],
        service_account_name=cluster.service_account,
        # Time for the SIGTERM checkpoint and its upload (Kubernetes' default of 30 s equals torchrun's own).
        termination_grace_period_seconds=cluster.termination_grace_period_seconds,
        # The trainer talks to object storage and MLflow, never to the Kubernetes API.
        automount_service_account_token=False,
        node_selector=dict(cluster.node_selector) or None,
        tolerations=[
            k8s.V1Toleration(key=t.key, operator=t.operator, value=t.value, effect=t.effect) for t in cluster.tolerations
        ] or None,
        volumes=[
            k8s.V1Volume(
                name=SHM_VOLUME,
                # NCCL and the data loaders pass tensors through /dev/shm; Docker's default 64 MiB is far too small.
                empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit=cluster.shm_size),
            )
        ],
        security_context=k8s.V1PodSecurityContext(
            run_as_non_root=True,
            run_as_user=TRAINER_UID,
            run_as_group=TRAINER_UID,
            fs_group=TRAINER_UID,
            seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
        ),
    )
    return k8s.V1PodTemplateSpec(
        metadata=k8s.V1ObjectMeta(
            labels=labels(request.run_id, name),
            # An Istio sidecar keeps a finished pod running (the job never completes) and intercepts the
            # rendezvous port; Kubeflow's own training jobs turn it off the same way.
            annotations={"sidecar.istio.io/inject": "false"},
        ),
        spec=spec,
    )


def build_pytorchjob(request: TrainRequest) -> training_models.KubeflowOrgV1PyTorchJob:
    """The PyTorchJob for one training run (validated first: see `validate_request`)."""
    validate_request(request)
    cluster = request.config.cluster
    name = job_name(request.run_id)
    template = pod_template(request, name)

    def replica(count: int) -> training_models.KubeflowOrgV1ReplicaSpec:
        # OnFailure restarts the container in place with the same command and output URI, so the
        # trainer resumes from the newest complete checkpoint in object storage.
        return training_models.KubeflowOrgV1ReplicaSpec(replicas=count, restart_policy="OnFailure", template=template)

    replicas = {"Master": replica(1)}
    if cluster.workers > 1:
        replicas["Worker"] = replica(cluster.workers - 1)
    job = training_models.KubeflowOrgV1PyTorchJob(
        api_version=training_constants.API_VERSION,
        kind=training_constants.PYTORCHJOB_KIND,
        metadata=k8s.V1ObjectMeta(
            name=name,
            namespace=cluster.namespace,
            labels=labels(request.run_id, name),
            annotations={
                RUN_ID_ANNOTATION: request.run_id,
                OUTPUT_ANNOTATION: storage.normalize_uri(request.output_uri),
            },
        ),
        spec=training_models.KubeflowOrgV1PyTorchJobSpec(
            nproc_per_node=str(cluster.gpus_per_worker),
            pytorch_replica_specs=replicas,
            run_policy=training_models.KubeflowOrgV1RunPolicy(
                backoff_limit=cluster.backoff_limit,
                clean_pod_policy=cluster.clean_pod_policy,
                ttl_seconds_after_finished=cluster.ttl_seconds_after_finished,
                # The operator stops the job at the step's timeout even if the step itself was lost.
                active_deadline_seconds=cluster.timeout_seconds,
            ),
        ),
    )
    check_no_secret_values(job)
    return job


def serialize(job: training_models.KubeflowOrgV1PyTorchJob) -> dict:
    """The job as the API server receives it (camelCase keys, no nulls)."""
    return k8s.ApiClient().sanitize_for_serialization(job)


def check_no_secret_values(job: training_models.KubeflowOrgV1PyTorchJob | dict) -> None:
    """Refuse a spec (a PyTorchJob, or any job as a dict) that holds the value of a credential this
    process has in its environment."""
    body = job if isinstance(job, dict) else serialize(job)
    text = repr(body)
    leaked = sorted(name for name in SECRET_ENV_NAMES if len(os.environ.get(name, "")) >= 4 and os.environ[name] in text)
    if leaked:
        raise KubetuneError(
            f"the {body.get('kind', 'job')} spec would contain the value of {', '.join(leaked)}; pass credentials "
            "only through the Secrets named by cluster.storage_secret and cluster.mlflow_secret"
        )
