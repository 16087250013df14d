"""The pipeline's MLflow run, from its beginning to its end: the one module that creates, names, fills and ends it.

A pipeline run has one MLflow run. The validate step opens it (`open_pipeline_run`): named after the
kubetune run id (the KFP run id on a cluster), tagged `kubetune.run_id` so that every later step finds
it again, with a description, the resolved config as params and the train/validation/test data as its
dataset inputs. The trainer's rank 0 logs into it through MLFLOW_RUN_ID (kubetune.train.tracking), the
evaluate step adds the test metrics and the model (kubetune.serving), and the pipeline's exit handler
ends it (`finish_pipeline_run`): FINISHED, FAILED when any step failed, KILLED when it was cancelled.

Tracking never fails a run: when the server can't be reached the step warns and goes on untracked.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune import storage
from kubetune.config import RunConfig

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

RUN_ID_TAG = "kubetune.run_id"
KFP_RUN_ID_TAG = "kfp.run_id"
DESCRIPTION_TAG = "mlflow.note.content"  # what the MLflow UI shows as the run's description
CONTEXT_TAG = "mlflow.data.context"  # what the MLflow UI's Datasets panel shows as a dataset's role
END_STATUSES = ("FINISHED", "FAILED", "KILLED")
DATA_SPLITS = ("train", "validation", "test")
_SECRET_WORDS = ("password", "secret", "token", "access_key", "credential", "apikey", "api_key")
LOG_BATCH = 100  # MLflow's limit of params (and a sane number of metrics) per log_batch call


def tracking_uri(config: RunConfig) -> str | None:
    """The MLflow tracking URI of a run: the config's, else $MLFLOW_TRACKING_URI, else None."""
    return config.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


LOCAL_STORE_FILE = "mlflow.db"  # `kubetune run`'s MLflow store (and registry) when none is configured: <runs_uri>/mlflow.db


def local_store_uri(runs_dir: str | Path) -> str:
    """The SQLite store `kubetune run` keeps under its runs folder when no tracking URI is configured."""
    return f"sqlite:///{Path(runs_dir).expanduser().resolve() / LOCAL_STORE_FILE}"


def tracking_uri_or_local_store(config: RunConfig) -> str | None:
    """The configured tracking URI, else the store of local `kubetune run`s when one exists under
    storage.runs_uri: what `kubetune predict` and `kubetune promote` on this machine mean by models:/..."""
    configured = tracking_uri(config)
    if configured or storage.is_remote(config.storage.runs_uri):
        return configured
    store = Path(config.storage.runs_uri).expanduser() / LOCAL_STORE_FILE
    return local_store_uri(store.parent) if store.is_file() else None


def quick_failing_client_env() -> None:
    """A dead tracking server should cost seconds, not MLflow's default minutes of retries."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as flat MLflow params (`training.learning_rate` → "0.0002"), secrets masked."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
            continue
        text = "***" if any(word in str(key).lower() for word in _SECRET_WORDS) else str(value)
        flat[name] = text[:6000]  # MLflow's limit on a param value
    return flat


def client_for(uri: str) -> MlflowClient:
    from mlflow.tracking import MlflowClient

    quick_failing_client_env()
    return MlflowClient(tracking_uri=uri)


def experiment_id_for(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


# ------------------------------------------------------------------------------------- one run
def create_run(client: MlflowClient, experiment_id: str, run_name: str | None, tags: Mapping[str, str],
               description: str | None = None) -> str:
    """A new RUNNING run; its id."""
    all_tags = dict(tags)
    if description:
        all_tags[DESCRIPTION_TAG] = description
    return client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, str]) -> None:
    """Params already in the run (logged by an earlier step or before a restart) are immutable in MLflow: kept."""
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params
    changed = sorted(key for key, value in params.items() if key in existing and existing[key] != value)
    if changed:
        logger.warning("MLflow run %s already has other values for %s; kept as they are", run_id, ", ".join(changed[:10]))
    entries = [Param(key, value) for key, value in params.items() if key not in existing]
    for start in range(0, len(entries), LOG_BATCH):
        client.log_batch(run_id, params=entries[start : start + LOG_BATCH])


def end_run(client: MlflowClient, run_id: str, status: str) -> None:
    """End `run_id` with `status` and the end time now (its duration in the UI)."""
    if status not in END_STATUSES:
        raise ValueError(f"an MLflow run ends {', '.join(END_STATUSES)}, not {status!r}")
    client.set_terminated(run_id, status=status, end_time=int(time.time() * 1000))


# ----------------------------------------------------------------------------- the pipeline's run
def run_description(config: RunConfig, config_name: str) -> str:
    """The run's description in the MLflow UI (markdown): what was trained on what, from which config."""
    lines = [f"kubetune run of `{config_name or 'inline YAML'}`",
             f"- data: `{train_source(config)}`", f"- base model: `{config.model.name}`"]
    for key in ("validation_uri", "test_uri"):
        value = getattr(config.data, key)
        if value:
            lines.append(f"- {key.replace('_uri', '')} data: `{value}`")
    return "\n".join(lines)


def train_source(config: RunConfig) -> str:
    """data.uri, or the `task: sft` inputs of data.sources joined."""
    return config.data.uri or ", ".join(config.data.sources)


def split_sources(config: RunConfig) -> dict[str, str]:
    """Where each split's rows come from: its own file when the config names one, else data.uri (data.sources)."""
    train = train_source(config)
    return {"train": train, "validation": config.data.validation_uri or train, "test": config.data.test_uri or train}


def log_datasets(client: MlflowClient, run_id: str, config: RunConfig, fingerprint: str) -> None:
    """The train/validation/test splits as the run's dataset inputs (the UI's Datasets panel).

    Each split is its own dataset (MLflow keeps one input per dataset name and digest); the digest is
    the data fingerprint, which changes exactly when the content of an input changes.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag

    inputs = []
    for split, source in split_sources(config).items():
        scheme = source.split("://", 1)[0] if "://" in source else "local"
        base = source.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or source
        dataset = Dataset(name=f"{base}:{split}", digest=fingerprint, source_type=scheme,
                          source=json.dumps({"uri": source}))
        inputs.append(DatasetInput(dataset, tags=[InputTag(CONTEXT_TAG, split)]))
    client.log_inputs(run_id, datasets=inputs)


def find_pipeline_run(client: MlflowClient, experiment_name: str, run_id: str) -> str | None:
    """The MLflow run of pipeline run `run_id`, or None."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return None
    found = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'",
                               max_results=1)
    return found[0].info.run_id if found else None


def open_pipeline_run(config: RunConfig, run_id: str, *, fingerprint: str = "", config_name: str = "",
                      on_kubeflow: bool | None = None) -> str | None:
    """The id of the MLflow run of pipeline run `run_id`: created and filled the first time, found after."""
    uri = tracking_uri(config)
    if not config.tracking.enable:
        return None
    if uri is None:
        logger.warning("MLflow: no tracking.tracking_uri and no $MLFLOW_TRACKING_URI; this run is not tracked")
        return None
    try:
        client = client_for(uri)
        found = find_pipeline_run(client, config.tracking.experiment_name, run_id)
        if found:
            # The same run id again (a rerun that resumes a stopped run): the run runs again, and ends anew.
            if client.get_run(found).info.status != "RUNNING":
                client.update_run(found, status="RUNNING")
            return found
        if on_kubeflow is None:
            on_kubeflow = bool(os.environ.get("KFP_POD_NAME") or os.environ.get("KUBERNETES_SERVICE_HOST"))
        tags = {**config.tracking.tags, RUN_ID_TAG: run_id}
        if on_kubeflow:
            tags[KFP_RUN_ID_TAG] = run_id
        experiment_id = experiment_id_for(client, config.tracking.experiment_name)
        mlflow_run_id = create_run(client, experiment_id, config.tracking.run_name or run_id, tags,
                                   run_description(config, config_name))
        log_params(client, mlflow_run_id, flatten_params(config.model_dump(mode="json")))
        if fingerprint:
            log_datasets(client, mlflow_run_id, config, fingerprint)
        return mlflow_run_id
    except Exception as exc:  # noqa: BLE001 - tracking must never fail a run
        logger.warning("MLflow at %s could not be reached (%s: %s); this run is not tracked", uri, type(exc).__name__, exc)
        return None


def status_of_kfp_state(state: str) -> str:
    """The MLflow end status of a pipeline whose tasks ended in KFP state `state` (PipelineTaskFinalStatus)."""
    state = state.upper()
    if state == "SUCCEEDED":
        return "FINISHED"
    if state in ("CANCELLED", "CANCELED", "CANCELLING", "CANCELING"):
        return "KILLED"
    return "FAILED"


def finish_pipeline_run(config: RunConfig, run_id: str, status: str) -> str | None:
    """End the MLflow run of pipeline run `run_id` with `status` when it is still RUNNING; its id, or None.

    A run that already ended keeps its status: ending twice (the exit handler, then `kubetune run`
    after an interrupt) records the first end, which is the one that happened.
    """
    uri = tracking_uri(config)
    if not config.tracking.enable or uri is None:
        return None
    try:
        client = client_for(uri)
        mlflow_run_id = find_pipeline_run(client, config.tracking.experiment_name, run_id)
        if mlflow_run_id is None:
            return None
        if client.get_run(mlflow_run_id).info.status == "RUNNING":
            end_run(client, mlflow_run_id, status)
        return mlflow_run_id
    except Exception as exc:  # noqa: BLE001 - tracking must never fail a run
        logger.warning("MLflow at %s: run %s was not ended %s (%s: %s)", uri, run_id, status, type(exc).__name__, exc)
        return None

