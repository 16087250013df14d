"""Inference speed: rows/s of `kubetune predict` (kubetune.inference.Predictor) against the plain `transformers`
text-classification pipeline, on the same council rows with the same model.

    python -m bench.predict_throughput                          # 2,000 council rows, an untrained model of the council config
    python -m bench.predict_throughput --rows 20000 --model runs/<id>/train/model   # a trained council model
    python -m bench.predict_throughput --rows 200 --repeats 1   # a smoke run

Without --model the model is the council config's (configs/council-spend.yaml: the embedded MiniLM, LoRA
r 16 on query/key/value/dense, its label slots, max_length 64) with untrained adapters, saved as the trainer
saves one (bench/work/predict/council-model): rows/s do not depend on what the weights learnt.

The two systems score the same rows, a seeded sample of the council file, with the same batch size:
- `kubetune predict`: Predictor.probabilities on the raw rows — serialization, tokenization, length-sorted
  batches of at most batch_size x max_length padded tokens (more short rows a batch), the forward passes
  (bf16 autocast on a CUDA GPU), softmax over the real labels;
- `transformers pipeline`: `pipeline("text-classification")` on the rows already serialized (its time leaves
  serialization out), the LoRA merged into the base model (`merge_and_unload`, as Predictor merges it), the dummy
  slots masked, truncation at the same max_length, rows in file order (the pipeline does not sort by length).
Each runs once to warm up, then `--repeats` times, interleaved; the median is reported. The share of rows both
label alike is recorded as a check that they run the same model. Rows go to bench/results/predict.csv.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import WORK_DIR, append_rows, median, run_info
from bench.data import check_dataset, dataset_sections

KUBETUNE, PIPELINE = "kubetune predict", "transformers pipeline"
SYSTEMS = (KUBETUNE, PIPELINE)


def council_config() -> Any:
    """The council config with the data path resolved (bench/data.py) and tracking off."""
    import yaml

    from bench.data import DATASET_CONFIGS
    from kubetune.config import validate_config

    raw = yaml.safe_load(DATASET_CONFIGS["council"].read_text())
    raw.update(dataset_sections("council"))
    raw["tracking"] = {"enable": False}
    return validate_config(raw, source="configs/council-spend.yaml")


def untrained_model(config: Any, labels: Sequence[str], directory: Path) -> Path:
    """A model/ folder of `config` with untrained adapters, written as the trainer writes one (reused when there)."""
    from kubetune.data.labels import LabelMap
    from kubetune.hub import resolve_model_path
    from kubetune.inference import INFERENCE_KEY, inference_metadata
    from kubetune.train.model import apply_lora, instantiate_model, load_tokenizer, save_trained_model

    if (directory / "model_metadata.json").is_file():
        return directory
    label_map = LabelMap.build(labels, config.split.label_column, config.split.max_classes, config.split.dummy_prefix)
    base = resolve_model_path(config.model.name)
    tokenizer = load_tokenizer(base)
    model = apply_lora(config, instantiate_model(config, label_map, base, tokenizer))
    metadata = {"base_model": config.model.name, "base_model_path": base, "max_length": config.tokenize.max_length,
                "pooling": _pooling(model), INFERENCE_KEY: inference_metadata(config, {})}
    staging = directory.with_name(directory.name + ".partial")
    staging.mkdir(parents=True, exist_ok=True)
    save_trained_model(model, tokenizer, label_map, staging, metadata, {}, merge=False)
    staging.rename(directory)
    return directory


def _pooling(model: Any) -> str:
    from kubetune.train.pooling import pooling_of

    return pooling_of(model)


def sample_rows(config: Any, rows: int, seed: int) -> Any:
    """`rows` council lines, a seeded sample, read as `kubetune predict` reads a file."""
    from kubetune.data.load import load_table

    frame = load_table(config.data.uri, "data.uri", text_columns=[config.split.label_column])
    if rows > len(frame):
        raise SystemExit(f"--rows {rows}: the council file has {len(frame):,} rows")
    return frame.sample(n=rows, random_state=seed).reset_index(drop=True), frame[config.split.label_column]


def merged_pipeline(predictor: Any, batch_size: int) -> Any:
    """transformers' text-classification pipeline over the predictor's model with the LoRA merged in."""
    import torch
    from transformers import pipeline

    from kubetune.train.model import install_dummy_slot_mask, load_trained_classifier

    model, tokenizer, label_map = load_trained_classifier(predictor.model_dir)
    merged = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    # The dummy slots masked as in every kubetune model (the mask's hook was on the PEFT wrapper).
    install_dummy_slot_mask(merged, label_map.num_real_labels)
    device = 0 if torch.cuda.is_available() else -1
    return pipeline("text-classification", model=merged, tokenizer=tokenizer, device=device, batch_size=batch_size,
                    truncation=True, max_length=predictor.spec.max_length)


def time_systems(predictor: Any, frame: Any, batch_size: int, repeats: int) -> tuple[dict[str, float], float]:
    """({system: median seconds}, share of rows both systems label alike) on `frame`."""
    texts = predictor.texts(frame)
    classify = merged_pipeline(predictor, batch_size)
    real = list(predictor.label_map.real_labels)

    def run_kubetune() -> list[str]:
        return [real[i] for i in predictor.probabilities(frame, batch_size=batch_size).argmax(axis=1)]

    def run_pipeline() -> list[str]:
        return [answer["label"] for answer in classify(texts)]

    runs = {KUBETUNE: run_kubetune, PIPELINE: run_pipeline}
    seconds: dict[str, list[float]] = {name: [] for name in SYSTEMS}
    labels: dict[str, list[str]] = {name: runs[name]() for name in SYSTEMS}  # warm-up
    for _ in range(repeats):
        for name in SYSTEMS:
            started = time.perf_counter()
            labels[name] = runs[name]()
            seconds[name].append(time.perf_counter() - started)
    agreement = float(np.mean([a == b for a, b in zip(labels[KUBETUNE], labels[PIPELINE], strict=True)]))
    return {name: median(times) for name, times in seconds.items()}, agreement


def measure(rows: int, batch_size: int, repeats: int, seed: int, model: str | None) -> list[dict[str, Any]]:
    import torch

    from kubetune.inference import Predictor

    check_dataset("council")
    config = council_config()
    frame, all_labels = sample_rows(config, rows, seed)
    label_values = sorted({str(v) for v in all_labels.dropna().tolist()})
    model_dir = Path(model) if model else untrained_model(config, label_values, WORK_DIR / "predict" / "council-model")
    predictor = Predictor.load(str(model_dir))
    predictor.load_weights()
    seconds, agreement = time_systems(predictor, frame, batch_size, repeats)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    out = []
    for name in SYSTEMS:
        row = {"dataset": "council", "rows": rows, "system": name, "model": _model_name(model_dir, model),
               "batch_size": batch_size, "max_length": predictor.spec.max_length, "repeats": repeats,
               "seconds": round(seconds[name], 3), "rows_per_s": round(rows / seconds[name], 1),
               "agreement": round(agreement, 4), "device": device}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def _model_name(model_dir: Path, given: str | None) -> str:
    metadata = json.loads((model_dir / "model_metadata.json").read_text())
    return f"{metadata.get('base_model')} LoRA ({'trained: ' + given if given else 'untrained'})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000, help="Council rows scored (default: 2000).")
    parser.add_argument("--batch-size", type=int, default=None, help="Default: predict.batch_size's default.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs of each system, interleaved (default: 3).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the row sample.")
    parser.add_argument("--model", default=None, help="A trained council model/ folder; default: an untrained one.")
    args = parser.parse_args(argv)
    from kubetune.config import PredictConfig

    batch_size = args.batch_size or PredictConfig().batch_size
    path = append_rows("predict", run_info(), measure(args.rows, batch_size, args.repeats, args.seed, args.model))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
