"""`kubetune predict` and kubetune.inference.Predictor: raw rows in, predictions out, exactly as training saw them."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kubetune.cli import main
from kubetune.config import validate_config
from kubetune.data.demo import write_demo_data
from kubetune.data.load import load_table
from kubetune.errors import DataError, KubetuneError
from kubetune.inference import INFERENCE_KEY, Predictor, inference_metadata, predict_file
from tests.predict_helpers import LABEL_COLUMN, MAX_LENGTH, RETAIN_COLUMNS, TEXT_COLUMNS, build_model_folder

OUTPUT_COLUMNS = ["line_id", "predicted_label", "probability", "top_labels", "top_probabilities", "needs_review"]


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_data(tmp_path_factory.mktemp("ledger") / "ledger.csv", rows=150, seed=1)


@pytest.fixture(scope="module")
def model_dir(tiny_bert: Path, ledger: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model whose dummy slots' logits are huge: unmasked, it would pick a dummy slot for every row."""
    return build_model_folder(tmp_path_factory.mktemp("model"), tiny_bert, ledger, dummy_bias=1e4)


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> Predictor:
    return Predictor.load(str(model_dir))


@pytest.fixture(scope="module")
def frame(ledger: Path) -> pd.DataFrame:
    return load_table(str(ledger), "--data", text_columns=[LABEL_COLUMN])


def config_for(**predict) -> object:
    return validate_config({"predict": predict, "tracking": {"enable": False}})


# ------------------------------------------------------------------------------- what the folder says
def test_the_model_folder_says_how_to_read_rows(predictor: Predictor, model_dir: Path):
    assert predictor.input_columns == tuple(TEXT_COLUMNS)
    assert predictor.retain_columns == tuple(RETAIN_COLUMNS)
    assert predictor.label_column == LABEL_COLUMN
    assert predictor.spec.max_length == MAX_LENGTH and predictor.spec.serialize.separator == " | "
    entry = json.loads((model_dir / "model_metadata.json").read_text())[INFERENCE_KEY]
    assert set(entry) == {"serialize", "label_column", "max_length"}


def test_inference_metadata_resolves_text_columns_the_config_left_to_the_data():
    config = validate_config({"split": {"label_column": "code"}, "tokenize": {"max_length": 99}})
    data_metadata = {"config": {"serialize": {"text_columns": [], "separator": "; ", "retain_columns": ["id"]},
                                "split": {"label_column": "code"}},
                     "text_columns": ["supplier", "amount"], "tokenize": {"max_length": 48}}
    entry = inference_metadata(config, data_metadata)
    assert entry["serialize"]["text_columns"] == ["supplier", "amount"]
    assert entry["serialize"]["separator"] == "; " and entry["serialize"]["retain_columns"] == ["id"]
    assert entry["label_column"] == "code" and entry["max_length"] == 48  # what the data was tokenized with


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_texts_are_byte_identical_to_what_preprocess_made(tiny_bert: Path, tmp_path: Path, suffix: str):
    """Floats, dates, text and missing values, through each file format: the text predict builds for a row is
    the text preprocess built for it (matched by the retained line_id)."""
    import datasets

    data = write_demo_data(tmp_path / f"ledger{suffix}", rows=80, seed=5)
    model_dir = build_model_folder(tmp_path, tiny_bert, data, significant_digits=2)
    trained = datasets.load_from_disk(str(tmp_path / "preprocessed"))
    preprocessed = {line: text for split in trained.values() for line, text in zip(split["line_id"], split["text"], strict=True)}
    frame = load_table(str(data), "--data", text_columns=[LABEL_COLUMN])
    texts = Predictor.load(str(model_dir)).texts(frame)
    assert len(preprocessed) == len(frame) == 80
    assert dict(zip(frame["line_id"], texts, strict=True)) == preprocessed
    assert any(" | amount: " in text for text in texts)  # the model's separator, not the default


# --------------------------------------------------------------------------------------------- scores
def test_predict_gives_one_row_per_input_in_input_order(predictor: Predictor, frame: pd.DataFrame):
    out = predictor.predict(frame, top_k=3, batch_size=16)
    assert list(out.columns) == OUTPUT_COLUMNS
    assert out["line_id"].tolist() == frame["line_id"].tolist()
    probabilities = predictor.probabilities(frame, batch_size=16)
    real = list(predictor.label_map.real_labels)
    assert probabilities.shape == (len(frame), len(real))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # Rows already serialized (a preprocess output's text) score the same.
    np.testing.assert_array_equal(predictor.probabilities_of_texts(predictor.texts(frame), batch_size=16), probabilities)
    assert out["predicted_label"].tolist() == [real[i] for i in probabilities.argmax(axis=1)]
    np.testing.assert_allclose(out["probability"], probabilities.max(axis=1), rtol=1e-6)
    assert all(len(labels) == 3 and labels[0] == best for labels, best in zip(out["top_labels"], out["predicted_label"], strict=True))
    assert all(p[0] >= p[1] >= p[2] for p in out["top_probabilities"])


def test_token_budget_batches_take_more_short_rows():
    from kubetune.inference import token_budget_batches

    assert token_budget_batches(np.array([30, 20, 10, 10, 10, 10, 5, 5]), 40) == [(0, 1), (1, 3), (3, 7), (7, 8)]
    assert token_budget_batches(np.array([99, 3]), 40) == [(0, 1), (1, 2)]  # a row longer than the budget goes alone
    assert token_budget_batches(np.array([], dtype=int), 40) == []


def test_order_is_kept_whatever_the_length_sorting_does(predictor: Predictor, frame: pd.DataFrame):
    """Batches are made of rows sorted by token length: scoring them in other batches, or in reverse, gives the same
    rows back in the same places."""
    rows = frame.head(24)
    batched = predictor.probabilities(rows, batch_size=5)
    one_by_one = predictor.probabilities(rows, batch_size=1)  # at most 1 x max_length tokens a batch: 1-3 rows
    reversed_rows = predictor.probabilities(rows.iloc[::-1], batch_size=7)[::-1]
    lengths = [len(ids) for ids in predictor.load_weights()[1](predictor.texts(rows))["input_ids"]]
    assert len(set(lengths)) > 3  # the sort really reorders
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    np.testing.assert_allclose(batched, reversed_rows, atol=1e-5)


def test_dummy_slots_are_never_predicted_even_when_their_logits_are_huge(predictor: Predictor, frame: pd.DataFrame):
    import torch

    model, tokenizer = predictor.load_weights()
    batch = tokenizer(predictor.texts(frame.head(8)), padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    hooks = dict(model._forward_hooks)
    model._forward_hooks.clear()  # without the dummy-slot mask the forced head picks a dummy slot
    try:
        with torch.inference_mode():
            raw = model(**batch).logits
    finally:
        model._forward_hooks.update(hooks)
    assert (raw.argmax(dim=-1) >= predictor.label_map.num_real_labels).all()
    out = predictor.predict(frame, top_k=100)
    real = set(predictor.label_map.real_labels)
    assert set(out["predicted_label"]) <= real
    assert all(set(labels) <= real and len(labels) == len(real) for labels in out["top_labels"])  # k capped at the real labels


def test_needs_review_is_probability_below_the_threshold(predictor: Predictor, frame: pd.DataFrame):
    out = predictor.predict(frame)
    threshold = float(np.median(out["probability"]))
    flagged = predictor.predict(frame, review_threshold=threshold)
    assert flagged["needs_review"].tolist() == (flagged["probability"] < threshold).tolist()
    assert 0 < flagged["needs_review"].sum() < len(frame)
    assert not predictor.predict(frame, review_threshold=0.0)["needs_review"].any()


def test_missing_columns_name_them(predictor: Predictor, frame: pd.DataFrame):
    with pytest.raises(DataError, match=r"^new\.csv: column 'amount', 'payment_date' missing \(columns found: .*\); "
                                        r"the model .* reads supplier, description, amount, payment_date"):
        predictor.check_columns(frame.drop(columns=["amount", "payment_date"]), "new.csv")


# ------------------------------------------------------------------------------------- predict_file
def test_predict_file_writes_parquet_and_scores_the_label_column(model_dir: Path, frame: pd.DataFrame, tmp_path: Path):
    from kubetune.train.metrics import classification_metrics

    rows = frame.copy()
    rows[LABEL_COLUMN] = rows[LABEL_COLUMN].astype(object)
    rows.loc[0, LABEL_COLUMN] = "9999-NEW"  # a code the model never saw
    rows.loc[1, LABEL_COLUMN] = None
    data = tmp_path / "new.parquet"
    rows.to_parquet(data)
    summary = predict_file(str(model_dir), str(data), str(tmp_path / "out.parquet"), config_for(top_k=2))
    written = pd.read_parquet(tmp_path / "out.parquet")
    assert list(written.columns) == OUTPUT_COLUMNS and len(written) == len(rows) == summary.rows
    assert all(len(labels) == 2 for labels in written["top_labels"])
    assert (summary.labelled_rows, summary.unknown_label_rows, summary.unlabelled_rows) == (len(rows) - 2, 1, 1)
    predictor = Predictor.load(str(model_dir))
    probabilities = predictor.probabilities(rows.iloc[2:])
    ids = [predictor.label_map.label2id[label] for label in rows[LABEL_COLUMN].iloc[2:]]
    expected = classification_metrics(probabilities, np.asarray(ids), predictor.label_map.num_real_labels)
    assert summary.metrics == pytest.approx(expected)
    assert summary.needs_review == int(written["needs_review"].sum())
    assert sum(summary.label_counts.values()) == len(rows)
    assert summary.rows_per_second > 0
    text = "\n".join(summary.lines())
    assert "accuracy" in text and "macro F1" in text
    assert "left out of the metrics: 1 rows with a label the model was not trained on and 1 rows without a label" in text
    assert summary.to_dict()["metrics"] == summary.metrics and "| predicted label |" in summary.to_markdown()


def test_without_the_label_column_there_are_no_metrics(model_dir: Path, ledger: Path, tmp_path: Path):
    data = tmp_path / "unlabelled.csv"
    pd.read_csv(ledger).drop(columns=[LABEL_COLUMN]).to_csv(data, index=False)
    summary = predict_file(str(model_dir), str(data), str(tmp_path / "out.parquet"), config_for())
    assert summary.metrics is None and summary.labelled_rows == 0
    assert not any("accuracy" in line for line in summary.lines())


def test_a_folder_in_object_storage_gives_the_same_predictions(model_dir: Path, ledger: Path, tmp_path: Path,
                                                                s3_bucket: str):
    from kubetune import storage

    remote = f"s3://{s3_bucket}/runs/r1/train/model"
    storage.upload_dir(model_dir, remote)
    storage.upload_dir(ledger.parent, f"s3://{s3_bucket}/data")
    config = config_for()
    predict_file(str(model_dir), str(ledger), str(tmp_path / "local.parquet"), config)
    predict_file(remote, f"s3://{s3_bucket}/data/{ledger.name}", f"s3://{s3_bucket}/out/predictions.parquet", config)
    storage.download(f"s3://{s3_bucket}/out/predictions.parquet", tmp_path / "remote")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "local.parquet"),
                                  pd.read_parquet(tmp_path / "remote" / "predictions.parquet"))


def test_a_model_from_before_predict_reads_its_run_config(model_dir: Path, frame: pd.DataFrame, tmp_path: Path):
    old = tmp_path / "train" / "model"
    shutil.copytree(model_dir, old)
    metadata = json.loads((old / "model_metadata.json").read_text())
    del metadata[INFERENCE_KEY]
    (old / "model_metadata.json").write_text(json.dumps(metadata))
    shutil.copy(model_dir.parent / "config.yaml", tmp_path / "train" / "config.yaml")
    fallback = Predictor.load(str(old))
    assert fallback.input_columns == tuple(TEXT_COLUMNS) and fallback.texts(frame) == Predictor.load(str(model_dir)).texts(frame)
    (tmp_path / "train" / "config.yaml").unlink()
    with pytest.raises(DataError, match=r"predates `kubetune predict` .*no config\.yaml is beside it\); retrain it"):
        Predictor.load(str(old))


@pytest.mark.parametrize(("write", "message"), [
    (lambda m: {**m, INFERENCE_KEY: {**m[INFERENCE_KEY], "serialize": {"text_colums": ["a"]}}},
     r"has an 'inference' entry this kubetune cannot read \(ValidationError: .*\); score it with the kubetune that"),
    (lambda m: "{not json", r"model_metadata\.json is not JSON \(JSONDecodeError: .*\); give a model/ folder"),
])
def test_model_metadata_it_cannot_read_is_one_line(model_dir: Path, tmp_path: Path, write, message: str):
    broken = tmp_path / "model"
    shutil.copytree(model_dir, broken)
    written = write(json.loads((model_dir / "model_metadata.json").read_text()))
    (broken / "model_metadata.json").write_text(written if isinstance(written, str) else json.dumps(written))
    with pytest.raises(DataError, match=message) as caught:
        Predictor.load(str(broken))
    assert "\n" not in str(caught.value)


def test_a_rerun_replaces_its_own_output_but_never_a_users_file(model_dir: Path, ledger: Path, tmp_path: Path):
    output = tmp_path / "out.parquet"
    predict_file(str(model_dir), str(ledger), str(output), config_for())
    predict_file(str(model_dir), str(ledger), str(output), config_for(top_k=1))
    assert all(len(labels) == 1 for labels in pd.read_parquet(output)["top_labels"])
    mine = tmp_path / "mine.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(mine)
    with pytest.raises(KubetuneError, match=r"--output: .*mine\.parquet exists and is not a `kubetune predict` output"):
        predict_file(str(model_dir), str(ledger), str(mine), config_for())
    assert pd.read_parquet(mine).equals(pd.DataFrame({"a": [1]}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.parquet", "out.parquet"]  # no partial file left


# ------------------------------------------------------------------------------------ the command line
def bad_model(model_dir: Path, tmp_path: Path, without: str) -> Path:
    broken = tmp_path / "broken" / "model"
    shutil.copytree(model_dir, broken)
    (broken / without).unlink()
    return broken


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing-column", r"--data .*new\.csv: column 'supplier' missing \(columns found: .*\); the model .* reads supplier"),
        ("no-label-map", r"--model: .*broken/model has no label_map\.json: it is not a model/ folder written by `kubetune train`"),
        ("no-metadata", r"--model: .*broken/model has no model_metadata\.json: it is not a model/ folder"),
        ("sft-model-without-its-config", r"--model: .*broken/model is a task: sft model and this config has task: "
                                         r"classification; pass --config with the task: sft config it was trained with"),
        ("no-model", r"--model: .*nowhere not found; give a train output's model/ folder"),
        ("unknown-registered-name", r"--model: models:/nobody@champion: the MLflow registry at sqlite:///.* has no "
                                    r"registered model 'nobody' with alias 'champion'"),
        ("output-in-a-file", r"--output: .*new\.csv is a file, so .*out\.parquet cannot be created in it"),
        ("output-is-a-folder", r"--output: .*is a folder; give a file name"),
        ("no-data", r"--data: .*absent\.csv not found"),
        ("unknown-scheme", r"--data: kubetune cannot read or write gs:// URIs \(got 'gs://bucket/new\.csv'\)"),
    ],
)
def test_bad_input_is_one_line_naming_it_exit_2_and_no_output(case: str, message: str, model_dir: Path, ledger: Path,
                                                              tmp_path: Path, capsys):
    data = tmp_path / "new.csv"
    pd.read_csv(ledger).to_csv(data, index=False)
    output = tmp_path / "out.parquet"
    model, extra = str(model_dir), []
    if case == "missing-column":
        pd.read_csv(ledger).drop(columns=["supplier"]).to_csv(data, index=False)
    elif case == "no-label-map":
        model = str(bad_model(model_dir, tmp_path, "label_map.json"))
    elif case == "no-metadata":
        model = str(bad_model(model_dir, tmp_path, "model_metadata.json"))
    elif case == "sft-model-without-its-config":  # what `task: sft` training writes: no labels, task in the metadata
        broken = bad_model(model_dir, tmp_path, "label_map.json")
        metadata = json.loads((broken / "model_metadata.json").read_text())
        (broken / "model_metadata.json").write_text(json.dumps({**metadata, "task": "sft"}))
        model = str(broken)
    elif case == "no-model":
        model = str(tmp_path / "nowhere")
    elif case == "unknown-registered-name":
        model, extra = "models:/nobody@champion", [f"tracking.tracking_uri=sqlite:///{tmp_path}/registry.db"]
    elif case == "output-in-a-file":
        output = data / "out.parquet"
    elif case == "output-is-a-folder":
        output = tmp_path / "folder"
        output.mkdir()
    elif case == "no-data":
        data = tmp_path / "absent.csv"
    elif case == "unknown-scheme":
        data = "gs://bucket/new.csv"
    before = sorted(p.name for p in tmp_path.rglob("*") if "broken" not in p.parts)
    code = main(["predict", "--model", model, "--data", str(data), "--output", str(output), *extra])
    # Log records (mlflow creating a fresh SQLite store says so) are not the error.
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not re.match(r"\d{4}/\d\d/\d\d |\d\d:\d\d:\d\d ", line)]
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith("kubetune: error: ")

    assert re.search(message, err[0]), err[0]
    after = sorted(p.name for p in tmp_path.rglob("*") if "broken" not in p.parts and p.name != "registry.db")
    assert after == [name for name in before if name != "registry.db"]  # nothing written


def test_the_command_prints_rows_per_second_review_share_top_labels_and_metrics(model_dir: Path, ledger: Path,
                                                                                 tmp_path: Path, capsys):
    code = main(["predict", "--model", str(model_dir), "--data", str(ledger), "--output", str(tmp_path / "p.parquet"),
                 "predict.review_threshold=0.9"])
    out = capsys.readouterr().out
    assert code == 0
    assert "150 rows scored in" in out and "rows/s" in out
    assert "needs review (probability < 0.9): 150 rows (100.0%)" in out  # an untrained model is never that sure
    assert "most predicted labels" in out and "accuracy" in out and "macro F1" in out
    assert len(pd.read_parquet(tmp_path / "p.parquet")) == 150


def test_new_demo_lines_can_be_scored_straight_from_the_generator(model_dir: Path, tmp_path: Path, capsys):
    code = main(["predict", "--model", str(model_dir), "--data", "demo://ledger?rows=30&seed=9", "--output",
                 str(tmp_path / "demo.parquet")])
    assert code == 0 and "30 rows scored in" in capsys.readouterr().out
    assert pd.read_parquet(tmp_path / "demo.parquet")["line_id"].tolist()[:2] == ["L0090000000", "L0090000001"]
