"""The evaluation report's pieces: matrix, per-class rows, worst confusions, folding, HTML."""

from __future__ import annotations

import base64

import numpy as np

from kubetune.evaluation.report import (
    OTHER,
    confusion_matrix,
    confusion_png,
    fold_matrix,
    per_class_rows,
    render_html,
    worst_confusions,
)

LABELS = ["rent", "fuel", "travel", "legal"]


def sample_matrix() -> np.ndarray:
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 3])
    y_pred = np.array([0, 0, 0, 1, 1, 1, 0, 2, 1, 3])
    return confusion_matrix(y_true, y_pred, 4)


def test_confusion_matrix_counts_rows_true_by_predicted():
    matrix = sample_matrix()
    assert matrix.tolist() == [[3, 1, 0, 0], [1, 2, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]]


def test_per_class_rows_are_exact_and_most_frequent_first():
    rows = per_class_rows(sample_matrix(), LABELS)
    assert [r.label for r in rows] == ["rent", "fuel", "travel", "legal"]
    fuel = rows[1]
    assert (fuel.support, fuel.predicted) == (3, 4)
    assert fuel.precision == 0.5 and abs(fuel.recall - 2 / 3) < 1e-12
    assert abs(fuel.f1 - 2 * 0.5 * (2 / 3) / (0.5 + 2 / 3)) < 1e-12


def test_per_class_rows_skip_classes_absent_from_split_and_predictions():
    matrix = confusion_matrix(np.array([0, 1]), np.array([0, 1]), 4)
    assert [r.label for r in per_class_rows(matrix, LABELS)] == ["fuel", "rent"]


def test_worst_confusions_ordered_by_count():
    pairs = worst_confusions(sample_matrix(), LABELS, limit=2)
    assert {(p.true_label, p.predicted_label) for p in pairs} <= {("rent", "fuel"), ("fuel", "rent"), ("travel", "fuel")}
    assert all(p.count == 1 for p in pairs)
    assert worst_confusions(np.eye(3, dtype=int), ["a", "b", "c"]) == []


def test_fold_keeps_most_frequent_and_preserves_total():
    matrix = sample_matrix()
    labels, folded = fold_matrix(matrix, LABELS, top_k=2)
    assert labels == ["rent", "fuel", OTHER]
    assert np.asarray(folded).sum() == matrix.sum()
    # travel→fuel (1) lands in the "other" row, fuel column
    assert folded[2][1] == 1 and folded[2][2] == 2


def test_fold_without_overflow_keeps_every_class():
    labels, folded = fold_matrix(sample_matrix(), LABELS, top_k=10)
    assert labels == LABELS and len(folded) == 4


def test_html_is_self_contained_and_escapes_labels():
    matrix = confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 2)
    labels = ["<script>x</script>", "Fees & charges"]
    rows = per_class_rows(matrix, labels)
    page = render_html("t", {"accuracy": 2 / 3, "macro_f1": 0.5}, rows, worst_confusions(matrix, labels),
                       confusion_png(labels, matrix.tolist()), {"split": "test"})
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "Fees &amp; charges" in page and "66.67%" in page
    assert 'src="data:image/png;base64,' in page and "http" not in page.split("<body>")[1].split("<script>")[0]


def test_png_is_a_png():
    assert confusion_png(["a", "b"], [[1, 0], [0, 1]])[:8] == b"\x89PNG\r\n\x1a\n"


def test_learning_curves_section_only_with_a_picture():
    matrix = confusion_matrix(np.array([0, 1]), np.array([0, 1]), 2)
    labels = ["a", "b"]
    args = ("t", {"accuracy": 1.0}, per_class_rows(matrix, labels), [], confusion_png(labels, matrix.tolist()), {})
    curves = b"\x89PNG\r\n\x1a\nnot-a-real-picture"
    with_curves = render_html(*args, curves_png=curves)
    assert "<h2>Learning curves</h2>" in with_curves and base64.b64encode(curves).decode() in with_curves
    assert "Learning curves" not in render_html(*args)


def test_html_shows_the_baseline_beside_the_model_in_cards_and_per_class():
    from dataclasses import replace

    matrix = confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 0]), 2)
    rows = [replace(r, baseline_f1=0.25) for r in per_class_rows(matrix, ["rent", "fuel"])]
    page = render_html("t", {"accuracy": 2 / 3, "macro_f1": 0.5}, rows, [], confusion_png(["rent", "fuel"], matrix.tolist()),
                       {"split": "test"}, baseline={"accuracy": 0.6, "macro_f1": 0.8})
    assert "<b>66.67%</b><span>accuracy</span><span>baseline 60.00% · +6.7 pts</span>" in page
    assert "<b>50.00%</b><span>macro F1</span><span class=low>baseline 80.00% · -30.0 pts</span>" in page
    assert "<th>F1</th><th>baseline F1</th>" in page and page.count("<td class=n data-v=0.250000>0.250</td>") == 2
    plain = render_html("t", {"accuracy": 2 / 3}, per_class_rows(matrix, ["rent", "fuel"]), [], b"", {"split": "test"})
    assert "baseline" not in plain
