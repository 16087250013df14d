"""The label map: a fixed number of label slots, real labels first, dummy slots after.

A classifier head has `max_classes` outputs. The labels seen in the data fill the first slots in a
stable order; the rest are dummy slots (`dummy1`, `dummy2`, ...), so a model can be retrained later on
data with new labels without changing the shape of its head. Dummy slots never win a prediction:
the trainer masks their logits (see kubetune.train.loss).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kubetune.errors import DataError

LABEL_MAP_FILE = "label_map.json"


@dataclass(frozen=True)
class LabelMap:
    label_column: str
    labels: tuple[str, ...]  # one name per slot: real labels, then dummy slots
    num_real_labels: int

    @classmethod
    def build(
        cls, real_labels: Iterable[str], label_column: str, max_classes: int | None, dummy_prefix: str
    ) -> LabelMap:
        """Real labels in sorted order, then dummy slots up to `max_classes` (unset: no dummy slots)."""
        real = sorted({str(label) for label in real_labels})
        slots = len(real) if max_classes is None else max_classes
        if len(real) > slots:
            raise DataError(
                f"column {label_column!r} has {len(real)} distinct labels but split.max_classes is {slots}; "
                f"raise split.max_classes to at least {len(real)}"
            )
        taken = set(real)
        dummies: list[str] = []
        index = 1
        while len(real) + len(dummies) < slots:
            name = f"{dummy_prefix}{index}"
            if name not in taken:
                dummies.append(name)
            index += 1
        return cls(label_column=label_column, labels=tuple(real + dummies), num_real_labels=len(real))

    @property
    def max_classes(self) -> int:
        return len(self.labels)

    @property
    def real_labels(self) -> tuple[str, ...]:
        return self.labels[: self.num_real_labels]

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labels)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    def is_dummy(self, slot: int) -> bool:
        return slot >= self.num_real_labels

    def to_json(self) -> dict:
        return {
            "label_column": self.label_column,
            "max_classes": self.max_classes,
            "num_real_labels": self.num_real_labels,
            "labels": list(self.labels),
        }

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / LABEL_MAP_FILE
        path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> LabelMap:
        path = Path(directory) / LABEL_MAP_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path} not found: the input is not a kubetune dataset or model directory") from None
        labels = tuple(data["labels"])
        if len(labels) != data.get("max_classes", len(labels)):
            raise DataError(f"{path}: {len(labels)} labels listed but max_classes is {data['max_classes']}")
        return cls(label_column=data["label_column"], labels=labels, num_real_labels=int(data["num_real_labels"]))
