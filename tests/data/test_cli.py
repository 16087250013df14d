"""The CLI of the data stages: one-line errors (exit 2, no traceback), demo-data, and atomic outputs
when the preprocess command is killed mid-write."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import datasets
import pandas as pd
import pytest
import yaml

from kubetune.cli import main
from kubetune.data.demo import generate_ledger
from kubetune.data.stages import preprocess

from .conftest import ledger, make_config, write_table


def write_config(tmp_path: Path, data: Path, **sections) -> Path:
    config = make_config(data={"uri": str(data)}, **sections)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", include={"data", "split", "serialize", "tokenize"})))
    return path


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kubetune", *args], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda tmp, cfg: ["preprocess", "--config", str(cfg), "--output", str(tmp / "o"), f"data.uri={tmp / 'gone.csv'}"],
         r"data\.uri: .*gone\.csv not found \(relative paths start at .*\); point data\.uri at an existing file"),
        (lambda tmp, cfg: ["preprocess", "--config", str(cfg), "--output", str(tmp / "o"), "split.label_column=code"],
         r"split\.label_column: column 'code' not in data\.uri .* \(columns found: line_id, supplier, .*\)"),
        (lambda tmp, cfg: ["preprocess", "--config", str(cfg), "--output", str(tmp / "o"), "split.max_classes=2"],
         r"column 'account_code' has 4 distinct labels but split\.max_classes is 2; raise split\.max_classes to at least 4"),
        (lambda tmp, cfg: ["tokenize", "--config", str(cfg), "--input", str(tmp), "--output", str(tmp / "t")],
         r"tokenize input .* is not a complete kubetune preprocess output"),
        (lambda tmp, cfg: ["demo-data", str(tmp / "ledger.xlsx")],
         r"cannot tell the format of 'ledger\.xlsx' from its name; end it in \.csv, \.csv\.gz, \.parquet or \.jsonl"),
    ],
    ids=["missing-file", "missing-label-column", "too-many-labels", "incomplete-input", "demo-format"],
)
def test_errors_are_one_line_with_exit_2(tmp_path: Path, make_args, message: str):
    config = write_config(tmp_path, write_table(ledger(40), tmp_path / "ledger.csv"))
    proc = run_cli(*make_args(tmp_path, config))
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("kubetune: error:")]
    assert len(errors) == 1, proc.stderr
    assert re.search(message, errors[0]), errors[0]
    assert "Traceback" not in proc.stderr


def test_subcommands_have_help(capsys: pytest.CaptureFixture):
    for command in ("preprocess", "tokenize", "demo-data"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert f"usage: kubetune {command}" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["ledger.csv", "ledger.csv.gz", "ledger.parquet", "ledger.jsonl"])
def test_demo_data_command_writes_the_generated_ledger(tmp_path: Path, name: str, capsys: pytest.CaptureFixture):
    assert main(["demo-data", str(tmp_path / name), "--rows", "50", "--seed", "4"]) == 0
    assert f"wrote 50 demo ledger lines (seed 4) to {tmp_path / name}" in capsys.readouterr().out
    reader = {"csv": pd.read_csv, "gz": pd.read_csv, "parquet": pd.read_parquet, "jsonl": lambda p: pd.read_json(p, lines=True)}
    written = reader[name.rsplit(".", 1)[-1]](tmp_path / name)
    expected = generate_ledger(50, 4)
    assert written["line_id"].tolist() == expected["line_id"].tolist()
    assert written["account_code"].tolist() == expected["account_code"].tolist()
    assert written["amount"].round(2).tolist() == expected["amount"].tolist()
    assert not list(tmp_path.glob(".*partial"))


def test_preprocess_command_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture):
    config = write_config(tmp_path, write_table(ledger(60), tmp_path / "ledger.csv"))
    assert main(["preprocess", "--config", str(config), "--output", str(tmp_path / "pre")]) == 0
    out = capsys.readouterr().out
    assert f"preprocess → {tmp_path / 'pre'} (stratified split): 4 labels in 4 slots" in out
    assert [line.split() for line in out.strip().splitlines()[1:]] == [
        ["split", "rows", "share", "classes"], ["----------", "----", "-----", "-------"],
        ["train", "42", "70.0%", "4"], ["validation", "6", "10.0%", "4"], ["test", "12", "20.0%", "4"]]


# ------------------------------------------------------------------------------------ atomic output
SLOW_WRITER = textwrap.dedent("""
    # The preprocess CLI with a slow disk: after the first split is saved, signal and stall.
    import os, sys, time
    import datasets

    original = datasets.Dataset.save_to_disk

    def slow_save(self, path, *args, **kwargs):
        original(self, path, *args, **kwargs)
        with open(os.environ["SAVED_SIGNAL"], "w") as handle:
            handle.write(str(path))
        time.sleep(120)

    datasets.Dataset.save_to_disk = slow_save
    from kubetune.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_killed_preprocess_leaves_the_old_result_intact(tmp_path: Path):
    data = write_table(ledger(200), tmp_path / "ledger.csv")
    out = tmp_path / "pre"
    good = preprocess(make_config(data={"uri": str(data)}), str(out))
    good_test_rows = list(datasets.load_from_disk(str(out))["test"]["line_id"])

    config = write_config(tmp_path, data, split={"seed": 99})  # another seed: a cache miss, so it writes
    script = tmp_path / "slow_writer.py"
    script.write_text(SLOW_WRITER)
    signal_file = tmp_path / "saved"
    proc = subprocess.Popen([sys.executable, str(script), "preprocess", "--config", str(config), "--output", str(out)],
                            env={**os.environ, "SAVED_SIGNAL": str(signal_file)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not signal_file.exists():
            assert proc.poll() is None, "the preprocess command ended before writing"
            assert time.monotonic() < deadline, "the preprocess command never started writing"
            time.sleep(0.05)
        staging = [p for p in tmp_path.glob(".pre.staging-*") if p.is_dir()]
        assert len(staging) == 1 and (staging[0] / "train").is_dir()  # killed with half an output written
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    metadata = json.loads((out / "dataset_metadata.json").read_text())
    assert metadata["cache_key"] == good.cache_key and (out / "_COMPLETE").exists()
    assert list(datasets.load_from_disk(str(out))["test"]["line_id"]) == good_test_rows
    assert preprocess(make_config(data={"uri": str(data)}), str(out)).reused

    # The next run of the stage clears the dead run's staging directory and publishes its result.
    rerun = preprocess(make_config(data={"uri": str(data)}, split={"seed": 99}), str(out))
    assert not rerun.reused
    assert not list(tmp_path.glob(".pre.staging-*"))
