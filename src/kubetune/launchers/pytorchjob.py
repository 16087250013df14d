"""The `pytorchjob` launcher: run the trainer as a Kubeflow Training Operator (v1) PyTorchJob and wait for it.

For clusters with the Training Operator (release-1.9, in maintenance); clusters with Kubeflow
Trainer v2 use `trainjob`. Submitting, waiting, log streaming, failure and deletion are
`cluster_job.ClusterJobLauncher`'s; the job is `kubetune.cluster.job.build_pytorchjob`'s.
"""

from __future__ import annotations

from kubetune.cluster import job as jobs
from kubetune.cluster.jobapi import PYTORCHJOB
from kubetune.launchers import TrainRequest
from kubetune.launchers.cluster_job import ClusterJobLauncher


class PyTorchJobLauncher(ClusterJobLauncher):
    kind = PYTORCHJOB

    def build(self, request: TrainRequest) -> dict:
        return jobs.serialize(jobs.build_pytorchjob(request))

    def summary(self, job: dict, request: TrainRequest) -> str:
        cluster = request.config.cluster
        image = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["image"]
        return f"{cluster.workers} pod(s) x {cluster.gpus_per_worker} GPU(s), image {image}"
