"""The GPU throughput comparison (A vs B vs C, as in bench/throughput.py) for the Qwen2.5-0.5B
architecture, built from its config with random weights (throughput doesn't depend on the weight
values, and there is no model hub here), LoRA on q/k/v/o, bf16 where the GPU has it, sequences of up
to 512 tokens drawn from the token-length distribution of the council data.

The tokenizer is a byte-level BPE without merges (every character of a row is one token; transformers
loads it as a Qwen2Tokenizer, as it would Qwen's own): rows are random letters, so a row of n letters
is exactly n tokens. The ids stay below 257 of the 151,936 rows of the embedding, which costs a
lookup either way, so throughput is that of real text of the same lengths.

MFU counts useful work only — real (non-pad) tokens — against the GPU's dense bf16 peak:

    FLOPs per real token = 4·N_frozen + 6·N_trainable + 12·L·d·ℓ̄
      N_frozen     matmul weights of the layers (q, k, v, o, gate, up, down); embeddings are lookups,
                   and the LM head is not run by a sequence classifier
      N_trainable  LoRA A and B matrices plus the classification head
      4·N / 6·N    forward (2N) + gradients of the activations (2N); trainable weights also get
                   their own gradients (+2N)
      12·L·d·ℓ̄     attention scores and weighted values: 4·d·ℓ per layer forward, ×3 with the backward
                   (d = heads × head_dim, ℓ̄ = Σℓ²/Σℓ, the mean row length seen by a real token)

    python -m bench.gpu_throughput --steps 30 --repeats 3          # on a GPU machine (one untimed warm-up round first)
    python -m bench.gpu_throughput --tiny --steps 2 --repeats 1 --warmup-rounds 0   # the CPU smoke run of the same code
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO_ROOT, WORK_DIR, append_rows, env_int, run_info
from bench.throughput import VARIANTS

LENGTHS_FILE = REPO_ROOT / "bench" / "council_token_lengths.json"
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
NUM_LABELS = 458  # the council data's expenditure categories
MAX_LENGTH = 512
# Dense bf16 peak (no sparsity) in TFLOP/s, by a substring of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = (
    ("H200", 989.4), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("GH200", 989.4),
    ("A100", 312.0), ("L40S", 362.05), ("A10G", 70.0),
)


def qwen_config(tiny: bool):
    """Qwen2.5-0.5B's architecture (or a 2-layer miniature of it for the CPU smoke run)."""
    from transformers import Qwen2Config

    if tiny:
        return Qwen2Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                           tie_word_embeddings=True, rope_theta=1e6)
    return Qwen2Config(vocab_size=151_936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                       num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32_768,
                       tie_word_embeddings=True, rope_theta=1e6, rms_norm_eps=1e-6)


def build_model_dir(directory: Path, config) -> Path:
    """Random weights and the synthetic tokenizer in `directory` (reused when already there)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

    eos = "<|endoftext|>"
    wanted = {"vocab_size": config.vocab_size, "hidden_size": config.hidden_size, "layers": config.num_hidden_layers}
    stamp = directory / "bench_model.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)} | {eos: len(alphabet)}, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos, pad_token=eos,
                                   model_max_length=config.max_position_embeddings)
    fast.save_pretrained(directory)
    config.eos_token_id = config.bos_token_id = config.pad_token_id = len(alphabet)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    stamp.write_text(json.dumps(wanted))
    return directory


# ------------------------------------------------------------------------------------------ lengths
def council_lengths(preprocessed: Path, output: Path = LENGTHS_FILE) -> Path:
    """Token-length histogram of the council texts (all splits) under the MiniLM tokenizer: counts only, no rows."""
    import datasets
    from transformers import AutoTokenizer

    from kubetune.hub import resolve_model_path

    name = "sentence-transformers/all-MiniLM-L6-v2"
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name))
    counts: dict[int, int] = {}
    for split in datasets.load_from_disk(str(preprocessed)).values():
        for start in range(0, len(split), 10_000):
            for ids in tokenizer(split[start:start + 10_000]["text"])["input_ids"]:
                counts[len(ids)] = counts.get(len(ids), 0) + 1
    output.write_text(json.dumps({"source": "council_spend_bradford payments, configs/council-spend.yaml serialization",
                                  "tokenizer": name, "counts": {str(k): v for k, v in sorted(counts.items())}}, indent=1) + "\n")
    return output


def sample_lengths(histogram: Mapping[str, int], rows: int, rng: np.random.Generator, max_length: int) -> np.ndarray:
    lengths = np.array([int(k) for k in histogram], dtype=np.int64)
    weights = np.array(list(histogram.values()), dtype=np.float64)
    return np.clip(rng.choice(lengths, size=rows, p=weights / weights.sum()), 2, max_length)


def synthetic_preprocessed(output: Path, histogram: Mapping[str, int], sizes: Mapping[str, int],
                           max_length: int, num_labels: int, seed: int) -> Path:
    """A preprocess-format dataset of random letters (one token each), lengths from `histogram`, random labels."""
    import datasets

    from kubetune import storage
    from kubetune.data.labels import LabelMap

    stamp = {"sizes": dict(sizes), "max_length": max_length, "labels": num_labels,
             "seed": seed, "histogram": dict(histogram)}
    if (output / "bench_synthetic.json").is_file() and json.loads((output / "bench_synthetic.json").read_text()) == stamp:
        return output
    rng = np.random.default_rng(seed)
    label_map = LabelMap.build([f"class{i:03d}" for i in range(num_labels)], "label", None, "dummy")
    splits = {}
    for name, rows in sizes.items():
        lengths = sample_lengths(histogram, rows, rng, max_length)
        letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
        texts = ["".join(letters[rng.integers(0, len(letters), size=n)]) for n in lengths]
        splits[name] = datasets.Dataset.from_dict({"text": texts, "labels": rng.integers(0, num_labels, size=rows).tolist()},
                                                  features=datasets.Features({"text": datasets.Value("string"),
                                                                              "labels": datasets.Value("int64")}))
    metadata = {"stage": "preprocess", "cache_key": f"bench-synthetic-{seed}-{sum(sizes.values())}",
                "rows": dict(sizes), "inputs": {}, "synthetic": "bench.gpu_throughput"}
    with storage.atomic_output_dir(str(output), "preprocess") as staging:
        datasets.DatasetDict(splits).save_to_disk(str(staging))
        label_map.save(staging)
        (staging / "dataset_metadata.json").write_text(json.dumps(metadata))
        (staging / "bench_synthetic.json").write_text(json.dumps(stamp))
    return output


# --------------------------------------------------------------------------------------------- FLOPs
def flops_per_real_token(config, lora_r: int, num_labels: int, token_weighted_length: float) -> dict[str, float]:
    d, layers, ffn = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    head_dim = d // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    shapes = {"q_proj": (d, d), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (d, d)}
    frozen = layers * (sum(i * o for i, o in shapes.values()) + 3 * d * ffn)
    lora = layers * sum(lora_r * (i + o) for name, (i, o) in shapes.items() if name in LORA_TARGETS)
    trainable = lora + d * num_labels
    attention = 12 * layers * d * token_weighted_length
    return {"n_frozen": frozen, "n_trainable": trainable,
            "flops_per_token": 4 * frozen + 6 * trainable + attention}


def peak_tflops(device: str) -> float | None:
    override = os.environ.get("BENCH_GPU_PEAK_TFLOPS", "").strip()
    if override:
        return float(override)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in device), None)


def token_weighted_length(tokenized: Path) -> float:
    import datasets

    lengths = np.asarray(datasets.load_from_disk(str(tokenized))["train"]["length"], dtype=np.float64)
    return float((lengths ** 2).sum() / lengths.sum())


# ---------------------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lengths"]:
        print(council_lengths(Path(argv[1])))
        return 0
    parser = argparse.ArgumentParser(description="GPU throughput: Qwen2.5-0.5B architecture, A vs B vs C, real tokens/s and MFU.")
    parser.add_argument("--tiny", action="store_true", help="A 2-layer miniature (the CPU smoke run); rows go to suite 'smoke'.")
    parser.add_argument("--steps", type=int, default=env_int("BENCH_GPU_STEPS", 30))
    parser.add_argument("--repeats", type=int, default=env_int("BENCH_REPEATS", 3))
    parser.add_argument("--train-rows", type=int, default=env_int("BENCH_TRAIN_ROWS", 4096))
    parser.add_argument("--lengths", type=Path, default=LENGTHS_FILE, help="Token-length histogram (JSON with `counts`).")
    parser.add_argument("--max-length", type=int, default=MAX_LENGTH)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--warmup-rounds", type=int, default=env_int("BENCH_GPU_WARMUP_ROUNDS", 1),
                        help="Untimed rounds of every variant before the timed repeats (BENCH_GPU_WARMUP_ROUNDS).")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS),
                        help="Variants to run (default: all three); e.g. A B where DeepSpeed cannot run.")
    args = parser.parse_args(argv)

    import torch

    from bench.throughput import compare, print_summary, summarize

    if not args.lengths.is_file():
        raise SystemExit(f"{args.lengths} not found; make it with `python -m bench.gpu_throughput lengths <council preprocess output>`")
    histogram = json.loads(args.lengths.read_text())["counts"]
    config = qwen_config(args.tiny)
    label = "qwen2-tiny-random" if args.tiny else "qwen2.5-0.5b-random"
    workdir = WORK_DIR / "gpu" / label
    model_dir = build_model_dir(workdir / "model", config)
    subset = synthetic_preprocessed(workdir / "preprocessed", histogram,
                                    {"train": args.train_rows, "validation": 64, "test": 64}, args.max_length, NUM_LABELS, args.seed)
    extra = {"tokenize": {"max_length": args.max_length}, "lora": {"target_modules": LORA_TARGETS}}
    dataset = "council lengths (random letters)"
    info, flops = run_info(), {}

    def record_round(round_rows: list[dict[str, Any]]) -> None:
        # Each finished round goes to throughput.csv as it ends: a run stopped at its time limit keeps its rounds.
        if not flops:
            from kubetune.config import validate_config

            # All variants train on the same rows; B's tokenized copy holds their real lengths.
            flops.update(flops_per_real_token(config, validate_config({}).lora.r, NUM_LABELS,
                                              token_weighted_length(workdir / "tokenized-B")))
            print(f"FLOPs per real token: {flops['flops_per_token']:.4g} (N_frozen {flops['n_frozen']:,}, "
                  f"N_trainable {flops['n_trainable']:,})")
        for row in round_rows:
            peak = peak_tflops(row["device"]) if torch.cuda.is_available() else None
            row.update(suite="smoke" if args.tiny else "gpu", model=label, flops_per_token=flops["flops_per_token"],
                       peak_tflops=peak, mfu=row["real_tokens_per_s"] * flops["flops_per_token"] / (peak * 1e12) if peak else None)
        append_rows("throughput", info, round_rows)

    rows = compare(dataset, subset, str(model_dir), {"split": {"label_column": "label"}}, args.steps, args.repeats, workdir,
                   seed=args.seed, extra=extra, variants=args.variants, seed_max_length=args.max_length,
                   warmup_rounds=args.warmup_rounds, on_round=record_round)
    print_summary(summarize(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
