"""Tiny random causal LMs that kubetune builds itself: `model.name: kubetune/tiny-random-qwen2` (or `-llama`).

No pretrained causal LM is available offline here (the only packaged model is the MiniLM encoder), so
the CPU-sized SFT example and the tests train a model built on the spot: a 2-layer Qwen2 or Llama with
random weights (seeded), and a byte-level BPE tokenizer trained on the built-in demo ledger's text, with
ChatML special tokens and chat template. Such a model learns the mechanics (its loss falls on a
learnable task), never language: SFT quality cannot be measured with it.

Built once per machine into `$KUBETUNE_CACHE` (default `~/.cache/kubetune`)/models/<name>, atomically;
the build is deterministic, so every pod and every stage that builds it gets the same files (the train
step checks the tokenizer's files against the tokenize step's).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

TINY_MODELS = {"kubetune/tiny-random-qwen2": "qwen2", "kubetune/tiny-random-llama": "llama"}
END_OF_TEXT, BEGIN_OF_TEXT = "<|endoftext|>", "<|begin_of_text|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# ChatML, as Qwen's instruct models write it.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def cache_root() -> Path:
    return Path(os.environ.get("KUBETUNE_CACHE", Path.home() / ".cache" / "kubetune")).expanduser()


def tiny_model_dir(name: str) -> Path | None:
    """The directory of built-in tiny model `name` (built on first use), or None when `name` is not one."""
    architecture = TINY_MODELS.get(name)
    if architecture is None:
        return None
    target = cache_root() / "models" / name.replace("/", "--")
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build_tiny_causal_lm(staging, architecture)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # another process's build won only if it is complete
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def default_corpus() -> list[str]:
    """The tokenizer's training text: the demo ledger's lines and some chat-like phrases."""
    from kubetune.data.demo import generate_ledger

    ledger = generate_ledger(2000, 0)
    lines = [" ".join(str(v) for v in row) for row in ledger.astype(str).itertuples(index=False)]
    return lines + ["Which account code fits this payment? The account code is", "system user assistant"] * 20


def train_tokenizer(directory: Path, architecture: str, corpus: Iterable[str], vocab_size: int = 1000):
    """A byte-level BPE tokenizer (any text encodes) with ChatML tokens and template; Llama's adds a
    beginning-of-text token to every sequence, as Llama 3's does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [END_OF_TEXT, IM_START, IM_END] + ([BEGIN_OF_TEXT] if architecture == "llama" else [])
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(list(corpus), trainer)
    extra = {}
    if architecture == "llama":
        bos = tok.token_to_id(BEGIN_OF_TEXT)
        tok.post_processor = processors.TemplateProcessing(single=f"{BEGIN_OF_TEXT} $A", pair=f"{BEGIN_OF_TEXT} $A $B",
                                                           special_tokens=[(BEGIN_OF_TEXT, bos)])
        extra["bos_token"] = BEGIN_OF_TEXT
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT,
                                   additional_special_tokens=[IM_START, IM_END], model_max_length=512, **extra)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(directory)
    return fast


def build_tiny_causal_lm(directory: Path, architecture: str = "qwen2", corpus: Iterable[str] | None = None,
                         vocab_size: int = 1000, hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random `architecture` (qwen2 or llama) causal LM with its tokenizer, saved in `directory`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(directory, architecture, corpus if corpus is not None else default_corpus(), vocab_size)
    torch.manual_seed(seed)  # the same weights on every machine and in every test
    eos = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    shape = {"vocab_size": len(tokenizer), "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
             "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
             "max_position_embeddings": 512, "tie_word_embeddings": True, "eos_token_id": eos, "pad_token_id": eos}
    if architecture == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape, bos_token_id=eos))
    elif architecture == "llama":
        model = LlamaForCausalLM(LlamaConfig(**shape, bos_token_id=tokenizer.bos_token_id))
    else:
        raise ValueError(f"unknown tiny architecture {architecture!r}; choose qwen2 or llama")
    # Generation stops at the end of text or at the end of an assistant turn.
    model.generation_config = GenerationConfig(eos_token_id=[eos, im_end], pad_token_id=eos,
                                               bos_token_id=model.config.bos_token_id)
    model.save_pretrained(directory)
    return directory
