"""Tokenization speed on the council data (218k rows, all splits): kubetune's tokenize stage with
num_proc 1 and 2, next to the plain `datasets.map(tokenizer, batched=True)` a user would write.

Each measurement is its own process, so peak memory is its own: the main process's, and the
largest worker's when num_proc is 2. The stage's time covers all it does (full lengths for the
diagnostics, the diagnostics, writing the output); the plain map's covers the map (which writes
its Arrow cache file), not saving a copy.

    python -m bench.tokenization --dataset council
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import WORK_DIR, append_rows, bench_env, peak_rss_mb, run_info, run_logged, write_json

METHODS = (("kubetune tokenize", 1), ("kubetune tokenize", 2), ("datasets.map", 1), ("datasets.map", 2))


def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    figures = _stage(job) if job["method"] == "kubetune tokenize" else _plain(job)
    own, workers = peak_rss_mb()
    return {**figures, "peak_rss_mb": own, "peak_worker_rss_mb": workers if job["num_proc"] > 1 else None}


def _stage(job: dict[str, Any]) -> dict[str, Any]:
    import datasets

    from kubetune.config import validate_config
    from kubetune.data.stages import tokenize

    config = validate_config(job["config"], source="bench:tokenization")
    output = Path(job["output"])
    shutil.rmtree(output, ignore_errors=True)  # the stage would reuse a complete output with the same cache key
    started = time.perf_counter()
    result = tokenize(config, job["preprocessed"], str(output))
    seconds = time.perf_counter() - started
    if result.reused:
        raise RuntimeError(f"the tokenize stage reused {output} instead of tokenizing")
    tokenized = datasets.load_from_disk(str(output))
    tokens = sum(int(sum(split["length"])) for split in tokenized.values())
    return {"rows": sum(result.rows.values()), "tokens": tokens, "seconds": seconds}


def _plain(job: dict[str, Any]) -> dict[str, Any]:
    import datasets
    from transformers import AutoTokenizer

    from kubetune.hub import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(job["model"]))
    max_length = job["max_length"]
    dataset = datasets.load_from_disk(job["preprocessed"])
    with tempfile.TemporaryDirectory(prefix="bench-plain-map-") as scratch:
        started = time.perf_counter()
        encoded = {
            name: split.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length), batched=True,
                            num_proc=job["num_proc"] if job["num_proc"] > 1 else None,
                            cache_file_name=str(Path(scratch) / f"{name}.arrow"))
            for name, split in dataset.items()
        }
        seconds = time.perf_counter() - started
        tokens = sum(sum(len(ids) for ids in split["input_ids"]) for split in encoded.values())
        rows = sum(len(split) for split in encoded.values())
    return {"rows": rows, "tokens": tokens, "seconds": seconds}


def measure(dataset: str, preprocessed: Path, config_data: dict[str, Any], workdir: Path,
            methods: Sequence[tuple[str, int]] = METHODS) -> list[dict[str, Any]]:
    """One process per (method, num_proc); one row each."""
    tokenize_section = config_data.get("tokenize", {})
    rows = []
    for method, num_proc in methods:
        slug = f"{method.split()[0].replace('.', '-')}-{num_proc}"
        job = {
            "method": method, "num_proc": num_proc, "preprocessed": str(preprocessed),
            "output": str(workdir / f"tokenized-{slug}"),
            "config": {**config_data, "tokenize": {**tokenize_section, "num_proc": num_proc}},
            "model": config_data.get("model", {}).get("name", "sentence-transformers/all-MiniLM-L6-v2"),
            "max_length": tokenize_section.get("max_length", 256),
        }
        job_file, result_file = workdir / f"job-{slug}.json", workdir / f"result-{slug}.json"
        write_json(job_file, job)
        result_file.unlink(missing_ok=True)
        run_logged([sys.executable, "-m", "bench.tokenization", "worker", str(job_file), str(result_file)],
                   workdir / "logs" / f"{slug}.log", env=bench_env())
        figures = json.loads(result_file.read_text())
        shutil.rmtree(job["output"], ignore_errors=True)
        row = {"dataset": dataset, "method": method, "num_proc": num_proc, **figures,
               "rows_per_s": figures["rows"] / figures["seconds"], "tokens_per_s": figures["tokens"] / figures["seconds"]}
        print(f"  {method}, num_proc {num_proc}: {row['rows_per_s']:,.0f} rows/s, {row['tokens_per_s']:,.0f} tokens/s, "
              f"{figures['seconds']:.1f} s, peak RSS {figures['peak_rss_mb']:.0f} MiB", flush=True)
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        write_json(Path(argv[2]), run_worker(json.loads(Path(argv[1]).read_text())))
        return 0
    parser = argparse.ArgumentParser(description="Tokenization: kubetune's tokenize stage vs a plain datasets.map.")
    parser.add_argument("--dataset", default="council", choices=["banking77", "council"])
    args = parser.parse_args(argv)

    import yaml

    from bench import data as bench_data

    bench_data.check_dataset(args.dataset)
    sections = bench_data.dataset_sections(args.dataset)
    shipped = yaml.safe_load(bench_data.DATASET_CONFIGS[args.dataset].read_text())
    config_data = {**sections, "tokenize": shipped.get("tokenize", {}), "model": shipped.get("model", {})}
    preprocessed = bench_data.preprocess(args.dataset, sections, WORK_DIR / "preprocessed" / args.dataset)
    rows = measure(args.dataset, preprocessed, config_data, WORK_DIR / "tokenization" / args.dataset)
    append_rows("tokenization", run_info(), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
