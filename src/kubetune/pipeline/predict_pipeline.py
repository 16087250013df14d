"""The batch-scoring pipeline: one `predict` step that scores new rows with a trained model.

It is what a monthly scoring run is: `kubetune submit --pipeline predict` starts one, `kubetune
schedule --pipeline predict` starts one on a schedule. Its parameters are the rows, the model and,
optionally, where else the predictions go; the config supplies the rest (the `predict` section, the
object-storage endpoint, the MLflow server a `models:/` reference is looked up on).
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Markdown

from kubetune.config import ClusterConfig
from kubetune.pipeline.components import predict
from kubetune.pipeline.pipeline import _use_cluster_settings, _use_gpus

PREDICT_PIPELINE_NAME = "kubetune-predict"


class PredictOutputs(NamedTuple):
    """The pipeline's outputs (no exit handler here, so KFP takes them): the predict step's artifacts."""

    predictions: Dataset
    summary: Markdown


def predict_pipeline_for(cluster: ClusterConfig):
    """The pipeline function, with the Kubernetes settings of `cluster` (secrets, GPU as for evaluate)."""

    @dsl.pipeline(
        name=PREDICT_PIPELINE_NAME,
        description="Score new rows with a trained kubetune model: predicted label, its probability, the top labels "
        "and a needs_review flag per row.",
    )
    def kubetune_predict(
        model: str = "",
        data_uri: str = "",
        output_uri: str = "",
        config: str = "",
        overrides: list = [],  # noqa: B006 - KFP reads the default from the signature
    ) -> PredictOutputs:
        """
        Args:
            model: The model: a train output's model/ folder (s3:// URI) or models:/<name>@<alias> or
                models:/<name>/<version> in the MLflow registry of tracking.tracking_uri.
            data_uri: The rows to score (CSV, Parquet, JSON Lines or a saved dataset; s3:// URI), with the
                training data's columns; the label column may be missing (when present, metrics are computed).
            output_uri: Where the predictions Parquet is also written (s3:// URI; {run_id} is replaced by the
                run id); empty: only the step's predictions artifact.
            config: The run config as YAML text, or the s3:// URI of a YAML file; empty: the defaults.
            overrides: Config overrides as a list of "key.sub=value" strings (e.g. predict.review_threshold=0.7).
        """
        # Never cached: the same parameters can mean other rows (new data under the same URI) or another
        # model (an alias that moved).
        scored = predict(
            config=config, overrides=overrides, model=model, data_uri=data_uri, output_uri=output_uri,
        ).set_display_name("predict").set_caching_options(False)
        _use_cluster_settings(scored, cluster)
        if cluster.evaluate_gpus:
            _use_gpus(scored, cluster)
        return PredictOutputs(scored.outputs["predictions"], scored.outputs["summary"])

    return kubetune_predict
