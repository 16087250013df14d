"""The Trainer as kubetune runs it: dynamic padding, and token counting for the speed figures."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase, Trainer
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


class KubetuneTrainer(Trainer):
    """transformers' Trainer, counting each training batch's real and padded tokens for SpeedCallback,
    with an evaluation loss that is exact over the whole split on any number of ranks."""

    def __init__(self, *args: Any, speed: SpeedCallback, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.speed = speed

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
