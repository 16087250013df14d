"""tokenize: unpadded and padded ids, truncation, the length column, decoder tokenizers, diagnostics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
from transformers import AutoTokenizer

from kubetune.data.stages import preprocess, tokenize
from kubetune.data.tokenization import diagnostics_markdown
from kubetune.errors import DataError, KubetuneError

from .conftest import ledger, make_config, write_table


@pytest.fixture
def preprocessed(tmp_path: Path) -> Path:
    data = write_table(ledger(100), tmp_path / "ledger.csv")
    out = tmp_path / "pre"
    preprocess(make_config(data={"uri": str(data)}), str(out))
    return out


def texts_of(preprocessed: Path, split: str) -> list[str]:
    return list(datasets.load_from_disk(str(preprocessed))[split]["text"])


def test_unpadded_ids_and_length_column(tmp_path: Path, tiny_bert: Path, preprocessed: Path):
    result = tokenize(make_config(tiny_bert), str(preprocessed), str(tmp_path / "tok"))
    out = datasets.load_from_disk(str(tmp_path / "tok"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    assert result.rows == {"train": 70, "validation": 10, "test": 20}
    assert out["train"].column_names == ["input_ids", "attention_mask", "labels", "length", "text", "line_id"]
    raw = [c for c in datasets.load_from_disk(str(preprocessed))["test"].column_names if c.startswith("raw.")]
    assert raw and out["test"].column_names == [*out["train"].column_names, *raw]  # the test split's raw columns stay
    assert out["train"].features["labels"] == datasets.Value("int64")
    texts = texts_of(preprocessed, "train")
    expected = tokenizer(texts, truncation=True, max_length=64)["input_ids"]
    assert [list(ids) for ids in out["train"]["input_ids"]] == expected
    assert list(out["train"]["text"]) == texts  # kept whole (not cut to max_length) for the evaluate step's baseline
    assert list(out["train"]["length"]) == [len(ids) for ids in expected]
    assert len(set(out["train"]["length"])) > 1  # really unpadded: lengths differ
    assert all(all(m == 1 for m in mask) for mask in out["train"]["attention_mask"])
    pre = datasets.load_from_disk(str(preprocessed))
    assert list(out["test"]["labels"]) == list(pre["test"]["labels"])
    assert list(out["test"]["line_id"]) == list(pre["test"]["line_id"])


def test_max_length_padding(tmp_path: Path, tiny_bert: Path, preprocessed: Path):
    config = make_config(tiny_bert, tokenize={"padding": "max_length", "max_length": 48})
    tokenize(config, str(preprocessed), str(tmp_path / "tok"))
    train = datasets.load_from_disk(str(tmp_path / "tok"))["train"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    assert {len(ids) for ids in train["input_ids"]} == {48}
    assert list(train["length"]) == [sum(mask) for mask in train["attention_mask"]]
    first = train[0]
    assert first["input_ids"][first["length"]:] == [tokenizer.pad_token_id] * (48 - first["length"])


def test_truncation_rate_and_cut_sequences(tmp_path: Path, tiny_bert: Path, preprocessed: Path):
    config = make_config(tiny_bert, tokenize={"max_length": 12, "diagnostics": {"percentiles": [50, 100]}})
    result = tokenize(config, str(preprocessed), str(tmp_path / "tok"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    full = np.array([len(ids) for ids in tokenizer(texts_of(preprocessed, "train"))["input_ids"]])
    stats = result.diagnostics["splits"]["train"]
    assert stats["truncated_rows"] == int((full > 12).sum()) > 0
    assert stats["truncation_rate"] == round(float((full > 12).mean()), 6)
    assert stats["max"] == int(full.max())
    assert stats["percentiles"] == {"p50": float(np.percentile(full, 50)), "p100": float(full.max())}
    train = datasets.load_from_disk(str(tmp_path / "tok"))["train"]
    assert max(train["length"]) == 12
    sep = tokenizer.sep_token_id
    assert all(ids[-1] == sep for ids in train["input_ids"])  # the tokenizer's own cut keeps [SEP]


def test_no_truncation_and_a_long_text_is_an_error(tmp_path: Path, tiny_bert: Path, preprocessed: Path):
    config = make_config(tiny_bert, tokenize={"max_length": 12, "truncation": False})
    with pytest.raises(DataError, match=r"^tokenize\.truncation is false but \d+ rows of the train split are longer than "
                                        r"tokenize\.max_length \(12; .*raise tokenize\.max_length or set tokenize\.truncation: true$"):
        tokenize(config, str(preprocessed), str(tmp_path / "tok"))
    assert not (tmp_path / "tok").exists()


def test_max_length_above_the_model_limit_is_an_error(tmp_path: Path, tiny_bert: Path, preprocessed: Path):
    with pytest.raises(KubetuneError, match=r"^tokenize\.max_length is 1024 but .* takes at most 512 tokens; lower tokenize\.max_length"):
        tokenize(make_config(tiny_bert, tokenize={"max_length": 1024}), str(preprocessed), str(tmp_path / "tok"))


@pytest.fixture
def decoder_tokenizer_without_pad(tiny_qwen2: Path, tmp_path: Path) -> Path:
    """tiny_qwen2's byte-level BPE tokenizer files alone: loaded without the model's config, it has no pad token."""
    directory = tmp_path / "decoder-tokenizer"
    directory.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tiny_qwen2 / name, directory / name)
    return directory


def test_decoder_model_stores_unpadded_ids(tmp_path: Path, tiny_qwen2: Path, preprocessed: Path):
    tokenize(make_config(tiny_qwen2), str(preprocessed), str(tmp_path / "tok"))
    out = datasets.load_from_disk(str(tmp_path / "tok"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2)
    assert out["train"].column_names == ["input_ids", "attention_mask", "labels", "length", "text", "line_id"]
    assert [list(ids) for ids in out["train"]["input_ids"]] == tokenizer(texts_of(preprocessed, "train"), truncation=True, max_length=64)["input_ids"]
    assert list(out["train"]["length"]) == [len(ids) for ids in out["train"]["input_ids"]]


def test_tokenizer_without_pad_token_stores_unpadded_ids(tmp_path: Path, decoder_tokenizer_without_pad: Path, preprocessed: Path):
    assert AutoTokenizer.from_pretrained(decoder_tokenizer_without_pad).pad_token is None
    tokenize(make_config(decoder_tokenizer_without_pad), str(preprocessed), str(tmp_path / "tok"))
    train = datasets.load_from_disk(str(tmp_path / "tok"))["train"]
    assert list(train["length"]) == [len(ids) for ids in train["input_ids"]]
    assert len(set(train["length"])) > 1
    metadata = json.loads((tmp_path / "tok" / "dataset_metadata.json").read_text())
    assert metadata["tokenize"]["pad_token_id"] is None


def test_tokenizer_without_pad_token_padded_to_max_length_pads_with_end_of_text(
    tmp_path: Path, decoder_tokenizer_without_pad: Path, preprocessed: Path
):
    config = make_config(decoder_tokenizer_without_pad, tokenize={"padding": "max_length"})
    tokenize(config, str(preprocessed), str(tmp_path / "tok"))
    eos = AutoTokenizer.from_pretrained(decoder_tokenizer_without_pad).eos_token_id
    row = datasets.load_from_disk(str(tmp_path / "tok"))["train"][0]
    assert len(row["input_ids"]) == 64
    assert row["input_ids"][row["length"]:] == [eos] * (64 - row["length"])
    assert row["attention_mask"] == [1] * row["length"] + [0] * (64 - row["length"])
    metadata = json.loads((tmp_path / "tok" / "dataset_metadata.json").read_text())
    assert metadata["tokenize"]["pad_token_id"] == eos


def test_diagnostics_file_and_samples(tmp_path: Path, tiny_bert: Path, preprocessed: Path):
    config = make_config(tiny_bert, tokenize={"diagnostics": {"sample_size": 2, "seed": 5, "percentiles": [50, 90]}})
    result = tokenize(config, str(preprocessed), str(tmp_path / "tok"))
    saved = json.loads((tmp_path / "tok" / "tokenize_diagnostics.json").read_text())
    assert saved == result.diagnostics
    assert saved["tokenizer"] == str(tiny_bert) and saved["max_length"] == 64 and saved["percentiles"] == [50.0, 90.0]
    assert list(saved["splits"]) == ["train", "validation", "test"]
    train = saved["splits"]["train"]
    assert set(train) == {"rows", "mean", "max", "percentiles", "truncated_rows", "truncation_rate", "samples"}
    assert len(train["samples"]) == 2
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    ids = datasets.load_from_disk(str(tmp_path / "tok"))["train"][train["samples"][0]["index"]]["input_ids"]
    assert train["samples"][0]["decoded"] == tokenizer.decode(ids)
    assert train["samples"][0]["decoded"].startswith("[CLS] supplier ")
    # The same seed picks the same rows; another seed others.
    again = tokenize(make_config(tiny_bert, tokenize={"diagnostics": {"sample_size": 2, "seed": 6, "percentiles": [50, 90]}}),
                     str(preprocessed), str(tmp_path / "tok2"))
    assert [s["index"] for s in again.diagnostics["splits"]["train"]["samples"]] != [s["index"] for s in train["samples"]]


def test_diagnostics_markdown():
    diagnostics = {
        "tokenizer": "tiny", "max_length": 16, "percentiles": [50.0, 95.0],
        "splits": {
            "train": {"rows": 1200, "mean": 10.5, "max": 20, "percentiles": {"p50": 10.0, "p95": 17.5},
                      "truncated_rows": 30, "truncation_rate": 0.025,
                      "samples": [{"index": 4, "label": "4010", "tokens": 16, "truncated": True, "decoded": "[CLS] a | b [SEP]"}]},
            "test": {"rows": 0, "mean": None, "max": None, "percentiles": {"p50": None, "p95": None},
                     "truncated_rows": 0, "truncation_rate": 0.0, "samples": []},
        },
    }
    assert diagnostics_markdown(diagnostics) == (
        "### Token lengths: `tiny`, max_length 16\n"
        "\n"
        "| split | rows | mean | p50 | p95 | max | truncated |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
        "| train | 1,200 | 10.50 | 10.00 | 17.50 | 20 | 2.50% |\n"
        "| test | 0 | - | - | - | - | 0.00% |\n"
        "\n"
        "Lengths are counted before truncation; `truncated` is the share of rows cut at max_length.\n"
        "\n"
        "### Decoded samples\n"
        "\n"
        "**train** row 4, label `4010`, 16 tokens, truncated\n"
        "\n"
        "```text\n"
        "[CLS] a | b [SEP]\n"
        "```\n"
    )


@pytest.mark.slow
def test_two_processes_give_the_same_result_as_one(tmp_path: Path, tiny_bert: Path):
    data = write_table(ledger(400), tmp_path / "ledger.csv")
    outputs = []
    for procs in (1, 2):
        config = make_config(tiny_bert, data={"uri": str(data)}, split={"labelize_num_proc": procs},
                             serialize={"num_proc": procs}, tokenize={"num_proc": procs})
        preprocess(config, str(tmp_path / f"pre{procs}"))
        tokenize(config, str(tmp_path / f"pre{procs}"), str(tmp_path / f"tok{procs}"))
        outputs.append(datasets.load_from_disk(str(tmp_path / f"tok{procs}")))
    for split in ("train", "validation", "test"):
        assert outputs[0][split].to_dict() == outputs[1][split].to_dict()


def test_real_minilm_tokenizer(tmp_path: Path, preprocessed: Path):
    config = make_config(None, model={"name": "sentence-transformers/all-MiniLM-L6-v2"}, tokenize={"max_length": 64})
    tokenize(config, str(preprocessed), str(tmp_path / "tok"))
    train = datasets.load_from_disk(str(tmp_path / "tok"))["train"]
    assert train.column_names == ["input_ids", "token_type_ids", "attention_mask", "labels", "length", "text", "line_id"]
    text = texts_of(preprocessed, "train")[0]
    from kubetune.hub import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("sentence-transformers/all-MiniLM-L6-v2"))
    ids = train[0]["input_ids"]
    assert ids == tokenizer(text)["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102  # BERT's [CLS] and [SEP] in the uncased vocabulary
    assert tokenizer.convert_ids_to_tokens(ids[1:4]) == ["supplier", ":", tokenizer.tokenize(text)[2]]

def test_input_that_is_not_a_complete_preprocess_output_is_an_error(tmp_path: Path, tiny_bert: Path):
    (tmp_path / "half").mkdir()
    with pytest.raises(DataError, match=r"^tokenize input .*half is not a complete kubetune preprocess output"):
        tokenize(make_config(tiny_bert), str(tmp_path / "half"), str(tmp_path / "tok"))
