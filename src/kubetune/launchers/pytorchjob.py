"""The `pytorchjob` launcher: run the trainer as a Kubeflow Training Operator PyTorchJob and wait for it.

Like google-cloud-pipeline-components' remote-job launchers: build the job spec, submit it, wait,
and hand back a reference. Waiting is the part that matters on a shared cluster:

- the step waits up to `cluster.timeout_seconds`, then deletes the job and fails;
- a failed job fails the step, with the master's last log lines in the error;
- the master's log is streamed into the step's log while the job runs;
- a cancelled step (SIGTERM from Kubeflow, or Ctrl-C) deletes the job before it exits, so no GPU
  job is left running without a step watching it.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator

from kubernetes import client as k8s

from kubetune.cluster import job as jobs
from kubetune.cluster import kube
from kubetune.cluster.logs import MasterLogStreamer
from kubetune.distributed import print_main
from kubetune.errors import KubetuneError
from kubetune.launchers import TrainRequest, TrainResult, write_run_config

logger = logging.getLogger(__name__)

SUCCEEDED, FAILED = "Succeeded", "Failed"


class _Cancelled(BaseException):
    """Raised by the signal handler; a BaseException so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _TimedOut(Exception):
    pass


def _api_status(exc: BaseException) -> int | None:
    """The HTTP status behind an SDK error (the SDK wraps ApiException in RuntimeError)."""
    while exc is not None:
        if isinstance(exc, k8s.ApiException):
            return exc.status
        exc = exc.__cause__
    return None


def job_state(job) -> tuple[str | None, str]:
    """(newest true condition type, its reason and message) of a PyTorchJob."""
    conditions = [c for c in ((job.status.conditions if job.status else None) or []) if c.status == "True"]
    if not conditions:
        return None, ""
    terminal = [c for c in conditions if c.type in (SUCCEEDED, FAILED)]
    condition = terminal[-1] if terminal else conditions[-1]
    detail = ": ".join(part for part in (condition.reason, condition.message) if part)
    return condition.type, detail


class PyTorchJobLauncher:
    """`launch(request)` submits the run's PyTorchJob and returns when it has succeeded."""

    def __init__(
        self,
        poll_interval: float = 10.0,
        log_read_timeout: float = 30.0,
        api_error_grace: float = 300.0,
        failure_log_lines: int = 30,
    ):
        self.poll_interval = poll_interval
        self.log_read_timeout = log_read_timeout
        # How long the API server may be unreachable before the step gives up on the job.
        self.api_error_grace = api_error_grace
        self.failure_log_lines = failure_log_lines

    def launch(self, request: TrainRequest) -> TrainResult:
        job = jobs.build_pytorchjob(request)  # validates the request before anything is written
        name, namespace = job.metadata.name, job.metadata.namespace
        deadline = time.monotonic() + request.config.cluster.timeout_seconds
        client = kube.training_client(namespace)
        write_run_config(request)
        with _cancel_on_signals():
            created = False
            streamer = None
            try:
                self._submit(client, job, request)
                created = True
                _announce(job, request)
                streamer = MasterLogStreamer(
                    client, name, namespace, keep_lines=self.failure_log_lines,
                    poll_interval=min(2.0, self.poll_interval), read_timeout=self.log_read_timeout,
                ).start()
                state, detail = self._wait(client, name, namespace, deadline)
                streamer.stop(drain=True)
            except _TimedOut:
                self._delete(client, name, namespace, streamer)
                raise KubetuneError(
                    f"cluster.timeout_seconds: PyTorchJob {namespace}/{name} did not finish within "
                    f"{request.config.cluster.timeout_seconds} s and was deleted; raise cluster.timeout_seconds "
                    "if the run needs longer"
                ) from None
            except _Cancelled as cancelled:
                # Also when cancelled during the create call: the job may exist without `created` set.
                self._delete(client, name, namespace, streamer)
                print_main(f"kubetune: the train step was cancelled ({cancelled}); PyTorchJob {namespace}/{name} was deleted")
                if cancelled.signum == signal.SIGINT:
                    raise KeyboardInterrupt from None
                raise SystemExit(128 + cancelled.signum) from None
            except BaseException:
                # The step is failing for another reason: don't leave a GPU job running unwatched.
                if created:
                    self._delete(client, name, namespace, streamer)
                raise
        if state == FAILED:
            raise KubetuneError(self._failure_message(client, name, namespace, detail, streamer))
        print_main(f"PyTorchJob {namespace}/{name} succeeded; outputs in {request.output_uri}")
        return TrainResult(output_uri=request.output_uri, job_name=name)

    # --------------------------------------------------------------------------------- submission
    def _submit(self, client, job, request: TrainRequest) -> None:
        name, namespace = job.metadata.name, job.metadata.namespace
        try:
            client.create_job(job=job, namespace=namespace)
            return
        except RuntimeError as exc:
            status = _api_status(exc)
            if status != 409:
                raise KubetuneError(_api_failure("create", namespace, name, exc, status)) from None
        # The job already exists: a retried step of the same run finds the job its first attempt started.
        existing = client.get_job(name, namespace=namespace)
        owner = (existing.metadata.annotations or {}).get(jobs.RUN_ID_ANNOTATION)
        if owner != request.run_id:
            raise KubetuneError(
                f"PyTorchJob {namespace}/{name} already exists and belongs to run {owner!r}, not {request.run_id!r}; "
                f"delete it (kubectl -n {namespace} delete pytorchjob {name}) or use another run id"
            )
        state, _ = job_state(existing)
        if state == FAILED:
            print_main(f"PyTorchJob {namespace}/{name} of this run failed earlier; starting it again")
            client.delete_job(name, namespace=namespace, delete_options=k8s.V1DeleteOptions(propagation_policy="Foreground"))
            self._wait_until_gone(client, name, namespace)
            client.create_job(job=job, namespace=namespace)
        else:
            print_main(f"PyTorchJob {namespace}/{name} of this run is already {state or 'submitted'}; following it")

    def _wait_until_gone(self, client, name: str, namespace: str, timeout: float = 300.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                client.get_job(name, namespace=namespace)
            except RuntimeError as exc:
                if _api_status(exc) == 404:
                    return
                raise
            time.sleep(min(self.poll_interval, 2.0))
        raise KubetuneError(f"PyTorchJob {namespace}/{name} was not deleted within {timeout:.0f} s; delete it by hand")

    # -------------------------------------------------------------------------------------- waiting
    def _wait(self, client, name: str, namespace: str, deadline: float) -> tuple[str, str]:
        last_state = None
        failing_since = None
        while True:
            if time.monotonic() >= deadline:
                raise _TimedOut
            try:
                job = client.get_job(name, namespace=namespace, timeout=60)
                failing_since = None
            except RuntimeError as exc:
                status = _api_status(exc)
                if status == 404:
                    raise KubetuneError(
                        f"PyTorchJob {namespace}/{name} was deleted while the train step waited for it; start the run again"
                    ) from None
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > self.api_error_grace:
                    raise KubetuneError(_api_failure("read", namespace, name, exc, status)) from None
                logger.warning("reading PyTorchJob %s/%s failed (%s); trying again", namespace, name, exc)
            else:
                state, detail = job_state(job)
                if state != last_state:
                    print_main(f"PyTorchJob {namespace}/{name}: {state or 'submitted'}" + (f" ({detail})" if detail else ""))
                    last_state = state
                if state in (SUCCEEDED, FAILED):
                    return state, detail
            time.sleep(max(0.0, min(self.poll_interval, deadline - time.monotonic())))

    def _delete(self, client, name: str, namespace: str, streamer: MasterLogStreamer | None) -> None:
        try:
            # Background: the API server removes the pods after the job, without this step waiting.
            client.delete_job(name, namespace=namespace, delete_options=k8s.V1DeleteOptions(propagation_policy="Background"))
            print_main(f"deleted PyTorchJob {namespace}/{name}")
        except RuntimeError as exc:
            if _api_status(exc) != 404:
                logger.error(
                    "could not delete PyTorchJob %s/%s (%s); delete it by hand: kubectl -n %s delete pytorchjob %s",
                    namespace, name, exc, namespace, name,
                )
        finally:
            if streamer is not None:
                streamer.stop(drain=False, timeout=5)

    def _failure_message(self, client, name: str, namespace: str, detail: str, streamer) -> str:
        lines = streamer.last_lines() if streamer is not None else []
        pod = streamer.pod_name if streamer is not None else None
        if not lines:
            pod, lines = self._read_tail(client, name, namespace)
        head = f"PyTorchJob {namespace}/{name} failed" + (f" ({detail})" if detail else "")
        if lines:
            body = f". Last {len(lines)} lines of {pod}:\n" + "\n".join(f"  | {line}" for line in lines)
        else:
            body = ". The master pod left no log"
        return (
            f"{head}{body}\nInspect it: kubectl -n {namespace} describe pytorchjob {name}; "
            f"kubectl -n {namespace} logs -l training.kubeflow.org/job-name={name},training.kubeflow.org/job-role=master"
        )

    def _read_tail(self, client, name: str, namespace: str) -> tuple[str | None, list[str]]:
        try:
            pods = client.get_job_pods(name, namespace=namespace, is_master=True, timeout=30)
            if not pods:
                return None, []
            pod = pods[0].metadata.name
            text = client.core_api.read_namespaced_pod_log(
                pod, namespace, container=jobs.CONTAINER_NAME, tail_lines=self.failure_log_lines
            )
            return pod, text.splitlines()
        except Exception as exc:  # noqa: BLE001 - the job failed either way; say so without its log
            logger.warning("could not read the log of the failed PyTorchJob %s/%s: %s", namespace, name, exc)
            return None, []


def _api_failure(action: str, namespace: str, name: str, exc: BaseException, status: int | None) -> str:
    hint = {
        401: "the credentials were refused",
        403: "the service account may not do this: apply k8s/ (Role kubetune-pipeline) and run the step as cluster.service_account",
        404: "is the Training Operator installed (kubectl get crd pytorchjobs.kubeflow.org)?",
    }.get(status or 0, "is the API server reachable?")
    cause = exc.__cause__ if isinstance(exc.__cause__, k8s.ApiException) else exc
    reason = getattr(cause, "reason", None) or str(cause).splitlines()[0]
    return f"could not {action} PyTorchJob {namespace}/{name} (HTTP {status or '-'} {reason}); {hint}"


def _announce(job, request: TrainRequest) -> None:
    cluster = request.config.cluster
    name, namespace = job.metadata.name, job.metadata.namespace
    label = job.metadata.labels[jobs.RUN_ID_LABEL]
    print_main(
        f"submitted PyTorchJob {namespace}/{name}: {cluster.workers} pod(s) x {cluster.gpus_per_worker} GPU(s), "
        f"image {job.spec.pytorch_replica_specs['Master'].template.spec.containers[0].image}, "
        f"timeout {cluster.timeout_seconds} s\n"
        f"  kubectl -n {namespace} get pytorchjobs -l {jobs.RUN_ID_LABEL}={label}\n"
        f"  kubectl -n {namespace} get pods -l {jobs.RUN_ID_LABEL}={label}"
    )


@contextlib.contextmanager
def _cancel_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGINT into `_Cancelled` while the job runs (signal handlers live in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def cancel(signum: int, _frame: object) -> None:
        raise _Cancelled(signum)

    previous = {sig: signal.signal(sig, cancel) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
