"""What the `pytorchjob` and `trainjob` launchers share: submit the run's job, wait for it, stream its log.

Like google-cloud-pipeline-components' remote-job launchers: build the job spec, submit it, wait,
and hand back a reference. Waiting is the part that matters on a shared cluster:

- the step waits up to `cluster.timeout_seconds`, then deletes the job and fails;
- a failed job fails the step, with the lead pod's last log lines in the error;
- the lead pod's log is streamed into the step's log while the job runs;
- a cancelled step (SIGTERM from Kubeflow, or Ctrl-C) deletes the job before it exits, so no GPU
  job is left running without a step watching it.

A subclass says which kind (`kubetune.cluster.jobapi.JobKind`) and builds the job as a dict.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator

from kubetune.cluster import job as jobs
from kubetune.cluster.jobapi import API_ERRORS, JobClient, JobKind, api_status, job_state, progress
from kubetune.cluster.logs import MasterLogStreamer
from kubetune.distributed import print_main
from kubetune.errors import KubetuneError
from kubetune.launchers import TrainRequest, TrainResult, write_run_config

logger = logging.getLogger(__name__)


class _Cancelled(BaseException):
    """Raised by the signal handler; a BaseException so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _TimedOut(Exception):
    pass


class ClusterJobLauncher:
    """`launch(request)` submits the run's job and returns when it has succeeded."""

    kind: JobKind  # set by each subclass

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

    # ------------------------------------------------------------------------------- per kind
    def build(self, request: TrainRequest) -> dict:
        """The job as the API server receives it; validates the request first (raise ConfigError)."""
        raise NotImplementedError

    def summary(self, job: dict, request: TrainRequest) -> str:
        """What was submitted, in a few words: pods, GPUs, image."""
        raise NotImplementedError

    def preflight(self, client: JobClient, request: TrainRequest) -> None:
        """Checks against the cluster before the job is created (raise KubetuneError to stop)."""

    # ---------------------------------------------------------------------------------- launch
    def launch(self, request: TrainRequest) -> TrainResult:
        job = self.build(request)  # validates the request before anything is written
        name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
        what = f"{self.kind.kind} {namespace}/{name}"
        deadline = time.monotonic() + request.config.cluster.timeout_seconds
        client = JobClient(self.kind, namespace)
        write_run_config(request)
        with _cancel_on_signals():
            created = False
            streamer = None
            try:
                self.preflight(client, request)
                self._submit(client, job, request)
                created = True
                self._announce(job, request)
                streamer = MasterLogStreamer(
                    client, name, namespace, keep_lines=self.failure_log_lines,
                    poll_interval=min(2.0, self.poll_interval), read_timeout=self.log_read_timeout,
                ).start()
                state, detail = self._wait(client, name, deadline)
                streamer.stop(drain=True)
            except _TimedOut:
                self._delete(client, name, streamer)
                raise KubetuneError(
                    f"cluster.timeout_seconds: {what} did not finish within "
                    f"{request.config.cluster.timeout_seconds} s and was deleted; raise cluster.timeout_seconds "
                    "if the run needs longer"
                ) from None
            except _Cancelled as cancelled:
                # Also when cancelled during the create call: the job may exist without `created` set.
                self._delete(client, name, streamer)
                print_main(f"kubetune: the train step was cancelled ({cancelled}); {what} was deleted")
                if cancelled.signum == signal.SIGINT:
                    raise KeyboardInterrupt from None
                raise SystemExit(128 + cancelled.signum) from None
            except BaseException:
                # The step is failing for another reason: don't leave a GPU job running unwatched.
                if created:
                    self._delete(client, name, streamer)
                raise
        if state == self.kind.failed:
            raise KubetuneError(self._failure_message(client, name, detail, streamer))
        print_main(f"{what} succeeded; outputs in {request.output_uri}")
        return TrainResult(output_uri=request.output_uri, job_name=name, job_kind=self.kind.kind)

    # ------------------------------------------------------------------------------ submission
    def _submit(self, client: JobClient, job: dict, request: TrainRequest) -> None:
        name, namespace = job["metadata"]["name"], client.namespace
        what = f"{self.kind.kind} {namespace}/{name}"
        try:
            client.create(job)
            return
        except API_ERRORS as exc:
            status = api_status(exc)
            if status != 409:
                raise KubetuneError(self._api_failure("create", namespace, name, exc, status)) from None
        # The job already exists: a retried step of the same run finds the job its first attempt started.
        existing = client.get(name)
        owner = ((existing.get("metadata") or {}).get("annotations") or {}).get(jobs.RUN_ID_ANNOTATION)
        if owner != request.run_id:
            raise KubetuneError(
                f"{what} already exists and belongs to run {owner!r}, not {request.run_id!r}; "
                f"delete it (kubectl -n {namespace} delete {self.kind.plural[:-1]} {name}) or use another run id"
            )
        state, _ = job_state(self.kind, existing)
        if state == self.kind.failed:
            print_main(f"{what} of this run failed earlier; starting it again")
            client.delete(name, propagation="Foreground")
            self._wait_until_gone(client, name)
            client.create(job)
        else:
            print_main(f"{what} of this run is already {state or 'submitted'}; following it")

    def _wait_until_gone(self, client: JobClient, name: str, timeout: float = 300.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                client.get(name)
            except API_ERRORS as exc:
                if api_status(exc) == 404:
                    return
                raise
            time.sleep(min(self.poll_interval, 2.0))
        raise KubetuneError(
            f"{self.kind.kind} {client.namespace}/{name} was not deleted within {timeout:.0f} s; delete it by hand"
        )

    # ----------------------------------------------------------------------------------- waiting
    def _wait(self, client: JobClient, name: str, deadline: float) -> tuple[str, str]:
        what = f"{self.kind.kind} {client.namespace}/{name}"
        last_report = None
        failing_since = None
        while True:
            if time.monotonic() >= deadline:
                raise _TimedOut
            try:
                job = client.get(name, timeout=60)
                failing_since = None
            except API_ERRORS as exc:
                status = api_status(exc)
                if status == 404:
                    raise KubetuneError(f"{what} was deleted while the train step waited for it; start the run again") from None
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > self.api_error_grace:
                    raise KubetuneError(self._api_failure("read", client.namespace, name, exc, status)) from None
                logger.warning("reading %s failed (%s); trying again", what, exc)
            else:
                state, detail = job_state(self.kind, job)
                report = (state, progress(job))
                if report != last_report:
                    extra = "; ".join(part for part in (detail, report[1]) if part)
                    print_main(f"{what}: {state or 'submitted'}" + (f" ({extra})" if extra else ""))
                    last_report = report
                if state in (self.kind.succeeded, self.kind.failed):
                    return state, detail
            time.sleep(max(0.0, min(self.poll_interval, deadline - time.monotonic())))

    def _delete(self, client: JobClient, name: str, streamer: MasterLogStreamer | None) -> None:
        what = f"{self.kind.kind} {client.namespace}/{name}"
        try:
            # Background: the API server removes the pods after the job, without this step waiting.
            client.delete(name, propagation="Background")
            print_main(f"deleted {what}")
        except API_ERRORS as exc:
            if api_status(exc) != 404:
                logger.error(
                    "could not delete %s (%s); delete it by hand: kubectl -n %s delete %s %s",
                    what, exc, client.namespace, self.kind.plural[:-1], name,
                )
        finally:
            if streamer is not None:
                streamer.stop(drain=False, timeout=5)

    def _failure_message(self, client: JobClient, name: str, detail: str, streamer) -> str:
        lines = streamer.last_lines() if streamer is not None else []
        pod = streamer.pod_name if streamer is not None else None
        if not lines:
            pod, lines = self._read_tail(client, name)
        head = f"{self.kind.kind} {client.namespace}/{name} failed" + (f" ({detail})" if detail else "")
        if lines:
            body = f". Last {len(lines)} lines of {pod}:\n" + "\n".join(f"  | {line}" for line in lines)
        else:
            body = ". Its lead pod left no log"
        return f"{head}{body}\nInspect it: {self.kind.inspect_hint(client.namespace, name)}"

    def _read_tail(self, client: JobClient, name: str) -> tuple[str | None, list[str]]:
        try:
            pods = client.lead_pods(name)
            if not pods:
                return None, []
            pod = pods[0].metadata.name
            text = client.core_api.read_namespaced_pod_log(
                pod, client.namespace, container=self.kind.container, tail_lines=self.failure_log_lines
            )
            return pod, text.splitlines()
        except Exception as exc:  # noqa: BLE001 - the job failed either way; say so without its log
            logger.warning("could not read the log of the failed %s %s/%s: %s", self.kind.kind, client.namespace, name, exc)
            return None, []

    def _api_failure(self, action: str, namespace: str, name: str, exc: BaseException, status: int | None) -> str:
        hint = {
            401: "the credentials were refused",
            403: "the service account may not do this: apply k8s/ (Role kubetune-pipeline) and run the step as "
                 "cluster.service_account",
            404: f"is {self.kind.operator} installed?",
        }.get(status or 0, "is the API server reachable?")
        reason = getattr(exc, "reason", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        return f"could not {action} {self.kind.kind} {namespace}/{name} (HTTP {status or '-'} {reason}); {hint}"

    def _announce(self, job: dict, request: TrainRequest) -> None:
        name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]
        label = job["metadata"]["labels"][jobs.RUN_ID_LABEL]
        print_main(
            f"submitted {self.kind.kind} {namespace}/{name}: {self.summary(job, request)}, "
            f"timeout {request.config.cluster.timeout_seconds} s\n"
            f"  kubectl -n {namespace} get {self.kind.plural} -l {jobs.RUN_ID_LABEL}={label}\n"
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
