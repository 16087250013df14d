"""The model registry and the champion gate: what the pipeline's promote step (after evaluate) and `kubetune promote` do.

A run whose evaluate step logged its model (kubetune.serving) adds it to the MLflow registry as a new
version of `registry.model_name` (default: the experiment's name), tagged with the run's test and
baseline metrics, the data fingerprint and the config. Then the gate (`promote.policy: gate`) decides
whether the `promote.alias` (`champion`) moves to it:

1. the candidate must beat the TF-IDF baseline (evaluate's baseline_metrics.json, same rows) on accuracy
   and macro F1 — the first model ever is promoted on that alone;
2. the current champion is scored, with kubetune.inference.Predictor, on the candidate's own test rows
   (evaluate's test_rows.parquet: the raw columns, so a champion that reads other columns or serializes them
   otherwise reads them its own way), and the candidate must beat it on `promote.metric` by strictly more than
   `promote.margin`. A champion whose label map lacks some of the test rows' labels (new codes appeared) is
   compared on the rows whose labels both know; how many rows that left out is said.

The decision, its reason and both figures go onto the new version and the MLflow run as tags, into the step's
Markdown (KFP UI) and into `kubetune run`'s summary (`PromotionResult.summary_lines`).

A `task: sft` run (its model logged as a kubetune.serving.KubetuneGenerator) is gated the same way on `loss` (the test
loss per trained token: lower wins, by strictly more than the margin) or `exact_match` (of evaluate's generated
sample), with no TF-IDF baseline. The champion is scored on the candidate's own test rows (test_rows.parquet: the
raw format columns) rendered and tokenized with its own settings and tokenizer (its model_metadata.json, its
tokenizer and chat template): for loss, teacher-forced, against the candidate's loss on the same rows
(row_losses.parquet; rows the champion cuts to no trained token are left out, and counted); for exact_match, greedy
completions of the candidate's generated sample (generations.parquet) judged against the same expected texts.

`always` promotes
whatever the figures, `never` leaves the alias for a person (`kubetune promote --run-id RUN
promote.policy=always`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kubetune import storage
from kubetune.errors import DataError, KubetuneError, short_reason

if TYPE_CHECKING:
    from collections.abc import Iterator

    import pandas as pd
    from mlflow.tracking import MlflowClient

    from kubetune.config import RunConfig

logger = logging.getLogger(__name__)

TAG = "kubetune."
PROMOTION_TAG = "kubetune.promotion."
CONFIG_TAG = "kubetune.config"
# Model-version tag values were capped at 5000 characters before MLflow 3 (100k since): a long config is split
# over kubetune.config, kubetune.config.2, ... so that any server takes it (`config_from_tags` joins them).
TAG_VALUE_LIMIT = 5000
METRIC_LABELS = {"accuracy": "accuracy", "macro_f1": "macro F1", "weighted_f1": "weighted F1",
                 "macro_precision": "macro precision", "macro_recall": "macro recall",
                 "weighted_precision": "weighted precision", "weighted_recall": "weighted recall",
                 "loss": "loss per token", "exact_match": "exact match"}
LOWER_IS_BETTER = ("loss",)  # = kubetune.evaluation.sft.GATE_METRIC (GATE_GREATER_IS_BETTER false)
NO_BASELINE = "no baseline to beat (evaluate.baseline: none)"
SFT_NO_BASELINE = "task: sft has no TF-IDF baseline"
# What the candidate must beat the baseline on (= kubetune.evaluation.baseline.HEADLINE).
BASELINE_METRICS = ("accuracy", "macro_f1")
PREDICTIONS_FILE = "predictions.parquet"  # evaluate's: the true and predicted label of each test row


# ---------------------------------------------------------------------------------------- the result
@dataclass(frozen=True)
class PromotionResult:
    """What the promote step decided, with the figures it decided on."""

    model_name: str
    alias: str
    policy: str
    metric: str
    margin: float
    version: str | None = None  # the candidate's registered version; None: not registered
    promoted: bool = False  # the alias points at `version` now
    reason: str = ""  # why, in one sentence
    candidate: float | None = None  # the candidate's `metric` on the rows compared with the champion (all test rows without one)
    baseline: float | None = None  # the baseline's `metric` on all test rows; None with evaluate.baseline: none
    champion: float | None = None  # the champion's `metric` on the compared rows; None: no champion, or not scored
    champion_version: str | None = None  # the version the alias pointed at before
    compared_rows: int = 0
    excluded_rows: int = 0  # test rows the champion cannot score (a label it never knew; sft: no trained token left)
    test_rows: int = 0

    @property
    def metric_label(self) -> str:
        return METRIC_LABELS.get(self.metric, self.metric)

    @property
    def is_sft(self) -> bool:
        from kubetune.config import SFT_PROMOTE_METRICS

        return self.metric in SFT_PROMOTE_METRICS

    @property
    def decision(self) -> str:
        if self.version is None:
            return "not registered"
        return "promoted" if self.promoted else "not promoted"

    def summary_lines(self) -> list[str]:
        """`kubetune run`'s summary: lines starting "promotion: "."""
        if self.version is None:
            return [f"promotion: not registered: {self.reason}"]
        head = f"promotion: {self.model_name} version {self.version} "
        if self.promoted:
            lines = [head + f"promoted to {self.alias}: {self.reason}"]
        else:
            stays = f"{self.alias} stays version {self.champion_version}" if self.champion_version else f"no {self.alias} yet"
            lines = [head + f"not promoted: {self.reason}; {stays}"]
        if self.excluded_rows:
            why = (f"leave no trained token within version {self.champion_version}'s sft.max_seq_length"
                   if self.is_sft else f"have a label version {self.champion_version} was never trained on")
            lines.append(f"promotion: compared with the {self.alias} on {self.compared_rows:,} of {self.test_rows:,} test rows: "
                         f"{self.excluded_rows:,} rows {why}")
        return lines

    def to_markdown(self) -> str:
        def figure(value: float | None) -> str:
            return f"{value:.4f}" if value is not None else "-"

        rows = [f"| candidate (version {self.version or '-'}) | {figure(self.candidate)} |",
                f"| {self.alias} (version {self.champion_version or '-'}) | {figure(self.champion)} |",
                *([] if self.is_sft else [f"| TF-IDF baseline | {figure(self.baseline)} |"])]
        return "\n".join([
            f"# kubetune promote: {self.decision}", "",
            f"registered model `{self.model_name}`, alias `{self.alias}`, policy `{self.policy}`, margin {self.margin:g}", "",
            *[f"- {line.removeprefix('promotion: ')}" for line in self.summary_lines()], "",
            f"| model | {self.metric_label} |", "|---|---:|", *rows, "",
        ])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decision": self.decision}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromotionResult:
        return cls(**{key: value for key, value in data.items() if key in cls.__dataclass_fields__})

    def tags(self) -> dict[str, str]:
        """The decision and both figures, as MLflow tags (on the version and on the run)."""
        values = {"decision": self.decision, "reason": self.reason, "policy": self.policy, "metric": self.metric,
                  "margin": f"{self.margin:g}", "candidate": self.candidate, "champion": self.champion,
                  "baseline": self.baseline, "champion_version": self.champion_version,
                  "compared_rows": self.compared_rows, "excluded_rows": self.excluded_rows}
        return {f"{PROMOTION_TAG}{key}": str(value)[:TAG_VALUE_LIMIT] for key, value in values.items() if value is not None}


# --------------------------------------------------------------------------------------- the gate
@dataclass(frozen=True)
class ChampionScore:
    """The current champion, scored on the candidate's test rows (or why it could not be)."""

    version: str
    champion: float | None = None
    candidate: float | None = None  # the candidate's figure on the same rows
    compared_rows: int = 0
    excluded_rows: int = 0
    problem: str | None = None  # why it could not be scored; then champion and candidate are None


def decide(policy: str, metric: str, margin: float, candidate: dict[str, float], baseline: dict[str, float],
           champion: ChampionScore | None, no_baseline: str = NO_BASELINE) -> tuple[bool, str]:
    """(promoted, reason). `candidate` and `baseline`: the metrics of all test rows (metrics.json and
    baseline_metrics.json; `baseline` empty without one); `champion`: None when there is none yet. A metric of
    LOWER_IS_BETTER wins by being below the champion's by more than the margin; `no_baseline` says why there is
    no baseline when there is none."""
    label = METRIC_LABELS.get(metric, metric)
    lower = metric in LOWER_IS_BETTER
    if policy == "never":
        return False, "promote.policy is never (move the alias by hand: kubetune promote --run-id RUN promote.policy=always)"
    figure = champion.candidate if champion is not None and champion.candidate is not None else candidate[metric]
    against = []
    if champion is None:
        compared = f"{label} {figure:.4f}"
    elif champion.problem:
        compared = f"the {label} of version {champion.version} unknown"
        against.append(f"version {champion.version} could not be scored on its test rows ({champion.problem})")
    else:
        beyond = f" {'-' if lower else '+'} margin {margin:g}" if margin else ""
        compared = f"{label} {figure:.4f} vs {champion.champion:.4f} of version {champion.version}{beyond}"
        if not (figure < champion.champion - margin if lower else figure > champion.champion + margin):
            against.append(compared)
    lost = [f"{METRIC_LABELS[name]} {candidate[name]:.4f} vs {baseline[name]:.4f}"
            for name in BASELINE_METRICS if name in baseline and name in candidate and candidate[name] <= baseline[name]]
    if lost:
        against.append(f"does not beat the TF-IDF baseline on {' and '.join(lost)}")
    if policy == "always":
        return True, f"promote.policy is always ({compared})"
    if against:
        return False, "; ".join(against)
    if not baseline:
        beaten = no_baseline
    else:
        beaten = "beats the TF-IDF baseline (" + ", ".join(
            f"{METRIC_LABELS[name]} {candidate[name]:.4f} vs {baseline[name]:.4f}" for name in BASELINE_METRICS
            if name in baseline and name in candidate) + ")"
    if champion is None:
        return True, f"the first model: {compared}, {beaten}"
    return True, f"{compared}; {beaten}"


# ------------------------------------------------------------------------------- the candidate's rows
@dataclass(frozen=True)
class Evaluation:
    """What the promote step reads from the evaluate step's output."""

    metrics: dict[str, float]
    baseline: dict[str, float]
    labels: np.ndarray  # the true label (name) of each test row
    predicted: np.ndarray  # the candidate's predicted label (name) of each test row
    rows: pd.DataFrame | None  # the raw columns of the same rows; None when the data predates them

    @property
    def test_rows(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class SftEvaluation:
    """What the promote step reads from a `task: sft` evaluate output (kubetune.evaluation.sft)."""

    metrics: dict[str, float]
    rows: pd.DataFrame | None  # the scored test rows' raw format columns; None when the data predates them
    row_losses: pd.DataFrame | None  # per row of `rows`: `loss` (summed), `tokens` (trained)
    generations: pd.DataFrame | None  # the generated sample: `row`, `expected`, `generated`, `exact_match`
    baseline: dict[str, float] = dataclasses.field(default_factory=dict)  # none for task: sft

    @property
    def test_rows(self) -> int:
        return int(self.metrics.get("rows", 0))


@contextlib.contextmanager
def evaluation_folder(evaluation_uri: str, config: RunConfig, option: str) -> Iterator[Path]:
    """A local copy of the complete evaluate output at `evaluation_uri` (local or object storage), removed after;
    one line naming `option` and the URI when it is not a complete one."""
    if not storage.exists(evaluation_uri, config.storage) or not storage.is_complete(evaluation_uri, config.storage):
        raise KubetuneError(f"{option}: {evaluation_uri} is not a complete evaluate output (no {storage.COMPLETE_MARKER} "
                            "marker); give the folder `kubetune evaluate` or the evaluate step wrote")
    with tempfile.TemporaryDirectory(prefix="kubetune-promote-") as scratch:
        yield storage.download(evaluation_uri, Path(scratch) / "evaluation", config.storage)


def read_evaluation(evaluation_uri: str, config: RunConfig, option: str = "evaluation") -> Evaluation:
    """The evaluate output at `evaluation_uri` (local or object storage): one line naming it when it is not one."""
    import pandas as pd

    from kubetune.evaluation import TEST_ROWS_FILE
    from kubetune.evaluation.baseline import BASELINE_METRICS_FILE

    with evaluation_folder(evaluation_uri, config, option) as folder:
        missing = [name for name in ("metrics.json", PREDICTIONS_FILE) if not (folder / name).is_file()]
        if missing:
            raise DataError(f"{option}: {evaluation_uri} has no {' and no '.join(missing)}; give an evaluate output")
        metrics = json.loads((folder / "metrics.json").read_text())
        baseline_file = folder / BASELINE_METRICS_FILE
        baseline = json.loads(baseline_file.read_text()) if baseline_file.is_file() else {}
        predictions = pd.read_parquet(folder / PREDICTIONS_FILE, columns=["label", "predicted"])
        rows_file = folder / TEST_ROWS_FILE
        rows = pd.read_parquet(rows_file) if rows_file.is_file() else None
    if rows is not None and len(rows) != len(predictions):
        raise DataError(f"{option}: {evaluation_uri}: {TEST_ROWS_FILE} has {len(rows)} rows, {PREDICTIONS_FILE} "
                        f"{len(predictions)}; evaluate again")
    return Evaluation(metrics={k: float(v) for k, v in metrics.items()}, baseline={k: float(v) for k, v in baseline.items()},
                      labels=predictions["label"].astype(str).to_numpy(), predicted=predictions["predicted"].astype(str).to_numpy(),
                      rows=rows)


def read_sft_evaluation(evaluation_uri: str, config: RunConfig, option: str = "evaluation") -> SftEvaluation:
    """A `task: sft` evaluate output at `evaluation_uri`: one line naming it when it is not one."""
    import pandas as pd

    from kubetune.evaluation import TEST_ROWS_FILE
    from kubetune.evaluation.sft import GENERATIONS_FILE, ROW_LOSSES_FILE

    with evaluation_folder(evaluation_uri, config, option) as folder:
        if not (folder / "metrics.json").is_file():
            raise DataError(f"{option}: {evaluation_uri} has no metrics.json; give an evaluate output")
        metrics = json.loads((folder / "metrics.json").read_text())
        if "loss" not in metrics:
            raise DataError(f"{option}: {evaluation_uri} is a classifier's evaluation (no test loss); give the evaluate "
                            "output of a task: sft run")
        frames = {name: pd.read_parquet(folder / name) if (folder / name).is_file() else None
                  for name in (TEST_ROWS_FILE, ROW_LOSSES_FILE, GENERATIONS_FILE)}
    rows, losses = frames[TEST_ROWS_FILE], frames[ROW_LOSSES_FILE]
    if rows is not None and losses is not None and len(rows) != len(losses):
        raise DataError(f"{option}: {evaluation_uri}: {TEST_ROWS_FILE} has {len(rows)} rows, {ROW_LOSSES_FILE} "
                        f"{len(losses)}; evaluate again")
    return SftEvaluation(metrics={k: float(v) for k, v in metrics.items()}, rows=rows, row_losses=losses,
                         generations=frames[GENERATIONS_FILE])


def score_sft_champion(reference: str, version: str, evaluation: SftEvaluation, metric: str, tracking_uri: str,
                       config: RunConfig) -> ChampionScore:
    """Score a `task: sft` champion (`reference`: models:/<name>/<version>) on the candidate's test rows, rendered
    with its own settings and tokenizer: its loss per trained token, or its exact match on the generated sample."""
    from kubetune.data.sft import format_columns
    from kubetune.evaluation import TEST_ROWS_FILE
    from kubetune.evaluation.sft import GENERATIONS_FILE, ROW_LOSSES_FILE, raw_row_losses
    from kubetune.generation import completions, input_columns, sft_settings
    from kubetune.inference import download_registered_model
    from kubetune.train.causal_lm import load_trained_causal_lm

    needed = {"loss": (evaluation.row_losses, ROW_LOSSES_FILE), "exact_match": (evaluation.generations, GENERATIONS_FILE)}
    for frame, name in ((evaluation.rows, TEST_ROWS_FILE), needed[metric]):
        if frame is None:
            return ChampionScore(version, problem=f"the evaluation has no {name}: it was made before the champion gate "
                                                  "scored task: sft; run the pipeline again")
    with tempfile.TemporaryDirectory(prefix="kubetune-champion-") as scratch:
        try:
            model_dir = download_registered_model(reference, Path(scratch), tracking_uri, task="sft")
            model, tokenizer, metadata = load_trained_causal_lm(model_dir)
            sft = sft_settings(metadata, reference)
        except KubetuneError as error:  # a champion of the other task, or registered by hand
            return ChampionScore(version, problem=str(error).removeprefix("--model: "))
        columns = format_columns(sft).values() if metric == "loss" else input_columns(sft)
        missing = [c for c in dict.fromkeys(columns) if c not in evaluation.rows.columns]
        if missing:
            return ChampionScore(version, problem=f"it reads column(s) {', '.join(missing)}, which the candidate's data lacks")
        batch_size = config.training.eval_batch_size
        if metric == "loss":
            losses, tokens = raw_row_losses(model, tokenizer, sft, evaluation.rows, batch_size)
            known = tokens > 0
            if not known.any():
                return ChampionScore(version, excluded_rows=len(tokens),
                                     problem="none of the candidate's test rows keeps a trained token within its sft.max_seq_length")
            theirs = evaluation.row_losses.loc[known]
            return ChampionScore(version, champion=float(losses[known].sum() / tokens[known].sum()),
                                 candidate=float(theirs["loss"].sum() / theirs["tokens"].sum()),
                                 compared_rows=int(known.sum()), excluded_rows=int((~known).sum()))
        sample = evaluation.generations
        prompts = _first_turns(evaluation.rows.iloc[sample["row"].to_numpy()].reset_index(drop=True), sft)
        generated = completions(model, tokenizer, sft, prompts, config.sft.max_new_tokens, batch_size)
    right = [got.strip() == str(want).strip() for got, want in zip(generated, sample["expected"], strict=True)]
    return ChampionScore(version, champion=float(np.mean(right)), candidate=float(sample["exact_match"].mean()),
                         compared_rows=len(right))


def _first_turns(rows: pd.DataFrame, sft) -> pd.DataFrame:
    """Conversations cut after their first assistant turn: the evaluate step's sample asks for the first response
    (kubetune.evaluation.sft.generation_samples), and kubetune.generation prompts for the last."""
    if sft.format != "conversation":
        return rows
    def first(messages):
        messages = list(messages)
        ends = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        return messages[: ends[0] + 1] if ends else messages

    return rows.assign(**{sft.messages_column: [first(m) for m in rows[sft.messages_column]]})


def score_champion(reference: str, version: str, evaluation: Evaluation, metric: str, tracking_uri: str,
                   config: RunConfig) -> ChampionScore:
    """Score the champion (`reference`: models:/<name>/<version>) on the candidate's test rows whose label it knows."""
    from kubetune.evaluation import TEST_ROWS_FILE
    from kubetune.inference import Predictor
    from kubetune.train.metrics import label_metrics

    if evaluation.rows is None:
        return ChampionScore(version, problem=f"the evaluation has no {TEST_ROWS_FILE}: its data was preprocessed before "
                                              "the test split kept its raw columns; run the pipeline again")
    try:
        predictor = Predictor.load(reference, storage=config.storage, tracking_uri=tracking_uri)
    except KubetuneError as error:  # a champion registered by hand, of another kind of model
        return ChampionScore(version, problem=str(error).removeprefix("--model: "))
    missing = [c for c in predictor.input_columns if c not in evaluation.rows.columns]
    if missing:
        return ChampionScore(version, problem=f"it reads column(s) {', '.join(missing)}, which the candidate's data lacks")
    known = np.isin(evaluation.labels, np.asarray(predictor.label_map.real_labels, dtype=object).astype(str))
    excluded = int((~known).sum())
    if not known.any():
        return ChampionScore(version, excluded_rows=excluded,
                             problem="it was trained on none of the labels of the candidate's test rows")
    rows = evaluation.rows.loc[known].reset_index(drop=True)
    probabilities = predictor.probabilities(rows, batch_size=config.predict.batch_size)
    real = np.asarray(predictor.label_map.real_labels, dtype=object).astype(str)
    predicted = real[probabilities.argmax(axis=1)]
    truth = evaluation.labels[known]
    return ChampionScore(version, champion=label_metrics(truth, predicted)[metric],
                         candidate=label_metrics(truth, evaluation.predicted[known])[metric],
                         compared_rows=int(known.sum()), excluded_rows=excluded)


# ------------------------------------------------------------------------------------ the registry
def config_tags(config_yaml: str) -> dict[str, str]:
    """The config as tags: kubetune.config, then kubetune.config.2, .3, ... when it is longer than a tag value."""
    parts = [config_yaml[start : start + TAG_VALUE_LIMIT] for start in range(0, len(config_yaml), TAG_VALUE_LIMIT)] or [""]
    return {CONFIG_TAG if i == 0 else f"{CONFIG_TAG}.{i + 1}": part for i, part in enumerate(parts)}


def config_from_tags(tags: dict[str, str]) -> str:
    """The config YAML that `config_tags` split."""
    parts, index = [tags.get(CONFIG_TAG, "")], 2
    while f"{CONFIG_TAG}.{index}" in tags:
        parts.append(tags[f"{CONFIG_TAG}.{index}"])
        index += 1
    return "".join(parts)


def logged_model_id(client: MlflowClient, mlflow_run_id: str) -> str | None:
    """The id of the MLflow model the evaluate step logged for the run (kubetune.serving), or None."""
    from kubetune.serving import MODEL_NAME

    outputs = client.get_run(mlflow_run_id).outputs
    for output in outputs.model_outputs if outputs else []:
        if client.get_logged_model(output.model_id).name == MODEL_NAME:
            return output.model_id
    return None


def registered_version(client: MlflowClient, name: str, mlflow_run_id: str) -> str | None:
    """The version of `name` already made from the run's model (`kubetune promote` after the pipeline), or None."""
    found = [v for v in client.search_model_versions(f"run_id = '{mlflow_run_id}'") if v.name == name]
    return str(max(int(v.version) for v in found)) if found else None


def register(client: MlflowClient, name: str, mlflow_run_id: str, model_id: str, tags: dict[str, str],
             description: str) -> str:
    """A new version of registered model `name` (created when missing) from the run's logged model; its number."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, description="Registered by kubetune: each successful run adds a version; "
                                                         "the champion alias marks the one in use.")
    source = client.get_logged_model(model_id).artifact_location
    version = client.create_model_version(name, source, run_id=mlflow_run_id, tags=tags, description=description,
                                          model_id=model_id)
    return str(version.version)


def current_champion(client: MlflowClient, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


# ------------------------------------------------------------------------------------------ promote
def promote_run(config: RunConfig, *, evaluation_uri: str, mlflow_run_id: str | None, run_id: str,
                tracking_uri: str | None, run_config_yaml: str | None = None,
                option: str = "evaluation") -> PromotionResult:
    """Register the run's logged model and apply `config.promote` to it.

    `config` gives the registry and promote settings; `run_config_yaml` is the run's own config for the
    version's tags (default: `config`). Bad input (no evaluate output) is a KubetuneError before anything is
    written to the registry; a run that is not tracked, or whose model was not logged, is not registered (said
    in the result, not an error: tracking never fails a run).
    """
    settings = config.promote
    name = config.registered_model_name
    base = PromotionResult(model_name=name, alias=settings.alias, policy=settings.policy, metric=settings.metric,
                           margin=settings.margin)
    sft = config.task == "sft"
    evaluation = read_sft_evaluation(evaluation_uri, config, option) if sft else read_evaluation(evaluation_uri, config, option)
    figures = {"candidate": evaluation.metrics.get(settings.metric), "baseline": evaluation.baseline.get(settings.metric),
               "test_rows": evaluation.test_rows}
    if settings.metric not in evaluation.metrics:
        hint = " (the evaluate step generates it with sft.eval_generations)" if settings.metric == "exact_match" else ""
        raise DataError(f"promote.metric: {settings.metric!r} is not in {evaluation_uri}/metrics.json{hint}")
    if not mlflow_run_id or not tracking_uri:
        return _replace(base, **figures, reason="this run is not tracked in MLflow (tracking.enable, tracking.tracking_uri)")
    from kubetune import tracking

    client = tracking.client_for(tracking_uri)
    model_id = logged_model_id(client, mlflow_run_id)
    if model_id is None:
        return _replace(base, **figures, reason="the run has no logged model (tracking.log_model is false, or logging it "
                                                "failed: see the evaluate step's log)")
    version = registered_version(client, name, mlflow_run_id)
    if version is None:
        tags = {f"{TAG}run_id": run_id, f"{TAG}mlflow_run_id": mlflow_run_id,
                **{f"{TAG}test.{k}": str(v) for k, v in evaluation.metrics.items()},
                **{f"{TAG}baseline.{k}": str(v) for k, v in evaluation.baseline.items()},
                **config_tags(run_config_yaml if run_config_yaml is not None else config.to_yaml())}
        fingerprint = _data_fingerprint(client, mlflow_run_id)
        if fingerprint:
            tags[f"{TAG}data_fingerprint"] = fingerprint
        label = METRIC_LABELS[settings.metric]
        version = register(client, name, mlflow_run_id, model_id, tags,
                           description=f"kubetune run {run_id}: test {label} {evaluation.metrics[settings.metric]:.4f}")
    champion_version = current_champion(client, name, settings.alias)
    if champion_version == version:
        result = _replace(base, **figures, version=version, promoted=True, champion_version=champion_version,
                          reason=f"it already is the {settings.alias}")
        _record(client, mlflow_run_id, result)
        return result
    champion = None
    if champion_version is not None and settings.policy != "never":
        score = score_sft_champion if sft else score_champion
        champion = score(f"models:/{name}/{champion_version}", champion_version, evaluation, settings.metric,
                         tracking_uri, config)
    promoted, reason = decide(settings.policy, settings.metric, settings.margin, evaluation.metrics, evaluation.baseline,
                              champion, no_baseline=SFT_NO_BASELINE if sft else NO_BASELINE)
    if champion is not None and champion.candidate is not None:
        figures["candidate"] = champion.candidate
    result = _replace(base, **figures, version=version, promoted=promoted, reason=reason, champion_version=champion_version,
                      champion=champion.champion if champion else None,
                      compared_rows=champion.compared_rows if champion else evaluation.test_rows,
                      excluded_rows=champion.excluded_rows if champion else 0)
    if promoted:
        client.set_registered_model_alias(name, settings.alias, version)
    _record(client, mlflow_run_id, result)
    return result


def _replace(base: PromotionResult, **changes: Any) -> PromotionResult:
    return dataclasses.replace(base, **changes)


def _data_fingerprint(client: MlflowClient, mlflow_run_id: str) -> str | None:
    """The digest of the run's dataset inputs: the data fingerprint the validate step logged them with."""
    inputs = client.get_run(mlflow_run_id).inputs
    digests = {entry.dataset.digest for entry in (inputs.dataset_inputs if inputs else [])}
    return digests.pop() if len(digests) == 1 else None


def _record(client: MlflowClient, mlflow_run_id: str, result: PromotionResult) -> None:
    """The decision and its figures on the version and on the run."""
    from mlflow.entities import RunTag

    tags = result.tags()
    for key, value in tags.items():
        client.set_model_version_tag(result.model_name, result.version, key, value)
    run_tags = {**tags, f"{TAG}registered_model": result.model_name, f"{TAG}registered_version": str(result.version)}
    client.log_batch(mlflow_run_id, tags=[RunTag(key, value) for key, value in run_tags.items()])


def not_registered(config: RunConfig, error: Exception, tracking_uri: str | None) -> PromotionResult:
    """The result when a registry call failed: the promote step goes on (tracking never fails a run) and says so."""
    settings = config.promote
    return PromotionResult(model_name=config.registered_model_name, alias=settings.alias, policy=settings.policy,
                           metric=settings.metric, margin=settings.margin,
                           reason=f"the MLflow registry at {tracking_uri} failed ({short_reason(error)})")


__all__ = ["ChampionScore", "PromotionResult", "SftEvaluation", "config_from_tags", "config_tags", "decide", "promote_run",
           "read_evaluation", "read_sft_evaluation", "score_champion", "score_sft_champion"]
