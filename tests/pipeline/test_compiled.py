"""The compiled pipeline and components committed under pipelines/ and components/."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kfp import components

from kubetune.pipeline.compile import COMPONENTS_DIR, PIPELINE_FILE, PREDICT_PIPELINE_FILE, compile_all

REPO = Path(__file__).resolve().parents[2]
STEP_NAMES = ("validate", "preprocess", "tokenize", "train", "evaluate", "promote")
COMPONENT_NAMES = (*STEP_NAMES, "finalize")


def test_committed_yaml_is_what_kubetune_compile_writes(tmp_path):
    written = compile_all(tmp_path)
    stale = [
        str(path.relative_to(tmp_path)) for path in written
        if not (REPO / path.relative_to(tmp_path)).exists()
        or (REPO / path.relative_to(tmp_path)).read_text() != path.read_text()
    ]
    assert not stale, f"stale compiled YAML (run `kubetune compile` and commit): {stale}"


@pytest.fixture(scope="module")
def pipeline_spec():
    return components.load_component_from_file(str(REPO / PIPELINE_FILE))


def test_pipeline_declares_the_user_parameters(pipeline_spec):
    inputs = {name: spec.type for name, spec in pipeline_spec.component_spec.inputs.items()}
    assert inputs == {
        "config": "String", "overrides": "List", "data_uri": "String", "base_model": "String",
        "epochs": "Float", "learning_rate": "Float", "workers": "Integer", "gpus_per_worker": "Integer",
        "launcher": "String", "run_id": "String",
    }
    assert all(spec.optional for spec in pipeline_spec.component_spec.inputs.values())


def steps_of(pipeline_spec):
    """The tasks inside the exit handler: the pipeline's steps."""
    return pipeline_spec.pipeline_spec.components["comp-exit-handler-1"].dag.tasks


def test_an_exit_handler_guards_every_step_and_hands_finalize_their_final_status(pipeline_spec):
    from kfp.pipeline_spec import pipeline_spec_pb2

    root = pipeline_spec.pipeline_spec.root.dag.tasks
    assert set(root) == {"exit-handler-1", "finalize"}
    assert set(steps_of(pipeline_spec)) == set(STEP_NAMES)
    finalize = root["finalize"]
    # Runs when the steps are done, whatever became of them (a failure, a cancellation): KFP's exit handler.
    assert finalize.trigger_policy.strategy == (
        pipeline_spec_pb2.PipelineTaskSpec.TriggerPolicy.TriggerStrategy.ALL_UPSTREAM_TASKS_COMPLETED)
    assert list(finalize.dependent_tasks) == ["exit-handler-1"]
    assert finalize.inputs.parameters["status"].task_final_status.producer_task == "exit-handler-1"
    # It finds the MLflow run by the run id and the config's tracking section: pipeline parameters only.
    assert {name: p.component_input_parameter for name, p in finalize.inputs.parameters.items() if name != "status"} == {
        "config": "config", "overrides": "overrides", "run_id": "run_id"}
    assert not finalize.caching_options.enable_cache


def test_pipeline_tasks_run_in_order_and_pass_artifacts(pipeline_spec):
    tasks = steps_of(pipeline_spec)
    assert set(tasks) == set(STEP_NAMES)
    assert set(tasks["preprocess"].dependent_tasks) == {"validate"}
    assert set(tasks["tokenize"].dependent_tasks) == {"validate", "preprocess"}
    assert set(tasks["train"].dependent_tasks) == {"validate", "tokenize"}
    assert set(tasks["evaluate"].dependent_tasks) == {"validate", "train", "tokenize"}
    model_input = tasks["evaluate"].inputs.artifacts["model"].task_output_artifact
    assert (model_input.producer_task, model_input.output_artifact_key) == ("train", "model")
    # The champion gate reads the evaluate output (its metrics, predictions and the raw test rows).
    assert set(tasks["promote"].dependent_tasks) == {"validate", "evaluate"}
    evaluation = tasks["promote"].inputs.artifacts["evaluation"].task_output_artifact
    assert (evaluation.producer_task, evaluation.output_artifact_key) == ("evaluate", "evaluation")


def test_only_the_data_steps_are_cached(pipeline_spec):
    tasks = {**steps_of(pipeline_spec), **pipeline_spec.pipeline_spec.root.dag.tasks}
    cached = {name for name, task in tasks.items() if task.caching_options.enable_cache}
    assert cached == {"preprocess", "tokenize"}


def test_pipeline_outputs_and_artifact_types(pipeline_spec):
    # KFP takes pipeline outputs only from outside an exit handler: the artifacts are the steps'.
    assert not pipeline_spec.component_spec.outputs
    expected = {
        "preprocess": {"dataset": "system.Dataset@0.0.1"},
        "tokenize": {"dataset": "system.Dataset@0.0.1", "diagnostics": "system.Markdown@0.0.1"},
        "train": {"model": "system.Model@0.0.1", "metrics": "system.Metrics@0.0.1"},
        "evaluate": {
            "metrics": "system.Metrics@0.0.1", "classification": "system.ClassificationMetrics@0.0.1",
            "report": "system.HTML@0.0.1", "evaluation": "system.Artifact@0.0.1",
        },
        "promote": {"summary": "system.Markdown@0.0.1", "promotion": "system.Artifact@0.0.1"},
    }
    for name, artifact_types in expected.items():
        component = components.load_component_from_file(str(REPO / COMPONENTS_DIR / f"{name}.yaml"))
        declared = {key: spec.type for key, spec in (component.component_spec.outputs or {}).items()}
        assert {key: value for key, value in declared.items() if key in artifact_types} == artifact_types, name


def test_steps_start_from_the_kubetune_images_without_installing_anything():
    from kubetune.images import COMPONENT_IMAGE, TRAINER_IMAGE

    documents = list(yaml.safe_load_all((REPO / PIPELINE_FILE).read_text()))
    executors = documents[0]["deploymentSpec"]["executors"]
    images = {name: executor["container"]["image"] for name, executor in executors.items()}
    assert images == {
        "exec-validate": COMPONENT_IMAGE, "exec-preprocess": COMPONENT_IMAGE, "exec-tokenize": COMPONENT_IMAGE,
        "exec-train": COMPONENT_IMAGE, "exec-evaluate": TRAINER_IMAGE, "exec-promote": TRAINER_IMAGE,
        "exec-finalize": COMPONENT_IMAGE,
    }
    for name, executor in executors.items():
        assert "pip install" not in " ".join(executor["container"]["command"]), name
    # The default cluster.evaluate_gpus is 0: no step asks for a GPU, so a CPU-only cluster runs the pipeline.
    assert all("accelerator" not in executor["container"].get("resources", {}) for executor in executors.values())


def test_evaluate_requests_gpus_on_the_gpu_nodes_only_when_configured(tmp_path):
    from kubetune.config import ClusterConfig, Toleration

    cluster = ClusterConfig(evaluate_gpus=1, node_selector={"nvidia.com/gpu.present": "true"},
                            tolerations=[Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")])
    compile_all(tmp_path, cluster)
    spec, platform = yaml.safe_load_all((tmp_path / PIPELINE_FILE).read_text())
    executors = spec["deploymentSpec"]["executors"]
    for name in ("exec-evaluate", "exec-promote"):  # promote scores the champion: forward passes like evaluate's
        accelerator = executors[name]["container"]["resources"]["accelerator"]
        assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("nvidia.com/gpu", "1")
        on_gpus = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"][name]
        assert on_gpus["nodeSelector"] == {"labels": {"nvidia.com/gpu.present": "true"}}
        assert on_gpus["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    others = [name for name, executor in executors.items() if "accelerator" in executor["container"].get("resources", {})]
    assert sorted(others) == ["exec-evaluate", "exec-promote"]


@pytest.mark.parametrize(("file", "executors"), [
    (PIPELINE_FILE, ("exec-validate", "exec-preprocess", "exec-tokenize", "exec-train", "exec-evaluate", "exec-promote",
                     "exec-finalize")),
    (PREDICT_PIPELINE_FILE, ("exec-predict",)),
])
def test_credentials_come_from_secrets_by_name_only(file, executors):
    documents = list(yaml.safe_load_all((REPO / file).read_text()))
    platform = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(platform) == set(executors)
    for name in executors:
        secrets = {entry["secretName"]: entry for entry in platform[name]["secretAsEnv"]}
        storage = secrets["kubetune-s3"]
        assert {item["envVar"] for item in storage["keyToEnv"]} == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_no_secret_value_reaches_the_compiled_pipeline(tmp_path, monkeypatch):
    canary = "canary-5f2d9c1e-not-a-real-secret"
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.setenv(name, canary)
    from kubetune.config import ClusterConfig

    written = compile_all(tmp_path, ClusterConfig(mlflow_secret="mlflow-credentials"))
    for path in written:
        assert canary not in path.read_text(), path.name
    platform = list(yaml.safe_load_all((tmp_path / PIPELINE_FILE).read_text()))[1]
    train = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]["secretAsEnv"]
    assert {entry["secretName"] for entry in train} == {"kubetune-s3", "mlflow-credentials"}
    (mlflow,) = [entry for entry in train if entry["secretName"] == "mlflow-credentials"]
    # A token-only server (MLFLOW_TRACKING_TOKEN) works as well as a user and password.
    assert {item["envVar"] for item in mlflow["keyToEnv"]} == {
        "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"}
    assert mlflow["optional"] is True


# ------------------------------------------------------------------------- the batch-scoring pipeline
@pytest.fixture(scope="module")
def predict_spec():
    return components.load_component_from_file(str(REPO / PREDICT_PIPELINE_FILE))


def test_predict_pipeline_declares_model_data_and_output_parameters(predict_spec):
    inputs = {name: spec.type for name, spec in predict_spec.component_spec.inputs.items()}
    assert inputs == {"model": "String", "data_uri": "String", "output_uri": "String", "config": "String",
                      "overrides": "List"}
    assert all(spec.optional for spec in predict_spec.component_spec.inputs.values())
    assert predict_spec.pipeline_spec.pipeline_info.name == "kubetune-predict"


def test_predict_pipeline_is_one_uncached_step_whose_artifacts_are_the_pipelines_outputs(predict_spec):
    tasks = predict_spec.pipeline_spec.root.dag.tasks
    assert set(tasks) == {"predict"}
    # An alias that moved or new rows under the same URI must be scored again, never served from the cache.
    assert not tasks["predict"].caching_options.enable_cache
    assert {name: p.component_input_parameter for name, p in tasks["predict"].inputs.parameters.items()} == {
        "model": "model", "data_uri": "data_uri", "output_uri": "output_uri", "config": "config",
        "overrides": "overrides"}
    outputs = {name: spec.type for name, spec in predict_spec.component_spec.outputs.items()}
    assert outputs == {"predictions": "system.Dataset@0.0.1", "summary": "system.Markdown@0.0.1"}
    selectors = predict_spec.pipeline_spec.root.dag.outputs.artifacts
    assert {name: (s.artifact_selectors[0].producer_subtask, s.artifact_selectors[0].output_artifact_key)
            for name, s in selectors.items()} == {"predictions": ("predict", "predictions"), "summary": ("predict", "summary")}
    component = components.load_component_from_file(str(REPO / COMPONENTS_DIR / "predict.yaml"))
    declared = {key: spec.type for key, spec in component.component_spec.outputs.items()}
    assert declared == {"predictions": "system.Dataset@0.0.1", "summary": "system.Markdown@0.0.1",
                        "metrics": "system.Metrics@0.0.1"}


def test_predict_runs_on_the_trainer_image_with_the_kfp_run_id_and_installs_nothing():
    from kubetune.images import TRAINER_IMAGE

    spec = next(yaml.safe_load_all((REPO / PREDICT_PIPELINE_FILE).read_text()))
    (executor,) = spec["deploymentSpec"]["executors"].values()
    assert executor["container"]["image"] == TRAINER_IMAGE  # torch
    assert "pip install" not in " ".join(executor["container"]["command"])
    assert "accelerator" not in executor["container"].get("resources", {})
    # `{run_id}` in output_uri becomes the KFP run id: each scheduled run writes its own file.
    run_id = spec["components"]["comp-predict"]["inputDefinitions"]["parameters"]["kfp_run_id"]
    assert run_id["defaultValue"] == "{{$.pipeline_job_uuid}}"


def test_predict_requests_gpus_on_the_gpu_nodes_when_evaluate_does(tmp_path):
    from kubetune.config import ClusterConfig, Toleration

    cluster = ClusterConfig(evaluate_gpus=2, node_selector={"nvidia.com/gpu.present": "true"}, mlflow_secret="mlflow-auth",
                            tolerations=[Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")])
    compile_all(tmp_path, cluster)
    spec, platform = yaml.safe_load_all((tmp_path / PREDICT_PIPELINE_FILE).read_text())
    accelerator = spec["deploymentSpec"]["executors"]["exec-predict"]["container"]["resources"]["accelerator"]
    assert (accelerator["resourceType"], accelerator["resourceCount"]) == ("nvidia.com/gpu", "2")
    predict = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-predict"]
    assert predict["nodeSelector"] == {"labels": {"nvidia.com/gpu.present": "true"}}
    assert predict["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    assert {entry["secretName"] for entry in predict["secretAsEnv"]} == {"kubetune-s3", "mlflow-auth"}
