"""The champion gate end to end: three `kubetune run`s in a row (kfp.local, a tiny BERT, a real `mlflow server`).

A good run becomes the first champion, a deliberately worse one (one step at a tiny learning rate) is registered
but not promoted and its summary says why, a better one (more steps) takes the alias. Then the champion scores
new rows identically through `kubetune predict --model models:/<name>@champion`, through its model folder and
as the MLflow pyfunc model.

The data is the keyword task of tests/train/conftest.py (each description holds one keyword of its class) as
ledger lines; the TF-IDF baseline is held to one feature (evaluate.baseline_max_features: 1), so that a tiny
model trained for seconds can beat it, as a real model beats the full baseline.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from kubetune.pipeline.local import format_summary, run_local
from tests.train.conftest import mlflow_server, toy_rows  # noqa: F401 - the fixture, shared with the trainer's tests

from .test_local_run import write_config

pytestmark = pytest.mark.slow

NAME = "ledger-codes"


def write_ledger(path: Path, rows: int, seed: int) -> Path:
    rng = random.Random(seed)
    lines = [{"line_id": f"L{seed}-{i:04d}", "supplier": rng.choice(["Acme Ltd", "Borough Council", "Cardo plc"]),
              "description": text, "amount": round(rng.uniform(5, 900), 2), "account_code": label}
             for i, (text, label) in enumerate(toy_rows(rows, seed))]
    pd.DataFrame(lines).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory, tiny_bert, mlflow_server):  # noqa: F811
    root = tmp_path_factory.mktemp("champion-gate")
    config = write_config(
        root, tiny_bert,
        data={"uri": str(write_ledger(root / "ledger.csv", 320, seed=1))},
        split={"label_column": "account_code", "max_classes": 6, "test_size": 0.25, "val_size": 0.1},
        # The keyword is all there is to learn: the description alone, and LoRA and a rate that learn it in seconds.
        serialize={"text_columns": ["description"], "retain_columns": ["line_id"], "include_column_names": False},
        lora={"r": 8, "lora_alpha": 32, "lora_dropout": 0.0},
        training={"batch_size": 16, "learning_rate": 5e-2, "max_steps": 32, "logging_steps": 8,
                  "load_best_model_at_end": False},
        evaluate={"baseline_max_features": 1},
        tracking={"tracking_uri": mlflow_server, "experiment_name": "champion-gate"},
        registry={"model_name": NAME},
    )
    runs = {}
    # Test macro F1 here: good 0.58, worse 0.10 (one class for every row), better 0.97; baseline 0.15.
    for run_id, overrides in (("good", []),
                              ("worse", ["training.max_steps=1", "training.learning_rate=1e-7"]),
                              ("better", ["training.max_steps=96"])):
        runs[run_id] = run_local(str(config), overrides, run_id=run_id)
    return root, config, runs


def test_good_is_promoted_worse_is_not_better_is(three_runs, mlflow_server):  # noqa: F811
    from mlflow.tracking import MlflowClient

    _, _, runs = three_runs
    client = MlflowClient(tracking_uri=mlflow_server)
    good, worse, better = (runs[name].promotion for name in ("good", "worse", "better"))
    assert (good["version"], good["decision"], good["champion_version"]) == ("1", "promoted", None), good
    assert good["reason"].startswith("the first model: macro F1 ")

    assert (worse["version"], worse["decision"], worse["champion_version"]) == ("2", "not promoted", "1"), worse
    assert worse["candidate"] < worse["champion"]
    assert worse["reason"].startswith(f"macro F1 {worse['candidate']:.4f} vs {worse['champion']:.4f} of version 1")
    summary = format_summary(runs["worse"])
    assert f"promotion: {NAME} version 2 not promoted: {worse['reason']}; champion stays version 1" in summary.splitlines()
    tags = client.get_run(runs["worse"].mlflow_run_id).data.tags
    assert tags["kubetune.promotion.decision"] == "not promoted" and tags["kubetune.registered_version"] == "2"
    # Scored on the worse run's own test rows, the champion's figure is its own test figure: the same rows.
    assert worse["champion"] == pytest.approx(runs["good"].test_metrics["macro_f1"])

    assert (better["version"], better["decision"], better["champion_version"]) == ("3", "promoted", "1"), better
    assert better["candidate"] > better["champion"]
    assert f"promotion: {NAME} version 3 promoted to champion: " in format_summary(runs["better"])
    assert client.get_model_version_by_alias(NAME, "champion").version == "3"
    version = client.get_model_version(NAME, "3")
    assert version.run_id == runs["better"].mlflow_run_id and version.tags["kubetune.run_id"] == "better"
    assert float(version.tags["kubetune.test.macro_f1"]) == runs["better"].test_metrics["macro_f1"]
    # The summary.json of each run holds the decision too.
    root = Path(runs["better"].runs_dir)
    assert json.loads((root / "worse" / "summary.json").read_text())["promotion"]["decision"] == "not promoted"


def test_kubetune_promote_applies_the_gate_to_a_finished_run_again(three_runs, mlflow_server, capsys):  # noqa: F811
    """By hand, with the run's own config (beside its train output) and the evaluate output its summary.json
    names: the good run, already version 1, now loses to the champion, version 3; nothing moves."""
    from kubetune.cli import main

    _, _, runs = three_runs
    assert main(["promote", "--run-id", "good", f"storage.runs_uri={runs['good'].runs_dir}"]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("promotion: ")]
    good = runs["good"].test_metrics["macro_f1"]
    assert line.startswith(f"promotion: {NAME} version 1 not promoted: macro F1 {good:.4f} vs "), line
    assert line.endswith("of version 3; champion stays version 3"), line


def test_the_champion_predicts_alike_from_the_registry_the_folder_and_as_pyfunc(three_runs, mlflow_server, tmp_path):  # noqa: F811
    import mlflow

    from kubetune.cli import main
    from kubetune.serving import tracking_uri_set

    root, config, runs = three_runs
    new_rows = write_ledger(tmp_path / "new.csv", 40, seed=7)
    registry, folder = tmp_path / "registry.parquet", tmp_path / "folder.parquet"
    common = ["--config", str(config), "--data", str(new_rows), f"tracking.tracking_uri={mlflow_server}"]
    assert main(["predict", "--model", f"models:/{NAME}@champion", "--output", str(registry), *common]) == 0
    assert main(["predict", "--model", runs["better"].model_dir, "--output", str(folder), *common]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(registry), pd.read_parquet(folder))

    with tracking_uri_set(mlflow_server):
        model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    frame = pd.read_csv(new_rows)
    assert model.predict(frame)["predicted_label"].tolist() == pd.read_parquet(folder)["predicted_label"].tolist()
