"""kubetune.serving's MLflow calls leave the process's tracking URI (and its environment) as they found it."""

from __future__ import annotations

import os

import mlflow

from kubetune.serving import tracking_uri_set


def test_tracking_uri_set_restores_an_unset_uri(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(None)
    inside = f"sqlite:///{tmp_path}/a.db"
    with tracking_uri_set(inside):
        assert os.environ["MLFLOW_TRACKING_URI"] == inside == mlflow.get_tracking_uri()
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_tracking_uri_set_restores_the_previous_uri(monkeypatch, tmp_path):
    before = f"sqlite:///{tmp_path}/before.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", before)
    with tracking_uri_set(f"sqlite:///{tmp_path}/b.db"):
        pass
    assert os.environ["MLFLOW_TRACKING_URI"] == before == mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(None)
