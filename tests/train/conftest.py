"""Tokenized fixtures for the trainer, built per DEVELOPERS.md ("tokenize → TOKENIZED/").

The toy task is learnable by a 2-layer random model in a few steps: each text holds exactly one
keyword of its class among random filler words, so the label is decided by which keyword it holds.
The label map has two dummy slots beyond the real classes, so every test also exercises them.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from tests.loopback import free_port

from ..conftest import REPO_ROOT

# class → its keywords; the filler words never contain one of them.
TOY_CLASSES: dict[str, list[str]] = {
    "fuel": ["fuel", "vehicle", "taxi"],
    "it": ["software", "laptop", "cloud"],
    "office": ["paper", "printer", "desks"],
    "utilities": ["electricity", "water", "gas"],
}
FILLER = ["invoice", "payment", "supplier", "services", "ltd", "council", "fee", "refund", "grant", "agency"]
TOY_MAX_CLASSES = 6  # 4 real labels + 2 dummy slots


def toy_rows(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    names = sorted(TOY_CLASSES)
    rows = []
    for i in range(n):
        label = names[i % len(names)]
        words = [rng.choice(FILLER) for _ in range(rng.randint(1, 4))]
        words.insert(rng.randint(0, len(words)), rng.choice(TOY_CLASSES[label]))
        rows.append((" ".join(words), label))
    rng.shuffle(rows)
    return rows


def build_tokenized(
    directory: Path,
    tokenizer_dir: Path,
    sizes: dict[str, int] | None = None,
    max_classes: int = TOY_MAX_CLASSES,
    seed: int = 0,
) -> Path:
    """Write a TOKENIZED/ directory (DatasetDict + label_map.json + dataset_metadata.json) of the toy task."""
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    from kubetune.data.labels import LabelMap
    from kubetune.data.tokenization import tokenizer_files_digest

    # Odd evaluation sizes: the last batch of each rank is uneven, which gathering across ranks must handle.
    sizes = sizes or {"train": 256, "validation": 61, "test": 59}
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    label_map = LabelMap.build(TOY_CLASSES, label_column="category", max_classes=max_classes, dummy_prefix="dummy")
    splits, class_counts = {}, {}
    for index, (split, n) in enumerate(sizes.items()):
        rows = toy_rows(n, seed=seed * 10 + index)
        texts = [text for text, _ in rows]
        encoded = tokenizer(texts, truncation=True, max_length=32)
        columns = {key: list(values) for key, values in encoded.items()}
        columns["labels"] = [label_map.label2id[label] for _, label in rows]
        columns["length"] = [len(ids) for ids in encoded["input_ids"]]
        columns["text"] = texts
        columns["row_id"] = [f"{split}-{i}" for i in range(n)]
        splits[split] = Dataset.from_dict(columns)
        class_counts[split] = dict(sorted(Counter(label for _, label in rows).items()))
    DatasetDict(splits).save_to_disk(str(directory))
    label_map.save(directory)
    metadata = {
        "stage": "tokenize",
        "kubetune_version": "test",
        "cache_key": hashlib.sha256(f"toy-{seed}-{sizes}".encode()).hexdigest()[:16],
        "config": {"split": {"label_column": "category"}},
        "inputs": [{"uri": "toy://keywords", "size": sum(sizes.values()),
                    "sha256": hashlib.sha256(f"toy-{seed}".encode()).hexdigest()}],
        "rows": dict(sizes),
        "class_counts": class_counts,
        "split": {"method": "fixed", "seed": seed},
        "created_at": "2026-01-01T00:00:00+00:00",
        # what the tokenize stage records: the trainer checks it uses a tokenizer with these files
        "tokenize": {"tokenizer": str(tokenizer_dir), "tokenizer_hash": tokenizer_files_digest(tokenizer_dir),
                     "max_length": 32, "cache_key": "toy"},
    }
    (directory / "dataset_metadata.json").write_text(json.dumps(metadata, indent=2))
    return directory


@pytest.fixture(scope="session")
def bert_tokenized(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy task tokenized with the tiny BERT's WordPiece tokenizer (token_type_ids included)."""
    return build_tokenized(tmp_path_factory.mktemp("bert-tokenized"), tiny_bert)


@pytest.fixture(scope="session")
def qwen2_tokenized(tiny_qwen2: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The toy task tokenized with the tiny Qwen2's BPE tokenizer (no pad token, no token_type_ids)."""
    return build_tokenized(tmp_path_factory.mktemp("qwen2-tokenized"), tiny_qwen2)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend; yields its URL."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
        "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    deadline = time.monotonic() + 120
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"mlflow server exited early:\n{(root / 'server.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not come up:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def write_config(path: Path, model_dir: Path, **sections: dict) -> Path:
    """A run config for the toy task: tiny model, few steps, no MLflow unless a test turns it on."""
    import yaml

    config = {
        "split": {"label_column": "category", "max_classes": TOY_MAX_CLASSES},
        "model": {"name": str(model_dir)},
        "lora": {"r": 8, "lora_alpha": 32, "lora_dropout": 0.0},
        # A random 2-layer model learns the toy task only with a high rate.
        "training": {
            "batch_size": 16, "eval_batch_size": 32, "learning_rate": 3e-2, "epochs": 4, "logging_steps": 4,
            "load_best_model_at_end": False,
        },
        "tracking": {"enable": False},
    }
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def kubetune_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "kubetune", *args]


def torchrun_command(nproc: int, *args: str, port: int | None = None) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
        "--master_port", str(port or free_port()), "-m", "kubetune", *args,
    ]


__all__ = ["REPO_ROOT", "build_tokenized", "free_port", "kubetune_command", "torchrun_command", "write_config"]


@pytest.fixture(scope="module")
def label_map():
    """The toy task's label map: its 4 classes and 2 dummy slots."""
    from kubetune.data.labels import LabelMap

    return LabelMap.build(TOY_CLASSES, label_column="category", max_classes=TOY_MAX_CLASSES, dummy_prefix="dummy")
