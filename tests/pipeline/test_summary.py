"""`kubetune run`'s printed summary: the evaluations during training and the more-epochs hint, and the model's test metrics beside the TF-IDF baseline's."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from kubetune.pipeline.local import LocalRunSummary, _summarize, format_summary
from kubetune.train.history import TRAINING_HISTORY_FILE, EvaluationRow

ROWS = [
    EvaluationRow(epoch=1.0, step=47, train_loss=2.8123, eval_loss=2.41, eval_accuracy=0.63, eval_macro_f1=0.25, best=False),
    EvaluationRow(epoch=2.0, step=94, train_loss=1.93456, eval_loss=1.9, eval_accuracy=0.69, eval_macro_f1=0.46, best=True),
]
HINT = "validation macro F1 still rising at the last evaluation (epoch 2: 0.2500 → 0.4600): more epochs may help (training.epochs)"


def summary(**fields) -> LocalRunSummary:
    return LocalRunSummary(run_id="r1", runs_dir="runs", seconds=12.0,
                           step_seconds={"validate": 1.0, "preprocess": None, "tokenize": None, "train": 9.0, "evaluate": 2.0},
                           test_metrics={"accuracy": 0.7}, model_dir="m", report="report.html", **fields)


def test_the_summary_shows_each_evaluation_with_the_best_marked():
    text = format_summary(summary(evaluations=ROWS))
    table = text.split("validation during training\n", 1)[1].splitlines()
    assert table[0].split() == ["epoch", "step", "train", "loss", "val", "loss", "val", "accuracy", "val", "macro", "F1"]
    # A rule under each named column and none under the unnamed marker column: it ends with the last named one.
    assert table[1].split() == ["-----", "----", "----------", "--------", "------------", "------------"]
    assert table[1] == table[1].rstrip() and len(table[1]) == len(table[0].rstrip())
    assert table[2].split() == ["1", "47", "2.8123", "2.4100", "0.6300", "0.2500"]
    assert table[3].split() == ["2", "94", "1.9346", "1.9000", "0.6900", "0.4600", "←", "best"]
    assert "more epochs may help" not in text


def test_the_hint_follows_the_table_and_a_model_without_history_shows_neither():
    lines = format_summary(summary(evaluations=ROWS, training_hint=HINT)).splitlines()
    assert lines[lines.index(HINT) - 1].endswith("0.4600        ← best")
    plain = format_summary(summary())
    assert "validation during training" not in plain and "more epochs" not in plain


def test_summarize_reads_the_history_beside_the_model(tmp_path: Path):
    model = tmp_path / "model"
    model.mkdir()
    evals = [{"step": 10 * (i + 1), "epoch": float(i + 1), "eval_loss": 1.0, "eval_accuracy": 0.5, "eval_macro_f1": f1}
             for i, f1 in enumerate((0.25, 0.46))]
    (model / TRAINING_HISTORY_FILE).write_text(json.dumps({
        "format": 1, "metric_for_best_model": "eval_macro_f1", "greater_is_better": True, "best_step": 20,
        "train": [{"step": 5, "epoch": 0.5, "loss": 1.5, "learning_rate": 0.1}], "eval": evals}))
    steps = {"train": {"seconds": 1.0, "outputs": {"model": str(model)}}}
    found = _summarize(steps, "r1", tmp_path, 1.0, None)
    assert [(r.step, r.train_loss, r.eval_macro_f1, r.best) for r in found.evaluations] == [(10, 1.5, 0.25, False),
                                                                                           (20, None, 0.46, True)]
    assert found.training_hint == HINT
    assert asdict(found)["evaluations"][1]["best"] is True  # summary.json

    (model / TRAINING_HISTORY_FILE).unlink()  # a model trained before the file existed
    older = _summarize(steps, "r1", tmp_path, 1.0, None)
    assert older.evaluations == [] and older.training_hint == ""


BASELINE = {"accuracy": 0.836, "macro_f1": 0.703}


def compared(test_metrics: dict[str, float], baseline_metrics: dict[str, float]) -> LocalRunSummary:
    return LocalRunSummary(run_id="r1", runs_dir="runs", seconds=12.0, step_seconds={"train": 10.0, "evaluate": 2.0},
                           test_metrics=test_metrics, baseline_metrics=baseline_metrics, model_dir="m", report="r.html")


def test_a_model_that_loses_on_macro_f1_gets_one_plain_line():
    text = format_summary(compared({"accuracy": 0.85, "macro_f1": 0.49}, BASELINE))
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
    text = format_summary(compared({"accuracy": 0.90, "macro_f1": 0.80}, BASELINE))
    assert "baseline" in text and "+6.4 pts" in text and "+9.7 pts" in text
    assert "does not beat" not in text


def test_without_a_baseline_the_table_is_the_models_alone():
    text = format_summary(compared({"accuracy": 0.40, "macro_f1": 0.20}, {}))
    assert "baseline" not in text and "does not beat" not in text
    assert any(line.split() == ["test", "metric", "value"] for line in text.splitlines())


def test_counts_among_the_test_metrics_show_as_counts():
    # task: sft's metrics.json holds the scored rows and tokens beside loss and perplexity, all as floats.
    text = format_summary(compared({"loss": 1.2555, "perplexity": 3.5096, "rows": 150.0, "tokens": 1209.0}, {}))
    shown = {line.split()[0]: line.split()[1] for line in text.splitlines()
             if line.startswith(("loss", "perplexity", "rows", "tokens"))}
    assert shown == {"loss": "1.26", "perplexity": "3.51", "rows": "150", "tokens": "1,209"}


def test_the_promotion_lines_follow_the_metrics_and_summarize_reads_them(tmp_path: Path):
    from kubetune.promotion import PromotionResult

    result = PromotionResult(model_name="kubetune-demo", alias="champion", policy="gate", metric="macro_f1", margin=0.0,
                             version="2", promoted=False, reason="macro F1 0.4100 vs 0.5500 of version 1",
                             candidate=0.41, champion=0.55, champion_version="1", compared_rows=90, excluded_rows=10,
                             test_rows=100)
    (tmp_path / "promotion").write_text(json.dumps(result.to_dict()))
    steps = {"promote": {"seconds": 3.0, "outputs": {"promotion": str(tmp_path / "promotion")}}}
    found = _summarize(steps, "r1", tmp_path, 1.0, None)
    assert found.promotion == result.to_dict() and asdict(found)["promotion"]["decision"] == "not promoted"
    lines = format_summary(found).splitlines()
    said = [line for line in lines if line.startswith("promotion: ")]
    assert said == [
        "promotion: kubetune-demo version 2 not promoted: macro F1 0.4100 vs 0.5500 of version 1; champion stays version 1",
        "promotion: compared with the champion on 90 of 100 test rows: 10 rows have a label version 1 was never trained on",
    ]
    assert lines.index(said[-1]) + 1 == next(i for i, line in enumerate(lines) if line.startswith("model:"))
    assert "promotion" not in format_summary(summary())  # a run whose promote step did not run
