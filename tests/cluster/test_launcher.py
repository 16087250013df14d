"""The pytorchjob launcher against a fake Kubernetes API (127.0.0.1) and moto's S3: wait, fail, time out, cancel."""

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
from kubetune.cluster import job as jobs
from kubetune.config import load_config
from kubetune.errors import KubetuneError
from kubetune.launchers import TrainRequest, TrainResult, get_launcher, pytorchjob
from kubetune.launchers.pytorchjob import PyTorchJobLauncher
from tests.cluster.servers import flag

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs/qwen2.5-0.5b-lora-zero2.yaml"
RUN_ID = "run-7f3e2a"
JOB = f"kubetune-{RUN_ID}"

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


def fast_launcher(**kwargs) -> PyTorchJobLauncher:
    return PyTorchJobLauncher(poll_interval=0.05, log_read_timeout=2.0, **kwargs)


def make_request(bucket: str, *overrides: str, run_id: str = RUN_ID) -> TrainRequest:
    # The endpoint comes from the environment (moto's, set by `s3_bucket`), not the config's MinIO Service.
    config = load_config(CONFIG, ["tracking.enable=false", "storage.endpoint_url=null", *overrides])
    return TrainRequest(config=config, data_uri=f"minio://{bucket}/tokenized", output_uri=f"s3://{bucket}/runs/{run_id}/train",
                        run_id=run_id, mlflow_run_id="abc123")


def trainer_lines(text: str) -> list[str]:
    messages = {message for _, message in MASTER_LOG}
    return [line for line in text.splitlines() if line in messages]


def test_registered_under_its_config_name():
    assert isinstance(get_launcher("pytorchjob"), PyTorchJobLauncher)


def test_success_streams_the_master_log_once_and_returns_the_job(kube, s3_bucket, capsys):
    kube.phases = ["Created"] + ["Running"] * 30 + ["Succeeded"]
    kube.master_log = MASTER_LOG
    kube.drop_first_stream_after = 3  # the first log connection dies in the middle of line 4
    request = make_request(s3_bucket)

    result = fast_launcher().launch(request)

    assert result == TrainResult(output_uri=f"s3://{s3_bucket}/runs/{RUN_ID}/train", job_name=JOB)
    out = capsys.readouterr().out
    assert trainer_lines(out) == [message for _, message in MASTER_LOG]
    streams = [r for r in kube.calls("GET", "/log") if flag(r.query.get("follow"))]
    assert len(streams) >= 2 and "sinceSeconds" not in streams[0].query and "sinceSeconds" in streams[1].query
    assert all(r.query["container"] == "pytorch" and flag(r.query["timestamps"]) for r in streams)
    # The job was submitted as built, and the trainer's config waits for it in object storage.
    (post,) = kube.calls("POST", "/pytorchjobs")
    assert json.loads(post.body) == jobs.serialize(jobs.build_pytorchjob(request))
    assert storage.read_text(f"{request.output_uri}/launch-config.yaml") == request.config.to_yaml()
    assert kube.calls("DELETE") == []
    assert f"kubectl -n kubeflow get pytorchjobs -l kubetune.io/run-id={RUN_ID}" in out


def test_log_lines_appear_while_the_job_runs(kube, s3_bucket, monkeypatch):
    kube.phases = ["Created"] + ["Running"] * 40 + ["Succeeded"]
    kube.master_log = MASTER_LOG
    seen_at: list[int] = []  # how many job polls had been answered when each line was printed

    original = pytorchjob.MasterLogStreamer

    def recording_streamer(*args, **kwargs):
        kwargs["emit"] = lambda line: seen_at.append(kube.job_gets)
        return original(*args, **kwargs)

    monkeypatch.setattr(pytorchjob, "MasterLogStreamer", recording_streamer)
    fast_launcher().launch(make_request(s3_bucket))
    assert len(seen_at) == len(MASTER_LOG)
    assert max(seen_at) < kube.terminal_get  # every line was shown before the job was seen to succeed


def test_failed_job_fails_with_the_masters_last_lines(kube, s3_bucket):
    kube.phases = ["Created", "Running", "Running", "Running", "Failed"]
    kube.master_log = [(f"2025-01-01T00:01:{i:02d}Z", f"trainer line {i}") for i in range(40)] + [
        ("2025-01-01T00:02:00Z", "torch.OutOfMemoryError: CUDA out of memory")]

    with pytest.raises(KubetuneError) as caught:
        fast_launcher(failure_log_lines=5).launch(make_request(s3_bucket))

    message = str(caught.value)
    assert message.startswith(f"PyTorchJob kubeflow/{JOB} failed (PyTorchJobFailed: {kube.failure_message})")
    assert f"Last 5 lines of {JOB}-master-0:" in message
    tail = [line.removeprefix("  | ") for line in message.splitlines() if line.startswith("  | ")]
    assert tail == ["trainer line 36", "trainer line 37", "trainer line 38", "trainer line 39",
                    "torch.OutOfMemoryError: CUDA out of memory"]
    assert f"kubectl -n kubeflow describe pytorchjob {JOB}" in message
    assert kube.calls("DELETE") == []  # a failed job stays for inspection (its TTL removes it)


def test_failed_job_without_streamed_lines_reads_the_tail(kube, s3_bucket):
    # The pod failed so fast that it was never seen running: nothing was streamed.
    kube.phases = ["Created", "Failed"]
    kube.pod_phase = "Pending"
    kube.master_log = [(f"2025-01-01T00:01:{i:02d}Z", f"line {i}") for i in range(10)]
    with pytest.raises(KubetuneError, match=r"Last 3 lines of .*:\n  \| line 7\n  \| line 8\n  \| line 9\n"):
        fast_launcher(failure_log_lines=3).launch(make_request(s3_bucket))
    assert [r for r in kube.calls("GET", "/log") if flag(r.query.get("follow"))] == []
    (tail,) = [r for r in kube.calls("GET", "/log") if "tailLines" in r.query]
    assert tail.query["tailLines"] == "3"


def test_timeout_deletes_the_job(kube, s3_bucket):
    kube.phases = ["Running"]
    started = time.monotonic()
    with pytest.raises(KubetuneError, match=rf"cluster\.timeout_seconds: PyTorchJob kubeflow/{JOB} did not finish within 1 s"):
        fast_launcher().launch(make_request(s3_bucket, "cluster.timeout_seconds=1"))
    assert time.monotonic() - started < 10
    (delete,) = kube.calls("DELETE")
    assert delete.path == f"/apis/kubeflow.org/v1/namespaces/kubeflow/pytorchjobs/{JOB}"
    assert json.loads(delete.body)["propagationPolicy"] == "Background"
    assert kube.jobs == {}


def test_job_deleted_by_someone_else_fails_the_step(kube, s3_bucket):
    kube.phases = ["Running"]
    launcher = fast_launcher()

    def delete_soon():
        kube.wait_for("GET", f"/pytorchjobs/{JOB}")
        kube.jobs.clear()

    threading.Thread(target=delete_soon, daemon=True).start()
    with pytest.raises(KubetuneError, match=f"PyTorchJob kubeflow/{JOB} was deleted while the train step waited"):
        launcher.launch(make_request(s3_bucket))


def test_retried_step_follows_the_job_of_its_run(kube, s3_bucket, capsys):
    request = make_request(s3_bucket)
    kube.jobs[JOB] = jobs.serialize(jobs.build_pytorchjob(request))
    kube.phases = ["Running", "Succeeded"]
    result = fast_launcher().launch(request)
    assert result.job_name == JOB
    assert len(kube.calls("POST")) == 1 and kube.calls("DELETE") == []
    assert f"PyTorchJob kubeflow/{JOB} of this run is already Running; following it" in capsys.readouterr().out


def test_existing_job_of_another_run_is_not_touched(kube, s3_bucket):
    other = jobs.serialize(jobs.build_pytorchjob(make_request(s3_bucket)))
    other["metadata"]["annotations"]["kubetune.io/run-id"] = "someone-else"
    kube.jobs[JOB] = other
    with pytest.raises(KubetuneError, match="already exists and belongs to run 'someone-else'"):
        fast_launcher().launch(make_request(s3_bucket))
    assert kube.calls("DELETE") == [] and JOB in kube.jobs


def test_invalid_request_sends_nothing(kube, s3_bucket):
    with pytest.raises(KubetuneError, match="cluster.memory"):
        fast_launcher().launch(make_request(s3_bucket, "cluster.memory=much"))
    assert kube.requests == []


def test_unreachable_api_server_is_one_clear_error(tmp_path, s3_bucket, monkeypatch):
    from tests.cluster.servers import FakeKubernetes
    from tests.loopback import free_port

    server = FakeKubernetes()
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    text = kubeconfig.read_text().replace(server.url, f"http://127.0.0.1:{free_port()}")
    kubeconfig.write_text(text)
    server.stop()
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    with pytest.raises(KubetuneError, match=f"could not create PyTorchJob kubeflow/{JOB}"):
        fast_launcher().launch(make_request(s3_bucket))


def test_missing_kubeconfig_is_one_clear_error(tmp_path, s3_bucket, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(KubetuneError, match="cannot reach Kubernetes through the kubeconfig"):
        fast_launcher().launch(make_request(s3_bucket))


def test_in_a_pod_the_service_account_is_used_not_the_kubeconfig(kube, s3_bucket, monkeypatch):
    # The kubelet sets KUBERNETES_SERVICE_HOST in every pod; without the mounted token the step says so.
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    with pytest.raises(KubetuneError, match="cannot reach Kubernetes through the pod's service account"):
        fast_launcher().launch(make_request(s3_bucket))
    assert kube.requests == []  # the kubeconfig's server (this fake) was not used


CANCEL_SCRIPT = """
import sys
from kubetune.config import load_config
from kubetune.launchers import TrainRequest
from kubetune.launchers import pytorchjob
from kubetune.launchers.pytorchjob import PyTorchJobLauncher
from tests.cluster.servers import flag

config_path, bucket, run_id = sys.argv[1:4]
config = load_config(config_path, ["tracking.enable=false", "storage.endpoint_url=null"])
request = TrainRequest(config=config, data_uri=f"s3://{bucket}/tokenized", output_uri=f"s3://{bucket}/runs/{run_id}/train", run_id=run_id)
try:
    PyTorchJobLauncher(poll_interval=0.05, log_read_timeout=2.0).launch(request)
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.parametrize(("signum", "exit_code"), [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 130)])
def test_cancelled_step_deletes_the_job(kube, s3_bucket, signum, exit_code):
    kube.phases = ["Running"]
    kube.master_log = MASTER_LOG
    process = subprocess.Popen([sys.executable, "-c", CANCEL_SCRIPT, str(CONFIG), s3_bucket, RUN_ID],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        kube.wait_for("GET", f"/pytorchjobs/{JOB}", timeout=60)  # submitted, and waiting
        process.send_signal(signum)
        out, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == exit_code, out
    (delete,) = kube.calls("DELETE")
    assert delete.path.endswith(f"/pytorchjobs/{JOB}")
    assert kube.jobs == {}
    assert f"the train step was cancelled ({signal.Signals(signum).name}); PyTorchJob kubeflow/{JOB} was deleted" in out
