"""Checkpoints that a killed run never half-loads, kept on local disk or object storage.

How transformers 5.x writes a checkpoint (Trainer._save_checkpoint): straight into
output_dir/checkpoint-<step>/ — the model or adapter by the main process, DeepSpeed's ZeRO optimizer
shards and the RNG states by every rank, trainer_state.json by the main process — with no staging
folder and no marker, and the old ones are rotated right after. A run killed in the middle leaves a
folder that `transformers.trainer_utils.get_last_checkpoint` would return (it only reads names). So:

- after each save, once every rank has finished its files (a barrier), the main process writes
  checkpoint-<step>/_COMPLETE (temp name, then rename); only folders with it are ever resumed;
- at start, folders without it are deleted and the newest complete one is resumed;
- rotation (`training.save_total_limit`) is done here, after the marker, so the newest complete
  checkpoint is never deleted before its successor is complete (the best one is kept too);
- a remote OUT: each node uploads its own files (ZeRO shards are per rank), a barrier, then the
  main process uploads the marker last; at start each node downloads the complete checkpoints.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kubetune import storage
from kubetune.distributed import barrier, is_distributed, is_local_main_process, is_main_process
from kubetune.errors import KubetuneError
from kubetune.train.outputs import OutputPaths

logger = logging.getLogger(__name__)

MARKER = storage.COMPLETE_MARKER
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: Path | str) -> int | None:
    match = _NAME.match(Path(str(path).rstrip("/")).name)
    return int(match.group(1)) if match else None


def checkpoint_dirs(root: Path) -> list[Path]:
    """checkpoint-<step> folders under `root`, oldest step first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=lambda p: checkpoint_step(p) or 0)


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def newest_complete(root: Path) -> Path | None:
    complete = [p for p in checkpoint_dirs(root) if is_complete(p)]
    return complete[-1] if complete else None


def marker_text(step: int, world_size: int) -> str:
    return json.dumps({"step": step, "world_size": world_size, "written_at": time.time()}) + "\n"


def mark_complete(path: Path, world_size: int) -> None:
    step = checkpoint_step(path)
    temporary = path / f".{MARKER}.{uuid.uuid4().hex[:8]}"
    temporary.write_text(marker_text(step or 0, world_size))
    temporary.replace(path / MARKER)


def remove_checkpoint(path: Path) -> None:
    """Marker first: a removal cut short leaves an incomplete folder, never a complete-looking one."""
    (path / MARKER).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)


def remove_incomplete(root: Path) -> list[Path]:
    removed = [p for p in checkpoint_dirs(root) if not is_complete(p)]
    for path in removed:
        remove_checkpoint(path)
    return removed


def rotate(root: Path, keep: int | None, protect: Path | None = None) -> list[Path]:
    """Delete complete checkpoints beyond the newest `keep` (never `protect`, the best one)."""
    if keep is None:
        return []
    complete = [p for p in checkpoint_dirs(root) if is_complete(p)]
    protected = {p.resolve() for p in complete[-keep:]}
    if protect is not None:
        protected.add(Path(protect).resolve())
    removed = [p for p in complete if p.resolve() not in protected]
    for path in removed:
        remove_checkpoint(path)
    return removed


# ------------------------------------------------------------------------------------- object storage
def _remote_steps(paths: OutputPaths) -> dict[int, bool]:
    """step → complete, for the checkpoints under OUT/checkpoints on object storage."""
    fs, root = storage.filesystem(paths.remote_checkpoints(), paths.storage)
    if not storage.with_retries(lambda: fs.exists(root), "listing checkpoints"):
        return {}
    names = storage.with_retries(lambda: fs.ls(root, detail=False, refresh=True), "listing checkpoints")
    steps: dict[int, bool] = {}
    for name in names:
        step = checkpoint_step(name)
        if step is not None:
            marker = f"{name.rstrip('/')}/{MARKER}"
            steps[step] = storage.with_retries(lambda m=marker: fs.exists(m), "checking a checkpoint")
    return steps


def _remote_dir(paths: OutputPaths, step: int) -> str:
    return f"{paths.remote_checkpoints()}/checkpoint-{step}"


def _remove_remote(paths: OutputPaths, step: int) -> None:
    fs, path = storage.filesystem(_remote_dir(paths, step), paths.storage)
    if storage.with_retries(lambda: fs.exists(f"{path}/{MARKER}"), "checking a checkpoint"):
        storage.with_retries(lambda: fs.rm(f"{path}/{MARKER}"), "unmarking a checkpoint")
    if storage.with_retries(lambda: fs.exists(path), "checking a checkpoint"):
        storage.with_retries(lambda: fs.rm(path, recursive=True), "removing a checkpoint")


# ------------------------------------------------------------------------------------------ resume
def prepare_resume(paths: OutputPaths, world_size: int, deepspeed: bool) -> Path | None:
    """Clean up what a killed run left, fetch remote checkpoints; the newest complete one (all ranks)."""
    if is_main_process():
        if paths.remote:
            for step, complete in sorted(_remote_steps(paths).items()):
                if not complete:
                    logger.warning("removing checkpoint-%d from %s: it was never completed", step, paths.uri)
                    _remove_remote(paths, step)
        else:
            for path in remove_incomplete(paths.checkpoints):
                logger.warning("removed %s: it was being written when the last run stopped", path)
    barrier()
    if paths.remote and is_local_main_process():
        shutil.rmtree(paths.checkpoints, ignore_errors=True)
        paths.checkpoints.mkdir(parents=True, exist_ok=True)
        for step, complete in sorted(_remote_steps(paths).items()):
            if complete:
                storage.download(_remote_dir(paths, step), paths.checkpoints / f"checkpoint-{step}", paths.storage)
    barrier()
    newest = newest_complete(paths.checkpoints)
    if newest is not None and deepspeed:
        written_by = json.loads((newest / MARKER).read_text()).get("world_size")
        if written_by is not None and written_by != world_size:
            raise KubetuneError(
                f"{newest.name} in {paths.uri} was written by {written_by} ranks but this run has {world_size}: "
                "DeepSpeed's optimizer shards only load into the same number of ranks; run with "
                f"cluster.workers x cluster.gpus_per_worker = {written_by}, or choose a new --output to start over"
            )
    return newest


def _broadcast_steps(steps: list[int], capacity: int) -> list[int]:
    """Rank 0's list of checkpoint steps on every rank (at most `capacity` of them)."""
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    buffer = torch.full((capacity,), -1, dtype=torch.int64, device=device)
    if is_main_process():
        buffer[: len(steps)] = torch.tensor(steps[:capacity], dtype=torch.int64)
    dist.broadcast(buffer, src=0)
    return [int(step) for step in buffer.tolist() if step >= 0]


class CheckpointCallback(TrainerCallback):
    """Marks each checkpoint complete once every rank wrote it, uploads it (remote OUT), rotates old ones."""

    def __init__(self, paths: OutputPaths, save_total_limit: int | None, world_size: int):
        self.paths = paths
        self.save_total_limit = save_total_limit
        self.world_size = world_size
        self.last_complete: Path | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._unmark_before_save(args, state, control)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._unmark_before_save(args, state, control)

    def _unmark_before_save(self, args: Any, state: Any, control: Any) -> None:
        """A save into a folder that is already complete (the same step saved again) must not look complete
        while it is rewritten: drop the marker before the Trainer writes."""
        if not control.should_save or not is_main_process():
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        (checkpoint / MARKER).unlink(missing_ok=True)
        if self.paths.remote:
            fs, marker = storage.filesystem(f"{_remote_dir(self.paths, state.global_step)}/{MARKER}", self.paths.storage)
            if storage.with_retries(lambda: fs.exists(marker), "checking a checkpoint"):
                storage.with_retries(lambda: fs.rm(marker), "unmarking a checkpoint")

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        barrier()  # every rank has written its part of the checkpoint
        if self.paths.remote:
            if is_local_main_process():
                storage.upload_dir(checkpoint, _remote_dir(self.paths, state.global_step), self.paths.storage)
            barrier()  # every node has uploaded its part
        kept: list[int] = []
        if is_main_process():
            mark_complete(checkpoint, self.world_size)
            if self.paths.remote:
                storage.write_text(f"{_remote_dir(self.paths, state.global_step)}/{MARKER}",
                                   (checkpoint / MARKER).read_text(), self.paths.storage)
            best = Path(state.best_model_checkpoint) if state.best_model_checkpoint else None
            for removed in rotate(self.paths.checkpoints, self.save_total_limit, best):
                if self.paths.remote:
                    _remove_remote(self.paths, checkpoint_step(removed) or 0)
            kept = [checkpoint_step(p) or 0 for p in checkpoint_dirs(self.paths.checkpoints)]
            logger.info("checkpoint-%d complete (%s)", state.global_step,
                        _remote_dir(self.paths, state.global_step) if self.paths.remote else checkpoint)
        if self.paths.remote and is_distributed() and self.save_total_limit is not None:
            # Other nodes hold their own shards of the same checkpoints: drop the ones rank 0 rotated out.
            kept = _broadcast_steps(kept, self.save_total_limit + 1)
            if is_local_main_process() and not is_main_process():
                for path in checkpoint_dirs(self.paths.checkpoints):
                    if checkpoint_step(path) not in kept:
                        shutil.rmtree(path, ignore_errors=True)
        self.last_complete = checkpoint

