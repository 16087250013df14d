"""Smoke tests of the benchmark code (bench/): each section runs end to end on a few steps with the
tiny models, so a broken benchmark is found here and not in the quiet window before a release.
The figures themselves are not checked (a loaded test machine makes them noise); what is checked is
that the right things are measured and written where BENCHMARKS.md reads them."""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import pytest

import bench.common
from bench import data as bench_data
from bench.gpu_throughput import flops_per_real_token, qwen_config
from bench.pipeline import measure as measure_pipeline
from bench.pipeline import summary_rows
from bench.quality import full_fine_tune_overrides
from bench.quality import main as quality_main
from bench.report import render
from bench.throughput import compare, epoch_padding, one_epoch_rows, summarize
from bench.tokenization import measure as measure_tokenization

from .conftest import WORDS

pytestmark = pytest.mark.slow  # starts benchmark worker processes
LABELS = ("alpha", "bravo", "charlie")  # never among the filler WORDS


@pytest.fixture(autouse=True)
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Rows go to a scratch folder, never to the repository's bench/results."""
    directory = tmp_path / "results"
    monkeypatch.setattr(bench.common, "RESULTS_DIR", directory)
    monkeypatch.setenv("BENCH_SESSION", "test-session")
    monkeypatch.setenv("BENCH_COMMAND", "pytest")
    return directory


@pytest.fixture(scope="module")
def toy_preprocessed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """kubetune's preprocess output of a 300-row toy CSV whose label word is in the text (learnable)."""
    root = tmp_path_factory.mktemp("bench-toy")
    rng = random.Random(0)
    with (root / "toy.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "category"])
        for i in range(300):
            label = LABELS[i % len(LABELS)]
            writer.writerow([" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 30))) + f" {label}", label])
    sections = {"data": {"uri": str(root / "toy.csv")}, "split": {"label_column": "category", "seed": 0},
                "serialize": {"text_columns": ["text"], "include_column_names": False}}
    return bench_data.preprocess("toy", sections, root / "preprocessed"), sections


def test_throughput_runs_a_b_c_interleaved_with_the_same_steps(tiny_bert: Path, toy_preprocessed, tmp_path: Path):
    preprocessed, sections = toy_preprocessed
    train_rows = one_epoch_rows(sections, str(tiny_bert), steps=2, seed=0)
    assert train_rows == 2 * 16
    subset = bench_data.make_subset(preprocessed, tmp_path / "subset", train_rows=train_rows, eval_rows=8, seed=0)
    rows = compare("toy", subset, str(tiny_bert), sections, steps=2, repeats=1, workdir=tmp_path / "work",
                   seed_max_length=64)

    assert [row["variant"] for row in rows] == ["A", "B", "C"]
    assert all(row["steps"] == 2 and row["batch_size"] == 16 for row in rows)
    assert all(row["samples_per_s"] > 0 and row["peak_rss_mb"] > 0 for row in rows)
    padding = {row["variant"]: row["padding_fraction"] for row in rows}
    # C pads every row to 64 tokens, longer than any toy row; A and B pad to the longest row of each batch.
    assert padding["C"] > max(padding["A"], padding["B"])
    # One epoch over the same rows: the three trained on exactly the same real tokens, however they batched them.
    real = [row["real_tokens_per_s"] * row["step_seconds"] for row in rows]
    assert real[0] == pytest.approx(real[1], rel=1e-6) and real[1] == pytest.approx(real[2], rel=1e-6)
    c_real = real[2]
    assert padding["C"] == pytest.approx(1 - c_real / (2 * 16 * 64), abs=1e-6)

    config_c = (tmp_path / "work" / "config-C.yaml").read_text()
    assert "padding: max_length" in config_c and "group_by_length: false" in config_c and "stage: 2" in config_c
    summary = {e["variant"]: e for e in summarize(rows)}
    assert summary["A"]["samples_per_s_vs_A"] == 1.0
    assert summary["B"]["samples_per_s_vs_A"] == pytest.approx(rows[1]["samples_per_s"] / rows[0]["samples_per_s"])


def test_epoch_padding_follows_each_variants_sampler():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(5, 60) for _ in range(4096)]
    # C pads every row to the fixed length: exactly the share of it that is not a real token.
    assert epoch_padding([2, 4], 16, "C", seed=0, pad_to=8) == pytest.approx(1 - 6 / 16)
    # Rows of one length need no padding however they are batched.
    assert epoch_padding([7] * 64, 16, "A", seed=0) == 0 and epoch_padding([7] * 64, 16, "B", seed=0) == 0
    # Random batches pad to their longest row; the Trainer's length grouping sorts groups of 50 batches first.
    random_batches, grouped = epoch_padding(lengths, 16, "A", seed=0), epoch_padding(lengths, 16, "B", seed=0)
    assert grouped < 0.05 < 0.30 < random_batches


def test_subset_keeps_the_label_map_and_sizes(toy_preprocessed, tmp_path: Path):
    import datasets

    preprocessed, _ = toy_preprocessed
    subset = bench_data.make_subset(preprocessed, tmp_path / "subset", train_rows=50, eval_rows=5, seed=1)
    loaded = datasets.load_from_disk(str(subset))
    assert {name: len(split) for name, split in loaded.items()} == {"train": 50, "validation": 5, "test": 5}
    assert (subset / "label_map.json").read_text() == (preprocessed / "label_map.json").read_text()
    assert (subset / "_COMPLETE").is_file()
    with pytest.raises(SystemExit, match="fewer than the 10000"):
        bench_data.make_subset(preprocessed, tmp_path / "too-big", train_rows=10_000, eval_rows=5, seed=1)


def test_tokenization_counts_the_same_tokens_as_a_plain_map(tiny_bert: Path, toy_preprocessed, tmp_path: Path):
    import datasets

    preprocessed, sections = toy_preprocessed
    config = {**sections, "model": {"name": str(tiny_bert)}, "tokenize": {"max_length": 16}}
    rows = measure_tokenization("toy", preprocessed, config, tmp_path / "work",
                                methods=(("kubetune tokenize", 2), ("datasets.map", 1)))
    total_rows = sum(len(split) for split in datasets.load_from_disk(str(preprocessed)).values())
    assert [row["rows"] for row in rows] == [total_rows, total_rows]
    # Both truncate at 16 tokens with the same tokenizer: the same token count, whatever the speed.
    assert rows[0]["tokens"] == rows[1]["tokens"]
    assert rows[0]["peak_worker_rss_mb"] > 0 and rows[1]["peak_worker_rss_mb"] is None
    assert rows[0]["rows_per_s"] == pytest.approx(total_rows / rows[0]["seconds"])


def test_gpu_flops_formula_for_qwen2_5_0_5b():
    flops = flops_per_real_token(qwen_config(tiny=False), lora_r=16, num_labels=458, token_weighted_length=40.0)
    # 24 layers × (q, o: 896² each; k, v: 896×128 each; MLP: 3 × 896×4864)
    assert flops["n_frozen"] == 24 * (2 * 896 * 896 + 2 * 896 * 128 + 3 * 896 * 4864) == 357_826_560
    # LoRA r=16 on q, k, v, o (r × (in + out) each) plus the 896×458 head
    assert flops["n_trainable"] == 24 * 16 * (2 * (896 + 896) + 2 * (896 + 128)) + 896 * 458
    assert flops["flops_per_token"] == 4 * 357_826_560 + 6 * flops["n_trainable"] + 12 * 24 * 896 * 40.0


def test_gpu_benchmark_runs_on_cpu_with_a_tiny_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, results_dir: Path):
    import bench.gpu_throughput as gpu

    lengths = tmp_path / "lengths.json"
    lengths.write_text(json.dumps({"counts": {"20": 5, "40": 3, "60": 1}}))
    monkeypatch.setattr(gpu, "WORK_DIR", tmp_path / "work")
    assert gpu.main(["--tiny", "--steps", "2", "--repeats", "1", "--train-rows", "48", "--lengths", str(lengths)]) == 0
    with (results_dir / "throughput.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    # One untimed warm-up round of each variant ran first (its logs are there) and is not among the rows.
    logs = tmp_path / "work" / "gpu" / "qwen2-tiny-random" / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["A-0.log", "A-1.log", "B-0.log", "B-1.log", "C-0.log", "C-1.log"]
    assert [(r["suite"], r["variant"], r["repeat"], r["steps"]) for r in rows] == [("smoke", v, "1", "2") for v in "ABC"]
    assert all(r["session"] == "test-session" and r["command"] == "pytest" for r in rows)
    assert all(r["mfu"] == "" for r in rows)  # no GPU, no peak to compare with
    assert len({r["flops_per_token"] for r in rows}) == 1 and float(rows[0]["flops_per_token"]) > 0


def test_gpu_benchmark_runs_only_the_variants_asked_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, results_dir: Path):
    import bench.gpu_throughput as gpu

    lengths = tmp_path / "lengths.json"
    lengths.write_text(json.dumps({"counts": {"20": 5, "40": 3}}))
    monkeypatch.setattr(gpu, "WORK_DIR", tmp_path / "work")
    assert gpu.main(["--tiny", "--steps", "1", "--repeats", "1", "--train-rows", "16", "--lengths", str(lengths),
                     "--variants", "B", "--warmup-rounds", "0"]) == 0
    with (results_dir / "throughput.csv").open(newline="") as handle:
        assert [r["variant"] for r in csv.DictReader(handle)] == ["B"]


def test_gpu_benchmark_stopped_mid_run_keeps_the_rounds_it_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    results_dir: Path):
    import bench.gpu_throughput as gpu
    import bench.throughput

    lengths = tmp_path / "lengths.json"
    lengths.write_text(json.dumps({"counts": {"20": 5, "40": 3}}))
    monkeypatch.setattr(gpu, "WORK_DIR", tmp_path / "work")
    real_run_logged, calls = bench.throughput.run_logged, []

    def stopped_in_round_two(command, log, **kwargs):
        calls.append(log.name)
        if log.name == "A-2.log":  # the time limit strikes during the second round
            raise KeyboardInterrupt
        return real_run_logged(command, log, **kwargs)

    monkeypatch.setattr(bench.throughput, "run_logged", stopped_in_round_two)
    with pytest.raises(KeyboardInterrupt):
        gpu.main(["--tiny", "--steps", "1", "--repeats", "3", "--train-rows", "16", "--lengths", str(lengths),
                  "--variants", "A", "B", "--warmup-rounds", "0"])
    assert calls == ["A-1.log", "B-1.log", "A-2.log"]
    with (results_dir / "throughput.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["variant"], r["repeat"], r["suite"]) for r in rows] == [("A", "1", "smoke"), ("B", "1", "smoke")]
    assert all(float(r["flops_per_token"]) > 0 for r in rows)


def test_pipeline_that_cannot_run_is_reported_not_measured(tmp_path: Path):
    rows = measure_pipeline(str(tmp_path / "missing.yaml"), [], tmp_path / "work")
    assert len(rows) == 1 and rows[0]["step"] == "" and rows[0]["seconds"] is None
    assert rows[0]["note"].startswith("not measured: ") and "exit code 2" in rows[0]["note"]


def test_pipeline_rows_and_the_share_that_is_not_training(tmp_path: Path):
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"seconds": 20.0, "step_seconds": {"validate": 1.0, "preprocess": 2.0, "tokenize": None,
                                                                      "train": 10.0, "evaluate": 4.0}}))
    rows = summary_rows(summary, wall=25.0)
    assert [(r["step"], r["seconds"], r["note"]) for r in rows] == [
        ("validate", 1.0, ""), ("preprocess", 2.0, ""), ("tokenize", None, "served from cache"), ("train", 10.0, ""),
        ("evaluate", 4.0, ""), ("pipeline (kfp.local, inside run_local)", 20.0, ""), ("total (the command's wall time)", 25.0, ""),
    ]
    bench.common.append_rows("pipeline", bench.common.run_info(), rows)
    assert "Share of the wall time that is not training: 60.0 %." in render(why_file=tmp_path / "none.yaml")


def _throughput_row(dataset: str, variant: str, samples: float, padding: float, epoch_padding: float | None = None) -> dict:
    return {"suite": "cpu", "dataset": dataset, "model": "m", "variant": variant, "repeat": 1, "steps": 12, "batch_size": 16,
            "samples_per_s": samples, "real_tokens_per_s": samples * 10, "padding_fraction": padding, "step_seconds": 1.0,
            "epoch_padding_fraction": epoch_padding, "peak_rss_mb": 500.0, "wall_seconds": 9.0, "device": "cpu"}


def test_report_says_by_how_much_a_goal_is_missed_and_where_the_why_goes(tmp_path: Path):
    info = bench.common.run_info()
    bench.common.append_rows("throughput", info, [
        _throughput_row("banking77", "A", 100.0, 0.3), _throughput_row("banking77", "B", 90.0, 0.35, epoch_padding=0.12),
        _throughput_row("banking77", "C", 20.0, 0.9),
    ])
    bench.common.append_rows("quality", info, [
        _quality_row("banking77", "kubetune", 0.90, 0.89), _quality_row("banking77", "full-fine-tune", 0.92, 0.91),
    ])
    bench.common.append_rows("pipeline", info, [{"step": "", "seconds": None, "note": "not measured: it broke"}])
    why = tmp_path / "why.yaml"
    why.write_text("cpu_b_vs_a: the collator copies every row\n")

    page = render(why_file=why)
    assert "| CPU: B ≥ 1.0 × A in samples/s (banking77) | 0.90× | **missed**: 0.90× is 10 % short of 1× |" in page
    assert "| CPU: B ≥ 3 × C in samples/s (banking77) | 4.50× | met |" in page
    # The goal takes the padding of a whole epoch, not of the few rows the timed runs train on.
    assert "| Padding fraction of B ≤ 10 %, one epoch (banking77) | 12.0 % | **missed**: 2.0 points above 10 % |" in page
    assert ("| Banking77: LoRA default within 1 point of a full fine-tune's accuracy (test) | LoRA 90.0 % vs full 92.0 % "
            "(−2.0 pts) | **missed**: 1.0 points more than the 1 allowed |") in page
    assert "**Why `cpu_b_vs_a` is missed:** the collator copies every row" in page
    assert "**Why `padding_b` is missed:** _TO BE FILLED by the lead: write it under `padding_b` in bench/why.yaml._" in page
    assert "not measured: no GPU lent to this session" in page
    assert "not measured: it broke" in page
    assert "_Run test-session on " in page and "command: `pytest`" in page


def test_a_throughput_goal_is_met_only_when_every_pair_of_runs_meets_it():
    def gpu_row(variant: str, repeat: int, tokens: float) -> dict:
        return {**_throughput_row("council", variant, tokens / 10, 0.1), "suite": "gpu", "repeat": repeat,
                "peak_gpu_mb": 900.0, "flops_per_token": 1e9, "peak_tflops": 989.4, "mfu": 0.01, "device": "NVIDIA H200"}

    # A's first run was slow (a fresh machine's one-time costs): the median ratio passes, the second pair doesn't.
    bench.common.append_rows("throughput", bench.common.run_info(), [
        gpu_row("A", 1, 1000.0), gpu_row("B", 1, 2600.0), gpu_row("A", 2, 3000.0), gpu_row("B", 2, 3400.0),
    ])
    page = render(why_file=Path("none.yaml"))
    assert ("| GPU: B ≥ 1.3 × A in real tokens/s (council) | 1.50× | **missed**: the median passes but not every pair of "
            "runs: repeat 1 2.60×, repeat 2 1.13× (1.3× needed) |") in page
    assert "Each run's real tokens/s, by repeat: council A 1,000 / 3,000; council B 2,600 / 3,400." in page


def test_a_column_added_to_a_section_rewrites_its_file_once_with_the_older_rows_kept(results_dir: Path):
    columns = bench.common.COMMON_COLUMNS + bench.common.SECTION_COLUMNS["quality"]
    before = [c for c in columns if c != "top5_accuracy"]
    old = dict.fromkeys(before, "x") | {"dataset": "demo", "accuracy": "0.8"}
    results_dir.mkdir(parents=True, exist_ok=True)
    with (results_dir / "quality.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=before)
        writer.writeheader()
        writer.writerow(old)
    bench.common.append_rows("quality", bench.common.run_info(), [_quality_row("demo", "kubetune", 0.9, 0.8) |
                                                                  {"top5_accuracy": 0.97}])
    with (results_dir / "quality.csv").open(newline="") as handle:
        assert next(csv.reader(handle)) == list(columns)
        handle.seek(0)
        rows = list(csv.DictReader(handle))
    assert [(r["accuracy"], r["top5_accuracy"]) for r in rows] == [("0.8", ""), ("0.9", "0.97")]
    assert rows[0] == old | {"top5_accuracy": ""}


def test_a_column_gone_from_a_section_is_an_error_not_a_silent_loss(results_dir: Path):
    columns = bench.common.COMMON_COLUMNS + bench.common.SECTION_COLUMNS["quality"]
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "quality.csv").write_text(",".join([*columns, "retired"]) + "\r\n")
    with pytest.raises(ValueError, match=r"its columns \['retired'\] are not in the section's columns any more"):
        bench.common.append_rows("quality", bench.common.run_info(), [_quality_row("demo", "kubetune", 0.9, 0.8)])


# ---------------------------------------------------------------------------------------------- quality
def _quality_row(dataset: str, system: str, accuracy: float, macro_f1: float, wall: float | None = 100.0) -> dict:
    return {"dataset": dataset, "data": f"{dataset} rows", "system": system, "accuracy": accuracy, "macro_f1": macro_f1,
            "weighted_f1": accuracy, "wall_seconds": wall, "train_seconds": wall and wall / 2, "epochs": 4 if wall else None,
            "run_command": f"kubetune run --config configs/{dataset}.yaml", "source": "here"}


def _info(date: str, machine: str = "m") -> bench.common.RunInfo:
    return bench.common.RunInfo(session=date, date=date, git_commit="abc1234", machine=machine, command="bench")


def test_quality_table_marks_each_goal_met_or_missed_by_its_margin(tmp_path: Path):
    # An older session's demo rows: the newest row per data set and system is the one reported.
    bench.common.append_rows("quality", _info("2026-01-01T00:00:00+00:00"), [
        _quality_row("demo", "kubetune", 0.50, 0.40), _quality_row("demo", "baseline", 0.87, 0.76, wall=None)])
    bench.common.append_rows("quality", _info("2026-02-01T00:00:00+00:00"), [
        _quality_row("demo", "kubetune", 0.90, 0.80), _quality_row("demo", "baseline", 0.87, 0.76, wall=None),
        _quality_row("demo-by-supplier", "kubetune", 0.70, 0.30), _quality_row("demo-by-supplier", "baseline", 0.712, 0.28, wall=None),
        _quality_row("banking77", "kubetune", 0.925, 0.92), _quality_row("banking77", "baseline", 0.894, 0.89, wall=None),
        _quality_row("banking77", "full-fine-tune", 0.930, 0.93, wall=160.0),
    ])
    # HWU64's two systems on two machines: their wall times cannot be set side by side.
    bench.common.append_rows("quality", _info("2026-02-02T00:00:00+00:00", "Intel Xeon, 2 cores"), [
        _quality_row("hwu64", "kubetune", 0.90, 0.90, wall=450.0), _quality_row("hwu64", "baseline", 0.85, 0.84, wall=None)])
    bench.common.append_rows("quality", _info("2026-02-03T00:00:00+00:00", "AMD EPYC, 2 cores"), [
        _quality_row("hwu64", "full-fine-tune", 0.913, 0.915, wall=600.0)])
    # The demo by supplier's full fine-tune: the LoRA run's machine, another day.
    bench.common.append_rows("quality", _info("2026-02-03T00:00:00+00:00"), [
        _quality_row("demo-by-supplier", "full-fine-tune", 0.72, 0.29, wall=130.0)])
    lines = render(why_file=tmp_path / "none.yaml").splitlines()

    assert ("| demo | demo rows | kubetune default (MiniLM + LoRA) | 90.0 % | 80.0 % | 90.0 % | - | 100 | 50 | 4 | "
            "`kubetune run --config configs/demo.yaml` |") in lines
    assert ("| demo | demo rows | TF-IDF (word 1-2 grams) + linear SVM | 87.0 % | 76.0 % | 87.0 % | - | - | - | - | "
            "`kubetune run --config configs/demo.yaml` |") in lines
    assert "| demo | - | MiniLM full fine-tune | not measured | - | - | - | - | - | - | - |" in lines
    assert "| hwu64 | - | MiniLM full fine-tune | not measured | - | - | - | - | - | - | - |" not in lines
    # The goal table: both margins when met; only what falls short of +2 points when missed.
    assert "| demo | met: +3.0 / +4.0 pts |" in lines
    assert "| demo-by-supplier | missed: −1.2 pts accuracy |" in lines
    assert "| banking77 | met: +3.1 / +3.0 pts |" in lines
    assert "| hwu64 | met: +5.0 / +6.0 pts |" in lines and "| council | not measured |" in lines
    assert ("Banking77, LoRA default vs a full fine-tune of the same model: 92.5 % vs 93.0 % accuracy (100 s vs 160 s wall): "
            "met: LoRA −0.5 pts vs the full fine-tune.") in lines
    # Both metrics, wherever both systems ran (not the demo here, whose full fine-tune is missing).
    comparison = lines.index("| data set | LoRA − full | LoRA wall s | full wall s | machine |")
    assert lines[comparison + 2:comparison + 6] == [
        "| demo-by-supplier | −2.0 / +1.0 pts | 100 | 130 | m, LoRA 2026-02-01, full 2026-02-03: wall times from different days |",
        "| banking77 | −0.5 / −1.0 pts | 100 | 160 | m |",
        "| hwu64 | −1.3 / −1.5 pts | 450 | 600 | LoRA Intel Xeon, full AMD EPYC: wall times not comparable |", ""]
    # ... and the same verdicts among the goals at the top of the page.
    assert ("| demo: kubetune's default ≥ 2 points above the TF-IDF baseline in accuracy and in macro F1 (test) | "
            "+3.0 / +4.0 pts | met |") in lines
    assert ("| demo-by-supplier: kubetune's default ≥ 2 points above the TF-IDF baseline in accuracy and in macro F1 (test) | "
            "−1.2 / +2.0 pts | **missed**: −1.2 pts accuracy |") in lines
    assert ("| council: kubetune's default ≥ 2 points above the TF-IDF baseline in accuracy and in macro F1 (test) | "
            "not measured | not measured |") in lines
    assert ("| Banking77: LoRA default within 1 point of a full fine-tune's accuracy (test) | LoRA 92.5 % vs full 93.0 % "
            "(−0.5 pts) | met |") in lines
    assert "None recorded yet (`python -m bench.quality search-record`, rows in bench/results/quality_search.csv)." in lines
    # The older session's runs stay on the page, below, losses included.
    earlier = lines[lines.index("### Earlier test runs (superseded by a newer recipe; each read its test split once)"):]
    assert earlier[4:6] == [
        "| demo | 2026-01-01T00:00:00+00:00 | abc1234 | TF-IDF (word 1-2 grams) + linear SVM | 87.0 % | 76.0 % | 87.0 % | - | - | "
        "`kubetune run --config configs/demo.yaml` |",
        "| demo | 2026-01-01T00:00:00+00:00 | abc1234 | kubetune default (MiniLM + LoRA) | 50.0 % | 40.0 % | 50.0 % | 100 | 4 | "
        "`kubetune run --config configs/demo.yaml` |"]
    assert earlier[6] == ""  # the newest rows are not repeated there


def test_quality_with_no_rows_says_not_measured_everywhere(tmp_path: Path):
    page = render(why_file=tmp_path / "none.yaml")
    assert "| banking77 | not measured |" in page
    assert "Banking77, LoRA default vs a full fine-tune of the same model: not measured." in page
    assert "LoRA − full" not in page
    assert "%" not in page.split("## Quality")[1].split("## The local pipeline")[0]


def _train_output(root: Path, metrics: dict | None = None, history: dict | None = None) -> Path:
    model = root / "model"
    model.mkdir(parents=True)
    if metrics is not None:
        (model / "training_metrics.json").write_text(json.dumps(metrics))
    if history is not None:
        (model / "training_history.json").write_text(json.dumps(history))
    return root


def test_search_record_appends_the_validation_figures_of_a_train_output(tmp_path: Path, results_dir: Path):
    out = _train_output(tmp_path / "a", metrics={"eval_accuracy": 0.8, "eval_macro_f1": 0.7, "eval_weighted_f1": 0.79,
                                                 "train_runtime": 321.5, "epoch": 6.0, "eval_loss": 0.5})
    assert quality_main(["search-record", "--output", str(out), "--dataset", "demo", "--setting", "lora.r=32",
                         "--command", "kubetune train --config configs/demo.yaml lora.r=32"]) == 0
    # Without the final evaluation's figures: the best evaluation of the history (best_step).
    history = {"metric_for_best_model": "eval_macro_f1", "best_step": 20, "train": [],
               "eval": [{"step": 10, "epoch": 1.0, "eval_accuracy": 0.6, "eval_macro_f1": 0.5, "eval_weighted_f1": 0.58},
                        {"step": 20, "epoch": 2.0, "eval_accuracy": 0.7, "eval_macro_f1": 0.65, "eval_weighted_f1": 0.69},
                        {"step": 30, "epoch": 3.0, "eval_accuracy": 0.72, "eval_macro_f1": 0.6, "eval_weighted_f1": 0.7}]}
    out_b = _train_output(tmp_path / "b", history=history)
    assert quality_main(["search-record", "--output", str(out_b), "--dataset", "banking77", "--setting", "dora",
                         "--command", "kubetune train ..."]) == 0
    with (results_dir / "quality_search.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    picked = [(r["dataset"], r["setting"], r["accuracy"], r["macro_f1"], r["weighted_f1"], r["train_seconds"], r["epochs"])
              for r in rows]
    assert picked == [("demo", "lora.r=32", "0.8", "0.7", "0.79", "321.5", "6"), ("banking77", "dora", "0.7", "0.65", "0.69", "", "2")]
    assert rows[0]["run_command"] == "kubetune train --config configs/demo.yaml lora.r=32"
    assert rows[1]["source"] == str(out_b / "model" / "training_history.json")
    with pytest.raises(SystemExit, match="no validation figures"):
        quality_main(["search-record", "--output", str(_train_output(tmp_path / "c")), "--dataset", "demo",
                      "--setting", "x", "--command", "y"])
    page = render(why_file=tmp_path / "none.yaml")
    assert ("| banking77 | dora | 70.0 % | 65.0 % | 69.0 % | - | 2 | `kubetune train ...` |") in page.splitlines()
    assert ("| demo | lora.r=32 | 80.0 % | 70.0 % | 79.0 % | 322 | 6 | "
            "`kubetune train --config configs/demo.yaml lora.r=32` |") in page.splitlines()


def test_search_record_reads_the_newest_complete_checkpoint_when_the_model_was_never_saved(tmp_path: Path,
                                                                                           results_dir: Path):
    from kubetune.train.checkpoints import mark_complete

    def checkpoint(step: int, evals: list[tuple[int, float, float]], best: int | None) -> None:
        folder = tmp_path / "out" / "checkpoints" / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        log = [{"step": s, "epoch": s / 10, "loss": 1.0} for s, _, _ in evals]
        log += [{"step": s, "epoch": s / 10, "eval_accuracy": a, "eval_macro_f1": f, "eval_weighted_f1": a - 0.01}
                for s, a, f in evals]
        (folder / "trainer_state.json").write_text(json.dumps({"best_global_step": best, "log_history": log}))

    # The newest checkpoint is incomplete (killed while writing it): the complete one before it is read, and its
    # best step (by macro F1, 20) wins over the later evaluation of higher accuracy.
    checkpoint(30, [(10, 0.5, 0.4), (20, 0.6, 0.55), (30, 0.7, 0.5)], best=20)
    mark_complete(tmp_path / "out" / "checkpoints" / "checkpoint-30", world_size=1)
    checkpoint(40, [(10, 0.5, 0.4), (20, 0.6, 0.55), (30, 0.7, 0.5), (40, 0.9, 0.9)], best=40)
    assert quality_main(["search-record", "--output", str(tmp_path / "out"), "--dataset", "council-full",
                         "--setting", "stopped while saving", "--command", "kubetune train ..."]) == 0
    with (results_dir / "quality_search.csv").open(newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    assert (row["accuracy"], row["macro_f1"], row["weighted_f1"], row["epochs"], row["train_seconds"]) == ("0.6", "0.55", "0.59", "2", "")
    assert row["source"] == str(tmp_path / "out" / "checkpoints" / "checkpoint-30" / "trainer_state.json")
    # No complete checkpoint: the one-line error names the model's files.
    shutil.rmtree(tmp_path / "out" / "checkpoints" / "checkpoint-30")
    with pytest.raises(SystemExit, match="no validation figures"):
        quality_main(["search-record", "--output", str(tmp_path / "out"), "--dataset", "demo", "--setting", "x",
                      "--command", "y"])


def test_search_baseline_records_the_baseline_on_the_validation_split_alone(toy_preprocessed, results_dir: Path):
    import datasets
    import numpy as np

    from kubetune.data.labels import LabelMap
    from kubetune.evaluation.baseline import baseline_metrics, fit_baseline

    data, _ = toy_preprocessed
    assert quality_main(["search-baseline", "--data", str(data), "--dataset", "toy", "--setting", "values only",
                         "--command", "kubetune preprocess ..."]) == 0
    splits = datasets.load_from_disk(str(data))
    fitted = fit_baseline(splits["train"]["text"], np.asarray(splits["train"]["labels"]), LabelMap.load(data).num_real_labels)
    expected = baseline_metrics(fitted, splits["validation"]["text"], splits["validation"]["labels"])
    assert expected != baseline_metrics(fitted, splits["test"]["text"], splits["test"]["labels"])  # the split matters
    with (results_dir / "quality_search.csv").open(newline="") as handle:
        [row] = list(csv.DictReader(handle))
    assert (row["dataset"], row["setting"], row["run_command"], row["source"]) == \
        ("toy", "baseline (validation): values only", "kubetune preprocess ...", str(data))
    assert [float(row[k]) for k in ("accuracy", "macro_f1", "weighted_f1")] == \
        [pytest.approx(expected[k]) for k in ("accuracy", "macro_f1", "weighted_f1")]
    with pytest.raises(SystemExit, match="not a tokenized data set"):
        quality_main(["search-baseline", "--data", str(data.parent), "--dataset", "toy", "--setting", "x", "--command", "y"])


def _finished_run(run_dir: Path, accuracy: float, baseline: float | None = 0.8) -> Path:
    """What `kubetune run` leaves: summary.json naming its evaluation and model folders."""
    evaluation, model = run_dir.parent / "kfp" / "evaluate" / "evaluation", run_dir / "train" / "model"
    evaluation.mkdir(parents=True)
    model.mkdir(parents=True)
    (evaluation / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "macro_f1": accuracy - 0.1,
                                                         "weighted_f1": accuracy - 0.01, "loss": 0.3}))
    if baseline is not None:
        (evaluation / "baseline_metrics.json").write_text(json.dumps({"accuracy": baseline, "macro_f1": baseline - 0.2,
                                                                      "weighted_f1": baseline - 0.02}))
    (model / "training_metrics.json").write_text(json.dumps({"epoch": 4.0, "eval_accuracy": 0.5}))
    (run_dir / "summary.json").write_text(json.dumps({
        "run_id": run_dir.name, "seconds": 500.0, "step_seconds": {"validate": 1.0, "train": 400.0, "evaluate": 30.0},
        "test_metrics": {}, "baseline_metrics": {}, "evaluation_dir": str(evaluation), "model_dir": str(model)}))
    return run_dir


def test_from_run_records_a_finished_run_and_its_baseline(tmp_path: Path, results_dir: Path):
    run = _finished_run(tmp_path / "runs" / "r1", accuracy=0.9)
    assert quality_main(["--from-run", str(run), "--dataset", "demo-by-supplier", "--command",
                         "kubetune run --config configs/demo.yaml split.group_column=supplier"]) == 0
    with (results_dir / "quality.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    picked = [(r["dataset"], r["system"], r["accuracy"], r["macro_f1"], r["weighted_f1"], r["wall_seconds"], r["train_seconds"],
               r["epochs"]) for r in rows]
    assert picked == [("demo-by-supplier", "kubetune", "0.9", "0.8", "0.89", "500", "400", "4"),
                      ("demo-by-supplier", "baseline", "0.8", "0.6", "0.78", "", "", "")]
    assert {r["run_command"] for r in rows} == {"kubetune run --config configs/demo.yaml split.group_column=supplier"}
    assert {r["source"] for r in rows} == {str(run / "summary.json")}
    assert rows[0]["data"].startswith("demo ledger, 6,000 rows, split by supplier")
    assert rows[0]["session"] == "test-session" and rows[0]["command"] == "pytest" and rows[0]["machine"]
    # A full fine-tune's run: its row only (the baseline is the kubetune run's, on the same rows).
    full = _finished_run(tmp_path / "runs2" / "r2", accuracy=0.91)
    assert quality_main(["--from-run", str(full), "--dataset", "banking77", "--system", "full-fine-tune"]) == 0
    with (results_dir / "quality.csv").open(newline="") as handle:
        last = list(csv.DictReader(handle))[-1]
    assert (last["dataset"], last["system"], last["accuracy"]) == ("banking77", "full-fine-tune", "0.91")
    assert last["run_command"].startswith(f"a finished run ({full})")
    with pytest.raises(SystemExit, match="no summary.json"):
        quality_main(["--from-run", str(tmp_path / "nowhere"), "--dataset", "demo"])


def test_from_steps_records_a_separately_trained_model_and_its_baseline(tmp_path: Path, results_dir: Path):
    model = _train_output(tmp_path / "out", metrics={"epoch": 4.0, "train_runtime": 12.0}) / "model"
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "metrics.json").write_text(json.dumps({"accuracy": 0.66, "macro_f1": 0.15, "weighted_f1": 0.64,
                                                         "top5_accuracy": 0.86}))
    (evaluation / "baseline_metrics.json").write_text(json.dumps({"accuracy": 0.65, "macro_f1": 0.13, "weighted_f1": 0.6,
                                                                  "top5_accuracy": 0.79}))
    assert quality_main(["from-steps", "--model", str(model), "--evaluation", str(evaluation), "--dataset",
                         "council-full-4ep", "--command", "kubetune train ... (on a GPU); kubetune evaluate ..."]) == 0
    with (results_dir / "quality.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    picked = [(r["dataset"], r["system"], r["accuracy"], r["macro_f1"], r["top5_accuracy"], r["wall_seconds"],
               r["train_seconds"], r["epochs"]) for r in rows]
    assert picked == [("council-full-4ep", "kubetune", "0.66", "0.15", "0.86", "", "", "4"),
                      ("council-full-4ep", "baseline", "0.65", "0.13", "0.79", "", "", "")]
    assert {r["run_command"] for r in rows} == {"kubetune train ... (on a GPU); kubetune evaluate ..."}
    assert rows[0]["data"] == "council payments, all 218,813 rows, split by supplier, the shipped 4 epochs"
    (evaluation / "baseline_metrics.json").unlink()  # evaluate.baseline: none leaves nothing to compare with
    with pytest.raises(SystemExit, match="baseline_metrics.json: not found"):
        quality_main(["from-steps", "--model", str(model), "--evaluation", str(evaluation), "--dataset",
                      "council-full-4ep", "--command", "c"])


def test_quality_runs_each_system_as_a_kubetune_run(tmp_path: Path, results_dir: Path, monkeypatch: pytest.MonkeyPatch):
    import bench.quality as quality

    commands = []

    def fake_run(command, log, env=None, timeout=None):  # no training: what `kubetune run` would leave
        commands.append(command)
        runs = Path(next(c for c in command if c.startswith("storage.runs_uri=")).split("=", 1)[1])
        _finished_run(runs / command[command.index("--run-id") + 1], accuracy=0.9)
        return 1.0

    monkeypatch.setattr(quality, "run_logged", fake_run)
    monkeypatch.setattr(quality, "WORK_DIR", tmp_path / "work")
    monkeypatch.delenv("BENCH_DATASETS_DIR", raising=False)
    assert quality_main(["--datasets", "council", "--council-rows", "5000", "--full-lr", "2e-4"]) == 0
    assert [c[c.index("--config") + 1] for c in commands] == [str(bench.common.REPO_ROOT / "configs" / "council-spend.yaml")] * 2
    assert commands[0][-1] == "data.max_rows=5000"
    # council-spend.yaml trains 4 epochs of LoRA; the full fine-tune gets 4 / 1.6 for about the same time.
    assert commands[1][-5:] == ["data.max_rows=5000", "lora.enable=false", "training.learning_rate=0.0002",
                                "training.head_learning_rate=null", "training.epochs=2.5"]
    with (results_dir / "quality.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["system"], r["run_command"]) for r in rows] == [
        ("kubetune", "kubetune run --config configs/council-spend.yaml data.max_rows=5000"),
        ("baseline", "kubetune run --config configs/council-spend.yaml data.max_rows=5000"),
        ("full-fine-tune", "kubetune run --config configs/council-spend.yaml data.max_rows=5000 lora.enable=false "
                           "training.learning_rate=0.0002 training.head_learning_rate=null training.epochs=2.5"),
    ]
    assert rows[0]["data"] == "council payments, first 5,000 rows, split by supplier"


def test_split_seeds_run_each_data_set_split_again_and_record_apart(tmp_path: Path, results_dir: Path,
                                                                    monkeypatch: pytest.MonkeyPatch):
    import bench.quality as quality

    commands = []

    def fake_run(command, log, env=None, timeout=None):
        commands.append(command)
        runs = Path(next(c for c in command if c.startswith("storage.runs_uri=")).split("=", 1)[1])
        seed = int(command[-1].removeprefix("split.seed="))
        _finished_run(runs / command[command.index("--run-id") + 1], accuracy=0.9 if seed == 7 else 0.81)
        return 1.0

    monkeypatch.setattr(quality, "run_logged", fake_run)
    monkeypatch.setattr(quality, "WORK_DIR", tmp_path / "work")
    monkeypatch.delenv("BENCH_DATASETS_DIR", raising=False)
    assert quality_main(["--datasets", "demo-by-supplier", "--systems", "kubetune", "--split-seeds", "7", "13"]) == 0
    assert [c[-2:] for c in commands] == [["split.group_column=supplier", "split.seed=7"],
                                          ["split.group_column=supplier", "split.seed=13"]]
    # Each seed in its own runs folder: one split's run never reuses (or clears) another's.
    assert [next(c for c in command if c.startswith("storage.runs_uri=")) for command in commands] == [
        f"storage.runs_uri={tmp_path / 'work' / 'quality' / f'split-seed-{seed}' / 'demo-by-supplier' / 'kubetune' / 'runs'}"
        for seed in (7, 13)]
    assert not (results_dir / "quality.csv").exists()  # the quality table's split is not these
    with (results_dir / "quality_splits.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["dataset"], r["split_seed"], r["system"], r["accuracy"]) for r in rows] == [
        ("demo-by-supplier", "7", "kubetune", "0.9"), ("demo-by-supplier", "7", "baseline", "0.8"),
        ("demo-by-supplier", "13", "kubetune", "0.81"), ("demo-by-supplier", "13", "baseline", "0.8")]
    assert rows[0]["run_command"] == "kubetune run --config configs/demo.yaml split.group_column=supplier split.seed=7"
    # Beside the quality table's own split, each split's margin and how many hold.
    bench.common.append_rows("quality", _info("2026-12-04T10:00:00+00:00"), [
        _quality_row("demo-by-supplier", "kubetune", 0.85, 0.75), _quality_row("demo-by-supplier", "baseline", 0.82, 0.70)])
    lines = render(why_file=tmp_path / "none.yaml").splitlines()
    assert "| demo-by-supplier | the config's own (the quality table) | 85.0 % / 75.0 % | 82.0 % / 70.0 % | met: +3.0 / +5.0 pts |" in lines
    assert "| demo-by-supplier | 7 | 90.0 % / 80.0 % | 80.0 % / 60.0 % | met: +10.0 / +20.0 pts |" in lines
    assert "| demo-by-supplier | 13 | 81.0 % / 71.0 % | 80.0 % / 60.0 % | missed: +1.0 pts accuracy |" in lines
    assert "demo-by-supplier: the margin holds on 2 of 3 splits." in lines
    with pytest.raises(SystemExit):
        quality_main(["--from-run", str(tmp_path), "--dataset", "demo", "--split-seeds", "7"])


def test_a_plain_quality_run_leaves_out_the_whole_council_set(tmp_path: Path, results_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch):
    """council-full (an hour of training here) runs only when named; its one epoch over all rows when it is."""
    import bench.quality as quality

    measured = []
    monkeypatch.setattr(quality, "measure",
                        lambda name, dataset, system, extra, work, split_seed=None: measured.append((name, dataset)) or [])
    monkeypatch.delenv("BENCH_QUALITY_DATASETS", raising=False)
    assert quality_main(["--systems", "kubetune"]) == 0
    assert [name for name, _ in measured] == ["demo", "demo-by-supplier", "banking77", "hwu64", "council"]
    measured.clear()
    assert quality_main(["--datasets", "council-full", "--systems", "kubetune"]) == 0
    [(name, dataset)] = measured
    assert dataset.overrides == ("training.epochs=1", "training.eval_steps=1000", "training.save_steps=1000")


def test_full_fine_tune_overrides_validate_on_every_quality_config():
    from bench.quality import quality_datasets
    from kubetune.config import load_config

    for name, dataset in quality_datasets(40_000).items():
        overrides = [*dataset.overrides, *full_fine_tune_overrides(dataset.config, dataset.overrides, None, 1e-4, 1.6)]
        config = load_config(bench.common.REPO_ROOT / dataset.config, overrides)
        assert not config.lora.enable and config.training.head_learning_rate is None, name
        assert config.training.learning_rate == 1e-4
    assert full_fine_tune_overrides("configs/banking77.yaml", (), None, 1e-4, 1.6)[-1] == "training.epochs=5"
    assert full_fine_tune_overrides("configs/banking77.yaml", (), 3.0, 1e-4, 1.6)[-1] == "training.epochs=3"


def test_quality_reads_the_data_sets_from_bench_datasets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from bench.quality import _data_overrides

    monkeypatch.delenv("BENCH_DATASETS_DIR", raising=False)
    assert _data_overrides("configs/hwu64.yaml") == []  # the config's own paths, as a user runs it
    monkeypatch.setenv("BENCH_DATASETS_DIR", str(tmp_path))
    monkeypatch.setattr(bench_data, "DATASETS_DIR", tmp_path)
    assert _data_overrides("configs/hwu64.yaml") == [f"data.{key}={tmp_path / 'hwu64' / name}" for key, name in
                                                     (("uri", "train.csv"), ("validation_uri", "valid.csv"), ("test_uri", "test.csv"))]
    assert _data_overrides("configs/demo.yaml") == []  # demo:// is no file


def test_local_layout_section_takes_medians_per_layout():
    from bench.report import local_layout_section

    common = {"session": "s1", "date": "2026-12-02T15:00:00+00:00", "git_commit": "abc", "machine": "cpu", "command": "c",
              "steps": "120", "global_batch": "32", "overrides": ""}
    rows = [
        {**common, "layout": "2 ranks x 1 thread, DeepSpeed ZeRO-2", "samples_per_s": value, "tokens_per_s": "1000", "wall_seconds": "90"}
        for value in ("30.0", "34.0", "40.0")
    ] + [{**common, "layout": "1 rank x 2 threads", "samples_per_s": "45.5", "tokens_per_s": "1500", "wall_seconds": "70"}]
    lines = local_layout_section(rows)
    assert "| 2 ranks x 1 thread, DeepSpeed ZeRO-2 | 3 | 34.0 | 1,000 | 90 |" in lines
    assert "| 1 rank x 2 threads | 1 | 45.5 | 1,500 | 70 |" in lines
    assert local_layout_section([])[0].startswith("not measured")


# ---------------------------------------------------------------------------------------------- predict
def test_predict_benchmark_times_both_systems_on_the_same_model(tiny_bert: Path, tmp_path: Path):
    """kubetune predict and the transformers pipeline over the merged model label every row alike (the dummy
    slots of the forced head masked in both), so the two times are of the same work."""
    from bench.predict_throughput import KUBETUNE, PIPELINE, time_systems
    from kubetune.data.demo import write_demo_data
    from kubetune.data.load import load_table
    from kubetune.inference import Predictor
    from tests.predict_helpers import LABEL_COLUMN, build_model_folder

    ledger = write_demo_data(tmp_path / "ledger.csv", rows=40, seed=4)
    predictor = Predictor.load(str(build_model_folder(tmp_path, tiny_bert, ledger, dummy_bias=1e4)))
    seconds, agreement = time_systems(predictor, load_table(str(ledger), "d", text_columns=[LABEL_COLUMN]), 8, 1)
    assert set(seconds) == {KUBETUNE, PIPELINE} and all(s > 0 for s in seconds.values())
    assert agreement == 1.0


def test_predict_section_compares_rows_per_second():
    from bench.report import predict_section

    info = _info("2026-12-02T00:00:00")
    rows = [{**info.__dict__, "dataset": "council", "rows": "2000", "system": system, "model": "MiniLM LoRA (untrained)",
             "batch_size": "64", "max_length": "64", "repeats": "3", "seconds": str(2000 / speed), "rows_per_s": str(speed),
             "agreement": "1.0", "device": "cpu (2 threads)"}
            for system, speed in (("kubetune predict", 150.0), ("transformers pipeline", 100.0))]
    lines = "\n".join(predict_section(rows))
    assert "| kubetune predict | council | 2,000 | 64 | 64 | 13.3 | 150.0 | cpu (2 threads) |" in lines
    assert "`kubetune predict` scores 1.50× the rows per second of the plain pipeline" in lines and "100.0 %" in lines
    assert "not measured" in predict_section([])[0]
