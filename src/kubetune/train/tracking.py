"""MLflow for the trainer: only rank 0 talks to MLflow, and MLflow is never why training stops.

The run's lifecycle (create, params, end) is kubetune.tracking's; this is the trainer's view of it:
it ends only a run it opened itself (a pipeline's run is ended by the pipeline's exit handler).

Which run: $MLFLOW_RUN_ID (the pipeline's run, see DEVELOPERS.md) → the run this OUT logged to
before a restart (OUT/run.json) → a new run in `tracking.experiment_name`. Where:
`tracking.tracking_uri` → $MLFLOW_TRACKING_URI → a SQLite store in OUT/mlruns (a local OUT only).

A server that is down or stops answering: every call runs with short timeouts and few retries
(kubetune.tracking.client_for); the first failure is warned about once, then calls
are skipped for RETRY_AFTER_S seconds and tried again (a server that comes back gets the later
metrics); what was never logged is listed when training ends.
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kubetune import tracking
from kubetune.config import RunConfig
from kubetune.distributed import is_main_process
from kubetune.tracking import RUN_ID_TAG, flatten_params, tracking_uri
from kubetune.train.outputs import MLFLOW_DIR, OutputPaths

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 30.0


def metric_key(name: str) -> str:
    """Trainer log names → MLflow names: `loss` → train/loss, `eval_macro_f1` → eval/macro_f1."""
    if "/" in name:
        return name
    for split in ("eval", "test"):
        if name.startswith(f"{split}_"):
            return f"{split}/{name[len(split) + 1:]}"
    if name == "train_loss":
        return "train/mean_loss"  # the Trainer's average over the run, not the last logged loss
    return f"train/{name.removeprefix('train_')}"


def numeric_metrics(logs: Mapping[str, Any]) -> dict[str, float]:
    return {
        metric_key(name): float(value)
        for name, value in logs.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
    }


def _reason(exc: Exception) -> str:
    """A short cause: MLflow wraps connection errors in a long message whose useful part is the errno."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    cause = re.search(r"\[Errno -?\d+\][^\"')]*|Read timed out|timed out", text)
    return f"{type(exc).__name__}: {cause.group(0) if cause else text[:200]}"


class Tracker:
    """One MLflow run seen from the trainer; a disabled Tracker (other ranks, tracking off) does nothing."""

    def __init__(self, uri: str | None, experiment_name: str, run_name: str | None = None,
                 tags: Mapping[str, str] | None = None, previous_run_id: str | None = None,
                 artifact_location: str | None = None):
        self.uri = uri
        self.enabled = uri is not None
        self.experiment_name = experiment_name
        self.run_name = run_name
        self.tags = dict(tags or {})
        self.previous_run_id = previous_run_id
        self.artifact_location = artifact_location
        self.run_id: str | None = None
        self.owns_run = False
        self._client: Any = None
        self._retry_at = 0.0
        self._first_error: str | None = None
        self._missed: dict[str, int] = {}

    @property
    def in_pipeline_run(self) -> bool:
        """Logging into a pipeline's run (MLFLOW_RUN_ID), which the pipeline's steps own and end."""
        return self.enabled and bool(os.environ.get("MLFLOW_RUN_ID"))

    # ------------------------------------------------------------------------------ construction
    @classmethod
    def disabled(cls) -> Tracker:
        return cls(None, "")

    @classmethod
    def for_training(cls, config: RunConfig, paths: OutputPaths, previous: Mapping[str, Any] | None) -> Tracker:
        """The tracker of this process: the real one on the main process, a disabled one elsewhere."""
        if not is_main_process() or not config.tracking.enable:
            return cls.disabled()
        uri = tracking_uri(config)
        artifact_location = None
        if uri is None:
            if paths.remote:
                logger.warning(
                    "MLflow: no tracking.tracking_uri or $MLFLOW_TRACKING_URI and the output is on object storage; "
                    "this training is not tracked (set tracking.tracking_uri)"
                )
                return cls.disabled()
            store = paths.local_root / MLFLOW_DIR
            store.mkdir(parents=True, exist_ok=True)
            uri = f"sqlite:///{store / 'mlflow.db'}"
            artifact_location = (store / "artifacts").as_uri()
        previous_run_id = None
        if previous and previous.get("tracking_uri") == uri:
            previous_run_id = previous.get("mlflow_run_id")
        tags = dict(config.tracking.tags)
        if os.environ.get("KUBETUNE_RUN_ID"):
            tags[RUN_ID_TAG] = os.environ["KUBETUNE_RUN_ID"]
        # A run of its own (no pipeline run to log into) is named like a pipeline's: after the run id, when there is one.
        run_name = config.tracking.run_name or os.environ.get("KUBETUNE_RUN_ID") or None
        return cls(uri, config.tracking.experiment_name, run_name, tags, previous_run_id, artifact_location)

    # ----------------------------------------------------------------------------------- logging
    def start(self, config: RunConfig) -> None:
        """Open (or find again) the run and log the resolved config as params, secrets masked."""
        params = flatten_params(config.model_dump(mode="json"))
        self._attempt("params", len(params), lambda: self._log_new_params(params))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.enabled or not metrics:
            return

        def send() -> None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            entries = [Metric(key, value, now, step) for key, value in metrics.items()]
            for start in range(0, len(entries), tracking.LOG_BATCH):
                self._client.log_batch(self.run_id, metrics=entries[start : start + tracking.LOG_BATCH])

        self._attempt("metric values", len(metrics), send)

    def log_artifacts(self, files: list[Path], artifact_path: str | None = None) -> None:
        for file in files:
            where = f"{artifact_path}/{file.name}" if artifact_path else file.name
            self._attempt(f"artifact {where}", 1,
                          lambda f=file: self._client.log_artifact(self.run_id, str(f), artifact_path))

    def finish(self, status: str) -> None:
        """End the run we opened (FINISHED, FAILED or KILLED) and say what never reached MLflow."""
        if self.enabled and self.owns_run and self.run_id is not None:
            self._attempt("run status", 1, lambda: tracking.end_run(self._client, self.run_id, status))
        for line in self.not_logged():
            logger.warning(line)

    def not_logged(self) -> list[str]:
        if not self._missed:
            return []
        counted = [f"{count} {what}" for what, count in self._missed.items() if not what.startswith("artifact ")]
        artifacts = [what.removeprefix("artifact ") for what in self._missed if what.startswith("artifact ")]
        if artifacts:
            counted.append(f"{len(artifacts)} artifacts ({', '.join(artifacts)})")
        return [f"MLflow at {self.uri}: not logged: {'; '.join(counted)} (first error: {self._first_error})"]

    # -------------------------------------------------------------------------------- internals
    def _attempt(self, what: str, count: int, action: Callable[[], None]) -> bool:
        if not self.enabled:
            return False
        if time.monotonic() < self._retry_at:
            self._missed[what] = self._missed.get(what, 0) + count
            return False
        try:
            self._ensure_run()
            action()
            return True
        except Exception as exc:  # noqa: BLE001 - a tracking failure must never stop training
            self._missed[what] = self._missed.get(what, 0) + count
            self._retry_at = time.monotonic() + RETRY_AFTER_S
            if self._first_error is None:
                self._first_error = _reason(exc)
                logger.warning(
                    "MLflow at %s failed (%s); training goes on, MLflow is retried every %.0f s and what is not "
                    "logged is listed at the end", self.uri, self._first_error, RETRY_AFTER_S,
                )
            return False

    def _ensure_run(self) -> None:
        if self.run_id is not None:
            return
        from mlflow.exceptions import MlflowException

        if self._client is None:
            self._client = tracking.client_for(self.uri)
        pipeline_run = os.environ.get("MLFLOW_RUN_ID") or None
        for candidate in (pipeline_run, self.previous_run_id):
            if not candidate:
                continue
            try:
                self._client.get_run(candidate)
            except MlflowException as exc:
                if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                    raise
                logger.warning("MLflow run %s not found at %s; starting a new run", candidate, self.uri)
                continue
            self.run_id = candidate
            # The pipeline's run belongs to the pipeline; a run of ours that a restart continues is ours.
            self.owns_run = candidate != pipeline_run
            if self.owns_run:
                self._client.update_run(candidate, status="RUNNING")
            return
        experiment_id = tracking.experiment_id_for(self._client, self.experiment_name, self.artifact_location)
        self.run_id = tracking.create_run(self._client, experiment_id, self.run_name, self.tags)
        self.owns_run = True

    def _log_new_params(self, params: Mapping[str, str]) -> None:
        tracking.log_params(self._client, self.run_id, params)


class TrackingCallback(TrainerCallback):
    """Sends every Trainer log (with the speed and memory figures added) to MLflow from rank 0."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs:
            self.tracker.log_metrics(numeric_metrics(logs), step=state.global_step)
