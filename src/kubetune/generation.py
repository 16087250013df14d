"""`kubetune predict` for a model trained with `task: sft`: a completion generated for each row of a file.

Each row's prompt is rendered exactly as in training (kubetune.data.sft): the prompt part of the prompt/response or
Alpaca format, the conversation up to the assistant's turn with the chat template's generation prompt, or the whole
text of the plain format (continued). Greedy decoding, up to `sft.max_new_tokens` new tokens, stopping at the model's
end-of-text (or end-of-turn) token. The output Parquet holds the row's format columns, `completion`, and, when the
rows carry the expected response, `exact_match` (the completion, stripped, equals it). The rendering settings are
the model's own (model_metadata.json's `inference` entry: `sft_settings`), so a model from the registry renders as it
was trained whatever the config says beyond its format; `completions` is what the MLflow model (kubetune.serving)
runs too.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune import storage
from kubetune.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from kubetune.config import RunConfig, SftConfig


def sft_settings(metadata: dict[str, Any], reference: str = "--model") -> SftConfig:
    """The `sft` settings a model was trained with (format, columns, chat template use, prompt masking,
    max_seq_length), from its model_metadata.json's `inference` entry."""
    from kubetune.config import SftConfig

    spec = metadata.get("inference") or {}
    if metadata.get("task") != "sft" or spec.get("task") != "sft" or not spec.get("columns"):
        raise DataError(f"{reference}: its model_metadata.json does not say how it renders rows (no sft `inference` "
                        "entry); give a model trained by `kubetune train` with task: sft")
    fields: dict[str, Any] = {key.removeprefix("sft."): column for key, column in spec["columns"].items()}
    if spec.get("chat_template") and spec.get("format") != "conversation":
        fields["use_chat_template"] = True
    if "completion_only_loss" in spec:  # recorded since the champion gate scores loss (the format's default before)
        fields["completion_only_loss"] = bool(spec["completion_only_loss"])
    return SftConfig(**fields, max_seq_length=int(spec.get("max_seq_length") or metadata.get("max_length")))


def input_columns(sft: SftConfig) -> list[str]:
    """The columns a prompt is rendered from: the format's columns but the expected answer."""
    from kubetune.data.sft import format_columns

    return list(dict.fromkeys(c for c in format_columns(sft).values() if c != expected_column(sft)))


def completions(model: Any, tokenizer: Any, sft: SftConfig, frame: pd.DataFrame, max_new_tokens: int,
                batch_size: int) -> list[str]:
    """A greedy completion of each row of `frame` (the prompt columns of `sft`'s format), in order."""
    prompts = [prompt_ids(row, sft, tokenizer, i) for i, row in enumerate(frame.to_dict("records"))]
    return generate(model, tokenizer, prompts, max_new_tokens, batch_size)

def prompt_ids(row: dict[str, Any], sft: SftConfig, tokenizer: Any, index: int) -> list[int]:
    """The token ids the model continues for `row`: its rendering up to where the trained part would start."""
    from kubetune.data.sft import IGNORE_INDEX, encode_example, messages_of, render_segments

    if sft.renders_chat:
        row = dict(row)
        if sft.format == "conversation":
            messages = messages_of(row, sft, index)
            while messages and messages[-1]["role"] == "assistant":
                messages.pop()
        else:
            messages = [m for m in messages_of({**row, sft.response_column: ""}, sft, index) if m["role"] != "assistant"]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False).input_ids
    if sft.format == "text":
        ids, _ = encode_example(render_segments(row, sft, tokenizer, index), tokenizer, sft)
        return ids[:-1]  # without the end-of-text token, so the model continues the text
    answer = {"prompt_response": sft.response_column, "alpaca": sft.output_column}[sft.format]
    ids, labels = encode_example(render_segments({**row, answer: ""}, sft, tokenizer, index), tokenizer,
                                 sft.model_copy(update={"completion_only_loss": True}))
    return [t for t, label in zip(ids, labels, strict=True) if label == IGNORE_INDEX]


def expected_column(sft: SftConfig) -> str | None:
    return {"prompt_response": sft.response_column, "alpaca": sft.output_column}.get(sft.format or "")


def generate(model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy completions of `prompts` (token ids), batched with left padding."""
    import torch

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    eos = model.generation_config.eos_token_id if model.generation_config.eos_token_id is not None else tokenizer.eos_token_id
    completions = []
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            longest = max(len(p) for p in chunk)
            ids = torch.tensor([[tokenizer.pad_token_id] * (longest - len(p)) + p for p in chunk], device=device)
            mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in chunk], device=device)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=eos)
            completions += tokenizer.batch_decode(out[:, longest:], skip_special_tokens=True)
    return completions


def model_folder(model_ref: str, scratch: Path, config: RunConfig) -> Path:
    """A local copy of an SFT model/ folder: local, object storage, or models:/<name>@<alias> / models:/<name>/<version>
    (the MLflow registry of tracking.tracking_uri, else $MLFLOW_TRACKING_URI)."""
    from kubetune import tracking
    from kubetune.inference import MODEL_METADATA_FILE, REGISTRY_SCHEME, download_registered_model

    if model_ref.startswith(REGISTRY_SCHEME):
        return download_registered_model(model_ref, scratch, tracking.tracking_uri_or_local_store(config), task="sft")
    storage.check_location("--model", model_ref)
    if storage.is_remote(storage.normalize_uri(model_ref)):
        model_dir = storage.download(model_ref, scratch / "model", config.storage)
    else:
        model_dir = Path(storage.normalize_uri(model_ref)).expanduser()
    if not model_dir.is_dir() or not (model_dir / MODEL_METADATA_FILE).is_file():
        raise DataError(f"--model: {model_ref} is not a model folder; give a train output's model/ folder or "
                        "models:/<name>@<alias>")
    return model_dir


def generate_file(model_ref: str, data: str, output: str, config: RunConfig) -> dict[str, Any]:
    """Completions for every row of `data`, written to the Parquet file `output`; returns a summary."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from kubetune.data.sft import format_columns, load_source
    from kubetune.inference import PREDICTIONS_MARKER
    from kubetune.train.causal_lm import load_trained_causal_lm

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kubetune-generate-") as scratch:
        model_dir = model_folder(model_ref, Path(scratch), config)
        model, tokenizer, metadata = load_trained_causal_lm(model_dir)
        trained_format = (metadata.get("inference") or {}).get("format")
        if trained_format and trained_format != config.sft.format:
            raise DataError(f"sft: the model was trained on the {trained_format} format and this config says {config.sft.format}; "
                            "use the config it was trained with")
        sft = sft_settings(metadata, f"--model: {model_ref}") if metadata.get("inference") else config.sft
        frame = load_source(data, "--data", config)
        needed = {key: column for key, column in format_columns(sft).items() if column != expected_column(sft)}
        missing = [f"{column!r} ({key})" for key, column in needed.items() if column not in frame.columns]
        if missing:
            raise DataError(f"--data: {data} lacks column {', '.join(missing)}; give rows with the training data's columns")
        generated = completions(model, tokenizer, sft, frame, config.sft.max_new_tokens, config.predict.batch_size)
    out: pd.DataFrame = frame[[c for c in format_columns(sft).values() if c in frame.columns]].copy()
    out["completion"] = generated
    summary: dict[str, Any] = {"rows": len(out), "seconds": round(time.perf_counter() - started, 2), "output": output}
    expected = expected_column(sft)
    if expected and expected in frame.columns:
        out["exact_match"] = [str(c).strip() == str(e).strip() for c, e in zip(generated, frame[expected], strict=True)]
        summary["exact_match"] = float(out["exact_match"].mean())
    table = pa.Table.from_pandas(out, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), PREDICTIONS_MARKER: json.dumps({"task": "sft"}).encode()})
    with tempfile.TemporaryDirectory(prefix="kubetune-generate-out-") as scratch:
        local = Path(scratch) / "predictions.parquet"
        pq.write_table(table, local)
        storage.publish_file(local, output, config.storage)
    return summary
