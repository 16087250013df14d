"""The local pipeline: wall time of `kubetune run` (the demo) split per step, and the share of it
that is not training. The run gets fresh output and cache folders, so no step is served from cache.

Per-step seconds come from the run's summary.json (<runs>/<run id>/summary.json); the total is the
wall time of the whole command as a user sees it, start-up included. `--summary` reports a run
made elsewhere instead (its summary.json has no command wall time; the pipeline's own total stands).

    python -m bench.pipeline
    python -m bench.pipeline --summary runs/<run id>/summary.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.common import WORK_DIR, append_rows, bench_env, run_info, run_logged

RUN_ID = "bench"


def measure(config: str | None, overrides: Sequence[str], workdir: Path) -> list[dict[str, Any]]:
    runs = workdir / "runs"
    shutil.rmtree(runs, ignore_errors=True)  # kfp.local's cache would skip preprocess and tokenize
    command = [sys.executable, "-m", "kubetune", "run", *(["--config", config] if config else []), "--run-id", RUN_ID,
               f"storage.runs_uri={runs}", *overrides]
    log = workdir / "logs" / "run.log"
    try:
        wall = run_logged(command, log, env=bench_env())
    except RuntimeError as failure:
        reason = str(failure).splitlines()[0]
        return [{"step": "", "seconds": None, "note": f"not measured: {reason}"}]
    summary_file = runs / RUN_ID / "summary.json"
    if not summary_file.is_file():
        return [{"step": "", "seconds": None, "note": f"not measured: `kubetune run` wrote no {summary_file}"}]
    return summary_rows(summary_file, wall)


def summary_rows(summary_file: Path, wall: float | None = None) -> list[dict[str, Any]]:
    """Rows from a run's summary.json; `wall` is the command's own wall time when this benchmark ran it."""
    summary = json.loads(summary_file.read_text())
    source = "" if wall is not None else f"from {summary_file}"
    rows = []
    for step, seconds in summary["step_seconds"].items():
        rows.append({"step": step, "seconds": seconds, "note": source if seconds is not None else "served from cache"})
    rows.append({"step": "pipeline (kfp.local, inside run_local)", "seconds": summary["seconds"], "note": source})
    if wall is not None:
        rows.append({"step": "total (the command's wall time)", "seconds": wall, "note": ""})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Wall time of `kubetune run` per step.")
    parser.add_argument("--config", help="Run config; default: the demo.")
    parser.add_argument("--summary", type=Path, default=os.environ.get("BENCH_PIPELINE_SUMMARY") or None,
                        help="Report this finished run's summary.json instead of running the demo (BENCH_PIPELINE_SUMMARY).")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for the run.")
    args = parser.parse_args(argv)
    if args.summary is not None:
        if not args.summary.is_file():
            raise SystemExit(f"{args.summary}: no such summary.json (BENCH_PIPELINE_SUMMARY)")
        rows = summary_rows(args.summary)
    else:
        rows = measure(args.config, args.overrides, WORK_DIR / "pipeline")
    append_rows("pipeline", run_info(), rows)
    for row in rows:
        print(f"  {row['step'] or '-'}: {row['seconds'] if row['seconds'] is not None else '-'} {row['note']}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
