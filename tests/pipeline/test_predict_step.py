"""The predict pipeline step's plain-Python side: its checks (one line naming the parameter, before the model is
loaded or any output touched), `{run_id}` in the output URI, and the copy published there."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from kubetune import storage
from kubetune.errors import KubetuneError
from kubetune.pipeline.steps import predict_step

ARTIFACT_URI = "minio://mlpipeline/v2/artifacts/kubetune-predict/run-7/predict/predictions"
ROWS = pd.DataFrame({"supplier": ["Acme", "Globex", "Initech"], "description": ["paper", "fuel", "chairs"]})


@pytest.fixture
def scored(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """kubetune.inference.predict_file replaced by one that records its calls and writes the rows as predictions
    (as `kubetune predict` writes them: its Parquet, which an output_uri may replace)."""
    from kubetune import inference

    calls: list[tuple] = []

    def predict_file(model, data, output, config):
        calls.append((model, data, output, config))
        inference.write_predictions(pd.read_csv(data).assign(predicted_label="6000"), output, config.storage)
        return inference.PredictionSummary(model=model, data=data, output=output, rows=3, seconds=0.5,
                                           review_threshold=0.5, needs_review=1, label_counts={"6000": 3})

    monkeypatch.setattr(inference, "predict_file", predict_file)
    return calls


@pytest.fixture
def new_rows(tmp_path: Path) -> Path:
    path = tmp_path / "new.csv"
    ROWS.to_csv(path, index=False)
    return path


def run_predict(tmp_path: Path, model: str, data: str, output_uri: str = "", config: str = "") -> tuple[Path, Path, dict]:
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir(exist_ok=True)
    predictions, summary = artifacts / "predictions", artifacts / "summary"
    result = predict_step(config, [], model, data, output_uri, "run-7", str(predictions), str(summary), ARTIFACT_URI)
    return predictions, summary, result


def test_predictions_go_to_the_artifact_and_the_summary_to_markdown(tmp_path, scored, new_rows):
    predictions, summary, result = run_predict(tmp_path, "models:/ledger@champion", str(new_rows))

    assert pd.read_parquet(predictions)["supplier"].tolist() == ["Acme", "Globex", "Initech"]
    assert summary.read_text().startswith("# kubetune predict\n")
    assert "- needs review (probability < 0.5): 1 rows (33.3%)" in summary.read_text()
    # The artifact by its URI (what the KFP UI links), not the path it has inside the step's pod.
    assert f"rows/s) → {ARTIFACT_URI}\n" in summary.read_text() and result["output"] == ARTIFACT_URI
    assert "| 6000 | 3 | 100.0% |" in summary.read_text()
    assert (result["rows"], result["needs_review"], result["label_counts"]) == (3, 1, {"6000": 3})
    ((model, data, output, config),) = scored
    assert (model, data, output) == ("models:/ledger@champion", str(new_rows), str(predictions))
    assert config.split.label_column == "label"  # the resolved config: an empty `config` is the defaults


def test_the_config_and_overrides_reach_predict_file(tmp_path, scored, new_rows):
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    predict_step("storage:\n  max_retries: 2\n", ["storage.region=eu-west-1"], "models:/ledger/3", str(new_rows), "",
                 "run-7", str(artifacts / "predictions"), str(artifacts / "summary"))
    ((_, _, _, config),) = scored
    assert (config.storage.max_retries, config.storage.region) == (2, "eu-west-1")


def test_an_output_uri_gets_a_copy_named_after_the_run(tmp_path, scored, new_rows):
    target = tmp_path / "scored" / "{run_id}.parquet"
    predictions, summary, _ = run_predict(tmp_path, "models:/ledger@champion", str(new_rows), str(target))

    published = tmp_path / "scored" / "run-7.parquet"
    assert published.read_bytes() == predictions.read_bytes()
    assert sorted(p.name for p in published.parent.iterdir()) == ["run-7.parquet"]  # no temporary left behind
    assert summary.read_text().endswith(f"\nPredictions also written to `{published}`.\n")

    # The next run may replace what the step published: it is a `kubetune predict` output.
    run_predict(tmp_path, "models:/ledger@champion", str(new_rows), str(published))
    assert published.read_bytes() == predictions.read_bytes()


def test_an_output_uri_in_object_storage_gets_the_same_bytes(tmp_path, scored, new_rows, s3_bucket):
    predictions, _, _ = run_predict(tmp_path, "models:/ledger@champion", str(new_rows),
                                    f"s3://{s3_bucket}/scores/{{run_id}}/predictions.parquet")

    uri = f"s3://{s3_bucket}/scores/run-7/predictions.parquet"
    fs, path = storage.filesystem(uri)
    assert fs.cat_file(path) == predictions.read_bytes()


@pytest.mark.parametrize(
    ("model", "data", "output", "message"),
    [
        ("", "{rows}", "", r"^model: no model given; set the `model` pipeline parameter to a train output's model/ folder"),
        ("gs://bucket/model", "{rows}", "", r"^model: kubetune cannot read or write gs:// URIs"),
        ("{tmp}/no-model", "{rows}", "", r"^model: \S*no-model not found; give a train output's model/ folder"),
        ("models:/ledger@champion", "{rows}", "", r"^model: models:/ledger@champion is in an MLflow registry but no "
                                                  r"tracking URI is set"),
        ("models:/ledger@champion", "", "", r"^data_uri: no rows to score given; set the `data_uri` pipeline parameter"),
        ("models:/ledger@champion", "{tmp}/absent.csv", "", r"^data_uri: \S*absent.csv not found"),
        ("models:/ledger@champion", "https://example.com/x.csv", "", r"^data_uri: kubetune cannot read or write https://"),
        ("models:/ledger@champion", "{rows}", "{tmp}", r"^output_uri: \S+ is a folder; give a file name$"),
        ("models:/ledger@champion", "{rows}", "{rows}", r"^output_uri: \S+new.csv exists and is not a `kubetune predict` "
                                                        r"output; choose another path$"),
        ("models:/ledger@champion", "{rows}", "gs://bucket/p.parquet", r"^output_uri: kubetune cannot read or write gs://"),
    ],
)
def test_bad_parameters_are_one_line_naming_the_parameter_before_the_model_loads(
    tmp_path, new_rows, monkeypatch, model, data, output, message
):
    from kubetune.inference import Predictor

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(Predictor, "load_weights", lambda self: pytest.fail("the weights were loaded"))
    model, data, output = (value.format(rows=new_rows, tmp=tmp_path) for value in (model, data, output))
    before = new_rows.read_bytes()
    # No tracking URI and no local store: the default storage.runs_uri (./runs) holds one after a `make demo` here.
    config = f"tracking:\n  tracking_uri: null\nstorage:\n  runs_uri: {tmp_path / 'no-runs-here'}\n"
    with pytest.raises(KubetuneError, match=message) as raised:
        run_predict(tmp_path, model, data, output, config=config)
    assert "\n" not in str(raised.value)
    assert list((tmp_path / "artifacts").iterdir()) == []  # nothing written
    assert new_rows.read_bytes() == before
