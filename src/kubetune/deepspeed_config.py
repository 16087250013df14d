"""The DeepSpeed config: built from the run config, or taken from the user's JSON and reconciled with it.

The rule (kept from the seed project): where a value is set both in the DeepSpeed JSON and in the
YAML `training` section — micro batch, gradient accumulation, clipping, learning rate, weight decay,
precision — the JSON wins, and kubetune warns naming both values. The training section is then
updated to the JSON's value, so that TrainingArguments and DeepSpeed agree (the HF integration
refuses a DeepSpeed config whose concrete values disagree with TrainingArguments). Values the JSON
leaves as "auto" are filled by the HF integration from TrainingArguments.

This module does not import deepspeed: configs are validated on machines without it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubetune.config import RunConfig


def _get(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _precision_from_json(ds: dict[str, Any]) -> str | None:
    bf16, fp16 = _get(ds, "bf16.enabled"), _get(ds, "fp16.enabled")
    if bf16 is True:
        return "bf16"
    if fp16 is True:
        return "fp16"
    if bf16 is False and fp16 is False:
        return "no"
    return None  # "auto" or absent: TrainingArguments decides


# (DeepSpeed JSON path, training field, how to read the JSON value)
_SHARED_KEYS: tuple[tuple[str, str, Callable[[Any], Any]], ...] = (
    ("train_micro_batch_size_per_gpu", "batch_size", int),
    ("gradient_accumulation_steps", "gradient_accumulation_steps", int),
    ("gradient_clipping", "max_grad_norm", float),
    ("optimizer.params.lr", "learning_rate", float),
    ("optimizer.params.weight_decay", "weight_decay", float),
)


def reconcile_with_training(config: RunConfig) -> list[str]:
    """Apply the JSON-wins rule to `config.training` in place; return the warnings to show."""
    ds = config.deepspeed.config
    if not config.deepspeed.enable or not ds:
        return []
    training = config.training
    explicitly_set = set(training.model_fields_set)
    warnings: list[str] = []

    def adopt(json_key: str, field: str, json_value: Any) -> None:
        current = getattr(training, field)
        if json_value == current:
            return
        if field in explicitly_set:
            warnings.append(
                f"training.{field} is {current!r} in the YAML but {json_key} is {json_value!r} in the DeepSpeed "
                f"config; the DeepSpeed value {json_value!r} is used"
            )
        setattr(training, field, json_value)

    for json_key, field, cast in _SHARED_KEYS:
        value = _get(ds, json_key)
        if value is None or value == "auto":
            continue
        adopt(json_key, field, cast(value))
    precision = _precision_from_json(ds)
    if precision is not None:
        adopt("bf16/fp16.enabled", "mixed_precision", precision)

    stage = _get(ds, "zero_optimization.stage")
    if isinstance(stage, int) and "stage" in config.deepspeed.model_fields_set and stage != config.deepspeed.stage:
        warnings.append(
            f"deepspeed.stage is {config.deepspeed.stage} in the YAML but zero_optimization.stage is {stage} in the "
            f"DeepSpeed config; stage {stage} is used"
        )
    return warnings


def build_deepspeed_config(config: RunConfig, precision: str) -> dict[str, Any]:
    """The DeepSpeed dict handed to TrainingArguments(deepspeed=...).

    `precision` is the resolved mixed precision ("bf16", "fp16" or "no"). Values shared with
    TrainingArguments stay "auto" so the HF integration fills them consistently.
    """
    if config.deepspeed.config:
        ds = copy.deepcopy(config.deepspeed.config)
    else:
        stage = config.deepspeed.stage
        zero: dict[str, Any] = {
            "stage": stage,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": "auto",
        }
        if stage == 2:
            zero.update({"allgather_partitions": True, "allgather_bucket_size": 2e8, "reduce_scatter": True})
        else:
            zero.update(
                {
                    "stage3_prefetch_bucket_size": "auto",
                    "stage3_param_persistence_threshold": "auto",
                    "stage3_gather_16bit_weights_on_model_save": True,
                }
            )
        if config.deepspeed.offload == "cpu":
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
            if stage == 3:
                zero["offload_param"] = {"device": "cpu", "pin_memory": True}
        ds = {
            "zero_optimization": zero,
            "train_micro_batch_size_per_gpu": "auto",
            "train_batch_size": "auto",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
            "steps_per_print": 10**9,  # the Trainer logs; DeepSpeed's own step prints are noise
            "wall_clock_breakdown": False,
        }
    ds.setdefault("bf16", {"enabled": "auto"})
    ds.setdefault("fp16", {"enabled": "auto"})
    # An explicit precision in the JSON already won in reconcile_with_training; keep "auto" consistent.
    if ds["bf16"].get("enabled") == "auto" and precision != "bf16":
        ds["bf16"]["enabled"] = False
    if ds["fp16"].get("enabled") == "auto" and precision != "fp16":
        ds["fp16"]["enabled"] = False
    return ds
