"""Quality: kubetune's default vs the TF-IDF baseline vs a full fine-tune of the same model, per data set.

Each system is one `kubetune run` (the whole pipeline, as a user runs it) in its own runs folder under
the bench work dir, with the local MLflow store `kubetune run` makes there:

- kubetune: the shipped config as it is (plus the data set's overrides);
- the baseline: no run of its own — the evaluate step of that same run fits it on the run's train split
  and scores it on the very test rows the model is scored on (baseline_metrics.json beside metrics.json);
- full-fine-tune: the same config with `lora.enable=false`, a full fine-tune's learning rate and no
  separate head rate, for about the LoRA run's time: its epochs are the LoRA epochs divided by how much
  slower a full fine-tune trains (both wall times are recorded, so the reader sees whether they matched).

A finished run is recorded with `--from-run RUNS_DIR/RUN_ID` instead of being run again (its test split
has been read once; it is not read again). Settings tried while searching are scored on validation only
and recorded with `search-record`, from a finished `kubetune train` output, beside the baseline on the same
validation rows (`search-baseline`, from the `kubetune tokenize` output it trained on):

    python -m bench.quality --datasets demo demo-by-supplier banking77 hwu64 council
    python -m bench.quality --datasets council-full --systems kubetune   # ~1 h on 2 CPU cores; not run by default
    python -m bench.quality --datasets banking77 --systems kubetune
    python -m bench.quality --datasets demo demo-by-supplier --systems kubetune --split-seeds 7 13   # other splits
    python -m bench.quality --from-run runs/<run id> --dataset demo --system kubetune --command "kubetune run"
    python -m bench.quality from-steps --model OUT/model --evaluation EVAL --dataset council-full-4ep --command "..."
    python -m bench.quality search-record --output /tmp/train-out --dataset demo --setting "r=32, all-linear" \\
        --command "kubetune train --config configs/demo.yaml lora.r=32 ..."
    python -m bench.quality search-baseline --data /tmp/tokenized --dataset demo --setting "values only" \\
        --command "kubetune preprocess ...; kubetune tokenize ..."
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.common import REPO_ROOT, WORK_DIR, append_rows, bench_env, env_int, run_info, run_logged

KUBETUNE, BASELINE, FULL = "kubetune", "baseline", "full-fine-tune"
SYSTEMS = (KUBETUNE, FULL)  # the ones run; the baseline comes with every kubetune run
SYSTEM_NAMES = {
    KUBETUNE: "kubetune default (MiniLM + LoRA)",
    BASELINE: "TF-IDF (word 1-2 grams) + linear SVM",
    FULL: "MiniLM full fine-tune",
}
FULL_FINE_TUNE_LR = 1e-4  # a full fine-tune of MiniLM wants ~10x less than LoRA's 1e-3
# How much slower a full fine-tune of MiniLM trains than its LoRA run, per epoch: 1.6x on the demo (issue 11).
FULL_FINE_TUNE_SLOWDOWN = 1.6
COUNCIL_ROWS = 40_000


@dataclass(frozen=True)
class Dataset:
    config: str  # relative to the repository root
    overrides: tuple[str, ...]
    description: str
    by_default: bool = True  # measured by a plain `python -m bench.quality` (and `make bench`)


def quality_datasets(council_rows: int) -> dict[str, Dataset]:
    return {
        "demo": Dataset("configs/demo.yaml", (), "demo ledger, 6,000 rows, random stratified split (test 15 %)"),
        "demo-by-supplier": Dataset("configs/demo.yaml", ("split.group_column=supplier",),
                                    "demo ledger, 6,000 rows, split by supplier (test suppliers unseen in train)"),
        "banking77": Dataset("configs/banking77.yaml", (), "Banking77, its test file (3,080 rows); validation 10 % of train"),
        "hwu64": Dataset("configs/hwu64.yaml", (), "HWU64, its train / valid / test files (test 1,076 rows)"),
        "council": Dataset("configs/council-spend.yaml", (f"data.max_rows={council_rows}",),
                           f"council payments, first {council_rows:,} rows, split by supplier"),
        # All of it: ~5x the sample's training rows, so one epoch is more steps than the sample's four. Validation
        # (~22k rows) every 1,000 steps rather than 500: each pass over it costs about a minute here. Only when
        # named: it is an hour of its own here.
        "council-full": Dataset("configs/council-spend.yaml",
                                ("training.epochs=1", "training.eval_steps=1000", "training.save_steps=1000"),
                                "council payments, all 218,813 rows, split by supplier, 1 epoch", by_default=False),
        # The shipped recipe as it is: about 4 x 50 min of training on 2 CPU cores, so measured in steps (from-steps).
        "council-full-4ep": Dataset("configs/council-spend.yaml", (),
                                    "council payments, all 218,813 rows, split by supplier, the shipped 4 epochs",
                                    by_default=False),
    }


DATASET_NAMES = tuple(quality_datasets(COUNCIL_ROWS))
DEFAULT_DATASETS = tuple(name for name, dataset in quality_datasets(COUNCIL_ROWS).items() if dataset.by_default)


def _data_overrides(config: str) -> list[str]:
    """Shipped configs name ../shared/datasets/...; BENCH_DATASETS_DIR may put the data sets elsewhere."""
    if "BENCH_DATASETS_DIR" not in os.environ:
        return []
    from bench.data import dataset_path
    from kubetune.config import load_config

    raw = load_config(REPO_ROOT / config).data
    overrides = []
    for key in ("uri", "validation_uri", "test_uri"):
        value = getattr(raw, key)
        if value and "://" not in value and "datasets" in Path(value).parts:
            overrides.append(f"data.{key}={dataset_path(value)}")
    return overrides


def full_fine_tune_overrides(config: str, overrides: Sequence[str], epochs: float | None, learning_rate: float,
                             slowdown: float) -> list[str]:
    """The full fine-tune of the same model: LoRA off, its own rate, no head rate, about the LoRA run's time."""
    if epochs is None:
        from kubetune.config import load_config

        epochs = round(load_config(REPO_ROOT / config, overrides).training.epochs / slowdown, 2)
    return ["lora.enable=false", f"training.learning_rate={learning_rate:g}", "training.head_learning_rate=null",
            f"training.epochs={epochs:g}"]


# ---------------------------------------------------------------------------------------- rows
def _figures(metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {"accuracy": metrics.get("accuracy"), "macro_f1": metrics.get("macro_f1"), "weighted_f1": metrics.get("weighted_f1"),
            "top5_accuracy": metrics.get("top5_accuracy")}


def _epochs(model_dir: str) -> float | None:
    """Epochs the model trained: training_metrics.json's `epoch` (the Trainer's count, early stopping included)."""
    metrics_file = Path(model_dir) / "training_metrics.json" if model_dir else None
    if metrics_file is None or not metrics_file.is_file():
        return None
    return json.loads(metrics_file.read_text()).get("epoch")


def _baseline_row(common: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, Any]:
    """The baseline's row beside a kubetune row: its fit time is not in baseline_metrics.json
    (bench/results/baseline_cost.csv measures it)."""
    return {**common, "system": BASELINE, **_figures(baseline), "wall_seconds": None, "train_seconds": None, "epochs": None}


def run_rows(summary_file: Path, dataset: str, data: str, system: str, command: str) -> list[dict[str, Any]]:
    """The rows of one finished `kubetune run`: the system's, and with a kubetune run the baseline's of the same
    evaluation (fit on the same train split, scored on the same test rows)."""
    if not summary_file.is_file():
        raise SystemExit(f"{summary_file}: no summary.json; pass RUNS_DIR/RUN_ID of a finished `kubetune run`")
    summary = json.loads(summary_file.read_text())
    evaluation = Path(summary.get("evaluation_dir") or "")
    metrics_file = evaluation / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else summary.get("test_metrics") or {}
    if metrics.get("accuracy") is None:
        raise SystemExit(f"{summary_file}: no test metrics (neither {metrics_file} nor the summary's test_metrics)")
    common = {"dataset": dataset, "data": data, "run_command": command, "source": str(summary_file)}
    rows = [{**common, "system": system, **_figures(metrics), "wall_seconds": summary.get("seconds"),
             "train_seconds": (summary.get("step_seconds") or {}).get("train"), "epochs": _epochs(summary.get("model_dir", ""))}]
    if system == KUBETUNE:
        baseline_file = evaluation / "baseline_metrics.json"
        baseline = json.loads(baseline_file.read_text()) if baseline_file.is_file() else summary.get("baseline_metrics") or {}
        if baseline.get("accuracy") is not None:
            rows.append(_baseline_row(common, baseline))
    return rows


def steps_rows(model_dir: Path, evaluation: Path, dataset: str, data: str, command: str) -> list[dict[str, Any]]:
    """The rows of a run made of separate steps (`kubetune train`, wherever it ran, then `kubetune evaluate`): the
    model's test figures and the baseline's from the same evaluation. No wall or train seconds: a resumed training's
    train_runtime counts its last process only, so the command text says where and how long each part ran."""
    metrics_file, baseline_file = evaluation / "metrics.json", evaluation / "baseline_metrics.json"
    for needed in (metrics_file, baseline_file):
        if not needed.is_file():
            raise SystemExit(f"{needed}: not found; pass the output folder of `kubetune evaluate` (with the baseline on)")
    metrics, baseline = json.loads(metrics_file.read_text()), json.loads(baseline_file.read_text())
    common = {"dataset": dataset, "data": data, "run_command": command, "source": str(metrics_file)}
    return [{**common, "system": KUBETUNE, **_figures(metrics), "wall_seconds": None, "train_seconds": None,
             "epochs": _epochs(str(model_dir))},
            _baseline_row(common, baseline)]


def from_steps(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality from-steps",
                                     description="Record kubetune's default measured in separate steps (`kubetune train`, "
                                     "e.g. on a GPU machine or resumed, then `kubetune evaluate`) and its baseline in quality.csv.")
    parser.add_argument("--model", type=Path, required=True, help="The trained model folder (TRAINED/model).")
    parser.add_argument("--evaluation", type=Path, required=True, help="The `kubetune evaluate` output folder.")
    parser.add_argument("--dataset", required=True, choices=DATASET_NAMES, help="The data set it ran on.")
    parser.add_argument("--command", required=True, help="The commands, with where and how long each part ran.")
    args = parser.parse_args(argv)
    description = quality_datasets(COUNCIL_ROWS)[args.dataset].description
    _record(steps_rows(args.model, args.evaluation, args.dataset, description, args.command))
    return 0


def measure(name: str, dataset: Dataset, system: str, extra: Sequence[str], workdir: Path,
            split_seed: int | None = None) -> list[dict[str, Any]]:
    """`kubetune run` of one system on one data set in a fresh runs folder; its rows. With `split_seed` the rows are
    split again by `split.seed` (in that seed's own work folder) and each row says the seed."""
    if split_seed is not None:
        extra, workdir = [*extra, f"split.seed={split_seed}"], workdir / f"split-seed-{split_seed}"
    runs = workdir / name / system / "runs"
    shutil.rmtree(runs, ignore_errors=True)  # kfp.local's cache would skip steps: every step is timed
    overrides = [*dataset.overrides, *_data_overrides(dataset.config), *extra]
    shown = ["kubetune", "run", "--config", dataset.config, *overrides]
    command = [sys.executable, "-m", "kubetune", "run", "--config", str(REPO_ROOT / dataset.config), "--run-id", system,
               f"storage.runs_uri={runs}", *overrides]
    print(f"  {name} {system}: {shlex.join(shown)}", flush=True)
    run_logged(command, workdir / name / system / "run.log", env=bench_env())
    rows = run_rows(runs / system / "summary.json", name, dataset.description, system, shlex.join(shown))
    return rows if split_seed is None else [{**row, "split_seed": split_seed} for row in rows]


# --------------------------------------------------------------------------------------- search
def search_row(output: Path, dataset: str, setting: str, command: str) -> dict[str, Any]:
    """One setting tried during the search, from a `kubetune train` output: validation figures only
    (training_metrics.json's eval_*, the saved model's; else the best evaluation in training_history.json; else,
    when the training stopped before it saved its model, the best evaluation in its newest complete checkpoint's
    trainer_state.json)."""
    model = output / "model"
    metrics_file, history_file = model / "training_metrics.json", model / "training_history.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    source = metrics_file
    if metrics.get("eval_accuracy") is None:
        history = json.loads(history_file.read_text()) if history_file.is_file() else {}
        evals = [e for e in history.get("eval", []) if e.get("eval_accuracy") is not None]
        best_step, metric = history.get("best_step"), history.get("metric_for_best_model")
        found = _checkpoint_evaluations(output) if not evals and not history_file.is_file() else None
        if found:
            history_file, evals, best_step = found
        if not evals:
            raise SystemExit(f"{output}: no validation figures (neither {metrics_file} with eval_accuracy nor "
                             f"evaluations in {history_file})")
        best = next((e for e in evals if e.get("step") == best_step), None)
        best = best or max(evals, key=lambda e: e.get(metric or "eval_macro_f1") or 0.0)
        metrics, source = {**metrics, **best}, history_file
    return {"dataset": dataset, "setting": setting, "accuracy": metrics.get("eval_accuracy"),
            "macro_f1": metrics.get("eval_macro_f1"), "weighted_f1": metrics.get("eval_weighted_f1"),
            "train_seconds": metrics.get("train_runtime"), "epochs": metrics.get("epoch"), "run_command": command,
            "source": str(source)}


def _checkpoint_evaluations(output: Path) -> tuple[Path, list[dict[str, Any]], int | None] | None:
    """The newest complete checkpoint's trainer_state.json, its evaluations (the Trainer's log_history) and the step
    of its best one: what a training stopped before it saved its model leaves. None without any evaluation there."""
    from kubetune.train.checkpoints import newest_complete

    newest = newest_complete(output / "checkpoints")
    state_file = newest / "trainer_state.json" if newest else None
    if state_file is None or not state_file.is_file():
        return None
    state = json.loads(state_file.read_text())
    evals = [e for e in state.get("log_history", []) if e.get("eval_accuracy") is not None]
    return (state_file, evals, state.get("best_global_step")) if evals else None


def search_record(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality search-record",
                                     description="Record one setting tried (validation figures) in quality_search.csv.")
    parser.add_argument("--output", type=Path, required=True, help="A finished `kubetune train` output directory.")
    parser.add_argument("--dataset", required=True, help="The data set it trained on (e.g. demo, banking77).")
    parser.add_argument("--setting", required=True, help="What was tried, in words (e.g. 'lora.r=32, all-linear').")
    parser.add_argument("--command", required=True, help="The command that trained it.")
    args = parser.parse_args(argv)
    row = search_row(args.output, args.dataset, args.setting, args.command)
    append_rows("quality_search", run_info(), [row])
    print(f"  {row['dataset']} {row['setting']}: validation accuracy {row['accuracy']}, macro F1 {row['macro_f1']}", flush=True)
    return 0


def search_baseline_row(data: Path, dataset: str, setting: str, command: str) -> dict[str, Any]:
    """The baseline of a setting tried: fitted on the train split of a tokenized data set (`kubetune tokenize`
    output) as the evaluate step fits it (shipped defaults), scored on its validation split only."""
    import datasets
    import numpy as np

    from kubetune.config import EvaluateConfig
    from kubetune.data.labels import LabelMap
    from kubetune.evaluation import serialized_texts
    from kubetune.evaluation.baseline import baseline_metrics, fit_baseline

    try:
        splits = datasets.load_from_disk(str(data))
    except FileNotFoundError as missing:
        raise SystemExit(f"{data}: not a tokenized data set ({missing})") from None
    if "validation" not in splits or "train" not in splits or "text" not in splits["train"].column_names:
        raise SystemExit(f"{data}: not a tokenized data set with train and validation splits and their text")
    train, validation, defaults = splits["train"], splits["validation"], EvaluateConfig()
    baseline = fit_baseline(serialized_texts(train, None), np.asarray(train["labels"]), LabelMap.load(data).num_real_labels,
                            max_features=defaults.baseline_max_features, max_rows=defaults.baseline_max_train_rows)
    metrics = baseline_metrics(baseline, serialized_texts(validation, None), validation["labels"])
    return {"dataset": dataset, "setting": setting, "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"],
            "weighted_f1": metrics["weighted_f1"], "train_seconds": None, "epochs": None, "run_command": command,
            "source": str(data)}


def search_baseline(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality search-baseline",
                                     description="Record the TF-IDF baseline on a tokenized data set's validation split "
                                     "(the yardstick of the settings tried on it) in quality_search.csv.")
    parser.add_argument("--data", type=Path, required=True, help="A `kubetune tokenize` output directory.")
    parser.add_argument("--dataset", required=True, help="The data set it holds (e.g. demo, council).")
    parser.add_argument("--setting", required=True, help="Its text, in words (e.g. 'values only, column dropout 0.2').")
    parser.add_argument("--command", required=True, help="The commands that made the data.")
    args = parser.parse_args(argv)
    row = search_baseline_row(args.data, args.dataset, f"{BASELINE} (validation): {args.setting}", args.command)
    append_rows("quality_search", run_info(), [row])
    print(f"  {row['dataset']} {row['setting']}: validation accuracy {row['accuracy']}, macro F1 {row['macro_f1']}", flush=True)
    return 0


# ----------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["search-record"]:
        return search_record(argv[1:])
    if argv[:1] == ["search-baseline"]:
        return search_baseline(argv[1:])
    if argv[:1] == ["from-steps"]:
        return from_steps(argv[1:])
    parser = argparse.ArgumentParser(
        description="Quality: kubetune's default vs the TF-IDF baseline vs a full fine-tune.",
        epilog="`python -m bench.quality search-record --help`: record a setting tried during the search (validation); "
               "`search-baseline --help`: the baseline on the same validation split; `from-steps --help`: a run made "
               "of separate train and evaluate steps.")
    parser.add_argument("--datasets", nargs="+", choices=DATASET_NAMES,
                        default=(os.environ.get("BENCH_QUALITY_DATASETS") or " ".join(DEFAULT_DATASETS)).split(),
                        help="Data sets to measure (BENCH_QUALITY_DATASETS); default: all but council-full.")
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS,
                        default=(os.environ.get("BENCH_QUALITY_SYSTEMS") or " ".join(SYSTEMS)).split(),
                        help="Systems to run (BENCH_QUALITY_SYSTEMS); the baseline comes with every kubetune run.")
    parser.add_argument("--council-rows", type=int, default=env_int("BENCH_COUNCIL_ROWS", COUNCIL_ROWS),
                        help="data.max_rows of the council sample (BENCH_COUNCIL_ROWS).")
    parser.add_argument("--full-epochs", type=float, default=float(os.environ.get("BENCH_FULL_FT_EPOCHS") or 0) or None,
                        help="Epochs of the full fine-tune (BENCH_FULL_FT_EPOCHS); default: the LoRA config's epochs "
                             "divided by --full-slowdown, about the LoRA run's time.")
    parser.add_argument("--full-slowdown", type=float,
                        default=float(os.environ.get("BENCH_FULL_FT_SLOWDOWN") or FULL_FINE_TUNE_SLOWDOWN),
                        help="How much slower a full fine-tune trains per epoch than LoRA (BENCH_FULL_FT_SLOWDOWN).")
    parser.add_argument("--full-lr", type=float, default=float(os.environ.get("BENCH_FULL_FT_LR") or FULL_FINE_TUNE_LR),
                        help="Learning rate of the full fine-tune (BENCH_FULL_FT_LR).")
    parser.add_argument("--split-seeds", type=int, nargs="+", metavar="SEED",
                        help="Split each data set again with each of these split.seed values (its test split read once "
                             "per seed) and record the rows in quality_splits.csv, not in the quality table: does the "
                             "margin over the baseline hold on other splits of the same rows?")
    parser.add_argument("--from-run", type=Path, help="Record this finished run (RUNS_DIR/RUN_ID) instead of running one.")
    parser.add_argument("--dataset", choices=DATASET_NAMES, help="With --from-run: the data set it ran on.")
    parser.add_argument("--system", choices=SYSTEMS, default=KUBETUNE, help="With --from-run: what it ran.")
    parser.add_argument("--command", help="With --from-run: the command that made it.")
    args = parser.parse_args(argv)
    table = quality_datasets(args.council_rows)

    if args.from_run is not None:
        if args.split_seeds:
            parser.error("--split-seeds runs new splits; a finished run (--from-run) was split already")
        if not args.dataset:
            parser.error("--from-run needs --dataset")
        command = args.command or f"a finished run ({args.from_run}); its command was not given"
        rows = run_rows(args.from_run / "summary.json", args.dataset, table[args.dataset].description, args.system, command)
        _record(rows)
        return 0
    info, failed = run_info(), []
    for name in args.datasets:
        dataset = table[name]
        for split_seed in args.split_seeds or [None]:
            for system in args.systems:
                extra = [] if system == KUBETUNE else full_fine_tune_overrides(
                    dataset.config, dataset.overrides, args.full_epochs, args.full_lr, args.full_slowdown)
                label = name if split_seed is None else f"{name} split.seed={split_seed}"
                try:
                    rows = measure(name, dataset, system, extra, WORK_DIR / "quality", split_seed)
                except (RuntimeError, SystemExit) as failure:  # reported at the end; the other runs still run
                    print(f"  {label} {system}: FAILED: {failure}", file=sys.stderr, flush=True)
                    failed.append(f"{label} {system}")
                    continue
                # Each run's rows as soon as it ends: hours of training are never lost.
                _record(rows, info, section="quality" if split_seed is None else "quality_splits")
    if failed:
        print(f"bench.quality: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _record(rows: Sequence[Mapping[str, Any]], info: Any = None, section: str = "quality") -> None:
    append_rows(section, info or run_info(), rows)
    for row in rows:
        seed = f" split.seed={row['split_seed']}" if "split_seed" in row else ""
        print(f"  {row['dataset']}{seed} {row['system']}: accuracy {row['accuracy']:.4f}, macro F1 {row['macro_f1']:.4f}, "
              f"weighted F1 {row['weighted_f1']:.4f}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
