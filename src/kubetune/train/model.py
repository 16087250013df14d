"""The classifier: a base model with one output per label slot, LoRA adapters on it, and loading it back.

`instantiate_model` and `apply_lora` build what the Trainer trains; `save_trained_model` writes
OUT/model; `load_trained_classifier` gives it back for inference (the evaluate stage), with the
dummy label slots masked exactly as in training (see kubetune.train.loss).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.config import LoraConfig as LoraSection
from kubetune.config import RunConfig
from kubetune.data.labels import LabelMap
from kubetune.distributed import print_main
from kubetune.errors import ConfigError, DataError, KubetuneError, short_reason
from kubetune.hub import resolve_model_path
from kubetune.train.loss import mask_dummy_logits
from kubetune.train.pooling import CLS, install_pooling, resolve_pooling

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

MODEL_METADATA_FILE = "model_metadata.json"
TRAINING_METRICS_FILE = "training_metrics.json"
MERGED_DIR = "merged"
# The classification head of transformers' *ForSequenceClassification models: encoders call it
# `classifier`, decoder models (Qwen2, Llama, GPT-2...) `score`. Some heads have a second layer.
HEAD_MODULES = ("classifier", "score")
EXTRA_HEAD_MODULES = {"distilbert": ("pre_classifier",)}
# Config attributes that set the dropout in front of the head.
HEAD_DROPOUT_KEYS = ("classifier_dropout", "seq_classif_dropout")


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Decoder tokenizers (Qwen's) have no pad token; batches need one. The attention mask hides it."""
    if tokenizer.pad_token is not None:
        return
    for candidate in (tokenizer.eos_token, tokenizer.unk_token):
        if candidate is not None:
            tokenizer.pad_token = candidate
            return
    raise KubetuneError(
        f"the tokenizer of {tokenizer.name_or_path} has no pad, end-of-text or unknown token to pad batches "
        "with; choose another tokenizer (tokenize.model_name)"
    )


def load_tokenizer(path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    ensure_pad_token(tokenizer)
    return tokenizer


def _torch_dtype(name: str) -> Any:
    import torch

    return getattr(torch, name)


def instantiate_model(
    config: RunConfig, label_map: LabelMap, model_path: str, tokenizer: PreTrainedTokenizerBase
) -> PreTrainedModel:
    """AutoModelForSequenceClassification with one output per label slot, set up from `config.model`."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    section = config.model
    model_config = AutoConfig.from_pretrained(
        model_path,
        num_labels=label_map.max_classes,
        id2label=label_map.id2label,
        label2id=label_map.label2id,
        problem_type=section.problem_type,
        trust_remote_code=section.trust_remote_code,
    )
    if section.dropout is not None:
        keys = [key for key in HEAD_DROPOUT_KEYS if hasattr(model_config, key)]
        if not keys:
            raise ConfigError([
                f"model.dropout: {type(model_config).__name__} has no dropout in front of its classification head; "
                "remove model.dropout"
            ])
        setattr(model_config, keys[0], section.dropout)
    model_config.pad_token_id = tokenizer.pad_token_id
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path,
        config=model_config,
        dtype=_torch_dtype(section.dtype),
        attn_implementation=section.attn_implementation,
        trust_remote_code=section.trust_remote_code,
    )
    install_pooling(model, resolve_pooling(section.pooling, model_path, model))
    if section.gradient_checkpointing:
        # Non-reentrant: the reentrant form needs inputs that require grad, which frozen LoRA bases lack.
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model


def base_of(model: nn.Module) -> nn.Module:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def head_module_names(model: nn.Module, lora: LoraSection) -> list[str]:
    """The modules trained in full beside the adapters: `lora.modules_to_save`, else the architecture's head."""
    children = {name for name, _ in model.named_children()}
    if lora.modules_to_save is not None:
        missing = [name for name in lora.modules_to_save if not any(n == name or n.endswith(f".{name}") for n, _ in model.named_modules())]
        if missing:
            raise ConfigError([f"lora.modules_to_save: {type(model).__name__} has no module named {', '.join(missing)}"])
        return list(lora.modules_to_save)
    heads = [name for name in HEAD_MODULES if name in children]
    if not heads:
        raise ConfigError([
            f"lora.modules_to_save: cannot tell the classification head of {type(model).__name__} (looked for "
            f"{', '.join(HEAD_MODULES)}); set lora.modules_to_save to its module name"
        ])
    extra = [name for name in EXTRA_HEAD_MODULES.get(model.config.model_type, ()) if name in children]
    return extra + heads[:1]


def linear_layer_names(model: nn.Module) -> list[str]:
    """The names LoRA can target: the last part of every linear layer's name."""
    from torch import nn

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, nn.Linear)})


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters."""
    trainable = total = 0
    for parameter in model.parameters():
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return trainable, total


def apply_lora(config: RunConfig, model: PreTrainedModel) -> nn.Module:
    """Wrap `model` with LoRA adapters (PEFT) and a fully trained head; `lora.enable: false` passes it through."""
    lora = config.lora
    if lora.enable:
        from peft import LoraConfig, get_peft_model

        peft_config = LoraConfig(
            task_type=lora.task_type,
            r=lora.r,
            lora_alpha=lora.lora_alpha,
            lora_dropout=lora.lora_dropout,
            target_modules=lora.target_modules,
            bias=lora.bias,
            modules_to_save=head_module_names(model, lora),
        )
        try:
            model = get_peft_model(model, peft_config)
        except ValueError as exc:
            raise ConfigError([
                f"lora.target_modules: {lora.target_modules or 'the default'} matches no layer of "
                f"{type(model).__name__} ({short_reason(exc).rstrip('.')}); its linear layers are "
                f"{', '.join(linear_layer_names(model))}"
            ]) from None
    trainable, total = parameter_counts(model)
    kind = "LoRA" if lora.enable else "full fine-tune"
    print_main(f"trainable parameters ({kind}): {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)")
    return model


def lora_description(model: nn.Module, lora: LoraSection) -> dict[str, Any] | None:
    """The LoRA settings as applied (target modules resolved by PEFT), for model_metadata.json."""
    if not lora.enable:
        return None
    peft_config = model.peft_config["default"]
    targets = peft_config.target_modules
    return {
        "r": peft_config.r,
        "lora_alpha": peft_config.lora_alpha,
        "lora_dropout": peft_config.lora_dropout,
        "bias": peft_config.bias,
        "target_modules": sorted(targets) if isinstance(targets, (set, list)) else targets,
        "modules_to_save": trained_in_full(model),
        "task_type": str(peft_config.task_type),
    }


def trained_in_full(model: nn.Module) -> list[str]:
    """The modules PEFT actually trains in full (its config also lists defaults the model may not have)."""
    from peft.utils import ModulesToSaveWrapper

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, ModulesToSaveWrapper)})


def install_dummy_slot_mask(model: nn.Module, num_real_labels: int) -> Any:
    """Mask the dummy slots in every forward output's `logits`; returns the hook handle (None: no dummies)."""
    num_slots = model.config.num_labels
    if num_slots <= num_real_labels:
        return None

    def mask_logits(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        if isinstance(output, dict) and output.get("logits") is not None:
            output["logits"] = mask_dummy_logits(output["logits"], num_real_labels)
        return output

    return model.register_forward_hook(mask_logits)


def save_trained_model(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    label_map: LabelMap | None,
    directory: Path,
    metadata: dict[str, Any],
    metrics: dict[str, float],
    merge: bool,
    state_dict: dict[str, Any] | None = None,
) -> None:
    """OUT/model: adapter (or full model), tokenizer (with its chat template), label map (classifiers; None for
    a causal LM), metadata and metrics; `merge` adds merged/.

    Everything goes through save_pretrained (safetensors) or JSON — nothing is pickled.
    `state_dict` is the gathered one when the weights are sharded (ZeRO-3).
    """
    kwargs = {"state_dict": state_dict} if state_dict is not None else {}
    model.save_pretrained(directory, safe_serialization=True, **kwargs)
    tokenizer.save_pretrained(directory)
    if label_map is not None:
        label_map.save(directory)
    (directory / MODEL_METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    (directory / TRAINING_METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    if merge:
        # Last use of the model: merging folds the adapters into the base weights in place.
        merged = model.merge_and_unload()
        merged_dir = directory / MERGED_DIR
        merged.save_pretrained(merged_dir, safe_serialization=True)
        tokenizer.save_pretrained(merged_dir)
        if label_map is not None:
            label_map.save(merged_dir)
        merged_metadata = {**metadata, "merged": True}
        (merged_dir / MODEL_METADATA_FILE).write_text(json.dumps(merged_metadata, indent=2, sort_keys=True) + "\n")


def base_model_path(metadata: dict[str, Any]) -> str:
    """A loadable path of the base model a model folder was trained from.

    The path used in training when it is still there (same machine), else the configured name
    resolved again (a packaged or hub model, or an object-storage folder downloaded to a temp dir).
    """
    import tempfile

    from kubetune import storage

    used = metadata.get("base_model_path")
    if used and Path(used).is_dir():
        return str(used)
    name = metadata["base_model"]
    if storage.is_remote(name):
        return str(storage.download(name, Path(tempfile.mkdtemp(prefix="kubetune-base-model-"))))
    return resolve_model_path(name)


def load_trained_classifier(model_dir: str | Path) -> tuple[nn.Module, PreTrainedTokenizerBase, LabelMap]:
    """(model, tokenizer, label map) from OUT/model (or OUT/model/merged), ready for inference.

    An adapter folder loads its base model (`base_model` in model_metadata.json) and the adapter on
    top; a merged or fully fine-tuned folder loads as it is. The model is in eval mode and its dummy
    label slots are masked, so it can never predict one.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    model_dir = Path(model_dir)
    label_map = LabelMap.load(model_dir)
    metadata_file = model_dir / MODEL_METADATA_FILE
    if not metadata_file.exists():
        raise DataError(f"{model_dir} has no {MODEL_METADATA_FILE}: it is not a model written by `kubetune train`")
    metadata = json.loads(metadata_file.read_text())
    trust_remote_code = bool(metadata.get("trust_remote_code", False))
    tokenizer = load_tokenizer(str(model_dir), trust_remote_code)
    if (model_dir / "adapter_config.json").exists():
        from peft import PeftModel

        base_path = base_model_path(metadata)
        base_config = AutoConfig.from_pretrained(
            base_path, num_labels=label_map.max_classes, id2label=label_map.id2label, label2id=label_map.label2id,
            problem_type="single_label_classification", trust_remote_code=trust_remote_code,
        )
        base_config.pad_token_id = tokenizer.pad_token_id
        base = AutoModelForSequenceClassification.from_pretrained(
            base_path, config=base_config, attn_implementation=metadata.get("attn_implementation", "sdpa"),
            trust_remote_code=trust_remote_code,
        )
        # Pooled as in training, before the adapters go on (they were trained without the replaced pooler).
        install_pooling(base, metadata.get("pooling", CLS))
        model = PeftModel.from_pretrained(base, model_dir)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        install_pooling(model, metadata.get("pooling", CLS))
    model.eval()
    install_dummy_slot_mask(model, label_map.num_real_labels)
    return model, tokenizer, label_map
