"""Fixtures for `kubetune submit / schedule / status`: a recording KFP server on 127.0.0.1, a cluster run
config, and canary secrets planted in the environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.pipeline import remote
from tests.remote.fake_kfp import FakeKfp, start

# Values no request and no printed line may contain (the token: only as the Authorization header).
CANARIES = {
    "AWS_SECRET_ACCESS_KEY": "canary-aws-secret-5f2c9d",
    "MLFLOW_TRACKING_PASSWORD": "canary-mlflow-password-81b7e4",
    "KF_PIPELINES_TOKEN": "canary-kfp-token-c03a61",
}
CLUSTER_CONFIG = """\
# kubetune submit --config run.yaml
data:
  uri: s3://ledgers/lines.parquet
split:
  label_column: account_code
serialize:
  text_columns: [supplier, description]
training:
  epochs: 3
storage:
  runs_uri: s3://kubetune-runs
tracking:
  tracking_uri: {tracking_uri}
  experiment_name: ledger-codes
cluster:
  launcher: pytorchjob
  namespace: ml-training
  service_account: ledger-trainer
  storage_secret: team-s3
  workers: 2
  gpus_per_worker: 4
"""


@pytest.fixture
def kfp_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeKfp]:
    """The fake KFP API server; no KFP address, token or kfp context from the developer's machine."""
    import kfp

    for name in (*remote.HOST_ENVS, remote.TOKEN_ENV, remote.UI_ENV, "KF_PIPELINES_SA_TOKEN_PATH",
                 "KF_PIPELINES_DEFAULT_EXPERIMENT_NAME", "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME",
                 "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID", "KF_PIPELINES_APP_OAUTH2_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    monkeypatch.setattr(remote, "POLL_SECONDS", 0.0)
    fake = FakeKfp()
    server, thread = start(fake)
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def run_yaml(tmp_path: Path, kfp_server: FakeKfp) -> Path:
    """A config fit for a cluster; its MLflow server is the fake server."""
    path = tmp_path / "ledger.yaml"
    path.write_text(CLUSTER_CONFIG.format(tracking_uri=kfp_server.url))
    return path


@pytest.fixture
def canaries(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)
    return dict(CANARIES)
