"""Fixtures of the `task: sft` tests: tiny random causal LMs (2-layer Qwen2 and Llama) built from a config, each
with a byte-level BPE tokenizer trained on the spot and a small ChatML chat template (kubetune.tiny_models),
and a learnable toy SFT task."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ..conftest import corpus

# A learnable task: each item has one colour; the model learns to answer the prompt with it.
COLOURS = {"apple": "red", "banana": "yellow", "grass": "green", "sky": "blue", "coal": "black", "snow": "white"}
CHAT_WORDS = ["system user assistant", "what colour is the", "answer in one word", *COLOURS, *COLOURS.values()]


def build_lm(directory: Path, architecture: str) -> Path:
    from kubetune.tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(directory, architecture, corpus=corpus() + CHAT_WORDS * 20, vocab_size=300,
                                hidden_size=32)


@pytest.fixture(scope="session")
def tiny_qwen2_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lm(tmp_path_factory.mktemp("tiny-qwen2-lm"), "qwen2")


@pytest.fixture(scope="session")
def tiny_llama_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lm(tmp_path_factory.mktemp("tiny-llama-lm"), "llama")


def toy_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    items = sorted(COLOURS)
    return [{"prompt": f"what colour is the {item}?", "response": COLOURS[item]}
            for item in (rng.choice(items) for _ in range(n))]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def sft_config(model_dir: Path, data: Path, **sections: dict):
    """A validated task: sft config on the toy task: few steps, no MLflow unless a test turns it on."""
    from kubetune.config import validate_config

    config = {
        "task": "sft",
        "data": {"uri": str(data)},
        "split": {"test_size": 0.1, "val_size": 0.1},
        "sft": {"prompt_column": "prompt", "response_column": "response", "max_seq_length": 32},
        "model": {"name": str(model_dir)},
        "lora": {"r": 8, "lora_alpha": 16, "lora_dropout": 0.0},
        "training": {"batch_size": 16, "eval_batch_size": 32, "learning_rate": 1e-2, "epochs": 2, "logging_steps": 4,
                     "load_best_model_at_end": False},
        "tracking": {"enable": False},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    return validate_config(config)
