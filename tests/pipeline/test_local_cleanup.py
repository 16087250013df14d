"""What a failed `kubetune run` removes: the folders it made that hold no file, and nothing else."""

from __future__ import annotations

from pathlib import Path

from kubetune.pipeline.local import remove_empty_folders


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) + ("/" if p.is_dir() else "") for p in root.rglob("*"))


def test_a_failed_run_removes_its_empty_folders_and_keeps_every_file(tmp_path: Path):
    runs = tmp_path / "runs"
    # The run's train output: a checkpoint a rerun resumes from, and an empty folder beside it.
    (runs / "r1" / "train" / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (runs / "r1" / "train" / "checkpoints" / "checkpoint-5" / "adapter_model.safetensors").write_bytes(b"weights")
    (runs / "r1" / "train" / "model").mkdir()
    # kfp.local's folder of this pipeline run: the data steps' artifacts (the cache points at them), the failed
    # step's empty artifact folder, and a folder with nothing but a step record.
    pipeline = runs / "kfp" / "kubetune-2026-12-02"
    (pipeline / "preprocess" / "dataset").mkdir(parents=True)
    (pipeline / "preprocess" / "dataset" / "dataset_dict.json").write_text("{}")
    (pipeline / "train" / "model").mkdir(parents=True)
    (pipeline / "validate").mkdir()
    (pipeline / "validate" / "executor_output.json").write_text("{}")
    # A pipeline folder of a run that failed at its first step: step records only.
    early = runs / "kfp" / "kubetune-2026-12-03"
    (early / "finalize").mkdir(parents=True)
    (early / "finalize" / "executor_output.json").write_text("{}")
    (runs / "kfp-cache").mkdir()
    (runs / "notes").mkdir()  # not made by this run: left alone, empty or not

    remove_empty_folders([pipeline, early, runs / "r1", runs / "kfp-cache"])

    assert tree(runs) == [
        "kfp/", "kfp/kubetune-2026-12-02/", "kfp/kubetune-2026-12-02/preprocess/",
        "kfp/kubetune-2026-12-02/preprocess/dataset/", "kfp/kubetune-2026-12-02/preprocess/dataset/dataset_dict.json",
        "kfp/kubetune-2026-12-02/validate/", "kfp/kubetune-2026-12-02/validate/executor_output.json",
        "notes/", "r1/", "r1/train/", "r1/train/checkpoints/", "r1/train/checkpoints/checkpoint-5/",
        "r1/train/checkpoints/checkpoint-5/adapter_model.safetensors",
    ]


def test_a_folder_that_is_gone_or_a_link_is_left_as_it_is(tmp_path: Path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    remove_empty_folders([tmp_path / "missing", link])
    assert link.is_symlink() and target.is_dir()
