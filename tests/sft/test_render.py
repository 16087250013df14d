"""Every SFT format renders to the exact tokens and labels expected (prompt masked, response kept), and packing
keeps examples apart (position_ids restart; a packed row's logits equal each example's alone)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kubetune.config import SftConfig
from kubetune.data.sft import (
    ALPACA_PROMPT,
    ALPACA_PROMPT_NO_INPUT,
    IGNORE_INDEX,
    encode_example,
    encode_rows,
    pack_examples,
    render_segments,
)
from kubetune.errors import DataError, KubetuneError


def tokenizer_of(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


def encode(row: dict, sft: SftConfig, tokenizer) -> tuple[list[int], list[int]]:
    return encode_example(render_segments(row, sft, tokenizer, 0), tokenizer, sft)


def trained_text(tokenizer, token_ids: list[int], labels: list[int]) -> str:
    return tokenizer.decode([t for t, label in zip(token_ids, labels, strict=True) if label != IGNORE_INDEX])


def test_prompt_response_masks_the_prompt_and_trains_response_and_end(tiny_qwen2_lm: Path):
    tokenizer = tokenizer_of(tiny_qwen2_lm)
    sft = SftConfig(prompt_column="p", response_column="r", system_column="s")
    token_ids, labels = encode({"p": "what colour is the sky?", "r": "blue", "s": "answer in one word"}, sft, tokenizer)
    prompt = ids(tokenizer, "answer in one word\n\nwhat colour is the sky?\n")
    response = ids(tokenizer, "blue") + [tokenizer.eos_token_id]
    assert token_ids == prompt + response
    assert labels == [IGNORE_INDEX] * len(prompt) + response
    assert tokenizer.decode(token_ids) == "answer in one word\n\nwhat colour is the sky?\nblue<|endoftext|>"
    assert trained_text(tokenizer, token_ids, labels) == "blue<|endoftext|>"


def test_llama_gets_its_beginning_of_text_token_unlabelled(tiny_llama_lm: Path):
    tokenizer = tokenizer_of(tiny_llama_lm)
    sft = SftConfig(prompt_column="p", response_column="r")
    token_ids, labels = encode({"p": "sky", "r": "blue"}, sft, tokenizer)
    prompt = ids(tokenizer, "sky\n")
    assert token_ids == [tokenizer.bos_token_id, *prompt, *ids(tokenizer, "blue"), tokenizer.eos_token_id]
    assert labels[: 1 + len(prompt)] == [IGNORE_INDEX] * (1 + len(prompt))
    assert trained_text(tokenizer, token_ids, labels) == "blue<|endoftext|>"


def test_completion_only_loss_false_trains_every_token(tiny_qwen2_lm: Path):
    tokenizer = tokenizer_of(tiny_qwen2_lm)
    sft = SftConfig(prompt_column="p", response_column="r", completion_only_loss=False)
    token_ids, labels = encode({"p": "sky", "r": "blue"}, sft, tokenizer)
    assert labels == token_ids == ids(tokenizer, "sky\n") + ids(tokenizer, "blue") + [tokenizer.eos_token_id]


def test_plain_text_is_trained_whole(tiny_qwen2_lm: Path):
    tokenizer = tokenizer_of(tiny_qwen2_lm)
    token_ids, labels = encode({"t": "the grass is green"}, SftConfig(text_column="t"), tokenizer)
    assert token_ids == labels == ids(tokenizer, "the grass is green") + [tokenizer.eos_token_id]


@pytest.mark.parametrize("extra", ["", "the sky"])
def test_alpaca_renders_its_prompt_and_trains_the_output(tiny_qwen2_lm: Path, extra: str):
    tokenizer = tokenizer_of(tiny_qwen2_lm)
    sft = SftConfig(instruction_column="i", input_column="x", output_column="o")
    token_ids, labels = encode({"i": "name the colour", "x": extra, "o": "blue"}, sft, tokenizer)
    prompt = (ALPACA_PROMPT.format(instruction="name the colour", input=extra) if extra
              else ALPACA_PROMPT_NO_INPUT.format(instruction="name the colour"))
    assert token_ids == ids(tokenizer, prompt) + ids(tokenizer, "blue") + [tokenizer.eos_token_id]
    assert labels == [IGNORE_INDEX] * len(ids(tokenizer, prompt)) + ids(tokenizer, "blue") + [tokenizer.eos_token_id]


def test_conversation_trains_every_assistant_turn_with_its_end_of_turn(tiny_qwen2_lm: Path):
    tokenizer = tokenizer_of(tiny_qwen2_lm)
    messages = [{"role": "system", "content": "answer in one word"}, {"role": "user", "content": "sky?"},
                {"role": "assistant", "content": "blue"}, {"role": "user", "content": "grass?"},
                {"role": "assistant", "content": "green"}]
    token_ids, labels = encode({"m": messages}, SftConfig(messages_column="m"), tokenizer)
    pieces = [("<|im_start|>system\nanswer in one word<|im_end|>\n<|im_start|>user\nsky?<|im_end|>\n<|im_start|>assistant\n", False),
              ("blue<|im_end|>\n", True), ("<|im_start|>user\ngrass?<|im_end|>\n<|im_start|>assistant\n", False),
              ("green<|im_end|>\n", True)]
    assert token_ids == [t for text, _ in pieces for t in ids(tokenizer, text)]
    assert labels == [t if trained else IGNORE_INDEX for text, trained in pieces for t in ids(tokenizer, text)]
    assert tokenizer.decode(token_ids) == tokenizer.apply_chat_template(messages, tokenize=False)
    assert trained_text(tokenizer, token_ids, labels) == "blue<|im_end|>\ngreen<|im_end|>\n"


def test_prompt_response_columns_through_the_chat_template(tiny_llama_lm: Path):
    tokenizer = tokenizer_of(tiny_llama_lm)
    sft = SftConfig(prompt_column="p", response_column="r", system_column="s", use_chat_template=True)
    token_ids, labels = encode({"p": "sky?", "r": "blue", "s": None}, sft, tokenizer)
    prompt = "<|im_start|>user\nsky?<|im_end|>\n<|im_start|>assistant\n"
    assert token_ids == ids(tokenizer, prompt) + ids(tokenizer, "blue<|im_end|>\n")
    assert trained_text(tokenizer, token_ids, labels) == "blue<|im_end|>\n"
    assert labels[: len(ids(tokenizer, prompt))] == [IGNORE_INDEX] * len(ids(tokenizer, prompt))


def test_bad_messages_are_errors_naming_the_column_and_row(tiny_qwen2_lm: Path):
    tokenizer = tokenizer_of(tiny_qwen2_lm)
    sft = SftConfig(messages_column="m")
    with pytest.raises(DataError, match=r"sft.messages_column: row 0 has role 'robot'"):
        encode({"m": [{"role": "robot", "content": "x"}]}, sft, tokenizer)
    with pytest.raises(DataError, match=r"sft.messages_column: row 0 of column 'm' is not a list"):
        encode({"m": "hello"}, sft, tokenizer)


def test_a_tokenizer_without_chat_template_is_an_error_naming_the_key(tiny_qwen2_lm: Path):
    from kubetune.data.sft import check_sft_tokenizer

    tokenizer = tokenizer_of(tiny_qwen2_lm)
    tokenizer.chat_template = None
    with pytest.raises(KubetuneError, match=r"^sft.messages_column: the tokenizer of tiny has no chat template; set sft.chat_template"):
        check_sft_tokenizer(tokenizer, SftConfig(messages_column="m", max_seq_length=64), "tiny")
    check_sft_tokenizer(tokenizer, SftConfig(messages_column="m", max_seq_length=64, chat_template="{{ messages[0]['content'] }}"), "tiny")
    assert tokenizer.chat_template == "{{ messages[0]['content'] }}"
    with pytest.raises(KubetuneError, match=r"sft.max_seq_length is 4096 but 'tiny' takes at most 512"):
        check_sft_tokenizer(tokenizer, SftConfig(text_column="t", max_seq_length=4096), "tiny")


def test_encode_rows_cuts_at_max_seq_length_and_counts_trained_tokens(tiny_qwen2_lm: Path):
    tokenizer = tokenizer_of(tiny_qwen2_lm)
    sft = SftConfig(prompt_column="p", response_column="r", max_seq_length=12)
    batch = {"p": ["sky", "what colour is the apple, the banana and the grass?"], "r": ["blue", "red"]}
    out = encode_rows(batch, [0, 1], tokenizer=tokenizer, sft=sft)
    full = [len(ids(tokenizer, "sky\n") + ids(tokenizer, "blue")) + 1,
            len(ids(tokenizer, "what colour is the apple, the banana and the grass?\n") + ids(tokenizer, "red")) + 1]
    assert out["full_length"] == full and full[0] <= 12 < full[1]
    assert out["length"] == [full[0], 12]
    assert [len(x) for x in out["input_ids"]] == [len(x) for x in out["labels"]] == out["length"]
    assert out["trained"] == [len(ids(tokenizer, "blue")) + 1, 0]  # the long prompt leaves no response token


def test_packing_restarts_positions_at_each_example_and_row():
    examples = [([1, 2, 3], [-100, 2, 3]), ([4, 5, 6, 7], [-100, -100, 6, 7]), ([8, 9], [8, 9])]
    rows = list(pack_examples(examples, max_seq_length=4))
    assert [row["input_ids"] for row in rows] == [[1, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert [row["position_ids"] for row in rows] == [[0, 1, 2, 0], [0, 1, 2, 0], [0]]
    # The first token of each example (and of each row: nothing precedes it there) has no label, so no token
    # learns to predict across an example boundary.
    assert [row["labels"] for row in rows] == [[-100, 2, 3, -100], [-100, 6, 7, -100], [-100]]
    assert [row["length"] for row in rows] == [4, 4, 1]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("fixture", ["tiny_qwen2_lm", "tiny_llama_lm"])
def test_a_packed_row_attends_within_each_example(fixture: str, attention: str, request: pytest.FixtureRequest):
    from transformers import AutoModelForCausalLM

    from kubetune.train.causal_lm import SftCollator

    path = request.getfixturevalue(fixture)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention).eval()
    model.config.use_cache = False
    first, second = [5, 17, 23, 42, 8], [9, 31, 12]
    row = next(pack_examples([(first, first), (second, second)], max_seq_length=16))
    batch = SftCollator(pad_token_id=0)([row, {**row, "input_ids": first, "labels": first, "position_ids": [0, 1, 2, 3, 4]}])
    assert "attention_mask" not in batch
    assert batch["position_ids"][1].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]  # padding forms an example of its own
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        alone = [model(input_ids=torch.tensor([x])).logits[0] for x in (first, second)]
    torch.testing.assert_close(packed[0, :5], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[0, 5:8], alone[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[1, :5], alone[0], atol=1e-5, rtol=1e-4)


def test_collator_pads_labels_with_ignore_and_masks_padding():
    from kubetune.train.causal_lm import SftCollator

    batch = SftCollator(pad_token_id=0, pad_to_multiple_of=4)([
        {"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "attention_mask": [1, 1, 1]},
        {"input_ids": [8], "labels": [8], "attention_mask": [1]},
    ])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 0], [8, 0, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [8, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 0, 0, 0]]


def test_predict_prompts_are_the_training_prompts(tiny_qwen2_lm: Path, tiny_llama_lm: Path):
    from kubetune.generation import prompt_ids

    qwen, llama = tokenizer_of(tiny_qwen2_lm), tokenizer_of(tiny_llama_lm)
    assert prompt_ids({"p": "sky", "r": None}, SftConfig(prompt_column="p", response_column="r"), qwen, 0) == ids(qwen, "sky\n")
    assert prompt_ids({"p": "sky"}, SftConfig(prompt_column="p", response_column="r"), llama, 0) == [llama.bos_token_id, *ids(llama, "sky\n")]
    alpaca = SftConfig(instruction_column="i", output_column="o")
    assert prompt_ids({"i": "name it"}, alpaca, qwen, 0) == ids(qwen, ALPACA_PROMPT_NO_INPUT.format(instruction="name it"))
    messages = [{"role": "user", "content": "sky?"}, {"role": "assistant", "content": "blue"}]
    expected = ids(qwen, "<|im_start|>user\nsky?<|im_end|>\n<|im_start|>assistant\n")
    assert prompt_ids({"m": messages}, SftConfig(messages_column="m"), qwen, 0) == expected
    chat_columns = SftConfig(prompt_column="p", response_column="r", use_chat_template=True)
    assert prompt_ids({"p": "sky?"}, chat_columns, qwen, 0) == expected
    assert prompt_ids({"t": "the sky is"}, SftConfig(text_column="t"), qwen, 0) == ids(qwen, "the sky is")
