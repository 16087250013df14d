"""The kubetune pipeline: validate → preprocess → tokenize → train → evaluate → promote.

Parameters are what users change per run; everything else comes from the config. Empty strings and
zeros mean "as in the config".
"""


from kfp import dsl, kubernetes

from kubetune.cluster.job import MLFLOW_SECRET_KEYS
from kubetune.config import ClusterConfig
from kubetune.pipeline.components import evaluate, finalize, preprocess, promote, tokenize, train, validate

PIPELINE_NAME = "kubetune"


def kubetune_pipeline_for(cluster: ClusterConfig):
    """The pipeline function, with the Kubernetes settings of `cluster` (secrets, GPU for evaluate)."""

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Fine-tune a transformer classifier with LoRA and DeepSpeed ZeRO-2: validate, preprocess, "
        "tokenize, train (PyTorchJob or TrainJob), evaluate, promote (the model registry and the champion gate).",
    )
    def kubetune(
        config: str = "",
        overrides: list = [],  # noqa: B006 - KFP reads the default from the signature
        data_uri: str = "",
        base_model: str = "",
        epochs: float = 0.0,
        learning_rate: float = 0.0,
        workers: int = 0,
        gpus_per_worker: int = 0,
        launcher: str = "",
        run_id: str = "",
    ):
        """
        Args:
            config: The run config as YAML text, or the s3:// URI of a YAML file; empty: the defaults.
            overrides: Config overrides as a list of "key.sub=value" strings.
            data_uri: The labelled data (s3:// URI); empty: data.uri of the config.
            base_model: The base model (id or s3:// URI); empty: model.name of the config.
            epochs: Training epochs; 0: training.epochs of the config.
            learning_rate: Peak learning rate; 0: training.learning_rate of the config.
            workers: Training pods; 0: cluster.workers of the config.
            gpus_per_worker: GPUs per training pod; 0: cluster.gpus_per_worker of the config.
            launcher: `pytorchjob`, `trainjob` or `local`; empty: cluster.launcher of the config.
            run_id: Names the run's outputs and MLflow run; empty: the KFP run id.
        """
        # The exit handler runs after the steps whatever happened to them (a failure, a cancellation) and
        # ends the run's MLflow run with the matching status; it finds the run by its kubetune.run_id tag,
        # as an exit task can't take outputs of the tasks it guards.
        closing = finalize(config=config, overrides=overrides, run_id=run_id).set_display_name("finalize")
        closing.set_caching_options(False)
        with dsl.ExitHandler(closing, name="steps"):
            checked = validate(
                config=config, overrides=overrides, data_uri=data_uri, base_model=base_model, epochs=epochs,
                learning_rate=learning_rate, workers=workers, gpus_per_worker=gpus_per_worker, launcher=launcher,
                run_id=run_id,
            ).set_display_name("validate").set_caching_options(False)
            prepared = preprocess(
                config=checked.outputs["preprocess_config"], data_fingerprint=checked.outputs["data_fingerprint"]
            ).set_display_name("preprocess")
            tokenized = tokenize(
                config=checked.outputs["tokenize_config"], data=prepared.outputs["dataset"]
            ).set_display_name("tokenize")
            trained = train(
                config=checked.outputs["run_config"], data=tokenized.outputs["dataset"],
                run_id=checked.outputs["run_id"], mlflow_run_id=checked.outputs["mlflow_run_id"],
            ).set_display_name("train").set_caching_options(False)
            evaluated = evaluate(
                config=checked.outputs["run_config"], model=trained.outputs["model"], data=tokenized.outputs["dataset"],
                mlflow_run_id=checked.outputs["mlflow_run_id"],
            ).set_display_name("evaluate").set_caching_options(False)
            promoted = promote(
                config=checked.outputs["run_config"], evaluation=evaluated.outputs["evaluation"],
                run_id=checked.outputs["run_id"], mlflow_run_id=checked.outputs["mlflow_run_id"],
            ).set_display_name("promote").set_caching_options(False)  # the registry changes between runs

        for task in (checked, prepared, tokenized, trained, evaluated, promoted, closing):
            _use_cluster_settings(task, cluster)
        if cluster.evaluate_gpus:  # promote scores the champion: the same forward passes as evaluate
            _use_gpus(evaluated, cluster)
            _use_gpus(promoted, cluster)
        # No pipeline outputs: KFP takes them only from outside the exit handler; the steps' artifacts are
        # in the run's graph (and `kubetune run` reads their paths from the steps' records).

    return kubetune


def _use_gpus(task: dsl.PipelineTask, cluster: ClusterConfig) -> None:
    """A step on the GPU nodes: the GPU request, and the training pods' node selector and tolerations."""
    task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(cluster.evaluate_gpus)
    for key, value in cluster.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for toleration in cluster.tolerations:
        kubernetes.add_toleration(
            task, key=toleration.key, operator=toleration.operator, value=toleration.value, effect=toleration.effect,
        )


def _use_cluster_settings(task: dsl.PipelineTask, cluster: ClusterConfig) -> None:
    """Object-storage and MLflow credentials from Secrets: names in the spec, never values."""
    kubernetes.use_secret_as_env(
        task, secret_name=cluster.storage_secret,
        secret_key_to_env={"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"},
    )
    if cluster.mlflow_secret:
        kubernetes.use_secret_as_env(
            task, secret_name=cluster.mlflow_secret,
            # A server takes a user and password or a token; each key may be missing from the Secret.
            secret_key_to_env={key: key for key in MLFLOW_SECRET_KEYS},
            optional=True,
        )
