"""Local paths and object storage (s3://, and KFP's minio:// artifact URIs) behind one interface.

Endpoint and credentials come from the environment (what MinIO and the Kubernetes Secrets give the
pods): AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, and the endpoint from `storage.endpoint_url`,
$AWS_ENDPOINT_URL or $MLFLOW_S3_ENDPOINT_URL. Credentials are never read from the config.

Stage outputs are published atomically (`atomic_output_dir`): a stage writes into a private staging
directory and the result replaces the old one only once it is complete, so a failed or killed stage
never leaves half a result or destroys a good earlier one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from kubetune.errors import KubetuneError, short_reason

if TYPE_CHECKING:
    import fsspec

    from kubetune.config import StorageConfig

logger = logging.getLogger(__name__)

# Written last into every published output directory; a directory without it is incomplete.
COMPLETE_MARKER = "_COMPLETE"
REMOTE_SCHEMES = ("s3://", "minio://", "s3a://")
T = TypeVar("T")


LOCAL, OBJECT_STORAGE = "local", "object storage"
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def is_remote(uri: str) -> bool:
    return uri.startswith(REMOTE_SCHEMES)


def location_kind(uri: str) -> str:
    """LOCAL (a path, file://), OBJECT_STORAGE (s3://, minio://, s3a://), else the URI's own scheme (gs, http...)."""
    if is_remote(uri):
        return OBJECT_STORAGE
    match = _SCHEME.match(uri)
    if match is None or match.group(1).lower() == "file":
        return LOCAL
    return match.group(1).lower()


def unsupported_scheme(uri: str, also: Collection[str] = ()) -> str | None:
    """Why `uri` names nothing kubetune can read or write (None when it can): a scheme such as gs:// would
    otherwise be taken for a local folder named `gs:`. `also` adds schemes the caller handles (demo)."""
    kind = location_kind(uri)
    if kind in (LOCAL, OBJECT_STORAGE) or kind in also:
        return None
    extra = "".join(f", {scheme}://" for scheme in also)
    return f"kubetune cannot read or write {kind}:// URIs (got {uri!r}); give a local path or an s3:// (minio://) URI{extra}"


def check_location(key: str, uri: str, allowed: Collection[str] = (LOCAL, OBJECT_STORAGE), why: str = "") -> None:
    """One check of every location a command takes (config key or argument `key`): its scheme must be one
    kubetune knows and one this use supports (`allowed`; `why` says why a kind is not)."""
    problem = unsupported_scheme(uri)
    if problem:
        raise KubetuneError(f"{key}: {problem}")
    kind = location_kind(uri)
    if kind not in allowed:
        wanted = "a local path" if LOCAL in allowed else "an s3:// (minio://) URI"
        raise KubetuneError(f"{key}: {uri!r} is {'a local path' if kind == LOCAL else kind}; {why + ': ' if why else ''}"
                            f"give {wanted}")


def check_output_location(key: str, uri: str, file: bool = False, config: StorageConfig | None = None) -> None:
    """Before any work: `uri` (a folder, or a `file`) can be written — its scheme is known, it is not the
    wrong kind of thing, and its nearest existing parent is a folder this process can write into."""
    check_location(key, uri)
    if is_remote(uri):
        check_reachable(uri, config)  # the endpoint, the credentials and the bucket, before the work
        return
    path = Path(normalize_uri(uri)).expanduser().absolute()
    if path.is_dir() and file:
        raise KubetuneError(f"{key}: {path} is a folder; give a file name")
    if path.exists() and not path.is_dir() and not file:
        raise KubetuneError(f"{key}: {path} is a file; give a folder")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise KubetuneError(f"{key}: {parent} is a file, so {path} cannot be created in it; choose another path")
    try:  # by trying: os.access says yes to root on a read-only file system
        tempfile.TemporaryDirectory(dir=parent, prefix=".kubetune-probe-").cleanup()
    except OSError as exc:
        raise KubetuneError(f"{key}: cannot write into {parent} ({exc.strerror or type(exc).__name__}); choose a "
                            "folder you can write to") from None


def normalize_uri(uri: str) -> str:
    """minio:// and s3a:// → s3://; file:// → a plain path."""
    for scheme in ("minio://", "s3a://"):
        if uri.startswith(scheme):
            return "s3://" + uri[len(scheme) :]
    if uri.startswith("file://"):
        return uri[len("file://") :]
    return uri


def endpoint_url(config: StorageConfig | None = None) -> str | None:
    if config is not None and config.endpoint_url:
        return config.endpoint_url
    return os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None


def max_retries(config: StorageConfig | None = None) -> int:
    if config is None:
        from kubetune.config import StorageConfig

        config = StorageConfig()
    return config.max_retries


def storage_options(config: StorageConfig | None = None) -> dict[str, Any]:
    """s3fs options from the config and the environment (never credentials from the config).

    botocore retries each HTTP request itself (`standard` mode: 5xx answers, throttling, dropped
    connections) `storage.max_retries` times with jittered exponential backoff; see `with_retries`
    for what is retried on top of that.
    """
    retries = {"max_attempts": 1 + max_retries(config), "mode": "standard"}
    options: dict[str, Any] = {"config_kwargs": {"retries": retries}}
    client_kwargs: dict[str, Any] = {}
    url = endpoint_url(config)
    if url:
        client_kwargs["endpoint_url"] = url
    region = (config.region if config else None) or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        client_kwargs["region_name"] = region
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    return options


def filesystem(uri: str, config: StorageConfig | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path within it) for a local path or an object-storage URI (its bucket reached first)."""
    import fsspec

    uri = normalize_uri(uri)
    if is_remote(uri):
        check_reachable(uri, config)
        fs = fsspec.filesystem("s3", skip_instance_cache=True, **storage_options(config))
        return fs, uri[len("s3://") :]
    return fsspec.filesystem("file"), str(Path(uri).expanduser().resolve())


def _where(config: StorageConfig | None) -> str:
    url = endpoint_url(config)
    return url if url else "AWS's endpoint (storage.endpoint_url and $AWS_ENDPOINT_URL unset)"


_NO_CREDENTIALS = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (on a cluster they come from the Secret "
                   "cluster.storage_secret)")
_SET_ENDPOINT = "check storage.endpoint_url, $AWS_ENDPOINT_URL or $MLFLOW_S3_ENDPOINT_URL"
_reached: set[tuple[str | None, str, str | None]] = set()


def connect_timeout(config: StorageConfig | None = None) -> float:
    if config is None:
        from kubetune.config import StorageConfig

        config = StorageConfig()
    return config.connect_timeout


def check_reachable(uri: str, config: StorageConfig | None = None) -> None:
    """At the first contact with a bucket: the endpoint answers, there are credentials, the bucket exists.

    One cheap HeadBucket call, retried until `storage.connect_timeout` has passed, then one line naming
    the URI, the endpoint and what to set — rather than each operation's retries adding up to minutes
    and ending in a botocore traceback. Any other answer (403 from a policy that allows objects but not
    the bucket) lets the operation itself go on and report.
    """
    import botocore.config
    import botocore.exceptions as boto
    import botocore.session

    uri = normalize_uri(uri)
    bucket = uri[len("s3://") :].split("/", 1)[0]
    url = endpoint_url(config)
    key = (url, bucket, os.environ.get("AWS_ACCESS_KEY_ID"))
    if key in _reached:
        return
    limit = connect_timeout(config)
    region = (config.region if config else None) or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    deadline = time.monotonic() + limit
    delay = 0.5
    while True:
        remaining = max(0.5, deadline - time.monotonic())
        settings = botocore.config.Config(connect_timeout=min(5.0, remaining), read_timeout=min(10.0, remaining),
                                          retries={"total_max_attempts": 1})
        client = botocore.session.get_session().create_client("s3", endpoint_url=url, region_name=region, config=settings)
        try:
            client.head_bucket(Bucket=bucket)
            break
        except (boto.NoCredentialsError, boto.PartialCredentialsError):
            raise KubetuneError(f"{uri}: no credentials for the object store at {_where(config)}; {_NO_CREDENTIALS}") from None
        except boto.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket"):
                raise KubetuneError(f"{uri}: the bucket {bucket!r} does not exist at {_where(config)}; create it or "
                                    f"correct the URI ({_SET_ENDPOINT})") from None
            break
        except Exception as exc:  # noqa: BLE001 - a lost connection is retried, anything else re-raised
            if not _is_transient(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise KubetuneError(
                    f"{uri}: cannot reach the object store at {_where(config)} ({short_reason(exc, 80)}) within "
                    f"{limit:g} s; {_SET_ENDPOINT} (and storage.connect_timeout to wait longer)"
                ) from None
            # One notice that it waits (not one per try: the error that may follow is the line that matters).
            (logger.warning if delay == 0.5 else logger.debug)(
                "object store at %s not reachable (%s); trying again for up to %g s", _where(config), type(exc).__name__, limit)
            time.sleep(min(delay, left))  # the last try comes at the deadline: the whole limit is waited
            delay = min(2 * delay, 5.0)
        finally:
            client.close()
    _reached.add(key)


def _causes(exc: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__


def _is_transient(exc: BaseException) -> bool:
    """True for a lost connection to the object store: worth trying the whole operation again.

    Decided by exception type, never by message text (a key such as `checkpoint-500/` is not an
    HTTP 500). Error *answers* of the server (5xx, SlowDown) are not retried here: botocore has
    already retried that request `storage.max_retries` times, and retrying it again would square
    the number of attempts.
    """
    import aiohttp
    import botocore.exceptions as boto

    connection_errors = (
        ConnectionError,  # builtin: refused, reset, aborted
        TimeoutError,  # also asyncio's
        boto.ConnectionError,  # EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError
        boto.HTTPClientError,  # ReadTimeoutError, ResponseStreamingError: the connection died mid-answer
        boto.IncompleteReadError,
        aiohttp.ClientConnectionError,
        aiohttp.ClientPayloadError,
    )
    return any(isinstance(cause, connection_errors) for cause in _causes(exc))


def with_retries(
    action: Callable[[], T], what: str, attempts: int | None = None, base_delay: float = 0.5,
    config: StorageConfig | None = None,
) -> T:
    """Run `action`; when the connection to the object store is lost, run it again with exponential backoff.

    `attempts` defaults to 1 + `storage.max_retries`. Covers what botocore's per-request retries
    cannot: an endpoint that stays unreachable for longer than they wait (a MinIO pod restarting),
    or a connection dropped while a body was streaming.
    """
    attempts = attempts if attempts is not None else 1 + max_retries(config)
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except Exception as exc:  # noqa: BLE001 - classified below, re-raised when not transient
            if attempt >= attempts or not _is_transient(exc):
                error = _user_error(exc, what, attempt, config)
                if error is exc:
                    raise
                raise error from None
            delay = base_delay * 2 ** (attempt - 1)
            logger.warning("%s failed (%s: %s); retry %d/%d in %.1fs", what, type(exc).__name__, exc, attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def _user_error(exc: Exception, what: str, attempts: int, config: StorageConfig | None) -> Exception:
    """The object store's failures a user fixes, as one line (connection lost for good, no or refused
    credentials); any other exception as it is (callers catch FileNotFoundError and the like)."""
    import botocore.exceptions as boto

    if any(isinstance(cause, (boto.NoCredentialsError, boto.PartialCredentialsError)) for cause in _causes(exc)):
        return KubetuneError(f"{what}: no credentials for the object store at {_where(config)}; {_NO_CREDENTIALS}")
    if _is_transient(exc):
        return KubetuneError(f"{what}: lost the connection to the object store at {_where(config)} "
                             f"({short_reason(exc, 80)}) after {attempts} attempt(s); {_SET_ENDPOINT}")
    if isinstance(exc, PermissionError):
        return KubetuneError(f"{what}: the object store at {_where(config)} refused access ({short_reason(exc, 80)}); "
                             "check the credentials' permissions (AWS_ACCESS_KEY_ID) on this bucket and prefix")
    return exc


def exists(uri: str, config: StorageConfig | None = None) -> bool:
    fs, path = filesystem(uri, config)
    return with_retries(lambda: fs.exists(path), f"checking {uri}", config=config)


def is_complete(uri: str, config: StorageConfig | None = None) -> bool:
    """True when `uri` is a directory published by `atomic_output_dir`."""
    fs, path = filesystem(uri, config)
    return with_retries(lambda: fs.exists(f"{path}/{COMPLETE_MARKER}"), f"checking {uri}", config=config)


def download(uri: str, local_dir: str | Path, config: StorageConfig | None = None) -> Path:
    """Copy a remote directory (or file) to `local_dir`; a local `uri` is returned as it is."""
    uri = normalize_uri(uri)
    if not is_remote(uri):
        return Path(uri).expanduser()
    fs, path = filesystem(uri, config)
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    if with_retries(lambda: fs.isdir(path), f"checking {uri}", config=config):
        with_retries(lambda: fs.get(path.rstrip("/") + "/", str(local_dir) + "/", recursive=True), f"downloading {uri}", config=config)
        return local_dir
    target = local_dir / Path(path).name
    with_retries(lambda: fs.get(path, str(target)), f"downloading {uri}", config=config)
    return target


def upload_dir(local_dir: str | Path, uri: str, config: StorageConfig | None = None) -> None:
    """Copy a local directory's files to a remote prefix, the completion marker (if any) last."""
    fs, path = filesystem(uri, config)
    local_dir = Path(local_dir)
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    marker = [p for p in files if p.name == COMPLETE_MARKER and p.parent == local_dir]
    for file in [p for p in files if p not in marker] + marker:
        key = f"{path.rstrip('/')}/{file.relative_to(local_dir).as_posix()}"
        with_retries(lambda f=file, k=key: fs.put_file(str(f), k), f"uploading {file.name}", config=config)


def read_text(uri: str, config: StorageConfig | None = None) -> str:
    fs, path = filesystem(uri, config)
    return with_retries(lambda: fs.cat_file(path).decode(), f"reading {uri}", config=config)


def write_text(uri: str, text: str, config: StorageConfig | None = None) -> None:
    """Write a small text file (local: atomically via rename; remote: one PUT, atomic in S3)."""
    fs, path = filesystem(uri, config)
    if is_remote(normalize_uri(uri)):
        with_retries(lambda: fs.pipe_file(path, text.encode()), f"writing {uri}", config=config)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    temporary.write_text(text)
    temporary.replace(target)


def publish_file(local_file: str | Path, uri: str, config: StorageConfig | None = None) -> None:
    """Copy a finished local file to `uri` so that readers see the old file or the new one, never a part:
    a local target by copy to a hidden name and rename; an object by one upload (S3 shows it only once whole)."""
    fs, path = filesystem(uri, config)
    if is_remote(normalize_uri(uri)):
        with_retries(lambda: fs.put_file(str(local_file), path), f"uploading {uri}", config=config)
        return
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}")
    try:
        shutil.copyfile(local_file, temporary)
        temporary.replace(target)
    finally:
        temporary.unlink(missing_ok=True)


def _clear_stale_staging(parent: Path, name: str) -> None:
    """Remove staging directories that a killed earlier run of this stage left behind."""
    for stale in parent.glob(f".{name}.staging-*"):
        pid = stale.name.rsplit("-", 2)[-2] if stale.name.count("-") >= 2 else ""
        if pid.isdigit() and _pid_alive(int(pid)):
            continue
        shutil.rmtree(stale, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_replaceable(uri: str, kind: str, config: StorageConfig | None = None) -> None:
    """`uri` is new, empty or an earlier kubetune `kind` output: what atomic_output_dir may replace.
    Commands call it before their work too, so a user's folder is refused at the start, not at the end."""
    uri = normalize_uri(uri)
    if is_remote(uri):
        fs, path = filesystem(uri, config)
        occupied = with_retries(lambda: fs.exists(path) and bool(fs.ls(path)), f"checking {uri}", config=config)
        if occupied and not is_complete(uri, config):
            raise KubetuneError(f"output {uri} exists and is not a kubetune {kind} output; choose another path")
        return
    out = Path(uri).expanduser().resolve()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / COMPLETE_MARKER).exists())):
        raise KubetuneError(f"output {out} exists and is not a kubetune {kind} output; choose another path")


@contextlib.contextmanager
def atomic_output_dir(uri: str, kind: str, config: StorageConfig | None = None) -> Iterator[Path]:
    """Yield a local staging directory; publish it to `uri` only when the body finishes.

    `kind` names the output (e.g. "preprocess"): an existing `uri` is replaced only if it is an
    earlier output of kubetune (it has the completion marker) — never a directory of the user's.
    Local outputs are swapped in by rename; remote ones are uploaded with the marker written last.
    """
    uri = normalize_uri(uri)
    remote = is_remote(uri)
    check_replaceable(uri, kind, config)
    if remote:
        fs, path = filesystem(uri, config)
        staging = Path(tempfile.mkdtemp(prefix=f"kubetune-{kind}-"))
    else:
        out = Path(uri).expanduser().resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        _clear_stale_staging(out.parent, out.name)
        staging = out.parent / f".{out.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        staging.mkdir()
    try:
        yield staging
        (staging / COMPLETE_MARKER).write_text(f"{kind}\n")
        if remote:
            with_retries(lambda: fs.rm(f"{path}/{COMPLETE_MARKER}") if fs.exists(f"{path}/{COMPLETE_MARKER}") else None,
                         f"unmarking {uri}", config=config)
            upload_dir(staging, uri, config)
        else:
            _swap_in(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _swap_in(staging: Path, out: Path) -> None:
    if not out.exists():
        staging.rename(out)
        return
    retired = out.parent / f".{out.name}.retired-{uuid.uuid4().hex[:8]}"
    out.rename(retired)
    staging.rename(out)
    shutil.rmtree(retired, ignore_errors=True)
