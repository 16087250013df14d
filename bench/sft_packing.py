"""Packing vs padding for `task: sft`: the same examples trained one pass with each batching method, through
kubetune's own collators and packing (kubetune.data.sft, kubetune.train.causal_lm):

- `padded-random`: batches of `batch_size` examples in random order, padded to the longest (SftCollator);
- `padded-grouped`: the same, examples of similar length batched together (training.group_by_length);
- `concatenate`: examples packed at tokenize time into rows of max_seq_length (sft.packing_method: concatenate);
  a batch holds batch_size rows, so it covers more examples than a padded batch;
- `flatten`: each batch of batch_size examples as one row (DataCollatorWithFlattening; sft.packing_method: flatten).

Each pass is a forward + backward + AdamW step per batch of the built-in tiny Qwen2 (or `--model`), timed after
one warm-up batch; `real_tokens_per_s` counts the examples' tokens only (what every method must process), so it is
the figure to compare. Rows go to bench/results/sft_packing.csv.

    python -m bench.sft_packing --examples 512 --batch-size 16 --max-seq-length 128
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Sequence
from typing import Any

from bench.common import append_rows, run_info

METHODS = ("padded-random", "padded-grouped", "concatenate", "flatten")


def toy_examples(count: int, tokenizer: Any, max_seq_length: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """Prompt/response examples from the demo ledger (the sft-tiny config's task), rendered by kubetune.data.sft."""
    from kubetune.config import SftConfig
    from kubetune.data.demo import generate_ledger
    from kubetune.data.sft import encode_example, render_segments

    sft = SftConfig(prompt_column="prompt", response_column="account_code", max_seq_length=max_seq_length)
    ledger = generate_ledger(count, seed)
    rng = random.Random(seed)
    examples = []
    for index, row in enumerate(ledger.itertuples(index=False)):
        # Lengths vary as in real instruction data: 1 to 4 lines of the ledger in each prompt.
        prompt = " | ".join(f"{row.supplier}, {row.description}, {row.amount}" for _ in range(rng.randint(1, 4)))
        ids, labels = encode_example(render_segments({"prompt": prompt, "account_code": row.account_code}, sft, tokenizer, index),
                                     tokenizer, sft)
        examples.append((ids[:max_seq_length], labels[:max_seq_length]))
    return examples


def batches(method: str, examples: Sequence[tuple[list[int], list[int]]], batch_size: int, max_seq_length: int,
            pad_token_id: int, seed: int = 0) -> list[dict[str, Any]]:
    from transformers import DataCollatorWithFlattening
    from transformers.trainer_pt_utils import get_length_grouped_indices

    from kubetune.data.sft import pack_examples
    from kubetune.train.causal_lm import FlatteningCollator, SftCollator

    rows = [{"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)} for ids, labels in examples]
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    if method == "padded-grouped":
        import torch

        order = get_length_grouped_indices([len(r["input_ids"]) for r in rows], batch_size,
                                           generator=torch.Generator().manual_seed(seed))
    if method == "concatenate":
        rows = list(pack_examples([examples[i] for i in order], max_seq_length))
        order = list(range(len(rows)))
    collate = (FlatteningCollator(DataCollatorWithFlattening(return_position_ids=True, separator_id=-100))
               if method == "flatten" else SftCollator(pad_token_id))
    return [collate([rows[i] for i in order[start:start + batch_size]]) for start in range(0, len(order), batch_size)]


def measure(method: str, model_name: str, examples: Sequence[tuple[list[int], list[int]]], batch_size: int,
            max_seq_length: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune.hub import resolve_model_path

    path = resolve_model_path(model_name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").to(device)
    model.config.use_cache = False
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    planned = batches(method, examples, batch_size, max_seq_length, tokenizer.pad_token_id)

    def step(batch: dict[str, Any]) -> None:
        loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(planned[0])  # warm-up: allocator, kernels
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for batch in planned:
        step(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    real = sum(len(ids) for ids, _ in examples)
    computed = sum(int(batch["input_ids"].numel()) for batch in planned)
    return {"method": method, "model": model_name, "examples": len(examples), "steps": len(planned), "batch_size": batch_size,
            "max_seq_length": max_seq_length, "real_tokens": real, "computed_tokens": computed, "seconds": seconds,
            "real_tokens_per_s": real / seconds, "padding_fraction": 1 - real / computed, "device": device.type}


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    from transformers import AutoTokenizer

    from kubetune.hub import resolve_model_path

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="kubetune/tiny-random-qwen2")
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args(argv)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model))
    examples = toy_examples(args.examples, tokenizer, args.max_seq_length)
    rows = [measure(method, args.model, examples, args.batch_size, args.max_seq_length) for method in args.methods]
    path = append_rows("sft_packing", run_info(), rows)
    for row in rows:
        print(f"{row['method']:>15}: {row['real_tokens_per_s']:,.0f} real tokens/s, {row['steps']} steps, "
              f"padding {row['padding_fraction']:.1%}")
    print(f"rows appended to {path}")
    return rows


if __name__ == "__main__":
    main()
