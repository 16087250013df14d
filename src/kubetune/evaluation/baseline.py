"""The built-in baseline: TF-IDF over word 1-2 grams + a linear SVM, fit on the train split's serialized text.

A fine-tuned transformer is worth its cost only if it beats what a bag of words does on the same rows.
Ledger text (supplier names, account codes, amounts) is often carried by single tokens, where TF-IDF +
a linear model is hard to beat; every evaluation therefore scores this baseline on the rows the model is
scored on, with the same metrics (`kubetune.train.metrics.classification_metrics`).

Why these choices (see bench/baseline_cost.py and bench/results/baseline_cost.csv):
- word 1-2 grams, not char_wb 2-5: on the demo ledger within about a point of char n-grams, at a
  fraction of the features per row (the cost grows with them);
- SGD with the hinge loss, not liblinear's LinearSVC: the same model, but liblinear needs far longer
  for hundreds of one-vs-rest problems on 200k rows;
- a cap on the vocabulary (the most frequent n-grams): the weights are dense, classes x features;
- a cap on the train rows (sampled): the time grows with rows x classes. On council (163k train rows,
  433 classes, 50k features) fit and predict took 92-116 s on one core of a shared machine; the one-vs-rest
  problems run on all cores (n_jobs=-1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

NAME = "TF-IDF (word 1-2 grams) + linear SVM"
BASELINE_METRICS_FILE = "baseline_metrics.json"  # in the evaluate step's output, beside metrics.json
DEFAULT_MAX_FEATURES = 50_000
# The score of a class the baseline never saw in train: it can never be its prediction, nor in its top 5.
NEVER = -1e9
# The metrics the verdict line looks at: a model that loses on either is not worth shipping unexamined.
HEADLINE = {"accuracy": "accuracy", "macro_f1": "macro F1"}


@dataclass(frozen=True)
class Baseline:
    """A fitted baseline over the `num_classes` real label slots (dummy slots never exist for it)."""

    vectorizer: Any  # sklearn TfidfVectorizer; None when train had no usable words
    classifier: Any  # sklearn SGDClassifier; None when train had fewer than two classes or no words
    classes: np.ndarray  # the label slots seen in train, the only ones it can predict
    num_classes: int

    def decision_scores(self, texts: Sequence[str]) -> np.ndarray:
        """Scores of shape (rows, num_classes), usable like logits (argmax, top-k); unseen classes get NEVER."""
        scores = np.full((len(texts), self.num_classes), NEVER, dtype=np.float64)
        if self.classifier is None:  # a constant: the most frequent train class
            scores[:, self.classes[0]] = 0.0
            return scores
        margins = self.classifier.decision_function(self.vectorizer.transform(list(texts)))
        if margins.ndim == 1:  # two classes: one margin, positive for the second
            margins = np.stack([-margins, margins], axis=1)
        scores[:, self.classes] = margins
        return scores

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """The predicted label slot of each text (always a real class)."""
        from kubetune.train.metrics import real_class_predictions

        return real_class_predictions(self.decision_scores(texts), self.num_classes)


def fit_baseline(
    texts: Sequence[str],
    labels: Sequence[int] | np.ndarray,
    num_classes: int,
    max_features: int = DEFAULT_MAX_FEATURES,
    max_rows: int | None = None,
    random_state: int = 0,
) -> Baseline:
    """Fit the baseline on `texts` labelled with slots in [0, num_classes); deterministic for a `random_state`.

    Its cost grows with rows x classes: with `max_rows`, a larger train set is sampled down to that many rows
    (seeded by `random_state`)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import SGDClassifier

    texts = list(texts)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(labels) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
    if len(labels) == 0:
        raise ValueError("no training rows to fit the baseline on")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must be real class slots in [0, {num_classes}); got {labels.min()}..{labels.max()}")
    if max_rows is not None and len(labels) > max_rows:
        chosen = np.sort(np.random.default_rng(random_state).choice(len(labels), size=max_rows, replace=False))
        texts, labels = [texts[i] for i in chosen.tolist()], labels[chosen]
    present, counts = np.unique(labels, return_counts=True)
    majority = present[np.argsort(-counts, kind="stable")][:1]
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=max_features, dtype=np.float32)
    try:
        features = vectorizer.fit_transform(texts)
    except ValueError:  # "empty vocabulary": no text of two word characters or more
        return Baseline(None, None, majority, num_classes)
    if len(present) < 2:
        return Baseline(None, None, majority, num_classes)
    # alpha 1e-5 and 20 epochs: what bench/accuracy.py (replaced by bench/quality.py) measured on Banking77 and council.
    classifier = SGDClassifier(loss="hinge", alpha=1e-5, max_iter=20, tol=1e-3, random_state=random_state, n_jobs=-1)
    classifier.fit(features, labels)
    return Baseline(vectorizer, classifier, classifier.classes_, num_classes)


def baseline_metrics(baseline: Baseline, texts: Sequence[str], labels: Sequence[int] | np.ndarray) -> dict[str, float]:
    """The model's metrics (`classification_metrics`) for the baseline on `texts`: the two dicts compare key by key."""
    from kubetune.train.metrics import classification_metrics

    return classification_metrics(baseline.decision_scores(texts), np.asarray(labels), baseline.num_classes)


# ------------------------------------------------------------------------- model and baseline side by side
def points(model: float, baseline: float) -> str:
    """The difference in percentage points, signed: "+1.2 pts"."""
    return f"{(model - baseline) * 100:+.1f} pts"


def comparison_rows(model: Mapping[str, float], baseline: Mapping[str, float]) -> list[tuple[str, float, Any, str]]:
    """Rows of (metric, model, baseline, difference) for a table; "-" where the baseline lacks the metric."""
    return [
        (name, value, baseline[name], points(value, baseline[name])) if name in baseline else (name, value, "-", "-")
        for name, value in model.items()
    ]


def comparison_lines(model: Mapping[str, float], baseline: Mapping[str, float], first_header: str = "metric",
                     title: str | None = None) -> list[str]:
    """What a summary prints: the table of model, baseline and difference, then the verdict line when there is one."""
    from kubetune.console import format_table

    table = format_table([first_header, "model", "baseline", "difference"], comparison_rows(model, baseline), title=title)
    return [table, *filter(None, [verdict(model, baseline)])]


def verdict(model: Mapping[str, float], baseline: Mapping[str, float]) -> str | None:
    """One plain line when the model does not beat the baseline on accuracy or macro F1; None when it does."""
    lost = [f"{label} ({model[name]:.2f} vs {baseline[name]:.2f})"
            for name, label in HEADLINE.items() if name in model and name in baseline and model[name] <= baseline[name]]
    if not lost:
        return None
    return (f"the model does not beat the TF-IDF baseline on {' and '.join(lost)}: see BENCHMARKS.md for what "
            "the shipped configs reach, and train longer or change the model before relying on this one")
