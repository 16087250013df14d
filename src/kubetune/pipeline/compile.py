"""Compiled KFP YAML: the pipeline for the KFP UI / `kfp run create`, and each component for reuse."""

from __future__ import annotations

from pathlib import Path

from kubetune.config import ClusterConfig

PIPELINE_FILE = Path("pipelines") / "kubetune.yaml"
COMPONENTS_DIR = Path("components")


def compile_all(root: str | Path, cluster: ClusterConfig | None = None) -> list[Path]:
    """Write pipelines/kubetune.yaml and components/<name>.yaml under `root`; return the paths."""
    from kfp import compiler

    from kubetune.pipeline.components import COMPONENTS
    from kubetune.pipeline.pipeline import kubetune_pipeline_for

    root = Path(root)
    written = []
    pipeline_path = root / PIPELINE_FILE
    pipeline_path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(kubetune_pipeline_for(cluster or ClusterConfig()), str(pipeline_path))
    written.append(pipeline_path)
    (root / COMPONENTS_DIR).mkdir(parents=True, exist_ok=True)
    for name, component in COMPONENTS.items():
        path = root / COMPONENTS_DIR / f"{name}.yaml"
        compiler.Compiler().compile(component, str(path))
        written.append(path)
    return written
