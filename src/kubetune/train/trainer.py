"""The Trainer as kubetune runs it: dynamic padding, token counting for the speed figures, and a resume
that continues the interrupted run exactly.

Exact resume. A resumed run must train on the same batches in the same order, with the same loss
bookkeeping, as the run it continues:
- transformers' `LengthGroupedSampler` (train_sampling_strategy="group_by_length", our default) draws
  each epoch's permutation from the *global* torch RNG when the epoch's iterator is created. An
  unbroken run reaches epoch 2 with that RNG advanced by epoch 1's dropout; a resumed process has not
  run epoch 1, so it permutes differently and then skips the checkpoint's batches of a different order
  (the random sampler is safe: accelerate swaps it for a SeedableRandomSampler seeded by (seed, epoch)).
  `SeededLengthGroupedSampler` makes the order a pure function of (data_seed, epoch), the same on
  every rank and in every process.
- The Trainer keeps the running loss in memory only (`_total_loss_scalar`, and `_tr_loss` since the
  last log), so after a resume `train_loss` averaged the rerun's steps alone (0.0 when the rerun began
  at the last step). Each rank writes its loss state into the checkpoint (LOSS_STATE) and takes it
  back on resume; `train_loss` is the mean over every step of the run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Sampler
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase, Trainer
from transformers.trainer_pt_utils import get_length_grouped_indices
from transformers.trainer_utils import EvalLoopOutput

from kubetune.train.callbacks import SpeedCallback


class BatchCollator:
    """Pads each batch to its longest row (rounded up to `pad_to_multiple_of`) and keeps only model inputs.

    The tokenized `length` column stays in the dataset for length-grouped sampling, but the model
    must not receive it.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, columns: Iterable[str], pad_to_multiple_of: int | None):
        self.columns = tuple(columns)
        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_to_multiple_of, return_tensors="pt")

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        return self.pad([{name: row[name] for name in self.columns} for row in features])


LOSS_STATE = "loss_state_{rank}.json"  # in each checkpoint, one per rank (each holds its own unlogged loss)


class SeededLengthGroupedSampler(Sampler[int]):
    """transformers' length grouping (shuffle, then sort within mega-batches) with the shuffle drawn from a
    generator seeded by `seed + epoch`: the order depends on nothing else, so a resumed process, or any
    rank, gets the same one. KubetuneTrainer sets the epoch before each one."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths = [int(length) for length in lengths]
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


@dataclass(frozen=True)
class LearningRates:
    """Peak learning rates by kind of parameter: the adapters (or every weight in a full fine-tune) at `base`,
    the classification head at `head` (it starts from random and has the most to learn), the LoRA B
    matrices at `base * loraplus_ratio` (LoRA+, Hayou et al. 2024: B starts at zero). None: `base`."""

    base: float
    head: float | None = None
    loraplus_ratio: float | None = None
    head_modules: tuple[str, ...] = ()

    def rate_of(self, name: str) -> float:
        parts = name.split(".")
        if self.head is not None and any(part in self.head_modules for part in parts):
            return self.head
        if self.loraplus_ratio is not None and "lora_B" in parts:
            return self.base * self.loraplus_ratio
        return self.base

    @property
    def uniform(self) -> bool:
        return self.head is None and self.loraplus_ratio is None


def split_by_rate(groups: list[dict[str, Any]], names: dict[int, str], rates: LearningRates) -> list[dict[str, Any]]:
    """The Trainer's parameter groups (by weight decay) split further by learning rate; empty groups dropped."""
    split: list[dict[str, Any]] = []
    for group in groups:
        by_rate: dict[float, list[Any]] = {}
        for parameter in group["params"]:
            by_rate.setdefault(rates.rate_of(names[id(parameter)]), []).append(parameter)
        for rate, params in by_rate.items():
            split.append({**group, "params": params, "lr": rate})
    return split


class KubetuneTrainer(Trainer):
    """transformers' Trainer, counting each training batch's real and padded tokens for SpeedCallback,
    with an evaluation loss that is exact over the whole split on any number of ranks, and an exact
    resume (see the module docstring)."""

    def __init__(self, *args: Any, speed: SpeedCallback, learning_rates: LearningRates | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.speed = speed
        self.learning_rates = learning_rates
        self._train_sampler: SeededLengthGroupedSampler | None = None
        self._resumed_loss: dict[str, float] | None = None  # taken back at the first epoch (or the end)

    # ------------------------------------------------------------------------------------ optimizer
    def create_optimizer(self, model: Any = None) -> Any:
        optimizer = super().create_optimizer(model)
        rates = self.learning_rates
        if rates is None or rates.uniform or optimizer is None:
            return optimizer
        # Before the first step the optimizer holds no state, so its groups can be rebuilt; the scheduler,
        # made next, scales each group's own peak rate.
        names = {id(p): n for n, p in (self.model if model is None else model).named_parameters()}
        groups = split_by_rate(optimizer.param_groups, names, rates)
        optimizer.param_groups.clear()
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    # ------------------------------------------------------------------------------- sampling order
    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        column = self.args.length_column_name
        if self.args.train_sampling_strategy != "group_by_length" or column not in getattr(dataset, "column_names", ()):
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        # The batch size transformers' own LengthGroupedSampler groups by.
        batch_size = self.args.train_batch_size * self.args.gradient_accumulation_steps
        self._train_sampler = SeededLengthGroupedSampler(list(dataset[column]), batch_size, seed)
        return self._train_sampler

    def _run_epoch(self, model: Any, epoch: int, *args: Any, **kwargs: Any) -> Any:
        # Set here, before the epoch's iterator is made, so the order doesn't hang on accelerate forwarding
        # set_epoch through whichever wrappers it put around the sampler (shards, skip_first_batches).
        if self._train_sampler is not None:
            self._train_sampler.set_epoch(epoch)
        self._take_back_loss()
        if self.state.global_step >= self.state.max_steps > 0:
            # Resumed from the last step's checkpoint mid-epoch: the Trainer would take one step more than
            # max_steps (it checks the limit only after a step), and end with other weights.
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(model, epoch, *args, **kwargs)

    # ------------------------------------------------------------------------------ loss bookkeeping
    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        self._resumed_loss = None
        if isinstance(resume_from_checkpoint, str):
            state = Path(resume_from_checkpoint) / LOSS_STATE.format(rank=self.args.process_index)
            if state.is_file():
                self._resumed_loss = json.loads(state.read_text())
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _take_back_loss(self) -> None:
        """The checkpoint's loss state, in place of the zeros the Trainer starts its bookkeeping with."""
        if self._resumed_loss is None:
            return
        self._total_loss_scalar = float(self._resumed_loss["total"])
        self._tr_loss += torch.tensor(self._resumed_loss["pending"], dtype=self._tr_loss.dtype, device=self._tr_loss.device)
        self._globalstep_last_logged = int(self._resumed_loss["last_logged_step"])
        self._resumed_loss = None

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        # Every rank writes its own file before the checkpoint callback's barrier marks the folder complete.
        folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
        folder.mkdir(parents=True, exist_ok=True)
        state = {"total": self._total_loss_scalar, "pending": float(self._tr_loss.item()),
                 "last_logged_step": self._globalstep_last_logged}
        (folder / LOSS_STATE.format(rank=self.args.process_index)).write_text(json.dumps(state) + "\n")

    def _finalize_training(self, *args: Any, **kwargs: Any) -> Any:
        self._take_back_loss()  # a rerun that starts at the last step runs no epoch
        return super()._finalize_training(*args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "train_loss" in logs:
            # The Trainer divides by the steps of this process only; the total covers the whole run.
            logs["train_loss"] = self._total_loss_scalar / max(self.state.global_step, 1)
        super().log(logs, start_time)

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> EvalLoopOutput:
        output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
        # The Trainer's loss is each batch's mean repeated batch-size times, gathered, then cut to the
        # split's length. With several ranks the last batch of a shard is topped up with rows from the
        # start of the split, and the cut drops repeated batch means, not those rows: the loss is off
        # (by 2% on a 61-row split over 2 ranks). The gathered logits and labels are exact (the cut
        # removes precisely the topped-up rows), so the loss is recomputed from them.
        logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
        key = f"{metric_key_prefix}_loss"
        if self.compute_loss_func is not None and logits is not None and output.label_ids is not None and key in output.metrics:
            loss = self.compute_loss_func({"logits": torch.as_tensor(logits)}, torch.as_tensor(output.label_ids))
            output.metrics[key] = float(loss)
        return output

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        self.speed.add_batch(inputs["attention_mask"])
        return super().training_step(model, inputs, num_items_in_batch)
