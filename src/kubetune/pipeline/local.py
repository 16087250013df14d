"""`kubetune run`: the Kubeflow pipeline, executed on this machine by kfp.local.

The very pipeline that runs on a cluster runs here, step by step, each step a subprocess
(kfp.local's SubprocessRunner, no containers); training goes through the `local` launcher (torchrun,
CPU ranks without a GPU), MLflow tracks into a SQLite store and artifacts stay in a local folder:

    runs/
      mlflow.db, mlartifacts/     the MLflow store (`mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`)
      kfp/                        each pipeline run's step outputs (kfp.local's pipeline root)
      kfp-cache/                  kfp.local's step cache: same inputs → preprocess and tokenize are skipped
      <run id>/train/             the trainer's checkpoints and final model
      <run id>/summary.json       what the run printed at the end (LocalRunSummary)

The run's MLflow run ends FINISHED or FAILED through the pipeline's exit handler, which kfp.local (2.17)
runs like a cluster does, after a failed step too. An interrupted `kubetune run` (Ctrl-C, SIGTERM) never
reaches the exit handler — the orchestrator itself stops — so `run_local` ends the run KILLED itself.
A failed or interrupted run leaves no empty folders behind; files (checkpoints a rerun resumes from,
the MLflow store) stay.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from kubetune import storage
from kubetune.config import RunConfig, load_config
from kubetune.console import format_table
from kubetune.errors import EXIT_TERMINATED, KubetuneError
from kubetune.evaluation.baseline import BASELINE_METRICS_FILE, comparison_lines
from kubetune.pipeline.steps import CONFIG_NAME_ENV, TIMINGS_ENV
from kubetune.train.history import (
    HEADERS,
    EvaluationRow,
    evaluation_rows,
    more_epochs_hint,
    read_training_history,
    table_rows,
)

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
STEPS = ("validate", "preprocess", "tokenize", "train", "evaluate", "promote")


@dataclass
class LocalRunSummary:
    run_id: str
    runs_dir: str
    seconds: float
    step_seconds: dict[str, float | None]  # None: served from kfp.local's cache
    test_metrics: dict[str, float] = field(default_factory=dict)
    baseline_metrics: dict[str, float] = field(default_factory=dict)  # the TF-IDF baseline's; empty without one
    model_dir: str = ""
    report: str = ""
    evaluation_dir: str = ""
    mlflow_tracking_uri: str = ""
    mlflow_run_id: str = ""
    # Each evaluation on the validation split during training (kubetune.train.history); empty for a
    # model saved without training_history.json.
    evaluations: list[EvaluationRow] = field(default_factory=list)
    training_hint: str = ""  # one line when the last evaluation was still clearly the best
    task: str = "classification"  # the model's (model_metadata.json); sft shows perplexity, not accuracy
    # The promote step's result (kubetune.promotion.PromotionResult.to_dict); empty when it did not run.
    promotion: dict[str, Any] = field(default_factory=dict)


class PipelineTerminated(BaseException):
    """SIGTERM stopped `kubetune run` (a BaseException: kfp.local's orchestrator must not catch it)."""

    exit_code = EXIT_TERMINATED


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def absolute_local_uris(config: RunConfig) -> RunConfig:
    """Relative data paths are read from where `kubetune run` was started, not from a step's cwd."""
    updates = {}
    for key in ("uri", "validation_uri", "test_uri"):
        value = getattr(config.data, key)
        if value and not storage.is_remote(value) and "://" not in value:
            updates[key] = str(Path(value).expanduser().resolve())
    if updates:
        config.data = config.data.model_copy(update=updates)
    config.storage = config.storage.model_copy(update={"runs_uri": str(Path(config.storage.runs_uri).expanduser().resolve())})
    return config


def run_local(config_path: str | None, overrides: list[str], run_id: str | None = None) -> LocalRunSummary:
    """Run the whole pipeline here; raise KubetuneError with the failing step's message on failure."""
    # Validate here first: a config error is reported before kfp.local starts anything.
    config = load_config(config_path or DEFAULT_CONFIG, overrides)
    storage.check_location("storage.runs_uri", config.storage.runs_uri, [storage.LOCAL],
                           why="`kubetune run` keeps its outputs, MLflow store and step cache in a local folder")
    storage.check_output_location("storage.runs_uri", config.storage.runs_uri)
    config = absolute_local_uris(config)
    if config.cluster.launcher != "local":
        config.cluster = config.cluster.model_copy(update={"launcher": "local"})
    from kubetune.train.arguments import check_gpu_ranks

    check_gpu_ranks(config.cluster.gpus_per_worker)  # here, not only in the train step after the data steps
    runs_dir = Path(config.storage.runs_uri)
    run_id = run_id or new_run_id()
    run_dir = runs_dir / run_id
    created = [path for path in (runs_dir, run_dir, runs_dir / "kfp", runs_dir / "kfp-cache") if not path.exists()]
    earlier_pipeline_runs = set(_children(runs_dir / "kfp"))
    runs_dir.mkdir(parents=True, exist_ok=True)

    tracking_uri = _local_tracking(config, runs_dir)
    # The run folder is made by the first step that writes into it; the steps' records wait outside it.
    handle, records = tempfile.mkstemp(prefix=f"kubetune-{run_id}-", suffix=".jsonl")
    os.close(handle)
    timings_file = Path(records)
    env = {TIMINGS_ENV: str(timings_file), "TQDM_MININTERVAL": "10", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
           CONFIG_NAME_ENV: str(config_path or DEFAULT_CONFIG)}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri

    from kfp import local

    from kubetune.pipeline.pipeline import kubetune_pipeline_for

    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(runs_dir / "kfp"),
        enable_caching=True,
        cache_root=str(runs_dir / "kfp-cache"),
        raise_on_error=True,
    )
    pipeline = kubetune_pipeline_for(config.cluster)  # kfp.local ignores the Kubernetes settings
    # The steps name the kubetune image; here they run in this very environment, which has kubetune.
    warnings.filterwarnings("ignore", message="You may be attemping to run a task that uses custom",
                            category=RuntimeWarning)
    warnings.filterwarnings("ignore", message=r"Task .* have no effect in the current local runner", category=UserWarning)
    started = time.perf_counter()
    print(f"kubetune run {run_id}: {' → '.join(STEPS)}  (outputs in {runs_dir})", flush=True)
    log = _StepLogFilter(sys.stdout)
    finished = False
    try:
        with _environment(env), contextlib.redirect_stdout(log), _sigterm_stops_the_steps():
            pipeline(config=config.to_yaml(), overrides=[], launcher="local", run_id=run_id)
        finished = True
    except RuntimeError as exc:
        raise KubetuneError(f"the pipeline failed: {_failure_reason(exc, log)}") from None
    except (KeyboardInterrupt, PipelineTerminated):
        from kubetune.tracking import finish_pipeline_run

        closing = config.model_copy(update={"tracking": config.tracking.model_copy(update={"tracking_uri": tracking_uri})})
        finish_pipeline_run(closing, run_id, "KILLED")
        raise
    finally:
        log.flush()
        steps = _read_records(timings_file)
        timings_file.unlink(missing_ok=True)
        if not finished:
            remove_empty_folders([*(set(_children(runs_dir / "kfp")) - earlier_pipeline_runs), *created])
    elapsed = time.perf_counter() - started

    summary = _summarize(steps, run_id, runs_dir, elapsed, tracking_uri)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary


def _children(folder: Path) -> list[Path]:
    return list(folder.iterdir()) if folder.is_dir() else []


# What kfp.local writes for a step (its output parameters): worth nothing once the run failed.
_STEP_RECORD = "executor_output.json"


def remove_empty_folders(created: list[Path]) -> None:
    """In the folders of `created` (made by this run), remove every folder that holds no file; a folder that
    holds nothing but kfp.local's step records goes whole.

    Files stay: checkpoints a rerun resumes from, a step's artifacts that kfp.local's cache points at,
    anything of the user's.
    """
    for folder in created:
        if not folder.is_dir() or folder.is_symlink():
            continue
        contents = sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True)
        if not any(path.is_symlink() or (path.is_file() and path.name != _STEP_RECORD) for path in contents):
            for path in contents:
                path.unlink() if path.is_file() else path.rmdir()
            folder.rmdir()
            continue
        for path in contents:
            if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
                path.rmdir()


@contextlib.contextmanager
def _sigterm_stops_the_steps():
    """SIGTERM (what `kill` and Kubernetes send) to `kubetune run`: pass it on to the running step and the
    processes it started (torchrun and its ranks checkpoint on it), then stop the pipeline."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        import psutil

        for child in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.send_signal(signal.SIGTERM)
        raise PipelineTerminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _local_tracking(config: RunConfig, runs_dir: Path) -> str | None:
    """The MLflow store of local runs: the config's or the environment's, else SQLite under runs/."""
    if not config.tracking.enable:
        return None
    configured = config.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    from kubetune.tracking import client_for, experiment_id_for, local_store_uri

    uri = local_store_uri(runs_dir)

    # Artifacts beside the database, not in ./mlruns of whatever directory a step runs in.
    experiment_id_for(client_for(uri), config.tracking.experiment_name, (runs_dir / "mlartifacts").as_uri())
    return uri


@contextlib.contextmanager
def _environment(values: dict[str, str]):
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _StepLogFilter(io.TextIOBase):
    """Pass the steps' logs through, minus kfp.local's dumps of each step's executor input JSON and
    of each task's outputs (the confusion matrix of hundreds of classes is thousands of characters);
    the summary at the end says where everything is."""

    def __init__(self, target: TextIO):
        self.target = target
        self.pending = ""
        self.skip_until: str | None = None  # the line that ends the block being skipped
        self.json_block = False
        self.step_errors: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        if self.json_block:
            # The JSON's first line is its opening brace: its indentation marks the closing one.
            self.json_block = False
            self.skip_until = line.rstrip().replace("{", "}")
            return
        if self.skip_until is not None:
            if line.rstrip() == self.skip_until or (self.skip_until == "-" and set(line.strip()) == {"-"}):
                self.skip_until = None
            return
        if "Got executor_input:" in line:
            self.json_block = True
            return
        if "Wrote executor output file" in line or "Looking for component `" in line or "Loading KFP component \"" in line:
            return
        if line.rstrip().endswith(" outputs:") and " - INFO - Task " in line:
            self.skip_until = "-"  # kfp.local ends the block with a horizontal line
            return
        if "kubetune: error:" in line:
            self.step_errors.append(line.strip().split("kubetune: error:", 1)[1].strip())
        self.target.write(line + "\n")
        self.target.flush()

    def flush(self) -> None:
        if self.pending:
            self._line(self.pending)
            self.pending = ""
        self.target.flush()


def _failure_reason(exc: RuntimeError, log: _StepLogFilter) -> str:
    if log.step_errors:
        return log.step_errors[-1]
    return str(exc).strip().splitlines()[-1] if str(exc).strip() else "a step failed (see its log above)"


def _read_records(path: Path) -> dict[str, dict[str, Any]]:
    """The steps that ran, by name: their seconds and output paths (see kubetune.pipeline.steps.run_step)."""
    if not path.exists():
        return {}
    return {entry["step"]: entry for entry in map(json.loads, path.read_text().splitlines())}


def _summarize(steps: dict[str, dict[str, Any]], run_id: str, runs_dir: Path, elapsed: float,
               tracking_uri: str | None) -> LocalRunSummary:
    model_dir = Path(steps.get("train", {}).get("outputs", {}).get("model", ""))
    evaluation_dir = Path(steps.get("evaluate", {}).get("outputs", {}).get("evaluation", ""))
    metrics_file = evaluation_dir / "metrics.json"
    test_metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    baseline_file = evaluation_dir / BASELINE_METRICS_FILE
    baseline_metrics = json.loads(baseline_file.read_text()) if baseline_file.exists() else {}
    # The same page as the step's HTML artifact, under a name a browser opens by double-click.
    report = evaluation_dir / "report.html"
    mlflow_run_id, task = "", "classification"
    metadata = model_dir / "model_metadata.json"
    if metadata.exists():
        written = json.loads(metadata.read_text())
        mlflow_run_id = written.get("mlflow_run_id", "") or ""
        task = written.get("task", "classification")
    history = read_training_history(model_dir) if "model" in steps.get("train", {}).get("outputs", {}) else None
    promotion_file = Path(steps.get("promote", {}).get("outputs", {}).get("promotion", ""))
    promotion = json.loads(promotion_file.read_text()) if promotion_file.is_file() else {}
    return LocalRunSummary(
        run_id=run_id, runs_dir=str(runs_dir), seconds=round(elapsed, 1),
        step_seconds={step: steps[step]["seconds"] if step in steps else None for step in STEPS},
        test_metrics={k: v for k, v in test_metrics.items() if isinstance(v, (int, float))},
        baseline_metrics={k: v for k, v in baseline_metrics.items() if isinstance(v, (int, float))},
        model_dir=str(model_dir), report=str(report), evaluation_dir=str(evaluation_dir),
        mlflow_tracking_uri=tracking_uri or "", mlflow_run_id=mlflow_run_id,
        evaluations=evaluation_rows(history) if history is not None else [],
        training_hint=(more_epochs_hint(history) or "") if history is not None else "",
        task=task,
        promotion=promotion,
    )


def format_summary(summary: LocalRunSummary) -> str:
    steps = [(step, f"{seconds:.1f}" if seconds is not None else "cached") for step, seconds in summary.step_seconds.items()]
    lines = [format_table(["step", "seconds"], steps + [("total", f"{summary.seconds:.1f}")], title=f"run {summary.run_id}")]
    if summary.evaluations and summary.task == "sft":
        from kubetune.train.causal_lm import HISTORY_HEADERS, perplexity

        rows = [(*row[:4], f"{perplexity(r.eval_loss):.2f}" if r.eval_loss is not None else "-", row[-1])
                for row, r in zip(table_rows(summary.evaluations), summary.evaluations, strict=True)]
        lines.append(format_table(HISTORY_HEADERS, rows, title="validation during training"))
    elif summary.evaluations:
        lines.append(format_table(HEADERS, table_rows(summary.evaluations), title="validation during training"))
        if summary.training_hint:
            lines.append(summary.training_hint)
    if summary.test_metrics and summary.baseline_metrics:
        lines.extend(comparison_lines(summary.test_metrics, summary.baseline_metrics, first_header="test metric"))
    elif summary.test_metrics:
        # Counts (sft's rows and tokens) come back from metrics.json as floats: show them as counts.
        shown = [(name, int(value) if isinstance(value, float) and value.is_integer() and abs(value) >= 1 else value)
                 for name, value in summary.test_metrics.items()]
        lines.append(format_table(["test metric", "value"], shown))
    if summary.promotion:
        from kubetune.promotion import PromotionResult

        lines.extend(PromotionResult.from_dict(summary.promotion).summary_lines())
    lines.append(f"model:       {summary.model_dir}")
    lines.append(f"report:      {summary.report}")
    if summary.mlflow_tracking_uri:
        lines.append(f"MLflow run:  {summary.mlflow_run_id or '(see the experiment)'} in {summary.mlflow_tracking_uri}")
        if summary.mlflow_tracking_uri.startswith("sqlite:///"):
            lines.append(f"open it:     mlflow ui --backend-store-uri {summary.mlflow_tracking_uri}")
    return "\n".join(lines)
