"""The tokenizer the data was made with is the tokenizer training uses: tokenize.model_name (local or s3://)
pads the batches and is saved with the model; data made with another tokenizer is refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from kubetune import storage
from kubetune.config import load_config
from kubetune.errors import ConfigError
from kubetune.train.recipe import train

from ..conftest import corpus
from .conftest import build_tokenized, write_config

TRAINING = {"batch_size": 16, "max_steps": 4, "save_steps": 4, "logging_steps": 2}


def train_other_tokenizer(directory: Path):
    """A WordPiece tokenizer unlike the tiny BERT's: a smaller vocabulary, and [PAD] at id 4, not 0."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(corpus(seed=1), trainers.WordPieceTrainer(
        vocab_size=200, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[MASK]", "[PAD]"]))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    fast.save_pretrained(directory)
    return fast


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("other-tokenizer")
    tokenizer = train_other_tokenizer(directory)
    assert tokenizer.pad_token_id == 4
    return directory


@pytest.fixture(scope="module")
def other_tokenized(other_tokenizer: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenized(tmp_path_factory.mktemp("other-tokenized"), other_tokenizer,
                           sizes={"train": 64, "validation": 13})


def assert_trained_with(out: Path, tokenizer_dir: Path) -> None:
    from kubetune.train.model import load_trained_classifier

    expected = AutoTokenizer.from_pretrained(tokenizer_dir)
    model, saved, _ = load_trained_classifier(out / "model")
    assert saved.get_vocab() == expected.get_vocab()  # OUT/model ships the data's tokenizer
    assert saved.pad_token_id == model.config.pad_token_id == 4  # and batches were padded with its [PAD]


def test_tokenize_model_name_is_the_tokenizer_training_uses(tiny_bert: Path, other_tokenizer: Path,
                                                            other_tokenized: Path, tmp_path: Path):
    config = load_config(write_config(tmp_path / "run.yaml", tiny_bert, training=TRAINING,
                                      tokenize={"model_name": str(other_tokenizer)}))
    out = tmp_path / "out"
    train(config, str(other_tokenized), str(out))
    assert_trained_with(out, other_tokenizer)
    metadata = json.loads((out / "model" / "model_metadata.json").read_text())
    assert metadata["tokenizer"] == str(other_tokenizer)


def test_an_s3_tokenizer_works_like_a_local_one(tiny_bert: Path, other_tokenizer: Path, other_tokenized: Path,
                                                s3_bucket: str, tmp_path: Path):
    uri = f"s3://{s3_bucket}/tokenizers/other"
    for path in other_tokenizer.iterdir():
        storage.write_text(f"{uri}/{path.name}", path.read_text(), load_config(None).storage)
    config = load_config(write_config(tmp_path / "run.yaml", tiny_bert, training=TRAINING, tokenize={"model_name": uri}))
    out = tmp_path / "out"
    train(config, str(other_tokenized), str(out))
    assert_trained_with(out, other_tokenizer)


def test_data_made_with_another_tokenizer_is_refused_before_anything_is_written(
        tiny_bert: Path, other_tokenizer: Path, other_tokenized: Path, tmp_path: Path):
    config = load_config(write_config(tmp_path / "run.yaml", tiny_bert, training=TRAINING))  # the base model's tokenizer
    out = tmp_path / "out"
    with pytest.raises(ConfigError) as raised:
        train(config, str(other_tokenized), str(out))
    [line] = str(raised.value).splitlines()
    assert line.startswith(f"tokenize.model_name: --data {other_tokenized} was tokenized with {other_tokenizer} (tokenizer files ")
    assert f"but this config's tokenizer is {tiny_bert} (files " in line
    assert line.endswith(f"set tokenize.model_name: {other_tokenizer}, or re-run `kubetune tokenize` with this config")
    assert not out.exists()
