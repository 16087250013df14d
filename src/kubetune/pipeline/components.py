"""The KFP components: typed signatures, each one call into kubetune.pipeline.steps.

They run in the kubetune images, which have everything installed: nothing is pip-installed when a
step starts (many clusters are air-gapped). The function bodies are shipped as source inside the
compiled YAML, so they import what they use.
"""


from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from kubetune.images import COMPONENT_IMAGE, TRAINER_IMAGE


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def validate(
    config: str,
    overrides: list,
    data_uri: str,
    base_model: str,
    epochs: float,
    learning_rate: float,
    workers: int,
    gpus_per_worker: int,
    launcher: str,
    run_id: str,
    kfp_run_id: str = dsl.PIPELINE_JOB_ID_PLACEHOLDER,
) -> NamedTuple(
    "ValidateOutputs",
    [("preprocess_config", str), ("tokenize_config", str), ("run_config", str), ("data_fingerprint", str),
     ("mlflow_run_id", str), ("run_id", str)],
):
    """Resolve the config, check the data exists, fingerprint it and open the run's MLflow run."""
    from kubetune.pipeline.steps import run_step, validate_step

    outputs = run_step("validate", lambda: validate_step(
        config, overrides, data_uri, base_model, epochs, learning_rate, workers, gpus_per_worker, launcher,
        run_id or kfp_run_id,
    ))
    return tuple(outputs[name] for name in (
        "preprocess_config", "tokenize_config", "run_config", "data_fingerprint", "mlflow_run_id", "run_id"))


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def preprocess(config: str, data_fingerprint: str, dataset: Output[Dataset]):
    """Load, split, labelize and serialize the data; the test split keeps its raw columns for the champion gate
    (`data_fingerprint` makes KFP's cache content-aware)."""
    from kubetune.pipeline.steps import preprocess_step, run_step

    summary = run_step("preprocess", lambda: preprocess_step(config, dataset.path))
    dataset.metadata.update(summary)


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def tokenize(config: str, data: Input[Dataset], dataset: Output[Dataset], diagnostics: Output[Markdown]):
    """Tokenize the text (the test split's raw columns pass through); the token-length diagnostics show in the KFP UI."""
    from kubetune.pipeline.steps import run_step, tokenize_step

    run_step("tokenize", lambda: tokenize_step(config, data.path, dataset.path, diagnostics.path))


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def train(
    config: str, data: Input[Dataset], run_id: str, mlflow_run_id: str, model: Output[Model], metrics: Output[Metrics]
):
    """Train through the launcher named by cluster.launcher (local torchrun, a Kubeflow PyTorchJob or TrainJob)."""
    from kubetune.pipeline.steps import run_step, train_step

    # The training job's pods read the tokenized data from object storage: hand them its URI, not the mount.
    final = run_step("train", lambda: train_step(config, data.uri, run_id, mlflow_run_id, model.path),
                     outputs={"model": model.path})
    for name, value in final.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(name, float(value))


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def evaluate(
    config: str,
    model: Input[Model],
    data: Input[Dataset],
    mlflow_run_id: str,
    metrics: Output[Metrics],
    classification: Output[ClassificationMetrics],
    report: Output[HTML],
    evaluation: Output[Artifact],
):
    """Score the test split: metrics (the baseline's as baseline/<name>), confusion matrix, HTML report."""
    import shutil

    from kubetune.pipeline.steps import evaluate_step, run_step

    result = run_step("evaluate", lambda: evaluate_step(config, model.path, data.path, evaluation.path, mlflow_run_id),
                      outputs={"evaluation": evaluation.path})
    for name, value in result.metrics.items():
        metrics.log_metric(name, float(value))
    for name, value in result.baseline_metrics.items():  # the TF-IDF baseline on the same rows
        metrics.log_metric(f"baseline/{name}", float(value))
    classification.log_confusion_matrix(list(result.confusion_labels), [list(row) for row in result.confusion_matrix])
    shutil.copyfile(result.report_path, report.path)


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def promote(
    config: str,
    evaluation: Input[Artifact],
    run_id: str,
    mlflow_run_id: str,
    summary: Output[Markdown],
    promotion: Output[Artifact],
):
    """Register the model as a new version; the champion gate (promote.policy) decides whether the alias moves to it."""
    from kubetune.pipeline.steps import promote_step, run_step

    result = run_step("promote", lambda: promote_step(config, evaluation.path, run_id, mlflow_run_id, summary.path,
                                                      promotion.path),
                      outputs={"summary": summary.path, "promotion": promotion.path})
    promotion.metadata.update({k: v for k, v in result.items() if isinstance(v, (str, int, float, bool))})


@dsl.component(base_image=COMPONENT_IMAGE, install_kfp_package=False)
def finalize(
    config: str,
    overrides: list,
    run_id: str,
    status: dsl.PipelineTaskFinalStatus,
    kfp_run_id: str = dsl.PIPELINE_JOB_ID_PLACEHOLDER,
) -> str:
    """The exit handler: end the MLflow run FINISHED, FAILED (a step failed) or KILLED (the run was cancelled)."""
    from kubetune.pipeline.steps import finalize_step

    return finalize_step(config, overrides, run_id or kfp_run_id, status.state)


@dsl.component(base_image=TRAINER_IMAGE, install_kfp_package=False)
def predict(
    config: str,
    overrides: list,
    model: str,
    data_uri: str,
    output_uri: str,
    predictions: Output[Dataset],
    summary: Output[Markdown],
    metrics: Output[Metrics],
    kfp_run_id: str = dsl.PIPELINE_JOB_ID_PLACEHOLDER,
):
    """Score new rows with a trained model: the predictions Parquet, its summary in the KFP UI, its figures."""
    from kubetune.pipeline.steps import predict_step, run_step

    result = run_step("predict", lambda: predict_step(
        config, overrides, model, data_uri, output_uri, kfp_run_id, predictions.path, summary.path, predictions.uri,
    ), outputs={"predictions": predictions.path, "summary": summary.path})
    predictions.metadata.update({"format": "parquet", **{k: v for k, v in result.items() if v is not None}})
    for name, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(name, float(value))
    for name, value in (result.get("metrics") or {}).items():  # when the rows carry their labels
        metrics.log_metric(name, float(value))


COMPONENTS = {"validate": validate, "preprocess": preprocess, "tokenize": tokenize, "train": train, "evaluate": evaluate,
              "promote": promote, "finalize": finalize, "predict": predict}
