"""transformers' Kubeflow Trainer callback is added when a TrainJob's controller asks for progress reports."""

from __future__ import annotations

from transformers.integrations.integration_utils import KubeflowCallback

from kubetune.train.callbacks import trainjob_status_callbacks


def test_added_inside_a_trainjob_that_reports_progress(monkeypatch):
    monkeypatch.delenv("DISABLE_KUBEFLOW_INTEGRATION", raising=False)
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_URL", "https://kubeflow-trainer-controller-manager.kubeflow-system:10443/status")
    (callback,) = trainjob_status_callbacks()
    assert isinstance(callback, KubeflowCallback)


def test_absent_elsewhere_or_when_disabled(monkeypatch):
    monkeypatch.delenv("KUBEFLOW_TRAINER_SERVER_URL", raising=False)
    assert trainjob_status_callbacks() == []
    monkeypatch.setenv("KUBEFLOW_TRAINER_SERVER_URL", "https://controller:10443/status")
    monkeypatch.setenv("DISABLE_KUBEFLOW_INTEGRATION", "true")
    assert trainjob_status_callbacks() == []
