"""kubetune.storage against moto's S3 server on 127.0.0.1: round trips, atomic publication, and retries
of transient faults (503 answers and dropped connections from a proxy in front of moto)."""

from __future__ import annotations

import boto3
import pytest

from kubetune import storage
from kubetune.config import StorageConfig
from kubetune.errors import KubetuneError
from tests.cluster.servers import FaultyProxy


def keys(s3_endpoint: str, s3_bucket: str) -> list[str]:
    listed = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=s3_bucket)
    return sorted(item["Key"] for item in listed.get("Contents", []))


# ------------------------------------------------------------------------------------------ URIs
def test_minio_and_s3a_uris_are_s3():
    assert storage.normalize_uri("minio://mlpipeline/v2/artifacts/x") == "s3://mlpipeline/v2/artifacts/x"
    assert storage.normalize_uri("s3a://b/k") == "s3://b/k"
    assert storage.normalize_uri("file:///tmp/x") == "/tmp/x"
    assert storage.is_remote("minio://b/k") and not storage.is_remote("/tmp/x")


def test_endpoint_from_config_then_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://from-aws-env:9000")
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://from-mlflow-env:9000")
    assert storage.endpoint_url(StorageConfig(endpoint_url="http://from-config:9000")) == "http://from-config:9000"
    assert storage.endpoint_url(StorageConfig()) == "http://from-aws-env:9000"
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert storage.endpoint_url(None) == "http://from-mlflow-env:9000"


def test_botocore_retries_follow_storage_max_retries():
    options = storage.storage_options(StorageConfig(max_retries=3, endpoint_url="http://minio:9000", region="eu-west-1"))
    assert options["config_kwargs"]["retries"] == {"max_attempts": 4, "mode": "standard"}
    assert options["client_kwargs"] == {"endpoint_url": "http://minio:9000", "region_name": "eu-west-1"}


# ------------------------------------------------------------------------------------ round trips
def test_text_round_trip_through_minio_uri(s3_bucket):
    storage.write_text(f"minio://{s3_bucket}/runs/r1/config.yaml", "a: 1\n")
    assert storage.read_text(f"s3://{s3_bucket}/runs/r1/config.yaml") == "a: 1\n"
    assert storage.exists(f"s3://{s3_bucket}/runs/r1/config.yaml")
    assert not storage.exists(f"s3://{s3_bucket}/runs/r1/absent.yaml")


def test_missing_object_is_not_retried(s3_bucket, s3_endpoint, monkeypatch):
    with FaultyProxy(s3_endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        with pytest.raises(FileNotFoundError):
            storage.read_text(f"s3://{s3_bucket}/absent.txt")
    # s3fs asks once for the object and once whether it is a folder: each question is asked one time.
    assert [(method, status) for method, path, status in proxy.requests if "absent.txt" in path] == [("HEAD", 404), ("GET", 200)]


def test_atomic_output_dir_publishes_the_marker_last(s3_bucket, s3_endpoint, tmp_path):
    uri = f"s3://{s3_bucket}/runs/r1/preprocess"
    with storage.atomic_output_dir(uri, "preprocess") as staging:
        (staging / "data").mkdir()
        (staging / "data" / "part-0.arrow").write_bytes(b"rows")
        (staging / "label_map.json").write_text("{}")
        assert keys(s3_endpoint, s3_bucket) == []  # nothing is visible before the body finishes
    assert keys(s3_endpoint, s3_bucket) == [
        "runs/r1/preprocess/_COMPLETE", "runs/r1/preprocess/data/part-0.arrow", "runs/r1/preprocess/label_map.json"]
    assert storage.is_complete(uri)
    local = storage.download(uri, tmp_path / "copy")
    assert (local / "data" / "part-0.arrow").read_bytes() == b"rows"


def test_failed_body_publishes_nothing(s3_bucket, s3_endpoint):
    with (pytest.raises(RuntimeError, match="tokenizer crashed"),
          storage.atomic_output_dir(f"s3://{s3_bucket}/runs/r1/tokenize", "tokenize") as staging):
        (staging / "half.arrow").write_bytes(b"half")
        raise RuntimeError("tokenizer crashed")
    assert keys(s3_endpoint, s3_bucket) == []


def test_a_prefix_that_is_not_a_kubetune_output_is_never_replaced(s3_bucket):
    storage.write_text(f"s3://{s3_bucket}/mine/notes.txt", "keep me")
    refused = f"output s3://{s3_bucket}/mine exists and is not a kubetune preprocess output"
    with pytest.raises(KubetuneError, match=refused), storage.atomic_output_dir(f"s3://{s3_bucket}/mine", "preprocess"):
        pass
    assert storage.read_text(f"s3://{s3_bucket}/mine/notes.txt") == "keep me"


def test_upload_dir_sends_the_marker_last(s3_bucket, s3_endpoint, tmp_path, monkeypatch):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "z.bin").write_bytes(b"z")
    (tmp_path / "_COMPLETE").write_text("train\n")
    (tmp_path / "a.json").write_text("{}")
    with FaultyProxy(s3_endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        storage.upload_dir(tmp_path, f"s3://{s3_bucket}/out")
    puts = [path.split("/out/", 1)[1].split("?")[0] for method, path, _ in proxy.requests if method == "PUT"]
    assert puts == ["a.json", "b/z.bin", "_COMPLETE"]


# --------------------------------------------------------------------------------------- retries
def test_503_answers_are_retried_until_the_call_succeeds(s3_bucket, s3_endpoint, monkeypatch):
    storage.write_text(f"s3://{s3_bucket}/runs/r1/config.yaml", "epochs: 3\n")
    with FaultyProxy(s3_endpoint, failures=2, mode="503", match="config.yaml") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        assert storage.read_text(f"s3://{s3_bucket}/runs/r1/config.yaml", StorageConfig(max_retries=3)) == "epochs: 3\n"
    statuses = [status for _, _, status in proxy.matched()]
    assert statuses[:2] == [503, 503] and statuses[-1] == 200  # the same request, answered at the third try


def test_503_beyond_max_retries_fails(s3_bucket, s3_endpoint, monkeypatch):
    storage.write_text(f"s3://{s3_bucket}/runs/r1/config.yaml", "epochs: 3\n")
    with FaultyProxy(s3_endpoint, failures=100, mode="503", match="config.yaml") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        with pytest.raises(Exception) as caught:
            storage.read_text(f"s3://{s3_bucket}/runs/r1/config.yaml", StorageConfig(max_retries=1))
    assert "Service Unavailable" in str(caught.value)
    statuses = {status for _, _, status in proxy.matched()}
    assert statuses == {503} and len(proxy.matched()) >= 2


def test_a_dropped_connection_is_retried(s3_bucket, s3_endpoint, monkeypatch):
    storage.write_text(f"s3://{s3_bucket}/runs/r1/config.yaml", "epochs: 3\n")
    with FaultyProxy(s3_endpoint, failures=1, mode="drop", match="config.yaml") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        assert storage.read_text(f"s3://{s3_bucket}/runs/r1/config.yaml") == "epochs: 3\n"
    statuses = [status for _, _, status in proxy.matched()]
    assert statuses[0] == 0 and statuses[-1] == 200


def test_an_upload_survives_a_503(s3_bucket, s3_endpoint, monkeypatch, tmp_path):
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights")
    with FaultyProxy(s3_endpoint, failures=1, mode="503", match="adapter_model") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        storage.upload_dir(tmp_path, f"s3://{s3_bucket}/runs/r1/train/model")
    assert [status for _, _, status in proxy.matched()][0] == 503
    assert keys(s3_endpoint, s3_bucket) == ["runs/r1/train/model/adapter_model.safetensors"]


# ----------------------------------------------------------------------------- with_retries itself
def test_with_retries_runs_a_lost_connection_again(monkeypatch):
    monkeypatch.setattr(storage.time, "sleep", lambda seconds: None)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("connection reset by peer")
        return "done"

    assert storage.with_retries(flaky, "reading", config=StorageConfig(max_retries=2)) == "done"
    assert len(calls) == 3


def test_with_retries_gives_up_after_max_retries(monkeypatch):
    delays = []
    monkeypatch.setattr(storage.time, "sleep", delays.append)
    calls = []

    def down():
        calls.append(1)
        raise ConnectionRefusedError("refused")

    with pytest.raises(KubetuneError, match=r"after 4 attempt\(s\)") as caught:
        storage.with_retries(down, "reading", config=StorageConfig(max_retries=3), base_delay=0.5)
    assert isinstance(caught.value.__context__, ConnectionRefusedError)
    assert len(calls) == 4 and delays == [0.5, 1.0, 2.0]


def test_with_retries_does_not_retry_by_message_text():
    calls = []

    def broken():
        calls.append(1)
        raise ValueError("checkpoint-500 is not a directory (HTTP 503 in the name only)")

    with pytest.raises(ValueError):
        storage.with_retries(broken, "reading", config=StorageConfig(max_retries=5))
    assert len(calls) == 1


def test_a_wrapped_connection_error_is_transient():
    import botocore.exceptions

    try:
        try:
            raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://minio:9000")
        except botocore.exceptions.EndpointConnectionError as inner:
            raise OSError("could not list") from inner
    except OSError as outer:
        assert storage._is_transient(outer)
    assert not storage._is_transient(PermissionError("Access Denied"))


# ------------------------------------------------------------- unreachable store, missing credentials
def one_line_cli_error(capsys, *argv: str) -> str:
    from kubetune.cli import main

    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    [line] = err.splitlines()
    assert line.startswith("kubetune: error: ")
    return line


def test_an_unreachable_endpoint_is_one_line_within_storage_connect_timeout(capsys, monkeypatch, tmp_path):
    import time

    from tests.loopback import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there: every connection is refused
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    started = time.monotonic()
    line = one_line_cli_error(capsys, "preprocess", "--output", "s3://ledgers/pre", "data.uri=demo://ledger?rows=50",
                              "storage.connect_timeout=3")
    elapsed = time.monotonic() - started
    assert line.startswith(f"kubetune: error: s3://ledgers/pre: cannot reach the object store at {endpoint} "
                           "(EndpointConnectionError: Could not connect to the endpoint URL")
    assert line.endswith("within 3 s; check storage.endpoint_url, $AWS_ENDPOINT_URL or $MLFLOW_S3_ENDPOINT_URL "
                         "(and storage.connect_timeout to wait longer)")
    assert 3 <= elapsed < 10  # it kept trying for the whole 3 s (the last try at the deadline), then stopped


def test_the_connect_timeout_defaults_to_30_seconds():
    assert StorageConfig().connect_timeout == 30


def test_missing_credentials_are_one_line_naming_the_variables(capsys, monkeypatch, s3_bucket, s3_endpoint, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    line = one_line_cli_error(capsys, "tokenize", "--input", f"s3://{s3_bucket}/pre", "--output", str(tmp_path / "tok"))
    assert line == (f"kubetune: error: s3://{s3_bucket}/pre: no credentials for the object store at {s3_endpoint}; set "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (on a cluster they come from the Secret "
                    "cluster.storage_secret)")
    assert not (tmp_path / "tok").exists()


def test_a_bucket_that_does_not_exist_is_one_line(capsys, s3_bucket, s3_endpoint, tmp_path):
    line = one_line_cli_error(capsys, "preprocess", "--output", f"s3://{s3_bucket}-gone/pre",
                              "data.uri=demo://ledger?rows=50")
    assert line == (f"kubetune: error: s3://{s3_bucket}-gone/pre: the bucket '{s3_bucket}-gone' does not exist at "
                    f"{s3_endpoint}; create it or correct the URI (check storage.endpoint_url, $AWS_ENDPOINT_URL or "
                    "$MLFLOW_S3_ENDPOINT_URL)")


def test_the_bucket_is_checked_once_per_process(s3_bucket, s3_endpoint, monkeypatch):
    storage.write_text(f"s3://{s3_bucket}/a.txt", "a")
    with FaultyProxy(s3_endpoint, failures=0, mode="503", match=".txt") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        assert storage.read_text(f"s3://{s3_bucket}/a.txt") == "a"
        assert storage.read_text(f"s3://{s3_bucket}/a.txt") == "a"
    heads = [r for r in proxy.requests if r[0] == "HEAD" and r[1].rstrip("/") == f"/{s3_bucket}"]
    assert len(heads) == 1


def test_a_connection_lost_for_good_is_one_line(monkeypatch):
    monkeypatch.setattr(storage.time, "sleep", lambda seconds: None)

    def down():
        raise ConnectionRefusedError("refused")

    with pytest.raises(KubetuneError) as caught:
        storage.with_retries(down, "reading s3://b/k", config=StorageConfig(max_retries=1, endpoint_url="http://m:9000"))
    assert str(caught.value) == ("reading s3://b/k: lost the connection to the object store at http://m:9000 "
                                 "(ConnectionRefusedError: refused) after 2 attempt(s); check storage.endpoint_url, "
                                 "$AWS_ENDPOINT_URL or $MLFLOW_S3_ENDPOINT_URL")




def test_missing_credentials_met_by_an_operation_are_one_line(monkeypatch):
    import botocore.exceptions

    def unsigned():
        try:
            raise botocore.exceptions.NoCredentialsError()
        except botocore.exceptions.NoCredentialsError as inner:
            raise OSError("could not sign") from inner  # how s3fs passes it on

    with pytest.raises(KubetuneError) as caught:
        storage.with_retries(unsigned, "uploading model.safetensors", config=StorageConfig(endpoint_url="http://m:9000"))
    assert str(caught.value) == ("uploading model.safetensors: no credentials for the object store at http://m:9000; "
                                 "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (on a cluster they come from the "
                                 "Secret cluster.storage_secret)")


def test_a_refused_permission_is_one_line():
    def denied():
        raise PermissionError("Access Denied\n<Error><Code>AccessDenied</Code>...</Error>")

    with pytest.raises(KubetuneError) as caught:
        storage.with_retries(denied, "writing s3://b/k", config=StorageConfig(endpoint_url="http://m:9000"))
    assert str(caught.value) == ("writing s3://b/k: the object store at http://m:9000 refused access (PermissionError: "
                                 "Access Denied); check the credentials' permissions (AWS_ACCESS_KEY_ID) on this bucket "
                                 "and prefix")
