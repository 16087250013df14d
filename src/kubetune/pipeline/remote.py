"""kubetune on a Kubeflow Pipelines server: submit a run, schedule recurring runs, follow a run.

`kubetune submit` reads like a recipe: `cluster_run_config` (validate the config here and check that a
cluster's pods can reach everything it names) → `resolve_host` → `connect` → `submit` (compile the
pipeline with the config's cluster section, create the run with the resolved config as its `config`
parameter) → optionally `follow_run`. Every check runs before `connect`, so a bad config or option
never reaches the server.

A run carries its own compiled pipeline spec (kfp.Client.run_pipeline with the package, which is what
`create_run_from_pipeline_package` does once it has the experiment) instead of pointing at an uploaded
pipeline version: the spec depends on the config's cluster section (secret names, node
selector, tolerations), so uploading would add a pipeline version per submit, and reusing a pipeline
uploaded under one name could run it with another config's cluster settings. The run records exactly
the spec it ran; `kubetune compile` writes the spec for users who want it in the KFP pipeline list.

`--pipeline predict` sends the batch-scoring pipeline instead (kubetune.pipeline.predict_pipeline): the
same config, plus what to score (`BatchScoring`: the model, the rows, optionally an output URI), checked
here by `cluster_predict_config` for what its pods can reach.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import os
import re
import tempfile
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune import storage
from kubetune.config import RunConfig, load_config, parse_overrides
from kubetune.console import format_table
from kubetune.distributed import print_main
from kubetune.errors import ConfigError, KubetuneError
from kubetune.pipeline.local import STEPS
from kubetune.tracking import RUN_ID_TAG

if TYPE_CHECKING:
    import kfp

logger = logging.getLogger(__name__)

# Where the KFP API server is: kubetune's own variable first, then the one kfp.Client reads.
HOST_ENVS = ("KFP_HOST", "KF_PIPELINES_ENDPOINT")
# A bearer token for the API server (e.g. from `kubectl create token`); sent only as the Authorization header.
TOKEN_ENV = "KF_PIPELINES_TOKEN"
# kfp.Client's variable for the UI's address when it differs from the API's.
UI_ENV = "KF_PIPELINES_UI_ENDPOINT"
PORT_FORWARD_HINT = "kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80, then --host http://localhost:8080"

# The launchers that train in a job of their own on the cluster (= kubetune.cluster.jobapi.KINDS, not
# imported: the kubernetes client, for a CLI check).
CLUSTER_LAUNCHERS = ("pytorchjob", "trainjob")

# Seconds between two looks at a run that `--wait` / `--watch` follows.
POLL_SECONDS = 10.0
FINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"})
# KFP's servers answer an unset time as the Unix epoch.
_UNSET_TIME = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


# ------------------------------------------------------------------------------- config for a cluster
def cluster_run_config(
    config_path: str | Path, overrides: Iterable[str] = (), namespace: str | None = None
) -> tuple[RunConfig, list[str]]:
    """The resolved config of a cluster run, and notes for the user; raise ConfigError if pods can't run it.

    A config's `launcher: local` is what `kubetune run` uses on one machine, not a choice for the
    cluster: it becomes `pytorchjob` unless the command line sets `cluster.launcher` (`trainjob` for a
    cluster with Kubeflow Trainer v2). A config's `pytorchjob` or `trainjob` is kept.
    """
    overrides = list(overrides)
    config = load_config(config_path, overrides)
    notes = []
    if namespace:
        config.cluster.namespace = namespace
    cluster_overrides = parse_overrides(overrides).get("cluster")
    launcher_given = isinstance(cluster_overrides, Mapping) and "launcher" in cluster_overrides
    if not launcher_given and config.cluster.launcher not in CLUSTER_LAUNCHERS:
        notes.append(
            f"cluster.launcher: {config.cluster.launcher} in the config is for `kubetune run`; this run trains in a "
            "PyTorchJob (pass cluster.launcher=trainjob for a Kubeflow Trainer v2 TrainJob, or cluster.launcher=local "
            "to train inside the train step's pod)"
        )
        config.cluster.launcher = "pytorchjob"
    problems = reachability_problems(config)
    if problems:
        raise ConfigError(problems, str(config_path))
    if config.tracking.enable and not config.tracking.tracking_uri:
        notes.append(
            "tracking.tracking_uri is unset: the steps track to MLflow only if their pods have $MLFLOW_TRACKING_URI; "
            "set tracking.tracking_uri to your server (e.g. http://mlflow.kubetune:5000) or tracking.enable=false"
        )
    return config, notes


def reachability_problems(config: RunConfig) -> list[str]:
    """What a cluster's pods could not reach: local data, local outputs, a local MLflow store, a local model."""
    problems = []
    # task: sft may name its data as data.sources (several inputs) instead of data.uri.
    data = [(f"data.sources.{i}", uri) for i, uri in enumerate(config.data.sources)] or [("data.uri", config.data.uri)]
    data += [(f"data.{key}", getattr(config.data, key)) for key in ("validation_uri", "test_uri")]
    for key, uri in data:
        if key == "data.uri" and not uri:
            problems.append(
                "data.uri: no data given; a cluster run reads an s3:// or minio:// URI (or demo://ledger): "
                "set data.uri=s3://bucket/path"
            )
        elif uri and not (storage.is_remote(uri) or uri.startswith("demo://")):
            problems.append(
                f"{key}: {uri!r} is not in object storage, so the cluster's pods can't read it; upload it "
                f"(e.g. `aws s3 cp`) and set {key}=s3://bucket/key (or minio://)"
            )
    if not storage.is_remote(config.storage.runs_uri):
        problems.append(
            f"storage.runs_uri: {config.storage.runs_uri!r} is a local folder; the training pods write checkpoints "
            "and the model there: set storage.runs_uri=s3://bucket/kubetune-runs (or minio://)"
        )
    tracking_uri = config.tracking.tracking_uri
    if config.tracking.enable and tracking_uri and not tracking_uri.startswith(("http://", "https://", "databricks")):
        problems.append(
            f"tracking.tracking_uri: {tracking_uri!r} is a store on this machine that the pipeline's pods can't "
            "reach; set an MLflow server URL (e.g. http://mlflow.kubetune:5000) or tracking.enable=false"
        )
    for key, name in (("model.name", config.model.name), ("tokenize.model_name", config.tokenize.model_name)):
        if name and (name.startswith(("/", ".", "~", "file://")) or Path(name).expanduser().is_dir()):
            problems.append(
                f"{key}: {name!r} is a local path the pods can't read; give a hub id, or upload the model "
                f"folder and set {key}=s3://bucket/model"
            )
    return problems


# ------------------------------------------------------------------------------ batch scoring
PREDICT_STEPS = ("predict",)
REGISTRY_PREFIX = "models:/"  # = kubetune.inference.REGISTRY_SCHEME (not imported: pandas, for a CLI check)


@dataclass(frozen=True)
class BatchScoring:
    """What a run of the batch-scoring pipeline scores: its parameters besides the config."""

    model: str  # an s3:// model/ folder, or models:/<name>@<alias> / models:/<name>/<version>
    data_uri: str
    output_uri: str = ""  # also write the predictions here; `{run_id}` becomes the KFP run id


def batch_scoring(pipeline: str, model: str | None, data: str | None, output: str | None) -> BatchScoring | None:
    """The --pipeline, --model, --data and --output options checked together: a BatchScoring for
    `--pipeline predict`, None for the training pipeline (which takes none of them)."""
    given = {"--model": model, "--data": data, "--output": output}
    if pipeline != "predict":
        misplaced = [option for option, value in given.items() if value is not None]
        if misplaced:
            raise ConfigError([
                f"{option}: only for --pipeline predict (batch scoring); the training pipeline reads its data "
                "from data.uri" for option in misplaced
            ])
        return None
    missing = []
    if not (model or "").strip():
        missing.append("--model: --pipeline predict needs the model to score with: a train output's model/ folder "
                       "(s3://bucket/runs/<run id>/train/model) or models:/<name>@champion")
    if not (data or "").strip():
        missing.append("--data: --pipeline predict needs the rows to score: --data s3://bucket/new-lines.parquet")
    if missing:
        raise ConfigError(missing)
    return BatchScoring(model=model.strip(), data_uri=data.strip(), output_uri=(output or "").strip())


def cluster_predict_config(
    config_path: str | Path, overrides: Iterable[str], namespace: str | None, scoring: BatchScoring
) -> tuple[RunConfig, list[str]]:
    """`cluster_run_config` for the batch-scoring pipeline: the resolved config, and notes for the user;
    raise ConfigError if the predict step's pod couldn't reach the model, the rows or the output."""
    config = load_config(config_path, list(overrides))
    if namespace:
        config.cluster.namespace = namespace
    notes = []
    problems = scoring_reachability_problems(scoring)
    tracking_uri = config.tracking.tracking_uri
    if scoring.model.startswith(REGISTRY_PREFIX):
        if tracking_uri and not tracking_uri.startswith(("http://", "https://", "databricks")):
            problems.append(
                f"{config_path}: tracking.tracking_uri: {tracking_uri!r} is a store on this machine that the pipeline's "
                f"pods can't reach to look up --model {scoring.model}; set an MLflow server URL (e.g. "
                "http://mlflow.kubetune:5000)"
            )
        elif not tracking_uri:
            notes.append(
                f"tracking.tracking_uri is unset: the predict step finds --model {scoring.model} only if its pod has "
                "$MLFLOW_TRACKING_URI; set tracking.tracking_uri to your server (e.g. http://mlflow.kubetune:5000)"
            )
    if problems:
        raise ConfigError(problems)
    return config, notes


def scoring_reachability_problems(scoring: BatchScoring) -> list[str]:
    """What the predict step's pod could not reach: a local model folder, local rows, a local output."""
    problems = []
    model = scoring.model
    if not (model.startswith(REGISTRY_PREFIX) or storage.is_remote(model)):
        problems.append(
            f"--model: {model!r} is neither in object storage nor an MLflow registry reference, so the pipeline's pods "
            "can't read it; upload the model/ folder and pass --model s3://bucket/runs/<run id>/train/model, or "
            "pass --model models:/<name>@champion"
        )
    if not (storage.is_remote(scoring.data_uri) or scoring.data_uri.startswith("demo://")):
        problems.append(
            f"--data: {scoring.data_uri!r} is not in object storage, so the pipeline's pods can't read it; upload it "
            "(e.g. `aws s3 cp`) and pass --data s3://bucket/key (or minio://)"
        )
    if scoring.output_uri and not storage.is_remote(scoring.output_uri):
        problems.append(
            f"--output: {scoring.output_uri!r} is not in object storage, so the pipeline's pods can't write it; pass "
            "--output s3://bucket/predictions/{run_id}.parquet, or leave it out: the predictions are the run's artifact"
        )
    return problems


def experiment_name(config: RunConfig, experiment: str | None = None) -> str:
    """--experiment, else cluster.experiment, else the MLflow experiment's name."""
    return experiment or config.cluster.experiment or config.tracking.experiment_name


def pipeline_arguments(config: RunConfig, scoring: BatchScoring | None = None) -> dict[str, Any]:
    """The run's pipeline parameters: the resolved config as YAML text; the training pipeline's other
    parameters keep their defaults ("as in the config"), and an empty `run_id` makes the KFP run id the
    kubetune run id. The batch-scoring pipeline also gets what it scores."""
    arguments: dict[str, Any] = {"config": config.to_yaml()}
    if scoring is not None:
        arguments.update(model=scoring.model, data_uri=scoring.data_uri, output_uri=scoring.output_uri)
    return arguments


def default_run_name(config_path: str | Path, scoring: BatchScoring | None = None) -> str:
    kind = " predict" if scoring is not None else ""
    return f"{Path(str(config_path)).stem}{kind} {time.strftime('%Y-%m-%d %H:%M:%S')}"


# -------------------------------------------------------------------------------------- the server
def resolve_host(host: str | None = None) -> str:
    """The KFP API server: --host, else $KFP_HOST, else $KF_PIPELINES_ENDPOINT; an http(s) URL."""
    source, value = ("--host", host) if host else next(
        ((f"${name}", os.environ[name]) for name in HOST_ENVS if os.environ.get(name, "").strip()), ("", "")
    )
    if not value:
        raise KubetuneError(
            "no Kubeflow Pipelines API server given: pass --host URL or set $KFP_HOST "
            f"(no cluster address at hand? {PORT_FORWARD_HINT})"
        )
    value = value.strip().rstrip("/")
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise KubetuneError(f"{source}: {value!r} is not an http(s):// URL of the KFP API server; e.g. http://localhost:8080")
    return value


@dataclass
class KfpServer:
    """A connected kfp.Client and the address it talks to."""

    host: str
    client: kfp.Client

    @property
    def ui(self) -> str:
        return (os.environ.get(UI_ENV) or self.host).rstrip("/")

    def run_url(self, run_id: str) -> str:
        return f"{self.ui}/#/runs/details/{run_id}"

    def recurring_run_url(self, recurring_run_id: str) -> str:
        return f"{self.ui}/#/recurringrun/details/{recurring_run_id}"

    def experiment_url(self, experiment_id: str) -> str:
        return f"{self.ui}/#/experiments/details/{experiment_id}"


def connect(host: str, namespace: str | None = None) -> KfpServer:
    """A kfp.Client for `host`, authenticated by $KF_PIPELINES_TOKEN or KFP's service-account token file."""
    from kfp import Client
    from kfp.client import KF_PIPELINES_SA_TOKEN_ENV, ServiceAccountTokenVolumeCredentials

    class OneHealthCheckClient(Client):
        def get_kfp_healthz(self, sleep_duration: int = 5) -> Any:
            # kfp.Client retries its health check 5 times, 5 s apart, on any HTTP error; a refused token
            # or a wrong address doesn't get better in 25 s, so one answer decides.
            return self.healthzs.healthz_service_get_healthz()

    token = os.environ.get(TOKEN_ENV, "").strip() or None
    credentials = None
    token_file = os.environ.get(KF_PIPELINES_SA_TOKEN_ENV)
    if token is None and token_file:
        if not Path(token_file).is_file():
            raise KubetuneError(f"${KF_PIPELINES_SA_TOKEN_ENV}: no token file at {token_file}; fix the path or unset it")
        # Projected service-account tokens rotate: kfp re-reads the file before each request.
        credentials = ServiceAccountTokenVolumeCredentials(token_file)
    with server_errors(host), warnings.catch_warnings():
        # kfp warns on every construction that it needs a v2 server; kubetune only talks to v2 servers.
        warnings.simplefilter("ignore", FutureWarning)
        client = OneHealthCheckClient(
            host=host, namespace=namespace or "kubeflow", existing_token=token, credentials=credentials
        )
    return KfpServer(host=host, client=client)


@contextlib.contextmanager
def server_errors(host: str) -> Iterator[None]:
    """KFP API failures as one-line KubetuneErrors (what failed, where, what to do), not tracebacks."""
    import kfp_server_api
    import urllib3

    try:
        yield
    except kfp_server_api.ApiException as exc:
        raise KubetuneError(_api_error_line(exc, host)) from None
    except urllib3.exceptions.HTTPError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise KubetuneError(
            f"the KFP API server at {host} can't be reached ({type(reason).__name__}); check --host / $KFP_HOST "
            f"or port-forward it: {PORT_FORWARD_HINT}"
        ) from None


def _api_error_line(exc: Any, host: str) -> str:
    message = ""
    with contextlib.suppress(ValueError, TypeError):
        body = json.loads(exc.body or "{}")
        message = str(body.get("message") or body.get("error") or "") if isinstance(body, dict) else ""
    message = " ".join(message.split())[:300]
    detail = f": {message}" if message else ""
    if exc.status in (401, 403):
        return (
            f"the KFP API server at {host} refused the request (HTTP {exc.status}{detail}); set ${TOKEN_ENV} to a "
            "token it accepts (e.g. `kubectl create token <service account> -n <namespace>`)"
        )
    return f"the KFP API server at {host} answered HTTP {exc.status} {exc.reason or ''}{detail}".rstrip()


@contextlib.contextmanager
def _kfp_prints_hidden() -> Iterator[None]:
    """kfp.Client prints its own "details" links (built from the API address, not the UI's); kubetune
    prints the run's links and how to follow it instead."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@contextlib.contextmanager
def compiled_pipeline(
    config: RunConfig, enable_caching: bool | None = None, scoring: BatchScoring | None = None
) -> Iterator[Path]:
    """The kubetune pipeline (with `scoring`: the batch-scoring pipeline) compiled with this config's
    cluster section, in a temporary folder.

    `enable_caching` (None: as compiled) is set on every task here: the KFP client sets it on the
    top-level tasks only, and the steps are inside the exit handler's group.
    """
    from kubetune.pipeline.compile import PIPELINE_FILE, PREDICT_PIPELINE_FILE, compile_all

    with tempfile.TemporaryDirectory(prefix="kubetune-pipeline-") as scratch:
        compile_all(scratch, config.cluster)
        path = Path(scratch) / (PREDICT_PIPELINE_FILE if scoring is not None else PIPELINE_FILE)
        if enable_caching is not None:
            import yaml

            documents = list(yaml.safe_load_all(path.read_text()))
            spec = documents[0]
            dags = [spec["root"]["dag"], *(c["dag"] for c in spec.get("components", {}).values() if "dag" in c)]
            for dag in dags:
                for task in dag.get("tasks", {}).values():
                    task.setdefault("cachingOptions", {})["enableCache"] = enable_caching
            path.write_text(yaml.safe_dump_all(documents, sort_keys=True))
        yield path


# ---------------------------------------------------------------------------------------- submit
@dataclass(frozen=True)
class SubmittedRun:
    run_id: str
    run_name: str
    experiment: str
    experiment_id: str
    namespace: str
    url: str


def submit(
    server: KfpServer,
    config: RunConfig,
    *,
    run_name: str,
    experiment: str | None = None,
    enable_caching: bool | None = None,
    scoring: BatchScoring | None = None,
) -> SubmittedRun:
    """Create one run of the kubetune pipeline (with `scoring`: of the batch-scoring pipeline) in the
    experiment (created when missing)."""
    experiment = experiment_name(config, experiment)
    with compiled_pipeline(config, enable_caching, scoring) as package, server_errors(server.host), _kfp_prints_hidden():
        found = server.client.create_experiment(name=experiment, namespace=config.cluster.namespace)
        run = server.client.run_pipeline(
            experiment_id=found.experiment_id,
            job_name=run_name,
            pipeline_package_path=str(package),
            params=pipeline_arguments(config, scoring),
            enable_caching=enable_caching,
            service_account=config.cluster.service_account,
        )
    return SubmittedRun(
        run_id=run.run_id, run_name=run_name, experiment=experiment, experiment_id=found.experiment_id,
        namespace=config.cluster.namespace, url=server.run_url(run.run_id),
    )


def follow_commands(
    server: KfpServer, config: RunConfig, run_id: str, scoring: BatchScoring | None = None
) -> list[tuple[str, str]]:
    """(what, command) pairs that show how to follow a run: its status, and its training job (a training run's)."""
    commands = [("status", f"kubetune status {run_id} --host {server.host} --watch")]
    if scoring is None and config.cluster.launcher in CLUSTER_LAUNCHERS:
        commands.append(("training job", kubectl_hint(config.cluster.namespace, run_id, config.cluster.launcher)))
    return commands


def kubectl_hint(namespace: str | None, run_id: str, launcher: str = "pytorchjob") -> str:
    """The kubectl command that lists the run's PyTorchJob or TrainJob, by the label both launchers set."""
    from kubetune.cluster.job import RUN_ID_LABEL, run_id_label

    where = f"-n {namespace}" if namespace else "--all-namespaces"
    return f"kubectl get {launcher}s {where} -l {RUN_ID_LABEL}={run_id_label(run_id)}"


def training_job_state(config: RunConfig, run_id: str) -> str | None:
    """The run's training job as Kubernetes reports it ("TrainJob ns/name: Complete (...; 40%)"), or None
    when it can't be read from here (no kubeconfig, no access, not created yet)."""
    from kubetune.cluster import kube
    from kubetune.cluster.job import RUN_ID_LABEL, run_id_label
    from kubetune.cluster.jobapi import API_ERRORS, KINDS, JobClient, job_state, progress

    kind = KINDS[config.cluster.launcher]
    try:
        configuration = kube.configuration()
        configuration.retries = 0  # a status report doesn't wait on a server that doesn't answer
        client = JobClient(kind, config.cluster.namespace, configuration)
        found = client.list(f"{RUN_ID_LABEL}={run_id_label(run_id)}", timeout=5)
    except (KubetuneError, *API_ERRORS) as exc:
        logger.debug("the %s of run %s could not be read: %s", kind.kind, run_id, exc)
        return None
    if not found:
        return None
    job = found[-1]
    state, detail = job_state(kind, job)
    extra = "; ".join(part for part in (detail, progress(job)) if part)
    return (f"{kind.kind} {config.cluster.namespace}/{job['metadata']['name']}: {state or 'submitted'}"
            + (f" ({extra})" if extra else ""))


# -------------------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class Schedule:
    """When a recurring run starts runs: exactly one of `cron` (KFP's 6-field form) and `interval_seconds`."""

    cron: str | None = None
    interval_seconds: int | None = None
    max_concurrency: int = 1
    catchup: bool = False
    start_time: str | None = None  # RFC 3339, UTC
    end_time: str | None = None

    def describe(self) -> str:
        when = f"cron '{self.cron}'" if self.cron else f"every {_duration(self.interval_seconds or 0)}"
        return f"{when}, at most {self.max_concurrency} at a time, catch-up {'on' if self.catchup else 'off'}"


MAX_CONCURRENCY = 10  # the KFP API server's limit for a recurring run
MIN_INTERVAL_SECONDS = 60
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_DAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
# (name, lowest, highest, names of the values from `lowest` on); KFP's scheduler (robfig/cron v1) counts
# days of the week 0-6 from Sunday.
_CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day of week", 0, 6, _DAYS),
)
_CRON_SHORTHANDS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
_INTERVAL_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def make_schedule(
    *,
    cron: str | None = None,
    every: str | None = None,
    max_concurrency: int = 1,
    catchup: bool = False,
    start: str | None = None,
    end: str | None = None,
    now: dt.datetime | None = None,
) -> Schedule:
    """Check the schedule options and convert them to what the KFP API takes."""
    if (cron is None) == (every is None):
        raise KubetuneError("schedule: give exactly one of --cron EXPR and --every DURATION")
    if not 1 <= max_concurrency <= MAX_CONCURRENCY:
        raise KubetuneError(f"--max-concurrency {max_concurrency}: KFP allows 1 to {MAX_CONCURRENCY} runs at a time")
    start_time = parse_time(start, "--start") if start else None
    end_time = parse_time(end, "--end") if end else None
    if end_time and end_time <= (now or dt.datetime.now(dt.UTC)):
        raise KubetuneError(f"--end {end}: is in the past, so the schedule would never start a run")
    if start_time and end_time and end_time <= start_time:
        raise KubetuneError(f"--end {end}: is not after --start {start}")
    return Schedule(
        cron=kfp_cron(cron) if cron is not None else None,
        interval_seconds=interval_seconds(every) if every is not None else None,
        max_concurrency=max_concurrency, catchup=catchup,
        start_time=_rfc3339(start_time) if start_time else None, end_time=_rfc3339(end_time) if end_time else None,
    )


def kfp_cron(expression: str) -> str:
    """A usual 5-field cron expression (minute hour day-of-month month day-of-week), or a shorthand such
    as @daily, in the 6-field form with seconds first that KFP's scheduler reads.

    KFP would read a 5-field expression as seconds-first too, silently shifting every field by one, so
    5 fields are required and 6 refused.
    """
    text = " ".join(expression.split())
    fields = _CRON_SHORTHANDS.get(text.lower(), text).split(" ")
    if len(fields) != 5:
        hint = (
            "; 6 fields look like KFP's seconds-first form: give the usual 5, kubetune adds the seconds"
            if len(fields) == 6 else ""
        )
        raise KubetuneError(
            f"--cron {expression!r}: expected 5 fields (minute hour day-of-month month day-of-week), e.g. "
            f"'0 2 * * 1' for Mondays at 02:00; got {len(fields) if text else 0}{hint}"
        )
    for value, (name, low, high, names) in zip(fields, _CRON_FIELDS, strict=True):
        _check_cron_field(expression, value, name, low, high, names)
    return "0 " + " ".join(fields)


def _check_cron_field(expression: str, value: str, name: str, low: int, high: int, names: tuple[str, ...]) -> None:
    def fail(problem: str) -> KubetuneError:
        return KubetuneError(f"--cron {expression!r}: {name} field {value!r}: {problem}")

    def number(text: str) -> int:
        if text.upper() in names:
            return low + names.index(text.upper())
        if not text.isdigit():
            allowed = f" or a name ({names[0]}-{names[-1]})" if names else ""
            raise fail(f"{text!r} is not a number{allowed}")
        result = int(text)
        if not low <= result <= high:
            sunday = "; Sunday is 0" if name == "day of week" and result == 7 else ""
            raise fail(f"{result} is outside {low}-{high}{sunday}")
        return result

    for part in value.split(","):
        base, slash, step = part.partition("/")
        if slash and not (step.isdigit() and int(step) > 0):
            raise fail(f"step {step!r} is not a positive whole number")
        if base == "*" or (base == "?" and name.startswith("day")):
            continue
        first, dash, last = base.partition("-")
        start = number(first)
        if dash and number(last) < start:
            raise fail(f"range {base!r} runs backwards")


def interval_seconds(text: str) -> int:
    """A duration such as 30m, 12h, 1d, 1w or 1h30m, in seconds (at least a minute)."""
    compact = text.strip().lower().replace(" ", "")
    if not re.fullmatch(r"(\d+[smhdw])+", compact):
        raise KubetuneError(
            f"--every {text!r}: not a duration; write numbers with units s, m, h, d or w, e.g. 30m, 12h, 1d, 1w, 1h30m"
        )
    seconds = sum(int(amount) * _INTERVAL_UNITS[unit] for amount, unit in re.findall(r"(\d+)([smhdw])", compact))
    if seconds < MIN_INTERVAL_SECONDS:
        raise KubetuneError(f"--every {text!r}: runs must be at least 1m apart")
    return seconds


def parse_time(text: str, option: str) -> dt.datetime:
    """An ISO 8601 time, in UTC; a time without an offset is this machine's local time."""
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise KubetuneError(
            f"{option} {text!r}: not an ISO 8601 time; e.g. 2025-07-01T02:00:00Z, 2025-07-01T02:00+02:00 or 2025-07-01"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return moment.astimezone(dt.UTC)


def _rfc3339(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ScheduledRun:
    recurring_run_id: str
    name: str
    experiment: str
    experiment_id: str
    schedule: Schedule
    url: str


def schedule(
    server: KfpServer,
    config: RunConfig,
    when: Schedule,
    *,
    name: str,
    experiment: str | None = None,
    enable_caching: bool | None = None,
    scoring: BatchScoring | None = None,
) -> ScheduledRun:
    """Create a recurring run of the kubetune pipeline (with `scoring`: of the batch-scoring pipeline) in the
    experiment (created when missing)."""
    experiment = experiment_name(config, experiment)
    what = "kubetune batch scoring" if scoring is not None else "kubetune pipeline"
    with compiled_pipeline(config, enable_caching, scoring) as package, server_errors(server.host), _kfp_prints_hidden():
        found = server.client.create_experiment(name=experiment, namespace=config.cluster.namespace)
        recurring = server.client.create_recurring_run(
            experiment_id=found.experiment_id,
            job_name=name,
            description=f"{what}, {when.describe()}",
            start_time=when.start_time,
            end_time=when.end_time,
            interval_second=when.interval_seconds,
            cron_expression=when.cron,
            max_concurrency=when.max_concurrency,
            no_catchup=not when.catchup,
            params=pipeline_arguments(config, scoring),
            pipeline_package_path=str(package),
            enable_caching=enable_caching,
            service_account=config.cluster.service_account,
        )
    return ScheduledRun(
        recurring_run_id=recurring.recurring_run_id, name=name, experiment=experiment,
        experiment_id=found.experiment_id, schedule=when, url=server.recurring_run_url(recurring.recurring_run_id),
    )


# ---------------------------------------------------------------------------------------- status
@dataclass(frozen=True)
class StepStatus:
    name: str
    state: str  # KFP's task state; "-" before the step starts
    started: dt.datetime | None = None
    finished: dt.datetime | None = None
    error: str | None = None


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    name: str
    state: str
    created: dt.datetime | None
    finished: dt.datetime | None
    error: str | None
    steps: tuple[StepStatus, ...]
    parameters: Mapping[str, Any]

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def succeeded(self) -> bool:
        return self.state == "SUCCEEDED"

    @property
    def kubetune_run_id(self) -> str:
        """The id that names the run's outputs, MLflow tag and PyTorchJob label: the KFP run id unless the
        `run_id` parameter was set."""
        return str(self.parameters.get("run_id") or "") or self.run_id

    @property
    def is_batch_scoring(self) -> bool:
        """A run of the batch-scoring pipeline: only it takes a `model` parameter."""
        return is_batch_scoring(self.parameters)

    def states(self) -> tuple[str, ...]:
        return (self.state, *(step.state for step in self.steps))


def run_status(server: KfpServer, run_id: str) -> RunStatus:
    """The run's state and the state of each kubetune step, from the KFP API."""
    import kfp_server_api

    with server_errors(server.host):
        try:
            run = server.client.get_run(run_id)
        except kfp_server_api.ApiException as exc:
            if exc.status == 404:
                raise KubetuneError(
                    f"run {run_id}: not found at {server.host}; check the id (`kubetune submit` prints it, "
                    "the KFP UI lists runs)"
                ) from None
            raise
    tasks = (run.run_details.task_details if run.run_details else None) or []
    parameters = dict(run.runtime_config.parameters or {}) if run.runtime_config else {}
    steps = []
    for step in PREDICT_STEPS if is_batch_scoring(parameters) else STEPS:
        # A retried step appears once per attempt: the newest attempt is the step's state.
        attempts = sorted(
            (task for task in tasks if task.display_name == step),
            key=lambda task: _time(task.create_time) or _time(task.start_time) or _UNSET_TIME,
        )
        if not attempts:
            steps.append(StepStatus(step, "-"))
            continue
        task = attempts[-1]
        steps.append(StepStatus(
            step, task.state or "PENDING", _time(task.start_time), _time(task.end_time), _error_text(task.error),
        ))
    return RunStatus(
        run_id=run.run_id, name=run.display_name or "", state=run.state or "PENDING", created=_time(run.created_at),
        finished=_time(run.finished_at), error=_error_text(run.error), steps=tuple(steps), parameters=parameters,
    )


def is_batch_scoring(parameters: Mapping[str, Any]) -> bool:
    return "model" in parameters


def follow_run(
    server: KfpServer,
    run_id: str,
    on_change: Callable[[RunStatus | None, RunStatus], None],
    poll_seconds: float = 10.0,
) -> RunStatus:
    """Poll the run until it ends; call `on_change(previous, current)` whenever a state changes."""
    previous: RunStatus | None = None
    while True:
        current = run_status(server, run_id)
        if previous is None or current.states() != previous.states():
            on_change(previous, current)
        if current.done:
            return current
        previous = current
        time.sleep(poll_seconds)


def watch_run(server: KfpServer, run_id: str, poll_seconds: float | None = None) -> RunStatus:
    """Follow the run to its end, printing a line per state change; return its final status."""

    def show(previous: RunStatus | None, current: RunStatus) -> None:
        for line in change_lines(previous, current):
            print_main(line)

    return follow_run(server, run_id, show, POLL_SECONDS if poll_seconds is None else poll_seconds)


def change_lines(previous: RunStatus | None, current: RunStatus, now: dt.datetime | None = None) -> list[str]:
    """One line per state that changed since `previous`, for a log that follows a run."""
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%H:%M:%S")
    lines = []
    if previous is None or previous.state != current.state:
        lines.append(f"{stamp}  run {current.state}")
    before = {step.name: step.state for step in previous.steps} if previous else {}
    for step in current.steps:
        if step.state != before.get(step.name, "-"):
            took = f" after {_duration(_seconds(step.started, step.finished))}" if step.finished and step.started else ""
            lines.append(f"{stamp}  {step.name} {step.state}{took}")
    return lines


def run_config(status: RunStatus) -> RunConfig | None:
    """The run's resolved config, as its validate step resolves it from the parameters; None when the
    parameters hold no inline kubetune config (a config given by URI, or a run kubetune didn't create)."""
    from kubetune.pipeline.steps import resolve_run_config

    params = status.parameters
    text = str(params.get("config") or "")
    if "config" not in params or (text and "\n" not in text.strip()):
        return None
    try:
        return resolve_run_config(
            text, [str(item) for item in params.get("overrides") or []],
            data_uri=str(params.get("data_uri") or ""), base_model=str(params.get("base_model") or ""),
            epochs=float(params.get("epochs") or 0), learning_rate=float(params.get("learning_rate") or 0),
            workers=int(params.get("workers") or 0), gpus_per_worker=int(params.get("gpus_per_worker") or 0),
            launcher=str(params.get("launcher") or ""),
        )
    except (KubetuneError, ValueError, TypeError) as exc:
        logger.debug("run %s: its config parameter does not resolve (%s)", status.run_id, exc)
        return None


def mlflow_run_url(config: RunConfig, kubetune_run_id: str) -> str | None:
    """The MLflow UI link of the pipeline run's MLflow run (found by its tag), or None when not found."""
    uri = config.tracking.tracking_uri
    if not (config.tracking.enable and uri and uri.startswith(("http://", "https://"))):
        return None
    # A status report waits seconds, not MLflow's default minutes, for a server it can't reach.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(config.tracking.experiment_name)
        runs = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{kubetune_run_id}'", max_results=1
        ) if experiment else []
    except Exception as exc:  # noqa: BLE001 - the run's status is still worth showing without its MLflow link
        logger.warning("MLflow at %s did not answer (%s); the run's MLflow link is not shown", uri, type(exc).__name__)
        return None
    if not runs:
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment.experiment_id}/runs/{runs[0].info.run_id}"


def status_report(server: KfpServer, status: RunStatus) -> str:
    """`format_status` with the run's config and MLflow link looked up."""
    config = run_config(status)
    training = config is not None and not status.is_batch_scoring
    mlflow_url = mlflow_run_url(config, status.kubetune_run_id) if training else None
    job = training_job_state(config, status.kubetune_run_id) if training and config.cluster.launcher in CLUSTER_LAUNCHERS else None
    return format_status(server, status, config, mlflow_url, job_state=job)


def format_status(
    server: KfpServer, status: RunStatus, config: RunConfig | None, mlflow_url: str | None,
    now: dt.datetime | None = None, job_state: str | None = None,
) -> str:
    """The run, a table of its steps (state, start, duration), its MLflow run and its training job (its state
    and progress when Kubernetes could be asked: `job_state`)."""
    now = now or dt.datetime.now(dt.UTC)
    age = ""
    if status.created:
        took = _duration(_seconds(status.created, status.finished or now))
        age = f", took {took}" if status.finished else f", {took} since it was created"
    lines = [
        f"run       {status.run_id}  {status.name}".rstrip(),
        f"state     {status.state}{age}",
        f"KFP UI    {server.run_url(status.run_id)}",
        "",
    ]
    rows = []
    for step in status.steps:
        took = ""
        if step.started:
            took = _duration(_seconds(step.started, step.finished or now)) + ("" if step.finished else " so far")
        rows.append([step.name, step.state, _clock(step.started), took])
    lines.append(format_table(["step", "state", "started (UTC)", "duration"], rows))
    failures = [(step.name, step.error) for step in status.steps if step.error]
    if status.error and not failures:
        failures.append(("run", status.error))
    if failures:
        lines.append("")
        lines += [f"error     {name}: {error}" for name, error in failures]
    lines.append("")
    if status.is_batch_scoring:  # no MLflow run and no PyTorchJob: what it scored, and where the predictions went
        output = str(status.parameters.get("output_uri") or "")
        lines += [
            f"model     {status.parameters.get('model') or ''}".rstrip(),
            f"data      {status.parameters.get('data_uri') or ''}".rstrip(),
            f"output    {output.replace('{run_id}', status.run_id) + ' and ' if output else ''}the run's predictions artifact",
        ]
        return "\n".join(lines)
    tag = f"{RUN_ID_TAG}={status.kubetune_run_id}"
    if mlflow_url:
        lines.append(f"MLflow    {mlflow_url}  (tag {tag})")
    elif config is not None and config.tracking.enable and config.tracking.tracking_uri:
        lines.append(
            f"MLflow    runs tagged {tag} in experiment '{config.tracking.experiment_name}' at "
            f"{config.tracking.tracking_uri}"
        )
    else:
        lines.append(f"MLflow    runs tagged {tag}")
    if config is None or config.cluster.launcher in CLUSTER_LAUNCHERS:
        hint = kubectl_hint(config.cluster.namespace if config else None, status.kubetune_run_id,
                            config.cluster.launcher if config else "pytorchjob")
        if job_state:
            lines += [f"job       {job_state}", f"          {hint}"]
        else:
            lines.append(f"job       {hint}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- helpers
def _time(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return None if value <= _UNSET_TIME else value


def _error_text(error: Any) -> str | None:
    message = " ".join(str(getattr(error, "message", None) or "").split())
    return message[:300] or None


def _seconds(start: dt.datetime | None, end: dt.datetime | None) -> float:
    return max(0.0, (end - start).total_seconds()) if start and end else 0.0


def _duration(seconds: float) -> str:
    total = int(round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def _clock(moment: dt.datetime | None) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S") if moment else ""
