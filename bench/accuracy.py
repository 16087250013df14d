"""Accuracy on real data, each system on the very same split (kubetune's preprocess output):

- Banking77 (its own test file): kubetune's MiniLM LoRA run (configs/banking77.yaml), a full fine-tune
  of the same model for the same epochs (the same config with `lora.enable: false` and a full
  fine-tune's learning rate), and TF-IDF + a linear classifier (scikit-learn).
- Council payments, split grouped by supplier (configs/council-spend.yaml): kubetune next to TF-IDF +
  a linear classifier.

Every figure is computed by kubetune.train.metrics.classification_metrics, so macro F1 means the same
thing for all. A full training on the council data takes hours on two cores: its kubetune figures are
read from a finished run's metrics (BENCH_COUNCIL_RUN) or, with BENCH_COUNCIL_STEPS, from a short
run that is labelled as such; otherwise that row says "not measured".

    python -m bench.accuracy --datasets banking77 council
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bench.common import WORK_DIR, append_rows, bench_env, env_int, run_info, run_logged
from bench.data import DATASET_CONFIGS, check_dataset, dataset_sections, preprocess, tokenize

TFIDF_SYSTEM = "TF-IDF (word 1-2 grams) + linear SVM (SGD)"
FULL_FINE_TUNE_LR = 1e-4  # a full fine-tune of MiniLM wants ~10x less than LoRA's 1e-3 (configs/banking77.yaml)


# ------------------------------------------------------------------------------------ TF-IDF + linear
def tfidf_linear(preprocessed: Path, split: str = "test") -> dict[str, float]:
    """Fit on the train split's texts, score `split`; metrics as kubetune computes them."""
    import datasets
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import SGDClassifier

    from kubetune.data.labels import LabelMap
    from kubetune.train.metrics import classification_metrics

    data = datasets.load_from_disk(str(preprocessed))
    num_real = LabelMap.load(preprocessed).num_real_labels
    started = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    features = vectorizer.fit_transform(data["train"]["text"])
    # SGD rather than liblinear's LinearSVC: the same hinge-loss linear model, but liblinear needs far
    # more than our 30-minute budget for 433 one-vs-rest problems on 163k council rows.
    classifier = SGDClassifier(loss="hinge", alpha=1e-5, max_iter=20, tol=1e-3, n_jobs=-1, random_state=0)
    classifier.fit(features, np.asarray(data["train"]["labels"]))
    scores = classifier.decision_function(vectorizer.transform(data[split]["text"]))
    if scores.ndim == 1:  # two classes: one margin
        scores = np.stack([-scores, scores], axis=1)
    # The classifier knows only the classes seen in train; the others can never be predicted.
    logits = np.full((scores.shape[0], num_real), -1e9, dtype=np.float64)
    logits[:, classifier.classes_] = scores
    metrics = classification_metrics(logits, np.asarray(data[split]["labels"]), num_real)
    return {**metrics, "seconds": time.perf_counter() - started}


# ------------------------------------------------------------------------------------------ kubetune
def kubetune_figures(path: Path) -> dict[str, Any]:
    """Test figures of a finished kubetune run: a train output folder holding its evaluation (evaluation/metrics.json,
    as `train_kubetune` leaves it, and config.yaml), an evaluate output folder (metrics.json) or that JSON file.
    The trainer scores validation only; the test figures are the evaluate stage's."""
    path = path.expanduser().resolve()
    candidates = [path] if path.is_file() else [path / "evaluation" / "metrics.json", path / "metrics.json"]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise SystemExit(f"{path}: no evaluation/metrics.json or metrics.json; pass a kubetune train output with its "
                         "evaluation or a kubetune evaluate output")
    metrics = json.loads(found.read_text())
    prefix = "test_" if "test_accuracy" in metrics else ""
    if f"{prefix}accuracy" not in metrics:
        raise SystemExit(f"{found}: no test accuracy in it")
    epochs = None  # how long it trained, from the resolved config a train output keeps beside model/
    for config_file in (found.parent / "config.yaml", found.parent.parent / "config.yaml"):
        if config_file.is_file():
            training = (yaml.safe_load(config_file.read_text()) or {}).get("training", {})
            epochs = f"{training['max_steps']} steps" if training.get("max_steps") else training.get("epochs")
            break
    return {"accuracy": metrics[f"{prefix}accuracy"], "macro_f1": metrics[f"{prefix}macro_f1"],
            "weighted_f1": metrics[f"{prefix}weighted_f1"], "epochs": epochs, "source": str(found)}


def train_kubetune(config_data: Mapping[str, Any], tokenized: Path, output: Path, log: Path) -> dict[str, Any]:
    """`kubetune train` in its own process with `config_data`, then `kubetune evaluate` of its model on the test
    split into OUTPUT/evaluation; the figures of that split (`seconds`: the training alone)."""
    shutil.rmtree(output, ignore_errors=True)  # a fresh run, not a resume
    output.parent.mkdir(parents=True, exist_ok=True)
    config_file = output.parent / f"{output.name}.yaml"
    config_file.write_text(yaml.safe_dump(dict(config_data), sort_keys=False))
    seconds = run_logged([sys.executable, "-m", "kubetune", "train", "--config", str(config_file), "--data", str(tokenized),
                          "--output", str(output)], log, env=bench_env())
    run_logged([sys.executable, "-m", "kubetune", "evaluate", "--config", str(config_file), "--model", str(output / "model"),
                "--data", str(tokenized), "--output", str(output / "evaluation")], log, env=bench_env())
    return {**kubetune_figures(output), "seconds": seconds}


def _shipped(name: str) -> dict[str, Any]:
    """The dataset's shipped config with absolute data paths and without MLflow (not what is measured)."""
    config = yaml.safe_load(DATASET_CONFIGS[name].read_text())
    config.update(dataset_sections(name))
    config["tracking"] = {**config.get("tracking", {}), "enable": False}
    return config


def _with(config: Mapping[str, Any], **sections: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(config)
    for section, values in sections.items():
        merged[section] = {**merged.get(section, {}), **values}
    return merged


# ---------------------------------------------------------------------------------------- the runs
def banking77(epochs: float, lora_run: str | None, full_lr: float) -> list[dict[str, Any]]:
    name, workdir = "banking77", WORK_DIR / "accuracy" / "banking77"
    check_dataset(name)
    config = _shipped(name)
    preprocessed = preprocess(name, dataset_sections(name), WORK_DIR / "preprocessed" / name)
    rows = [_tfidf_row(name, preprocessed)]
    tokenized = tokenize(config, preprocessed, workdir / "tokenized")
    if lora_run:
        lora = kubetune_figures(Path(lora_run))
        lora["seconds"] = None
        if isinstance(lora["epochs"], (int, float)):
            epochs = float(lora["epochs"])
        lora["source"] = f"metrics of a finished run: {lora['source']}"
    else:
        lora = train_kubetune(_with(config, training={"epochs": epochs}), tokenized, workdir / "lora", workdir / "logs" / "lora.log")
        lora["source"] = f"this benchmark: configs/banking77.yaml with training.epochs={epochs:g}"
    rows.append({"dataset": name, "split": "test file", "system": "kubetune MiniLM LoRA", **lora})
    full = train_kubetune(_with(config, lora={"enable": False}, training={"epochs": epochs, "learning_rate": full_lr}),
                          tokenized, workdir / "full", workdir / "logs" / "full.log")
    full["source"] = (f"this benchmark: configs/banking77.yaml with lora.enable=false, training.learning_rate={full_lr:g}, "
                      f"training.epochs={epochs:g}")
    rows.append({"dataset": name, "split": "test file", "system": "MiniLM full fine-tune", **full})
    return rows


def council(run: str | None, steps: int) -> list[dict[str, Any]]:
    name, workdir = "council", WORK_DIR / "accuracy" / "council"
    check_dataset(name)
    config = _shipped(name)
    preprocessed = preprocess(name, dataset_sections(name), WORK_DIR / "preprocessed" / name)
    split = "grouped by supplier"
    rows = [_tfidf_row(name, preprocessed, split)]
    system = "kubetune MiniLM LoRA"
    if run:
        figures = kubetune_figures(Path(run))
        figures.update(seconds=None, source=f"metrics of a finished run: {figures['source']}")
    elif steps > 0:
        tokenized = tokenize(config, preprocessed, workdir / "tokenized")
        short = _with(config, training={"max_steps": steps, "eval_steps": steps, "save_steps": steps})
        figures = train_kubetune(short, tokenized, workdir / "short", workdir / "logs" / "short.log")
        figures["source"] = f"this benchmark: a SHORT run, configs/council-spend.yaml with training.max_steps={steps}"
        system = f"kubetune MiniLM LoRA ({steps} steps only)"
    else:
        figures = {"source": "not measured: a full run takes hours on this machine; pass a finished run's output "
                             "with BENCH_COUNCIL_RUN=<train or evaluate output> (or BENCH_COUNCIL_STEPS=N for a short run)"}
    rows.append({"dataset": name, "split": split, "system": system, **figures})
    return rows


def _tfidf_row(name: str, preprocessed: Path, split: str = "test file") -> dict[str, Any]:
    metrics = tfidf_linear(preprocessed)
    print(f"  {name} {TFIDF_SYSTEM}: accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['macro_f1']:.4f}", flush=True)
    return {"dataset": name, "split": split, "system": TFIDF_SYSTEM, "epochs": None, "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"], "weighted_f1": metrics["weighted_f1"], "seconds": metrics["seconds"],
            "source": "this benchmark (fit on train, scored on test)"}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Accuracy: kubetune vs a full fine-tune vs TF-IDF + linear.")
    parser.add_argument("--datasets", nargs="+", default=["banking77", "council"], choices=["banking77", "council"])
    parser.add_argument("--epochs", type=float, default=float(os.environ.get("BENCH_BANKING77_EPOCHS") or 1),
                        help="Banking77 epochs of the LoRA and the full fine-tune (BENCH_BANKING77_EPOCHS).")
    parser.add_argument("--banking77-run", default=os.environ.get("BENCH_BANKING77_RUN") or None,
                        help="Take the LoRA figures from this finished run (BENCH_BANKING77_RUN); the full fine-tune gets its epochs.")
    parser.add_argument("--full-lr", type=float, default=FULL_FINE_TUNE_LR, help="Learning rate of the full fine-tune.")
    parser.add_argument("--council-run", default=os.environ.get("BENCH_COUNCIL_RUN") or None,
                        help="Take kubetune's council figures from this finished run (BENCH_COUNCIL_RUN).")
    parser.add_argument("--council-steps", type=int, default=env_int("BENCH_COUNCIL_STEPS", 0),
                        help="Without --council-run: train this many steps on the council data (BENCH_COUNCIL_STEPS).")
    args = parser.parse_args(argv)

    rows = []
    if "banking77" in args.datasets:
        rows += banking77(args.epochs, args.banking77_run, args.full_lr)
    if "council" in args.datasets:
        rows += council(args.council_run, args.council_steps)
    append_rows("accuracy", run_info(), rows)
    for row in rows:
        shown = f"accuracy {row['accuracy']:.4f}, macro F1 {row['macro_f1']:.4f}" if row.get("accuracy") is not None else row["source"]
        print(f"  {row['dataset']} {row['system']}: {shown}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
