"""The classifier: head sized by the label slots, pad token for decoders, LoRA with a fully trained head,
and loading a trained model back with its dummy slots masked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kubetune.config import validate_config
from kubetune.data.labels import LabelMap
from kubetune.errors import ConfigError
from kubetune.train.model import (
    apply_lora,
    head_module_names,
    instantiate_model,
    load_tokenizer,
    load_trained_classifier,
    parameter_counts,
    save_trained_model,
)


def config_for(model_dir: Path, **sections: dict):
    data = {"model": {"name": str(model_dir)}, "lora": {"r": 8, "lora_alpha": 32}, "tracking": {"enable": False}}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return validate_config(data)


def build(model_dir: Path, label_map: LabelMap, **sections: dict):
    config = config_for(model_dir, **sections)
    tokenizer = load_tokenizer(str(model_dir))
    return config, tokenizer, instantiate_model(config, label_map, str(model_dir), tokenizer)


def test_head_has_one_output_per_label_slot(tiny_bert: Path, label_map: LabelMap):
    _, _, model = build(tiny_bert, label_map)
    assert model.config.num_labels == 6
    assert model.classifier.out_features == 6
    assert model.config.id2label == {0: "fuel", 1: "it", 2: "office", 3: "utilities", 4: "dummy1", 5: "dummy2"}
    assert model.config.label2id["dummy2"] == 5


def test_model_dropout_sets_the_head_dropout(tiny_bert: Path, label_map: LabelMap):
    _, _, model = build(tiny_bert, label_map, model={"dropout": 0.3})
    assert model.config.classifier_dropout == 0.3
    assert model.dropout.p == 0.3


def test_model_dropout_on_a_model_without_head_dropout_is_an_error(tiny_qwen2: Path, label_map: LabelMap):
    with pytest.raises(ConfigError, match=r"model\.dropout"):
        build(tiny_qwen2, label_map, model={"dropout": 0.3})


def test_decoder_gets_a_pad_token(tiny_qwen2: Path, label_map: LabelMap):
    _, tokenizer, model = build(tiny_qwen2, label_map)
    assert tokenizer.pad_token == "<|endoftext|>"
    assert model.config.pad_token_id == tokenizer.eos_token_id


def test_gradient_checkpointing_is_non_reentrant(tiny_bert: Path, label_map: LabelMap):
    _, _, model = build(tiny_bert, label_map, model={"gradient_checkpointing": True})
    assert model.is_activation_checkpointing
    model = apply_lora(config_for(tiny_bert, model={"gradient_checkpointing": True}), model)
    model.train()
    batch = {"input_ids": torch.tensor([[2, 10, 11, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    model(**batch).logits.sum().backward()  # the reentrant form would fail: LoRA leaves the inputs without grad
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert all(g is not None for g in lora_grads)


@pytest.mark.parametrize(("fixture", "head"), [("tiny_bert", "classifier"), ("tiny_qwen2", "score")])
def test_head_module_per_architecture(request: pytest.FixtureRequest, label_map: LabelMap, fixture: str, head: str):
    model_dir = request.getfixturevalue(fixture)
    config, _, model = build(model_dir, label_map)
    assert head_module_names(model, config.lora) == [head]


def test_lora_trains_adapters_and_the_whole_head_bert(tiny_bert: Path, label_map: LabelMap):
    config, _, model = build(tiny_bert, label_map)
    model = apply_lora(config, model)
    # query and value of 2 layers: A (8x32) + B (32x8) each; head: 32x6 weights + 6 biases
    assert parameter_counts(model)[0] == 2 * 2 * (8 * 32 + 32 * 8) + (32 * 6 + 6)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"base_model.model.classifier.modules_to_save.default.weight",
            "base_model.model.classifier.modules_to_save.default.bias"} <= trainable


def test_lora_trains_adapters_and_the_whole_head_qwen2(tiny_qwen2: Path, label_map: LabelMap):
    config, _, model = build(tiny_qwen2, label_map)
    model = apply_lora(config, model)
    # q_proj 32→32 and v_proj 32→16 (2 key/value heads of 8) in 2 layers; score 32x6 without bias
    assert parameter_counts(model)[0] == 2 * ((8 * 32 + 32 * 8) + (8 * 32 + 16 * 8)) + 32 * 6


def test_lora_disabled_is_a_full_fine_tune(tiny_bert: Path, label_map: LabelMap):
    config, _, model = build(tiny_bert, label_map, lora={"enable": False})
    model = apply_lora(config, model)
    trainable, total = parameter_counts(model)
    assert trainable == total
    assert not hasattr(model, "peft_config")


def test_unknown_target_module_names_the_key(tiny_bert: Path, label_map: LabelMap):
    config, _, model = build(tiny_bert, label_map, lora={"target_modules": ["q_proj"]})
    with pytest.raises(ConfigError, match=r"lora\.target_modules: \['q_proj'\] matches no layer .* query, value"):
        apply_lora(config, model)


def test_unknown_modules_to_save_names_the_key(tiny_bert: Path, label_map: LabelMap):
    config, _, model = build(tiny_bert, label_map, lora={"modules_to_save": ["head"]})
    with pytest.raises(ConfigError, match=r"lora\.modules_to_save: .*head"):
        apply_lora(config, model)


def test_loaded_classifier_never_predicts_a_dummy_slot(tiny_bert: Path, label_map: LabelMap, tmp_path: Path):
    config, tokenizer, model = build(tiny_bert, label_map)
    model = apply_lora(config, model)
    with torch.no_grad():  # make the dummy slots win every row, as an untrained spare output might
        model.base_model.model.classifier.modules_to_save["default"].bias[4:] = 100.0
    metadata = {"base_model": str(tiny_bert), "base_model_path": str(tiny_bert)}
    save_trained_model(model, tokenizer, label_map, tmp_path, metadata, {"eval_accuracy": 0.5}, merge=False)
    loaded, loaded_tokenizer, loaded_map = load_trained_classifier(tmp_path)
    assert loaded_map == label_map
    assert not loaded.training
    batch = loaded_tokenizer(["fuel invoice", "laptop fee", "paper grant"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = loaded(**batch).logits
    assert logits.argmax(-1).lt(label_map.num_real_labels).all()
    assert logits[:, 4:].eq(torch.finfo(logits.dtype).min).all()
    assert json.loads((tmp_path / "training_metrics.json").read_text()) == {"eval_accuracy": 0.5}
