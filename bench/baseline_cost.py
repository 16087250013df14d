"""The evaluate step's TF-IDF baseline: what fitting and scoring it costs on the largest data we ship a config for.

    python -m bench.baseline_cost                       # council (218k rows, configs/council-spend.yaml's split and serialization)
    python -m bench.baseline_cost --dataset demo        # the demo ledger of `kubetune run` (6,000 rows)
    python -m bench.baseline_cost --max-features 100000 # another vocabulary cap

Rows go to bench/results/baseline_cost.csv. The preprocess output is cached under bench/work/ (see bench.data).
The baseline runs as the evaluate step runs it: kubetune.evaluation.baseline.fit_baseline on the train split's
serialized text, then scored on the test split.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np

from bench.common import WORK_DIR, append_rows, run_info
from bench.data import DATA_SECTIONS, check_dataset, dataset_sections, preprocess


def sections_of(name: str) -> dict[str, object]:
    """The data sections of a shipped dataset config, or of the demo config `kubetune run` runs by default."""
    if name != "demo":
        check_dataset(name)
        return dataset_sections(name)
    import yaml

    from kubetune.pipeline.local import DEFAULT_CONFIG

    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    return {key: raw[key] for key in DATA_SECTIONS if key in raw}


def measure(name: str, max_features: int, max_rows: int) -> dict[str, object]:
    import datasets

    from kubetune.data.labels import LabelMap
    from kubetune.evaluation.baseline import baseline_metrics, fit_baseline

    preprocessed = preprocess(name, sections_of(name), WORK_DIR / "preprocessed" / name)
    data = datasets.load_from_disk(str(preprocessed))
    num_real = LabelMap.load(preprocessed).num_real_labels
    train_texts, train_labels = data["train"]["text"], np.asarray(data["train"]["labels"])
    test_texts, test_labels = data["test"]["text"], np.asarray(data["test"]["labels"])
    started = time.perf_counter()
    baseline = fit_baseline(train_texts, train_labels, num_real, max_features=max_features, max_rows=max_rows)
    fitted = time.perf_counter()
    metrics = baseline_metrics(baseline, test_texts, test_labels)
    scored = time.perf_counter()
    features = len(baseline.vectorizer.vocabulary_) if baseline.vectorizer is not None else 0
    row = {"dataset": name, "split": "test", "max_features": max_features, "features": features,
           "train_rows": min(len(train_texts), max_rows), "test_rows": len(test_texts), "fit_seconds": round(fitted - started, 2),
           "predict_seconds": round(scored - fitted, 2), "accuracy": round(metrics["accuracy"], 4),
           "macro_f1": round(metrics["macro_f1"], 4)}
    print(row, flush=True)
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="council")
    parser.add_argument("--max-features", type=int, default=None, help="default: the evaluate step's default")
    args = parser.parse_args(argv)
    from kubetune.config import EvaluateConfig

    defaults = EvaluateConfig()
    max_features = args.max_features or defaults.baseline_max_features
    info = run_info()
    path = append_rows("baseline_cost", info, [measure(args.dataset, max_features, defaults.baseline_max_train_rows)])
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
