"""The Kubeflow Trainer v2 TrainJob that runs the trainer: built from the run config as typed models.

Targets Kubeflow Trainer **v2.3.0** (API `trainer.kubeflow.org/v1alpha1`) through the typed models
of `kubeflow-trainer-api==2.3.0`, the package generated from that release's OpenAPI: the alpha API
changed between minors (v2.1 PodSpecOverrides → PodTemplateOverrides, v2.2 → RuntimePatches), so
the package is pinned to the release the job is written for (docs/kubernetes.md: how to move).

- `runtimeRef` names a ClusterTrainingRuntime (`cluster.runtime`): `torch-distributed` runs
  kubetune's torchrun on every node (the runtime sets PET_NNODES / PET_NODE_RANK / PET_MASTER_ADDR /
  PET_NPROC_PER_NODE, as the Training Operator does); `deepspeed-distributed` runs
  `kubetune.launchers.mpirun` in its MPI launcher pod, which starts the ranks with mpirun.
- `trainer`: image, command, args, env (Secrets by reference), numNodes = workers, numProcPerNode =
  GPUs per worker, resourcesPerNode (requests = limits).
- What a TrainJob can't say in `trainer` (the memory-backed /dev/shm, node selector, tolerations,
  service account, termination grace period, security context, labels on the pods) goes into one
  `runtimePatches` entry owned by kubetune, patching the runtime's replicated jobs.
"""

from __future__ import annotations

from kubeflow_trainer_api import models as tm
from kubernetes import client as k8s

from kubetune import images, storage
from kubetune.cluster import job as jobs
from kubetune.cluster.jobapi import TRAINJOB
from kubetune.launchers import TrainRequest

TRAINER_VERSION = "v2.3.0"  # the Kubeflow Trainer release whose API the TrainJob is written for
RUNTIME_KIND = "ClusterTrainingRuntime"
PATCH_MANAGER = "kubetune.io/launcher"  # owns kubetune's entry in runtimePatches
# The runtimes' replicated jobs (their pods all run the trainer's image) and their training container.
REPLICATED_JOBS = {"torch-distributed": ("node",), "deepspeed-distributed": ("launcher", "node")}
CONTAINER_NAME = TRAINJOB.container


def _typed(model_class, obj):
    """A kubernetes-client object (what the PyTorchJob builder shares) as the Trainer package's model."""
    return model_class.from_dict(k8s.ApiClient().sanitize_for_serialization(obj))


def _quantities(values: dict[str, str]) -> dict[str, tm.IoK8sApimachineryPkgApiResourceQuantity]:
    return {key: tm.IoK8sApimachineryPkgApiResourceQuantity(value) for key, value in values.items()}


def trainer_entrypoint(request: TrainRequest, env: list[k8s.V1EnvVar]) -> tuple[list[str], list[str]]:
    """(command, args) of the trainer container."""
    cluster = request.config.cluster
    if cluster.runtime == "deepspeed-distributed":
        ranks = cluster.workers * cluster.gpus_per_worker
        forward = ",".join(item.name for item in env)
        return ["python", "-m", "kubetune.launchers.mpirun"], [
            "--np", str(ranks), "--forward", forward, "--", "kubetune", *jobs.train_arguments(request),
        ]
    return list(jobs.TORCHRUN), ["--module", "kubetune", *jobs.train_arguments(request)]


def pod_patch(request: TrainRequest, name: str) -> tm.TrainerV1alpha1PodTemplatePatch:
    """The pod-level settings of `jobs.pod_template`, as a TrainJob may patch them into its runtime."""
    template = jobs.pod_template(request, name)  # the same pod settings as a PyTorchJob's, one source
    spec, container = template.spec, template.spec.containers[0]
    return tm.TrainerV1alpha1PodTemplatePatch(
        metadata=tm.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            labels=template.metadata.labels, annotations=template.metadata.annotations,
        ),
        spec=tm.TrainerV1alpha1PodSpecPatch(
            service_account_name=spec.service_account_name,
            termination_grace_period_seconds=spec.termination_grace_period_seconds,
            node_selector=spec.node_selector,
            tolerations=[_typed(tm.IoK8sApiCoreV1Toleration, t) for t in spec.tolerations or []] or None,
            volumes=[_typed(tm.IoK8sApiCoreV1Volume, v) for v in spec.volumes],
            security_context=_typed(tm.IoK8sApiCoreV1PodSecurityContext, spec.security_context),
            containers=[tm.TrainerV1alpha1ContainerPatch(
                name=CONTAINER_NAME,
                volume_mounts=[_typed(tm.IoK8sApiCoreV1VolumeMount, m) for m in container.volume_mounts],
                security_context=_typed(tm.IoK8sApiCoreV1SecurityContext, container.security_context),
            )],
        ),
    )


def build_trainjob(request: TrainRequest) -> tm.TrainerV1alpha1TrainJob:
    """The TrainJob for one training run (validated first: see `jobs.validate_request`)."""
    jobs.validate_request(request)
    cluster = request.config.cluster
    name = jobs.job_name(request.run_id)
    env = jobs.environment(request)
    command, args = trainer_entrypoint(request, env)
    resources = {"cpu": cluster.cpu, "memory": cluster.memory, jobs.GPU_RESOURCE: str(cluster.gpus_per_worker)}
    patch = pod_patch(request, name)
    job = tm.TrainerV1alpha1TrainJob(
        api_version=TRAINJOB.api_version,
        kind=TRAINJOB.kind,
        metadata=tm.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=name,
            namespace=cluster.namespace,
            labels=jobs.labels(request.run_id, name),
            annotations={
                jobs.RUN_ID_ANNOTATION: request.run_id,
                jobs.OUTPUT_ANNOTATION: storage.normalize_uri(request.output_uri),
            },
        ),
        spec=tm.TrainerV1alpha1TrainJobSpec(
            runtime_ref=tm.TrainerV1alpha1RuntimeRef(
                name=cluster.runtime, kind=RUNTIME_KIND, api_group=TRAINJOB.group,
            ),
            # The controller fails the job at the step's timeout even if the step itself was lost.
            active_deadline_seconds=cluster.timeout_seconds,
            trainer=tm.TrainerV1alpha1Trainer(
                image=cluster.image or images.TRAINER_IMAGE,
                command=command,
                args=args,
                env=[_typed(tm.IoK8sApiCoreV1EnvVar, item) for item in env],
                num_nodes=cluster.workers,
                num_proc_per_node=cluster.gpus_per_worker,
                # requests = limits: the pods get the Guaranteed QoS class and are the last to be evicted.
                resources_per_node=tm.IoK8sApiCoreV1ResourceRequirements(
                    requests=_quantities(resources), limits=_quantities(resources),
                ),
            ),
            runtime_patches=[tm.TrainerV1alpha1RuntimePatch(
                manager=PATCH_MANAGER,
                training_runtime_spec=tm.TrainerV1alpha1TrainingRuntimeSpecPatch(
                    template=tm.TrainerV1alpha1JobSetTemplatePatch(
                        spec=tm.TrainerV1alpha1JobSetSpecPatch(replicated_jobs=[
                            tm.TrainerV1alpha1ReplicatedJobPatch(
                                name=replicated,
                                template=tm.TrainerV1alpha1JobTemplatePatch(
                                    spec=tm.TrainerV1alpha1JobSpecPatch(template=patch),
                                ),
                            )
                            for replicated in REPLICATED_JOBS[cluster.runtime]
                        ]),
                    ),
                ),
            )],
        ),
    )
    jobs.check_no_secret_values(serialize(job))
    return job


def serialize(job: tm.TrainerV1alpha1TrainJob) -> dict:
    """The job as the API server receives it (camelCase keys, no nulls)."""
    return job.to_dict()
