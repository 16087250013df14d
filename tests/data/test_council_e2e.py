"""Opt-in end-to-end check on the real council payments (run with `-m e2e`): the data stages turn them
into a tokenized DatasetDict with the MiniLM tokenizer, grouped by supplier. Asserts print counts
only, never rows (some suppliers are people)."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

from kubetune.config import load_config
from kubetune.data.stages import preprocess, tokenize

from ..conftest import REPO_ROOT, SHARED_DATASETS

COUNCIL = SHARED_DATASETS / "council_spend_bradford" / "payments_2017-12_to_2019-12.csv.gz"
pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def opt_in(request: pytest.FixtureRequest) -> None:
    if "e2e" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("end-to-end check on ../shared/datasets: run with -m e2e")
    if not COUNCIL.exists():
        pytest.skip(f"{COUNCIL} is not on this machine")


def test_council_payments_to_tokenized_minilm_grouped_by_supplier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(REPO_ROOT)  # the config's data path is relative to the repository root
    # Column names in the text only so that the supplier can be read back from it; the split does not depend on them.
    config = load_config(REPO_ROOT / "configs" / "council-spend.yaml", ["serialize.include_column_names=true"])
    pre = preprocess(config, str(tmp_path / "pre"))
    assert sum(pre.rows.values()) == 218_813
    assert (pre.num_real_labels, pre.max_classes) == (458, 1000)

    dataset = datasets.load_from_disk(str(tmp_path / "pre"))
    suppliers = {name: {text.split(", service_label: ")[0] for text in split["text"]} for name, split in dataset.items()}
    assert len(suppliers["train"] & suppliers["test"]) == 0
    assert len(suppliers["train"] & suppliers["validation"]) == 0
    assert all("expenditure_code" not in text for text in dataset["test"]["text"][:1000])

    tok = tokenize(config, str(tmp_path / "pre"), str(tmp_path / "tok"))
    tokenized = datasets.load_from_disk(str(tmp_path / "tok"))
    assert tokenized["train"].column_names == ["input_ids", "token_type_ids", "attention_mask", "labels", "length", "text"]
    assert tok.rows == pre.rows
    assert all(stats["truncated_rows"] == 0 and stats["samples"] == [] for stats in tok.diagnostics["splits"].values())
    metadata = json.loads((tmp_path / "tok" / "dataset_metadata.json").read_text())
    assert metadata["split"]["method"] == "grouped" and metadata["split"]["column"] == "supplier_name"

    assert preprocess(config, str(tmp_path / "pre")).reused
    assert tokenize(config, str(tmp_path / "pre"), str(tmp_path / "tok")).reused
