"""Pooling: the masked mean for sentence-embedding checkpoints (chosen from their own pooling config by
`model.pooling: auto`), the architecture's pooler otherwise, and a trained model pooled on loading as in
training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from kubetune.data.labels import LabelMap
from kubetune.errors import ConfigError
from kubetune.train.model import apply_lora, load_trained_classifier, save_trained_model
from kubetune.train.pooling import (
    CLS,
    MEAN,
    SENTENCE_TRANSFORMERS_POOLING,
    MaskedMeanPooler,
    checkpoint_pooling,
    pooling_of,
)

from .test_model import build


@pytest.fixture(scope="module")
def mean_pooling_bert(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT laid out as a sentence-transformers checkpoint that pools by mean."""
    directory = tmp_path_factory.mktemp("tiny-sentence-bert") / "model"
    shutil.copytree(tiny_bert, directory)
    (directory / SENTENCE_TRANSFORMERS_POOLING).parent.mkdir()
    (directory / SENTENCE_TRANSFORMERS_POOLING).write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True}))
    return directory


def test_masked_mean_ignores_padding():
    pooler = MaskedMeanPooler()
    states = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    pooler.take_mask(None, (), {"attention_mask": torch.tensor([[1, 1, 0]])})
    assert pooler(states).tolist() == [[2.0, 3.0]]
    # The mask is used once: a call without one (no padding anywhere) averages every token.
    torch.testing.assert_close(pooler(states), torch.tensor([[104 / 3, 106 / 3]]))


def test_checkpoint_pooling_reads_the_sentence_transformers_config(tiny_bert: Path, mean_pooling_bert: Path):
    assert checkpoint_pooling(str(mean_pooling_bert)) == MEAN
    assert checkpoint_pooling(str(tiny_bert)) is None


def test_auto_pools_by_mean_only_where_the_checkpoint_was_trained_so(tiny_bert, mean_pooling_bert, label_map):
    _, _, plain = build(tiny_bert, label_map)
    _, _, sentence = build(mean_pooling_bert, label_map)
    assert pooling_of(plain) == CLS
    assert pooling_of(sentence) == MEAN
    _, _, forced_cls = build(mean_pooling_bert, label_map, model={"pooling": "cls"})
    assert pooling_of(forced_cls) == CLS
    _, _, forced_mean = build(tiny_bert, label_map, model={"pooling": "mean"})
    assert pooling_of(forced_mean) == MEAN


def test_mean_pooled_logits_do_not_depend_on_padding(mean_pooling_bert: Path, label_map: LabelMap):
    _, tokenizer, model = build(mean_pooling_bert, label_map)
    model.eval()
    alone = tokenizer(["fuel invoice"], return_tensors="pt")
    padded = tokenizer(["fuel invoice", "laptop fee paper grant council refund"], return_tensors="pt", padding=True)
    assert padded["attention_mask"][0].eq(0).any()
    with torch.no_grad():
        expected = model(**alone).logits[0]
        got = model(**padded).logits[0]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_mean_pooling_on_a_model_without_a_pooler_names_the_key(tiny_qwen2: Path, label_map: LabelMap):
    with pytest.raises(ConfigError, match=r"model\.pooling: mean pooling replaces the pooler .* Qwen2ForSequenceClassification"):
        build(tiny_qwen2, label_map, model={"pooling": "mean"})


def test_a_trained_model_loads_pooled_as_in_training(mean_pooling_bert: Path, label_map: LabelMap, tmp_path: Path):
    config, tokenizer, model = build(mean_pooling_bert, label_map)
    model = apply_lora(config, model)
    assert not any(".pooler." in name for name, _ in model.named_parameters())  # no adapter on a dropped pooler
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # adapters that change the outputs, so loading them is tested
    model.eval()
    metadata = {"base_model": str(mean_pooling_bert), "base_model_path": str(mean_pooling_bert),
                "pooling": pooling_of(model)}
    save_trained_model(model, tokenizer, label_map, tmp_path, metadata, {}, merge=False)
    batch = tokenizer(["fuel invoice", "laptop fee paper grant"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = model(**batch).logits[:, : label_map.num_real_labels]
    loaded, _, _ = load_trained_classifier(tmp_path)
    assert pooling_of(loaded) == MEAN
    with torch.no_grad():
        got = loaded(**batch).logits[:, : label_map.num_real_labels]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
