"""How much of a task the frozen base model already separates: probes on its mean-pooled embeddings.

    python -m bench.frozen_probe --data /tmp/council/tok      # a `kubetune tokenize` output

Embeds the train and validation splits with the frozen embedded MiniLM (mean over the tokens, as
model.pooling auto reads this checkpoint), then scores on validation (never test) a nearest-centroid
classifier (cosine) and a logistic regression on the embeddings, beside the TF-IDF baseline fitted on the
same train rows. A probe far below the baseline says fine-tuning has to move the representation a long way
(many steps), not only train a head. Prints one JSON line per system.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def embed(model, token_ids: list[list[int]], batch_size: int = 256) -> np.ndarray:
    import torch

    pooled = []
    with torch.inference_mode():
        for start in range(0, len(token_ids), batch_size):
            batch = token_ids[start:start + batch_size]
            ids = torch.zeros(len(batch), max(map(len, batch)), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, tokens in enumerate(batch):
                ids[row, :len(tokens)] = torch.tensor(tokens)
                mask[row, :len(tokens)] = 1
            states = model(input_ids=ids, attention_mask=mask).last_hidden_state
            pooled.append(((states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)).numpy())
    return np.concatenate(pooled)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="A tokenized dataset (kubetune tokenize output).")
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2")
    args = parser.parse_args()

    from datasets import load_from_disk
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from transformers import AutoModel

    from kubetune.evaluation.baseline import baseline_metrics, fit_baseline
    from kubetune.hub import resolve_model_path

    splits = load_from_disk(str(args.data))
    num_real = json.loads((args.data / "label_map.json").read_text())["num_real_labels"]
    train, validation = splits["train"], splits["validation"]
    y_train, y_val = np.asarray(train["labels"]), np.asarray(validation["labels"])
    classes = np.unique(y_train)

    def report(system: str, predicted: np.ndarray, seconds: float) -> None:
        print(json.dumps({"system": system, "split": "validation", "rows": len(y_val),
                          "accuracy": round(float((predicted == y_val).mean()), 4),
                          "macro_f1": round(float(f1_score(y_val, predicted, average="macro", labels=classes)), 4),
                          "seconds": round(seconds, 1)}), flush=True)

    started = time.perf_counter()
    baseline = fit_baseline(train["text"], y_train, num_real)
    scores = baseline_metrics(baseline, validation["text"], y_val)
    print(json.dumps({"system": "TF-IDF baseline", "split": "validation", "rows": len(y_val),
                      "accuracy": round(scores["accuracy"], 4), "macro_f1": round(scores["macro_f1"], 4),
                      "seconds": round(time.perf_counter() - started, 1)}), flush=True)

    model = AutoModel.from_pretrained(resolve_model_path(args.model)).eval()
    started = time.perf_counter()
    x_train, x_val = embed(model, train["input_ids"]), embed(model, validation["input_ids"])
    embedding_seconds = time.perf_counter() - started

    started = time.perf_counter()
    centroids = np.stack([x_train[y_train == c].mean(0) for c in classes])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    unit_val = x_val / np.linalg.norm(x_val, axis=1, keepdims=True)
    report("frozen embeddings, nearest centroid (cosine)", classes[(unit_val @ centroids.T).argmax(1)],
           embedding_seconds + time.perf_counter() - started)
    started = time.perf_counter()
    probe = LogisticRegression(max_iter=300, C=10).fit(x_train, y_train)
    report("frozen embeddings, logistic regression", probe.predict(x_val), embedding_seconds + time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
