"""`kubetune run` with a task: sft config: the same pipeline (kfp.local, torchrun, MLflow) end to end with a tiny
causal LM, then `kubetune predict` generating completions with the trained model."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kubetune.pipeline.local import format_summary, run_local

from .conftest import toy_rows, write_jsonl

pytestmark = pytest.mark.slow


def test_sft_config_runs_through_kubetune_run_and_predict_generates(tmp_path: Path, tiny_qwen2_lm: Path):
    data = write_jsonl(tmp_path / "colours.jsonl", [{"question": r["prompt"], "answer": r["response"]} for r in toy_rows(300)])
    config = {
        "task": "sft",
        "data": {"uri": str(data), "ops": [{"map": {"column": "prompt", "template": "{question}"}}]},
        "split": {"test_size": 0.1, "val_size": 0.1},
        "sft": {"prompt_column": "prompt", "response_column": "answer", "max_seq_length": 32, "max_new_tokens": 8},
        "model": {"name": str(tiny_qwen2_lm)},
        "lora": {"enable": False},
        "training": {"batch_size": 16, "learning_rate": 1e-2, "epochs": 2, "logging_steps": 4},
        "tracking": {"experiment_name": "sft-pipeline-test"},
        "storage": {"runs_uri": str(tmp_path / "runs")},
    }
    config_file = tmp_path / "run.yaml"
    config_file.write_text(yaml.safe_dump(config))

    summary = run_local(str(config_file), [], run_id="sft")

    assert all(seconds is not None for seconds in summary.step_seconds.values()), summary.step_seconds
    assert summary.task == "sft" and set(summary.test_metrics) == {"loss", "perplexity", "tokens", "rows"}
    assert summary.test_metrics == json.loads((Path(summary.evaluation_dir) / "metrics.json").read_text())
    # Learnt, if not to the end in 30 steps: an untrained model's loss is ~log(300 tokens) = 5.7.
    assert summary.test_metrics["loss"] < 3.0 and summary.test_metrics["rows"] == 30
    [step_output] = (tmp_path / "runs" / "kfp").glob("*/evaluate/executor_output.json")
    assert json.loads(step_output.read_text())["artifacts"]["metrics"]["artifacts"][0]["metadata"] == summary.test_metrics
    assert "val perplexity" in format_summary(summary) and "val accuracy" not in format_summary(summary)
    assert [row.step for row in summary.evaluations] == [15, 30]  # 240 train rows, batches of 16, 2 epochs

    from mlflow.tracking import MlflowClient

    client = MlflowClient(summary.mlflow_tracking_uri)
    run = client.get_run(summary.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.params["task"] == "sft"
    assert {"eval/loss", "eval/perplexity", "test/loss", "test/perplexity"} <= set(run.data.metrics)
    # The promote step registered the logged model: the first sft model is the champion, on its test loss.
    loss = summary.test_metrics["loss"]
    line = (f"promotion: sft-pipeline-test version 1 promoted to champion: the first model: loss per token {loss:.4f}, "
            "task: sft has no TF-IDF baseline")
    assert summary.promotion["decision"] == "promoted" and summary.promotion["metric"] == "loss"
    assert line in format_summary(summary).splitlines()
    assert str(client.get_model_version_by_alias("sft-pipeline-test", "champion").version) == "1"

    # kubetune predict with the same config: a completion per row, compared with the expected answer.
    from kubetune.config import load_config
    from kubetune.generation import generate_file

    rows = toy_rows(12, seed=5)
    new = write_jsonl(tmp_path / "new.jsonl", [{"prompt": r["prompt"], "answer": r["response"]} for r in rows])
    result = generate_file(summary.model_dir, str(new), str(tmp_path / "out.parquet"), load_config(config_file))
    out = pd.read_parquet(tmp_path / "out.parquet")
    assert list(out.columns) == ["prompt", "answer", "completion", "exact_match"] and len(out) == 12
    assert out["exact_match"].tolist() == [c.strip() == r["response"] for c, r in zip(out["completion"], rows, strict=True)]
    assert result["exact_match"] == out["exact_match"].mean()
    assert all(len(c) > 0 for c in out["completion"])
    # The champion from the run's local registry (<runs_uri>/mlflow.db, no tracking URI needed) generates the same.
    generate_file("models:/sft-pipeline-test@champion", str(new), str(tmp_path / "champion.parquet"), load_config(config_file))
    assert pd.read_parquet(tmp_path / "champion.parquet")["completion"].tolist() == out["completion"].tolist()
