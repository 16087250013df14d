"""The evaluate step's TF-IDF baseline: the library, and what evaluate() writes with it and without it."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest

from kubetune.config import validate_config
from kubetune.errors import ConfigError
from kubetune.evaluation.baseline import (
    NEVER,
    baseline_metrics,
    comparison_rows,
    fit_baseline,
    points,
    verdict,
)
from kubetune.train.metrics import classification_metrics

KEYWORDS = {0: "fuel", 1: "laptop", 2: "paper", 3: "water", 4: "rent", 5: "legal", 6: "grant"}
FILLER = ["invoice", "payment", "supplier", "services", "ltd", "council"]


def keyword_rows(n: int, seed: int, classes: int = len(KEYWORDS)) -> tuple[list[str], np.ndarray]:
    """Texts holding exactly one keyword of their class among filler words: separable by that keyword."""
    rng = random.Random(seed)
    labels = np.arange(n) % classes
    texts = []
    for label in labels:
        words = [rng.choice(FILLER) for _ in range(rng.randint(1, 4))]
        words.insert(rng.randint(0, len(words)), KEYWORDS[int(label)])
        texts.append(" ".join(words))
    return texts, labels


# ------------------------------------------------------------------------------------------- the library
def test_separable_keywords_are_learnt_exactly_and_deterministically():
    texts, labels = keyword_rows(420, seed=0)
    test_texts, test_labels = keyword_rows(140, seed=1)
    first = fit_baseline(texts, labels, num_classes=7)
    second = fit_baseline(texts, labels, num_classes=7)
    assert (first.predict(test_texts) == test_labels).all()
    np.testing.assert_array_equal(first.decision_scores(test_texts), second.decision_scores(test_texts))
    metrics = baseline_metrics(first, test_texts, test_labels)
    assert metrics["accuracy"] == 1.0 and metrics["macro_f1"] == 1.0 and metrics["top5_accuracy"] == 1.0
    # The very metrics of the model: the same function over scores of the same shape.
    assert metrics == classification_metrics(first.decision_scores(test_texts), test_labels, 7)


def test_a_class_absent_from_train_is_never_predicted_nor_a_slot_beyond_the_real_classes():
    texts, labels = keyword_rows(120, seed=0, classes=6)  # class 6 ("grant") never occurs in train
    scores = fit_baseline(texts, labels, num_classes=7).decision_scores(["grant grant", "fuel invoice", "zzz"])
    assert scores.shape == (3, 7)  # real classes only: dummy slots do not exist for the baseline
    assert (scores[:, 6] == NEVER).all()
    assert scores.argmax(axis=1).max() < 6


def test_two_classes_score_both_and_one_class_is_a_constant():
    texts, labels = keyword_rows(40, seed=0, classes=2)
    two = fit_baseline(texts, labels, num_classes=3)
    assert two.predict(["fuel", "laptop"]).tolist() == [0, 1]
    one = fit_baseline(["fuel a", "fuel b"], [2, 2], num_classes=3)
    assert one.predict(["laptop", "anything"]).tolist() == [2, 2]


def test_labels_outside_the_real_classes_are_refused():
    with pytest.raises(ValueError, match=r"real class slots in \[0, 2\)"):
        fit_baseline(["fuel", "laptop"], [0, 2], num_classes=2)


def test_comparison_rows_and_points():
    assert points(0.8, 0.75) == "+5.0 pts" and points(0.49, 0.7) == "-21.0 pts"
    rows = comparison_rows({"accuracy": 0.8, "loss": 1.0}, {"accuracy": 0.75})
    assert rows == [("accuracy", 0.8, 0.75, "+5.0 pts"), ("loss", 1.0, "-", "-")]


def test_verdict_only_when_the_model_does_not_beat_the_baseline():
    baseline = {"accuracy": 0.84, "macro_f1": 0.70}
    assert verdict({"accuracy": 0.90, "macro_f1": 0.75}, baseline) is None
    line = verdict({"accuracy": 0.90, "macro_f1": 0.49}, baseline)
    assert line.startswith("the model does not beat the TF-IDF baseline on macro F1 (0.49 vs 0.70)")
    assert "accuracy" not in line.split(":")[0] and "BENCHMARKS.md" in line
    both = verdict({"accuracy": 0.84, "macro_f1": 0.49}, baseline)
    assert "on accuracy (0.84 vs 0.84) and macro F1 (0.49 vs 0.70)" in both and "\n" not in both


# ------------------------------------------------------------------------------------------- the config
def test_evaluate_baseline_rejects_an_unknown_value_naming_the_key():
    with pytest.raises(ConfigError, match=r"evaluate\.baseline: .*'tfidf' or 'none'"):
        validate_config({"evaluate": {"baseline": "bm25"}})


def test_evaluate_section_rejects_an_unknown_key_naming_it():
    with pytest.raises(ConfigError, match=r"evaluate\.basline: unknown key; did you mean 'evaluate\.baseline'\?"):
        validate_config({"evaluate": {"basline": "none"}})


def test_baseline_is_on_by_default():
    assert validate_config({}).evaluate.baseline == "tfidf"


# ------------------------------------------------------------------------------------------- evaluate()
@pytest.fixture(scope="module")
def trained(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tokenized toy task (tests/train/conftest.py) and an untrained LoRA model saved as `kubetune train` saves it."""
    from kubetune.data.labels import LabelMap
    from kubetune.train.model import apply_lora, instantiate_model, load_tokenizer, save_trained_model
    from tests.train.conftest import TOY_CLASSES, TOY_MAX_CLASSES, build_tokenized

    root = tmp_path_factory.mktemp("evaluate")
    data = build_tokenized(root / "tokenized", tiny_bert, sizes={"train": 96, "validation": 8, "test": 40})
    label_map = LabelMap.build(TOY_CLASSES, label_column="category", max_classes=TOY_MAX_CLASSES, dummy_prefix="dummy")
    config = validate_config({"model": {"name": str(tiny_bert)}, "lora": {"r": 4, "lora_alpha": 8},
                              "tracking": {"enable": False}})
    tokenizer = load_tokenizer(str(tiny_bert))
    model = apply_lora(config, instantiate_model(config, label_map, str(tiny_bert), tokenizer))
    metadata = {"base_model": str(tiny_bert), "base_model_path": str(tiny_bert)}
    save_trained_model(model, tokenizer, label_map, root / "model", metadata, {}, merge=False)
    return data, root / "model"


def run_evaluate(trained, output: Path, baseline: str):
    from kubetune.evaluation import evaluate

    config = validate_config({"evaluate": {"baseline": baseline}, "training": {"eval_batch_size": 16},
                              "tracking": {"enable": False}})
    data, model = trained
    return evaluate(config, model_uri=str(model), data_uri=str(data), output_uri=str(output))


def test_evaluate_writes_the_baseline_beside_the_model(trained, tmp_path: Path):
    import datasets

    result = run_evaluate(trained, tmp_path / "eval", "tfidf")

    out = tmp_path / "eval"
    splits = datasets.load_from_disk(str(trained[0]))
    direct = fit_baseline(splits["train"]["text"], splits["train"]["labels"], num_classes=4)
    expected = baseline_metrics(direct, splits["test"]["text"], splits["test"]["labels"])
    assert expected["accuracy"] == 1.0  # the toy task is separable by keyword
    assert json.loads((out / "baseline_metrics.json").read_text()) == expected == result.baseline_metrics
    assert set(result.baseline_metrics) == set(result.metrics)
    with (out / "per_class.csv").open() as handle:
        per_class = list(csv.DictReader(handle))
    assert list(per_class[0]) == ["label", "support", "predicted", "precision", "recall", "f1", "baseline_f1"]
    assert {row["label"]: row["baseline_f1"] for row in per_class} == {row["label"]: "1.000000" for row in per_class}
    page = (out / "report.html").read_text()
    assert "<th>baseline F1</th>" in page and "TF-IDF (word 1-2 grams) + linear SVM, fitted on 96 train rows" in page
    model_accuracy = result.metrics["accuracy"]
    lead = points(model_accuracy, 1.0)
    assert f"<b>{model_accuracy:.2%}</b><span>accuracy</span><span class=low>baseline 100.00% · {lead}</span>" in page
    assert "text" not in __import__("pandas").read_parquet(out / "predictions.parquet").columns


def test_the_baseline_fits_on_whole_rows_when_column_dropout_shortened_the_training_texts(trained, tmp_path: Path):
    import datasets

    from kubetune.data.serialize import WHOLE_TEXT

    data, model = trained
    splits = datasets.load_from_disk(str(data))
    train = splits["train"]
    # What the model trained on says nothing here; the whole rows (whole_text) say everything.
    shortened = train.remove_columns("text").add_column("text", ["invoice"] * len(train)).add_column(WHOLE_TEXT, train["text"])
    copy = tmp_path / "tokenized"
    datasets.DatasetDict({**splits, "train": shortened}).save_to_disk(str(copy))
    for name in ("label_map.json", "dataset_metadata.json"):
        if (data / name).is_file():
            (copy / name).write_bytes((data / name).read_bytes())
    result = run_evaluate((copy, model), tmp_path / "eval", "tfidf")
    direct = fit_baseline(train["text"], train["labels"], num_classes=4)
    assert result.baseline_metrics == baseline_metrics(direct, splits["test"]["text"], splits["test"]["labels"])
    assert result.baseline_metrics["accuracy"] == 1.0
    assert WHOLE_TEXT not in __import__("pandas").read_parquet(tmp_path / "eval" / "predictions.parquet").columns


def test_no_baseline_anywhere_with_evaluate_baseline_none(trained, tmp_path: Path):
    result = run_evaluate(trained, tmp_path / "eval", "none")

    out = tmp_path / "eval"
    assert result.baseline_metrics == {}
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("_")) == [
        "confusion.json", "confusion.png", "metrics.json", "per_class.csv", "predictions.parquet", "report.html"]
    assert (out / "per_class.csv").read_text().splitlines()[0] == "label,support,predicted,precision,recall,f1"
    assert "baseline" not in (out / "report.html").read_text()


def test_max_rows_samples_train_deterministically():
    texts, labels = keyword_rows(200, seed=0)
    sampled = fit_baseline(texts, labels, num_classes=7, max_rows=50)
    again = fit_baseline(texts, labels, num_classes=7, max_rows=50)
    probe = keyword_rows(20, seed=3)[0]
    np.testing.assert_array_equal(sampled.decision_scores(probe), again.decision_scores(probe))
    assert not np.array_equal(sampled.decision_scores(probe), fit_baseline(texts, labels, 7).decision_scores(probe))


def test_kubetune_evaluate_prints_both_and_logs_the_baseline_to_mlflow(trained, tmp_path: Path, capsys):
    from kubetune.cli import main
    from kubetune.tracking import client_for

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = client_for(uri)
    run_id = client.create_run(client.create_experiment("baseline-test")).info.run_id
    data, model = trained

    code = main(["evaluate", "--model", str(model), "--data", str(data), "--output", str(tmp_path / "eval"),
                 "--mlflow-run-id", run_id, f"tracking.tracking_uri={uri}", "tracking.log_model=false"])

    assert code == 0
    baseline = json.loads((tmp_path / "eval" / "baseline_metrics.json").read_text())
    model_metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    printed = capsys.readouterr().out.splitlines()
    assert ["metric", "model", "baseline", "difference"] in [line.split() for line in printed]
    accuracy_row = next(line.split() for line in printed if line.startswith("accuracy "))
    assert [float(v) for v in accuracy_row[1:3]] == pytest.approx([model_metrics["accuracy"], 1.0], abs=5e-5)
    assert accuracy_row[3:] == points(model_metrics["accuracy"], 1.0).split()
    # An untrained model against a separable task: it loses, and one line says so.
    assert sum("does not beat the TF-IDF baseline" in line for line in printed) == 1
    logged = client.get_run(run_id).data.metrics
    assert {name: value for name, value in logged.items() if name.startswith("baseline/")} == {
        f"baseline/test/{name}": value for name, value in baseline.items()}
    assert logged["test/accuracy"] == model_metrics["accuracy"]
    assert "baseline_metrics.json" in {a.path.split("/")[-1] for a in client.list_artifacts(run_id, "evaluation")}


def test_data_tokenized_without_the_text_column_is_decoded_with_a_warning(tiny_bert: Path, caplog):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from kubetune.evaluation import serialized_texts

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    texts = ["fuel invoice", "laptop services"]
    old = Dataset.from_dict({"input_ids": tokenizer(texts)["input_ids"], "labels": [0, 1]})
    decoded = serialized_texts(old, tokenizer)
    assert decoded == ["fuel invoice", "laptop services"]  # the tiny tokenizer is uncased and knows both words
    assert "no text column" in caplog.text
    assert serialized_texts(old.add_column("text", texts), tokenizer) == texts


def test_evaluate_on_untokenized_data_is_one_line_naming_it(trained, tmp_path: Path):
    import datasets

    from kubetune.errors import DataError

    plain = tmp_path / "preprocessed"
    splits = datasets.load_from_disk(str(trained[0]))
    datasets.DatasetDict({name: split.select_columns(["text", "labels"]) for name, split in splits.items()}).save_to_disk(str(plain))
    with pytest.raises(DataError, match=rf"the data at {plain} is not tokenized \(its 'test' split has no input_ids column\)"):
        run_evaluate((plain, trained[1]), tmp_path / "eval", "tfidf")
    assert not (tmp_path / "eval").exists()
