"""TrainingArguments from the run config, and the process group they run in.

transformers 5.x renamed two of the keys our config keeps from the seed project: `warmup_ratio` is
gone (`warmup_steps` takes a float in [0, 1) as a ratio) and `group_by_length` became
`train_sampling_strategy="group_by_length"`, which reads the tokenized `length` column.

Why `init_distributed` exists — DeepSpeed with several CPU ranks (torchrun, gloo):
transformers builds accelerate's PartialState for DeepSpeed without a backend name. accelerate's
`_prepare_backend` then finds no accelerator (no CUDA, XPU, NPU...) and, because DeepSpeed needs
`cpu=False`, skips its CPU branch: the backend stays None. DeepSpeed's `init_distributed` still
creates the real 2-rank gloo process group, but PartialState reads `backend is None` as "not
distributed" and sets num_processes=1 and process_index=0 on *every* rank. Everything built on that
state is then wrong: the batch size handed to DeepSpeed counts one rank, both ranks believe they are
the main process, dataloaders are not sharded, and `gather` allocates one output tensor for a
world of two — the `ProcessGroupGloo::allgather: invalid output tensor list at index 0 (expected
length 2, got 1)` that evaluation (and the loss's token count) dies on. We create the PartialState
ourselves with `backend="gloo"` and tell TrainingArguments to use it (`use_configured_state`).
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from kubetune.config import RunConfig
from kubetune.deepspeed_config import build_deepspeed_config
from kubetune.distributed import world_size
from kubetune.errors import ConfigError

if TYPE_CHECKING:
    from transformers import TrainingArguments

logger = logging.getLogger(__name__)

Precision = Literal["bf16", "fp16", "no"]
# How long a rank waits for the others in a collective (e.g. while rank 0 uploads a checkpoint).
PROCESS_GROUP_TIMEOUT = timedelta(minutes=30)


def accelerator_available() -> bool:
    import torch

    return torch.cuda.is_available()


def bf16_available() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_precision(config: RunConfig) -> Precision:
    """The mixed precision to train in; bf16/fp16 asked for on a machine without them is an error."""
    asked = config.training.mixed_precision
    if asked == "auto":
        return "bf16" if bf16_available() else "no"
    if asked == "bf16" and not bf16_available():
        raise ConfigError([
            "training.mixed_precision: bf16 needs a GPU with bf16 support and this machine has none; "
            "set training.mixed_precision: auto (or no) to train in fp32 here"
        ])
    if asked == "fp16" and not accelerator_available():
        raise ConfigError([
            "training.mixed_precision: fp16 needs a GPU and this machine has none; "
            "set training.mixed_precision: auto (or no) to train in fp32 here"
        ])
    return asked


def resolve_optimizer(config: RunConfig) -> str:
    """`auto`: fused AdamW on a GPU, plain AdamW elsewhere; any other name must be one transformers knows."""
    from transformers.training_args import OptimizerNames

    name = config.training.optim
    if name == "auto":
        return "adamw_torch_fused" if accelerator_available() else "adamw_torch"
    valid = [member.value for member in OptimizerNames]
    if name not in valid:
        import difflib

        close = difflib.get_close_matches(name, valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "; use auto or an optimizer name of transformers"
        raise ConfigError([f"training.optim: unknown optimizer {name!r}{hint}"])
    return name


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def check_gpu_ranks(ranks: int) -> None:
    """One rank per GPU: more ranks on a node than it has GPUs would put a rank on a missing `cuda:N` and
    fail deep inside; no GPU at all means CPU ranks (gloo), which is allowed."""
    import torch

    if not torch.cuda.is_available():
        return
    found = torch.cuda.device_count()
    if ranks > found:
        raise ConfigError([
            f"cluster.gpus_per_worker: {ranks} ranks per node (torchrun --nproc_per_node) but this machine has "
            f"{found} GPU{'' if found == 1 else 's'}; set cluster.gpus_per_worker: {found} (one rank per GPU)"
        ])


def init_distributed(config: RunConfig) -> bool:
    """Start the process group the way the Trainer needs it; True when TrainingArguments must reuse it.

    A no-op for a single process without DeepSpeed. See the module docstring for why the CPU +
    DeepSpeed case cannot be left to transformers.
    """
    from accelerate.state import AcceleratorState, PartialState

    check_gpu_ranks(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # torchrun's ranks on this node
    use_deepspeed = config.deepspeed.enable
    if world_size() == 1 and not use_deepspeed:
        return False
    if use_deepspeed and "LOCAL_RANK" not in os.environ:
        # Plain `python -m kubetune train`: DeepSpeed still wants a (one-rank) process group.
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"})
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    AcceleratorState._reset_state(reset_partial_state=True)
    kwargs: dict[str, object] = {"timeout": PROCESS_GROUP_TIMEOUT}
    if not accelerator_available():
        kwargs["backend"] = "gloo"
        if not use_deepspeed:
            kwargs["cpu"] = True
    if use_deepspeed:
        # The same switch transformers flips around its own PartialState for DeepSpeed.
        os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
        try:
            PartialState(**kwargs)
        finally:
            del os.environ["ACCELERATE_USE_DEEPSPEED"]
    else:
        PartialState(**kwargs)
    return True


def _schedule(steps: int | None) -> tuple[str, int | None]:
    return ("steps", steps) if steps is not None else ("epoch", None)


def build_training_arguments(
    config: RunConfig, output_dir: Path, precision: Precision, optimizer: str, configured_state: bool
) -> TrainingArguments:
    """TrainingArguments for `config`; `output_dir` is where the Trainer writes checkpoint-<step>/."""
    from transformers import TrainingArguments

    from kubetune.train.metrics import greater_is_better

    training = config.training
    warmup: float = 0
    if training.warmup_ratio is not None:
        warmup = float(training.warmup_ratio)  # transformers 5: a float below 1 is a ratio of the steps
    elif training.warmup_steps is not None:
        warmup = int(training.warmup_steps)
    eval_strategy, eval_steps = _schedule(training.eval_steps)
    save_strategy, save_steps = _schedule(training.save_steps)
    use_cpu = not accelerator_available() and not config.deepspeed.enable
    accelerator_config = {"use_configured_state": True} if configured_state else None
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.eval_batch_size,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        learning_rate=training.learning_rate,
        num_train_epochs=training.epochs,
        max_steps=training.max_steps if training.max_steps is not None else -1,
        warmup_steps=warmup,
        weight_decay=training.weight_decay,
        lr_scheduler_type=training.lr_scheduler_type,
        lr_scheduler_kwargs=dict(training.lr_scheduler_kwargs),
        optim=optimizer,
        max_grad_norm=training.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        logging_strategy="steps",
        logging_steps=training.logging_steps,
        eval_strategy=eval_strategy,
        eval_steps=eval_steps,
        save_strategy=save_strategy,
        save_steps=save_steps,
        # kubetune rotates checkpoints itself, only after the newest one is complete (see checkpoints.py).
        save_total_limit=None,
        save_only_model=False,  # optimizer and scheduler state make a resume exact
        load_best_model_at_end=training.load_best_model_at_end,
        metric_for_best_model=training.metric_for_best_model,
        greater_is_better=greater_is_better(training.metric_for_best_model),
        seed=training.seed,
        data_seed=training.seed,
        train_sampling_strategy="group_by_length" if training.group_by_length else "random",
        length_column_name="length",
        dataloader_num_workers=training.dataloader_num_workers,
        dataloader_pin_memory=accelerator_available(),
        # The datasets are cut to the model's columns beforehand; the collator drops `length`.
        remove_unused_columns=False,
        label_names=["labels"],
        # A causal LM's logits (rows x tokens x vocabulary) are never gathered: its evaluation is the loss.
        prediction_loss_only=config.task == "sft",
        report_to="none",  # MLflow is logged by kubetune.train.tracking, rank 0 only
        deepspeed=build_deepspeed_config(config, precision) if config.deepspeed.enable else None,
        use_cpu=use_cpu,
        ddp_find_unused_parameters=False,  # LoRA and full fine-tunes use every trainable parameter
        ddp_timeout=int(PROCESS_GROUP_TIMEOUT.total_seconds()),
        accelerator_config=accelerator_config,
        disable_tqdm=True,  # progress bars garble pod logs; the logged metrics say how far it is
        log_level="warning",
        log_level_replica="error",
    )
