"""`data.ops` (each operation and its errors) and `data.sources` (several files, columns aligned)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from kubetune.config import DataOp, FilterOp, validate_config
from kubetune.data.ops import (
    apply_ops,
    filter_rows,
    fraction,
    map_template,
    select_columns,
    select_rows,
    shuffle,
)
from kubetune.errors import DataError


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame({"instruction": ["a", "b", "c", "d", "e"], "input": ["1", None, "3", "", "5"],
                         "score": [0.1, 0.5, 0.9, 0.3, 0.7], "lang": ["en", "de", "en", "fr", "en"]})


def test_select_columns_keeps_them_in_order(frame: pd.DataFrame):
    assert list(select_columns(frame, ["lang", "instruction"]).columns) == ["lang", "instruction"]
    with pytest.raises(DataError, match=r"^data.ops.0.select_columns: column 'nope' not in the rows"):
        select_columns(frame, ["nope"], "data.ops.0.select_columns")


def test_select_rows_by_indices_and_slice(frame: pd.DataFrame):
    assert select_rows(frame, [4, 0])["instruction"].tolist() == ["e", "a"]
    assert select_rows(frame, "1:4")["instruction"].tolist() == ["b", "c", "d"]
    assert select_rows(frame, "::2")["instruction"].tolist() == ["a", "c", "e"]
    with pytest.raises(DataError, match=r"select_rows: row 9 does not exist; the rows are numbered 0..4"):
        select_rows(frame, [9])


@pytest.mark.parametrize(("op", "value", "expected"), [
    ("==", "en", ["a", "c", "e"]), ("!=", "en", ["b", "d"]), ("in", ["de", "fr"], ["b", "d"]),
    ("not_in", ["en"], ["b", "d"]), ("contains", "e", ["a", "b", "c", "e"]),
])
def test_filter_on_a_text_column(frame: pd.DataFrame, op: str, value, expected: list[str]):
    assert filter_rows(frame, FilterOp(column="lang", op=op, value=value))["instruction"].tolist() == expected


def test_filter_on_numbers_and_nulls(frame: pd.DataFrame):
    assert filter_rows(frame, FilterOp(column="score", op=">=", value=0.5))["instruction"].tolist() == ["b", "c", "e"]
    assert filter_rows(frame, FilterOp(column="score", op="<", value=0.3))["instruction"].tolist() == ["a"]
    assert filter_rows(frame, FilterOp(column="input", op="is_null"))["instruction"].tolist() == ["b"]
    assert filter_rows(frame, FilterOp(column="input", op="not_null"))["instruction"].tolist() == ["a", "c", "d", "e"]
    with pytest.raises(DataError, match=r"filter: column 'missing' not in the rows"):
        filter_rows(frame, FilterOp(column="missing", op="==", value=1))
    with pytest.raises(DataError, match=r"filter: cannot compare column 'lang'"):
        filter_rows(frame, FilterOp(column="lang", op=">", value=3))


def test_map_writes_a_template_of_columns(frame: pd.DataFrame):
    out = map_template(frame, "prompt", "{instruction}\n{input}")
    assert out["prompt"].tolist() == ["a\n1", "b\n", "c\n3", "d\n", "e\n5"]
    with pytest.raises(DataError, match=r"^map: column 'output' not in the rows"):
        map_template(frame, "prompt", "{instruction} {output}")
    with pytest.raises(DataError, match=r"map: template '\{\} x' has an empty field"):
        map_template(frame, "prompt", "{} x")
    with pytest.raises(DataError, match=r"map: template '\{instruction' is not a valid format string"):
        map_template(frame, "prompt", "{instruction")


def test_fraction_and_shuffle_are_seeded(frame: pd.DataFrame):
    import numpy as np

    sample = fraction(frame, 0.4, seed=1)["instruction"].tolist()
    chosen = sorted(np.random.default_rng(1).choice(5, size=2, replace=False))
    assert sample == [list("abcde")[i] for i in chosen]  # the seeded rows, in their original order
    shuffled = shuffle(frame, seed=3)["instruction"].tolist()
    assert shuffled == [list("abcde")[i] for i in np.random.default_rng(3).permutation(5)]
    assert sorted(shuffled) == list("abcde")


def test_apply_ops_runs_them_in_order_and_names_the_op_that_empties_the_rows(frame: pd.DataFrame):
    ops = [DataOp(filter={"column": "lang", "value": "en"}), DataOp(map={"column": "prompt", "template": "{instruction}!"}),
           DataOp(select_columns=["prompt"])]
    assert apply_ops(frame, ops).to_dict("list") == {"prompt": ["a!", "c!", "e!"]}
    with pytest.raises(DataError, match=r"^data.ops.1.filter: no rows are left after this operation"):
        apply_ops(frame, [DataOp(shuffle={}), DataOp(filter={"column": "lang", "value": "xx"})])
    with pytest.raises(DataError, match=r"^data.ops.0.select_columns: column 'x' not in the rows"):
        apply_ops(frame, [DataOp(select_columns=["x"])])


def config_for(tmp_path: Path, **data):
    return validate_config({"task": "sft", "data": data, "sft": {"prompt_column": "prompt", "response_column": "response"}})


def test_sources_are_concatenated_with_columns_aligned(tmp_path: Path):
    from kubetune.data.sft_stages import load_rows

    pd.DataFrame({"prompt": ["p1"], "response": ["r1"]}).to_csv(tmp_path / "a.csv", index=False)
    (tmp_path / "b.jsonl").write_text(json.dumps({"response": "r2", "prompt": "p2"}) + "\n")
    folder = tmp_path / "more"
    folder.mkdir()
    pd.DataFrame({"response": ["r3", "r4"], "prompt": ["p3", "p4"]}).to_parquet(folder / "part-0.parquet")
    config = config_for(tmp_path, sources=[str(tmp_path / "a.csv"), str(tmp_path / "b.jsonl"), str(folder)],
                        ops=[{"select_rows": "1:"}])
    rows = load_rows(config)
    assert rows.astype(str).to_dict("list") == {"prompt": ["p2", "p3", "p4"], "response": ["r2", "r3", "r4"]}


def test_a_source_with_other_columns_is_an_error_naming_it(tmp_path: Path):
    from kubetune.data.sft_stages import load_rows

    pd.DataFrame({"prompt": ["p1"], "response": ["r1"]}).to_csv(tmp_path / "a.csv", index=False)
    pd.DataFrame({"prompt": ["p2"], "answer": ["r2"]}).to_csv(tmp_path / "b.csv", index=False)
    config = config_for(tmp_path, sources=[str(tmp_path / "a.csv"), str(tmp_path / "b.csv")])
    with pytest.raises(DataError, match=r"^data.sources.1 .*b.csv: its columns differ from those of data.sources.0 .*a.csv "
                                        r"\(lacks response; adds answer\)"):
        load_rows(config)


def test_a_text_file_is_one_row_per_line(tmp_path: Path):
    from kubetune.data.sft_stages import load_rows

    (tmp_path / "corpus.txt").write_text("first line\n\nsecond line\n")
    config = validate_config({"task": "sft", "data": {"uri": str(tmp_path / "corpus.txt")}, "sft": {"text_column": "text"}})
    assert load_rows(config).to_dict("list") == {"text": ["first line", "second line"]}


def test_a_format_column_missing_after_the_ops_names_the_key(tmp_path: Path):
    from kubetune.data.sft_stages import load_rows

    pd.DataFrame({"prompt": ["p1"], "response": ["r1"]}).to_csv(tmp_path / "a.csv", index=False)
    config = config_for(tmp_path, uri=str(tmp_path / "a.csv"), ops=[{"select_columns": ["prompt"]}])
    with pytest.raises(DataError, match=r"^sft.response_column: column 'response' not in data.uri .*a.csv after data.ops"):
        load_rows(config)
