"""The benchmark's data, made with kubetune's own stages: preprocess once, then small subsets.

Throughput runs need only `steps × batch` rows, so they train on a seeded random subset of the train
split (large enough that length grouping sees whole mega-batches) with small validation and test
splits (the trainer evaluates once at the end; that time is not counted as training time).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from bench.common import CONFIGS_DIR, DATASETS_DIR, REPO_ROOT

# The benchmark datasets: the shipped config that describes each (data, split and serialize sections).
DATASET_CONFIGS = {
    "banking77": CONFIGS_DIR / "banking77.yaml",
    "council": CONFIGS_DIR / "council-spend.yaml",
}
# The sections that say what the data is; everything else is the variant's own (defaults for B).
DATA_SECTIONS = ("data", "split", "serialize")


def dataset_sections(name: str) -> dict[str, Any]:
    """The data-describing sections of a dataset's shipped config, with data paths made absolute."""
    raw = yaml.safe_load(DATASET_CONFIGS[name].read_text())
    sections = {key: dict(raw[key]) for key in DATA_SECTIONS if key in raw}
    data = sections["data"]
    for key in ("uri", "validation_uri", "test_uri"):
        if data.get(key):
            data[key] = str(dataset_path(data[key]))
    return sections


def dataset_path(relative: str) -> Path:
    """Shipped configs name ../shared/datasets/...; BENCH_DATASETS_DIR may put the datasets elsewhere."""
    parts = Path(relative).parts
    if "datasets" in parts:
        return DATASETS_DIR.joinpath(*parts[parts.index("datasets") + 1:])
    return (REPO_ROOT / relative).resolve()


def check_dataset(name: str) -> None:
    sections = dataset_sections(name)
    missing = [sections["data"][k] for k in ("uri", "test_uri") if sections["data"].get(k) and not Path(sections["data"][k]).exists()]
    if missing:
        raise SystemExit(f"dataset {name}: {', '.join(missing)} not found; set BENCH_DATASETS_DIR to the folder of ../shared/datasets")


def preprocess(name: str, config_data: dict[str, Any], output: Path) -> Path:
    """kubetune's preprocess stage (its cache makes a second call instant)."""
    from kubetune.config import validate_config
    from kubetune.data.stages import preprocess as preprocess_stage

    config = validate_config(config_data, source=f"bench:{name}")
    preprocess_stage(config, str(output))
    return output


def make_subset(preprocessed: Path, output: Path, train_rows: int, eval_rows: int, seed: int) -> Path:
    """A preprocess-format copy with `train_rows` random train rows and the first `eval_rows` of the others."""
    import datasets

    from kubetune import storage

    marker = output / "bench_subset.json"
    wanted = {"source": str(preprocessed.resolve()), "train_rows": train_rows, "eval_rows": eval_rows, "seed": seed,
              "source_metadata": (preprocessed / "dataset_metadata.json").read_text()}
    if marker.exists() and json.loads(marker.read_text()) == wanted and storage.is_complete(str(output)):
        return output
    full = datasets.load_from_disk(str(preprocessed))
    train = full["train"]
    if len(train) < train_rows:
        raise SystemExit(f"{preprocessed}: the train split has {len(train)} rows, fewer than the {train_rows} asked for")
    subset = datasets.DatasetDict({
        "train": train.shuffle(seed=seed).select(range(train_rows)).flatten_indices(),
        **{name: split.select(range(min(eval_rows, len(split)))).flatten_indices()
           for name, split in full.items() if name != "train"},
    })
    metadata = json.loads((preprocessed / "dataset_metadata.json").read_text())
    metadata["rows"] = {name: len(split) for name, split in subset.items()}
    # A different cache key: the tokenize stage must not take this subset for the full data.
    metadata["cache_key"] = f"{metadata.get('cache_key', '')}-subset-{train_rows}-{eval_rows}-{seed}"
    with storage.atomic_output_dir(str(output), "preprocess") as staging:
        subset.save_to_disk(str(staging))
        shutil.copyfile(preprocessed / "label_map.json", staging / "label_map.json")
        (staging / "dataset_metadata.json").write_text(json.dumps(metadata, indent=2))
        (staging / "bench_subset.json").write_text(json.dumps(wanted))
    return output


def tokenize(config_data: dict[str, Any], preprocessed: Path, output: Path) -> Path:
    """kubetune's tokenize stage into `output` (reused when input, tokenizer and config are unchanged)."""
    from kubetune.config import validate_config
    from kubetune.data.stages import tokenize as tokenize_stage

    tokenize_stage(validate_config(config_data, source="bench"), str(preprocessed), str(output))
    return output
