"""Each data component alone through kfp.local, as another pipeline would reuse it (components/*.yaml).

train and evaluate run through kfp.local in test_local_run.py (the whole pipeline with a tiny model).
"""

# No `from __future__ import annotations`: KFP reads the pipeline's annotations as types.

import json
from pathlib import Path

import pytest
import yaml
from kfp import local

from kubetune.data.labels import LabelMap
from kubetune.pipeline import components

pytestmark = pytest.mark.slow

CONFIG = {
    "data": {"uri": "demo://ledger?rows=300&seed=5"},
    "split": {"label_column": "account_code", "test_size": 0.2, "val_size": 0.1, "max_classes": 64},
    "serialize": {"text_columns": ["supplier", "description"], "include_column_names": False},
    "tokenize": {"max_length": 16},
}


@pytest.fixture(scope="module")
def kfp_local(tmp_path_factory):
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path_factory.mktemp("kfp")),
               raise_on_error=True)


@pytest.fixture(scope="module")
def validated(kfp_local, tiny_bert):
    config = dict(CONFIG, model={"name": str(tiny_bert)}, tracking={"enable": False})
    return components.validate(
        config=yaml.safe_dump(config), overrides=["split.seed=7"], data_uri="", base_model="", epochs=2.0,
        learning_rate=0.0, workers=0, gpus_per_worker=0, launcher="local", run_id="r-components",
    )


def test_validate_resolves_the_config_and_slices_it_per_step(validated):
    outputs = validated.outputs
    resolved = yaml.safe_load(outputs["run_config"])
    assert resolved["split"]["seed"] == 7 and resolved["training"]["epochs"] == 2.0
    assert resolved["cluster"]["launcher"] == "local"
    assert set(yaml.safe_load(outputs["preprocess_config"])) == {"data", "split", "serialize", "storage"}
    assert set(yaml.safe_load(outputs["tokenize_config"])) == {"tokenize", "storage"}
    assert outputs["run_id"] == "r-components" and outputs["mlflow_run_id"] == ""
    assert len(outputs["data_fingerprint"]) == 16


def test_preprocess_alone(validated):
    prepared = components.preprocess(config=validated.outputs["preprocess_config"],
                                     data_fingerprint=validated.outputs["data_fingerprint"])
    dataset = prepared.outputs["dataset"]
    assert sum(dataset.metadata["rows"].values()) == 300
    assert dataset.metadata["max_classes"] == 64
    assert LabelMap.load(dataset.path).max_classes == 64


def test_preprocess_and_tokenize_reused_in_another_pipeline(validated):
    from typing import NamedTuple

    from kfp import dsl

    class Outputs(NamedTuple):
        dataset: dsl.Dataset
        diagnostics: dsl.Markdown

    @dsl.pipeline
    def data_only(config: str, tokenize_config: str, fingerprint: str) -> Outputs:
        prepared = components.preprocess(config=config, data_fingerprint=fingerprint)
        tokenized = components.tokenize(config=tokenize_config, data=prepared.outputs["dataset"])
        return Outputs(dataset=tokenized.outputs["dataset"], diagnostics=tokenized.outputs["diagnostics"])

    run = data_only(config=validated.outputs["preprocess_config"], tokenize_config=validated.outputs["tokenize_config"],
                    fingerprint=validated.outputs["data_fingerprint"])
    from datasets import load_from_disk

    splits = load_from_disk(run.outputs["dataset"].path)
    assert {"input_ids", "attention_mask", "labels", "length"} <= set(splits["train"].column_names)
    assert sum(len(split) for split in splits.values()) == 300
    assert max(splits["train"]["length"]) <= 16
    diagnostics = Path(run.outputs["diagnostics"].path).read_text()
    assert "train" in diagnostics and "p50" in diagnostics.lower()
    assert json.loads((Path(run.outputs["dataset"].path) / "tokenize_diagnostics.json").read_text())
