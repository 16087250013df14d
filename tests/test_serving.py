"""The run's MLflow model (kubetune.serving): raw rows in, the labels kubetune predict gives out, also over REST
and through the registry; and its MLflow calls leave the process's tracking URI as they found it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from kubetune.data.demo import write_demo_data
from kubetune.data.load import load_table
from kubetune.inference import INFERENCE_KEY, Predictor
from kubetune.serving import tracking_uri_set
from tests.loopback import free_port
from tests.predict_helpers import LABEL_COLUMN, TEXT_COLUMNS, build_model_folder


def test_tracking_uri_set_restores_an_unset_uri(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(None)
    inside = f"sqlite:///{tmp_path}/a.db"
    with tracking_uri_set(inside):
        assert os.environ["MLFLOW_TRACKING_URI"] == inside == mlflow.get_tracking_uri()
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_tracking_uri_set_restores_the_previous_uri(monkeypatch, tmp_path):
    before = f"sqlite:///{tmp_path}/before.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", before)
    with tracking_uri_set(f"sqlite:///{tmp_path}/b.db"):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == before == mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(None)


# ------------------------------------------------------------------------------- the logged model itself
# A model logged into a SQLite store (artifacts in a folder), as the evaluate step logs it; fed raw rows.
REGISTERED = "ledger-classifier"


@pytest.fixture(scope="module")
def logged(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A model folder logged as a run's MLflow model and registered (version 1, alias champion)."""
    from kubetune import tracking
    from kubetune.serving import log_model

    root = tmp_path_factory.mktemp("serving")
    ledger = write_demo_data(root / "ledger.csv", rows=60, seed=2)
    model_dir = build_model_folder(root, tiny_bert, ledger)
    uri = f"sqlite:///{root}/mlflow.db"
    client = tracking.client_for(uri)
    experiment = tracking.experiment_id_for(client, "serving", artifact_location=str(root / "artifacts"))
    run_id = client.create_run(experiment).info.run_id
    model_id = log_model(client, run_id, model_dir)
    client.create_registered_model(REGISTERED)
    source = client.get_logged_model(model_id).artifact_location
    version = client.create_model_version(REGISTERED, source, run_id=run_id, model_id=model_id)
    client.set_registered_model_alias(REGISTERED, "champion", version.version)
    frame = load_table(str(ledger), "--data", text_columns=[LABEL_COLUMN])
    return {"root": root, "uri": uri, "run_id": run_id, "model_dir": model_dir, "frame": frame, "ledger": ledger}


def load_pyfunc(uri: str, model_uri: str):
    with tracking_uri_set(uri):
        return mlflow.pyfunc.load_model(model_uri)


def test_the_logged_model_predicts_the_labels_predict_gives_from_raw_rows(logged: dict):
    model = load_pyfunc(logged["uri"], f"runs:/{logged['run_id']}/model")
    signature = model.metadata.signature
    assert signature.inputs.input_names()[: len(TEXT_COLUMNS)] == TEXT_COLUMNS
    assert signature.outputs.input_names() == ["predicted_label", "probability", "needs_review"]
    expected = Predictor.load(str(logged["model_dir"])).predict(logged["frame"])
    # The raw rows as they come: retained id and label column too, columns in another order.
    rows = logged["frame"][list(reversed(logged["frame"].columns))]
    out = model.predict(rows)
    assert list(out.columns) == ["predicted_label", "probability", "needs_review"]
    assert out["predicted_label"].tolist() == expected["predicted_label"].tolist()
    assert out["probability"].tolist() == pytest.approx(expected["probability"].tolist(), rel=1e-5)
    # The review threshold is a param.
    assert out["needs_review"].all() and not model.predict(rows, params={"review_threshold": 0.0})["needs_review"].any()


def test_a_row_without_an_input_column_is_refused(logged: dict):
    from mlflow.exceptions import MlflowException

    model = load_pyfunc(logged["uri"], f"runs:/{logged['run_id']}/model")
    with pytest.raises(MlflowException, match="amount"):
        model.predict(logged["frame"].drop(columns=["amount"]))


def test_the_registered_model_predicts_as_the_folder_does(logged: dict, tmp_path: Path):
    """models:/<name>@champion and models:/<name>/1 resolve to the logged folder: identical predictions."""
    from kubetune.config import validate_config
    from kubetune.inference import predict_file

    config = validate_config({"tracking": {"tracking_uri": logged["uri"]}})
    predict_file(str(logged["model_dir"]), str(logged["ledger"]), str(tmp_path / "folder.parquet"), config)
    for reference in (f"models:/{REGISTERED}@champion", f"models:/{REGISTERED}/1"):
        predict_file(reference, str(logged["ledger"]), str(tmp_path / "registry.parquet"), config)
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "folder.parquet"), pd.read_parquet(tmp_path / "registry.parquet"))


def test_without_a_tracking_uri_the_registry_is_the_local_runs_store(logged: dict, tmp_path: Path, monkeypatch):
    """After `kubetune run` here, models:/... means the store it keeps under storage.runs_uri (runs/mlflow.db)."""
    from kubetune.config import validate_config
    from kubetune.errors import KubetuneError
    from kubetune.inference import predict_file

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    reference = f"models:/{REGISTERED}@champion"
    config = validate_config({"storage": {"runs_uri": str(logged["root"])}})  # the fixture's store: <root>/mlflow.db
    predict_file(reference, str(logged["ledger"]), str(tmp_path / "registry.parquet"), config)
    predict_file(str(logged["model_dir"]), str(logged["ledger"]), str(tmp_path / "folder.parquet"), config)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "folder.parquet"), pd.read_parquet(tmp_path / "registry.parquet"))

    elsewhere = validate_config({"storage": {"runs_uri": str(tmp_path / "no-runs-here")}})
    with pytest.raises(KubetuneError, match=r"^--model: models:/.*no tracking URI is set.*runs_uri>/mlflow.db: none there"):
        predict_file(reference, str(logged["ledger"]), str(tmp_path / "none.parquet"), elsewhere)
    assert not (tmp_path / "none.parquet").exists()


@pytest.mark.parametrize("reference", [f"models:/{REGISTERED}@retired", f"models:/{REGISTERED}/7", "models:/nobody/1"])
def test_a_registry_reference_that_does_not_exist_names_it(logged: dict, reference: str):
    from kubetune.errors import KubetuneError

    with pytest.raises(KubetuneError, match=rf"^--model: {reference}: the MLflow registry at sqlite:///.* has no registered"):
        Predictor.load(reference, tracking_uri=logged["uri"])


def test_a_registered_classifier_under_an_sft_config_names_both_tasks(logged: dict, tmp_path: Path):
    """kubetune predict --config <task: sft> --model models:/<a classifier>: one line naming both tasks, nothing written."""
    from kubetune.config import validate_config
    from kubetune.errors import DataError
    from kubetune.generation import generate_file

    config = validate_config({"task": "sft", "sft": {"prompt_column": "prompt", "response_column": "response"},
                              "tracking": {"tracking_uri": logged["uri"]}})
    reference = f"models:/{REGISTERED}@champion"
    with pytest.raises(DataError) as raised:
        generate_file(reference, str(logged["ledger"]), str(tmp_path / "completions.parquet"), config)
    assert str(raised.value) == (f"--model: {reference} (version 1) is a task: classification model and this config has "
                                 "task: sft; pass --config with the task: classification config it was trained with")
    assert not (tmp_path / "completions.parquet").exists()


def test_a_model_logged_before_raw_rows_still_takes_serialized_text(logged: dict, tmp_path: Path):
    from kubetune import tracking
    from kubetune.serving import log_model

    old = tmp_path / "model"
    shutil.copytree(logged["model_dir"], old)
    metadata = json.loads((old / "model_metadata.json").read_text())
    del metadata[INFERENCE_KEY]
    (old / "model_metadata.json").write_text(json.dumps(metadata))
    client = tracking.client_for(logged["uri"])
    run_id = client.create_run(tracking.experiment_id_for(client, "serving")).info.run_id
    log_model(client, run_id, old)
    model = load_pyfunc(logged["uri"], f"runs:/{run_id}/model")
    assert model.metadata.signature.inputs.input_names() == ["text"]
    predictor = Predictor.load(str(logged["model_dir"]))
    texts = predictor.texts(logged["frame"])
    assert list(model.predict(pd.DataFrame({"text": texts}))) == predictor.predict(logged["frame"])["predicted_label"].tolist()


@pytest.mark.parametrize("model_uri", ["runs:/{run_id}/model", f"models:/{REGISTERED}@champion"])
def test_mlflow_models_serve_answers_a_rest_request_with_the_labels(logged: dict, model_uri: str):
    """`mlflow models serve -m runs:/<id>/model --env-manager local` (or the registered champion) on 127.0.0.1,
    asked over REST with raw rows."""
    port = free_port()
    log = (logged["root"] / "serve.log").open("wb")
    # mlflow starts `uvicorn` by name: this interpreter's bin/ first on PATH, as in an activated environment.
    env = {**os.environ, "MLFLOW_TRACKING_URI": logged["uri"],
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri.format(run_id=logged["run_id"]), "--env-manager",
         "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=logged["root"],
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (logged["root"] / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, (logged["root"] / "serve.log").read_text()[-3000:]
            time.sleep(0.5)
        rows = logged["frame"].head(12)[TEXT_COLUMNS].astype(str)  # JSON: what a client sends is text and numbers
        body = json.dumps({"dataframe_split": rows.to_dict(orient="split", index=False)}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    predicted = [row["predicted_label"] for row in answer["predictions"]]
    expected = Predictor.load(str(logged["model_dir"])).predict(rows)["predicted_label"].tolist()
    assert predicted == expected and len(predicted) == 12
