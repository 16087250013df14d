"""Servers the cluster tests start on 127.0.0.1: a fake Kubernetes API and a faulty proxy in front of S3.

FakeKubernetes speaks the REST paths the pytorchjob and trainjob launchers use (create/get/list/delete
the job, get a ClusterTrainingRuntime, list pods, read a pod's log, streamed or not) for one job kind
(`kind`: "pytorchjob" or "trainjob") and records every request. Each GET of a job answers the next
state of `phases` ("Created", "Running", "Succeeded", "Failed"), as that kind's conditions; the lead
pod (a PyTorchJob's master, a TrainJob's JobSet-labelled node 0) has its log streamed with kubelet-style
timestamps, and the first streamed connection can be cut mid-line to exercise reconnection.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import yaml

JOBS_PATHS = {
    "pytorchjob": "/apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs",
    "trainjob": "/apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs",
}
RUNTIMES_PATH = "/apis/trainer.kubeflow.org/v1alpha1/clustertrainingruntimes"
RESOURCES = {"pytorchjob": "pytorchjobs.kubeflow.org", "trainjob": "trainjobs.trainer.kubeflow.org"}
# What a Trainer's runtime says about restarts (kubetune reads it before submitting a TrainJob).
RESTARTING_RUNTIME = {"spec": {"template": {"spec": {"failurePolicy": {"maxRestarts": 3}}}}}


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: str


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        request = Request(self.command, split.path, query, body)
        self.server.owner.record(request)
        self.server.owner.handle(self, request)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _dispatch

    def send_json(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_text(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_chunked(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def cut(self) -> None:
        """Drop the connection in the middle of the answer, as a failing proxy or node would."""
        self.wfile.flush()
        self.connection.shutdown(socket.SHUT_RDWR)
        self.close_connection = True


def flag(value: str | None) -> bool:
    """A boolean query parameter as the API server reads it (Go's strconv.ParseBool)."""
    return value in ("1", "t", "T", "TRUE", "true", "True")


def _status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message}


@dataclass
class FakeKubernetes:
    namespace: str = "kubeflow"
    kind: str = "pytorchjob"
    phases: list[str] = field(default_factory=lambda: ["Running"])
    master_log: list[tuple[str, str]] = field(default_factory=list)  # (RFC 3339 timestamp, message)
    drop_first_stream_after: int | None = None  # cut the first streamed log connection after N lines
    failure_message: str = "PyTorchJob has failed because 1 Master replica(s) failed."
    trainer_status: dict | None = None  # a TrainJob's status.trainerStatus while it runs
    runtimes: dict[str, dict] = field(default_factory=lambda: {
        name: RESTARTING_RUNTIME for name in ("torch-distributed", "deepspeed-distributed")})
    pod_phase: str = "Running"
    requests: list[Request] = field(default_factory=list)
    jobs: dict[str, dict] = field(default_factory=dict)
    job_gets: int = 0
    terminal_get: int | None = None  # index of the GET that first answered Succeeded/Failed

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._streams = 0
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.daemon_threads = True
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # ------------------------------------------------------------------------------------ control
    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeKubernetes:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        # shutdown() waits for serve_forever to return: it would hang on a server never started.
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()

    def write_kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": self.namespace}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def record(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)

    def calls(self, method: str, path_part: str = "") -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.method == method and path_part in r.path]

    def wait_for(self, method: str, path_part: str, timeout: float = 20.0) -> Request:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            found = self.calls(method, path_part)
            if found:
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no {method} {path_part} within {timeout} s; requests: {[(r.method, r.path) for r in self.requests]}")

    @property
    def finished(self) -> bool:
        return self.terminal_get is not None or self._stopping.is_set()

    # ----------------------------------------------------------------------------------- handlers
    @property
    def jobs_path(self) -> str:
        return JOBS_PATHS[self.kind].format(ns=self.namespace)

    def handle(self, handler: _Handler, request: Request) -> None:
        jobs = self.jobs_path
        pods = f"/api/v1/namespaces/{self.namespace}/pods"
        if request.path == jobs and request.method == "POST":
            return self._create(handler, json.loads(request.body))
        if request.path == jobs and request.method == "GET":
            return self._list_jobs(handler, request.query.get("labelSelector", ""))
        if request.path.startswith(RUNTIMES_PATH + "/") and request.method == "GET":
            name = request.path[len(RUNTIMES_PATH) + 1 :]
            if name in self.runtimes:
                return handler.send_json(200, {"apiVersion": "trainer.kubeflow.org/v1alpha1",
                                               "kind": "ClusterTrainingRuntime", "metadata": {"name": name},
                                               **self.runtimes[name]})
            return handler.send_json(404, _status(404, "NotFound", f'clustertrainingruntimes.trainer.kubeflow.org "{name}" not found'))
        if request.path.startswith(jobs + "/"):
            name = request.path[len(jobs) + 1 :]
            if request.method == "GET":
                return self._get(handler, name)
            if request.method == "DELETE":
                return self._delete(handler, name)
        if request.path == pods and request.method == "GET":
            return self._list_pods(handler, request.query.get("labelSelector", ""))
        if request.path.startswith(pods + "/") and request.path.endswith("/log"):
            return self._log(handler, request.query)
        handler.send_json(404, _status(404, "NotFound", f"{request.method} {request.path} is not served here"))

    def _create(self, handler: _Handler, job: dict) -> None:
        name = job["metadata"]["name"]
        with self._lock:
            if name in self.jobs:
                return handler.send_json(409, _status(409, "AlreadyExists", f'{RESOURCES[self.kind]} "{name}" already exists'))
            job = {**job, "metadata": {**job["metadata"], "uid": f"uid-{name}", "creationTimestamp": "2025-01-01T00:00:00Z"}}
            self.jobs[name] = job
        handler.send_json(201, job)

    def _conditions(self, phase: str) -> list[dict]:
        if self.kind == "trainjob":
            return self._trainjob_conditions(phase)
        conditions = [{"type": "Created", "status": "True", "reason": "PyTorchJobCreated"}]
        if phase == "Created":
            return conditions
        if phase in ("Succeeded", "Failed"):
            conditions.append({"type": "Running", "status": "False", "reason": "PyTorchJobRunning"})
        message = self.failure_message if phase == "Failed" else f"PyTorchJob is {phase.lower()}."
        conditions.append({"type": phase, "status": "True", "reason": f"PyTorchJob{phase}", "message": message})
        return conditions

    def _get(self, handler: _Handler, name: str) -> None:
        with self._lock:
            job = self.jobs.get(name)
            if job is None:
                return handler.send_json(404, _status(404, "NotFound", f'{RESOURCES[self.kind]} "{name}" not found'))
            phase = self.phases[min(self.job_gets, len(self.phases) - 1)]
            if phase in ("Succeeded", "Failed") and self.terminal_get is None:
                self.terminal_get = self.job_gets
            self.job_gets += 1
            answer = {**job, "status": self._status(phase)}
        handler.send_json(200, answer)

    def _status(self, phase: str) -> dict:
        status = {"conditions": self._conditions(phase)}
        if self.kind == "trainjob" and self.trainer_status is not None and phase == "Running":
            status["trainerStatus"] = self.trainer_status
        return status

    def _trainjob_conditions(self, phase: str) -> list[dict]:
        """Kubeflow Trainer v2's metav1.Conditions: Created, then Complete or Failed (from the JobSet's)."""
        conditions = [{"type": "Created", "status": "True", "reason": "JobsCreationSucceeded",
                       "message": "succeeded to create Jobs", "lastTransitionTime": "2025-01-01T00:00:00Z"}]
        if phase == "Succeeded":
            conditions.append({"type": "Complete", "status": "True", "reason": "JobSetCompleted",
                               "message": "jobset completed", "lastTransitionTime": "2025-01-01T00:10:00Z"})
        if phase == "Failed":
            conditions.append({"type": "Failed", "status": "True", "reason": "JobSetFailed",
                               "message": self.failure_message, "lastTransitionTime": "2025-01-01T00:10:00Z"})
        return conditions

    def _list_jobs(self, handler: _Handler, selector: str) -> None:
        wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
        with self._lock:
            phase = self.phases[min(self.job_gets, len(self.phases) - 1)]
            items = [{**job, "status": self._status(phase)} for job in self.jobs.values()
                     if wanted.items() <= (job["metadata"].get("labels") or {}).items()]
        handler.send_json(200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items})

    def _delete(self, handler: _Handler, name: str) -> None:
        with self._lock:
            job = self.jobs.pop(name, None)
        if job is None:
            return handler.send_json(404, _status(404, "NotFound", f'{RESOURCES[self.kind]} "{name}" not found'))
        handler.send_json(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})

    def _list_pods(self, handler: _Handler, selector: str) -> None:
        wanted = dict(part.split("=", 1) for part in selector.split(",") if "=" in part)
        items = []
        if self.kind == "trainjob":
            # The JobSet's labels on node 0 of the trainer step (the runtime's `node` replicated job).
            name = wanted.get("jobset.sigs.k8s.io/jobset-name")
            lead = {"jobset.sigs.k8s.io/jobset-name": name, "trainer.kubeflow.org/trainjob-ancestor-step": "trainer",
                    "jobset.sigs.k8s.io/replicatedjob-name": "node", "jobset.sigs.k8s.io/job-index": "0",
                    "batch.kubernetes.io/job-completion-index": "0"}
            pod_name = f"{name}-node-0-0-x7k2p"
        else:
            name = wanted.get("training.kubeflow.org/job-name")
            lead = {"training.kubeflow.org/job-name": name, "training.kubeflow.org/job-role": "master"}
            pod_name = f"{name}-master-0"
        if name in self.jobs and wanted.items() <= lead.items():
            items.append({
                "metadata": {"name": pod_name, "namespace": self.namespace,
                             "creationTimestamp": "2025-01-01T00:00:01Z", "labels": lead},
                "status": {"phase": self.pod_phase},
            })
        handler.send_json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items})

    def _log(self, handler: _Handler, query: dict[str, str]) -> None:
        stamped = flag(query.get("timestamps"))
        lines = [f"{ts} {message}" if stamped else message for ts, message in self.master_log]
        if not flag(query.get("follow")):
            if "tailLines" in query:
                lines = lines[-int(query["tailLines"]) :]
            return handler.send_text(200, "".join(line + "\n" for line in lines))
        with self._lock:
            self._streams += 1
            first = self._streams == 1
        handler.start_chunked()
        # Like the API server with sinceSeconds, the fake sends the whole log again on each
        # connection: the client must skip what it has shown.
        for index, line in enumerate(lines):
            if first and self.drop_first_stream_after is not None and index == self.drop_first_stream_after:
                handler.chunk(line[: len(line) // 2].encode())  # half a line, then the connection dies
                return handler.cut()
            handler.chunk((line + "\n").encode())
        while not self.finished:
            time.sleep(0.02)
        handler.end_chunked()


# --------------------------------------------------------------------------------- S3 and faults
class FaultyProxy:
    """An HTTP proxy in front of an S3 server that spoils the first `failures` requests.

    `mode="503"` answers them with 503 SlowDown-style errors (what an overloaded MinIO says);
    `mode="drop"` closes the connection without an answer. Every request is counted.
    """

    def __init__(self, upstream: str, failures: int = 0, mode: str = "503", match: str = ""):
        self.upstream = urlsplit(upstream)
        self.failures = failures
        self.mode = mode
        self.match = match  # only requests whose path contains this are spoiled (and counted in `matched`)
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status or 0 for a drop)
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _proxy(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with outer._lock:
                    spoil = outer.match in self.path and outer.failures > 0
                    if spoil:
                        outer.failures -= 1
                if spoil and outer.mode == "drop":
                    outer._count(self.command, self.path, 0)
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                if spoil:
                    data = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
                            b"<Message>Please reduce your request rate.</Message></Error>")
                    outer._count(self.command, self.path, 503)
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    # A HEAD answer has no body: bytes written after it would be read as the start of the next
                    # answer on the kept-alive connection ("Bad status line") instead of a 503.
                    if self.command != "HEAD":
                        self.wfile.write(data)
                    return
                connection = http.client.HTTPConnection(outer.upstream.hostname, outer.upstream.port, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "transfer-encoding")}
                    connection.request(self.command, self.path, body=body, headers=headers)
                    answer = connection.getresponse()
                    data = answer.read()
                finally:
                    connection.close()
                outer._count(self.command, self.path, answer.status)
                self.send_response(answer.status)
                for key, value in answer.getheaders():
                    if key.lower() not in ("connection", "transfer-encoding", "content-length", "server", "date"):
                        self.send_header(key, value)
                # A HEAD answer has no body but tells the size of the object.
                length = answer.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _count(self, method: str, path: str, status: int) -> None:
        with self._lock:
            self.requests.append((method, path, status))

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def matched(self) -> list[tuple[str, str, int]]:
        with self._lock:
            return [r for r in self.requests if self.match in r[1]]

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
