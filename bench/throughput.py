"""Training throughput, side by side, on the same model, data, number of optimizer steps and seed:

  A  bench/plain_hf_peft.py: HF Trainer + PEFT LoRA, dynamic padding, no DeepSpeed (what a user writes)
  B  kubetune's trainer with its default config
  C  the seeds' configuration: every row padded to 512 tokens, DeepSpeed ZeRO-2, no length grouping

Each run is its own process (peak memory is per run, DeepSpeed state never leaks into the next),
and the runs are interleaved A B C A B C ... so that drift of a shared machine hits all alike; the
report takes medians. By default every run trains one epoch over the same `steps x batch size` rows,
so A, B and C see exactly the same samples and real tokens and differ only in how they batch them
(length grouping sorts the longest rows first: over part of an epoch B would see other, longer rows
than A). Over so few rows length grouping can only sort small groups, so the padding goal is taken
from `epoch_padding` instead: one whole epoch of the full train split, batched as each variant's
sampler batches it (no training needed to count padding). All three are measured with the same meter, kubetune's SpeedCallback: samples
and real (attention-mask) tokens of the training batches over the time spent inside optimizer steps
(the Trainer fetches each batch before the step starts, so data loading and evaluation are not in it).

    python -m bench.throughput --datasets banking77 council --steps 8 --repeats 3
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from bench.common import (
    WORK_DIR,
    append_rows,
    bench_env,
    env_int,
    median,
    peak_rss_mb,
    run_info,
    run_logged,
    write_json,
)

VARIANTS = ("A", "B", "C")
VARIANT_NAMES = {
    "A": "plain HF Trainer + PEFT (dynamic padding)",
    "B": "kubetune, default config",
    "C": "seed config (pad to 512, ZeRO-2, no grouping)",
}
SEED_MAX_LENGTH = 512


# ------------------------------------------------------------------------------------------ configs
def variant_configs(data_sections: Mapping[str, Any], model: str, steps: int, seed: int,
                    extra: Mapping[str, Mapping[str, Any]] | None = None,
                    seed_max_length: int = SEED_MAX_LENGTH) -> dict[str, dict[str, Any]]:
    """The run configs of B and C: the dataset's sections, the model, the step count, defaults for the rest.

    Tracking is off: the benchmark measures the trainer, not an MLflow store. `seed_max_length` is
    512 except for the smoke test's tiny model, which has fewer positions.
    """
    base: dict[str, Any] = copy.deepcopy(dict(data_sections))
    base["model"] = {"name": model}
    base["training"] = {"max_steps": steps, "logging_steps": steps, "seed": seed}
    base["tracking"] = {"enable": False}
    for section, values in (extra or {}).items():
        base[section] = {**base.get(section, {}), **values}
    seed_config = copy.deepcopy(base)
    seed_config["tokenize"] = {**seed_config.get("tokenize", {}), "padding": "max_length", "max_length": seed_max_length}
    seed_config["deepspeed"] = {"enable": True, "stage": 2}
    seed_config["training"] = {**seed_config["training"], "group_by_length": False}
    return {"B": base, "C": seed_config}


def b_config(data_sections: Mapping[str, Any], model: str, steps: int, seed: int) -> Any:
    """B's resolved RunConfig, which A's settings and the epoch figures are read from."""
    from kubetune.config import validate_config

    return validate_config(variant_configs(data_sections, model, steps, seed)["B"], source="bench:B")


def one_epoch_rows(data_sections: Mapping[str, Any], model: str, steps: int, seed: int) -> int:
    """The train rows that `steps` optimizer steps of B (one process) consume: exactly one epoch."""
    training = b_config(data_sections, model, steps, seed).training
    return steps * training.batch_size * training.gradient_accumulation_steps


def train_lengths(preprocessed: Path, model: str, max_length: int) -> list[int]:
    """Token count of every train row (truncated at `max_length`, special tokens included)."""
    import datasets
    from transformers import AutoTokenizer

    from kubetune.hub import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model))
    texts = datasets.load_from_disk(str(preprocessed))["train"]["text"]
    return [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]]


def epoch_padding(lengths: Sequence[int], batch_size: int, variant: str, seed: int, pad_to: int = SEED_MAX_LENGTH) -> float:
    """Padding fraction of one epoch over `lengths` as a variant batches it: A random batches padded to their
    longest row, B the Trainer's length-grouped sampler (same padding rule), C every row padded to `pad_to`."""
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    real = sum(lengths)
    if variant == "C":
        return 1 - real / (len(lengths) * pad_to)
    generator = torch.Generator().manual_seed(seed)
    if variant == "B":
        order = list(LengthGroupedSampler(batch_size, lengths=list(lengths), generator=generator))
    else:
        order = torch.randperm(len(lengths), generator=generator).tolist()
    padded = sum(max(lengths[i] for i in order[s:s + batch_size]) * len(order[s:s + batch_size])
                 for s in range(0, len(order), batch_size))
    return 1 - real / padded


def add_epoch_padding(rows: Sequence[dict[str, Any]], dataset: str, preprocessed: Path, model: str,
                      data_sections: Mapping[str, Any], steps: int, seed: int) -> None:
    """Set `epoch_padding_fraction` on each run row: its variant's padding over one epoch of the full train split."""
    config = b_config(data_sections, model, steps, seed)
    max_lengths = {"A": config.tokenize.max_length, "B": config.tokenize.max_length, "C": SEED_MAX_LENGTH}
    lengths = {n: train_lengths(preprocessed, model, n) for n in set(max_lengths.values())}
    for variant, max_length in max_lengths.items():
        padding = epoch_padding(lengths[max_length], config.training.batch_size, variant, seed)
        print(f"  {dataset} {variant}: padding over one epoch of the {len(lengths[max_length]):,} train rows {100 * padding:.1f}%",
              flush=True)
        for row in rows:
            if row["variant"] == variant:
                row["epoch_padding_fraction"] = padding


def plain_job(b_config: Any, subset: Path, model_path: str, num_labels: int) -> dict[str, Any]:
    """Variant A's settings, read from B's resolved config so that the two can never drift apart."""
    from kubetune.train.arguments import resolve_precision

    training, lora = b_config.training, b_config.lora
    return {
        "variant": "A", "preprocessed": str(subset), "model": model_path, "num_labels": num_labels,
        "steps": training.max_steps, "batch_size": training.batch_size, "learning_rate": training.learning_rate,
        "weight_decay": training.weight_decay, "max_length": b_config.tokenize.max_length, "lora_r": lora.r,
        "lora_alpha": lora.lora_alpha, "lora_dropout": lora.lora_dropout,
        "target_modules": lora.target_modules if isinstance(lora.target_modules, list) else None,
        "bf16": resolve_precision(b_config) == "bf16", "seed": training.seed,
    }


# ------------------------------------------------------------------------------------------- worker
def run_worker(job: dict[str, Any]) -> dict[str, Any]:
    """One training run in this process; the figures of its training steps and its peak memory."""
    import torch

    started = time.perf_counter()
    output = Path(job["output"])
    shutil.rmtree(output, ignore_errors=True)  # a leftover checkpoint would be resumed, not trained
    figures = _train_plain(job, output) if job["variant"] == "A" else _train_kubetune(job, output)
    own, _ = peak_rss_mb()
    figures.update({
        "peak_rss_mb": own,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "wall_seconds": time.perf_counter() - started,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    })
    return figures


def _train_plain(job: dict[str, Any], output: Path) -> dict[str, Any]:
    from bench.plain_hf_peft import build_trainer
    from kubetune.train.callbacks import SpeedCallback

    meter = SpeedCallback()
    trainer = build_trainer(
        job["preprocessed"], job["model"], str(output), job["num_labels"], job["steps"],
        batch_size=job["batch_size"], learning_rate=job["learning_rate"], weight_decay=job["weight_decay"],
        max_length=job["max_length"], lora_r=job["lora_r"], lora_alpha=job["lora_alpha"],
        lora_dropout=job["lora_dropout"], target_modules=job["target_modules"], bf16=job["bf16"], seed=job["seed"],
        callbacks=[meter],
    )
    step = trainer.training_step

    # Counted where kubetune counts (KubetuneTrainer.training_step): only batches that are trained on.
    def counted_step(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        meter.add_batch(inputs["attention_mask"])
        return step(model, inputs, num_items_in_batch)

    trainer.training_step = counted_step
    result = trainer.train()
    return _figures(meter.summary, int(result.global_step), job["batch_size"])


def _train_kubetune(job: dict[str, Any], output: Path) -> dict[str, Any]:
    from kubetune.config import load_config
    from kubetune.train.recipe import train

    config = load_config(job["config"])
    metrics = train(config, job["tokenized"], str(output))
    return _figures(metrics, int(metrics["global_step"]), config.training.batch_size)


def _figures(speed: Mapping[str, float], steps: int, batch_size: int) -> dict[str, Any]:
    return {
        "steps": steps, "batch_size": batch_size,
        "samples_per_s": speed["speed/train_samples_per_second"],
        "real_tokens_per_s": speed["speed/train_tokens_per_second"],
        "padding_fraction": speed["speed/train_padding_fraction"],
        "step_seconds": speed["speed/train_step_seconds"],
    }


# ------------------------------------------------------------------------------------------- driver
def compare(
    dataset: str, subset: Path, model: str, data_sections: Mapping[str, Any], steps: int, repeats: int,
    workdir: Path, seed: int = 42, extra: Mapping[str, Mapping[str, Any]] | None = None,
    variants: Sequence[str] = VARIANTS, seed_max_length: int = SEED_MAX_LENGTH, warmup_rounds: int = 0,
    on_round: Callable[[list[dict[str, Any]]], None] | None = None,
) -> list[dict[str, Any]]:
    """Tokenize for B and C, then run the variants interleaved `repeats` times; one row per run. `warmup_rounds`
    untimed rounds of every variant come first: on a fresh GPU machine the first processes pay one-time costs that
    would otherwise land on whichever variant runs first (on the H200, 2026-12-04, A's first run made 1,458 real
    tokens/s and its second 3,274). `on_round` gets each finished timed round's rows as it ends, so a run stopped
    by its time limit keeps the rounds it finished (a lent GPU machine's time runs out mid-run)."""
    from bench import data as bench_data
    from kubetune.config import validate_config
    from kubetune.data.labels import LabelMap
    from kubetune.hub import resolve_model_path

    configs = variant_configs(data_sections, model, steps, seed, extra, seed_max_length)
    jobs: dict[str, dict[str, Any]] = {}
    for variant, config_data in configs.items():
        config_file = workdir / f"config-{variant}.yaml"
        config_file.parent.mkdir(parents=True, exist_ok=True)
        config_file.write_text(yaml.safe_dump(config_data, sort_keys=False))
        tokenized = bench_data.tokenize(config_data, subset, workdir / f"tokenized-{variant}")
        jobs[variant] = {"variant": variant, "config": str(config_file), "tokenized": str(tokenized)}
    jobs["A"] = plain_job(validate_config(configs["B"], source="bench:B"), subset, resolve_model_path(model), LabelMap.load(subset).max_classes)

    rows = []
    for repeat in range(1 - warmup_rounds, repeats + 1):  # rounds up to 0 are warm-ups: run, checked, not recorded
        for variant in variants:
            job = {**jobs[variant], "output": str(workdir / "runs" / variant)}
            job_file, result_file = workdir / f"job-{variant}.json", workdir / f"result-{variant}-{repeat}.json"
            write_json(job_file, job)
            result_file.unlink(missing_ok=True)
            log = workdir / "logs" / f"{variant}-{repeat}.log"
            run_logged([sys.executable, "-m", "bench.throughput", "worker", str(job_file), str(result_file)], log,
                       env=bench_env())
            figures = json.loads(result_file.read_text())
            if figures["steps"] != steps:
                raise RuntimeError(f"{dataset} {variant}: trained {figures['steps']} optimizer steps, not {steps} (log: {log})")
            if repeat < 1:
                print(f"  {dataset} {variant} warm-up: {figures['samples_per_s']:.1f} samples/s (not recorded)", flush=True)
                continue
            print(f"  {dataset} {variant} #{repeat}: {figures['samples_per_s']:.1f} samples/s, "
                  f"{figures['real_tokens_per_s']:.0f} real tokens/s, padding {100 * figures['padding_fraction']:.1f}%, "
                  f"peak RSS {figures['peak_rss_mb']:.0f} MiB", flush=True)
            rows.append({"dataset": dataset, "model": model, "variant": variant, "repeat": repeat, **figures})
        if repeat >= 1 and on_round is not None:
            on_round(rows[-len(variants):])
    return rows


RATE_KEYS = ("samples_per_s", "real_tokens_per_s")  # the rates compared with A's, by median and by repeat


def summarize(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Medians per (suite, dataset, variant) and each variant's ratio to A's median (RATE_KEYS)."""
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((str(row.get("suite", "cpu")), str(row["dataset"]), str(row["variant"])), []).append(row)
    out = []
    for (suite, dataset, variant), members in sorted(groups.items()):
        entry: dict[str, Any] = {"suite": suite, "dataset": dataset, "variant": variant, "runs": len(members),
                                 "model": members[0].get("model", ""), "steps": members[0].get("steps", "")}
        for key in ("samples_per_s", "real_tokens_per_s", "padding_fraction", "epoch_padding_fraction", "peak_rss_mb",
                    "peak_gpu_mb", "mfu"):
            values = [float(m[key]) for m in members if m.get(key) not in (None, "")]
            entry[key] = median(values) if values else None
        # Each run's own figure by repeat: interleaved repeats pair up (A#1 with B#1), so a ratio can be checked per pair.
        entry["by_repeat"] = {key: {int(m["repeat"]): float(m[key]) for m in members
                                    if m.get("repeat") not in (None, "") and m.get(key) not in (None, "")}
                              for key in RATE_KEYS}
        out.append(entry)
    for entry in out:
        base = next((e for e in out if (e["suite"], e["dataset"], e["variant"]) == (entry["suite"], entry["dataset"], "A")), None)
        for key in RATE_KEYS:
            ratio = None
            if base and base[key] and entry[key] is not None:
                ratio = entry[key] / base[key]
            entry[f"{key}_vs_A"] = ratio
    return out


def print_summary(summary: Sequence[Mapping[str, Any]]) -> None:
    from kubetune.console import print_table

    rows = [[e["dataset"], e["variant"], f"{e['samples_per_s']:.1f}", f"{e['real_tokens_per_s']:.0f}",
             f"{100 * e['padding_fraction']:.1f}%", f"{e['peak_rss_mb']:.0f}",
             f"{e['samples_per_s_vs_A']:.2f}x" if e["samples_per_s_vs_A"] is not None else "-"] for e in summary]
    print_table(["dataset", "variant", "samples/s", "real tokens/s", "padding", "peak RSS MiB", "vs A"], rows,
                title="training throughput (medians)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        job_file, result_file = argv[1:3]
        write_json(Path(result_file), run_worker(json.loads(Path(job_file).read_text())))
        return 0
    parser = argparse.ArgumentParser(description="Training throughput: A (plain HF+PEFT) vs B (kubetune) vs C (seed config).")
    parser.add_argument("--datasets", nargs="+", default=["banking77", "council"], choices=["banking77", "council"])
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--steps", type=int, default=env_int("BENCH_TRAIN_STEPS", 8), help="Optimizer steps per run (BENCH_TRAIN_STEPS).")
    parser.add_argument("--repeats", type=int, default=env_int("BENCH_REPEATS", 3), help="Runs of each variant (BENCH_REPEATS).")
    parser.add_argument("--train-rows", type=int, default=env_int("BENCH_TRAIN_ROWS", 0),
                        help="Random train rows the runs draw batches from (BENCH_TRAIN_ROWS; default: steps x batch "
                             "size, one epoch, so every variant trains on the same rows).")
    parser.add_argument("--eval-rows", type=int, default=64, help="Rows of the validation and test splits (evaluated once, not timed).")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    from bench import data as bench_data

    info = run_info()
    all_rows = []
    for dataset in args.datasets:
        bench_data.check_dataset(dataset)
        workdir = WORK_DIR / "throughput" / dataset
        sections = bench_data.dataset_sections(dataset)
        preprocessed = bench_data.preprocess(dataset, sections, WORK_DIR / "preprocessed" / dataset)
        train_rows = args.train_rows or one_epoch_rows(sections, args.model, args.steps, args.seed)
        subset = bench_data.make_subset(preprocessed, workdir / "subset", train_rows, args.eval_rows, args.seed)
        rows = compare(dataset, subset, args.model, sections, args.steps, args.repeats, workdir, seed=args.seed)
        add_epoch_padding(rows, dataset, preprocessed, args.model, sections, args.steps, args.seed)
        rows = [{"suite": "cpu", **row} for row in rows]
        append_rows("throughput", info, rows)
        all_rows += rows
    print_summary(summarize(all_rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
