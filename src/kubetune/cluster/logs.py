"""Follow the lead pod's log (the PyTorchJob's master, the TrainJob's node 0 or MPI launcher) into
this process's stdout while the job runs.

The API server's log stream ends whenever the connection drops, the container restarts, or the
trainer stays quiet longer than the read timeout. Each line is requested with its kubelet
timestamp, so after reconnecting the lines already shown are skipped: every line is printed once,
in order. The last lines are kept for the error message of a failed job.
"""

from __future__ import annotations

import collections
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterator

from kubetune.cluster.jobapi import JobClient
from kubetune.distributed import print_main

logger = logging.getLogger(__name__)

# "2024-05-01T10:11:12.123456789Z message": the kubelet writes RFC 3339 with up to nine fraction
# digits and trims trailing zeros, so the fraction is compared as a number, not as text.
_TIMESTAMPED = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?Z (.*)$", re.DOTALL)
# Seconds added to sinceSeconds on reconnect, so that no line falls between two connections.
RECONNECT_OVERLAP = 10


def parse_line(raw: str) -> tuple[tuple[str, int] | None, str]:
    """(sortable timestamp or None, message) of one `timestamps=true` log line."""
    match = _TIMESTAMPED.match(raw)
    if not match:
        return None, raw
    seconds, fraction, message = match.groups()
    return (seconds, int((fraction or "").ljust(9, "0"))), message


class MasterLogStreamer:
    """A background thread that prints the lead pod's log lines once each, reconnecting as needed."""

    def __init__(
        self,
        job_client: JobClient,
        job_name: str,
        namespace: str,
        emit: Callable[[str], None] = print_main,
        keep_lines: int = 30,
        poll_interval: float = 2.0,
        read_timeout: float = 30.0,
    ):
        self._client = job_client
        self._core = job_client.core_api
        self._container = job_client.kind.container
        self.job_name = job_name
        self.namespace = namespace
        self._emit = emit
        self._poll_interval = poll_interval
        self._read_timeout = read_timeout
        self._last_lines: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self._last_key: tuple[str, int] | None = None
        self._seen_at_last_key: set[str] = set()
        self._last_line_at: float | None = None  # monotonic time of the newest line received
        self._stop = threading.Event()
        self._drain = True
        self._thread = threading.Thread(target=self._run, name=f"logs-{job_name}", daemon=True)
        self.pod_name: str | None = None
        self.connections = 0

    # ------------------------------------------------------------------------------------ control
    def start(self) -> MasterLogStreamer:
        self._thread.start()
        return self

    def stop(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop following; with `drain`, first print the lines not shown yet. Waits at most `timeout` seconds."""
        self._drain = drain
        self._stop.set()
        if not self._thread.is_alive():
            return
        self._thread.join(timeout if timeout is not None else self._read_timeout + 15)
        if self._thread.is_alive():
            logger.warning("the log stream of %s did not close in time; its last lines may be missing", self.job_name)

    def last_lines(self) -> list[str]:
        return list(self._last_lines)

    # --------------------------------------------------------------------------------------- thread
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                pod = self._master_pod()
                if pod is not None:
                    self._follow(pod)
            except Exception as exc:  # noqa: BLE001 - a dropped stream is retried; the job's state decides the outcome
                logger.debug("log stream of %s interrupted: %s: %s", self.job_name, type(exc).__name__, exc)
            self._stop.wait(self._poll_interval)
        try:
            if self._drain and self.pod_name is not None:
                self._read_rest()
        except Exception as exc:  # noqa: BLE001 - the final lines are a courtesy; the job's state is already known
            logger.warning("could not read the last log lines of %s: %s", self.pod_name, exc)

    def _master_pod(self) -> str | None:
        pods = self._client.lead_pods(self.job_name)
        started = [p for p in pods if p.status is not None and p.status.phase not in (None, "Pending")]
        if not started:
            return None
        # A restarted job may briefly show the old pod beside the new one: follow the newest.
        newest = max(started, key=lambda p: (p.metadata.creation_timestamp is not None, p.metadata.creation_timestamp))
        self.pod_name = newest.metadata.name
        return self.pod_name

    def _since_seconds(self) -> int | None:
        if self._last_line_at is None:
            return None
        return math.ceil(time.monotonic() - self._last_line_at) + RECONNECT_OVERLAP

    def _follow(self, pod: str) -> None:
        self.connections += 1
        response = self._core.read_namespaced_pod_log(
            pod, self.namespace, container=self._container, follow=True, timestamps=True,
            since_seconds=self._since_seconds(), _preload_content=False, _request_timeout=(10, self._read_timeout),
        )
        try:
            # A line cut by a dropped connection is not shown: the next connection sends it whole.
            for raw in _complete_lines(response):
                self._handle(raw)
        finally:
            response.release_conn()

    def _read_rest(self) -> None:
        text = self._core.read_namespaced_pod_log(
            self.pod_name, self.namespace, container=self._container, timestamps=True,
            since_seconds=self._since_seconds(), _request_timeout=(10, self._read_timeout),
        )
        for raw in text.splitlines():
            self._handle(raw)

    def _handle(self, raw: str) -> None:
        key, message = parse_line(raw)
        if key is not None:
            if self._last_key is not None and key < self._last_key:
                return
            if key == self._last_key:
                if message in self._seen_at_last_key:
                    return
            else:
                self._last_key = key
                self._seen_at_last_key = set()
            self._seen_at_last_key.add(message)
        self._last_line_at = time.monotonic()
        self._last_lines.append(message)
        self._emit(message)


def _complete_lines(response) -> Iterator[str]:
    """The newline-terminated lines of a streamed HTTP response, decoded as they arrive."""
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=True):
        buffer += chunk
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", errors="replace").rstrip("\r")
