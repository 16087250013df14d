"""The batch-scoring pipeline run by kfp.local (a subprocess for its step, as `kubetune run` runs the training
pipeline): a tiny model folder scores a small CSV into the step's Dataset, the output URI and the Markdown."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from kubetune.data.demo import write_demo_data
from tests.predict_helpers import LABEL_COLUMN, build_model_folder

pytestmark = pytest.mark.slow

CONFIG = """\
predict:
  top_k: 2
  review_threshold: 0.9
tracking:
  enable: false
"""
OUTPUT_COLUMNS = ["line_id", "predicted_label", "probability", "top_labels", "top_probabilities", "needs_review"]


@pytest.fixture
def local_kfp(tmp_path: Path) -> Path:
    from kfp import local

    root = tmp_path / "kfp"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    return root


def test_the_predict_pipeline_scores_new_rows_into_its_artifacts_and_the_output_uri(tmp_path, tiny_bert, local_kfp):
    from kubetune.config import ClusterConfig
    from kubetune.pipeline.predict_pipeline import predict_pipeline_for

    ledger = write_demo_data(tmp_path / "ledger.csv", rows=150, seed=1)
    model_dir = build_model_folder(tmp_path / "trained", tiny_bert, ledger)
    new_rows = pd.read_csv(ledger).head(40)
    new_rows.to_csv(tmp_path / "new.csv", index=False)

    run = predict_pipeline_for(ClusterConfig())(
        model=str(model_dir), data_uri=str(tmp_path / "new.csv"), output_uri=str(tmp_path / "scored" / "{run_id}.parquet"),
        config=CONFIG,
    )

    predictions = pd.read_parquet(run.outputs["predictions"].path)
    assert list(predictions.columns) == OUTPUT_COLUMNS
    assert predictions["line_id"].tolist() == new_rows["line_id"].tolist()  # one row per input row, in order
    assert predictions["top_labels"].map(len).eq(2).all()  # predict.top_k from the config parameter
    assert predictions["needs_review"].tolist() == (predictions["probability"] < 0.9).tolist()
    # Dummy label slots are never predicted: only codes the model was trained on.
    label_map = json.loads((model_dir / "label_map.json").read_text())
    real_labels = set(label_map["labels"][: label_map["num_real_labels"]])
    assert set(predictions["predicted_label"]) <= real_labels

    # {run_id} became the run's id: one file, the same bytes as the step's artifact.
    (published,) = (tmp_path / "scored").iterdir()
    assert published.suffix == ".parquet" and "{run_id}" not in published.name
    assert published.read_bytes() == Path(run.outputs["predictions"].path).read_bytes()

    summary = Path(run.outputs["summary"].path).read_text()
    assert summary.startswith("# kubetune predict\n")
    assert re.search(rf"^- 40 rows scored in [\d.]+ s \([\d,.]+ rows/s\) → {re.escape(run.outputs['predictions'].uri)}$",
                     summary, re.MULTILINE), summary
    flagged = int(predictions["needs_review"].sum())
    assert f"- needs review (probability < 0.9): {flagged} rows ({100 * flagged / 40:.1f}%)" in summary
    most_predicted = predictions["predicted_label"].value_counts()
    label, count = most_predicted.index[0], most_predicted.iloc[0]
    assert f"| {label} | {count} | {100 * count / 40:.1f}% |" in summary
    # The rows carry their labels (the demo's account_code), so the summary has metrics too.
    assert LABEL_COLUMN in new_rows.columns and "against the label column, on 40 rows: accuracy" in summary
    assert summary.endswith(f"\nPredictions also written to `{published}`.\n")

    # The step's KFP records: the Dataset's metadata and the Metrics artifact.
    (record,) = local_kfp.glob("*/predict/executor_output.json")
    artifacts = json.loads(record.read_text())["artifacts"]
    metadata = artifacts["predictions"]["artifacts"][0]["metadata"]
    assert metadata["format"] == "parquet" and metadata["rows"] == 40 and metadata["needs_review"] == flagged
    assert metadata["label_counts"] == {str(k): int(v) for k, v in most_predicted.items()}
    metrics = artifacts["metrics"]["artifacts"][0]["metadata"]
    assert metrics["rows"] == 40 and metrics["review_share"] == pytest.approx(flagged / 40)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and "macro_f1" in metrics


def test_a_missing_input_column_fails_the_step_in_one_line_and_writes_nothing(tmp_path, tiny_bert, local_kfp, capfd):
    from kubetune.config import ClusterConfig
    from kubetune.pipeline.predict_pipeline import predict_pipeline_for

    ledger = write_demo_data(tmp_path / "ledger.csv", rows=150, seed=1)
    model_dir = build_model_folder(tmp_path / "trained", tiny_bert, ledger)
    pd.read_csv(ledger).head(10).drop(columns=["description"]).to_csv(tmp_path / "new.csv", index=False)

    with pytest.raises(RuntimeError):
        predict_pipeline_for(ClusterConfig())(
            model=str(model_dir), data_uri=str(tmp_path / "new.csv"), output_uri=str(tmp_path / "scored.parquet"),
            config=CONFIG,
        )
    captured = capfd.readouterr()
    logs = captured.out + captured.err
    errors = [line for line in logs.splitlines() if "kubetune: error:" in line]
    assert len(errors) == 1, logs[-3000:]
    assert errors[0].split("kubetune: error: ", 1)[1].startswith(f"data_uri {tmp_path / 'new.csv'}")
    assert "description" in errors[0]
    assert "Traceback" not in logs
    assert not (tmp_path / "scored.parquet").exists()
    assert not list(local_kfp.glob("*/predict/predictions"))
