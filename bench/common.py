"""What every benchmark section shares: where things live, who ran it on what, and the result CSVs.

Each CSV row starts with the same five columns (session, date, git_commit, machine, command) so that
BENCHMARKS.md can say exactly where every figure came from; the report uses each section's newest session.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = Path(os.environ.get("BENCH_RESULTS_DIR", REPO_ROOT / "bench" / "results"))
WORK_DIR = Path(os.environ.get("BENCH_WORK_DIR", REPO_ROOT / "bench" / "work"))
DATASETS_DIR = Path(os.environ.get("BENCH_DATASETS_DIR", REPO_ROOT.parent / "shared" / "datasets"))
CONFIGS_DIR = REPO_ROOT / "configs"

COMMON_COLUMNS = ("session", "date", "git_commit", "machine", "command")
SECTION_COLUMNS: dict[str, tuple[str, ...]] = {
    "throughput": (
        "suite", "dataset", "model", "variant", "repeat", "steps", "batch_size", "samples_per_s", "real_tokens_per_s",
        "padding_fraction", "epoch_padding_fraction", "step_seconds", "peak_rss_mb", "peak_gpu_mb", "wall_seconds", "flops_per_token",
        "peak_tflops", "mfu", "device",
    ),
    "tokenization": (
        "dataset", "method", "num_proc", "rows", "tokens", "seconds", "rows_per_s", "tokens_per_s", "peak_rss_mb",
        "peak_worker_rss_mb",
    ),
    # One row per data set and system; run_command reproduces the row (the common `command` ran the benchmark).
    "quality": ("dataset", "data", "system", "accuracy", "macro_f1", "weighted_f1", "top5_accuracy", "wall_seconds",
                "train_seconds", "epochs", "run_command", "source"),
    # The same data sets split again with other split seeds (`bench.quality --split-seeds`): does a margin over the
    # baseline hold beyond the one split the quality table reads?
    "quality_splits": ("dataset", "data", "split_seed", "system", "accuracy", "macro_f1", "weighted_f1", "top5_accuracy",
                       "wall_seconds", "train_seconds", "epochs", "run_command", "source"),
    # Each setting tried while choosing defaults: validation figures only.
    "quality_search": ("dataset", "setting", "accuracy", "macro_f1", "weighted_f1", "train_seconds", "epochs",
                       "run_command", "source"),
    "pipeline": ("step", "seconds", "note"),
    "local_layout": ("layout", "repeat", "steps", "global_batch", "samples_per_s", "tokens_per_s", "wall_seconds", "overrides"),
    # Inference: rows/s of `kubetune predict` and of the plain transformers pipeline on the same rows.
    "predict": ("dataset", "rows", "system", "model", "batch_size", "max_length", "repeats", "seconds", "rows_per_s",
                "agreement", "device"),
    # task: sft: the same examples trained padded (random or length-grouped batches) and packed (concatenate or flatten).
    "sft_packing": ("method", "model", "examples", "steps", "batch_size", "max_seq_length", "real_tokens", "computed_tokens",
                    "seconds", "real_tokens_per_s", "padding_fraction", "device"),
    "baseline_cost": (
        "dataset", "split", "max_features", "features", "train_rows", "test_rows", "fit_seconds", "predict_seconds",
        "accuracy", "macro_f1",
    ),
}


@dataclass(frozen=True)
class RunInfo:
    """Who produced a row: one session per `bench/run.sh` (or per command run alone)."""

    session: str
    date: str
    git_commit: str
    machine: str
    command: str


def git_commit() -> str:
    """The short commit of the working tree, `+dirty` when it has uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line: CPU, cores this process may use, RAM, GPU (when torch sees one), torch version."""
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu_name()}, {cores} cores, {ram_gib:.0f} GiB RAM{gpu}, torch {torch.__version__}"


def run_info() -> RunInfo:
    """BENCH_SESSION/BENCH_COMMAND come from bench/run.sh, so all sections of one run share them."""
    now = datetime.now(UTC)
    session = os.environ.get("BENCH_SESSION") or now.strftime("%Y%m%dT%H%M%SZ")
    command = os.environ.get("BENCH_COMMAND") or shlex.join([Path(sys.executable).name, *sys.argv])
    return RunInfo(session=session, date=now.isoformat(timespec="seconds"), git_commit=git_commit(),
                   machine=machine(), command=command)


def results_file(section: str) -> Path:
    return RESULTS_DIR / f"{section}.csv"


def append_rows(section: str, info: RunInfo, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Append rows to bench/results/<section>.csv (header written once); every row must have exactly the section's columns."""
    columns = COMMON_COLUMNS + SECTION_COLUMNS[section]
    path = results_file(section)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    for row in rows:
        unknown = set(row) - set(SECTION_COLUMNS[section])
        if unknown:
            raise ValueError(f"{section}: unknown columns {sorted(unknown)}")
    new = not path.exists() or path.stat().st_size == 0
    if not new:
        _add_new_columns(path, columns)
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow({**asdict(info), **{k: _cell(v) for k, v in row.items()}})
    return path


def _add_new_columns(path: Path, columns: Sequence[str]) -> None:
    """A column added to a section since its file began: rewrite the file once under the new header, the older rows'
    new cells empty (a removed column is an error: its figures would be dropped)."""
    with path.open(newline="") as handle:
        header = next(csv.reader(handle), [])
        if header == list(columns):
            return
        handle.seek(0)
        old_rows = list(csv.DictReader(handle))
    dropped = [c for c in header if c not in columns]
    if dropped:
        raise ValueError(f"{path}: its columns {dropped} are not in the section's columns any more")
    staging = path.with_suffix(".csv.tmp")
    with staging.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(old_rows)
    staging.replace(path)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def read_rows(section: str) -> list[dict[str, str]]:
    path = results_file(section)
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def latest_session(rows: Sequence[Mapping[str, str]]) -> list[Mapping[str, str]]:
    """The rows of the newest session (by date) in `rows`."""
    if not rows:
        return []
    newest = max(rows, key=lambda row: row["date"])["session"]
    return [row for row in rows if row["session"] == newest]


def peak_rss_mb() -> tuple[float, float]:
    """(this process, its largest waited-for child) peak resident memory in MiB (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


def run_logged(command: Sequence[str], log: Path, env: Mapping[str, str] | None = None, timeout: float | None = None) -> float:
    """Run `command` from the repository root with its output in `log`; return its wall seconds.

    A failure raises with the end of the log, so a broken benchmark never leaves a silent gap.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as handle:
        process = subprocess.run(list(command), cwd=REPO_ROOT, stdout=handle, stderr=subprocess.STDOUT,
                                 env={**os.environ, **(env or {})}, timeout=timeout, check=False)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{shlex.join(command)} failed with exit code {process.returncode} (log: {log}):\n{tail}")
    return seconds


def bench_env() -> dict[str, str]:
    """The environment of every benchmark subprocess: offline, and the repository importable as `bench`."""
    path = os.environ.get("PYTHONPATH", "")
    return {"HF_HUB_OFFLINE": "1", "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{path}" if path else str(REPO_ROOT),
            "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
