"""Trainer callbacks: throughput, memory, and a checkpoint on SIGTERM.

Speed and memory figures are added to the Trainer's training logs (the dicts with `loss`), so the
console, MLflow and training_metrics.json all see them:
- speed/samples_per_second, speed/tokens_per_second (real tokens: the attention mask's ones, padding
  not counted) and speed/padding_fraction, summed over all ranks, over the time spent in training
  steps since the last log (evaluation and checkpointing not counted);
- memory/rss_mb (this process), and gpu/allocated_mb, gpu/max_allocated_mb where CUDA is present.
Every rank calls the Trainer's `log` at the same steps, which is what makes the all-reduce there safe.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback

from kubetune.distributed import is_distributed

logger = logging.getLogger(__name__)


@dataclass
class Throughput:
    """What this rank's training steps processed (filled by KubetuneTrainer.training_step)."""

    samples: int = 0
    real_tokens: Any = 0  # a device tensor while training: reading it every step would sync the GPU
    padded_tokens: int = 0
    seconds: float = 0.0

    def add_batch(self, attention_mask: Any) -> None:
        self.samples += int(attention_mask.shape[0])
        self.real_tokens = self.real_tokens + attention_mask.sum()
        self.padded_tokens += int(attention_mask.numel())


def _all_reduce(values: list[float], op: str) -> list[float]:
    """`values` reduced over all ranks (`op`: "sum" or "max"); unchanged in a single process."""
    if not is_distributed():
        return values
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return tensor.tolist()


def speed_metrics(samples: float, real_tokens: float, padded_tokens: float, seconds: float, prefix: str = "speed/") -> dict[str, float]:
    if seconds <= 0:
        return {}
    return {
        f"{prefix}samples_per_second": samples / seconds,
        f"{prefix}tokens_per_second": real_tokens / seconds,
        f"{prefix}padding_fraction": 1.0 - real_tokens / padded_tokens if padded_tokens else 0.0,
    }


class SpeedCallback(TrainerCallback):
    """Adds speed/* to each training log; `summary` holds the whole run's figures after training."""

    def __init__(self) -> None:
        self.interval = Throughput()
        self.total = Throughput()
        self.summary: dict[str, float] = {}
        self._step_started: float | None = None

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._step_started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._step_started is not None:
            elapsed = time.perf_counter() - self._step_started
            self.interval.seconds += elapsed
            self.total.seconds += elapsed
            self._step_started = None

    def add_batch(self, attention_mask: Any) -> None:
        self.interval.add_batch(attention_mask)
        self.total.add_batch(attention_mask)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs is None or "loss" not in logs:
            return
        samples, real, padded = _all_reduce(
            [self.interval.samples, float(self.interval.real_tokens), self.interval.padded_tokens], "sum"
        )
        # Ranks run in lockstep; the main process's step time stands for all of them.
        logs.update(speed_metrics(samples, real, padded, self.interval.seconds))
        self.interval = Throughput()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        samples, real, padded = _all_reduce([self.total.samples, float(self.total.real_tokens), self.total.padded_tokens], "sum")
        self.summary = speed_metrics(samples, real, padded, self.total.seconds, prefix="speed/train_")
        self.summary["speed/train_step_seconds"] = self.total.seconds


def memory_metrics() -> dict[str, float]:
    import psutil
    import torch

    metrics = {"memory/rss_mb": psutil.Process().memory_info().rss / 2**20}
    if torch.cuda.is_available():
        metrics["gpu/allocated_mb"] = torch.cuda.memory_allocated() / 2**20
        metrics["gpu/max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return metrics


class MemoryCallback(TrainerCallback):
    """Adds memory/* (and gpu/* with CUDA) to each training log."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if logs is not None and "loss" in logs:
            logs.update(memory_metrics())


class SigtermCheckpointCallback(TrainerCallback):
    """On SIGTERM (what Kubernetes sends before it kills a pod), checkpoint at the end of the step and stop.

    The handler only sets a flag; at each step's end the ranks agree (all-reduce max) whether any of
    them got the signal, so all of them save the same step together. torchrun passes SIGTERM on to
    every rank and gives them time before it sends SIGKILL.
    """

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True

    def install(self) -> None:
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.install()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        (any_rank,) = _all_reduce([1.0 if self.requested else 0.0], "max")
        if any_rank:
            logger.warning("SIGTERM received: saving a checkpoint at step %d and stopping", state.global_step)
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_evaluate = False
            control.should_training_stop = True

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.restore()



def trainjob_status_callbacks() -> list[TrainerCallback]:
    """transformers' Kubeflow Trainer callback, when the TrainJob's controller asks for progress reports.

    Kubeflow Trainer (feature gate TrainJobRuntimeStatus) injects KUBEFLOW_TRAINER_SERVER_URL into the
    trainer's pods; transformers then reports progress, time left and metrics to the TrainJob's
    status.trainerStatus (rank 0 only), which `kubetune status` shows. transformers registers it
    itself only through `report_to`, which kubetune sets to "none" (MLflow is kubetune's own), so it
    is added here.
    """
    from transformers.integrations.integration_utils import KubeflowCallback, is_kubeflow_available

    return [KubeflowCallback()] if is_kubeflow_available() else []
