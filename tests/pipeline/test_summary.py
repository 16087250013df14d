"""`kubetune run`'s closing summary: the model's test metrics beside the TF-IDF baseline's."""

from __future__ import annotations

from kubetune.pipeline.local import LocalRunSummary, format_summary

BASELINE = {"accuracy": 0.836, "macro_f1": 0.703}


def summary(test_metrics: dict[str, float], baseline_metrics: dict[str, float]) -> LocalRunSummary:
    return LocalRunSummary(run_id="r1", runs_dir="runs", seconds=12.0, step_seconds={"train": 10.0, "evaluate": 2.0},
                           test_metrics=test_metrics, baseline_metrics=baseline_metrics, model_dir="m", report="r.html")


def test_a_model_that_loses_on_macro_f1_gets_one_plain_line():
    text = format_summary(summary({"accuracy": 0.85, "macro_f1": 0.49}, BASELINE))
    lines = text.splitlines()
    assert [line.split() for line in lines if line.startswith(("test metric", "accuracy", "macro_f1"))] == [
        ["test", "metric", "model", "baseline", "difference"],
        ["accuracy", "0.8500", "0.8360", "+1.4", "pts"],
        ["macro_f1", "0.4900", "0.7030", "-21.3", "pts"],
    ]
    said = [line for line in lines if "does not beat" in line]
    assert said == [
        "the model does not beat the TF-IDF baseline on macro F1 (0.49 vs 0.70): see BENCHMARKS.md for what the "
        "shipped configs reach, and train longer or change the model before relying on this one"
    ]


def test_a_model_that_beats_the_baseline_gets_no_such_line():
    text = format_summary(summary({"accuracy": 0.90, "macro_f1": 0.80}, BASELINE))
    assert "baseline" in text and "+6.4 pts" in text and "+9.7 pts" in text
    assert "does not beat" not in text


def test_without_a_baseline_the_table_is_the_models_alone():
    text = format_summary(summary({"accuracy": 0.40, "macro_f1": 0.20}, {}))
    assert "baseline" not in text and "does not beat" not in text
    assert any(line.split() == ["test", "metric", "value"] for line in text.splitlines())
