"""`kubetune submit / schedule --pipeline predict`: the batch-scoring pipeline and its parameters as the KFP API
server receives them, what is refused before anything is sent, and `kubetune status` of a scoring run."""

from __future__ import annotations

import pytest
import yaml

from kubetune.config import config_from_yaml_text, load_config
from kubetune.pipeline.compile import PREDICT_PIPELINE_FILE, compile_all
from tests.remote.test_schedule import sent_recurring_run
from tests.remote.test_status import RUN_ID, add_run, task
from tests.remote.test_submit import kubetune, sent_run

MODEL = "models:/ledger-codes@champion"
DATA = "s3://ledgers/2025-07.parquet"
OUTPUT = "s3://ledgers/predictions/{run_id}.parquet"
SCORING = ("--pipeline", "predict", "--model", MODEL, "--data", DATA)


def test_submit_sends_the_batch_scoring_pipeline_with_what_it_scores(kfp_server, run_yaml, tmp_path, capsys):
    code, out, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, *SCORING,
                              "--output", OUTPUT, "--run-name", "july", "lora.r=4")
    assert code == 0, err

    run = sent_run(kfp_server)
    compile_all(tmp_path / "expected", load_config(run_yaml).cluster)
    expected = list(yaml.safe_load_all((tmp_path / "expected" / PREDICT_PIPELINE_FILE).read_text()))
    assert run["pipeline_spec"] == {"pipeline_spec": expected[0], "platform_spec": expected[1]}
    assert set(run["pipeline_spec"]["pipeline_spec"]["root"]["dag"]["tasks"]) == {"predict"}
    assert "team-s3" in yaml.safe_dump(run["pipeline_spec"]["platform_spec"])  # the config's secret, by name
    parameters = run["runtime_config"]["parameters"]
    assert {key: value for key, value in parameters.items() if key != "config"} == {
        "model": MODEL, "data_uri": DATA, "output_uri": OUTPUT}
    assert config_from_yaml_text(parameters["config"]) == load_config(run_yaml, ["lora.r=4"])
    assert run["service_account"] == "ledger-trainer" and run["display_name"] == "july"
    (experiment,) = kfp_server.experiments.values()
    assert run["experiment_id"] == experiment["experiment_id"] and experiment["display_name"] == "ledger-codes"

    (run_id,) = kfp_server.runs
    # No PyTorchJob to follow: a scoring run is one step.
    assert out.splitlines() == [
        f"Submitted run {run_id} (july) to experiment 'ledger-codes'.",
        f"  KFP UI        {kfp_server.url}/#/runs/details/{run_id}",
        f"  predictions   s3://ledgers/predictions/{run_id}.parquet",
        f"  status        kubetune status {run_id} --host {kfp_server.url} --watch",
    ]


def test_submit_without_output_sends_an_empty_output_uri_and_names_the_run_as_scoring(kfp_server, run_yaml, capsys):
    code, _, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, *SCORING)
    assert code == 0, err
    run = sent_run(kfp_server)
    assert run["runtime_config"]["parameters"]["output_uri"] == ""
    assert run["display_name"].startswith("ledger predict ")


def test_the_training_pipeline_is_still_the_default(kfp_server, run_yaml, capsys):
    code, _, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, "--pipeline", "train")
    assert code == 0, err
    run = sent_run(kfp_server)
    assert set(run["runtime_config"]["parameters"]) == {"config"}
    assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "kubetune"


def test_wait_follows_the_predict_step(kfp_server, run_yaml, capsys):
    kfp_server.run_updates = [{"state": "SUCCEEDED", "finished_at": "2025-06-02T08:05:00Z", "run_details": {
        "task_details": [{"display_name": "predict", "state": "SUCCEEDED", "start_time": "2025-06-02T08:00:05Z",
                          "end_time": "2025-06-02T08:04:05Z"}]}}]
    code, out, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, *SCORING, "--wait")

    assert code == 0, err
    progress = [line.split("  ", 1)[1] for line in out.splitlines() if line[:2].isdigit() and line[2] == ":"]
    assert progress == ["run SUCCEEDED", "predict SUCCEEDED after 4m 00s"]  # no training steps waited for
    assert out.splitlines()[-3:] == [f"model     {MODEL}", f"data      {DATA}", "output    the run's predictions artifact"]


def test_monthly_scoring_is_scheduled_like_monthly_retraining(kfp_server, run_yaml, capsys):
    code, out, err = kubetune(capsys, "schedule", "-c", str(run_yaml), "--host", kfp_server.url, *SCORING,
                              "--output", OUTPUT, "--cron", "0 6 1 * *")
    assert code == 0, err

    sent = sent_recurring_run(kfp_server)
    assert sent["trigger"] == {"cron_schedule": {"cron": "0 0 6 1 * *"}}
    assert sent["display_name"] == "ledger-predict"
    assert sent["description"] == "kubetune batch scoring, cron '0 0 6 1 * *', at most 1 at a time, catch-up off"
    assert sent["no_catchup"] is True and sent["service_account"] == "ledger-trainer"
    parameters = sent["runtime_config"]["parameters"]
    assert {key: value for key, value in parameters.items() if key != "config"} == {
        "model": MODEL, "data_uri": DATA, "output_uri": OUTPUT}  # {run_id}: each run writes its own file
    assert config_from_yaml_text(parameters["config"]) == load_config(run_yaml)
    spec = sent["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "kubetune-predict" and set(spec["root"]["dag"]["tasks"]) == {"predict"}

    (recurring_id,) = kfp_server.recurring_runs
    (experiment,) = kfp_server.experiments.values()
    assert out.splitlines() == [
        f"Scheduled recurring run {recurring_id} (ledger-predict) in experiment 'ledger-codes': cron '0 0 6 1 * *', "
        "at most 1 at a time, catch-up off.",
        f"  KFP UI        {kfp_server.url}/#/recurringrun/details/{recurring_id}",
        f"  predictions   {OUTPUT}",
        f"  its runs      {kfp_server.url}/#/experiments/details/{experiment['experiment_id']}",
    ]


def test_an_interval_schedule_of_scoring(kfp_server, run_yaml, capsys):
    code, _, err = kubetune(capsys, "schedule", "-c", str(run_yaml), "--host", kfp_server.url, *SCORING,
                            "--every", "1w", "--name", "weekly-scores")
    assert code == 0, err
    sent = sent_recurring_run(kfp_server)
    assert sent["trigger"] == {"periodic_schedule": {"interval_second": 604800}}
    assert sent["display_name"] == "weekly-scores"


# ---------------------------------------------------------------- bad input: one line each, exit 2, nothing sent
@pytest.mark.parametrize(
    ("arguments", "lines"),
    [
        (("--model", MODEL), ["--model: only for --pipeline predict (batch scoring); the training pipeline reads its "
                              "data from data.uri"]),
        (("--pipeline", "predict", "--data", DATA), [
            "--model: --pipeline predict needs the model to score with: a train output's model/ folder "
            "(s3://bucket/runs/<run id>/train/model) or models:/<name>@champion"]),
        (("--pipeline", "predict"), [
            "--model: --pipeline predict needs the model to score with: a train output's model/ folder "
            "(s3://bucket/runs/<run id>/train/model) or models:/<name>@champion",
            "--data: --pipeline predict needs the rows to score: --data s3://bucket/new-lines.parquet"]),
        (("--pipeline", "predict", "--model", "runs/r1/train/model", "--data", "new.csv", "--output", "out.parquet"), [
            "--model: 'runs/r1/train/model' is neither in object storage nor an MLflow registry reference, so the "
            "pipeline's pods can't read it; upload the model/ folder and pass --model "
            "s3://bucket/runs/<run id>/train/model, or pass --model models:/<name>@champion",
            "--data: 'new.csv' is not in object storage, so the pipeline's pods can't read it; upload it "
            "(e.g. `aws s3 cp`) and pass --data s3://bucket/key (or minio://)",
            "--output: 'out.parquet' is not in object storage, so the pipeline's pods can't write it; pass "
            "--output s3://bucket/predictions/{run_id}.parquet, or leave it out: the predictions are the run's artifact"]),
    ],
)
@pytest.mark.parametrize("command", [("submit",), ("schedule", "--every", "1d")])
def test_scoring_options_are_checked_before_anything_is_sent(kfp_server, run_yaml, capsys, command, arguments, lines):
    code, out, err = kubetune(capsys, *command, "-c", str(run_yaml), "--host", kfp_server.url, *arguments)
    assert code == 2 and out == ""
    assert err.splitlines() == [f"kubetune: error: {line}" for line in lines]
    assert kfp_server.requests == []


def test_a_registry_model_needs_an_mlflow_server_the_pods_reach(kfp_server, run_yaml, capsys):
    code, out, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, *SCORING,
                              "tracking.tracking_uri=sqlite:///mlflow.db")
    assert code == 2 and out == ""
    assert err.splitlines() == [
        f"kubetune: error: {run_yaml}: tracking.tracking_uri: 'sqlite:///mlflow.db' is a store on this machine that "
        f"the pipeline's pods can't reach to look up --model {MODEL}; set an MLflow server URL (e.g. "
        "http://mlflow.kubetune:5000)"]
    assert kfp_server.requests == []


def test_scoring_needs_neither_training_data_nor_a_runs_folder(kfp_server, run_yaml, capsys):
    # What only training needs (data.uri, storage.runs_uri in object storage) doesn't stop a scoring run.
    code, _, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, "--pipeline", "predict",
                            "--model", "s3://kubetune-runs/r1/train/model", "--data", DATA,
                            "data.uri=null", "storage.runs_uri=./runs")
    assert code == 0, err
    assert sent_run(kfp_server)["runtime_config"]["parameters"]["model"] == "s3://kubetune-runs/r1/train/model"


def test_a_registry_model_without_a_tracking_server_is_a_note(kfp_server, run_yaml, capsys):
    code, _, err = kubetune(capsys, "submit", "-c", str(run_yaml), "--host", kfp_server.url, *SCORING,
                            "tracking.tracking_uri=null")
    assert code == 0, err
    assert err.splitlines() == [
        f"kubetune: note: tracking.tracking_uri is unset: the predict step finds --model {MODEL} only if its pod has "
        "$MLFLOW_TRACKING_URI; set tracking.tracking_uri to your server (e.g. http://mlflow.kubetune:5000)"]


# ---------------------------------------------------------------------------------------------- status
def test_status_of_a_scoring_run_shows_its_step_and_what_it_scored(kfp_server, run_yaml, capsys):
    parameters = {"config": load_config(run_yaml).to_yaml(), "model": MODEL, "data_uri": DATA, "output_uri": OUTPUT}
    add_run(kfp_server, "", "SUCCEEDED", [task("predict", "SUCCEEDED", "2025-06-02T08:00:05Z", "2025-06-02T08:02:35Z")],
            finished="2025-06-02T08:03:00Z", parameters=parameters)

    code, out, err = kubetune(capsys, "status", RUN_ID, "--host", kfp_server.url)

    assert code == 0, err
    assert out.splitlines()[1:] == [
        "state     SUCCEEDED, took 3m 00s",
        f"KFP UI    {kfp_server.url}/#/runs/details/{RUN_ID}",
        "",
        "step     state      started (UTC)        duration",
        "-------  ---------  -------------------  --------",
        "predict  SUCCEEDED  2025-06-02 08:00:05  2m 30s",
        "",
        f"model     {MODEL}",
        f"data      {DATA}",
        f"output    s3://ledgers/predictions/{RUN_ID}.parquet and the run's predictions artifact",
    ]
    # A scoring run has no MLflow run to look up.
    assert kfp_server.sent("POST", "/api/2.0/mlflow/runs/search") == []
