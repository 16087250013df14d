"""Compiled KFP YAML: the pipelines for the KFP UI / `kfp run create`, and each component for reuse."""

from __future__ import annotations

from pathlib import Path

from kubetune.config import ClusterConfig

PIPELINE_FILE = Path("pipelines") / "kubetune.yaml"
PREDICT_PIPELINE_FILE = Path("pipelines") / "kubetune-predict.yaml"
COMPONENTS_DIR = Path("components")


def compile_all(root: str | Path, cluster: ClusterConfig | None = None) -> list[Path]:
    """Write pipelines/kubetune.yaml, pipelines/kubetune-predict.yaml and components/<name>.yaml under `root`;
    return the paths."""
    from kfp import compiler

    from kubetune.pipeline.components import COMPONENTS
    from kubetune.pipeline.pipeline import kubetune_pipeline_for
    from kubetune.pipeline.predict_pipeline import predict_pipeline_for

    root = Path(root)
    cluster = cluster or ClusterConfig()
    written = []
    (root / PIPELINE_FILE).parent.mkdir(parents=True, exist_ok=True)
    pipelines = {PIPELINE_FILE: kubetune_pipeline_for(cluster), PREDICT_PIPELINE_FILE: predict_pipeline_for(cluster)}
    for file, pipeline in pipelines.items():
        compiler.Compiler().compile(pipeline, str(root / file))
        written.append(root / file)
    (root / COMPONENTS_DIR).mkdir(parents=True, exist_ok=True)
    for name, component in COMPONENTS.items():
        path = root / COMPONENTS_DIR / f"{name}.yaml"
        compiler.Compiler().compile(component, str(path))
        written.append(path)
    return written
