"""What each pipeline step does, in plain Python: the KFP components are one-line wrappers over these.

The steps receive the run config as YAML text. The first step (`validate`) resolves the user's config,
overrides and pipeline parameters once, checks the data, fingerprints it and opens the pipeline's
MLflow run; it hands each later step only the config sections that step uses, so that KFP's cache
(keyed on a step's inputs) re-runs preprocess and tokenize only when something they depend on changed
— a new learning rate doesn't re-tokenize, and new data under the same URI does (the fingerprint).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml

from kubetune.config import (
    YAML_SUFFIXES,
    RunConfig,
    config_from_yaml_text,
    deep_merge,
    parse_overrides,
    validate_config,
)
from kubetune.errors import KubetuneError, print_error

T = TypeVar("T")

# Config sections each cached step depends on (its cache key is these, plus its input artifacts).
PREPROCESS_SECTIONS = ("data", "split", "serialize", "storage")
TOKENIZE_SECTIONS = ("tokenize", "storage")

# Set by `kubetune run`: each step appends its wall time and its output paths here (steps served from
# the cache don't run).
TIMINGS_ENV = "KUBETUNE_STEP_TIMINGS"
# Set by `kubetune run`, which hands the pipeline the resolved YAML text: the config file it came from.
CONFIG_NAME_ENV = "KUBETUNE_CONFIG_NAME"


def run_step(name: str, body: Callable[[], T], outputs: dict[str, str] | None = None) -> T:
    """Run a step body; a user error ends the step with the CLI's one-line message and exit code 2.

    `outputs` (artifact name → path) are recorded for `kubetune run`'s summary.
    """
    started = time.perf_counter()
    try:
        result = body()
    except KubetuneError as error:
        raise SystemExit(print_error(str(error), error.exit_code)) from None  # 2, or 143 after SIGTERM
    _record_timing(name, time.perf_counter() - started, outputs or {})
    return result


def _record_timing(step: str, seconds: float, outputs: dict[str, str]) -> None:
    path = os.environ.get(TIMINGS_ENV)
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps({"step": step, "seconds": round(seconds, 2), "outputs": outputs}) + "\n")


# --------------------------------------------------------------------------------------- the config
def names_a_file(text: str) -> bool:
    """The `config` parameter is a path or URI of a YAML file (one line that looks like one), not YAML text."""
    return bool(text) and "\n" not in text and (
        text.startswith(("s3://", "minio://", "/", "./", "../")) or text.endswith(YAML_SUFFIXES))


def read_config_source(config: str) -> dict[str, Any]:
    """The `config` pipeline parameter: YAML text, or the path / s3:// URI of a YAML file, or empty."""
    text = config.strip()
    if not text:
        return {}
    if names_a_file(text):
        from kubetune.config import read_yaml

        return read_yaml(text)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KubetuneError(f"config: the `config` parameter is not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise KubetuneError("config: the `config` parameter must be YAML sections (data, split, ...) or a path/URI of a YAML file")
    return data


def resolve_run_config(
    config: str,
    overrides: list[str] | None = None,
    *,
    data_uri: str = "",
    base_model: str = "",
    epochs: float = 0.0,
    learning_rate: float = 0.0,
    workers: int = 0,
    gpus_per_worker: int = 0,
    launcher: str = "",
) -> RunConfig:
    """The config, then `overrides`, then the explicit pipeline parameters that are set (empty/0: unset)."""
    data = read_config_source(config)
    data = deep_merge(data, parse_overrides(overrides or []))
    explicit = {
        "data.uri": data_uri,
        "model.name": base_model,
        "training.epochs": epochs,
        "training.learning_rate": learning_rate,
        "cluster.workers": workers,
        "cluster.gpus_per_worker": gpus_per_worker,
        "cluster.launcher": launcher,
    }
    for key, value in explicit.items():
        if value not in ("", 0, 0.0, None):
            section, field = key.split(".")
            data = deep_merge(data, {section: {field: value}})
    return validate_config(data, source="pipeline parameters")


def config_name(config: str) -> str:
    """What the run's config is called: the file the `config` parameter names, else what `kubetune run` says."""
    text = config.strip()
    if names_a_file(text):
        return text
    return os.environ.get(CONFIG_NAME_ENV, "")


def task_sections(config: RunConfig, sections: tuple[str, ...]) -> tuple[str, ...]:
    """A data step's sections, plus `task` and `sft` for an SFT run (a classification run's stay as they were,
    and so do its steps' cache keys)."""
    return (*sections, "task", "sft") if config.task == "sft" else sections


def sections_yaml(config: RunConfig, sections: tuple[str, ...]) -> str:
    """Only `sections` of the config, as YAML: the input of a step that uses just those."""
    dumped = yaml.safe_load(config.to_yaml())
    return yaml.safe_dump({name: dumped[name] for name in task_sections(config, sections)}, sort_keys=True)


def tokenize_config_yaml(config: RunConfig) -> str:
    """The tokenize step's config: its section with the tokenizer resolved (so `model.name` is not needed)."""
    dumped = yaml.safe_load(config.to_yaml())
    chosen = {name: dumped[name] for name in task_sections(config, TOKENIZE_SECTIONS)}
    chosen["tokenize"]["model_name"] = config.tokenizer_name
    return yaml.safe_dump(chosen, sort_keys=True)


# --------------------------------------------------------------------------------------- the steps
def validate_step(
    config: str,
    overrides: list[str],
    data_uri: str,
    base_model: str,
    epochs: float,
    learning_rate: float,
    workers: int,
    gpus_per_worker: int,
    launcher: str,
    run_id: str,
) -> dict[str, str]:
    """Resolve and check everything a run needs before any expensive step starts."""
    resolved = resolve_run_config(
        config, overrides, data_uri=data_uri, base_model=base_model, epochs=epochs, learning_rate=learning_rate,
        workers=workers, gpus_per_worker=gpus_per_worker, launcher=launcher,
    )
    for warning in resolved.warnings:
        print(f"kubetune: warning: {warning}", file=sys.stderr, flush=True)
    if not (resolved.data.uri or resolved.data.sources):
        raise KubetuneError("data.uri: no data given; set data.uri in the config or the data_uri pipeline parameter")
    if resolved.cluster.launcher == "local":
        from kubetune.train.causal_lm import check_quantization

        check_quantization(resolved)  # the local launcher trains on this machine: no GPU is an error now, not later
    from kubetune.data.stages import input_fingerprint
    from kubetune.tracking import open_pipeline_run

    fingerprint = input_fingerprint(resolved)
    mlflow_run_id = open_pipeline_run(resolved, run_id, fingerprint=fingerprint, config_name=config_name(config)) or ""
    print(f"config valid; data fingerprint {fingerprint}; run {run_id}; MLflow run {mlflow_run_id or '(not tracked)'}", flush=True)
    return {
        "preprocess_config": sections_yaml(resolved, PREPROCESS_SECTIONS),
        "tokenize_config": tokenize_config_yaml(resolved),
        "run_config": resolved.to_yaml(),
        "data_fingerprint": fingerprint,
        "mlflow_run_id": mlflow_run_id,
        "run_id": run_id,
    }


def finalize_step(config: str, overrides: list[str], run_id: str, state: str) -> str:
    """The exit handler: end the run's MLflow run FINISHED, FAILED or KILLED, as the pipeline's tasks ended.

    It runs whatever happened before, a config error included: then validate opened no MLflow run and
    there is nothing to end.
    """
    from kubetune.tracking import finish_pipeline_run, status_of_kfp_state

    status = status_of_kfp_state(state)
    try:
        resolved = resolve_run_config(config, overrides)
    except KubetuneError:
        print(f"pipeline {state.lower()}; the config does not resolve, so no MLflow run was opened", flush=True)
        return status
    mlflow_run_id = finish_pipeline_run(resolved, run_id, status)
    print(f"pipeline {state.lower()}; MLflow run {mlflow_run_id or '(none)'} ended {status}", flush=True)
    return status


def preprocess_step(config: str, output_path: str) -> dict[str, Any]:
    from kubetune.data.stages import preprocess

    result = preprocess(config_from_yaml_text(config, "preprocess config"), output_uri=output_path)
    return {"rows": dict(result.rows), "num_real_labels": result.num_real_labels, "max_classes": result.max_classes}


def tokenize_step(config: str, input_path: str, output_path: str, diagnostics_path: str) -> None:
    from kubetune.data.stages import tokenize
    from kubetune.data.tokenization import diagnostics_markdown

    tokenize(config_from_yaml_text(config, "tokenize config"), input_uri=input_path, output_uri=output_path)
    diagnostics = json.loads((Path(output_path) / "tokenize_diagnostics.json").read_text())
    Path(diagnostics_path).write_text(diagnostics_markdown(diagnostics))


def train_step(config: str, data_uri: str, run_id: str, mlflow_run_id: str, model_path: str) -> dict[str, float]:
    """Run the trainer through the configured launcher; copy the final model into the step's artifact."""
    from kubetune import storage
    from kubetune.launchers import TrainRequest, get_launcher

    resolved = config_from_yaml_text(config, "run config")
    output_uri = train_output_uri(resolved, run_id)
    request = TrainRequest(
        config=resolved, data_uri=storage.normalize_uri(data_uri), output_uri=output_uri,
        run_id=run_id, mlflow_run_id=mlflow_run_id or None,
    )
    result = get_launcher(resolved.cluster.launcher).launch(request)
    with _local_copy(f"{result.output_uri.rstrip('/')}/model", resolved) as model_dir:
        shutil.copytree(model_dir, model_path, dirs_exist_ok=True)
    metrics_file = Path(model_path) / "training_metrics.json"
    return json.loads(metrics_file.read_text()) if metrics_file.exists() else {}


def train_output_uri(config: RunConfig, run_id: str) -> str:
    """Where the trainer of run `run_id` writes (checkpoints and model): stable across step retries."""
    from kubetune import storage

    root = config.storage.runs_uri
    if not storage.is_remote(root):
        root = str(Path(root).expanduser().resolve())
    return f"{root.rstrip('/')}/{run_id}/train"


@contextlib.contextmanager
def _local_copy(uri: str, config: RunConfig) -> Iterator[Path]:
    import tempfile

    from kubetune import storage

    if not storage.is_remote(uri):
        yield Path(uri)
        return
    with tempfile.TemporaryDirectory(prefix="kubetune-model-") as scratch:
        yield storage.download(uri, scratch, config.storage)


def evaluate_step(config: str, model_path: str, data_path: str, output_path: str, mlflow_run_id: str) -> Any:
    from kubetune.evaluation import evaluate

    resolved = config_from_yaml_text(config, "run config")
    return evaluate(resolved, model_uri=model_path, data_uri=data_path, output_uri=output_path,
                    mlflow_run_id=mlflow_run_id or None)


def promote_step(config: str, evaluation_path: str, run_id: str, mlflow_run_id: str, summary_path: str,
                 promotion_path: str) -> dict[str, Any]:
    """Register the run's model and apply promote.policy (kubetune.promotion): the Markdown summary at
    `summary_path`, the result as JSON at `promotion_path`; returns it as a dict."""
    import logging

    from kubetune import tracking
    from kubetune.promotion import not_registered, promote_run

    resolved = config_from_yaml_text(config, "run config")
    uri = tracking.tracking_uri(resolved) if resolved.tracking.enable else None
    try:
        result = promote_run(resolved, evaluation_uri=evaluation_path, mlflow_run_id=mlflow_run_id or None,
                             run_id=run_id, tracking_uri=uri)
    except KubetuneError:
        raise
    except Exception as exc:  # noqa: BLE001 - tracking never fails a run: the summary says what happened
        logging.getLogger(__name__).warning("promote: the MLflow registry failed", exc_info=True)
        result = not_registered(resolved, exc, uri)
    for line in result.summary_lines():
        print(line, flush=True)
    Path(summary_path).write_text(result.to_markdown())
    Path(promotion_path).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result.to_dict()


# --------------------------------------------------------------------------------- batch scoring
# In the predict pipeline's `output_uri`, replaced by the run id: a schedule's runs each write their own file.
RUN_ID_PLACEHOLDER = "{run_id}"
# kubetune.inference names its arguments as `kubetune predict` does; the step's messages name the pipeline's
# parameters instead.
PARAMETER_OF_OPTION = {"--model": "model", "--data": "data_uri", "--output": "output_uri"}


def predict_step(
    config: str,
    overrides: list[str],
    model: str,
    data_uri: str,
    output_uri: str,
    run_id: str,
    predictions_path: str,
    summary_path: str,
    predictions_uri: str = "",
) -> dict[str, Any]:
    """Score the rows at `data_uri` with `model`: the predictions Parquet at `predictions_path` (the step's
    artifact, whose URI is `predictions_uri`) and, when `output_uri` is given, published there too; the
    Markdown summary at `summary_path`.

    Returns the summary as a dict (the artifact's metadata).
    """
    import dataclasses

    from kubetune import storage
    from kubetune.inference import predict_file

    resolved = resolve_run_config(config, overrides)
    model, data_uri = model.strip(), data_uri.strip()
    output_uri = output_uri.strip().replace(RUN_ID_PLACEHOLDER, run_id)
    with _named_as_pipeline_parameters():
        check_predict_inputs(resolved, model, data_uri, output_uri)
        summary = predict_file(model, data_uri, predictions_path, resolved)
    # The summary names the artifact by its URI, not by the path it has inside this pod.
    summary = dataclasses.replace(summary, output=predictions_uri or predictions_path)
    markdown = summary.to_markdown()
    if output_uri:
        storage.publish_file(predictions_path, output_uri, resolved.storage)
        markdown += f"\nPredictions also written to `{output_uri}`.\n"
        print(f"predictions written to {output_uri}", flush=True)
    Path(summary_path).write_text(markdown)
    return summary.to_dict()


def check_predict_inputs(config: RunConfig, model: str, data_uri: str, output_uri: str) -> None:
    """The predict step's parameters, checked before the model is loaded or any output is touched
    (predict_file checks the model reference itself)."""
    from kubetune import storage
    from kubetune.data.load import check_exists
    from kubetune.inference import check_predictions_output

    if not model:
        raise KubetuneError(
            "model: no model given; set the `model` pipeline parameter to a train output's model/ folder "
            "(s3://bucket/runs/<run id>/train/model) or a registry reference (models:/<name>@champion)"
        )
    if not data_uri:
        raise KubetuneError("data_uri: no rows to score given; set the `data_uri` pipeline parameter (s3://bucket/new-lines.parquet)")
    problem = storage.unsupported_scheme(data_uri, also=("demo",))
    if problem:
        raise KubetuneError(f"data_uri: {problem}")
    check_exists(data_uri, "data_uri", config.storage)
    if output_uri:
        check_predictions_output(output_uri, config.storage)


@contextlib.contextmanager
def _named_as_pipeline_parameters() -> Iterator[None]:
    """A one-line error that starts with a `kubetune predict` option starts with the parameter's name instead."""
    from kubetune.errors import DataError

    try:
        yield
    except (KubetuneError, DataError) as error:
        message = str(error)
        renamed = next((parameter + message[len(option):] for option, parameter in PARAMETER_OF_OPTION.items()
                        if message.startswith((f"{option}:", f"{option} "))), None)
        if renamed is None or type(error) not in (KubetuneError, DataError):
            raise
        raise type(error)(renamed) from None
