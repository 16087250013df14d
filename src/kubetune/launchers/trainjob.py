"""The `trainjob` launcher: run the trainer as a Kubeflow Trainer v2.3.0 TrainJob and wait for it.

For clusters with Kubeflow Trainer v2 (the Training Operator's successor); `pytorchjob` stays for
Training Operator v1 clusters. Submitting, waiting, log streaming, failure and deletion are
`cluster_job.ClusterJobLauncher`'s; the job is `kubetune.cluster.trainjob.build_trainjob`'s.

Before submitting, the ClusterTrainingRuntime the job names is read (read-only RBAC): a missing
runtime is one clear error instead of a TrainJob that never starts, and a runtime whose JobSet
allows fewer restarts (`failurePolicy.maxRestarts`) than `cluster.backoff_limit` is reported with
the command that raises it. A TrainJob can't set that itself: Trainer v2.3.0's runtimePatches reach
only the replicated jobs' pod templates.
"""

from __future__ import annotations

import json
import logging

from kubetune.cluster import trainjob
from kubetune.cluster.jobapi import API_ERRORS, TRAINJOB, JobClient, api_status
from kubetune.distributed import print_main
from kubetune.errors import KubetuneError
from kubetune.launchers import TrainRequest
from kubetune.launchers.cluster_job import ClusterJobLauncher

logger = logging.getLogger(__name__)

RUNTIMES_PLURAL = "clustertrainingruntimes"


def max_restarts(runtime: dict) -> int:
    """The JobSet restarts a runtime allows (JobSet's default without a failurePolicy: none)."""
    policy = (((runtime.get("spec") or {}).get("template") or {}).get("spec") or {}).get("failurePolicy") or {}
    return int(policy.get("maxRestarts") or 0)


def restarts_hint(runtime_name: str, wanted: int) -> str:
    patch = json.dumps({"spec": {"template": {"spec": {"failurePolicy": {"maxRestarts": wanted}}}}}, separators=(",", ":"))
    return f"kubectl patch {RUNTIMES_PLURAL[:-1]} {runtime_name} --type merge -p '{patch}'"


class TrainJobLauncher(ClusterJobLauncher):
    kind = TRAINJOB

    def build(self, request: TrainRequest) -> dict:
        return trainjob.serialize(trainjob.build_trainjob(request))

    def summary(self, job: dict, request: TrainRequest) -> str:
        trainer = job["spec"]["trainer"]
        return (f"runtime {job['spec']['runtimeRef']['name']}, {trainer['numNodes']} node(s) x "
                f"{trainer['numProcPerNode']} GPU(s), image {trainer['image']}")

    def preflight(self, client: JobClient, request: TrainRequest) -> None:
        cluster = request.config.cluster
        try:
            runtime = client.custom_api.get_cluster_custom_object(
                TRAINJOB.group, TRAINJOB.version, RUNTIMES_PLURAL, cluster.runtime, _request_timeout=30
            )
        except API_ERRORS as exc:
            status = api_status(exc)
            if status == 404:
                raise KubetuneError(
                    f"cluster.runtime: the ClusterTrainingRuntime {cluster.runtime!r} is not installed (or Kubeflow "
                    f"Trainer {trainjob.TRAINER_VERSION} is not); install Trainer's runtimes (docs/kubernetes.md) or "
                    "choose an installed runtime (kubectl get clustertrainingruntimes)"
                ) from None
            # Unreadable (RBAC without the runtimes, an old API server): the TrainJob's own errors will tell.
            logger.warning("could not read ClusterTrainingRuntime %s (%s); submitting anyway", cluster.runtime, exc)
            return
        allowed = max_restarts(runtime)
        if allowed < cluster.backoff_limit:
            print_main(
                f"kubetune: note: ClusterTrainingRuntime {cluster.runtime} restarts a failed TrainJob {allowed} time(s), "
                f"cluster.backoff_limit asks for {cluster.backoff_limit}; to resume from the newest checkpoint after a "
                f"failure, raise it: {restarts_hint(cluster.runtime, cluster.backoff_limit)}"
            )
