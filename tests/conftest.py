"""Shared fixtures: tiny random models built from a config, with a tokenizer trained on the spot.

No network: every model and tokenizer here is made in a temporary directory in well under a second.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_TRACKING_URI", "")  # never a developer's server from the environment

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = REPO_ROOT.parent / "shared" / "datasets"

WORDS = ["invoice", "payment", "supplier", "office", "stationery", "printer", "paper", "software", "licence", "cloud", "hosting", "travel", "train", "hotel", "taxi", "fuel", "vehicle", "repair", "cleaning", "catering", "food", "water", "electricity", "gas", "rent", "rates", "insurance", "legal", "advice", "consultancy", "training", "course", "agency", "staff", "temporary", "security", "alarm", "maintenance", "building", "repairs", "postage", "courier", "telephone", "mobile", "broadband", "marketing", "advert", "print", "design", "furniture", "chairs", "desks", "laptop", "monitor", "ltd", "plc", "services", "council", "school", "care", "home", "grant", "payment", "refund", "fee", "subscription", "journal"]


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(n)]


def train_wordpiece_tokenizer(directory: Path, vocab_size: int = 300):
    """A BERT-style WordPiece tokenizer (with [PAD]/[CLS]/[SEP]) trained on the spot."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    )
    tok.train_from_iterator(corpus() + [f"{i} {i}.{i:02d} 20{i:02d}-0{i % 9 + 1}" for i in range(100)], trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=512,
    )
    fast.save_pretrained(directory)
    return fast


def train_bpe_tokenizer(directory: Path, vocab_size: int = 400):
    """A byte-level BPE tokenizer like Qwen's: an end-of-text token and, like Qwen, no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", model_max_length=512)
    fast.save_pretrained(directory)
    return fast


def make_tiny_bert(directory: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)  # the same weights whatever ran before: tests that train assert learning margins

    tokenizer = train_wordpiece_tokenizer(directory)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
    )
    BertModel(config).save_pretrained(directory)
    return directory


def make_tiny_qwen2(directory: Path) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)

    tokenizer = train_bpe_tokenizer(directory)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
    )
    Qwen2ForCausalLM(config).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with a 2-layer random BERT and its WordPiece tokenizer."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with a 2-layer random Qwen2 and its byte-level BPE tokenizer (no pad token)."""
    return make_tiny_qwen2(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto's S3 server on 127.0.0.1 for the whole session; its URL."""
    from tests.loopback import moto_s3

    with moto_s3() as url:
        yield url


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; endpoint and (fake) credentials come from the environment, as in a pod given its Secret."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    bucket = f"kubetune-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return bucket
