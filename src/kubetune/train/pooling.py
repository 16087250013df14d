"""How the classifier turns token states into one vector: the architecture's own pooler or a masked mean.

transformers' BERT-family classifiers feed the head the `[CLS]` token through the pooler (dense + tanh).
Sentence-embedding checkpoints (sentence-transformers, such as the embedded all-MiniLM-L6-v2) were trained
to be read as the mean of their token states instead: their `[CLS]` state and pooler were never trained
for it. On the demo ledger, a logistic-regression probe on the frozen MiniLM (a quarter of the rows held
out) gets 78.5 % of them right from `[CLS]` and 81.7 % from the mean (a one-off probe, not a bench
script); fine-tuned with LoRA from the mean, 0.83 of the validation rows after four epochs
(bench/results/quality_search.csv).

`model.pooling: auto` (the default) pools the way the checkpoint says: the mean when it ships a
sentence-transformers Pooling module set to mean tokens (`1_Pooling/config.json`), else the
architecture's own head. The choice is recorded in model_metadata.json, so loading a trained model
pools as training did.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from kubetune.errors import ConfigError

CLS = "cls"
MEAN = "mean"
# Where sentence-transformers keeps a checkpoint's pooling (modules.json points at it).
SENTENCE_TRANSFORMERS_POOLING = Path("1_Pooling") / "config.json"


def checkpoint_pooling(model_path: str) -> str | None:
    """The pooling a sentence-transformers checkpoint was trained with ("mean" or "cls"), or None."""
    config_file = Path(model_path) / SENTENCE_TRANSFORMERS_POOLING
    if not config_file.is_file():
        return None
    try:
        settings = json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    if settings.get("pooling_mode_mean_tokens"):
        return MEAN
    if settings.get("pooling_mode_cls_token"):
        return CLS
    return None


def resolve_pooling(setting: str, model_path: str, model: nn.Module) -> str:
    """`model.pooling` as it applies to `model`: "cls" (the architecture's head) or "mean"."""
    if setting == CLS:
        return CLS
    if setting == MEAN:
        if _pooler_owner(model) is None:
            raise ConfigError([
                f"model.pooling: mean pooling replaces the pooler of BERT-family classifiers, and "
                f"{type(model).__name__} has none; use model.pooling: cls (or auto)"
            ])
        return MEAN
    wanted = checkpoint_pooling(model_path)
    return MEAN if wanted == MEAN and _pooler_owner(model) is not None else CLS


def install_pooling(model: nn.Module, pooling: str) -> None:
    """Make `model` (a *ForSequenceClassification, before LoRA is applied) pool as `pooling` says."""
    if pooling == CLS:
        return
    owner = _pooler_owner(model)
    if owner is None:
        raise ConfigError([f"model.pooling: {type(model).__name__} has no pooler to replace with mean pooling"])
    pooler = MaskedMeanPooler()
    owner.pooler = pooler
    # The pooler is called with the token states alone; the encoder's own call brings the mask.
    owner.register_forward_pre_hook(pooler.take_mask, with_kwargs=True)


def _pooler_owner(model: nn.Module) -> Any:
    """The encoder whose `pooler` feeds the head (BERT, MiniLM, MPNet, ...), or None."""
    encoder = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return encoder if encoder is not None and getattr(encoder, "pooler", None) is not None else None


class MaskedMeanPooler(nn.Module):
    """The mean of the token states the attention mask keeps (padding excluded), as sentence-transformers pools."""

    def __init__(self) -> None:
        super().__init__()
        self._mask: Any = None

    def take_mask(self, _module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1:
            mask = args[1]  # BertModel.forward(input_ids, attention_mask, ...)
        self._mask = mask

    def forward(self, hidden_states: Any) -> Any:
        mask, self._mask = self._mask, None
        if mask is None or mask.dim() != 2:
            return hidden_states.mean(dim=1)
        weights = mask.to(hidden_states.dtype).unsqueeze(-1)
        return (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


def pooling_of(model: nn.Module) -> str:
    """The pooling `model` (with or without LoRA around it) applies: "mean" or "cls"."""
    owner = _pooler_owner(model.get_base_model() if hasattr(model, "get_base_model") else model)
    return MEAN if owner is not None and isinstance(owner.pooler, MaskedMeanPooler) else CLS
