"""Regenerate BENCHMARKS.md from bench/results/*.csv (each section from its newest session) and the
goals of the benchmark issue, saying for each goal where we stand and, when missed, by how much.
The reasons for a missed goal are written by hand in bench/why.yaml, never in BENCHMARKS.md itself.

    python -m bench.report            # writes BENCHMARKS.md
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.common import REPO_ROOT, latest_session, read_rows, results_file
from bench.throughput import VARIANT_NAMES, summarize

OUTPUT = REPO_ROOT / "BENCHMARKS.md"
WHY_FILE = REPO_ROOT / "bench" / "why.yaml"
NOT_RUN = "not measured: no rows in {file} yet (run `bench/run.sh`)"


def _not_run(section: str) -> str:
    path = results_file(section)
    shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
    return NOT_RUN.format(file=shown)


@dataclass
class Goal:
    key: str
    text: str
    measured: str
    met: bool | None  # None: not measured
    shortfall: str = ""


def _f(value: Any) -> float | None:
    return None if value in (None, "") else float(value)


def _session_line(rows: Sequence[Mapping[str, str]]) -> str:
    first = rows[0]
    return (f"_Run {first['session']} on {first['date']}, commit `{first['git_commit']}`, {first['machine']}; "
            f"command: `{first['command']}`._")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines


def _x(value: float | None) -> str:
    return f"{value:.2f}×" if value is not None else "-"


def _pct(value: float | None) -> str:
    return f"{100 * value:.1f} %" if value is not None else "-"


# ---------------------------------------------------------------------------------------- sections
def throughput_section(rows: Sequence[Mapping[str, str]], suite: str) -> tuple[list[str], list[dict[str, Any]]]:
    chosen = latest_session([r for r in rows if r["suite"] == suite])
    if not chosen:
        return [], []
    summary = summarize(chosen)
    lines = [_session_line(chosen), ""]
    gpu = suite == "gpu"
    headers = ["dataset", "variant", "runs", "samples/s", "real tokens/s", "padding (these runs)",
               *([] if gpu else ["padding (one epoch)"]), "peak RSS MiB",
               *(["peak GPU MiB", "MFU"] if gpu else []), "samples/s vs A", "real tokens/s vs A"]
    table = []
    for e in summary:
        table.append([e["dataset"], f"{e['variant']}: {VARIANT_NAMES[e['variant']]}", e["runs"], f"{e['samples_per_s']:.1f}",
                      f"{e['real_tokens_per_s']:,.0f}", _pct(e["padding_fraction"]),
                      *([] if gpu else [_pct(e.get("epoch_padding_fraction"))]), f"{e['peak_rss_mb']:,.0f}",
                      *([f"{e['peak_gpu_mb']:,.0f}" if e["peak_gpu_mb"] is not None else "-", _pct(e["mfu"])] if gpu else []),
                      _x(e["samples_per_s_vs_A"]), _x(e["real_tokens_per_s_vs_A"])])
    lines += _table(headers, table)
    first = chosen[0]
    lines += ["", f"Model `{first['model']}`; {first['steps']} optimizer steps of {first['batch_size']} rows per run, "
                  f"medians over the runs (interleaved A B C …); device: {first['device']}."]
    if not gpu:
        lines += ["", "Each run trains one epoch over the same rows, so A, B and C process the same samples and real tokens. "
                      "Over so few rows length grouping only sorts small groups; \"padding (one epoch)\" counts the padding of "
                      "one whole epoch of the full train split batched as each variant's sampler batches it (the padding goal "
                      "uses it)."]
    if gpu:
        lines += [f"FLOPs per real token (formula in bench/gpu_throughput.py): {float(first['flops_per_token']):.4g}; "
                  f"peak {first['peak_tflops'] or '?'} TFLOP/s dense bf16."]
    return lines, summary


def tokenization_section(rows: Sequence[Mapping[str, str]]) -> list[str]:
    chosen = latest_session(rows)
    if not chosen:
        return [_not_run("tokenization")]
    table = [[r["dataset"], r["method"], r["num_proc"], f"{int(r['rows']):,}", f"{int(r['tokens']):,}", f"{float(r['seconds']):.1f}",
              f"{float(r['rows_per_s']):,.0f}", f"{float(r['tokens_per_s']):,.0f}", f"{float(r['peak_rss_mb']):,.0f}",
              f"{float(r['peak_worker_rss_mb']):,.0f}" if r["peak_worker_rss_mb"] else "-"] for r in chosen]
    return [_session_line(chosen), "", *_table(
        ["dataset", "method", "num_proc", "rows", "tokens", "seconds", "rows/s", "tokens/s", "peak RSS MiB (main)",
         "peak RSS MiB (largest worker)"], table),
        "", "The stage's time covers all it does (full lengths for the diagnostics, diagnostics, writing its output); "
            "the plain `datasets.map` covers the map and its Arrow cache file."]


def accuracy_section(rows: Sequence[Mapping[str, str]]) -> list[str]:
    chosen = latest_session(rows)
    if not chosen:
        return [_not_run("accuracy")]
    table = []
    for r in chosen:
        measured = r["accuracy"] != ""
        table.append([r["dataset"], r["split"], r["system"], r["epochs"] or "-",
                      f"{float(r['accuracy']):.4f}" if measured else "-", f"{float(r['macro_f1']):.4f}" if measured else "-",
                      f"{float(r['weighted_f1']):.4f}" if measured else "-",
                      f"{float(r['seconds']):.0f}" if r["seconds"] else "-", r["source"]])
    return [_session_line(chosen), "", *_table(
        ["dataset", "split", "system", "epochs", "accuracy", "macro F1", "weighted F1", "seconds", "where the figures come from"], table)]


def pipeline_section(rows: Sequence[Mapping[str, str]]) -> tuple[list[str], float | None]:
    chosen = latest_session(rows)
    if not chosen:
        return [_not_run("pipeline")], None
    if len(chosen) == 1 and not chosen[0]["step"]:
        return [_session_line(chosen), "", chosen[0]["note"]], None
    seconds = {r["step"]: _f(r["seconds"]) for r in chosen}
    total = next((v for k, v in seconds.items() if k.startswith("total")), None)
    if total is None:  # a summary.json reported as it was: the pipeline's own total
        total = next((v for k, v in seconds.items() if k.startswith("pipeline")), None)
    train = seconds.get("train")
    share = 1 - train / total if total and train is not None else None
    table = [[r["step"], f"{float(r['seconds']):.1f}" if r["seconds"] else "-", r["note"]] for r in chosen]
    return [_session_line(chosen), "", *_table(["step", "seconds", "note"], table), "",
            f"Share of the wall time that is not training: {_pct(share)}."], share


# -------------------------------------------------------------------------------------------- goals
def throughput_goals(summary: Sequence[Mapping[str, Any]], suite: str) -> list[Goal]:
    goals = []
    by = {(e["dataset"], e["variant"]): e for e in summary}
    datasets = sorted({e["dataset"] for e in summary})

    def ratio_goal(key: str, text: str, metric: str, other: str, target: float) -> None:
        for dataset in datasets:
            b, o = by.get((dataset, "B")), by.get((dataset, other))
            if not b or not o or not o[metric]:
                continue
            ratio = b[metric] / o[metric]
            met = ratio >= target
            goals.append(Goal(key, f"{text} ({dataset})", f"{ratio:.2f}×", met,
                              "" if met else f"{ratio:.2f}× is {100 * (1 - ratio / target):.0f} % short of {target:g}×"))

    if suite == "cpu":
        ratio_goal("cpu_b_vs_a", "CPU: B ≥ 1.0 × A in samples/s", "samples_per_s", "A", 1.0)
        ratio_goal("cpu_b_vs_c", "CPU: B ≥ 3 × C in samples/s", "samples_per_s", "C", 3.0)
        for dataset in datasets:
            b = by.get((dataset, "B"))
            if b:
                over_epoch = b.get("epoch_padding_fraction") is not None  # older rows: only the timed runs' padding
                padding = b["epoch_padding_fraction"] if over_epoch else b["padding_fraction"]
                met = padding <= 0.10
                scope = "one epoch" if over_epoch else "the timed runs"
                goals.append(Goal("padding_b", f"Padding fraction of B ≤ 10 %, {scope} ({dataset})", _pct(padding), met,
                                  "" if met else f"{100 * (padding - 0.10):.1f} points above 10 %"))
    else:
        ratio_goal("gpu_b_vs_a", "GPU: B ≥ 1.3 × A in real tokens/s", "real_tokens_per_s", "A", 1.3)
    return goals


def accuracy_goals(rows: Sequence[Mapping[str, str]]) -> list[Goal]:
    chosen = latest_session(rows)

    def row(dataset: str, start: str) -> Mapping[str, str] | None:
        return next((r for r in chosen if r["dataset"] == dataset and r["system"].startswith(start) and r["accuracy"]), None)

    goals = []
    lora, full = row("banking77", "kubetune"), row("banking77", "MiniLM full")
    text = "Banking77: MiniLM LoRA within 1.5 points of the full fine-tune's accuracy"
    if lora and full:
        gap = 100 * (float(full["accuracy"]) - float(lora["accuracy"]))
        met = gap <= 1.5
        goals.append(Goal("lora_vs_full", text, f"LoRA {100 * float(lora['accuracy']):.2f} % vs full {100 * float(full['accuracy']):.2f} % "
                          f"({gap:+.2f} points)", met, "" if met else f"{gap - 1.5:.2f} points more than the 1.5 allowed"))
    else:
        goals.append(Goal("lora_vs_full", text, "not measured", None))
    kubetune, tfidf = row("council", "kubetune"), row("council", "TF-IDF")
    text = "Council (grouped by supplier): kubetune's macro F1 above TF-IDF + linear"
    if kubetune and tfidf:
        diff = float(kubetune["macro_f1"]) - float(tfidf["macro_f1"])
        met = diff > 0
        short = " (kubetune: a short run)" if "steps only" in kubetune["system"] else ""
        goals.append(Goal("council_macro_f1", text, f"{float(kubetune['macro_f1']):.4f} vs {float(tfidf['macro_f1']):.4f}{short}", met,
                          "" if met else f"{-diff:.4f} below TF-IDF + linear"))
    else:
        reason = next((r["source"] for r in chosen if r["dataset"] == "council" and r["system"].startswith("kubetune")), "not measured")
        goals.append(Goal("council_macro_f1", text, reason if reason.startswith("not measured") else "not measured", None))
    return goals


def goals_lines(goals: Sequence[Goal], why: Mapping[str, str]) -> list[str]:
    table = [[g.text, g.measured, "met" if g.met else ("**missed**: " + g.shortfall if g.met is False else "not measured")]
             for g in goals]
    lines = _table(["goal", "measured", "status"], table)
    missed = {g.key for g in goals if g.met is False}
    for key in sorted(missed):
        text = (why.get(key) or "").strip()
        lines += ["", f"**Why `{key}` is missed:** " + (text or f"_TO BE FILLED by the lead: write it under `{key}` in bench/why.yaml._")]
    return lines


# --------------------------------------------------------------------------------------------- page
def render(read: Callable[[str], list[dict[str, str]]] = read_rows, why_file: Path = WHY_FILE) -> str:
    why = yaml.safe_load(why_file.read_text()) if why_file.is_file() else {}
    throughput = read("throughput")
    cpu_lines, cpu_summary = throughput_section(throughput, "cpu")
    gpu_lines, gpu_summary = throughput_section(throughput, "gpu")
    pipeline_lines, _ = pipeline_section(read("pipeline"))
    accuracy_rows = read("accuracy")
    goals = throughput_goals(cpu_summary, "cpu") + accuracy_goals(accuracy_rows)
    if gpu_summary:
        goals += throughput_goals(gpu_summary, "gpu")
        goals.append(Goal("gpu_mfu", "GPU: MFU reported", ", ".join(f"{e['variant']} {_pct(e['mfu'])}" for e in gpu_summary), True))
    else:
        goals.append(Goal("gpu_b_vs_a", "GPU: B ≥ 1.3 × A in real tokens/s, and MFU reported", "not measured: no GPU lent to this session", None))
    if not cpu_summary:
        goals.insert(0, Goal("cpu_b_vs_a", "CPU throughput goals (B vs A, B vs C, padding of B)", "not measured", None))

    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python -m bench.report` from bench/results/*.csv; edits here are lost. "
        "Reasons for missed goals go in bench/why.yaml. -->",
        "",
        "How to reproduce: `make bench` (or `bench/run.sh`) runs the CPU set on this machine and regenerates this page; "
        "every figure below is in bench/results/*.csv with its date, commit, machine and command. Knobs: "
        "`BENCH_TRAIN_STEPS`, `BENCH_REPEATS`, `BENCH_TRAIN_ROWS`, `BENCH_BANKING77_EPOCHS`, `BENCH_BANKING77_RUN`, "
        "`BENCH_COUNCIL_RUN`, `BENCH_COUNCIL_STEPS`, `BENCH_PIPELINE_SUMMARY`, `BENCH_SECTIONS` (see bench/run.sh).",
        "",
        "## Goals: where we stand",
        "",
        *goals_lines(goals, why),
        "",
        "## Training throughput on the CPU",
        "",
        "A: `bench/plain_hf_peft.py`, HF Trainer + PEFT LoRA with dynamic padding, no DeepSpeed (what a user writes). "
        "B: kubetune's trainer with its default config. C: the seeds' configuration (every row padded to 512 tokens, "
        "DeepSpeed ZeRO-2, no length grouping). Same model, rows, optimizer steps and seed; one process per run. "
        "All three are measured by kubetune's SpeedCallback: samples and real (attention-mask) tokens over the time "
        "inside optimizer steps. Peak RSS is the run's process.",
        "",
        *(cpu_lines or [_not_run("throughput")]),
        "",
        "## Training throughput on a GPU",
        "",
        *(gpu_lines or ["Not measured: no GPU lent to this session. On a GPU machine: `python -m bench.gpu_throughput` "
                        "(Qwen2.5-0.5B architecture with random weights, LoRA on q/k/v/o, bf16, council token lengths up "
                        "to 512; real tokens/s and MFU, FLOPs-per-token formula in bench/gpu_throughput.py), then "
                        "`python -m bench.report`."]),
        "",
        "## Tokenization",
        "",
        *tokenization_section(read("tokenization")),
        "",
        "## Accuracy",
        "",
        *accuracy_section(accuracy_rows),
        "",
        "## The local pipeline (`kubetune run`, the demo)",
        "",
        *pipeline_lines,
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Regenerate BENCHMARKS.md from bench/results/*.csv.")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    args.output.write_text(render())
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
