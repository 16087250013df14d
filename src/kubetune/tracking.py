"""The pipeline's MLflow run: one per pipeline run, found again by its tag from every step.

The first step opens the run (tagged `kubetune.run_id` with the pipeline run's id, which on Kubeflow is
the KFP run id) and every later step — the trainer's rank 0 through MLFLOW_RUN_ID — logs into it, so a
user goes from a KFP run to its MLflow run (search the tag) and back (the run's `kfp.run_id` tag).
Tracking never fails a run: when the server can't be reached the step warns and goes on untracked.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from kubetune.config import RunConfig

logger = logging.getLogger(__name__)

RUN_ID_TAG = "kubetune.run_id"
KFP_RUN_ID_TAG = "kfp.run_id"
_SECRET_WORDS = ("password", "secret", "token", "access_key", "credential", "apikey", "api_key")


def tracking_uri(config: RunConfig) -> str | None:
    """The MLflow tracking URI of a run: the config's, else $MLFLOW_TRACKING_URI, else None."""
    return config.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None


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


def ensure_pipeline_run(config: RunConfig, run_id: str) -> str | None:
    """The id of the MLflow run tagged with this pipeline run (created, with params, the first time)."""
    uri = tracking_uri(config)
    if not config.tracking.enable:
        return None
    if uri is None:
        logger.warning("MLflow: no tracking.tracking_uri and no $MLFLOW_TRACKING_URI; this run is not tracked")
        return None
    quick_failing_client_env()
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(config.tracking.experiment_name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(config.tracking.experiment_name)
        found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'", max_results=1)
        if found:
            return found[0].info.run_id
        tags = {RUN_ID_TAG: run_id, **config.tracking.tags}
        if os.environ.get("KFP_POD_NAME") or os.environ.get("KUBERNETES_SERVICE_HOST"):
            tags[KFP_RUN_ID_TAG] = run_id
        run = client.create_run(experiment_id, run_name=config.tracking.run_name, tags=tags)
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in flatten_params(config.model_dump(mode="json")).items()]
        for start in range(0, len(params), 100):  # MLflow's batch limit
            client.log_batch(run.info.run_id, params=params[start : start + 100])
        return run.info.run_id
    except Exception as exc:  # noqa: BLE001 - tracking must never fail a run
        logger.warning("MLflow at %s could not be reached (%s: %s); this run is not tracked", uri, type(exc).__name__, exc)
        return None
