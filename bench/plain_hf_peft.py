"""Variant A of the throughput benchmark: what a user writes by hand with HF Trainer + PEFT LoRA.

Dynamic padding (DataCollatorWithPadding), random batches, no DeepSpeed, the Trainer's defaults
everywhere we don't need a value. It reads a saved DatasetDict with `text` and `labels` columns
(the benchmark hands it kubetune's preprocess output, so both see the very same texts and labels):

    python bench/plain_hf_peft.py --data DIR --model sentence-transformers/all-MiniLM-L6-v2 --max-steps 100

It is meant to be a fair opponent: the same LoRA settings, batch size, learning rate, schedule and
seed as kubetune's default config, nothing slowed down on purpose.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import datasets
from peft import LoraConfig, TaskType, get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)


def load_tokenized(data_dir: str, tokenizer, max_length: int) -> datasets.Dataset:
    train = datasets.load_from_disk(data_dir)["train"]
    return train.map(
        lambda batch: tokenizer(batch["text"], truncation=True, max_length=max_length),
        batched=True,
        remove_columns=[c for c in train.column_names if c != "labels"],
    )


def build_trainer(
    data_dir: str,
    model_name: str,
    output_dir: str,
    num_labels: int,
    max_steps: int,
    batch_size: int = 16,
    learning_rate: float = 2e-4,
    weight_decay: float = 0.01,
    max_length: int = 256,
    lora_r: int = 16,
    lora_alpha: int = 32,
    lora_dropout: float = 0.05,
    target_modules: Sequence[str] | None = None,
    bf16: bool = False,
    seed: int = 42,
    callbacks: Sequence[TrainerCallback] = (),
) -> Trainer:
    tokenizer = AutoTokenizer.from_pretrained(model_name)
    if tokenizer.pad_token is None:  # decoder-only tokenizers (Qwen) pad with end-of-text
        tokenizer.pad_token = tokenizer.eos_token
    train = load_tokenized(data_dir, tokenizer, max_length)

    model = AutoModelForSequenceClassification.from_pretrained(model_name, num_labels=num_labels)
    model.config.pad_token_id = tokenizer.pad_token_id
    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
        target_modules=list(target_modules) if target_modules else None,
    )
    model = get_peft_model(model, lora)

    args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        max_steps=max_steps,
        bf16=bf16,
        seed=seed,
        logging_steps=max(1, max_steps // 10),
        save_strategy="no",
        report_to="none",
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=train,
        data_collator=DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="A saved DatasetDict with text and labels (train split used).")
    parser.add_argument("--model", required=True, help="Model directory or hub id.")
    parser.add_argument("--output", default="plain-hf-peft-output")
    parser.add_argument("--num-labels", type=int, help="Classifier outputs; default: the largest label + 1.")
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--target-modules", nargs="*", help="Default: PEFT's choice for the architecture.")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    num_labels = args.num_labels or max(datasets.load_from_disk(args.data)["train"]["labels"]) + 1
    model_name = args.model
    if not Path(model_name).is_dir():
        # The embedded MiniLM comes from a Python package here (no model hub); anywhere else this is a hub id.
        from kubetune.hub import resolve_model_path

        model_name = resolve_model_path(model_name)
    trainer = build_trainer(
        args.data, model_name, args.output, num_labels, args.max_steps, batch_size=args.batch_size,
        learning_rate=args.learning_rate, max_length=args.max_length, lora_r=args.lora_r,
        lora_alpha=args.lora_alpha, target_modules=args.target_modules, bf16=args.bf16, seed=args.seed,
    )
    result = trainer.train()
    print(result.metrics)


if __name__ == "__main__":
    main()
