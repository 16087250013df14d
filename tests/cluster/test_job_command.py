"""`kubetune job`: the training job the train step would create, printed for `kubectl apply -f -`."""

from __future__ import annotations

import json

import pytest
import yaml

from kubetune import storage
from kubetune.cli import main
from kubetune.config import load_config
from kubetune.launchers import TrainRequest, get_launcher
from tests.cluster import test_crd_schemas as schemas
from tests.cluster.test_job import REPO

CONFIG = REPO / "configs/qwen2.5-0.5b-lora-zero2.yaml"
ARGS = ["job", "-c", str(CONFIG), "--data", "s3://kubetune/tok", "--run-id", "r1"]
RUNS = "storage.runs_uri=s3://kubetune/runs"
CRD = {"trainjob": schemas.TRAINJOB_CRD, "pytorchjob": schemas.PYTORCHJOB_CRD}
CANARIES = {"AWS_ACCESS_KEY_ID": "CANARYACCESSKEY0001", "AWS_SECRET_ACCESS_KEY": "canary-secret-4f1d9b2c7e",
            "MLFLOW_TRACKING_PASSWORD": "canary-password-8a7b6c"}


@pytest.mark.parametrize("launcher", ["trainjob", "pytorchjob"])
@pytest.mark.parametrize("runtime", ["torch-distributed", "deepspeed-distributed"])
def test_prints_the_job_the_launcher_submits(launcher, runtime, capsys, monkeypatch):
    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)
    assert main([*ARGS, "--launcher", launcher, RUNS, f"cluster.runtime={runtime}", "cluster.mlflow_secret=mlflow-auth",
                 "tracking.tracking_uri=http://mlflow.kubetune:5000"]) == 0
    out, err = capsys.readouterr()
    job = yaml.safe_load(out)
    config = load_config(CONFIG, ["storage.runs_uri=s3://kubetune/runs", f"cluster.runtime={runtime}",
                                  "cluster.mlflow_secret=mlflow-auth", "tracking.tracking_uri=http://mlflow.kubetune:5000"])
    request = TrainRequest(config=config, data_uri="s3://kubetune/tok", output_uri="s3://kubetune/runs/r1/train", run_id="r1")
    assert job == get_launcher(launcher).build(request)
    assert job["metadata"]["labels"]["kubetune.io/run-id"] == "r1"
    assert [name for name, value in CANARIES.items() if value in out + err] == []
    assert "mlflow-auth" in out and "kubetune-s3" in out  # referenced, not inlined
    assert "the job's trainer reads s3://kubetune/runs/r1/train/launch-config.yaml" in err
    if CRD[launcher].is_file():
        assert schemas.errors(CRD[launcher], job) == []


def test_json_output_and_the_launcher_of_the_config(capsys):
    assert main([*ARGS, "-o", "json", RUNS]) == 0  # the config says launcher: pytorchjob
    job = json.loads(capsys.readouterr().out)
    assert job["kind"] == "PyTorchJob" and job["metadata"]["name"] == "kubetune-r1"


def test_a_local_launcher_needs_a_choice(capsys):
    assert main(["job", "-c", str(REPO / "configs/demo.yaml"), "--data", "s3://kubetune/tok"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert "cluster.launcher: local runs no cluster job; pass --launcher trainjob" in err


def test_local_data_is_refused_before_anything_is_printed(capsys):
    assert main(["job", "-c", str(CONFIG), "--data", "runs/tok", "--launcher", "trainjob",
                 "storage.runs_uri=s3://kubetune/runs"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "the data of the train step is a local path (runs/tok)" in err


def test_upload_config_writes_what_the_trainer_reads(s3_bucket, capsys):
    assert main(["job", "-c", str(CONFIG), "--data", f"s3://{s3_bucket}/tok", "--run-id", "r2", "--launcher", "trainjob",
                 "--upload-config", f"storage.runs_uri=s3://{s3_bucket}/runs", "storage.endpoint_url=null"]) == 0
    out, err = capsys.readouterr()
    uri = f"s3://{s3_bucket}/runs/r2/train/launch-config.yaml"
    assert f"kubetune: wrote {uri}" in err
    job = yaml.safe_load(out)
    assert uri in job["spec"]["trainer"]["args"]
    written = storage.read_text(uri)
    assert load_config(CONFIG, [f"storage.runs_uri=s3://{s3_bucket}/runs", "storage.endpoint_url=null",
                                "cluster.launcher=trainjob"]).to_yaml() == written
