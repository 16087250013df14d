"""Tokenize: texts → token ids with the model's fast tokenizer, plus diagnostics of the lengths.

Sequences are stored unpadded (batches are padded at training time, to the longest sequence of each
batch) unless `tokenize.padding: max_length`. Texts longer than `tokenize.max_length` are cut; the
diagnostics count them from the lengths *before* truncation, so the percentiles show what a larger
`max_length` would keep. The `length` column holds the tokens stored for the row (after truncation,
padding not counted); trainers use it to group rows of similar length.

Decoder-only tokenizers (Qwen and the like) have no pad token. Unpadded sequences don't need one;
`padding: max_length` pads with the end-of-text token, as these models' own generation configs do
(the attention mask marks the padding, so its id never matters).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from kubetune import storage
from kubetune.errors import KubetuneError, short_reason

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from kubetune.config import RunConfig

# What AutoTokenizer reads from a model directory; fetched alone from object storage (not the weights).
TOKENIZER_FILES = (
    "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "tokenizer.model",
)
# Where newer tokenizers keep their chat template (task: sft renders conversations with it); fetched with the
# tokenizer files, hashed only by task: sft (kubetune.data.sft.tokenizer_digest).
CHAT_TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")
# model_max_length of tokenizers that don't know theirs (transformers' VERY_LARGE_INTEGER).
_UNKNOWN_MAX_LENGTH = 10**12


def tokenizer_key(config: RunConfig) -> str:
    """The config key that names the tokenizer, for messages."""
    return "tokenize.model_name" if config.tokenize.model_name else "model.name"


def tokenizer_source(config: RunConfig, scratch: Path) -> Path:
    """A local directory with the tokenizer files of `config.tokenizer_name`, without importing transformers.

    A local directory or packaged model (the embedded MiniLM) is used where it is; from object
    storage only the tokenizer files are fetched (not the weights); a hub id comes from the local
    Hugging Face cache (or the hub, where one is reachable).
    """
    from kubetune.hub import resolve_model_path

    name, key = config.tokenizer_name, tokenizer_key(config)
    if storage.is_remote(storage.normalize_uri(name)):
        return _fetch_tokenizer_files(name, scratch / "tokenizer", config)
    resolved = Path(resolve_model_path(name))
    if resolved.is_dir():
        return resolved
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=[*TOKENIZER_FILES, *CHAT_TEMPLATE_FILES]))
    except (OSError, ValueError) as exc:  # huggingface_hub's not-cached, unknown-repo, HTTP and bad-id errors
        detail = short_reason(exc)
        raise KubetuneError(
            f"{key}: tokenizer {name!r} is neither a local directory nor available offline ({detail}); "
            "give a local model directory, an s3:// model directory or a model in the Hugging Face cache"
        ) from None


def tokenizer_files_digest(source: Path) -> str:
    """A hash of the tokenizer files in `source` (config.json left out: it describes the model, not the tokens)."""
    digest = hashlib.sha256()
    for name in sorted(TOKENIZER_FILES):
        path = source / name
        if name != "config.json" and path.is_file():
            digest.update(f"{name}\0".encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def load_tokenizer(config: RunConfig, source: Path) -> PreTrainedTokenizerBase:
    """The fast tokenizer in `source`, checked against the tokenize settings."""
    from transformers import AutoTokenizer

    name, key = config.tokenizer_name, tokenizer_key(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), use_fast=True, trust_remote_code=config.model.trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        detail = short_reason(exc)
        raise KubetuneError(f"{key}: cannot load a tokenizer from {name!r} ({detail}); point {key} at a model directory") from None
    if not tokenizer.is_fast:
        raise KubetuneError(f"{key}: {name!r} has no fast tokenizer (tokenizer.json); choose a model that ships one")
    max_length = config.tokenize.max_length
    if tokenizer.model_max_length < _UNKNOWN_MAX_LENGTH and max_length > tokenizer.model_max_length:
        raise KubetuneError(
            f"tokenize.max_length is {max_length} but {name!r} takes at most {tokenizer.model_max_length} tokens; "
            f"lower tokenize.max_length to {tokenizer.model_max_length} or less"
        )
    if config.tokenize.padding == "max_length" and tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise KubetuneError(
                f"tokenize.padding: max_length needs a pad token and {name!r} has none (nor an end-of-text token); "
                "set tokenize.padding: false (batches are padded at training time)"
            )
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _fetch_tokenizer_files(uri: str, target: Path, config: RunConfig) -> Path:
    fs, path = storage.filesystem(uri, config.storage)
    target.mkdir(parents=True, exist_ok=True)
    names = [p.rsplit("/", 1)[-1] for p in storage.with_retries(lambda: fs.ls(path, detail=False), f"listing {uri}", config=config.storage)]
    wanted = [n for n in names if n in TOKENIZER_FILES or n in CHAT_TEMPLATE_FILES]
    if "tokenizer_config.json" not in wanted:
        raise KubetuneError(f"{tokenizer_key(config)}: {uri} holds no tokenizer files (tokenizer_config.json); point it at a model directory")
    for name in wanted:
        storage.with_retries(lambda n=name: fs.get(f"{path.rstrip('/')}/{n}", str(target / n)), f"downloading {name}", config=config.storage)
    return target


def encode_batch(
    batch: Mapping[str, list], tokenizer: PreTrainedTokenizerBase, max_length: int, truncation: bool, pad: bool
) -> dict[str, list]:
    """datasets.map function (batched): token ids, `length` (stored tokens), `full_length` (before truncation).

    The batch is tokenized whole, without truncation, which gives the full lengths; only the rows
    that are too long are tokenized again with truncation, so the tokenizer's own rule decides
    what a cut sequence looks like (special tokens kept at the end).
    """
    texts = batch["text"]
    encoded = tokenizer(texts, truncation=False, padding=False, verbose=False)
    full_lengths = [len(ids) for ids in encoded["input_ids"]]
    too_long = [i for i, n in enumerate(full_lengths) if n > max_length]
    if truncation and too_long:
        cut = tokenizer([texts[i] for i in too_long], truncation=True, max_length=max_length, padding=False, verbose=False)
        for name in encoded:
            for j, i in enumerate(too_long):
                encoded[name][i] = cut[name][j]
    lengths = [len(ids) for ids in encoded["input_ids"]]
    if pad:
        encoded = tokenizer.pad(encoded, padding="max_length", max_length=max_length)
    return {**{name: list(values) for name, values in encoded.items()}, "length": lengths, "full_length": full_lengths}


def percentile_name(value: float) -> str:
    return f"p{value:g}"


def split_diagnostics(
    full_lengths: np.ndarray,
    max_length: int,
    percentiles: Sequence[float],
) -> dict[str, Any]:
    """Token-length statistics of one split, from the lengths before truncation."""
    rows = int(len(full_lengths))
    if rows == 0:
        return {"rows": 0, "mean": None, "max": None, "percentiles": {percentile_name(p): None for p in percentiles},
                "truncated_rows": 0, "truncation_rate": 0.0}
    truncated = int((full_lengths > max_length).sum())
    values = np.percentile(full_lengths, list(percentiles)) if percentiles else []
    return {
        "rows": rows,
        "mean": round(float(full_lengths.mean()), 2),
        "max": int(full_lengths.max()),
        "percentiles": {percentile_name(p): round(float(v), 2) for p, v in zip(percentiles, values, strict=True)},
        "truncated_rows": truncated,
        "truncation_rate": round(truncated / rows, 6),
    }


def decoded_samples(
    dataset, tokenizer: PreTrainedTokenizerBase, label_names: Sequence[str], size: int, rng: np.random.Generator
) -> list[dict[str, Any]]:
    """`size` rows chosen with `rng`, decoded from the stored ids (special tokens shown, padding not)."""
    if size == 0 or len(dataset) == 0:
        return []
    chosen = np.sort(rng.choice(len(dataset), size=min(size, len(dataset)), replace=False))
    samples = []
    for index in chosen.tolist():
        row = dataset[index]
        ids = [t for t, m in zip(row["input_ids"], row["attention_mask"], strict=True) if m]
        samples.append({
            "index": index,
            "label": label_names[row["labels"]],
            "tokens": len(ids),
            "truncated": bool(row["full_length"] > len(ids)),
            "decoded": tokenizer.decode(ids, skip_special_tokens=False),
        })
    return samples


def diagnostics_rows(diagnostics: Mapping[str, Any]) -> tuple[list[str], list[list[object]]]:
    """Headers and rows of the token-length table (one row per split)."""
    names = [percentile_name(p) for p in diagnostics["percentiles"]]
    headers = ["split", "rows", "mean", *names, "max", "truncated"]
    rows = []
    for split, stats in diagnostics["splits"].items():
        rows.append([
            split, stats["rows"], _or_dash(stats["mean"]), *(_or_dash(stats["percentiles"][n]) for n in names),
            _or_dash(stats["max"]), f"{100 * stats['truncation_rate']:.2f}%",
        ])
    return headers, rows


def _or_dash(value: object) -> object:
    return "-" if value is None else value


def diagnostics_markdown(diagnostics: Mapping[str, Any]) -> str:
    """The diagnostics as Markdown (for a KFP Output[Markdown]): a table of token lengths, then the samples."""
    headers, rows = diagnostics_rows(diagnostics)
    lines = [
        f"### Token lengths: `{diagnostics['tokenizer']}`, max_length {diagnostics['max_length']}",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_markdown_cell(v) for v in row) + " |")
    lines += ["", "Lengths are counted before truncation; `truncated` is the share of rows cut at max_length."]
    samples = [(split, s) for split, stats in diagnostics["splits"].items() for s in stats.get("samples", [])]
    if samples:
        lines += ["", "### Decoded samples"]
        for split, sample in samples:
            cut = ", truncated" if sample["truncated"] else ""
            fence = "````" if "```" in sample["decoded"] else "```"
            lines += [
                "",
                f"**{split}** row {sample['index']}, label `{sample['label']}`, {sample['tokens']} tokens{cut}",
                "",
                f"{fence}text",
                sample["decoded"],
                fence,
            ]
    return "\n".join(lines) + "\n"


def _markdown_cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")

