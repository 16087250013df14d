"""The two kinds of training job kubetune can start, and one client that reads and writes either.

A `JobKind` holds what differs between a Training Operator v1 PyTorchJob and a Kubeflow Trainer v2
TrainJob: where the API serves it, which condition means done, which pod leads (its log is the one
streamed) and what its training container is called. Everything else (submit, wait, stream, delete)
is the same code for both, in `kubetune.launchers.cluster_job`.

Both kinds go through the Kubernetes CustomObjectsApi with the dict of the typed object kubetune
built: the same calls for both kinds, and the API server receives exactly the object the tests
validate against the CRD (the SDKs' clients would rebuild it from their own argument types).
"""

from __future__ import annotations

from dataclasses import dataclass

import urllib3
from kubernetes import client as k8s

from kubetune.cluster import kube

# What the API can raise: an HTTP answer (ApiException), or none at all (refused, reset, timed out).
API_ERRORS = (k8s.ApiException, urllib3.exceptions.HTTPError, OSError)


@dataclass(frozen=True)
class JobKind:
    kind: str  # "PyTorchJob", "TrainJob"
    group: str
    version: str
    plural: str
    container: str  # the training container of the lead pod
    succeeded: str  # the condition type that means the job is done and succeeded
    failed: str
    operator: str  # what must be installed for the kind to exist, for the 404 hint
    lead_pod_labels: tuple[str, ...]  # label selector parts of the lead pod, "{name}" being the job's name

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"

    def lead_pod_selector(self, name: str) -> str:
        return ",".join(part.format(name=name) for part in self.lead_pod_labels)

    def inspect_hint(self, namespace: str, name: str) -> str:
        return (
            f"kubectl -n {namespace} describe {self.plural[:-1]} {name}; "
            f"kubectl -n {namespace} logs -l {self.lead_pod_selector(name)}"
        )


PYTORCHJOB = JobKind(
    kind="PyTorchJob", group="kubeflow.org", version="v1", plural="pytorchjobs", container="pytorch",
    succeeded="Succeeded", failed="Failed",
    operator="the Training Operator (kubectl get crd pytorchjobs.kubeflow.org)",
    lead_pod_labels=("training.kubeflow.org/job-name={name}", "training.kubeflow.org/job-role=master"),
)

# The TrainJob's pods belong to its JobSet (named after it). The pod that runs the trainer's command
# carries `trainjob-ancestor-step: trainer` (every node under torch-distributed, the MPI launcher under
# deepspeed-distributed); index 0 of job 0 is node 0 (torch's rank 0) or the one launcher, whose log
# holds what mpirun gathers from every rank.
TRAINJOB = JobKind(
    kind="TrainJob", group="trainer.kubeflow.org", version="v1alpha1", plural="trainjobs", container="node",
    succeeded="Complete", failed="Failed",
    operator="Kubeflow Trainer v2.3.0 (kubectl get crd trainjobs.trainer.kubeflow.org)",
    lead_pod_labels=(
        "jobset.sigs.k8s.io/jobset-name={name}",
        "trainer.kubeflow.org/trainjob-ancestor-step=trainer",
        "jobset.sigs.k8s.io/job-index=0",
        "batch.kubernetes.io/job-completion-index=0",
    ),
)

KINDS = {"pytorchjob": PYTORCHJOB, "trainjob": TRAINJOB}


def api_status(exc: BaseException | None) -> int | None:
    """The HTTP status behind an API error (None when no answer came)."""
    while exc is not None:
        if isinstance(exc, k8s.ApiException):
            return exc.status
        exc = exc.__cause__
    return None


def job_state(kind: JobKind, job: dict) -> tuple[str | None, str]:
    """(newest true condition type, its reason and message) of a job as the API server returns it."""
    conditions = [c for c in ((job.get("status") or {}).get("conditions") or []) if c.get("status") == "True"]
    if not conditions:
        return None, ""
    terminal = [c for c in conditions if c.get("type") in (kind.succeeded, kind.failed)]
    condition = terminal[-1] if terminal else conditions[-1]
    detail = ": ".join(part for part in (condition.get("reason"), condition.get("message")) if part)
    return condition.get("type"), detail


def progress(job: dict) -> str:
    """The trainer's own progress report on a TrainJob (transformers' KubeflowCallback, feature gate TrainJobRuntimeStatus), or ""."""
    trainer = (job.get("status") or {}).get("trainerStatus") or {}
    parts = []
    if trainer.get("progressPercentage") is not None:
        parts.append(f"{trainer['progressPercentage']}%")
    if trainer.get("estimatedRemainingSeconds") is not None:
        parts.append(f"about {trainer['estimatedRemainingSeconds']} s left")
    parts += [f"{m['name']}={m['value']}" for m in trainer.get("metrics") or [] if "name" in m and "value" in m]
    return ", ".join(parts)


class JobClient:
    """Create, read, delete and find the pods of jobs of one kind in one namespace."""

    def __init__(self, kind: JobKind, namespace: str, configuration: k8s.Configuration | None = None):
        self.kind = kind
        self.namespace = namespace
        api = k8s.ApiClient(configuration or kube.configuration())
        self.custom_api = k8s.CustomObjectsApi(api)
        self.core_api = k8s.CoreV1Api(api)

    def _args(self) -> tuple[str, str, str, str]:
        return self.kind.group, self.kind.version, self.namespace, self.kind.plural

    def create(self, body: dict) -> dict:
        return self.custom_api.create_namespaced_custom_object(*self._args(), body)

    def get(self, name: str, timeout: float = 60) -> dict:
        return self.custom_api.get_namespaced_custom_object(*self._args(), name, _request_timeout=timeout)

    def list(self, label_selector: str, timeout: float = 30) -> list[dict]:
        answer = self.custom_api.list_namespaced_custom_object(
            *self._args(), label_selector=label_selector, _request_timeout=timeout
        )
        return answer.get("items") or []

    def delete(self, name: str, propagation: str = "Background") -> None:
        self.custom_api.delete_namespaced_custom_object(
            *self._args(), name, body=k8s.V1DeleteOptions(propagation_policy=propagation)
        )

    def lead_pods(self, name: str, timeout: float = 30) -> list[k8s.V1Pod]:
        return self.core_api.list_namespaced_pod(
            self.namespace, label_selector=self.kind.lead_pod_selector(name), _request_timeout=timeout
        ).items
