"""Training from and to object storage (moto's S3 server on 127.0.0.1): checkpoints are uploaded with
the marker last, the final model is published whole, and a restart downloads the checkpoint it resumes."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from kubetune import storage
from kubetune.config import load_config
from kubetune.train.outputs import OutputPaths
from kubetune.train.recipe import train

from .conftest import write_config

pytestmark = pytest.mark.slow


def keys(endpoint: str, bucket: str, prefix: str) -> set[str]:
    listed = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {item["Key"][len(prefix):] for item in listed.get("Contents", [])}


def test_train_from_and_to_s3_then_resume(s3_endpoint: str, s3_bucket: str, tiny_bert: Path, bert_tokenized: Path,
                                         tmp_path: Path):
    data = f"s3://{s3_bucket}/tokenized"
    storage.upload_dir(bert_tokenized, data)
    out = f"s3://{s3_bucket}/runs/one"
    config_file = write_config(tmp_path / "run.yaml", tiny_bert)

    train(load_config(config_file, ["training.max_steps=6", "training.save_steps=2"]), data, out)
    stored = keys(s3_endpoint, s3_bucket, "runs/one/")
    checkpoints = {key.split("/")[1] for key in stored if key.startswith("checkpoints/")}
    assert checkpoints == {"checkpoint-4", "checkpoint-6"}  # save_total_limit 2: checkpoint-2 was removed
    assert {"checkpoints/checkpoint-6/_COMPLETE", "checkpoints/checkpoint-6/optimizer.pt",
            "checkpoints/checkpoint-6/adapter_model.safetensors", "checkpoints/checkpoint-6/trainer_state.json"} <= stored
    assert {"model/_COMPLETE", "model/adapter_model.safetensors", "model/model_metadata.json", "model/label_map.json",
            "config.yaml", "run.json", "_COMPLETE"} <= stored
    # Nothing is left in the node's scratch folder once everything is uploaded.
    assert not OutputPaths.for_output(out, load_config(config_file).storage).local_root.exists()

    metrics = train(load_config(config_file, ["training.max_steps=8", "training.save_steps=2"]), data, out)
    assert metrics["global_step"] == 8
    metadata = json.loads(storage.read_text(f"{out}/model/model_metadata.json"))
    assert metadata["training"]["resumed_from"] == "checkpoint-6"
    checkpoints = {key.split("/")[0] for key in keys(s3_endpoint, s3_bucket, "runs/one/checkpoints/")}
    assert checkpoints == {"checkpoint-6", "checkpoint-8"}


def test_incomplete_remote_checkpoint_is_removed_not_resumed(s3_endpoint: str, s3_bucket: str, tiny_bert: Path,
                                                           bert_tokenized: Path, tmp_path: Path):
    out = f"s3://{s3_bucket}/runs/two"
    config_file = write_config(tmp_path / "run.yaml", tiny_bert)
    train(load_config(config_file, ["training.max_steps=2", "training.save_steps=2"]), str(bert_tokenized), out)
    # An upload cut short by a dying pod: files of checkpoint-4 but no marker.
    storage.write_text(f"{out}/checkpoints/checkpoint-4/trainer_state.json", "{}")
    metrics = train(load_config(config_file, ["training.max_steps=3", "training.save_steps=2"]), str(bert_tokenized), out)
    assert metrics["global_step"] == 3
    assert json.loads(storage.read_text(f"{out}/model/model_metadata.json"))["training"]["resumed_from"] == "checkpoint-2"
    # checkpoint-3: the Trainer also saves at the last step
    assert {key.split("/")[0] for key in keys(s3_endpoint, s3_bucket, "runs/two/checkpoints/")} == {"checkpoint-2", "checkpoint-3"}
