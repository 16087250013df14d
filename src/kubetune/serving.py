"""The trained classifier as an MLflow model: `mlflow.pyfunc.load_model("runs:/<run id>/model")` classifies raw rows.

The pipeline's evaluate step logs the trainer's model/ folder (adapter, tokenizer, label_map.json,
model_metadata.json) as the artifacts of a `KubetuneClassifier`, so the run lists it under "Logged
models". Its input is a DataFrame of raw rows with the model's input columns (its training
`serialize.text_columns`; the signature names them), serialized, tokenized and scored by
kubetune.inference.Predictor exactly as `kubetune predict` does; its output, a DataFrame with
`predicted_label`, `probability` and `needs_review` per row. `mlflow models serve` answers the same
over REST (POST /invocations with `{"dataframe_split": ...}`).

A `task: sft` model is logged the same way as a `KubetuneGenerator`: its input, a DataFrame of rows with the
prompt columns of the format it was trained on (the signature names them); its output, a DataFrame with the greedy
`completion` of each row, rendered and generated exactly as `kubetune predict` does (kubetune.generation).

A model logged before raw rows were accepted (its model_metadata.json says nothing of its inputs) still
loads and takes what it took then: a `text` column, already serialized as preprocess does.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc

if TYPE_CHECKING:
    import pandas as pd
    from mlflow.tracking import MlflowClient

MODEL_NAME = "model"  # the logged model's name: runs:/<run id>/model
MODEL_ARTIFACT = "model"  # the key of the model/ folder among the pyfunc's artifacts
TEXT_COLUMN = "text"  # the input of a model logged before raw rows were accepted
COMPLETION = "completion"  # the SFT model's output column (= kubetune predict's)
MAX_NEW_TOKENS_PARAM = "max_new_tokens"
REVIEW_THRESHOLD_PARAM = "review_threshold"
DEFAULT_REVIEW_THRESHOLD = 0.5  # = config.predict.review_threshold's default
_BATCH = 64


def predict_labels(model: Any, tokenizer: Any, label_names: list[str], num_real_labels: int, texts: list[str],
                   max_length: int, batch_size: int = _BATCH) -> list[str]:
    """The predicted label of each serialized text (never a dummy slot): models logged before raw rows."""
    import torch

    from kubetune.train.metrics import real_class_predictions

    device = next(model.parameters()).device
    predicted: list[str] = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start : start + batch_size], truncation=True, max_length=max_length,
                              padding=True, return_tensors="pt")
            logits = model(**{key: value.to(device) for key, value in batch.items()}).logits.float().cpu().numpy()
            predicted += [label_names[i] for i in real_class_predictions(logits, num_real_labels)]
    return predicted


class KubetuneClassifier(mlflow.pyfunc.PythonModel):
    """A kubetune model/ folder behind MLflow's pyfunc interface.

    `predict` takes a DataFrame of raw rows (the model's input columns; retained id columns may come
    along) and returns a DataFrame with one row per input row, in order: `predicted_label` (str),
    `probability` (of that label, a softmax over the real labels) and `needs_review` (probability below the
    `review_threshold` param, 0.5 unless given). The same labels as `kubetune predict` gives (both are
    kubetune.inference.Predictor).
    """

    # The logged signature checks the input; MLflow's own check from predict's type hints would only log, at
    # every import, that it can't read pd.DataFrame. The attribute is how MLflow exempts its own ChatModel.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from kubetune.errors import DataError
        from kubetune.inference import Predictor

        model_dir = Path(context.artifacts[MODEL_ARTIFACT])
        try:
            self.predictor: Predictor | None = Predictor.load(str(model_dir))
        except DataError:
            # Logged before model_metadata.json said how to read raw rows: it takes serialized `text`, as it did.
            self.predictor = None
            from kubetune.train.model import load_trained_classifier

            self.model, self.tokenizer, self.label_map = load_trained_classifier(model_dir)
            self.max_length = int(json.loads((model_dir / "model_metadata.json").read_text()).get("max_length") or 512)
            return
        self.predictor.load_weights()

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        from kubetune.inference import NEEDS_REVIEW, PREDICTED_LABEL, PROBABILITY

        if self.predictor is None:
            texts = [str(text) for text in model_input[TEXT_COLUMN]]
            return predict_labels(self.model, self.tokenizer, list(self.label_map.labels),
                                  self.label_map.num_real_labels, texts, self.max_length)
        threshold = float((params or {}).get(REVIEW_THRESHOLD_PARAM, DEFAULT_REVIEW_THRESHOLD))
        predictions = self.predictor.predict(model_input, top_k=1, review_threshold=threshold)
        return predictions[[PREDICTED_LABEL, PROBABILITY, NEEDS_REVIEW]].reset_index(drop=True)


class KubetuneGenerator(mlflow.pyfunc.PythonModel):
    """A kubetune `task: sft` model/ folder behind MLflow's pyfunc interface.

    `predict` takes a DataFrame of rows with the prompt columns of the model's format (those of its training
    data but the expected answer) and returns a DataFrame with one `completion` per row, in order: greedy, at
    most the `max_new_tokens` param's tokens (the run's `sft.max_new_tokens` unless given). The same completions
    as `kubetune predict` gives (both are kubetune.generation.completions with the model's own settings).
    """

    # The logged signature checks the input; MLflow's own check from predict's type hints would only log, at
    # every import, that it can't read pd.DataFrame. The attribute is how MLflow exempts its own ChatModel.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from kubetune.generation import sft_settings
        from kubetune.train.causal_lm import load_trained_causal_lm

        self.model, self.tokenizer, metadata = load_trained_causal_lm(Path(context.artifacts[MODEL_ARTIFACT]))
        self.sft = sft_settings(metadata, "the MLflow model")
        self.max_new_tokens = int((getattr(context, "model_config", None) or {}).get(MAX_NEW_TOKENS_PARAM,
                                                                                        self.sft.max_new_tokens))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> Any:
        import pandas as pd

        from kubetune.generation import completions

        max_new_tokens = int((params or {}).get(MAX_NEW_TOKENS_PARAM, self.max_new_tokens))
        generated = completions(self.model, self.tokenizer, self.sft, model_input.reset_index(drop=True),
                                max_new_tokens, _BATCH)
        return pd.DataFrame({COMPLETION: generated})


def sft_signature(model_dir: Path, max_new_tokens: int) -> Any:
    """The prompt columns of the model's format in (any type: a conversation is a list of messages), `completion`
    out, `max_new_tokens` as a param."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import AnyType

    from kubetune.generation import expected_column, input_columns, sft_settings

    sft = sft_settings(json.loads((model_dir / "model_metadata.json").read_text()), str(model_dir))
    inputs = [ColSpec(AnyType(), name) for name in input_columns(sft)]
    expected = expected_column(sft)
    if expected:  # rows that carry their answer are taken as they are (the answer is not read)
        inputs.append(ColSpec(AnyType(), expected, required=False))
    params = ParamSchema([ParamSpec(MAX_NEW_TOKENS_PARAM, "long", max_new_tokens)])
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([ColSpec("string", COMPLETION)]), params=params)


def model_signature(model_dir: Path) -> Any:
    """The raw input columns (any type: a CSV gives text, Parquet numbers and dates) and retained id columns
    (optional) in; predicted_label, probability, needs_review out; the review threshold as a param.
    A folder that doesn't say its input columns (trained before they were recorded): `text` in, labels out."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema
    from mlflow.types.schema import AnyType

    from kubetune.errors import DataError
    from kubetune.inference import NEEDS_REVIEW, PREDICTED_LABEL, PROBABILITY, Predictor

    try:
        predictor = Predictor.load(str(model_dir))
    except DataError:
        return ModelSignature(inputs=Schema([ColSpec("string", TEXT_COLUMN)]), outputs=Schema([ColSpec("string")]))
    inputs = [ColSpec(AnyType(), name) for name in predictor.input_columns]
    inputs += [ColSpec(AnyType(), name, required=False) for name in predictor.retain_columns
               if name not in predictor.input_columns]
    outputs = Schema([ColSpec("string", PREDICTED_LABEL), ColSpec("double", PROBABILITY), ColSpec("boolean", NEEDS_REVIEW)])
    params = ParamSchema([ParamSpec(REVIEW_THRESHOLD_PARAM, "double", DEFAULT_REVIEW_THRESHOLD)])
    return ModelSignature(inputs=Schema(inputs), outputs=outputs, params=params)


@contextlib.contextmanager
def tracking_uri_set(uri: str) -> Iterator[None]:
    """MLflow's fluent API (log_model, load_model) works on the process's tracking URI, and setting it also
    exports $MLFLOW_TRACKING_URI to the environment: set it for the calls inside only, then put back what was."""
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)  # None unsets both


def log_model(client: MlflowClient, run_id: str, model_dir: Path, max_new_tokens: int | None = None) -> str:
    """Log `model_dir` (a trainer's model/ folder) as the MLflow model of run `run_id`; its model id. A `task: sft`
    folder is a KubetuneGenerator (generating `max_new_tokens` unless told otherwise), a classifier's a
    KubetuneClassifier.

    The model is created linked to the run (its source run, and an output of the run) without making
    the run the process's active one: an active run would be ended FINISHED when the step exits, and
    ending the pipeline's run is the exit handler's alone.
    """
    from mlflow.entities import LoggedModelOutput

    from kubetune import __version__

    run = client.get_run(run_id)
    task = json.loads((model_dir / "model_metadata.json").read_text()).get("task")
    if task == "sft":
        from kubetune.config import SftConfig

        default = SftConfig.model_fields["max_new_tokens"].default
        max_new_tokens = max_new_tokens or default
        python_model, signature = KubetuneGenerator(), sft_signature(model_dir, max_new_tokens)
        model_config = {MAX_NEW_TOKENS_PARAM: max_new_tokens}
    else:
        python_model, signature, model_config = KubetuneClassifier(), model_signature(model_dir), None
    with tracking_uri_set(client.tracking_uri):
        logged = mlflow.initialize_logged_model(name=MODEL_NAME, source_run_id=run_id,
                                                experiment_id=run.info.experiment_id,
                                                tags={"kubetune.version": __version__})
        mlflow.pyfunc.log_model(
            name=MODEL_NAME, python_model=python_model, artifacts={MODEL_ARTIFACT: str(model_dir)},
            signature=signature, model_id=logged.model_id, model_config=model_config,
            # Named, not inferred: inference loads the model in a subprocess, which costs a minute here.
            pip_requirements=[f"kubetune=={__version__}"],
        )
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    return logged.model_id
