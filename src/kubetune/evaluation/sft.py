"""The evaluate stage for `task: sft`: the test split's loss and perplexity, teacher-forced.

EVALUATION/ holds metrics.json (`loss`: mean loss per trained token, `perplexity`: its exp, `tokens`:
trained tokens scored, `rows`; with `sft.eval_generations`, `exact_match` over that many test examples whose
first response was generated greedily from their prompt), report.html (with those examples' prompt / expected /
generated table) (the figures, the learning curves when the model has a
training history) and learning_curves.png; for the champion gate, test_rows.parquet (the scored rows' raw
columns), row_losses.parquet (each row's summed loss and trained tokens) and generations.parquet (the sample). The loss is summed over every trained token of the split and
divided once, so it does not depend on the batch size (the Trainer's validation loss averages batch
means). Logged into the pipeline's MLflow run as test/<name>.
"""

from __future__ import annotations

import html
import json
import logging
import tempfile
import time
from pathlib import Path

from kubetune import storage
from kubetune.config import RunConfig
from kubetune.errors import DataError

logger = logging.getLogger(__name__)

# What a registry/champion gate compares for task: sft (metrics.json key, as test/<name> in MLflow): the test loss
# per trained token, lower is better (perplexity orders models the same way).
GATE_METRIC = "loss"
GATE_GREATER_IS_BETTER = False
# The metrics the gate can compare for task: sft (exact_match only when the evaluate step generated: sft.eval_generations).
GATE_METRICS = ("loss", "exact_match")
ROW_LOSSES_FILE = "row_losses.parquet"  # per test row (test_rows.parquet's order): summed loss, trained tokens
GENERATIONS_FILE = "generations.parquet"  # the generated sample: row (of test_rows.parquet), expected, generated, exact_match


def token_loss(model, split, pad_token_id: int, batch_size: int) -> tuple[float, int]:
    """(summed loss, trained tokens) of a tokenized SFT split (input_ids, labels, attention_mask)."""
    losses, tokens = row_token_losses(model, split, pad_token_id, batch_size)
    return float(losses.sum()), int(tokens.sum())


def row_token_losses(model, split, pad_token_id: int, batch_size: int):
    """(summed loss, trained tokens) of each row of a tokenized SFT split, as two arrays in row order: the
    champion gate compares two models on the same rows (any subset of them)."""
    import numpy as np
    import torch

    from kubetune.train.causal_lm import IGNORE_INDEX, SftCollator

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    collate = SftCollator(pad_token_id)
    columns = [c for c in ("input_ids", "labels", "attention_mask") if c in split.column_names]
    losses, tokens = [], []
    with torch.inference_mode():
        for start in range(0, len(split), batch_size):
            rows = split.select(range(start, min(start + batch_size, len(split))))
            batch = collate([{c: row[c] for c in columns} for row in rows])
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            logits = model(**batch).logits.float()
            # Position t predicts token t+1.
            targets = labels[:, 1:]
            per_token = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                                          ignore_index=IGNORE_INDEX, reduction="none")
            losses.append(per_token.view(targets.shape).sum(dim=1).double().cpu().numpy())
            tokens.append((targets != IGNORE_INDEX).sum(dim=1).cpu().numpy())
    if not losses:
        return np.zeros(0), np.zeros(0, dtype=np.int64)
    return np.concatenate(losses), np.concatenate(tokens).astype(np.int64)


def raw_row_losses(model, tokenizer, sft, frame, batch_size: int):
    """`row_token_losses` of raw rows (a DataFrame with the format's columns), rendered and tokenized with `sft`'s
    settings and `tokenizer` as the tokenize stage does (kubetune.data.sft.encode_rows): how the champion gate
    scores a model on rows of another run's data. A row cut to no trained token scores 0 tokens."""
    import datasets

    from kubetune.data.sft import encode_rows

    encoded = encode_rows({c: frame[c].tolist() for c in frame.columns}, tokenizer=tokenizer, sft=sft)
    split = datasets.Dataset.from_dict({c: encoded[c] for c in ("input_ids", "attention_mask", "labels")})
    return row_token_losses(model, split, tokenizer.pad_token_id, batch_size)


def evaluate_sft(config: RunConfig, model_uri: str, data_uri: str, output_uri: str, mlflow_run_id: str | None = None,
                 split: str = "test"):
    from datasets import load_from_disk

    from kubetune.evaluation import LEARNING_CURVES_FILE, EvaluationResult, log_evaluation
    from kubetune.evaluation.curves import learning_curves_png
    from kubetune.train.causal_lm import load_trained_causal_lm, perplexity
    from kubetune.train.history import read_training_history

    with tempfile.TemporaryDirectory(prefix="kubetune-evaluate-") as scratch:
        data_dir = storage.download(data_uri, Path(scratch) / "data", config.storage)
        model_dir = storage.download(model_uri, Path(scratch) / "model", config.storage)
        splits = load_from_disk(str(data_dir))
        if split not in splits or len(splits[split]) == 0:
            raise DataError(f"the {split!r} split of {data_uri} is missing or empty; raise split.test_size")
        rows = splits[split]
        model, tokenizer, _ = load_trained_causal_lm(model_dir)
        started = time.perf_counter()
        row_losses, row_tokens = row_token_losses(model, rows, tokenizer.pad_token_id, config.training.eval_batch_size)
        total, tokens = float(row_losses.sum()), int(row_tokens.sum())
        if tokens == 0:
            raise DataError(f"the {split!r} split has no trained tokens to score")
        loss = total / tokens
        metrics = {"loss": loss, "perplexity": perplexity(loss), "tokens": float(tokens), "rows": float(len(rows))}
        logger.info("evaluate: %s loss %.4f, perplexity %.2f over %d tokens (%.1f s)", split, loss, metrics["perplexity"],
                    tokens, time.perf_counter() - started)
        samples = generation_samples(model, tokenizer, rows, config) if config.sft.eval_generations else []
        if samples:
            metrics["exact_match"] = sum(s["exact_match"] for s in samples) / len(samples)
            metrics["generations"] = float(len(samples))
        history = read_training_history(model_dir)
        with storage.atomic_output_dir(output_uri, "evaluate", config.storage) as out:
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
            curves = learning_curves_png(history) if history is not None and history.eval else None
            if curves is not None:
                (out / LEARNING_CURVES_FILE).write_bytes(curves)
            (out / "report.html").write_text(report_html(metrics, split, model_uri, curves, samples))
            _write_gate_files(out, rows, row_losses, row_tokens, samples)
            if mlflow_run_id:
                log_evaluation(config, mlflow_run_id, split, metrics, out, model_dir)
    report = f"{storage.normalize_uri(output_uri).rstrip('/')}/report.html"
    return EvaluationResult(output_uri, metrics, [], [], report, {})


def _write_gate_files(out: Path, rows, row_losses, row_tokens, samples: list[dict]) -> None:
    """What the champion gate (kubetune.promotion) scores the current champion against, row for row: the scored
    rows' raw format columns (test_rows.parquet, the data's own names), each row's summed loss and trained tokens
    (row_losses.parquet), and the generated sample (generations.parquet: the row, expected and generated text).
    Data tokenized before the test split kept its raw columns has no test_rows.parquet."""
    import pandas as pd

    from kubetune.data.stages import RAW_PREFIX
    from kubetune.evaluation import TEST_ROWS_FILE

    raw = [c for c in rows.column_names if c.startswith(RAW_PREFIX)]
    if raw:
        rows.select_columns(raw).to_pandas().rename(columns=lambda c: c.removeprefix(RAW_PREFIX)).to_parquet(
            out / TEST_ROWS_FILE, index=False)
    pd.DataFrame({"loss": row_losses, "tokens": row_tokens}).to_parquet(out / ROW_LOSSES_FILE, index=False)
    if samples:
        pd.DataFrame([{key: s[key] for key in ("row", "expected", "generated", "exact_match")} for s in samples]).to_parquet(
            out / GENERATIONS_FILE, index=False)


def generation_samples(model, tokenizer, rows, config: RunConfig) -> list[dict]:
    """Greedy completions of a seeded sample of tokenized examples: each example's prompt is its tokens before the first
    trained one, the expected answer its first run of trained tokens (the first response, or assistant turn)."""
    import numpy as np

    from kubetune.data.sft import IGNORE_INDEX
    from kubetune.generation import generate

    chosen = np.sort(np.random.default_rng(config.tokenize.diagnostics.seed).choice(
        len(rows), size=min(config.sft.eval_generations, len(rows)), replace=False))
    prompts, expected = [], []
    for index in chosen.tolist():
        ids, labels = rows[index]["input_ids"], rows[index]["labels"]
        start = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
        end = next((i for i in range(start, len(labels)) if labels[i] == IGNORE_INDEX), len(labels))
        prompts.append(list(ids[:start]))
        expected.append(tokenizer.decode(ids[start:end], skip_special_tokens=True))
    completions = generate(model, tokenizer, prompts, config.sft.max_new_tokens, config.training.eval_batch_size)
    return [{"row": row, "prompt": tokenizer.decode(prompt, skip_special_tokens=False), "expected": want, "generated": got,
             "exact_match": got.strip() == want.strip()}
            for row, prompt, want, got in zip(chosen.tolist(), prompts, expected, completions, strict=True)]


def report_html(metrics: dict[str, float], split: str, model: str, curves_png: bytes | None,
                samples: list[dict] | None = None) -> str:
    import base64

    e = html.escape
    cards = "".join(f"<div class=card><b>{metrics[name]:{fmt}}</b><span>{label}</span></div>"
                    for name, label, fmt in (("loss", "loss per token", ".4f"), ("perplexity", "perplexity", ".2f"),
                                             ("tokens", "tokens scored", ",.0f")))
    if "exact_match" in metrics:
        cards += f"<div class=card><b>{metrics['exact_match']:.1%}</b><span>exact match</span></div>"
    curves = (f'<h2>Learning curves</h2><img alt="learning curves" src="data:image/png;base64,'
              f'{base64.b64encode(curves_png).decode()}">' if curves_png else "")
    if samples:
        body = "".join(f"<tr><td><pre>{e(s['prompt'])}</pre></td><td><pre>{e(s['expected'])}</pre></td>"
                       f"<td><pre>{e(s['generated'])}</pre></td><td>{'✓' if s['exact_match'] else '✗'}</td></tr>" for s in samples)
        curves += ("<h2>Generated on test prompts</h2><table><tr><th>prompt</th><th>expected</th><th>generated</th>"
                   f"<th>exact</th></tr>{body}</table>")
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>kubetune evaluation (sft)</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2rem;color:#222}.card{display:inline-block;padding:1rem 1.5rem;"
        "margin:0 1rem 1rem 0;border:1px solid #ddd;border-radius:8px}.card b{display:block;font-size:1.6rem}"
        "img{max-width:100%}td{vertical-align:top;border-top:1px solid #eee}pre{white-space:pre-wrap;margin:0}</style></head><body><h1>kubetune evaluation (sft)</h1>"
        f"<p>{e(split)} split ({int(metrics['rows']):,} examples, teacher-forced) · model: {e(model)}</p>{cards}{curves}"
        "</body></html>\n"
    )
