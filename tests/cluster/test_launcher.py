"""The pytorchjob and trainjob launchers against a fake Kubernetes API (127.0.0.1) and moto's S3: wait,
fail, time out, cancel, stream the lead pod's log. Every test runs for both kinds (`job_kind`)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kubetune import storage
from kubetune.cluster.jobapi import KINDS
from kubetune.config import load_config
from kubetune.errors import KubetuneError
from kubetune.launchers import TrainRequest, TrainResult, cluster_job, get_launcher
from kubetune.launchers.pytorchjob import PyTorchJobLauncher
from kubetune.launchers.trainjob import TrainJobLauncher
from tests.cluster.servers import JOBS_PATHS, flag

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs/qwen2.5-0.5b-lora-zero2.yaml"
RUN_ID = "run-7f3e2a"
JOB = f"kubetune-{RUN_ID}"
LAUNCHERS = {"pytorchjob": PyTorchJobLauncher, "trainjob": TrainJobLauncher}
# The lead pod the fake API lists for each kind, and the reason its Failed condition gives.
LEAD_POD = {"pytorchjob": f"{JOB}-master-0", "trainjob": f"{JOB}-node-0-0-x7k2p"}
FAILED_REASON = {"pytorchjob": "PyTorchJobFailed", "trainjob": "JobSetFailed"}

# The master's log, as the kubelet stamps it: fractions are trimmed (".1" < ".12"), and two lines
# can share a timestamp.
MASTER_LOG = [
    ("2025-01-01T00:00:01Z", "loading model Qwen/Qwen2.5-0.5B"),
    ("2025-01-01T00:00:05.1Z", "epoch 1"),
    ("2025-01-01T00:00:05.12Z", "epoch 1 step 10"),
    ("2025-01-01T00:00:05.12Z", "epoch 1 step 10 loss 0.91"),
    ("2025-01-01T00:00:07.000000001Z", "eval macro_f1=0.52"),
    ("2025-01-01T00:00:09.5Z", "saved checkpoint-500"),
]


@pytest.fixture(params=sorted(LAUNCHERS))
def job_kind(request) -> str:
    return request.param


def fast_launcher(job_kind: str, **kwargs) -> cluster_job.ClusterJobLauncher:
    return LAUNCHERS[job_kind](poll_interval=0.05, log_read_timeout=2.0, **kwargs)


def make_request(bucket: str, *overrides: str, run_id: str = RUN_ID) -> TrainRequest:
    # The endpoint comes from the environment (moto's, set by `s3_bucket`), not the config's MinIO Service.
    config = load_config(CONFIG, ["tracking.enable=false", "storage.endpoint_url=null", *overrides])
    return TrainRequest(config=config, data_uri=f"minio://{bucket}/tokenized", output_uri=f"s3://{bucket}/runs/{run_id}/train",
                        run_id=run_id, mlflow_run_id="abc123")


def trainer_lines(text: str) -> list[str]:
    messages = {message for _, message in MASTER_LOG}
    return [line for line in text.splitlines() if line in messages]


def test_registered_under_their_config_names(job_kind):
    assert isinstance(get_launcher(job_kind), LAUNCHERS[job_kind])


def test_success_streams_the_lead_pods_log_once_and_returns_the_job(kube, job_kind, s3_bucket, capsys):
    kube.phases = ["Created"] + ["Running"] * 30 + ["Succeeded"]
    kube.master_log = MASTER_LOG
    kube.drop_first_stream_after = 3  # the first log connection dies in the middle of line 4
    request = make_request(s3_bucket)
    launcher = fast_launcher(job_kind)
    kind = KINDS[job_kind]

    result = launcher.launch(request)

    assert result == TrainResult(output_uri=f"s3://{s3_bucket}/runs/{RUN_ID}/train", job_name=JOB, job_kind=kind.kind)
    out = capsys.readouterr().out
    assert trainer_lines(out) == [message for _, message in MASTER_LOG]
    streams = [r for r in kube.calls("GET", "/log") if flag(r.query.get("follow"))]
    assert len(streams) >= 2 and "sinceSeconds" not in streams[0].query and "sinceSeconds" in streams[1].query
    assert all(r.path.endswith(f"/pods/{LEAD_POD[job_kind]}/log") for r in streams)
    assert all(r.query["container"] == kind.container and flag(r.query["timestamps"]) for r in streams)
    (pods,) = {r.query["labelSelector"] for r in kube.calls("GET", "/pods") if not r.path.endswith("/log")}
    assert pods == kind.lead_pod_selector(JOB)
    # The job was submitted as built, and the trainer's config waits for it in object storage.
    (post,) = kube.calls("POST", f"/{kind.plural}")
    assert post.path == JOBS_PATHS[job_kind].format(ns="kubeflow")
    assert json.loads(post.body) == launcher.build(request)
    assert storage.read_text(f"{request.output_uri}/launch-config.yaml") == request.config.to_yaml()
    assert kube.calls("DELETE") == []
    assert f"kubectl -n kubeflow get {kind.plural} -l kubetune.io/run-id={RUN_ID}" in out
    assert f"{kind.kind} kubeflow/{JOB} succeeded" in out


def test_log_lines_appear_while_the_job_runs(kube, job_kind, s3_bucket, monkeypatch):
    kube.phases = ["Created"] + ["Running"] * 40 + ["Succeeded"]
    kube.master_log = MASTER_LOG
    seen_at: list[int] = []  # how many job polls had been answered when each line was printed

    original = cluster_job.MasterLogStreamer

    def recording_streamer(*args, **kwargs):
        kwargs["emit"] = lambda line: seen_at.append(kube.job_gets)
        return original(*args, **kwargs)

    monkeypatch.setattr(cluster_job, "MasterLogStreamer", recording_streamer)
    fast_launcher(job_kind).launch(make_request(s3_bucket))
    assert len(seen_at) == len(MASTER_LOG)
    assert max(seen_at) < kube.terminal_get  # every line was shown before the job was seen to succeed


def test_failed_job_fails_with_the_lead_pods_last_lines(kube, job_kind, s3_bucket):
    kube.phases = ["Created", "Running", "Running", "Running", "Failed"]
    kube.master_log = [(f"2025-01-01T00:01:{i:02d}Z", f"trainer line {i}") for i in range(40)] + [
        ("2025-01-01T00:02:00Z", "torch.OutOfMemoryError: CUDA out of memory")]
    kind = KINDS[job_kind]

    with pytest.raises(KubetuneError) as caught:
        fast_launcher(job_kind, failure_log_lines=5).launch(make_request(s3_bucket))

    message = str(caught.value)
    assert message.startswith(f"{kind.kind} kubeflow/{JOB} failed ({FAILED_REASON[job_kind]}: {kube.failure_message})")
    assert f"Last 5 lines of {LEAD_POD[job_kind]}:" in message
    tail = [line.removeprefix("  | ") for line in message.splitlines() if line.startswith("  | ")]
    assert tail == ["trainer line 36", "trainer line 37", "trainer line 38", "trainer line 39",
                    "torch.OutOfMemoryError: CUDA out of memory"]
    assert f"kubectl -n kubeflow describe {kind.plural[:-1]} {JOB}" in message
    assert f"kubectl -n kubeflow logs -l {kind.lead_pod_selector(JOB)}" in message
    assert kube.calls("DELETE") == []  # a failed job stays for inspection (its TTL removes it)


def test_failed_job_without_streamed_lines_reads_the_tail(kube, job_kind, s3_bucket):
    # The pod failed so fast that it was never seen running: nothing was streamed.
    kube.phases = ["Created", "Failed"]
    kube.pod_phase = "Pending"
    kube.master_log = [(f"2025-01-01T00:01:{i:02d}Z", f"line {i}") for i in range(10)]
    with pytest.raises(KubetuneError, match=r"Last 3 lines of .*:\n  \| line 7\n  \| line 8\n  \| line 9\n"):
        fast_launcher(job_kind, failure_log_lines=3).launch(make_request(s3_bucket))
    assert [r for r in kube.calls("GET", "/log") if flag(r.query.get("follow"))] == []
    (tail,) = [r for r in kube.calls("GET", "/log") if "tailLines" in r.query]
    assert tail.query["tailLines"] == "3"
    assert tail.query["container"] == KINDS[job_kind].container


def test_timeout_deletes_the_job(kube, job_kind, s3_bucket):
    kube.phases = ["Running"]
    kind = KINDS[job_kind]
    started = time.monotonic()
    with pytest.raises(KubetuneError, match=rf"cluster\.timeout_seconds: {kind.kind} kubeflow/{JOB} did not finish within 1 s"):
        fast_launcher(job_kind).launch(make_request(s3_bucket, "cluster.timeout_seconds=1"))
    assert time.monotonic() - started < 10
    (delete,) = kube.calls("DELETE")
    assert delete.path == JOBS_PATHS[job_kind].format(ns="kubeflow") + f"/{JOB}"
    assert json.loads(delete.body)["propagationPolicy"] == "Background"
    assert kube.jobs == {}


def test_job_deleted_by_someone_else_fails_the_step(kube, job_kind, s3_bucket):
    kube.phases = ["Running"]
    launcher = fast_launcher(job_kind)
    kind = KINDS[job_kind]

    def delete_soon():
        kube.wait_for("GET", f"/{kind.plural}/{JOB}")
        kube.jobs.clear()

    threading.Thread(target=delete_soon, daemon=True).start()
    with pytest.raises(KubetuneError, match=f"{kind.kind} kubeflow/{JOB} was deleted while the train step waited"):
        launcher.launch(make_request(s3_bucket))


def test_retried_step_follows_the_job_of_its_run(kube, job_kind, s3_bucket, capsys):
    request = make_request(s3_bucket)
    launcher = fast_launcher(job_kind)
    kube.jobs[JOB] = launcher.build(request)
    kube.phases = ["Running", "Succeeded"]
    result = launcher.launch(request)
    assert result.job_name == JOB
    assert len(kube.calls("POST")) == 1 and kube.calls("DELETE") == []
    state = "Running" if job_kind == "pytorchjob" else "Created"  # a running TrainJob has no Running condition
    assert f"{KINDS[job_kind].kind} kubeflow/{JOB} of this run is already {state}; following it" in capsys.readouterr().out


def test_retried_step_starts_a_failed_job_of_its_run_again(kube, job_kind, s3_bucket, capsys):
    request = make_request(s3_bucket)
    launcher = fast_launcher(job_kind)
    kube.jobs[JOB] = launcher.build(request)
    kube.phases = ["Failed", "Running", "Succeeded"]
    launcher.launch(request)
    (delete,) = kube.calls("DELETE")
    assert json.loads(delete.body)["propagationPolicy"] == "Foreground"
    assert len(kube.calls("POST")) == 2
    assert f"{KINDS[job_kind].kind} kubeflow/{JOB} of this run failed earlier; starting it again" in capsys.readouterr().out


def test_existing_job_of_another_run_is_not_touched(kube, job_kind, s3_bucket):
    launcher = fast_launcher(job_kind)
    other = launcher.build(make_request(s3_bucket))
    other["metadata"]["annotations"]["kubetune.io/run-id"] = "someone-else"
    kube.jobs[JOB] = other
    with pytest.raises(KubetuneError, match="already exists and belongs to run 'someone-else'"):
        launcher.launch(make_request(s3_bucket))
    assert kube.calls("DELETE") == [] and JOB in kube.jobs


def test_invalid_request_sends_nothing(kube, job_kind, s3_bucket):
    with pytest.raises(KubetuneError, match="cluster.memory"):
        fast_launcher(job_kind).launch(make_request(s3_bucket, "cluster.memory=much"))
    assert kube.requests == []


def test_unreachable_api_server_is_one_clear_error(tmp_path, job_kind, s3_bucket, monkeypatch):
    from tests.cluster.servers import FakeKubernetes
    from tests.loopback import free_port

    server = FakeKubernetes()
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    text = kubeconfig.read_text().replace(server.url, f"http://127.0.0.1:{free_port()}")
    kubeconfig.write_text(text)
    server.stop()
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    with pytest.raises(KubetuneError, match=f"could not create {KINDS[job_kind].kind} kubeflow/{JOB} .*is the API server reachable"):
        fast_launcher(job_kind).launch(make_request(s3_bucket))


def test_missing_kubeconfig_is_one_clear_error(tmp_path, job_kind, s3_bucket, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(KubetuneError, match="cannot reach Kubernetes through the kubeconfig"):
        fast_launcher(job_kind).launch(make_request(s3_bucket))


def test_in_a_pod_the_service_account_is_used_not_the_kubeconfig(kube, job_kind, s3_bucket, monkeypatch):
    # The kubelet sets KUBERNETES_SERVICE_HOST in every pod; without the mounted token the step says so.
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(KubetuneError, match="cannot reach Kubernetes through the pod's service account"):
        fast_launcher(job_kind).launch(make_request(s3_bucket))
    assert kube.requests == []  # the kubeconfig's server (this fake) was not used


# ------------------------------------------------------------------------------ TrainJob only
@pytest.mark.parametrize("job_kind", ["trainjob"])
def test_trainjob_progress_is_shown_while_it_runs(kube, job_kind, s3_bucket, capsys):
    kube.phases = ["Created", "Running", "Running", "Succeeded"]
    kube.trainer_status = {"progressPercentage": 40, "estimatedRemainingSeconds": 600,
                           "metrics": [{"name": "loss", "value": "0.91"}], "lastUpdatedTime": "2025-01-01T00:05:00Z"}
    fast_launcher(job_kind).launch(make_request(s3_bucket))
    assert f"TrainJob kubeflow/{JOB}: Created (JobsCreationSucceeded: succeeded to create Jobs; 40%, about 600 s left, loss=0.91)" in capsys.readouterr().out


@pytest.mark.parametrize("job_kind", ["trainjob"])
def test_trainjob_with_a_missing_runtime_sends_nothing(kube, job_kind, s3_bucket):
    kube.runtimes = {}
    with pytest.raises(KubetuneError, match="cluster.runtime: the ClusterTrainingRuntime 'deepspeed-distributed' is not installed"):
        fast_launcher(job_kind).launch(make_request(s3_bucket, "cluster.runtime=deepspeed-distributed"))
    assert kube.calls("POST") == []
    (read,) = kube.calls("GET", "/clustertrainingruntimes/")
    assert read.path.endswith("/clustertrainingruntimes/deepspeed-distributed")


@pytest.mark.parametrize("job_kind", ["trainjob"])
def test_trainjob_runtime_without_restarts_is_reported(kube, job_kind, s3_bucket, capsys):
    kube.runtimes = {"torch-distributed": {"spec": {"template": {"spec": {}}}}}  # as shipped: no failurePolicy
    kube.phases = ["Succeeded"]
    fast_launcher(job_kind).launch(make_request(s3_bucket, "cluster.backoff_limit=2"))
    out = capsys.readouterr().out
    assert "ClusterTrainingRuntime torch-distributed restarts a failed TrainJob 0 time(s), cluster.backoff_limit asks for 2" in out
    assert """kubectl patch clustertrainingruntime torch-distributed --type merge -p '{"spec":{"template":{"spec":{"failurePolicy":{"maxRestarts":2}}}}}'""" in out


CANCEL_SCRIPT = """
import sys
from kubetune.config import load_config
from kubetune.launchers import TrainRequest, get_launcher

config_path, bucket, run_id, kind = sys.argv[1:5]
config = load_config(config_path, ["tracking.enable=false", "storage.endpoint_url=null"])
request = TrainRequest(config=config, data_uri=f"s3://{bucket}/tokenized", output_uri=f"s3://{bucket}/runs/{run_id}/train", run_id=run_id)
launcher = get_launcher(kind)
launcher.poll_interval, launcher.log_read_timeout = 0.05, 2.0
try:
    launcher.launch(request)
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 130)])
def test_cancelled_step_deletes_the_job(kube, job_kind, s3_bucket, signum, exit_code):
    kube.phases = ["Running"]
    kube.master_log = MASTER_LOG
    kind = KINDS[job_kind]
    process = subprocess.Popen([sys.executable, "-c", CANCEL_SCRIPT, str(CONFIG), s3_bucket, RUN_ID, job_kind],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        kube.wait_for("GET", f"/{kind.plural}/{JOB}", timeout=60)  # submitted, and waiting
        process.send_signal(signum)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == exit_code, out
    (delete,) = kube.calls("DELETE")
    assert delete.path.endswith(f"/{kind.plural}/{JOB}")
    assert kube.jobs == {}
    assert f"the train step was cancelled ({signal.Signals(signum).name}); {kind.kind} kubeflow/{JOB} was deleted" in out
