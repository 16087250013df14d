"""Where the trainer reads and writes: OUT (a local folder or an object-storage prefix) and local scratch.

    OUT/
      config.yaml          the resolved run config (written once the model is built, so a killed run still has it)
      launch-config.yaml   the config a launcher handed the trainer (kubetune.launchers.write_run_config)
      run.json             the trainer's own state: the MLflow run to continue after a restart
      checkpoints/checkpoint-<step>/   HF Trainer layout + _COMPLETE (see checkpoints.py)
      model/               the final model, published whole by storage.atomic_output_dir
      mlruns/              the default MLflow store (SQLite) when OUT is local and no tracking URI is set
      _COMPLETE            written last, when training finished and model/ is published

The Trainer only writes local files. With a remote OUT each node works in a scratch folder whose
name is derived from OUT (every rank of a node finds the same one, also after a restart) and the
checkpoints and model are uploaded from there.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune import storage
from kubetune.config import StorageConfig
from kubetune.distributed import is_local_main_process
from kubetune.errors import KubetuneError
from kubetune.launchers import LAUNCH_CONFIG_FILE

RUN_STATE_FILE = "run.json"
CONFIG_FILE = "config.yaml"
CHECKPOINTS_DIR = "checkpoints"
MODEL_DIR = "model"
MLFLOW_DIR = "mlruns"
# What a launcher may have put into OUT before the trainer starts (kubetune.launchers.write_run_config;
# config.yaml: where earlier launchers put it).
_PRESEEDED = {LAUNCH_CONFIG_FILE, CONFIG_FILE}


@dataclass(frozen=True)
class OutputPaths:
    uri: str  # OUT, normalised (s3:// or an absolute local path)
    remote: bool
    local_root: Path  # OUT itself when local; this node's scratch folder when remote
    storage: StorageConfig

    @classmethod
    def for_output(cls, output_uri: str, storage_config: StorageConfig) -> OutputPaths:
        uri = storage.normalize_uri(output_uri)
        if storage.is_remote(uri):
            digest = hashlib.sha256(uri.encode()).hexdigest()[:12]
            scratch = Path(tempfile.gettempdir()) / f"kubetune-train-{digest}"
            return cls(uri=uri.rstrip("/"), remote=True, local_root=scratch, storage=storage_config)
        local = Path(uri).expanduser().resolve()
        return cls(uri=str(local), remote=False, local_root=local, storage=storage_config)

    @property
    def checkpoints(self) -> Path:
        """Where the Trainer writes checkpoint-<step>/ on this node."""
        return self.local_root / CHECKPOINTS_DIR

    @property
    def scratch(self) -> Path:
        """Node-local room for downloads (remote data, a remote base model)."""
        if self.remote:
            return self.local_root / "inputs"
        return Path(tempfile.gettempdir()) / f"kubetune-train-{hashlib.sha256(self.uri.encode()).hexdigest()[:12]}"

    def child(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def remote_checkpoints(self) -> str:
        return self.child(CHECKPOINTS_DIR)

    def write_text(self, name: str, text: str) -> None:
        storage.write_text(self.child(name), text, self.storage)

    def write_json(self, name: str, data: Any) -> None:
        self.write_text(name, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def read_json(self, name: str) -> dict[str, Any] | None:
        if not storage.exists(self.child(name), self.storage):
            return None
        return json.loads(storage.read_text(self.child(name), self.storage))

    def entries(self) -> list[str]:
        fs, path = storage.filesystem(self.uri, self.storage)
        if not storage.with_retries(lambda: fs.exists(path), f"checking {self.uri}"):
            return []
        return sorted(Path(p.rstrip("/")).name for p in storage.with_retries(lambda: fs.ls(path, detail=False), f"listing {self.uri}"))

    def check_is_ours(self) -> None:
        """OUT must be new, a launcher-prepared folder, or an earlier (maybe unfinished) run of the trainer."""
        if not self.remote and self.local_root.exists() and not self.local_root.is_dir():
            raise KubetuneError(f"--output {self.uri} is a file; give a folder for the training output")
        entries = set(self.entries())
        if entries and RUN_STATE_FILE not in entries and not entries <= _PRESEEDED:
            raise KubetuneError(
                f"--output {self.uri} already holds files that are not a kubetune training output "
                f"({', '.join(sorted(entries)[:5])}); choose an empty or new folder"
            )

    def remove(self, name: str) -> None:
        fs, path = storage.filesystem(self.child(name), self.storage)
        if storage.with_retries(lambda: fs.exists(path), f"checking {self.child(name)}"):
            storage.with_retries(lambda: fs.rm(path, recursive=True), f"removing {self.child(name)}")


def stage_remote_dir(uri: str, local_dir: Path, storage_config: StorageConfig) -> Path:
    """Download the folder `uri` to `local_dir`, replacing what an earlier run left there.

    Call on one process per node (then barrier): the folder is filled under a temporary name and
    renamed, so a process killed mid-download never leaves a folder that looks complete. Never
    reused across runs: the object behind a URI may have changed.
    """
    if local_dir.exists():
        shutil.rmtree(local_dir)
    partial = local_dir.with_name(local_dir.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    storage.download(uri, partial, storage_config)
    partial.rename(local_dir)
    return local_dir


def clear_scratch(paths: OutputPaths) -> None:
    """Drop this node's downloads (and, for a remote OUT, its local copy of the checkpoints) after success."""
    if not is_local_main_process():
        return
    shutil.rmtree(paths.scratch, ignore_errors=True)
    if paths.remote:
        shutil.rmtree(paths.local_root, ignore_errors=True)
