"""Smoke test of bench/sft_packing.py: every method trains the same examples, packing computes less padding,
and the rows land in bench/results/sft_packing.csv with its columns (the figures themselves are noise here)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import bench.common

pytestmark = pytest.mark.slow


def test_every_method_covers_the_same_tokens_and_packing_pads_least(tiny_qwen2_lm: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    from bench.sft_packing import main

    monkeypatch.setattr(bench.common, "RESULTS_DIR", tmp_path)
    rows = main(["--model", str(tiny_qwen2_lm), "--examples", "48", "--batch-size", "8", "--max-seq-length", "128"])
    by_method = {row["method"]: row for row in rows}
    assert set(by_method) == {"padded-random", "padded-grouped", "concatenate", "flatten"}
    assert len({row["real_tokens"] for row in rows}) == 1  # the same examples, whatever the batching
    assert by_method["flatten"]["padding_fraction"] == 0.0
    assert by_method["concatenate"]["padding_fraction"] < by_method["padded-grouped"]["padding_fraction"] \
        <= by_method["padded-random"]["padding_fraction"]
    assert by_method["concatenate"]["steps"] < by_method["padded-random"]["steps"] == 6
    with (tmp_path / "sft_packing.csv").open() as handle:
        written = list(csv.DictReader(handle))
    assert [row["method"] for row in written] == [row["method"] for row in rows]
    assert tuple(written[0]) == bench.common.COMMON_COLUMNS + bench.common.SECTION_COLUMNS["sft_packing"]
