"""What a stage prints for people: summary tables at the end of a stage, on the main process only."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from kubetune.distributed import is_main_process


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None) -> str:
    """A plain-text table (numbers right-aligned) that reads well in a terminal and in a KFP step log."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(_is_number(row[i]) for row in rows) if rows else False for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)).rstrip()

    out = [title] if title else []
    # A column without a header (a marker such as "← best") gets no rule: a rule over nothing reads as a lost column.
    out += [line(list(headers)), "  ".join(("-" if h else " ") * w for h, w in zip(headers, widths, strict=True)).rstrip()]
    out += [line(r) for r in cells]
    return "\n".join(out)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], title: str | None = None,
                file: TextIO | None = None) -> None:
    if is_main_process():
        print("\n" + format_table(headers, rows, title) + "\n", file=file or sys.stdout, flush=True)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 1 else f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
