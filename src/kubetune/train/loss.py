"""The training loss: cross-entropy over the real classes, optionally weighted by class frequency and
with label smoothing.

Dummy label slots (the head's spare outputs, see kubetune.data.labels) never receive probability
mass. We mask their logits — set them to the dtype's lowest finite value before the softmax — rather
than give them loss weight 0: a weight only says how much a row *of that class* counts, and no row is
of a dummy class, so weight 0 would change nothing; the softmax would still hand the dummies a share
of the mass that the real classes pay for. With the mask their probability is exactly 0, their head
rows get no gradient, and a dummy slot can never be predicted. The finite lowest value (not -inf)
keeps every logsumexp free of inf - inf.

`mask_dummy_logits` runs in `kubetune.train.metrics` (argmax over the real classes) and as a forward
hook on every model that `kubetune.train.model.load_trained_classifier` returns (the evaluate stage's
model). This loss reads the real slots' logits alone, which gives the same softmax over them as the mask
(a masked slot's probability is exactly 0) and the dummies' head rows no gradient, and which lets label
smoothing spread its share over the real classes only.

Class weights (loss.class_weights): inverse frequency in the train split, relative to a perfectly
balanced split (mean count / class count), raised to `alpha`, clipped to [min, max], then scaled
to mean 1 over the real classes so the loss keeps its scale. A real class absent from the train
split gets the `max` weight before normalising (no row uses it; it only enters the mean).
The weighted loss of a batch is sum(weight[label] * ce) / rows: the Trainer passes the row count
of the whole accumulated (and, across ranks, gathered) batch as `num_items_in_batch`, so gradient
accumulation and several ranks give the same gradient as one big batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from kubetune.config import ClassWeightsConfig


def mask_dummy_logits(logits: torch.Tensor, num_real_labels: int) -> torch.Tensor:
    """`logits` (..., slots) with the dummy slots (index >= num_real_labels) set to the lowest finite value."""
    import torch

    if logits.shape[-1] <= num_real_labels:
        return logits
    slots = torch.arange(logits.shape[-1], device=logits.device)
    return logits.masked_fill(slots >= num_real_labels, torch.finfo(logits.dtype).min)


def class_weights(
    counts: Sequence[int], num_real_labels: int, alpha: float, min_weight: float, max_weight: float
) -> list[float]:
    """One weight per label slot from the train split's counts per slot (dummy slots: 0)."""
    real = [int(c) for c in counts[:num_real_labels]]
    if len(real) != num_real_labels:
        raise ValueError(f"{len(counts)} counts for {num_real_labels} real classes")
    mean_count = sum(real) / num_real_labels
    weights = []
    for count in real:
        raw = max_weight if count == 0 else (mean_count / count) ** alpha
        weights.append(min(max(raw, min_weight), max_weight))
    scale = num_real_labels / sum(weights)
    return [w * scale for w in weights] + [0.0] * (len(counts) - num_real_labels)


def class_weights_for(labels: Sequence[int], num_slots: int, num_real_labels: int, config: ClassWeightsConfig) -> list[float]:
    """Class weights from the train split's label column (`config` is loss.class_weights)."""
    import numpy as np

    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_slots).tolist()
    return class_weights(counts, num_real_labels, config.alpha, config.min, config.max)


class ClassificationLoss:
    """The Trainer's `compute_loss_func`: masked (and optionally class-weighted, label-smoothed) cross-entropy."""

    def __init__(self, num_real_labels: int, weights: Sequence[float] | None = None, label_smoothing: float = 0.0):
        self.num_real_labels = num_real_labels
        self.weights = list(weights) if weights is not None else None
        self.label_smoothing = label_smoothing
        self._weights_tensor: torch.Tensor | None = None

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        # fp32 for the softmax even under bf16 autocast: with hundreds of classes bf16 loses the small probabilities.
        logits = logits.float()[..., : self.num_real_labels]  # the dummy slots: see the module docstring
        labels = labels.to(logits.device).view(-1)
        losses = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels, reduction="none",
                                 label_smoothing=self.label_smoothing)
        if self.weights is not None:
            if self._weights_tensor is None or self._weights_tensor.device != logits.device:
                self._weights_tensor = torch.tensor(self.weights, dtype=torch.float32, device=logits.device)
            losses = losses * self._weights_tensor[labels]
        if num_items_in_batch is None:
            return losses.mean()
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(losses.device)
        return losses.sum() / num_items_in_batch
