"""Single-process training with the tiny models: learning, the exact output tree, what is saved."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from kubetune.config import load_config, validate_config
from kubetune.train.model import load_trained_classifier
from kubetune.train.recipe import train

from .conftest import write_config

CHECKPOINT_FILES = {
    "README.md", "_COMPLETE", "adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "rng_state.pth",
    "scheduler.pt", "tokenizer.json", "tokenizer_config.json", "trainer_state.json", "training_args.bin",
    "loss_state_0.json",  # kubetune.train.trainer.LOSS_STATE: the running loss a resume continues
}
MODEL_FILES = {
    "README.md", "_COMPLETE", "adapter_config.json", "adapter_model.safetensors", "label_map.json",
    "model_metadata.json", "tokenizer.json", "tokenizer_config.json", "training_metrics.json", "training_history.json",
}
# LoRA r=8 on query and value of 2 layers (hidden 32) plus the 32x6 head with its bias
BERT_TRAINABLE = 2 * 2 * (8 * 32 + 32 * 8) + (32 * 6 + 6)


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def bert_run(tiny_bert: Path, bert_tokenized: Path, tmp_path_factory: pytest.TempPathFactory):
    """One LoRA training of the tiny BERT on the toy task: 8 epochs of 16 steps (a random 2-layer model
    with frozen embeddings needs them to learn it with a clear margin)."""
    root = tmp_path_factory.mktemp("bert-run")
    config = load_config(write_config(root / "run.yaml", tiny_bert, training={"epochs": 8}))
    out = root / "out"
    metrics = train(config, str(bert_tokenized), str(out))
    return config, out, metrics


def test_lora_training_lowers_the_loss(bert_run):
    _, out, metrics = bert_run
    history = json.loads((out / "checkpoints" / "checkpoint-128" / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 32  # every 4 of 128 steps
    assert losses[-1] < losses[0] - 0.1
    assert metrics["eval_loss"] < math.log(4) - 0.2  # ln 4: a uniform guess over the 4 real classes
    assert metrics["eval_accuracy"] > 0.5


def test_output_tree_is_exact(bert_run):
    _, out, _ = bert_run
    # save_total_limit 2 keeps the two newest checkpoints, and the best one too wherever it is (the toy
    # task's validation macro F1 often plateaus, so which step is best varies with the machine's float order).
    state = json.loads((out / "checkpoints" / "checkpoint-128" / "trainer_state.json").read_text())
    best = Path(state["best_model_checkpoint"]).name
    assert best.startswith("checkpoint-") and int(best.split("-")[1]) % 16 == 0
    expected = {"_COMPLETE", "config.yaml", "run.json"}
    expected |= {f"checkpoints/{checkpoint}/{name}" for checkpoint in {"checkpoint-112", "checkpoint-128", best}
                 for name in CHECKPOINT_FILES}
    expected |= {f"model/{name}" for name in MODEL_FILES}
    assert tree(out) == expected


def test_trainable_parameter_count_is_exact(bert_run):
    _, out, metrics = bert_run
    metadata = json.loads((out / "model" / "model_metadata.json").read_text())
    assert metadata["training"]["trainable_parameters"] == BERT_TRAINABLE
    assert metrics["trainable_parameters"] == BERT_TRAINABLE


def test_model_metadata_describes_the_model(bert_run, bert_tokenized: Path):
    config, out, metrics = bert_run
    metadata = json.loads((out / "model" / "model_metadata.json").read_text())
    data_metadata = json.loads((bert_tokenized / "dataset_metadata.json").read_text())
    assert metadata["label_slots"] == 6 and metadata["num_real_labels"] == 4
    assert metadata["lora"]["r"] == 8 and metadata["lora"]["target_modules"] == ["query", "value"]
    assert metadata["lora"]["modules_to_save"] == ["classifier"]
    assert metadata["data"]["inputs"] == data_metadata["inputs"]  # the data's checksums
    assert metadata["data"]["cache_key"] == data_metadata["cache_key"]
    assert metadata["metrics"] == metrics
    # What inference reads raw rows with (kubetune.inference): the data's own settings where it records them
    # (this toy data records its label column and max_length, not its serialization: the config's, here).
    assert metadata["inference"] == {"serialize": {**config.serialize.model_dump(mode="json")}, "label_column": "category",
                                     "max_length": 32}
    assert set(metadata["versions"]) >= {"torch", "transformers", "peft", "kubetune"}
    training_metrics = json.loads((out / "model" / "training_metrics.json").read_text())
    assert training_metrics == metrics and all(isinstance(v, float) for v in training_metrics.values())
    assert {"eval_accuracy", "eval_macro_f1", "eval_top5_accuracy"} & set(metrics) == {"eval_accuracy", "eval_macro_f1"}
    # The test split is the evaluate stage's: the trainer scores validation only.
    assert not [name for name in metrics if name.startswith("test_")]


def test_speed_and_memory_are_logged(bert_run):
    _, out, metrics = bert_run
    assert metrics["speed/train_samples_per_second"] > 0
    assert 0 < metrics["speed/train_padding_fraction"] < 1
    assert metrics["speed/train_tokens_per_second"] < metrics["speed/train_samples_per_second"] * 32


def test_resolved_config_is_written_next_to_the_outputs(bert_run):
    config, out, _ = bert_run
    assert validate_config(yaml.safe_load((out / "config.yaml").read_text())) == config


def test_adapter_loads_with_peft(bert_run, tiny_bert: Path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    _, out, _ = bert_run
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=6)
    model = PeftModel.from_pretrained(base, out / "model")
    assert model.peft_config["default"].r == 8


def test_trained_classifier_reproduces_the_validation_metrics(bert_run, bert_tokenized: Path):
    from datasets import load_from_disk

    from kubetune.train.metrics import classification_metrics

    _, out, metrics = bert_run
    model, tokenizer, label_map = load_trained_classifier(out / "model")
    validation = load_from_disk(str(bert_tokenized))["validation"]
    batch = tokenizer.pad({"input_ids": validation["input_ids"], "attention_mask": validation["attention_mask"]},
                          return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits.numpy()
    again = classification_metrics(logits, validation["labels"], label_map.num_real_labels)
    assert again["accuracy"] == pytest.approx(metrics["eval_accuracy"])
    assert again["macro_f1"] == pytest.approx(metrics["eval_macro_f1"])


def test_tiny_qwen2_without_pad_token_trains(tiny_qwen2: Path, qwen2_tokenized: Path, tmp_path: Path):
    config = load_config(write_config(tmp_path / "run.yaml", tiny_qwen2), ["training.max_steps=8"])
    metrics = train(config, str(qwen2_tokenized), str(tmp_path / "out"))
    assert metrics["global_step"] == 8
    saved = json.loads((tmp_path / "out" / "model" / "tokenizer_config.json").read_text())
    assert saved["pad_token"] == "<|endoftext|>"
    assert json.loads((tmp_path / "out" / "model" / "model_metadata.json").read_text())["lora"]["modules_to_save"] == ["score"]


def test_merge_on_save_writes_a_model_that_predicts_like_the_adapter(tiny_bert: Path, bert_tokenized: Path, tmp_path: Path):
    config = load_config(write_config(tmp_path / "run.yaml", tiny_bert), ["training.max_steps=4", "lora.merge_on_save=true"])
    train(config, str(bert_tokenized), str(tmp_path / "out"))
    adapter, tokenizer, _ = load_trained_classifier(tmp_path / "out" / "model")
    merged, _, _ = load_trained_classifier(tmp_path / "out" / "model" / "merged")
    batch = tokenizer(["fuel invoice", "laptop fee ltd"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.allclose(adapter(**batch).logits, merged(**batch).logits, atol=1e-5)
    assert (tmp_path / "out" / "model" / "merged" / "model.safetensors").exists()


def test_full_fine_tune_saves_the_whole_model(tiny_bert: Path, bert_tokenized: Path, tmp_path: Path):
    config = load_config(write_config(tmp_path / "run.yaml", tiny_bert), ["training.max_steps=2", "lora.enable=false"])
    metrics = train(config, str(bert_tokenized), str(tmp_path / "out"))
    assert metrics["trainable_parameters"] == metrics["total_parameters"]
    assert (tmp_path / "out" / "model" / "model.safetensors").exists()
    model, _, _ = load_trained_classifier(tmp_path / "out" / "model")
    assert model.config.num_labels == 6
