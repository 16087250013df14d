"""`task: sft` through the stages and the trainer: a learnable toy task whose loss falls (full fine-tune and
LoRA, padded, packed and flattened), the output tree, the evaluate stage's test loss, resume, and 2 CPU ranks
under DeepSpeed ZeRO-2."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from kubetune.data.stages import preprocess, tokenize
from kubetune.train.recipe import train

from ..conftest import REPO_ROOT
from ..train.conftest import torchrun_command
from .conftest import sft_config, toy_rows, write_jsonl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("toy-sft") / "colours.jsonl", toy_rows(640))


def prepared(config, root: Path) -> Path:
    preprocess(config, str(root / "pre"))
    tokenize(config, str(root / "pre"), str(root / "tok"))
    return root / "tok"


def logged_losses(out: Path) -> list[float]:
    history = json.loads((out / "model" / "training_history.json").read_text())
    return [point["loss"] for point in history["train"]]


def test_full_fine_tune_learns_the_toy_task_and_evaluate_scores_test(tiny_qwen2_lm: Path, toy_data: Path, tmp_path: Path):
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM

    from kubetune.evaluation import evaluate
    from kubetune.evaluation.sft import token_loss

    config = sft_config(tiny_qwen2_lm, toy_data, lora={"enable": False}, training={"learning_rate": 1e-2, "epochs": 3})
    data = prepared(config, tmp_path)
    metrics = train(config, str(data), str(tmp_path / "out"))
    losses = logged_losses(tmp_path / "out")
    # The answers are 6 colours: a learnt model is far below the untrained one's ~log(300 tokens) = 5.7.
    assert losses[0] > 4.5 and metrics["eval_loss"] < 1.2, (losses, metrics)
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    model_dir = tmp_path / "out" / "model"
    names = {p.name for p in model_dir.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja", "model_metadata.json",
            "training_metrics.json", "training_history.json"} <= names
    assert "label_map.json" not in names
    metadata = json.loads((model_dir / "model_metadata.json").read_text())
    assert (metadata["task"], metadata["inference"]["format"], metadata["max_length"]) == ("sft", "prompt_response", 32)

    with_generations = config.model_copy(update={"sft": config.sft.model_copy(update={"eval_generations": 8, "max_new_tokens": 6})})
    result = evaluate(with_generations, str(model_dir), str(data), str(tmp_path / "evaluation"))
    written = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert written == result.metrics and written["generations"] == 8 and 0.0 <= written["exact_match"] <= 1.0
    report = (tmp_path / "evaluation" / "report.html").read_text()
    assert "Generated on test prompts" in report and report.count("<tr><td><pre>") == 8
    assert "what colour is the" in report and "exact match" in report
    assert report.count("<td>✓</td>") == round(written["exact_match"] * 8)
    test = load_from_disk(str(data / "test"))
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2_lm)
    untrained, tokens = token_loss(base, test, 0, 8)
    assert written["tokens"] == tokens == sum(sum(1 for x in row if x != -100) for row in test["labels"])
    assert written["loss"] < 1.2 and untrained / tokens > 4.5
    assert written["perplexity"] == pytest.approx(math.exp(written["loss"]))


def test_lora_on_every_projection_with_packing_trains(tiny_llama_lm: Path, toy_data: Path, tmp_path: Path):
    config = sft_config(tiny_llama_lm, toy_data, sft={"packing": True, "max_seq_length": 32},
                        training={"learning_rate": 3e-2, "epochs": 2})
    data = prepared(config, tmp_path)
    assert "position_ids" in json.loads((data / "dataset_metadata.json").read_text())["tokenize"]["columns"]["train"]
    diagnostics = json.loads((data / "tokenize_diagnostics.json").read_text())
    assert diagnostics["packing"]["rows"] < diagnostics["packing"]["examples"] == diagnostics["splits"]["train"]["rows"]
    metrics = train(config, str(data), str(tmp_path / "out"))
    metadata = json.loads((tmp_path / "out" / "model" / "model_metadata.json").read_text())
    assert metadata["lora"]["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert metadata["lora"]["task_type"] == "CAUSAL_LM"
    # 2 layers x (q,k,v,o: 32→32, 32→16 twice, 32→32; gate, up: 32→64; down: 64→32) x r=8 adapters
    per_layer = 8 * ((32 + 32) + 2 * (32 + 16) + (32 + 32) + 2 * (32 + 64) + (64 + 32))
    assert metadata["training"]["trainable_parameters"] == 2 * per_layer
    losses = logged_losses(tmp_path / "out")
    # Adapters on a random model whose embeddings stay frozen learn slowly (the full fine-tune above is the
    # strong-margin test); the loss still falls: every logged loss of the second half is below the first's.
    assert losses[-1] < losses[0] - 0.15 and max(losses[len(losses) // 2:]) < losses[0] - 0.1, losses
    assert (tmp_path / "out" / "model" / "adapter_model.safetensors").is_file()
    assert metrics["eval_loss"] < losses[0]


def test_flattened_batches_train(tiny_qwen2_lm: Path, toy_data: Path, tmp_path: Path):
    config = sft_config(tiny_qwen2_lm, toy_data, sft={"packing": True, "packing_method": "flatten"}, lora={"enable": False},
                        training={"learning_rate": 3e-3, "max_steps": 12, "logging_steps": 4})
    metrics = train(config, str(prepared(config, tmp_path)), str(tmp_path / "out"))
    losses = logged_losses(tmp_path / "out")
    assert metrics["global_step"] == 12 and losses[-1] < losses[0], losses


def test_restart_resumes_from_the_newest_checkpoint(tiny_qwen2_lm: Path, toy_data: Path, tmp_path: Path):
    first = sft_config(tiny_qwen2_lm, toy_data, training={"max_steps": 4, "save_steps": 2})
    data = prepared(first, tmp_path)
    train(first, str(data), str(tmp_path / "out"))
    second = sft_config(tiny_qwen2_lm, toy_data, training={"max_steps": 6, "save_steps": 2})
    metrics = train(second, str(data), str(tmp_path / "out"))
    metadata = json.loads((tmp_path / "out" / "model" / "model_metadata.json").read_text())
    assert metadata["training"]["resumed_from"] == "checkpoint-4"
    assert metrics["global_step"] == 6


def test_data_tokenized_for_classification_is_refused(tiny_qwen2_lm: Path, toy_data: Path, tmp_path: Path, tiny_bert: Path):
    from kubetune.errors import DataError

    from ..train.conftest import build_tokenized

    data = build_tokenized(tmp_path / "classification", tiny_bert)
    with pytest.raises(DataError, match=r"was tokenized for classification, not task: sft"):
        train(sft_config(tiny_qwen2_lm, toy_data), str(data), str(tmp_path / "out"))


def test_two_cpu_ranks_under_zero2(tiny_qwen2_lm: Path, toy_data: Path, tmp_path: Path):
    config = sft_config(tiny_qwen2_lm, toy_data, deepspeed={"enable": True, "stage": 2},
                        training={"batch_size": 8, "max_steps": 8, "logging_steps": 4, "eval_steps": 4, "save_steps": 4})
    data = prepared(config, tmp_path)
    config_file = tmp_path / "run.yaml"
    config_file.write_text(config.to_yaml())
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(torchrun_command(2, "train", "--config", str(config_file), "--data", str(data), "--output", str(out)),
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    metrics = json.loads((out / "model" / "training_metrics.json").read_text())
    metadata = json.loads((out / "model" / "model_metadata.json").read_text())
    assert metrics["global_step"] == 8 and metadata["training"]["world_size"] == 2 and metadata["training"]["deepspeed"]
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))
    assert yaml.safe_load((out / "config.yaml").read_text())["task"] == "sft"
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("checkpoint-"))[-1] == "checkpoint-8"
