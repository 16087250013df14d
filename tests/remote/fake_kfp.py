"""A Kubeflow Pipelines API server on 127.0.0.1 that records every request kubetune makes.

It speaks the v2beta1 REST paths kfp.Client 2.x calls for submit, schedule and status (health check,
experiments list/get/create, runs create/get, recurring runs create), answering with the JSON shapes
of the real server (snake_case fields, RFC 3339 times, the epoch for unset times). It also answers the
two MLflow REST calls `kubetune status` makes to find a run's MLflow run by its tag.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

EPOCH = "1970-01-01T00:00:00Z"
CREATED = "2025-06-02T08:00:00Z"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    body: str

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    @property
    def raw(self) -> str:
        """Everything the client sent, for searching: the request line, headers and body."""
        headers = "\n".join(f"{k}: {v}" for k, v in self.headers.items())
        return f"{self.method} {self.path}?{self.query}\n{headers}\n\n{self.body}"


@dataclass
class FakeKfp:
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    experiments: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    recurring_runs: dict[str, dict] = field(default_factory=dict)
    # Fields merged into a run at each successive GET of it (the last entry repeats): a run that progresses.
    run_updates: list[dict] = field(default_factory=list)
    multi_user: bool = False
    # When set, the KFP API answers 401 to requests without exactly this bearer token.
    required_token: str | None = None
    # MLflow: experiment name → id, and (experiment id, kubetune.run_id tag) → MLflow run id.
    mlflow_experiments: dict[str, str] = field(default_factory=dict)
    mlflow_runs: dict[tuple[str, str], str] = field(default_factory=dict)

    def api_requests(self) -> list[Request]:
        return [r for r in self.requests if r.path.startswith("/apis/")]

    def sent(self, method: str, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and r.path == path]


def _error(status: int, message: str) -> tuple[int, dict]:
    return status, {"error": message, "code": 5 if status == 404 else 3, "message": message, "details": []}


def handle(fake: FakeKfp, request: Request) -> tuple[int, Any]:
    path, method = request.path, request.method
    if (
        fake.required_token and path.startswith("/apis/")
        and request.headers.get("authorization") != f"Bearer {fake.required_token}"
    ):
        return 401, {"error": "Unauthorized", "code": 16, "message": "Unauthorized: the token is not valid", "details": []}
    if method == "GET" and path == "/apis/v2beta1/healthz":
        return 200, {"multi_user": fake.multi_user, "pipeline_store": "database"}

    if path == "/apis/v2beta1/experiments":
        if method == "GET":
            wanted = None
            if "filter" in request.query:
                predicates = json.loads(request.query["filter"][0])["predicates"]
                wanted = next(p["stringValue"] for p in predicates if p["key"] == "display_name")
            found = [e for e in fake.experiments.values() if wanted is None or e["display_name"] == wanted]
            return 200, ({"experiments": found, "total_size": len(found)} if found else {})
        if method == "POST":
            body = request.json
            experiment_id = str(uuid.uuid4())
            experiment = {
                "experiment_id": experiment_id, "display_name": body["display_name"],
                "description": body.get("description") or "", "created_at": CREATED,
                "namespace": body.get("namespace") or "", "storage_state": "AVAILABLE",
                "last_run_created_at": EPOCH,
            }
            fake.experiments[experiment_id] = experiment
            return 200, experiment
    match = re.fullmatch(r"/apis/v2beta1/experiments/([^/:]+)", path)
    if match and method == "GET":
        experiment = fake.experiments.get(match[1])
        return (200, experiment) if experiment else _error(404, f"Experiment {match[1]} not found")

    if path == "/apis/v2beta1/runs" and method == "POST":
        body = request.json
        if body.get("experiment_id") not in fake.experiments:
            return _error(400, "Invalid input error: experiment not found")
        run_id = str(uuid.uuid4())
        run = {
            **body, "run_id": run_id, "storage_state": "AVAILABLE", "created_at": CREATED,
            "scheduled_at": CREATED, "finished_at": EPOCH, "state": "PENDING",
            "state_history": [{"update_time": CREATED, "state": "PENDING"}],
        }
        fake.runs[run_id] = run
        return 200, run
    match = re.fullmatch(r"/apis/v2beta1/runs/([^/:]+)", path)
    if match and method == "GET":
        run = fake.runs.get(match[1])
        if run is None:
            return _error(404, f"Failed to get run: Run {match[1]} not found")
        if fake.run_updates:
            run.update(fake.run_updates.pop(0) if len(fake.run_updates) > 1 else fake.run_updates[0])
        return 200, run

    if path == "/apis/v2beta1/recurringruns" and method == "POST":
        body = request.json
        recurring_run_id = str(uuid.uuid4())
        recurring = {
            **body, "recurring_run_id": recurring_run_id, "created_at": CREATED, "updated_at": CREATED,
            "status": "ENABLED", "namespace": fake.experiments[body["experiment_id"]]["namespace"],
        }
        fake.recurring_runs[recurring_run_id] = recurring
        return 200, recurring

    if path == "/api/2.0/mlflow/experiments/get-by-name" and method == "GET":
        name = request.query["experiment_name"][0]
        if name not in fake.mlflow_experiments:
            return 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"Could not find experiment with name '{name}'"}
        return 200, {"experiment": {
            "experiment_id": fake.mlflow_experiments[name], "name": name, "artifact_location": "s3://mlflow/1",
            "lifecycle_stage": "active", "creation_time": 1748851200000, "last_update_time": 1748851200000,
        }}
    if path == "/api/2.0/mlflow/runs/search" and method == "POST":
        body = request.json
        tag = re.search(r"= '([^']+)'", body["filter"])[1]
        runs = []
        for experiment_id in body["experiment_ids"]:
            mlflow_run_id = fake.mlflow_runs.get((experiment_id, tag))
            if mlflow_run_id:
                runs.append({
                    "info": {
                        "run_id": mlflow_run_id, "run_uuid": mlflow_run_id, "experiment_id": experiment_id,
                        "run_name": "kubetune", "user_id": "kfp", "status": "RUNNING", "start_time": 1748851200000,
                        "artifact_uri": f"s3://mlflow/{experiment_id}/{mlflow_run_id}/artifacts",
                        "lifecycle_stage": "active",
                    },
                    "data": {"tags": [{"key": "kubetune.run_id", "value": tag}]},
                })
        return 200, ({"runs": runs} if runs else {})
    return _error(404, f"no route for {method} {path}")


def start(fake: FakeKfp) -> tuple[ThreadingHTTPServer, threading.Thread]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode() if length else ""
            parts = urlsplit(self.path)
            request = Request(self.command, parts.path, parse_qs(parts.query), {k.lower(): v for k, v in self.headers.items()}, body)
            fake.requests.append(request)
            status, answer = handle(fake, request)
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = do_PATCH = _serve

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread
