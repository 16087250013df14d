"""`kubetune submit`: what it sends to the KFP API server, what it prints, and what it refuses to send."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetune.cli import main
from kubetune.config import config_from_yaml_text, load_config
from kubetune.pipeline.compile import compile_all
from kubetune.pipeline.local import STEPS
from tests.remote.fake_kfp import FakeKfp

RUNS = "/apis/v2beta1/runs"
EXPERIMENTS = "/apis/v2beta1/experiments"


def kubetune(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def sent_run(fake: FakeKfp) -> dict:
    (request,) = fake.sent("POST", RUNS)
    return request.json


def all_tasks(pipeline_spec: dict) -> dict:
    """Every task of the spec by name: the top level (the exit handler, finalize) and the steps inside it."""
    dags = [pipeline_spec["root"]["dag"], *(c["dag"] for c in pipeline_spec["components"].values() if "dag" in c)]
    return {name: task for dag in dags for name, task in dag["tasks"].items()}


def test_submit_sends_the_compiled_pipeline_for_the_configs_cluster(kfp_server, run_yaml, tmp_path, capsys):
    code, _, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url)
    assert code == 0, err

    compile_all(tmp_path / "expected", load_config(run_yaml).cluster)
    expected = list(yaml.safe_load_all((tmp_path / "expected" / "pipelines" / "kubetune.yaml").read_text()))
    sent = sent_run(kfp_server)["pipeline_spec"]
    assert sent == {"pipeline_spec": expected[0], "platform_spec": expected[1]}
    assert sent["pipeline_spec"]["pipelineInfo"]["name"] == "kubetune"
    assert set(all_tasks(sent["pipeline_spec"])) == {*STEPS, "exit-handler-1", "finalize"}
    # The config's secret name, not the value, is in the spec the cluster runs.
    assert "team-s3" in yaml.safe_dump(sent["platform_spec"])


def test_submit_passes_the_resolved_config_with_overrides_as_the_config_parameter(kfp_server, run_yaml, capsys):
    overrides = ["training.epochs=1", "lora.r=4"]
    code, _, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, *overrides)
    assert code == 0, err

    parameters = sent_run(kfp_server)["runtime_config"]["parameters"]
    assert set(parameters) == {"config"}  # the rest keep their "as in the config" defaults
    sent = config_from_yaml_text(parameters["config"])
    assert sent == load_config(run_yaml, overrides)
    assert sent.training.epochs == 1 and sent.lora.r == 4


def test_submit_runs_as_the_configs_service_account_in_the_tracking_experiment(kfp_server, run_yaml, capsys):
    code, _, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, "--run-name", "nightly 7")
    assert code == 0, err

    run = sent_run(kfp_server)
    assert run["service_account"] == "ledger-trainer"
    assert run["display_name"] == "nightly 7"
    (experiment,) = kfp_server.experiments.values()
    assert experiment["display_name"] == "ledger-codes"  # tracking.experiment_name: KFP and MLflow share it
    assert experiment["namespace"] == "ml-training"
    assert run["experiment_id"] == experiment["experiment_id"]


def test_submit_reuses_an_existing_experiment(kfp_server, run_yaml, capsys):
    kfp_server.experiments["exp-1"] = {"experiment_id": "exp-1", "display_name": "retraining", "namespace": ""}
    code, _, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, "--experiment", "retraining")
    assert code == 0, err

    assert kfp_server.sent("POST", EXPERIMENTS) == []
    (lookup,) = kfp_server.sent("GET", EXPERIMENTS)
    assert '"stringValue": "retraining"' in lookup.query["filter"][0]
    assert sent_run(kfp_server)["experiment_id"] == "exp-1"


def test_cluster_experiment_names_the_kfp_experiment(kfp_server, run_yaml, capsys):
    code, _, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, "cluster.experiment=team-a")
    assert code == 0, err
    assert [e["display_name"] for e in kfp_server.experiments.values()] == ["team-a"]


def test_namespace_option_sets_the_run_and_job_namespace(kfp_server, run_yaml, capsys):
    code, out, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, "--namespace", "team-a")
    assert code == 0, err

    (lookup,) = kfp_server.sent("GET", EXPERIMENTS)
    assert lookup.query["namespace"] == ["team-a"]
    assert config_from_yaml_text(sent_run(kfp_server)["runtime_config"]["parameters"]["config"]).cluster.namespace == "team-a"
    assert "kubectl get pytorchjobs -n team-a -l kubetune.io/run-id=" in out


def test_submit_prints_the_run_url_and_how_to_follow_it(kfp_server, run_yaml, capsys):
    code, out, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, "--run-name", "r1")
    assert code == 0, err

    (run_id,) = kfp_server.runs
    assert out.splitlines() == [
        f"Submitted run {run_id} (r1) to experiment 'ledger-codes'.",
        f"  KFP UI        {kfp_server.url}/#/runs/details/{run_id}",
        f"  status        kubetune status {run_id} --host {kfp_server.url} --watch",
        f"  training job  kubectl get pytorchjobs -n ml-training -l kubetune.io/run-id={run_id}",
    ]


def test_run_url_uses_the_ui_address_when_it_differs(kfp_server, run_yaml, capsys, monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_UI_ENDPOINT", "https://kubeflow.example.com/pipeline")
    code, out, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url)
    assert code == 0, err
    (run_id,) = kfp_server.runs
    assert f"  KFP UI        https://kubeflow.example.com/pipeline/#/runs/details/{run_id}\n" in out


def test_no_cache_turns_caching_off_for_every_step(kfp_server, run_yaml, capsys):
    assert kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, "--no-cache")[0] == 0
    tasks = all_tasks(sent_run(kfp_server)["pipeline_spec"]["pipeline_spec"])
    assert {name: task["cachingOptions"].get("enableCache", False) for name, task in tasks.items()} == {
        step: False for step in (*STEPS, "exit-handler-1", "finalize")
    }


def test_without_no_cache_the_data_steps_keep_their_cache(kfp_server, run_yaml, capsys):
    assert kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url)[0] == 0
    tasks = all_tasks(sent_run(kfp_server)["pipeline_spec"]["pipeline_spec"])
    cached = {name for name, task in tasks.items() if task.get("cachingOptions", {}).get("enableCache")}
    assert cached == {"preprocess", "tokenize"}


def test_a_local_launcher_in_the_config_becomes_pytorchjob(kfp_server, run_yaml, capsys):
    run_yaml.write_text(run_yaml.read_text().replace("launcher: pytorchjob", "launcher: local"))
    code, _, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url)
    assert code == 0, err

    assert config_from_yaml_text(sent_run(kfp_server)["runtime_config"]["parameters"]["config"]).cluster.launcher == "pytorchjob"
    assert "kubetune: note: cluster.launcher: local in the config is for `kubetune run`" in err


def test_the_command_line_may_keep_the_local_launcher(kfp_server, run_yaml, capsys):
    code, out, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, "cluster.launcher=local")
    assert code == 0, err

    assert config_from_yaml_text(sent_run(kfp_server)["runtime_config"]["parameters"]["config"]).cluster.launcher == "local"
    assert "kubectl" not in out  # no PyTorchJob to look at


def test_host_comes_from_kfp_host_then_kfp_pipelines_endpoint(kfp_server, run_yaml, capsys, monkeypatch):
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("KFP_HOST", kfp_server.url)
    code, _, err = kubetune(capsys, "submit", "-c", str(run_yaml))
    assert code == 0, err
    assert len(kfp_server.runs) == 1


def test_token_is_sent_as_a_bearer_header(kfp_server, run_yaml, capsys, monkeypatch):
    kfp_server.required_token = "tok-123"
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "tok-123")
    code, _, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url)
    assert code == 0, err
    assert {r.headers.get("authorization") for r in kfp_server.api_requests()} == {"Bearer tok-123"}


def test_a_refused_token_is_one_line_naming_the_token_variable(kfp_server, run_yaml, capsys, monkeypatch):
    kfp_server.required_token = "the-right-one"
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "a-stale-one")
    code, out, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url)

    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"kubetune: error: the KFP API server at {kfp_server.url} refused the request (HTTP 401: Unauthorized: the "
        "token is not valid); set $KF_PIPELINES_TOKEN to a token it accepts (e.g. `kubectl create token <service "
        "account> -n <namespace>`)"
    ]
    assert "a-stale-one" not in err
    assert len(kfp_server.api_requests()) == 1  # one health check, not kfp's five retries


def test_an_unreachable_server_is_one_line(run_yaml, capsys, kfp_server):
    code, out, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", "http://127.0.0.1:9")
    assert code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith("kubetune: error: the KFP API server at http://127.0.0.1:9 can't be reached")


def test_wait_follows_the_run_to_success(kfp_server, run_yaml, capsys):
    kfp_server.run_updates = [
        {"state": "RUNNING", "run_details": {"task_details": [
            {"display_name": "validate", "state": "RUNNING", "start_time": "2025-06-02T08:00:05Z"}]}},
        {"state": "SUCCEEDED", "finished_at": "2025-06-02T08:40:00Z", "run_details": {"task_details": [
            {"display_name": step, "state": "SUCCEEDED", "start_time": "2025-06-02T08:00:05Z",
             "end_time": "2025-06-02T08:00:20Z"} for step in STEPS]}},
    ]
    code, out, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, "--wait")

    assert code == 0, err
    progress = [line.split("  ", 1)[1] for line in out.splitlines() if line[:2].isdigit() and line[2] == ":"]
    assert progress == ["run RUNNING", "validate RUNNING", "run SUCCEEDED"] + [
        f"{step} SUCCEEDED after 15s" for step in STEPS
    ]
    assert "state     SUCCEEDED, took 40m 00s" in out


def test_wait_exits_1_when_the_run_fails(kfp_server, run_yaml, capsys):
    kfp_server.run_updates = [{"state": "FAILED", "finished_at": "2025-06-02T08:03:00Z", "run_details": {"task_details": [
        {"display_name": "validate", "state": "FAILED", "start_time": "2025-06-02T08:00:05Z",
         "end_time": "2025-06-02T08:00:09Z",
         "error": {"code": 2, "message": "data.uri: s3://ledgers/lines.parquet does not exist"}}]}}]
    code, out, _ = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, "--wait")

    assert code == 1
    assert "error     validate: data.uri: s3://ledgers/lines.parquet does not exist" in out


# ---------------------------------------------------------------- bad input: one line, exit 2, nothing sent
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.uri=/home/me/lines.csv", "data.uri"),
        ("data.uri=null", "data.uri"),
        ("data.test_uri=test.csv", "data.test_uri"),
        ("storage.runs_uri=runs", "storage.runs_uri"),
        ("tracking.tracking_uri=sqlite:///mlflow.db", "tracking.tracking_uri"),
        ("model.name=./my-model", "model.name"),
    ],
)
def test_what_pods_cannot_reach_is_refused_before_anything_is_sent(kfp_server, run_yaml, capsys, override, key):
    code, out, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, override)

    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith(f"kubetune: error: {run_yaml}: {key}: ")
    assert kfp_server.requests == []


def test_demo_data_is_fine_for_a_cluster(kfp_server, run_yaml, capsys):
    assert kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, "data.uri=demo://ledger")[0] == 0


def test_a_bad_config_never_reaches_the_server(kfp_server, run_yaml, capsys):
    code, _, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, "training.epoch=1")
    assert code == 2
    assert err.splitlines() == [
        f"kubetune: error: {run_yaml}: training.epoch: unknown key; did you mean 'training.epochs'?"
    ]
    assert kfp_server.requests == []


def test_no_host_is_one_line_and_nothing_is_sent(kfp_server, run_yaml, capsys):
    code, out, err = kubetune(capsys, "submit", "-c", str(run_yaml))
    assert code == 2 and out == ""
    (line,) = err.splitlines()
    assert line.startswith("kubetune: error: no Kubeflow Pipelines API server given: pass --host URL or set $KFP_HOST")
    assert kfp_server.requests == []


def test_a_host_without_scheme_is_refused(kfp_server, run_yaml, capsys):
    code, _, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", "localhost:8080")
    assert code == 2
    assert err.splitlines() == [
        "kubetune: error: --host: 'localhost:8080' is not an http(s):// URL of the KFP API server; e.g. http://localhost:8080"
    ]
    assert kfp_server.requests == []


def test_every_shipped_cluster_config_passes_the_cluster_checks():
    from kubetune.pipeline.remote import cluster_run_config

    root = Path(__file__).resolve().parents[2] / "configs"
    shipped = [p for p in sorted(root.rglob("*.yaml")) if "launcher: pytorchjob" in p.read_text()]
    assert shipped, "no shipped config runs on a cluster"
    for path in shipped:
        config, _ = cluster_run_config(path, ["storage.runs_uri=s3://kubetune-runs"])
        assert config.cluster.launcher == "pytorchjob", path


def test_each_of_several_data_sources_must_be_in_object_storage():
    from kubetune.errors import ConfigError
    from kubetune.pipeline.remote import cluster_run_config

    sft = Path(__file__).resolve().parents[2] / "configs" / "qwen2.5-0.5b-sft-lora.yaml"
    with pytest.raises(ConfigError) as raised:
        cluster_run_config(sft, ["data.sources=[s3://kubetune-data/a.jsonl, /home/me/b.jsonl]"])
    (problem,) = raised.value.problems
    assert problem.startswith("data.sources.1: '/home/me/b.jsonl' is not in object storage")


def test_a_missing_service_account_token_file_is_one_line(kfp_server, run_yaml, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-token"))
    code, _, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url)
    assert code == 2
    assert err.splitlines() == [
        f"kubetune: error: $KF_PIPELINES_SA_TOKEN_PATH: no token file at {tmp_path / 'no-token'}; fix the path or unset it"
    ]
    assert kfp_server.requests == []


def test_a_service_account_token_file_is_sent_as_a_bearer_header(kfp_server, run_yaml, capsys, monkeypatch, tmp_path):
    (tmp_path / "token").write_text("sa-token-9\n")
    kfp_server.required_token = "sa-token-9"
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "token"))
    code, _, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url)
    assert code == 0, err
    assert {r.headers.get("authorization") for r in kfp_server.api_requests()} == {"Bearer sa-token-9"}


def test_a_local_model_folder_is_refused(kfp_server, run_yaml, capsys, tmp_path, monkeypatch):
    (tmp_path / "models" / "bert").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    code, _, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, "model.name=models/bert")
    assert code == 2
    assert err.splitlines() == [
        f"kubetune: error: {run_yaml}: model.name: 'models/bert' is a local path the pods can't read; give a hub id, "
        "or upload the model folder and set model.name=s3://bucket/model"
    ]
    assert kfp_server.requests == []
