"""`task: sft` data: rows in one of the SFT formats → token ids and labels, optionally packed.

Rendering. Each row becomes a list of text segments, each trained or not:
- plain text (`sft.text_column`): the text, trained, then the end-of-text token;
- prompt/response (`sft.prompt_column`, `sft.response_column`, optional `sft.system_column`):
  `"{system}\\n\\n{prompt}\\n"` (the prompt), then the response and the end-of-text token (trained);
- Alpaca (`sft.instruction_column`, `sft.output_column`, optional `sft.input_column`): the Alpaca prompt
  (ALPACA_PROMPT / ALPACA_PROMPT_NO_INPUT), then the output and the end-of-text token;
- conversation (`sft.messages_column`, or the prompt/response columns with `sft.use_chat_template`):
  the tokenizer's chat template (or `sft.chat_template`); each assistant turn, as the template writes it
  after the generation prompt (its end-of-turn token included), is trained, the rest is not.
Segments are tokenized one by one and concatenated, so the boundary between prompt and response is
exact: with `completion_only_loss` (the default except for plain text) the prompt's tokens get label
-100. An example longer than `sft.max_seq_length` is cut at it; one left with no trained token (a prompt
that fills the whole length) is dropped, and counted.

Packing (`sft.packing`). `concatenate` (at tokenize time): the train split's examples are laid end to end
and cut into rows of exactly `max_seq_length` tokens (the last one shorter); `position_ids` restart at 0
where each example starts (and at each row's start), and the rows carry no attention mask, so
transformers' attention keeps each token within its own example (kubetune.train.causal_lm). `flatten`
(at collate time): rows stay single examples and each batch becomes one row
(DataCollatorWithFlattening). Validation and test are never packed: each of their rows is one example.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kubetune.errors import DataError, KubetuneError

if TYPE_CHECKING:
    import pandas as pd
    from transformers import PreTrainedTokenizerBase

    from kubetune.config import RunConfig, SftConfig, StorageConfig

IGNORE_INDEX = -100  # the label transformers' causal LM loss skips
ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
ROLES = ("system", "user", "assistant")
TEXT_SUFFIXES = (".txt", ".text")

Segments = list[tuple[str, bool]]  # (text, trained)


# ------------------------------------------------------------------------------------------ loading
def source_uris(config: RunConfig) -> list[tuple[str, str]]:
    """(config key, URI) of each input of the train data: `data.sources`, else `data.uri`."""
    if config.data.sources:
        return [(f"data.sources.{i}", uri) for i, uri in enumerate(config.data.sources)]
    if config.data.uri:
        return [("data.uri", config.data.uri)]
    raise DataError("data.uri: no data given; set data.uri or data.sources")


def load_source(uri: str, key: str, config: RunConfig) -> pd.DataFrame:
    """One input as rows: a .txt file (one row per line, column `text`), a directory of files (concatenated
    in name order), or whatever kubetune.data.load reads (CSV, Parquet, JSON Lines, a saved HF dataset)."""
    import pandas as pd

    from kubetune import storage
    from kubetune.data.load import HF_DATASET_FILES, check_exists, load_table

    is_dir = check_exists(uri, key, config.storage)
    if is_dir and config.data.format in ("auto", "hf") and not _is_hf_dataset(uri, config.storage, HF_DATASET_FILES):
        fs, path = storage.filesystem(storage.normalize_uri(uri), config.storage)
        files = sorted(p for p in fs.find(path) if not p.rsplit("/", 1)[-1].startswith((".", "_")))
        if not files:
            raise DataError(f"{key}: the directory {uri} holds no files")
        prefix = uri.rstrip("/")
        parts = [load_source(f"{prefix}/{p[len(path.rstrip('/')) + 1:]}", key, config) for p in files]
        return align_columns(parts, [f"{key} {prefix}/{p[len(path.rstrip('/')) + 1:]}" for p in files])
    if not is_dir and uri.lower().removesuffix(".gz").endswith(TEXT_SUFFIXES):
        fs, path = storage.filesystem(storage.normalize_uri(uri), config.storage)
        data = storage.with_retries(lambda: fs.cat_file(path), f"reading {uri}", config=config.storage)
        if uri.lower().endswith(".gz"):
            import gzip

            data = gzip.decompress(data)
        lines = [line for line in data.decode("utf-8").splitlines() if line.strip()]
        if not lines:
            raise DataError(f"{key}: {uri} has no lines of text")
        return pd.DataFrame({"text": pd.Series(lines, dtype="string[pyarrow]")})
    return load_table(uri, key, config.data.format, config.storage,
                      config.data.max_rows if key.startswith(("data.uri", "data.sources")) else None)


def _is_hf_dataset(uri: str, storage_config: StorageConfig, markers: Sequence[str]) -> bool:
    from kubetune import storage

    fs, path = storage.filesystem(storage.normalize_uri(uri), storage_config)
    return any(fs.exists(f"{path.rstrip('/')}/{name}") for name in markers)


def align_columns(frames: Sequence[pd.DataFrame], names: Sequence[str]) -> pd.DataFrame:
    """The frames one after the other, columns in the first one's order; a frame whose columns differ is an
    error naming it (and the columns it lacks or adds)."""
    import pandas as pd

    first = [str(c) for c in frames[0].columns]
    for frame, name in zip(frames[1:], names[1:], strict=True):
        columns = [str(c) for c in frame.columns]
        if set(columns) != set(first):
            lacks = [c for c in first if c not in columns]
            extra = [c for c in columns if c not in first]
            detail = "; ".join(part for part in (f"lacks {', '.join(lacks)}" if lacks else "",
                                                 f"adds {', '.join(extra)}" if extra else "") if part)
            raise DataError(f"{name}: its columns differ from those of {names[0]} ({detail}); give every input the same columns")
    return pd.concat([frame[first] for frame in frames], ignore_index=True)


def format_columns(sft: SftConfig) -> dict[str, str]:
    """Config key → column of the configured format (the optional ones only when set)."""
    from kubetune.config import SFT_FORMATS

    keys = SFT_FORMATS[sft.format] if sft.format else ()
    return {f"sft.{key}": getattr(sft, key) for key in keys if getattr(sft, key) is not None}


# ---------------------------------------------------------------------------------------- rendering
def tokenizer_digest(source: Path) -> str:
    """The tokenizer files' hash with the chat template file (it decides how conversations are tokenized)."""
    import hashlib

    from kubetune.data.tokenization import CHAT_TEMPLATE_FILES, tokenizer_files_digest

    digest = hashlib.sha256(tokenizer_files_digest(source).encode())
    for name in CHAT_TEMPLATE_FILES:
        if (source / name).is_file():
            digest.update(f"{name}\0".encode())
            digest.update((source / name).read_bytes())
    return digest.hexdigest()[:16]


def check_sft_tokenizer(tokenizer: PreTrainedTokenizerBase, sft: SftConfig, tokenizer_name: str) -> None:
    """The tokenizer fits the format: the chat template it needs (`sft.chat_template`, set on the tokenizer, or
    the tokenizer's own), an end-of-text token, and room for `sft.max_seq_length` tokens."""
    limit = tokenizer.model_max_length
    if limit < 10**12 and sft.max_seq_length > limit:
        raise KubetuneError(f"sft.max_seq_length is {sft.max_seq_length} but {tokenizer_name!r} takes at most {limit} "
                            f"tokens; lower sft.max_seq_length to {limit} or less")
    if not sft.renders_chat and tokenizer.eos_token_id is None:
        raise KubetuneError(f"sft: the tokenizer of {tokenizer_name} has no end-of-text token to end each example with; "
                            "use a tokenizer that has one, or a conversation format (sft.messages_column)")
    if sft.chat_template:
        tokenizer.chat_template = sft.chat_template
    if sft.renders_chat and not getattr(tokenizer, "chat_template", None):
        key = "sft.messages_column" if sft.format == "conversation" else "sft.use_chat_template"
        raise KubetuneError(f"{key}: the tokenizer of {tokenizer_name} has no chat template; set sft.chat_template "
                            "to a Jinja template, or use a tokenizer that has one")


def messages_of(row: Mapping[str, Any], sft: SftConfig, index: int) -> list[dict[str, str]]:
    """The row as chat messages: its `messages_column`, or system/prompt/response columns."""
    if sft.format == "conversation":
        raw = row[sft.messages_column]
        if raw is None or isinstance(raw, (str, bytes)) or not hasattr(raw, "__iter__"):
            raise DataError(f"sft.messages_column: row {index} of column {sft.messages_column!r} is not a list of "
                            f"{{role, content}} messages (got {type(raw).__name__})")
        messages = []
        for message in raw:
            if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
                raise DataError(f"sft.messages_column: row {index} holds a message without role and content: {message!r}")
            if message["role"] not in ROLES:
                raise DataError(f"sft.messages_column: row {index} has role {message['role']!r}; roles are {', '.join(ROLES)}")
            messages.append({"role": str(message["role"]), "content": _text(message["content"])})
        return messages
    system = _text(row[sft.system_column]) if sft.system_column else ""
    return [*([{"role": "system", "content": system}] if system else []),
            {"role": "user", "content": _text(row[sft.prompt_column])},
            {"role": "assistant", "content": _text(row[sft.response_column])}]


def chat_segments(messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase) -> Segments:
    """The conversation as the chat template writes it, each assistant turn trained (everything else not).

    Turn i's text is what rendering messages[:i+1] adds to rendering messages[:i] with the generation
    prompt: the template must write a conversation as the extension of its beginning (ChatML, Llama's and
    Qwen's templates do).
    """
    def render(part: list[dict[str, str]], generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(part, tokenize=False, add_generation_prompt=generation_prompt)

    segments: Segments = []
    done = ""
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt, full = render(messages[:i], True), render(messages[: i + 1], False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise KubetuneError("sft.chat_template: the chat template does not write a conversation as the extension of "
                                "its beginning, so the assistant turns cannot be told apart; use a ChatML-like template")
        segments += [(prompt[len(done):], False), (full[len(prompt):], True)]
        done = full
    final = render(messages, False)
    if final.startswith(done) and len(final) > len(done):
        segments.append((final[len(done):], False))
    return [(text, trained) for text, trained in segments if text]


def render_segments(row: Mapping[str, Any], sft: SftConfig, tokenizer: PreTrainedTokenizerBase, index: int) -> Segments:
    """One row of the configured format as (text, trained) segments (see the module docstring)."""
    if sft.renders_chat:
        return chat_segments(messages_of(row, sft, index), tokenizer)
    if sft.format == "text":
        return [(_text(row[sft.text_column]), True)]
    if sft.format == "prompt_response":
        system = _text(row[sft.system_column]) if sft.system_column else ""
        prompt = (f"{system}\n\n" if system else "") + _text(row[sft.prompt_column]) + "\n"
        return [(prompt, False), (_text(row[sft.response_column]), True)]
    instruction = _text(row[sft.instruction_column])
    extra = _text(row[sft.input_column]) if sft.input_column else ""
    prompt = (ALPACA_PROMPT.format(instruction=instruction, input=extra) if extra
              else ALPACA_PROMPT_NO_INPUT.format(instruction=instruction))
    return [(prompt, False), (_text(row[sft.output_column]), True)]


def _text(value: Any) -> str:
    if value is None:
        return ""
    try:
        if value != value:  # NaN
            return ""
    except (TypeError, ValueError):
        pass
    return str(value)


def encode_example(segments: Segments, tokenizer: PreTrainedTokenizerBase, sft: SftConfig) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one rendered example, before truncation. Formats without a chat template get the
    tokenizer's beginning-of-text token (when it adds one) and an end-of-text token, trained: the model learns
    to stop."""
    ids: list[int] = []
    labels: list[int] = []
    if not sft.renders_chat:
        bos = tokenizer.bos_token_id
        if bos is not None and tokenizer("a", add_special_tokens=True).input_ids[:1] == [bos]:
            ids.append(bos)
            labels.append(IGNORE_INDEX)
    for text, trained in segments:
        piece = tokenizer(text, add_special_tokens=False).input_ids
        ids += piece
        labels += piece if trained or not sft.masks_prompt else [IGNORE_INDEX] * len(piece)
    if not sft.renders_chat:
        ids.append(tokenizer.eos_token_id)
        labels.append(tokenizer.eos_token_id)
    return ids, labels


def encode_rows(batch: Mapping[str, list], indices: Sequence[int] | None = None, *, tokenizer: PreTrainedTokenizerBase,
                sft: SftConfig) -> dict[str, list]:
    """datasets.map function (batched, with_indices): input_ids, attention_mask and labels cut at
    `max_seq_length`, `length` (stored tokens), `full_length` (before the cut), `trained` (tokens with a label)."""
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": [], "length": [], "full_length": [], "trained": []}
    rows = len(next(iter(batch.values())))
    indices = indices if indices is not None else range(rows)
    for i, index in zip(range(rows), indices, strict=True):
        row = {name: values[i] for name, values in batch.items()}
        ids, labels = encode_example(render_segments(row, sft, tokenizer, int(index)), tokenizer, sft)
        full = len(ids)
        ids, labels = ids[: sft.max_seq_length], labels[: sft.max_seq_length]
        out["input_ids"].append(ids)
        out["attention_mask"].append([1] * len(ids))
        out["labels"].append(labels)
        out["length"].append(len(ids))
        out["full_length"].append(full)
        out["trained"].append(sum(1 for label in labels if label != IGNORE_INDEX))
    return out


# ------------------------------------------------------------------------------------------ packing
def pack_examples(examples: Sequence[tuple[Sequence[int], Sequence[int]]], max_seq_length: int) -> Iterator[dict[str, list[int]]]:
    """Concatenate-and-split: rows of `max_seq_length` tokens (the last shorter) from examples laid end to end,
    with position_ids restarting at 0 at each example's first token and at each row's first token.

    Each example's first token gets label -100: in a row of its own that label is never used (a causal LM
    predicts token t from those before it), and packed it would make the previous example's last token
    learn to predict the next example's first."""
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for example_ids, example_labels in examples:
        position = 0
        for token, label in zip(example_ids, example_labels, strict=True):
            if len(ids) == max_seq_length:
                yield {"input_ids": ids, "labels": labels, "position_ids": positions, "length": len(ids)}
                ids, labels, positions = [], [], []
                position = 0  # a row never looks back into the previous one: its piece starts afresh
            ids.append(token)
            labels.append(label if position > 0 else IGNORE_INDEX)
            positions.append(position)
            position += 1
    if ids:
        yield {"input_ids": ids, "labels": labels, "position_ids": positions, "length": len(ids)}


def pack_split(split: Any, max_seq_length: int) -> Any:
    """A tokenized split packed by `pack_examples` (columns input_ids, labels, position_ids, length)."""
    import datasets

    rows = list(pack_examples(zip(split["input_ids"], split["labels"], strict=True), max_seq_length))
    return datasets.Dataset.from_dict({name: [row[name] for row in rows] for name in ("input_ids", "labels", "position_ids", "length")})


# -------------------------------------------------------------------------------------- diagnostics
def decoded_samples(split: Any, tokenizer: PreTrainedTokenizerBase, size: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """`size` rows decoded, the trained part shown after the prompt (`decoded`), for the tokenize summary."""
    if size == 0 or len(split) == 0:
        return []
    chosen = np.sort(rng.choice(len(split), size=min(size, len(split)), replace=False))
    samples = []
    for index in chosen.tolist():
        row = split[index]
        trained = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != IGNORE_INDEX]
        samples.append({
            "index": index,
            "label": f"{len(trained)} trained tokens",
            "tokens": len(row["input_ids"]),
            "truncated": bool(row["full_length"] > len(row["input_ids"])),
            "decoded": tokenizer.decode(row["input_ids"], skip_special_tokens=False),
            "trained": tokenizer.decode(trained, skip_special_tokens=False),
        })
    return samples
