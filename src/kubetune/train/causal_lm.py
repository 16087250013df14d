"""`task: sft`: the parts of the training recipe (kubetune.train.recipe) that differ for a causal LM.

- data: the tokenize stage's SFT output (input_ids, labels with -100 where no loss, attention_mask or
  position_ids), checked like the classifier's;
- model: AutoModelForCausalLM with a pad token, no KV cache in training (a cache also turns off
  transformers' packed-sequence masking), non-reentrant gradient checkpointing, optionally quantized by
  bitsandbytes (QLoRA: `model.quantization`);
- adapters: LoRA with task_type CAUSAL_LM; unset `lora.target_modules` means every linear layer but the
  output head: the attention and MLP projections (q/k/v/o, gate/up/down on Qwen2 and Llama);
- batches (SftCollator): padded on the right (labels -100 on padding), or packed rows with position_ids and no
  attention mask (attention then stays inside each example: transformers' masks read example boundaries
  from position_ids when no attention mask is given), or DataCollatorWithFlattening (`packing_method: flatten`);
- evaluation: loss and perplexity (exp of the mean token loss) on validation; no logits are gathered.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.config import RunConfig
from kubetune.distributed import print_main
from kubetune.errors import ConfigError, DataError, KubetuneError, short_reason
from kubetune.train.trainer import KubetuneTrainer

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

IGNORE_INDEX = -100
REQUIRED_COLUMNS = ("input_ids", "labels", "length")


# ------------------------------------------------------------------------------------------ checks
def check_quantization(config: RunConfig) -> None:
    """`model.quantization` needs bitsandbytes and a CUDA GPU on the machine that trains; ZeRO-3 shards
    weights that bitsandbytes' 8-bit layers keep whole. One line, before any work."""
    quantization = config.model.quantization
    if quantization == "none":
        return
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        raise ConfigError([f"model.quantization: {quantization} (bitsandbytes) needs a CUDA GPU and this machine has "
                           "none; set model.quantization: none to train in full precision here"])
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError([f"model.quantization: {quantization} needs the bitsandbytes package, which is not installed; "
                           "install it (pip install bitsandbytes) or set model.quantization: none"])
    if config.deepspeed.enable and quantization == "int8" and zero_stage(config) == 3:
        raise ConfigError(["deepspeed.stage: 3 and model.quantization: int8 don't go together (ZeRO-3 cannot shard "
                           "bitsandbytes 8-bit weights); use deepspeed.stage: 2 or model.quantization: nf4"])


def check_optimizer_package(optimizer: str) -> None:
    """bitsandbytes' optimizers (8-bit, paged) need the package on the training machine."""
    import importlib.util

    if ("8bit" in optimizer or "paged" in optimizer) and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError([f"training.optim: {optimizer} is a bitsandbytes optimizer and bitsandbytes is not installed; "
                           "install it or choose adamw_torch"])


def zero_stage(config: RunConfig) -> int:
    from kubetune.train.preflight import zero_stage as stage

    return stage(config)


def check_training_keys(config: RunConfig) -> None:
    from kubetune.config import SFT_METRICS

    metric = config.training.metric_for_best_model.removeprefix("eval_")
    if metric not in SFT_METRICS:
        raise ConfigError([f"training.metric_for_best_model: task: sft is scored by {' or '.join(SFT_METRICS)} (got {metric!r})"])
    check_quantization(config)


def load_training_data(directory: Path, data_uri: str, config: RunConfig) -> Any:
    """The SFT tokenize output at `directory`, checked split by split (see kubetune.data.sft_stages)."""
    from datasets import DatasetDict, load_from_disk

    from kubetune.train.preflight import (
        METADATA_FILE,
        TEST,
        TRAIN,
        VALIDATION,
        TrainingData,
        stored_empty_splits,
    )

    if not (directory / "dataset_dict.json").is_file():
        raise DataError(f"--data {data_uri} is not a tokenized dataset (no dataset_dict.json); pass the output folder of "
                        "`kubetune tokenize`")
    metadata_file = directory / METADATA_FILE
    if not metadata_file.is_file():
        raise DataError(f"--data {data_uri} has no {METADATA_FILE}; pass the output folder of `kubetune tokenize`")
    metadata = json.loads(metadata_file.read_text())
    if (metadata.get("tokenize") or {}).get("task") != "sft":
        raise DataError(f"--data {data_uri} was tokenized for classification, not task: sft; run `kubetune tokenize` "
                        "with this config")
    names = json.loads((directory / "dataset_dict.json").read_text()).get("splits", [])
    empty = stored_empty_splits(directory, names)
    splits = DatasetDict({name: load_from_disk(str(directory / name)) for name in names if name not in empty})
    for name in (TRAIN, VALIDATION):
        if name not in splits or len(splits[name]) == 0:
            raise DataError(f"the {name!r} split of --data {data_uri} is empty; raise split.val_size (or give more data)")
    for name, split in splits.items():
        missing = [c for c in REQUIRED_COLUMNS if c not in split.column_names]
        if missing and not (name == TEST and len(split) == 0):
            raise DataError(f"the {name!r} split has no column {', '.join(map(repr, missing))} (it has "
                            f"{', '.join(split.column_names)}); pass the output of `kubetune tokenize`")
    return TrainingData(directory=directory, splits=splits, label_map=None, metadata=metadata)


def check_tokenizer(config: RunConfig, data: Any, data_uri: str, source: Path) -> None:
    from kubetune.data.sft import tokenizer_digest

    recorded = data.metadata.get("tokenize") or {}
    expected, found = recorded.get("tokenizer_hash"), tokenizer_digest(source)
    if expected and found != expected:
        made_with = recorded.get("tokenizer", "another tokenizer")
        raise ConfigError([
            f"tokenize.model_name: --data {data_uri} was tokenized with {made_with} (tokenizer files {expected}) but this "
            f"config's tokenizer is {config.tokenizer_name} (files {found}); re-run `kubetune tokenize` with this config"
        ])


def check_model_build(config: RunConfig, model_config: Any) -> None:
    """`lora.target_modules` and `lora.modules_to_save` against a weightless copy of the architecture."""
    import torch
    from transformers import AutoModelForCausalLM

    from kubetune.train.model import linear_layer_names

    lora = config.lora
    if not lora.enable:
        return
    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(model_config, trust_remote_code=config.model.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ConfigError([f"model.name: {config.model.name} is not a causal LM that task: sft can train ({short_reason(exc)})"]) from None
    names = [name for name, _ in skeleton.named_modules()]
    for key, wanted in (("lora.target_modules", lora.target_modules), ("lora.modules_to_save", lora.modules_to_save)):
        if isinstance(wanted, list):
            missing = [t for t in wanted if not any(n == t or n.endswith(f".{t}") for n in names)]
            if missing:
                raise ConfigError([f"{key}: {type(skeleton).__name__} has no module named {', '.join(missing)}; its linear "
                                   f"layers are {', '.join(linear_layer_names(skeleton))}"])


# ------------------------------------------------------------------------------------------ model
def instantiate_model(config: RunConfig, model_path: str, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    from transformers import AutoModelForCausalLM

    from kubetune.train.model import _torch_dtype

    section = config.model
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(section.dtype), "attn_implementation": section.attn_implementation,
                              "trust_remote_code": section.trust_remote_code}
    quantized = section.quantization != "none"
    if quantized:
        import torch
        from transformers import BitsAndBytesConfig

        from kubetune.distributed import local_rank

        compute = _torch_dtype(section.bnb_4bit_compute_dtype)
        if section.quantization == "int8":
            kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        else:
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4" if section.quantization == "nf4" else "fp4",
                bnb_4bit_compute_dtype=compute, bnb_4bit_use_double_quant=section.bnb_4bit_use_double_quant,
                # ZeRO-3 shards parameters of one dtype: the packed 4-bit weights are stored in the compute dtype.
                bnb_4bit_quant_storage=compute if config.deepspeed.enable and zero_stage(config) == 3 else torch.uint8,
            )
        kwargs["device_map"] = {"": local_rank()}
    model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs)
    model.config.pad_token_id = tokenizer.pad_token_id
    # No KV cache while training: it costs memory, and with one transformers ignores packed-sequence boundaries.
    model.config.use_cache = False
    if quantized:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=section.gradient_checkpointing,
                                                gradient_checkpointing_kwargs={"use_reentrant": False})
    elif section.gradient_checkpointing:
        # Non-reentrant: the reentrant form needs inputs that require grad, which frozen LoRA bases lack.
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


def default_target_modules(model: nn.Module) -> list[str]:
    """Every linear layer but the output head, by its last name: the attention and MLP projections."""
    from torch import nn

    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, nn.Linear) and module is not head})


def apply_lora(config: RunConfig, model: PreTrainedModel) -> nn.Module:
    from kubetune.train.model import linear_layer_names, parameter_counts

    lora = config.lora
    if lora.enable:
        from peft import LoraConfig, get_peft_model

        targets = lora.target_modules if lora.target_modules is not None else default_target_modules(model)
        peft_config = LoraConfig(task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                                 target_modules=targets, bias=lora.bias, modules_to_save=lora.modules_to_save)
        try:
            model = get_peft_model(model, peft_config)
        except ValueError as exc:
            raise ConfigError([f"lora.target_modules: {targets} matches no layer of {type(model).__name__} "
                               f"({short_reason(exc).rstrip('.')}); its linear layers are {', '.join(linear_layer_names(model))}"]) from None
    trainable, total = parameter_counts(model)
    print_main(f"trainable parameters ({'LoRA' if lora.enable else 'full fine-tune'}): {trainable:,} of {total:,} "
               f"({100 * trainable / total:.2f}%)")
    return model


# ----------------------------------------------------------------------------------------- batches
class SftCollator:
    """Pads rows on the right to the batch's longest (rounded up to `pad_to_multiple_of`): input_ids with the pad
    token, labels with -100. Unpacked rows get an attention mask; packed rows (with position_ids) get none, and
    their padding gets positions of its own (0, 1, ...), so it forms a separate example nothing attends to."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id = pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        longest = max(len(row["input_ids"]) for row in features)
        if self.pad_to_multiple_of:
            longest = -(-longest // self.pad_to_multiple_of) * self.pad_to_multiple_of
        packed = "position_ids" in features[0]
        batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], ("position_ids" if packed else "attention_mask"): []}
        for row in features:
            ids = list(row["input_ids"])
            pad = longest - len(ids)
            batch["input_ids"].append(ids + [self.pad_token_id] * pad)
            batch["labels"].append(list(row["labels"]) + [IGNORE_INDEX] * pad)
            if packed:
                batch["position_ids"].append(list(row["position_ids"]) + list(range(pad)))
            else:
                batch["attention_mask"].append([1] * len(ids) + [0] * pad)
        return {name: torch.tensor(values, dtype=torch.long) for name, values in batch.items()}


def build_collator(config: RunConfig, tokenizer: PreTrainedTokenizerBase, pad_multiple: int | None) -> Any:
    if config.sft.packing and config.sft.packing_method == "flatten":
        from transformers import DataCollatorWithFlattening

        return FlatteningCollator(DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX))
    return SftCollator(tokenizer.pad_token_id, pad_multiple)


class FlatteningCollator:
    """transformers' DataCollatorWithFlattening for training batches; evaluation batches (which the Trainer
    collates with the same collator) too, which is exact: each example keeps its own positions."""

    def __init__(self, flatten: Any):
        self.flatten = flatten

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        return self.flatten([{"input_ids": row["input_ids"], "labels": row["labels"]} for row in features])


# ----------------------------------------------------------------------------------------- trainer
class CausalLMTrainer(KubetuneTrainer):
    """KubetuneTrainer for a causal LM: perplexity beside each evaluation's loss; packed batches (no attention
    mask) count every position as a real token in the speed figures."""

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        import torch

        mask = inputs.get("attention_mask")
        self.speed.add_batch(mask if mask is not None else torch.ones_like(inputs["input_ids"]))
        return super(KubetuneTrainer, self).training_step(model, inputs, num_items_in_batch)

    def evaluation_loop(self, dataloader: Any, description: str, prediction_loss_only: bool | None = None,
                        ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval") -> Any:
        output = super().evaluation_loop(dataloader, description, True, ignore_keys, metric_key_prefix)
        loss = output.metrics.get(f"{metric_key_prefix}_loss")
        if loss is not None:
            output.metrics[f"{metric_key_prefix}_perplexity"] = perplexity(loss)
        return output


HISTORY_HEADERS = ("epoch", "step", "train loss", "val loss", "val perplexity", "")


def history_table_rows(history: Any) -> list[tuple[str, ...]]:
    """The evaluations during training as cells under HISTORY_HEADERS (kubetune.train.history's rows, with
    perplexity where a classifier shows accuracy and F1)."""
    from kubetune.train.history import evaluation_rows, table_rows

    rows = table_rows(evaluation_rows(history))
    return [(*row[:4], f"{perplexity(point['eval_loss']):.2f}" if point.get("eval_loss") is not None else "-", row[-1])
            for row, point in zip(rows, history.eval, strict=True)]


def perplexity(loss: float) -> float:
    """exp(mean token loss); capped where exp would overflow (an untrained model's loss is ~log(vocab))."""
    return math.exp(min(float(loss), 50.0))


def build_trainer(run: Any, model: nn.Module, args: Any) -> Any:
    import torch
    from transformers import EarlyStoppingCallback

    from kubetune.distributed import world_size
    from kubetune.train.callbacks import MemoryCallback, SpeedCallback
    from kubetune.train.checkpoints import CheckpointCallback
    from kubetune.train.model import parameter_counts
    from kubetune.train.preflight import TRAIN, VALIDATION
    from kubetune.train.tracking import TrackingCallback
    from kubetune.train.trainer import LearningRates

    config, splits = run.config, run.data.splits
    train_columns = [c for c in ("input_ids", "labels", "attention_mask", "position_ids", "length") if c in splits[TRAIN].column_names]
    run.input_columns = [c for c in train_columns if c != "length"]
    train_split = splits[TRAIN].select_columns(train_columns)
    eval_split = splits[VALIDATION].select_columns([c for c in ("input_ids", "labels", "attention_mask") if c in splits[VALIDATION].column_names])
    callbacks = [run.speed, MemoryCallback(), run.sigterm, CheckpointCallback(run.paths, config.training.save_total_limit, world_size()),
                 TrackingCallback(run.tracker)]
    if config.training.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.training.early_stopping_patience))
    pad_multiple = config.training.pad_to_multiple_of if torch.cuda.is_available() else None
    trainer = CausalLMTrainer(
        model=model, args=args, data_collator=build_collator(config, run.tokenizer, pad_multiple),
        train_dataset=train_split, eval_dataset=eval_split, processing_class=run.tokenizer, callbacks=callbacks,
        speed=run.speed,
        learning_rates=LearningRates(config.training.learning_rate, None,
                                     config.lora.loraplus_lr_ratio if config.lora.enable else None, ()),
    )
    trainer.callback_handler.callbacks.sort(key=lambda callback: not isinstance(callback, (SpeedCallback, MemoryCallback)))
    run.tracker.log_metrics(dict(zip(("model/trainable_parameters", "model/total_parameters"),
                                     map(float, parameter_counts(model)), strict=True)), step=0)
    return trainer


# -------------------------------------------------------------------------------------------- load
def load_trained_causal_lm(model_dir: str | Path) -> tuple[nn.Module, PreTrainedTokenizerBase, dict[str, Any]]:
    """(model, tokenizer, metadata) from an SFT OUT/model (adapter on its base, or a merged/full model), in eval mode."""
    from transformers import AutoModelForCausalLM

    from kubetune.train.model import MODEL_METADATA_FILE, base_model_path, load_tokenizer

    model_dir = Path(model_dir)
    metadata_file = model_dir / MODEL_METADATA_FILE
    if not metadata_file.exists():
        raise DataError(f"{model_dir} has no {MODEL_METADATA_FILE}: it is not a model written by `kubetune train`")
    metadata = json.loads(metadata_file.read_text())
    if metadata.get("task") != "sft":
        raise KubetuneError(f"{model_dir} is a classifier, not a causal LM trained with task: sft")
    trust = bool(metadata.get("trust_remote_code", False))
    tokenizer = load_tokenizer(str(model_dir), trust)
    if (model_dir / "adapter_config.json").exists():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(base_model_path(metadata), trust_remote_code=trust,
                                                    attn_implementation=metadata.get("attn_implementation", "sdpa"))
        model = PeftModel.from_pretrained(base, model_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, trust_remote_code=trust)
    model.eval()
    return model, tokenizer, metadata
