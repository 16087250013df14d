"""The evaluation report: per-class table, worst-confused pairs, confusion matrix — as data and as HTML.

Ledger data has hundreds of classes; no screen shows a 458×458 matrix. The matrix shown (in the KFP UI
and in the report's picture) keeps the most frequent true classes and folds every other class into
"other"; the full matrix is saved as JSON beside it.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

OTHER = "other"


@dataclass(frozen=True)
class ClassRow:
    label: str
    support: int  # rows of this class in the split
    predicted: int  # rows predicted as this class
    precision: float
    recall: float
    f1: float
    baseline_f1: float | None = None  # the evaluate step's baseline on the same rows; None without one


@dataclass(frozen=True)
class Confusion:
    true_label: str
    predicted_label: str
    count: int
    share_of_true: float  # count / support of the true class


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix


def per_class_rows(matrix: np.ndarray, labels: Sequence[str]) -> list[ClassRow]:
    """One row per class that occurs in the split or in the predictions, most frequent first."""
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    correct = np.diag(matrix)
    rows = []
    for i, label in enumerate(labels):
        if support[i] == 0 and predicted[i] == 0:
            continue
        precision = correct[i] / predicted[i] if predicted[i] else 0.0
        recall = correct[i] / support[i] if support[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(ClassRow(label, int(support[i]), int(predicted[i]), float(precision), float(recall), float(f1)))
    return sorted(rows, key=lambda r: (-r.support, r.label))


def worst_confusions(matrix: np.ndarray, labels: Sequence[str], limit: int = 20) -> list[Confusion]:
    """The off-diagonal cells with the most rows: which class is mistaken for which, and how often."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    support = matrix.sum(axis=1)
    order = np.argsort(off, axis=None)[::-1][:limit]
    pairs = []
    for flat in order:
        t, p = np.unravel_index(flat, off.shape)
        if off[t, p] == 0:
            break
        pairs.append(Confusion(labels[t], labels[p], int(off[t, p]), float(off[t, p] / support[t])))
    return pairs


def fold_matrix(matrix: np.ndarray, labels: Sequence[str], top_k: int) -> tuple[list[str], list[list[int]]]:
    """Keep the `top_k` most frequent true classes; fold the rest (rows and columns) into "other"."""
    support = matrix.sum(axis=1)
    present = [i for i in np.argsort(-support, kind="stable") if support[i] > 0 or matrix[:, i].sum() > 0]
    kept = present[:top_k]
    if len(present) <= top_k:
        return [labels[i] for i in kept], matrix[np.ix_(kept, kept)].tolist()
    rest = [i for i in range(len(labels)) if i not in set(kept)]
    size = len(kept) + 1
    folded = np.zeros((size, size), dtype=np.int64)
    folded[: len(kept), : len(kept)] = matrix[np.ix_(kept, kept)]
    folded[: len(kept), -1] = matrix[np.ix_(kept, rest)].sum(axis=1)
    folded[-1, : len(kept)] = matrix[np.ix_(rest, kept)].sum(axis=0)
    folded[-1, -1] = matrix[np.ix_(rest, rest)].sum()
    return [labels[i] for i in kept] + [OTHER], folded.tolist()


def confusion_png(labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> bytes:
    """A heatmap of the (folded) matrix, rows normalised so rare classes show as clearly as common ones."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = max(6.0, 0.28 * len(labels) + 2.5)
    fig, ax = plt.subplots(figsize=(size, size * 0.9), dpi=110)
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    ticks = range(len(labels))
    short = [label if len(label) <= 28 else label[:27] + "…" for label in labels]
    ax.set_xticks(list(ticks), short, rotation=90, fontsize=7)
    ax.set_yticks(list(ticks), short, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (share of each true class)")
    fig.colorbar(image, ax=ax, fraction=0.035, pad=0.02)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")  # long rotated class names stay whole
    plt.close(fig)
    return buffer.getvalue()


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#1f2933;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #d9e2ec;padding-bottom:.3rem}
.meta{color:#52606d;font-size:.9rem}.cards{display:flex;flex-wrap:wrap;gap:.8rem;margin:1rem 0}
.card{border:1px solid #d9e2ec;border-radius:8px;padding:.6rem 1rem;min-width:8.5rem}.card b{display:block;font-size:1.35rem}
.card span{color:#52606d;font-size:.8rem;display:block}.card span.low{color:#ba2525}table{border-collapse:collapse;width:100%;font-size:.85rem}
th,td{padding:.3rem .5rem;border-bottom:1px solid #e4e7eb;text-align:left}th{background:#f5f7fa;cursor:pointer;position:sticky;top:0}
td.n{text-align:right;font-variant-numeric:tabular-nums}.bar{background:#2680c2;height:.55rem;border-radius:2px;display:inline-block}
.low{color:#ba2525}.scroll{max-height:32rem;overflow:auto;border:1px solid #e4e7eb}img{max-width:100%;border:1px solid #e4e7eb}
"""

_SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach((th,i)=>th.addEventListener('click',()=>{
 const tb=th.closest('table').tBodies[0];const rows=[...tb.rows];const asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
 rows.sort((a,b)=>{const x=a.cells[i].dataset.v??a.cells[i].textContent,y=b.cells[i].dataset.v??b.cells[i].textContent;
 const nx=parseFloat(x),ny=parseFloat(y);const c=(isNaN(nx)||isNaN(ny))?x.localeCompare(y):nx-ny;return asc?c:-c});
 rows.forEach(r=>tb.appendChild(r))}));
"""

def _baseline_line(model: float, baseline: float) -> str:
    from kubetune.evaluation.baseline import points

    lead = points(model, baseline)
    marked = " class=low" if model <= baseline else ""  # the model does not beat the baseline here
    return f"<span{marked}>baseline {baseline:.2%} · {lead}</span>"


_METRIC_NAMES = {
    "accuracy": "accuracy", "macro_f1": "macro F1", "weighted_f1": "weighted F1", "macro_precision": "macro precision",
    "macro_recall": "macro recall", "top5_accuracy": "top-5 accuracy",
}


def render_html(
    title: str,
    metrics: dict[str, float],
    rows: Sequence[ClassRow],
    confusions: Sequence[Confusion],
    png: bytes,
    facts: dict[str, str],
    curves_png: bytes | None = None,
    baseline: dict[str, float] | None = None,
) -> str:
    """A self-contained HTML page (inline CSS, picture and script): readable offline and in the KFP UI.

    `curves_png` (kubetune.evaluation.curves) adds a learning-curves section; None (a model saved
    without training_history.json) leaves it out. With `baseline` (its metrics, same keys), each card
    also shows the baseline's value and the model's lead in points, and the per-class table the
    baseline's F1 (`rows[i].baseline_f1`)."""
    e = html.escape
    cards = "".join(
        f'<div class="card"><b>{value:.2%}</b><span>{e(_METRIC_NAMES.get(name, name))}</span>'
        + (_baseline_line(value, baseline[name]) if baseline and name in baseline else "") + "</div>"
        for name, value in metrics.items() if name in _METRIC_NAMES
    )
    with_baseline = baseline is not None and any(r.baseline_f1 is not None for r in rows)
    fact_line = " · ".join(f"{e(k)}: {e(v)}" for k, v in facts.items())
    class_rows = "".join(
        f"<tr><td>{e(r.label)}</td><td class=n>{r.support:,}</td><td class=n>{r.predicted:,}</td>"
        f"<td class=n data-v={r.precision:.6f}>{r.precision:.3f}</td><td class=n data-v={r.recall:.6f}>{r.recall:.3f}</td>"
        f"<td class=n data-v={r.f1:.6f}{' class=low' if r.f1 < 0.5 else ''}>{r.f1:.3f} "
        f'<span class=bar style="width:{r.f1 * 4:.2f}rem"></span></td>'
        + (f"<td class=n data-v={r.baseline_f1:.6f}>{r.baseline_f1:.3f}</td>" if with_baseline else "") + "</tr>"
        for r in rows
    )
    confusion_rows = "".join(
        f"<tr><td>{e(c.true_label)}</td><td>{e(c.predicted_label)}</td><td class=n>{c.count:,}</td>"
        f"<td class=n data-v={c.share_of_true:.6f}>{c.share_of_true:.1%}</td></tr>"
        for c in confusions
    ) or '<tr><td colspan=4>No confusions: every row was classified correctly.</td></tr>'
    picture = base64.b64encode(png).decode()
    curves = "" if curves_png is None else (
        '<h2>Learning curves</h2>\n<p class="meta">Training and validation during training; the dashed line marks the '
        "best evaluation. A validation curve still rising at the right edge says more epochs may help.</p>\n"
        f'<img alt="learning curves" src="data:image/png;base64,{base64.b64encode(curves_png).decode()}">\n'
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{e(title)}</title><style>{_STYLE}</style></head><body>
<h1>{e(title)}</h1><div class="meta">{fact_line}</div>
<div class="cards">{cards}</div>
<h2>Per class ({len(rows):,} classes; click a column to sort)</h2>
<div class="scroll"><table class="sortable"><thead><tr><th>class</th><th>rows</th><th>predicted</th><th>precision</th>
<th>recall</th><th>F1</th>{"<th>baseline F1</th>" if with_baseline else ""}</tr></thead><tbody>{class_rows}</tbody></table></div>
<h2>Most confused pairs</h2>
<table class="sortable"><thead><tr><th>true class</th><th>predicted as</th><th>rows</th><th>share of the true class</th></tr></thead>
<tbody>{confusion_rows}</tbody></table>
<h2>Confusion matrix</h2>
<p class="meta">The most frequent classes; all others are folded into “other”. The full matrix is in confusion.json.</p>
<img alt="confusion matrix" src="data:image/png;base64,{picture}">
{curves}<script>{_SORT_SCRIPT}</script>
</body></html>
"""
