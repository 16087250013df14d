"""`kubetune status`: the run's state, each step's state and duration, the MLflow link and the kubectl hint."""

from __future__ import annotations

import pytest

from kubetune.config import load_config
from tests.remote.conftest import CANARIES
from tests.remote.test_submit import kubetune

RUN_ID = "6f1c2a0e-8d4b-4c1a-9a57-3e1b2f0c9d11"


def task(step: str, state: str, start: str | None = None, end: str | None = None, error: str | None = None) -> dict:
    detail = {"run_id": RUN_ID, "task_id": f"task-{step}", "display_name": step, "state": state,
              "create_time": start or "1970-01-01T00:00:00Z", "start_time": start or "1970-01-01T00:00:00Z",
              "end_time": end or "1970-01-01T00:00:00Z"}
    if error:
        detail["error"] = {"code": 2, "message": error, "details": []}
    return detail


def add_run(fake, config_text: str, state: str, tasks: list[dict], finished: str = "1970-01-01T00:00:00Z",
            parameters: dict | None = None) -> None:
    fake.runs[RUN_ID] = {
        "run_id": RUN_ID, "experiment_id": "exp-1", "display_name": "ledger 2025-06-02 08:00:00",
        "runtime_config": {"parameters": parameters if parameters is not None else {"config": config_text}},
        "service_account": "ledger-trainer", "created_at": "2025-06-02T08:00:00Z", "finished_at": finished,
        "state": state, "run_details": {"task_details": [
            # KFP lists the pipeline's own DAG among the tasks; it is not a step.
            {"display_name": "kubetune", "state": state, "task_id": "root",
             "create_time": "2025-06-02T08:00:00Z", "start_time": "2025-06-02T08:00:00Z"},
            *tasks]},
    }


def finished_tasks() -> list[dict]:
    return [
        task("validate", "SUCCEEDED", "2025-06-02T08:00:05Z", "2025-06-02T08:00:19Z"),
        task("preprocess", "SKIPPED", "2025-06-02T08:00:20Z", "2025-06-02T08:00:21Z"),
        task("tokenize", "SUCCEEDED", "2025-06-02T08:00:22Z", "2025-06-02T08:03:24Z"),
        # A retried step: the newer attempt is the step's state.
        task("train", "FAILED", "2025-06-02T08:03:30Z", "2025-06-02T08:04:00Z", error="pod OOMKilled"),
        task("train", "SUCCEEDED", "2025-06-02T08:05:00Z", "2025-06-02T09:17:45Z"),
        task("evaluate", "SUCCEEDED", "2025-06-02T09:18:00Z", "2025-06-02T09:19:10Z"),
        task("promote", "SUCCEEDED", "2025-06-02T09:19:12Z", "2025-06-02T09:19:25Z"),
    ]


def test_status_shows_each_step_the_mlflow_link_and_the_job(kfp_server, run_yaml, capsys):
    add_run(kfp_server, load_config(run_yaml).to_yaml(), "SUCCEEDED", finished_tasks(), finished="2025-06-02T09:19:30Z")
    kfp_server.mlflow_experiments["ledger-codes"] = "7"
    kfp_server.mlflow_runs[("7", RUN_ID)] = "0c1d2e3f"

    code, out, err = kubetune(capsys, "status", RUN_ID, "--host", kfp_server.url)

    assert code == 0, err
    assert out.splitlines() == [
        f"run       {RUN_ID}  ledger 2025-06-02 08:00:00",
        "state     SUCCEEDED, took 1h 19m",
        f"KFP UI    {kfp_server.url}/#/runs/details/{RUN_ID}",
        "",
        "step        state      started (UTC)        duration",
        "----------  ---------  -------------------  --------",
        "validate    SUCCEEDED  2025-06-02 08:00:05  14s",
        "preprocess  SKIPPED    2025-06-02 08:00:20  1s",
        "tokenize    SUCCEEDED  2025-06-02 08:00:22  3m 02s",
        "train       SUCCEEDED  2025-06-02 08:05:00  1h 12m",
        "evaluate    SUCCEEDED  2025-06-02 09:18:00  1m 10s",
        "promote     SUCCEEDED  2025-06-02 09:19:12  13s",
        "",
        f"MLflow    {kfp_server.url}/#/experiments/7/runs/0c1d2e3f  (tag kubetune.run_id={RUN_ID})",
        f"job       kubectl get pytorchjobs -n ml-training -l kubetune.io/run-id={RUN_ID}",
    ]
    (search,) = kfp_server.sent("POST", "/api/2.0/mlflow/runs/search")
    assert search.json["filter"] == f"tags.`kubetune.run_id` = '{RUN_ID}'"


def test_a_failed_step_shows_its_error(kfp_server, run_yaml, capsys):
    add_run(kfp_server, load_config(run_yaml).to_yaml(), "FAILED", [
        task("validate", "SUCCEEDED", "2025-06-02T08:00:05Z", "2025-06-02T08:00:19Z"),
        task("preprocess", "FAILED", "2025-06-02T08:00:20Z", "2025-06-02T08:00:31Z",
             error="split.label_column: column 'account_code' is not in the data"),
    ], finished="2025-06-02T08:00:40Z")

    code, out, _ = kubetune(capsys, "status", RUN_ID, "--host", kfp_server.url)

    assert code == 0  # the status was shown; `--watch` is the form whose exit status follows the run
    lines = out.splitlines()
    assert "tokenize    -" in lines and "evaluate    -" in lines
    assert "error     preprocess: split.label_column: column 'account_code' is not in the data" in lines


def test_without_an_mlflow_run_the_tag_and_server_are_shown(kfp_server, run_yaml, capsys):
    add_run(kfp_server, load_config(run_yaml).to_yaml(), "RUNNING", [
        task("validate", "RUNNING", "2025-06-02T08:00:05Z")])

    code, out, _ = kubetune(capsys, "status", RUN_ID, "--host", kfp_server.url)

    assert code == 0
    assert (f"MLflow    runs tagged kubetune.run_id={RUN_ID} in experiment 'ledger-codes' at {kfp_server.url}"
            in out.splitlines())
    assert " so far" in next(line for line in out.splitlines() if line.startswith("validate"))


def test_a_run_id_parameter_names_the_tag_and_the_job_label(kfp_server, run_yaml, capsys):
    add_run(kfp_server, "", "RUNNING", [], parameters={
        "config": load_config(run_yaml).to_yaml(), "run_id": "ledger-june", "overrides": ["cluster.namespace=team-b"]})

    code, out, _ = kubetune(capsys, "status", RUN_ID, "--host", kfp_server.url)

    assert code == 0
    assert "job       kubectl get pytorchjobs -n team-b -l kubetune.io/run-id=ledger-june" in out.splitlines()


def test_the_kubectl_hint_uses_the_label_value_the_launcher_sets(kfp_server, run_yaml, capsys):
    from kubetune.cluster.job import run_id_label

    add_run(kfp_server, "", "RUNNING", [], parameters={"config": load_config(run_yaml).to_yaml(),
                                                       "run_id": "Ledger June/2025"})

    code, out, _ = kubetune(capsys, "status", RUN_ID, "--host", kfp_server.url)

    assert code == 0
    label = run_id_label("Ledger June/2025")
    assert label != "Ledger June/2025"  # not a valid label value as it stands
    assert f"job       kubectl get pytorchjobs -n ml-training -l kubetune.io/run-id={label}" in out.splitlines()


def test_a_config_given_by_uri_still_gets_a_kubectl_hint(kfp_server, capsys):
    add_run(kfp_server, "", "PENDING", [], parameters={"config": "s3://configs/ledger.yaml"})

    code, out, _ = kubetune(capsys, "status", RUN_ID, "--host", kfp_server.url)

    assert code == 0
    assert out.splitlines()[-2:] == [
        f"MLflow    runs tagged kubetune.run_id={RUN_ID}",
        f"job       kubectl get pytorchjobs --all-namespaces -l kubetune.io/run-id={RUN_ID}",
    ]
    assert kfp_server.sent("POST", "/api/2.0/mlflow/runs/search") == []


def test_an_unknown_run_is_one_line(kfp_server, capsys):
    code, out, err = kubetune(capsys, "status", "no-such-run", "--host", kfp_server.url)
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"kubetune: error: run no-such-run: not found at {kfp_server.url}; check the id (`kubetune submit` prints it, "
        "the KFP UI lists runs)"
    ]


def test_no_host_is_one_line_and_nothing_is_sent(kfp_server, capsys):
    code, _, err = kubetune(capsys, "status", RUN_ID)
    assert code == 2
    assert len(err.splitlines()) == 1 and "pass --host URL or set $KFP_HOST" in err
    assert kfp_server.requests == []


@pytest.mark.parametrize(("final", "exit_code"), [("SUCCEEDED", 0), ("FAILED", 1), ("CANCELED", 1)])
def test_watch_follows_to_the_end_and_exits_by_its_state(kfp_server, run_yaml, capsys, final, exit_code):
    add_run(kfp_server, load_config(run_yaml).to_yaml(), "PENDING", [])
    kfp_server.run_updates = [
        {"state": "RUNNING", "run_details": {"task_details": [task("validate", "RUNNING", "2025-06-02T08:00:05Z")]}},
        {"state": "RUNNING", "run_details": {"task_details": [task("validate", "RUNNING", "2025-06-02T08:00:05Z")]}},
        {"state": final, "finished_at": "2025-06-02T08:01:00Z", "run_details": {"task_details": [
            task("validate", final, "2025-06-02T08:00:05Z", "2025-06-02T08:00:50Z")]}},
    ]

    code, out, _ = kubetune(capsys, "status", RUN_ID, "--host", kfp_server.url, "--watch")

    assert code == exit_code
    progress = [line[10:] for line in out.splitlines() if line[:2].isdigit() and line[2] == ":"]
    assert progress == ["run RUNNING", "validate RUNNING", f"run {final}", f"validate {final} after 45s"]
    assert f"state     {final}, took 1m 00s" in out.splitlines()


def test_no_secret_reaches_the_server_or_the_terminal(kfp_server, run_yaml, capsys, canaries):
    kfp_server.required_token = CANARIES["KF_PIPELINES_TOKEN"]
    kfp_server.mlflow_experiments["ledger-codes"] = "7"
    outputs = []
    for argv in (
        ["submit", "-c", str(run_yaml), "--host", kfp_server.url, "--wait"],
        ["schedule", "-c", str(run_yaml), "--host", kfp_server.url, "--cron", "@daily"],
    ):
        kfp_server.run_updates = [{"state": "SUCCEEDED", "finished_at": "2025-06-02T09:00:00Z"}]
        code, out, err = kubetune(capsys, *argv)
        assert code == 0, err
        outputs += [out, err]
    (run_id,) = kfp_server.runs
    code, out, err = kubetune(capsys, "status", run_id, "--host", kfp_server.url)
    assert code == 0, err
    outputs += [out, err]

    assert {r.path for r in kfp_server.requests} >= {
        "/apis/v2beta1/runs", "/apis/v2beta1/recurringruns", f"/apis/v2beta1/runs/{run_id}",
        "/api/2.0/mlflow/runs/search"}
    token_header = f"Bearer {CANARIES['KF_PIPELINES_TOKEN']}"
    for request in kfp_server.requests:
        headers = dict(request.headers)
        if request.path.startswith("/apis/"):
            assert headers.pop("authorization") == token_header
        for secret in CANARIES.values():
            assert secret not in request.body, (request.method, request.path)
            assert secret not in str(request.query) and secret not in request.path
            assert secret not in str(headers), (request.method, request.path)
    for text in outputs:
        for secret in CANARIES.values():
            assert secret not in text


@pytest.mark.parametrize("launcher", ["trainjob", "pytorchjob"])
def test_the_training_jobs_state_and_progress_come_from_kubernetes(kfp_server, run_yaml, capsys, tmp_path, monkeypatch, launcher):
    from kubetune.cluster.jobapi import KINDS
    from tests.cluster.servers import FakeKubernetes

    kube = FakeKubernetes(namespace="ml-training", kind=launcher).start()
    try:
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        monkeypatch.setenv("KUBECONFIG", str(kube.write_kubeconfig(tmp_path / "kubeconfig")))
        kube.jobs["kubetune-x"] = {"apiVersion": KINDS[launcher].api_version, "kind": KINDS[launcher].kind,
                                   "metadata": {"name": "kubetune-x", "labels": {"kubetune.io/run-id": RUN_ID}}}
        kube.jobs["kubetune-other"] = {"metadata": {"name": "kubetune-other", "labels": {"kubetune.io/run-id": "other"}}}
        kube.phases = ["Running"]
        kube.trainer_status = {"progressPercentage": 40, "estimatedRemainingSeconds": 600,
                               "lastUpdatedTime": "2025-06-02T08:30:00Z"}
        config_text = load_config(run_yaml, [f"cluster.launcher={launcher}"]).to_yaml()
        add_run(kfp_server, config_text, "RUNNING", [task("train", "RUNNING", "2025-06-02T08:05:00Z")])

        code, out, _ = kubetune(capsys, "status", RUN_ID, "--host", kfp_server.url)
    finally:
        kube.stop()

    assert code == 0
    (listed,) = kube.calls("GET", "/" + KINDS[launcher].plural)
    assert listed.query["labelSelector"] == f"kubetune.io/run-id={RUN_ID}"
    state = ("TrainJob ml-training/kubetune-x: Created (JobsCreationSucceeded: succeeded to create Jobs; 40%, about 600 s left)"
             if launcher == "trainjob" else "PyTorchJob ml-training/kubetune-x: Running (PyTorchJobRunning: PyTorchJob is running.)")
    assert out.splitlines()[-2:] == [
        f"job       {state}",
        f"          kubectl get {launcher}s -n ml-training -l kubetune.io/run-id={RUN_ID}",
    ]


def test_an_unreachable_cluster_leaves_the_kubectl_hint(kfp_server, run_yaml, capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    add_run(kfp_server, load_config(run_yaml, ["cluster.launcher=trainjob"]).to_yaml(), "RUNNING", [])
    code, out, _ = kubetune(capsys, "status", RUN_ID, "--host", kfp_server.url)
    assert code == 0
    assert out.splitlines()[-1] == f"job       kubectl get trainjobs -n ml-training -l kubetune.io/run-id={RUN_ID}"
