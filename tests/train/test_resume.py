"""Exact resume in one process: a run stopped mid-epoch after the first epoch and resumed ends with the same
weights, losses, learning rates and train_loss as the unbroken run, with the default (length-grouped) sampler."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kubetune.config import load_config
from kubetune.storage import COMPLETE_MARKER
from kubetune.train.history import TRAINING_HISTORY_FILE
from kubetune.train.recipe import train
from kubetune.train.trainer import SeededLengthGroupedSampler

from .conftest import build_tokenized, write_config

# 64 rows in batches of 8: 8 steps per epoch; checkpoints at 5, 10, 15, 20; losses logged every 4 steps,
# so checkpoint-10 (epoch 2, two steps past the last log) also carries loss not yet logged.
MAX_STEPS, SAVE_EVERY, LOG_EVERY, RESUME_AT = 20, 5, 4, 10


@pytest.fixture(scope="module")
def small_tokenized(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenized(tmp_path_factory.mktemp("small-tokenized"), tiny_bert, sizes={"train": 64, "validation": 13})


@pytest.fixture(scope="module")
def unbroken(tiny_bert: Path, small_tokenized: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("unbroken")
    config_file = write_config(root / "run.yaml", tiny_bert, training={
        "batch_size": 8, "max_steps": MAX_STEPS, "save_steps": SAVE_EVERY, "logging_steps": LOG_EVERY,
        "save_total_limit": None,
    })
    assert load_config(config_file).training.group_by_length  # the default this test is about
    out = root / "out"
    metrics = train(load_config(config_file), str(small_tokenized), str(out))
    return config_file, out, metrics


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "adapter_model.safetensors")


def trained_steps(out: Path) -> list[dict]:
    state = json.loads((out / "checkpoints" / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())
    return [entry for entry in state["log_history"] if "loss" in entry]


def killed_copy(out: Path, destination: Path, last_complete: int) -> Path:
    """What a run killed between checkpoint `last_complete` and the next one leaves behind: those checkpoints
    (the kill left no model/ and no _COMPLETE), and a newer folder it was writing, without a marker."""
    shutil.copytree(out, destination)
    shutil.rmtree(destination / "model")
    (destination / COMPLETE_MARKER).unlink()
    for checkpoint in (destination / "checkpoints").iterdir():
        if int(checkpoint.name.split("-")[1]) > last_complete:
            shutil.rmtree(checkpoint)
    half = destination / "checkpoints" / f"checkpoint-{last_complete + 1}"
    half.mkdir()
    (half / "trainer_state.json").write_text("{}")
    return destination


def test_the_length_grouped_order_depends_only_on_seed_and_epoch():
    lengths = [(7 * i) % 13 + 1 for i in range(40)]
    first = SeededLengthGroupedSampler(lengths, batch_size=4, seed=3)
    first.set_epoch(2)
    torch.manual_seed(0)
    order = list(first)
    again = SeededLengthGroupedSampler(lengths, batch_size=4, seed=3)
    again.set_epoch(2)
    torch.manual_seed(12345)  # the global RNG must not matter
    torch.rand(100)
    assert list(again) == order
    assert sorted(order) == list(range(40))
    again.set_epoch(1)
    assert list(again) != order


def test_resume_after_the_first_epoch_is_exact(unbroken, small_tokenized: Path, tmp_path: Path):
    config_file, reference, reference_metrics = unbroken
    out = killed_copy(reference, tmp_path / "out", RESUME_AT)
    metrics = train(load_config(config_file), str(small_tokenized), str(out))

    metadata = json.loads((out / "model" / "model_metadata.json").read_text())
    assert metadata["training"]["resumed_from"] == f"checkpoint-{RESUME_AT}"
    assert metrics["global_step"] == reference_metrics["global_step"] == MAX_STEPS
    expected, resumed = adapter(reference), adapter(out)
    assert sorted(resumed) == sorted(expected) and any("classifier" in name for name in expected)
    for name, tensor in expected.items():
        assert torch.equal(resumed[name], tensor), name
    # Every logged loss, learning rate and gradient norm after the resume point, bit for bit.
    after = [entry for entry in trained_steps(reference) if entry["step"] > RESUME_AT]
    assert [entry["step"] for entry in after] == [12, 16, 20]
    assert [e for e in trained_steps(out) if e["step"] > RESUME_AT] == after
    # train_loss is the mean over all 20 steps, not over the 10 the rerun trained.
    assert metrics["train_loss"] == reference_metrics["train_loss"]
    assert metrics["eval_loss"] == reference_metrics["eval_loss"]
    # The Trainer's state restored the log history before the checkpoint: the saved history is the whole run's.
    saved = json.loads((out / "model" / TRAINING_HISTORY_FILE).read_text())
    assert saved == json.loads((reference / "model" / TRAINING_HISTORY_FILE).read_text())
    assert [p["step"] for p in saved["train"]] == list(range(LOG_EVERY, MAX_STEPS + 1, LOG_EVERY))
    assert [p["step"] for p in saved["eval"]] == [8, 16, MAX_STEPS]  # each epoch of 8 steps, and where max_steps ends


def test_a_rerun_that_starts_at_the_last_step_keeps_the_runs_train_loss(unbroken, small_tokenized: Path,
                                                                      tmp_path: Path):
    config_file, reference, reference_metrics = unbroken
    out = killed_copy(reference, tmp_path / "out", MAX_STEPS)
    metrics = train(load_config(config_file), str(small_tokenized), str(out))
    # no step past max_steps (transformers' loop takes one more when it resumes at the limit mid-epoch)
    assert metrics["global_step"] == MAX_STEPS
    for name, tensor in adapter(reference).items():
        assert torch.equal(adapter(out)[name], tensor), name
    losses = [entry["loss"] for entry in trained_steps(reference)]
    assert len(losses) == MAX_STEPS // LOG_EVERY
    # logged every 4 steps, each the mean of its 4: the run's mean is their mean
    assert metrics["train_loss"] == reference_metrics["train_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6)
    assert json.loads((out / "model" / "training_metrics.json").read_text())["train_loss"] == metrics["train_loss"]
