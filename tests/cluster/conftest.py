"""Fixtures of the cluster tests: a fake Kubernetes API on 127.0.0.1 (S3: the root conftest's s3_bucket)."""

from __future__ import annotations

import pytest

from tests.cluster.servers import FakeKubernetes


@pytest.fixture
def job_kind() -> str:
    """The kind of training job the fake API serves; tests of both kinds override it with parameters."""
    return "pytorchjob"


@pytest.fixture
def kube(tmp_path, monkeypatch, job_kind):
    """A fake Kubernetes API server; KUBECONFIG points at it, as it would at a real cluster."""
    server = FakeKubernetes(kind=job_kind).start()
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(server.write_kubeconfig(tmp_path / "kubeconfig")))
    yield server
    server.stop()
