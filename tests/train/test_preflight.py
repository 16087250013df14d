"""Every bad input stops `kubetune train` before the model is loaded: one line naming the key or
column, exit 2, nothing written."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from kubetune.cli import main

from .conftest import write_config


def tokenized_copy(source: Path, target: Path, change: Callable | None = None) -> Path:
    """A copy of a TOKENIZED/ folder, its DatasetDict passed through `change` first."""
    from datasets import load_from_disk

    splits = load_from_disk(str(source))
    if change is not None:
        splits = change(splits)
    splits.save_to_disk(str(target))
    for name in ("label_map.json", "dataset_metadata.json"):
        shutil.copy(source / name, target / name)
    return target


def set_label(split: str, value: int) -> Callable:
    def change(splits):
        splits[split] = splits[split].map(lambda row, i: {"labels": value if i == 3 else row["labels"]}, with_indices=True)
        return splits

    return change


def run_train(capsys: pytest.CaptureFixture, config: Path, data: Path, out: Path, *overrides: str) -> list[str]:
    code = main(["train", "--config", str(config), "--data", str(data), "--output", str(out), *overrides])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kubetune: error:")]
    assert code == 2
    assert len(errors) == 1, errors
    return errors


@pytest.fixture
def config(tiny_bert: Path, tmp_path: Path) -> Path:
    return write_config(tmp_path / "run.yaml", tiny_bert)


def test_missing_column(capsys, config: Path, bert_tokenized: Path, tmp_path: Path):
    data = tokenized_copy(bert_tokenized, tmp_path / "data", lambda s: s.remove_columns("length"))
    [error] = run_train(capsys, config, data, tmp_path / "out")
    assert "split has no column 'length'" in error and "kubetune tokenize" in error
    assert not (tmp_path / "out").exists()


def test_label_id_beyond_the_label_slots(capsys, config: Path, bert_tokenized: Path, tmp_path: Path):
    data = tokenized_copy(bert_tokenized, tmp_path / "data", set_label("validation", 9))
    [error] = run_train(capsys, config, data, tmp_path / "out")
    assert "'validation' split holds label id 9 in column 'labels'" in error and "split.max_classes" in error


def test_negative_label_id(capsys, config: Path, bert_tokenized: Path, tmp_path: Path):
    data = tokenized_copy(bert_tokenized, tmp_path / "data", set_label("train", -1))
    [error] = run_train(capsys, config, data, tmp_path / "out")
    assert "'train' split holds label id -1 in column 'labels'" in error


def test_label_id_in_a_dummy_slot(capsys, config: Path, bert_tokenized: Path, tmp_path: Path):
    data = tokenized_copy(bert_tokenized, tmp_path / "data", set_label("train", 4))
    [error] = run_train(capsys, config, data, tmp_path / "out")
    assert "label id 4 in column 'labels', a dummy slot ('dummy1')" in error


def test_empty_train_split(capsys, config: Path, bert_tokenized: Path, tmp_path: Path):
    def empty_train(splits):
        splits["train"] = splits["train"].select([])
        return splits

    data = tokenized_copy(bert_tokenized, tmp_path / "data", empty_train)
    [error] = run_train(capsys, config, data, tmp_path / "out")
    assert "'train' split is empty" in error and "split.test_size" in error


def test_empty_validation_split(capsys, config: Path, bert_tokenized: Path, tmp_path: Path):
    def empty_validation(splits):
        splits["validation"] = splits["validation"].select([])
        return splits

    data = tokenized_copy(bert_tokenized, tmp_path / "data", empty_validation)
    [error] = run_train(capsys, config, data, tmp_path / "out")
    assert "'validation' split is empty" in error and "split.val_size" in error


def test_base_model_path_that_does_not_exist(capsys, config: Path, bert_tokenized: Path, tmp_path: Path):
    [error] = run_train(capsys, config, bert_tokenized, tmp_path / "out", f"model.name={tmp_path}/no-such-model")
    assert "model.name:" in error and "does not exist" in error
    assert not (tmp_path / "out").exists()


def test_bf16_on_a_machine_without_it(capsys, config: Path, bert_tokenized: Path, tmp_path: Path):
    [error] = run_train(capsys, config, bert_tokenized, tmp_path / "out", "training.mixed_precision=bf16")
    assert "training.mixed_precision: bf16 needs a GPU with bf16 support" in error


def test_fp16_on_a_machine_without_a_gpu(capsys, config: Path, bert_tokenized: Path, tmp_path: Path):
    [error] = run_train(capsys, config, bert_tokenized, tmp_path / "out", "training.mixed_precision=fp16")
    assert "training.mixed_precision: fp16 needs a GPU" in error


def test_label_slots_differ_from_the_config(capsys, config: Path, bert_tokenized: Path, tmp_path: Path):
    [error] = run_train(capsys, config, bert_tokenized, tmp_path / "out", "split.max_classes=64")
    assert "split.max_classes is 64 but the tokenized data has 6 label slots" in error


def test_unknown_metric_for_best_model(capsys, config: Path, bert_tokenized: Path, tmp_path: Path):
    [error] = run_train(capsys, config, bert_tokenized, tmp_path / "out", "training.metric_for_best_model=f1")
    assert "training.metric_for_best_model: unknown metric 'f1'" in error


def test_unknown_optimizer(capsys, config: Path, bert_tokenized: Path, tmp_path: Path):
    [error] = run_train(capsys, config, bert_tokenized, tmp_path / "out", "training.optim=adamw_torh")
    assert "training.optim: unknown optimizer 'adamw_torh'; did you mean 'adamw_torch'?" in error


def test_data_tokenized_for_another_model(capsys, config: Path, qwen2_tokenized: Path, tmp_path: Path):
    [error] = run_train(capsys, config, qwen2_tokenized, tmp_path / "out")
    assert "column 'input_ids'" in error and "has 300 tokens" in error and "tokenize.model_name" in error


def test_data_folder_that_does_not_exist(capsys, config: Path, tmp_path: Path):
    [error] = run_train(capsys, config, tmp_path / "missing", tmp_path / "out")
    assert "--data" in error and "does not exist" in error


def test_data_folder_that_is_not_tokenized(capsys, config: Path, tmp_path: Path):
    (tmp_path / "folder").mkdir()
    [error] = run_train(capsys, config, tmp_path / "folder", tmp_path / "out")
    assert "is not a tokenized dataset" in error


def test_output_folder_of_someone_else(capsys, config: Path, bert_tokenized: Path, tmp_path: Path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    [error] = run_train(capsys, config, bert_tokenized, tmp_path / "out")
    assert "--output" in error and "notes.txt" in error
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["notes.txt"]


def test_an_empty_test_split_is_accepted_by_the_trainer(config: Path, bert_tokenized: Path, tmp_path: Path):
    from kubetune.config import load_config
    from kubetune.train.recipe import train

    def empty_test(splits):
        splits["test"] = splits["test"].select([])
        return splits

    data = tokenized_copy(bert_tokenized, tmp_path / "data", empty_test)
    metrics = train(load_config(config, ["training.max_steps=2"]), str(data), str(tmp_path / "out"))
    assert "eval_accuracy" in metrics
    assert not [name for name in metrics if name.startswith("test_")]


# ------------------------------------------------------------------ a finished output is left alone
@pytest.fixture(scope="module")
def finished_output(tiny_bert: Path, bert_tokenized: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT of a finished 2-step training run (it has _COMPLETE, config.yaml, run.json, model/)."""
    from kubetune.config import load_config
    from kubetune.train.recipe import train

    root = tmp_path_factory.mktemp("finished")
    train(load_config(write_config(root / "run.yaml", tiny_bert), ["training.max_steps=2"]), str(bert_tokenized),
          str(root / "out"))
    return root / "out"


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def rerun_into_finished(capsys, config: Path, data: Path, finished: Path, tmp_path: Path, *overrides: str) -> str:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    before = snapshot(out)
    assert {"_COMPLETE", "config.yaml", "run.json", "model/adapter_model.safetensors"} <= set(before)
    [error] = run_train(capsys, config, data, out, *overrides)
    assert snapshot(out) == before
    return error


def test_lora_target_the_model_lacks_leaves_a_finished_output_alone(capsys, config, bert_tokenized, finished_output,
                                                                    tmp_path):
    error = rerun_into_finished(capsys, config, bert_tokenized, finished_output, tmp_path,
                                "lora.target_modules=[query, q_proj]")
    assert error == (
        "kubetune: error: lora.target_modules: BertForSequenceClassification has no module named q_proj; its linear "
        "layers are classifier, dense, key, query, value"
    )


def test_modules_to_save_the_model_lacks_leaves_a_finished_output_alone(capsys, config, bert_tokenized,
                                                                        finished_output, tmp_path):
    error = rerun_into_finished(capsys, config, bert_tokenized, finished_output, tmp_path,
                                "lora.modules_to_save=[head]")
    assert error == "kubetune: error: lora.modules_to_save: BertForSequenceClassification has no module named head"


@pytest.mark.parametrize("step", ["instantiate_model", "apply_lora", "build_training_arguments", "prepare_resume"])
def test_an_error_of_a_later_step_leaves_a_finished_output_alone(capsys, monkeypatch, config, bert_tokenized,
                                                                 finished_output, tmp_path, step: str):
    """What only building the model, its arguments or the resume can find comes before OUT is opened
    (not only what preflight checks: e.g. a DeepSpeed checkpoint written by another number of ranks)."""
    from kubetune.errors import KubetuneError
    from kubetune.train import recipe

    def rejects(*_args, **_kwargs):
        raise KubetuneError(f"{step} rejected the input")

    monkeypatch.setattr(recipe, step, rejects)
    error = rerun_into_finished(capsys, config, bert_tokenized, finished_output, tmp_path)
    assert error == f"kubetune: error: {step} rejected the input"
