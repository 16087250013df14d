"""A kubetune model/ folder over raw ledger rows, built as `kubetune train` builds one, for the inference tests.

The demo ledger is written to a CSV, run through the real preprocess stage (whose dataset_metadata.json the
`"inference"` entry is taken from, as the trainer takes it), and a LoRA model on the tiny random BERT is
saved with kubetune.train.model.save_trained_model. Untrained: these tests are about plumbing, not accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

LABEL_COLUMN = "account_code"
TEXT_COLUMNS = ["supplier", "description", "amount", "payment_date"]
RETAIN_COLUMNS = ["line_id"]
MAX_CLASSES = 64  # the demo's codes plus spare (dummy) slots
MAX_LENGTH = 32


def model_config(tiny_bert: Path, **serialize):
    from kubetune.config import validate_config

    return validate_config({
        "split": {"label_column": LABEL_COLUMN, "max_classes": MAX_CLASSES, "test_size": 0.2, "val_size": 0.1},
        "serialize": {"text_columns": TEXT_COLUMNS, "retain_columns": RETAIN_COLUMNS, "separator": " | ", **serialize},
        "tokenize": {"max_length": MAX_LENGTH},
        "model": {"name": str(tiny_bert)},
        "lora": {"r": 4, "lora_alpha": 8},
        "tracking": {"enable": False},
    })


def build_model_folder(root: Path, tiny_bert: Path, data: Path, dummy_bias: float | None = None, **serialize) -> Path:
    """root/train/model (and root/preprocessed) from the ledger file `data`; `dummy_bias` sets the head's bias
    of every dummy slot (a huge one: the raw model would pick a dummy slot for every row)."""
    from kubetune.data.labels import LabelMap
    from kubetune.data.stages import preprocess
    from kubetune.inference import INFERENCE_KEY, inference_metadata
    from kubetune.train.model import apply_lora, instantiate_model, load_tokenizer, save_trained_model

    config = model_config(tiny_bert, **serialize).model_copy()
    config.data.uri = str(data)
    preprocess(config, str(root / "preprocessed"))
    data_metadata = json.loads((root / "preprocessed" / "dataset_metadata.json").read_text())
    label_map = LabelMap.load(root / "preprocessed")
    tokenizer = load_tokenizer(str(tiny_bert))
    model = apply_lora(config, instantiate_model(config, label_map, str(tiny_bert), tokenizer))
    if dummy_bias is not None:
        import torch

        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith("classifier.modules_to_save.default.bias"):
                    parameter[label_map.num_real_labels:] = dummy_bias
    metadata = {"base_model": str(tiny_bert), "base_model_path": str(tiny_bert), "max_length": MAX_LENGTH,
                INFERENCE_KEY: inference_metadata(config, data_metadata)}
    model_dir = root / "train" / "model"
    model_dir.mkdir(parents=True)
    save_trained_model(model, tokenizer, label_map, model_dir, metadata, {}, merge=False)
    (root / "train" / "config.yaml").write_text(config.to_yaml())
    return model_dir
