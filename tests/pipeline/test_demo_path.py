"""The demo path as one piece, against a real `mlflow server`: kfp.local → the local launcher → 2 ranks →
DeepSpeed ZeRO-2 → class-weighted loss → best-checkpoint reload → evaluate, and the MLflow run it leaves.

Each piece is tested alone elsewhere; this is the combination a user runs (`kubetune run`), on a tiny model.
The embedded default trains on one rank (faster on a 2-core machine: BENCHMARKS.md, "Local cores"); this
test keeps the 2-rank ZeRO-2 path that `cluster.gpus_per_worker: 2` and the cluster's pods run.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.pipeline.local import run_local
from tests.train.conftest import mlflow_server  # noqa: F401 - the fixture, shared with the trainer's tests

from .test_local_run import write_config

pytestmark = pytest.mark.slow

EVERY = 3  # evaluation and checkpoint interval
MAX_STEPS = 12


def adapter_tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, tiny_bert, mlflow_server):  # noqa: F811
    root = tmp_path_factory.mktemp("demo-path")
    config = write_config(
        root, tiny_bert,
        cluster={"launcher": "local", "workers": 1, "gpus_per_worker": 2},
        deepspeed={"enable": True, "stage": 2},
        loss={"class_weights": {"enable": True}},
        # The tiny model's macro F1 usually plateaus within a few steps and the first evaluation at the top
        # stays the best (a tie doesn't replace it) while the weights go on changing, so the best checkpoint
        # is usually an early one (seen: step 3 or 6 of 12, and once step 12).
        training={"batch_size": 8, "max_steps": MAX_STEPS, "logging_steps": EVERY, "eval_steps": EVERY,
                  "save_steps": EVERY, "save_total_limit": 1, "load_best_model_at_end": True,
                  "metric_for_best_model": "macro_f1", "learning_rate": 0.2, "warmup_steps": 0},
        tracking={"tracking_uri": mlflow_server, "experiment_name": "demo-path"},
        serialize={"retain_columns": ["line_id"]},  # joins the evaluated test rows back to the raw ledger lines
    )
    summary = run_local(str(config), [], run_id="demo-path-run")
    return root, summary


def test_two_ranks_with_zero2_and_class_weights_save_the_best_checkpoint(demo_run):
    root, summary = demo_run
    train = root / "runs" / "demo-path-run" / "train"
    metadata = json.loads((Path(summary.model_dir) / "model_metadata.json").read_text())
    assert metadata["training"]["world_size"] == 2 and metadata["training"]["deepspeed"] is True
    assert metadata["training"]["global_step"] == MAX_STEPS
    config = (train / "config.yaml").read_text()
    assert "class_weights:\n    enable: true" in config
    # Each rank holds its ZeRO-2 shard of the optimizer state.
    last = train / "checkpoints" / f"checkpoint-{MAX_STEPS}"
    shards = sorted(p.name for p in last.rglob("*optim_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    state = json.loads((last / "trainer_state.json").read_text())
    best = Path(state["best_model_checkpoint"])
    scores = {entry["step"]: entry["eval_macro_f1"] for entry in state["log_history"] if "eval_macro_f1" in entry}
    assert sorted(scores) == list(range(EVERY, MAX_STEPS + 1, EVERY))
    best_step = min(step for step, score in scores.items() if score == max(scores.values()))  # the first at the top
    assert best.name == f"checkpoint-{best_step}", scores
    # The saved model is the best checkpoint's, and so not the last step's when the best came earlier.
    saved, best_adapter, last_adapter = (adapter_tensors(p) for p in (Path(summary.model_dir), train / "checkpoints" / best.name, last))
    assert saved.keys() == best_adapter.keys()
    assert all((saved[k] == best_adapter[k]).all() for k in saved)
    if best_step < MAX_STEPS:
        assert any((saved[k] != last_adapter[k]).any() for k in saved)


def test_the_run_leaves_one_finished_mlflow_run_with_its_model_and_datasets(demo_run, mlflow_server):  # noqa: F811
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from kubetune.config import load_config
    from kubetune.data.demo import generate_ledger
    from kubetune.data.labels import LabelMap
    from kubetune.data.stages import input_fingerprint
    from kubetune.serving import tracking_uri_set

    root, summary = demo_run
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("demo-path")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == summary.mlflow_run_id
    assert run.info.status == "FINISHED"
    assert run.info.end_time is not None and run.info.end_time > run.info.start_time
    assert run.info.run_name == "demo-path-run" == run.data.tags["kubetune.run_id"]
    description = run.data.tags["mlflow.note.content"]
    assert f"`{root / 'run.yaml'}`" in description and "`demo://ledger?rows=400&seed=3`" in description
    assert f"base model: `{run.data.params['model.name']}`" in description

    # test/* once each, from the evaluate step (step 0), equal to what it wrote.
    test_metrics = {key: value for key, value in run.data.metrics.items() if key.startswith("test/")}
    assert test_metrics == {f"test/{key}": value for key, value in summary.test_metrics.items()}
    for key in test_metrics:
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0], key
    assert len(client.get_metric_history(run.info.run_id, "eval/loss")) == MAX_STEPS // EVERY + 1

    # The datasets panel: one input per split, the data fingerprint as digest, the data URI as source.
    inputs = {tag.value: entry.dataset for entry in run.inputs.dataset_inputs for tag in entry.tags
              if tag.key == "mlflow.data.context"}
    assert set(inputs) == {"train", "validation", "test"}
    fingerprint = input_fingerprint(load_config(root / "run.yaml"))
    assert {dataset.digest for dataset in inputs.values()} == {fingerprint}
    assert {json.loads(d.source)["uri"] for d in inputs.values()} == {"demo://ledger?rows=400&seed=3"}

    # The logged model: an output of the run, loads with pyfunc, predicts labels of the label map.
    [output] = run.outputs.model_outputs
    logged = client.get_logged_model(output.model_id)
    assert logged.name == "model" and logged.source_run_id == run.info.run_id
    with tracking_uri_set(mlflow_server):  # not left behind in os.environ for the tests that follow
        model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert model.metadata.model_id == output.model_id
    labels = LabelMap.load(Path(summary.model_dir))
    # Fed the raw ledger lines of the test split, it predicts what the evaluate step predicted for them, row by row.
    evaluated = pd.read_parquet(Path(summary.evaluation_dir) / "predictions.parquet")
    ledger = generate_ledger(400, 3).set_index("line_id").loc[evaluated["line_id"]].reset_index()
    predicted = model.predict(ledger)["predicted_label"].tolist()
    assert predicted == evaluated["predicted"].tolist()
    assert set(predicted) <= set(labels.real_labels)
