"""Fixtures of the cluster tests: moto's S3 and a fake Kubernetes API on 127.0.0.1."""

from __future__ import annotations

import uuid

import pytest

from tests.cluster.servers import FakeKubernetes, moto_s3


@pytest.fixture(scope="session")
def s3_server():
    with moto_s3() as url:
        yield url


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """A fresh bucket on moto, with the credentials and endpoint a pod would get from its Secret."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    bucket = f"kubetune-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def kube(tmp_path, monkeypatch):
    """A fake Kubernetes API server; KUBECONFIG points at it, as it would at a real cluster."""
    server = FakeKubernetes().start()
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(server.write_kubeconfig(tmp_path / "kubeconfig")))
    yield server
    server.stop()
