"""The model registry and the champion gate (kubetune.promotion, `kubetune promote`) against a real `mlflow server`.

Each candidate is made as the pipeline makes one, on a tiny random BERT: the real preprocess (whose test split
keeps the raw columns), tokenize and evaluate stages, the evaluate step logging the model into an MLflow run. An
untrained model's figures are whatever they happen to be, so where a test needs a candidate of known quality its
predictions.parquet (and metrics.json, baseline_metrics.json) are rewritten: all right, or all wrong. The
champion is always scored for real, and the test computes its expected figure with scikit-learn directly.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from kubetune import tracking
from kubetune.config import validate_config
from kubetune.data.demo import write_demo_data
from kubetune.data.labels import LabelMap
from kubetune.errors import KubetuneError
from kubetune.promotion import (
    TAG_VALUE_LIMIT,
    ChampionScore,
    PromotionResult,
    config_from_tags,
    config_tags,
    decide,
    promote_run,
)
from tests.predict_helpers import (
    LABEL_COLUMN,
    MAX_CLASSES,
    MAX_LENGTH,
    RETAIN_COLUMNS,
    TEXT_COLUMNS,
    build_model_folder,
)
from tests.train.conftest import mlflow_server  # noqa: F401 - the fixture, shared with the trainer's tests

pytestmark = pytest.mark.slow  # a server, and a model logged per candidate

EXPERIMENT = "promotion"


def run_config(tiny_bert: Path, server: str, model_name: str, **promote):
    return validate_config({
        "split": {"label_column": LABEL_COLUMN, "max_classes": MAX_CLASSES, "test_size": 0.2, "val_size": 0.1},
        "serialize": {"text_columns": TEXT_COLUMNS, "retain_columns": RETAIN_COLUMNS, "separator": " | "},
        "tokenize": {"max_length": MAX_LENGTH},
        "model": {"name": str(tiny_bert)},
        "lora": {"r": 4, "lora_alpha": 8},
        "tracking": {"tracking_uri": server, "experiment_name": EXPERIMENT},
        "registry": {"model_name": model_name},
        "promote": promote,
    })


@dataclass
class Candidate:
    run_id: str
    mlflow_run_id: str
    model_dir: Path
    evaluation: Path


def evaluated(root: Path, tiny_bert: Path, data: Path, server: str) -> Candidate:
    """A trained-model folder of `data`, tokenized, evaluated into an MLflow run that the evaluate step logs it into."""
    from kubetune.data.stages import tokenize
    from kubetune.evaluation import evaluate

    model_dir = build_model_folder(root, tiny_bert, data)
    config = run_config(tiny_bert, server, "unused")
    tokenize(config, str(root / "preprocessed"), str(root / "tokenized"))
    client = tracking.client_for(server)
    run_id = root.name
    mlflow_run_id = tracking.create_run(client, tracking.experiment_id_for(client, EXPERIMENT), run_id,
                                        {tracking.RUN_ID_TAG: run_id})
    tracking.log_datasets(client, mlflow_run_id, config.model_copy(update={"data": config.data.model_copy(update={"uri": str(data)})}),
                          f"fingerprint-{run_id}")
    evaluate(config, str(model_dir), str(root / "tokenized"), str(root / "evaluation"), mlflow_run_id=mlflow_run_id)
    return Candidate(run_id, mlflow_run_id, model_dir, root / "evaluation")


def set_quality(candidate: Candidate, right: bool, baseline: float = 0.05) -> None:
    """Make the candidate's predictions all right or all wrong (metrics.json to match) and the baseline `baseline`."""
    from kubetune.train.metrics import label_metrics

    predictions = pd.read_parquet(candidate.evaluation / "predictions.parquet")
    names = sorted(set(predictions["label"]))
    wrong = {name: names[(i + 1) % len(names)] for i, name in enumerate(names)}
    predictions["predicted"] = predictions["label"] if right else predictions["label"].map(wrong)
    predictions.to_parquet(candidate.evaluation / "predictions.parquet", index=False)
    metrics = label_metrics(predictions["label"], predictions["predicted"])
    (candidate.evaluation / "metrics.json").write_text(json.dumps(metrics))
    (candidate.evaluation / "baseline_metrics.json").write_text(json.dumps({k: baseline for k in metrics}))


def macro_f1_of(model_dir: Path, evaluation: Path, rows: np.ndarray | None = None) -> float:
    """The champion's macro F1 on the candidate's test rows (those of `rows`), computed here with scikit-learn."""
    from kubetune.inference import Predictor

    frame = pd.read_parquet(evaluation / "test_rows.parquet")
    truth = pd.read_parquet(evaluation / "predictions.parquet")["label"].to_numpy()
    if rows is not None:
        frame, truth = frame.loc[rows].reset_index(drop=True), truth[rows]
    predicted = Predictor.load(str(model_dir)).predict(frame)["predicted_label"].to_numpy()
    return float(f1_score(truth, predicted, average="macro", labels=sorted(set(truth) | set(predicted)), zero_division=0))


@pytest.fixture(scope="module")
def ledger(tmp_path_factory) -> Path:
    return write_demo_data(tmp_path_factory.mktemp("ledger") / "ledger.csv", rows=90, seed=4)


@pytest.fixture(scope="module")
def candidates(tiny_bert, ledger, mlflow_server, tmp_path_factory) -> dict[str, Candidate]:  # noqa: F811
    """Three evaluated runs of the same data: a good one, a worse one, a better one (qualities set by the tests)."""
    return {name: evaluated(tmp_path_factory.mktemp(name), tiny_bert, ledger, mlflow_server)
            for name in ("good", "worse", "better")}


def promote(candidate: Candidate, config) -> PromotionResult:
    return promote_run(config, evaluation_uri=str(candidate.evaluation), mlflow_run_id=candidate.mlflow_run_id,
                       run_id=candidate.run_id, tracking_uri=config.tracking.tracking_uri)


# ----------------------------------------------------------------------------------------- the gate
def test_the_evaluate_output_holds_the_raw_test_rows_in_the_order_of_its_predictions(candidates, ledger):
    evaluation = candidates["good"].evaluation
    rows = pd.read_parquet(evaluation / "test_rows.parquet")
    predictions = pd.read_parquet(evaluation / "predictions.parquet")
    assert "raw.supplier" not in predictions.columns and LABEL_COLUMN not in rows.columns
    source = pd.read_csv(ledger).set_index("line_id").loc[predictions["line_id"]].reset_index()
    assert rows["line_id"].tolist() == predictions["line_id"].tolist()
    assert rows["supplier"].tolist() == source["supplier"].tolist()
    assert rows["amount"].tolist() == pytest.approx(source["amount"].tolist())
    assert source[LABEL_COLUMN].astype(str).tolist() == predictions["label"].tolist()


def test_good_then_worse_then_better(candidates, tiny_bert, mlflow_server):  # noqa: F811
    """The first model is promoted when it beats the baseline; a worse one is registered but the alias stays;
    a better one moves it. Tags on the versions and the runs say what was decided, with both figures."""
    name = "gate-three"
    config = run_config(tiny_bert, mlflow_server, name)
    client = tracking.client_for(mlflow_server)
    good, worse, better = candidates["good"], candidates["worse"], candidates["better"]
    set_quality(good, right=True)

    first = promote(good, config)
    assert (first.version, first.promoted, first.champion_version, first.champion) == ("1", True, None, None)
    assert first.reason.startswith("the first model: macro F1 1.0000, beats the TF-IDF baseline (accuracy 1.0000 vs 0.0500")
    assert first.summary_lines() == [f"promotion: {name} version 1 promoted to champion: {first.reason}"]
    assert client.get_model_version_by_alias(name, "champion").version == "1"

    version = client.get_model_version(name, "1")
    assert version.run_id == good.mlflow_run_id
    tags = version.tags
    assert tags["kubetune.run_id"] == good.run_id and tags["kubetune.data_fingerprint"] == f"fingerprint-{good.run_id}"
    assert float(tags["kubetune.test.macro_f1"]) == 1.0 and float(tags["kubetune.baseline.macro_f1"]) == 0.05
    assert validate_config(__import__("yaml").safe_load(config_from_tags(tags))) == config
    assert tags["kubetune.promotion.decision"] == "promoted" and float(tags["kubetune.promotion.candidate"]) == 1.0

    set_quality(worse, right=False)
    second = promote(worse, config)
    champion_f1 = macro_f1_of(good.model_dir, worse.evaluation)
    assert (second.version, second.promoted, second.champion_version) == ("2", False, "1")
    assert second.champion == pytest.approx(champion_f1) and second.candidate == 0.0
    assert second.reason.startswith(f"macro F1 0.0000 vs {champion_f1:.4f} of version 1")
    assert "does not beat the TF-IDF baseline on accuracy 0.0000 vs 0.0500 and macro F1 0.0000 vs 0.0500" in second.reason
    assert second.summary_lines()[0] == f"promotion: {name} version 2 not promoted: {second.reason}; champion stays version 1"
    assert client.get_model_version_by_alias(name, "champion").version == "1"  # the alias did not move
    run_tags = client.get_run(worse.mlflow_run_id).data.tags
    assert run_tags["kubetune.promotion.decision"] == "not promoted" and run_tags["kubetune.promotion.reason"] == second.reason
    assert float(run_tags["kubetune.promotion.champion"]) == pytest.approx(champion_f1)
    assert run_tags["kubetune.registered_model"] == name and run_tags["kubetune.registered_version"] == "2"
    assert "## " not in second.to_markdown() and "| champion (version 1) |" in second.to_markdown()

    set_quality(better, right=True)
    third = promote(better, config)
    assert champion_f1 < 1.0  # an untrained model on 45 codes: the better one beats it
    assert (third.version, third.promoted, third.champion_version) == ("3", True, "1")
    assert third.reason.startswith(f"macro F1 1.0000 vs {champion_f1:.4f} of version 1; beats the TF-IDF baseline")
    assert client.get_model_version_by_alias(name, "champion").version == "3"
    assert client.get_model_version(name, "3").tags["kubetune.promotion.champion_version"] == "1"

    # Again for the same run (`kubetune promote` after the pipeline): no second version, nothing moves.
    again = promote(better, config)
    assert (again.version, again.promoted, again.reason) == ("3", True, "it already is the champion")
    assert len(client.search_model_versions(f"name = '{name}'")) == 3


def test_the_first_model_that_does_not_beat_the_baseline_is_not_promoted(candidates, tiny_bert, mlflow_server):  # noqa: F811
    config = run_config(tiny_bert, mlflow_server, "gate-first-loses")
    set_quality(candidates["worse"], right=False)
    result = promote(candidates["worse"], config)
    assert (result.version, result.promoted) == ("1", False)
    assert result.reason.startswith("does not beat the TF-IDF baseline on accuracy 0.0000 vs 0.0500")
    assert result.summary_lines()[0].endswith("; no champion yet")
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):
        tracking.client_for(mlflow_server).get_model_version_by_alias("gate-first-loses", "champion")


def test_policies_never_and_always(candidates, tiny_bert, mlflow_server):  # noqa: F811
    name = "gate-policies"
    client = tracking.client_for(mlflow_server)
    set_quality(candidates["good"], right=True)
    never = promote(candidates["good"], run_config(tiny_bert, mlflow_server, name, policy="never"))
    assert (never.version, never.promoted) == ("1", False) and "promote.policy is never" in never.reason
    assert client.get_registered_model(name).aliases == {}

    set_quality(candidates["worse"], right=False)
    always = promote(candidates["worse"], run_config(tiny_bert, mlflow_server, name, policy="always", alias="in-use"))
    assert (always.version, always.promoted) == ("2", True) and always.reason.startswith("promote.policy is always")
    assert client.get_model_version_by_alias(name, "in-use").version == "2"


def test_a_champion_with_fewer_labels_is_compared_on_the_rows_it_knows(tiny_bert, ledger, mlflow_server, tmp_path):  # noqa: F811
    """New codes appeared since the champion was trained: the rows with them are left out of the comparison, counted."""
    name = "gate-new-codes"
    config = run_config(tiny_bert, mlflow_server, name)
    candidate = evaluated(tmp_path / "candidate", tiny_bert, ledger, mlflow_server)
    test_labels = pd.read_parquet(candidate.evaluation / "predictions.parquet")["label"]
    new_codes = set(test_labels.iloc[:3])
    older = pd.read_csv(ledger)
    older = older[~older[LABEL_COLUMN].astype(str).isin(new_codes)]
    older.to_csv(tmp_path / "older.csv", index=False)
    champion = evaluated(tmp_path / "champion", tiny_bert, tmp_path / "older.csv", mlflow_server)
    assert promote(champion, run_config(tiny_bert, mlflow_server, name, policy="always")).promoted

    set_quality(candidate, right=True)
    result = promote(candidate, config)
    known = set(LabelMap.load(champion.model_dir).real_labels)
    kept = test_labels.isin(known).to_numpy()
    assert new_codes.isdisjoint(known) and 0 < (~kept).sum() < len(kept)
    assert (result.compared_rows, result.excluded_rows, result.test_rows) == (kept.sum(), (~kept).sum(), len(kept))
    assert result.champion == pytest.approx(macro_f1_of(champion.model_dir, candidate.evaluation, kept))
    assert result.promoted and result.candidate == 1.0
    assert result.summary_lines()[1] == (f"promotion: compared with the champion on {kept.sum()} of {len(kept)} test rows: "
                                         f"{(~kept).sum()} rows have a label version 1 was never trained on")
    assert tracking.client_for(mlflow_server).get_model_version(name, "2").tags["kubetune.promotion.excluded_rows"] == str((~kept).sum())


# ------------------------------------------------------------------------------------ the decision alone
NO_BASELINE: dict[str, float] = {}


@pytest.mark.parametrize(("margin", "promoted"), [(0.25, False), (0.125, True), (0.0, True)])
def test_the_candidate_must_beat_the_champion_by_strictly_more_than_the_margin(margin, promoted):
    champion = ChampionScore("4", champion=0.5, candidate=0.75, compared_rows=10)
    decided, reason = decide("gate", "macro_f1", margin, {"macro_f1": 0.75, "accuracy": 0.8},
                             {"macro_f1": 0.25, "accuracy": 0.25}, champion)
    assert decided is promoted
    assert reason.startswith("macro F1 0.7500 vs 0.5000 of version 4" + (f" + margin {margin:g}" if margin else ""))


def test_a_tie_keeps_the_champion_and_without_a_baseline_only_the_champion_counts():
    champion = ChampionScore("1", champion=0.5, candidate=0.5, compared_rows=10)
    assert decide("gate", "accuracy", 0.0, {"accuracy": 0.5}, NO_BASELINE, champion) == (
        False, "accuracy 0.5000 vs 0.5000 of version 1")
    assert decide("gate", "accuracy", 0.0, {"accuracy": 0.5}, NO_BASELINE, None) == (
        True, "the first model: accuracy 0.5000, no baseline to beat (evaluate.baseline: none)")


def test_a_champion_that_could_not_be_scored_is_not_replaced_by_the_gate():
    champion = ChampionScore("2", problem="it reads column(s) vendor, which the candidate's data lacks")
    promoted, reason = decide("gate", "macro_f1", 0.0, {"macro_f1": 0.9, "accuracy": 0.9}, NO_BASELINE, champion)
    assert not promoted and reason == ("version 2 could not be scored on its test rows (it reads column(s) vendor, "
                                       "which the candidate's data lacks)")
    assert decide("always", "macro_f1", 0.0, {"macro_f1": 0.9}, NO_BASELINE, champion)[0]


def test_a_long_config_is_split_over_tags_and_joined_back():
    text = "".join(f"key{i}: {'x' * 50}\n" for i in range(300))
    tags = config_tags(text)
    assert len(tags) == -(-len(text) // TAG_VALUE_LIMIT) > 1 and all(len(v) <= TAG_VALUE_LIMIT for v in tags.values())
    assert list(tags)[:2] == ["kubetune.config", "kubetune.config.2"] and config_from_tags(tags) == text


# ----------------------------------------------------------------------------------------- bad input
def test_an_evaluation_that_is_not_one_is_one_line_naming_it(tiny_bert, mlflow_server, tmp_path):  # noqa: F811
    config = run_config(tiny_bert, mlflow_server, "gate-bad-input")
    with pytest.raises(KubetuneError, match=r"^evaluation: .*nowhere is not a complete evaluate output"):
        promote_run(config, evaluation_uri=str(tmp_path / "nowhere"), mlflow_run_id="0" * 32, run_id="r",
                    tracking_uri=mlflow_server)
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException):  # nothing was registered
        tracking.client_for(mlflow_server).get_registered_model("gate-bad-input")


def test_kubetune_promote_by_hand(candidates, tiny_bert, mlflow_server, tmp_path, capsys):  # noqa: F811
    """The command finds the run by its id, reads its config beside the train output and moves the alias with
    promote.policy=always; an unknown run is one line naming --run-id, exit 2, and nothing registered."""
    from kubetune.cli import main

    name = "gate-by-hand"
    candidate = candidates["worse"]
    set_quality(candidate, right=False)
    runs = tmp_path / "runs"
    config = run_config(tiny_bert, mlflow_server, name).model_copy()
    config.storage = config.storage.model_copy(update={"runs_uri": str(runs)})
    (runs / candidate.run_id / "train").mkdir(parents=True)
    (runs / candidate.run_id / "train" / "config.yaml").write_text(config.to_yaml())

    code = main(["promote", "--run-id", candidate.run_id, "--evaluation", str(candidate.evaluation),
                 f"storage.runs_uri={runs}"])
    out = capsys.readouterr().out
    assert code == 0 and f"promotion: {name} version 1 not promoted: does not beat the TF-IDF baseline" in out

    code = main(["promote", "--run-id", candidate.run_id, "--evaluation", str(candidate.evaluation),
                 f"storage.runs_uri={runs}", "promote.policy=always"])
    assert code == 0 and f"promotion: {name} version 1 promoted to champion: promote.policy is always" in capsys.readouterr().out
    assert tracking.client_for(mlflow_server).get_model_version_by_alias(name, "champion").version == "1"

    code = main(["promote", "--run-id", "no-such-run", f"storage.runs_uri={runs}"])
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not re.match(r"\d{4}/\d\d/\d\d |\d\d:\d\d:\d\d ", line)]
    assert code == 2 and len(err) == 1 and err[0].startswith("kubetune: error: --run-id: no run 'no-such-run' under")
