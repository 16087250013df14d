"""The PyTorchJob and the TrainJob of every shipped config against the official Kubeflow CRDs.

The CRDs are data in ../shared/kubeflow-crds (Training Operator release-1.9, Trainer v2.3.0; see its
README), read from there and never copied here. Each job is validated with jsonschema against its
CRD's openAPIV3Schema made strict: an unknown field is rejected wherever the schema does not preserve
unknown fields (the API server would prune it silently, and the job would run without it). The CEL
rules (`x-kubernetes-validations`) and list-map keys that apply to a created TrainJob are checked by
hand, as only an API server evaluates them. The names the TrainJob patches (runtime, replicated jobs,
container) must exist in the runtimes Trainer ships.
"""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from kubetune.cluster import job as jobs
from kubetune.cluster import trainjob
from kubetune.config import load_config
from tests.cluster.test_job import REPO, SHIPPED_CONFIGS, request_for

CRDS = REPO.parent / "shared" / "kubeflow-crds"
PYTORCHJOB_CRD = CRDS / "training-operator-v1.9" / "kubeflow.org_pytorchjobs.yaml"
TRAINJOB_CRD = CRDS / "trainer-v2.3.0" / "trainer.kubeflow.org_trainjobs.yaml"
RUNTIME_CRD = CRDS / "trainer-v2.3.0" / "trainer.kubeflow.org_clustertrainingruntimes.yaml"
RUNTIMES_DIR = CRDS / "trainer-v2.3.0" / "runtimes"

pytestmark = pytest.mark.skipif(
    not TRAINJOB_CRD.is_file() or not PYTORCHJOB_CRD.is_file(),
    reason=f"the official Kubeflow CRDs are not at {CRDS} (../shared/kubeflow-crds beside the repository)",
)
RUNTIMES = ("torch-distributed", "deepspeed-distributed")
CONFIGS = [pytest.param(path, id=str(path.relative_to(REPO))) for path in SHIPPED_CONFIGS]


def strict(schema: dict) -> dict:
    """The schema with unknown fields rejected where Kubernetes would prune them, and int-or-string typed."""
    schema = copy.deepcopy(schema)

    def walk(node: dict) -> None:
        if node.get("x-kubernetes-int-or-string"):
            node.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
        if "properties" in node and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for child in (node.get("properties") or {}).values():
            walk(child)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key])

    walk(schema)
    return schema


@functools.cache
def crd(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@functools.cache
def validator(path: Path) -> jsonschema.Validator:
    (version,) = [v for v in crd(path)["spec"]["versions"] if v.get("storage")]
    schema = strict(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def errors(path: Path, obj: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(path).iter_errors(obj)]


def api_version(path: Path) -> str:
    spec = crd(path)["spec"]
    (version,) = [v["name"] for v in spec["versions"] if v.get("storage")]
    return f"{spec['group']}/{version}"


@functools.cache
def shipped_runtime(name: str) -> dict:
    for path in RUNTIMES_DIR.glob("*.yaml"):
        runtime = yaml.safe_load(path.read_text())
        if runtime["metadata"]["name"] == name:
            return runtime
    raise AssertionError(f"no runtime {name} in {RUNTIMES_DIR}")


# ------------------------------------------------------------------------------------ the schemas
@pytest.mark.parametrize("path", CONFIGS)
def test_pytorchjob_matches_its_crd(path):
    job = jobs.serialize(jobs.build_pytorchjob(request_for(load_config(path), mlflow_run_id="m-1")))
    assert job["apiVersion"] == api_version(PYTORCHJOB_CRD)
    assert errors(PYTORCHJOB_CRD, job) == []


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("path", CONFIGS)
def test_trainjob_matches_its_crd(path, runtime):
    config = load_config(path, [f"cluster.runtime={runtime}"])
    job = trainjob.serialize(trainjob.build_trainjob(request_for(config, mlflow_run_id="m-1")))
    assert job["apiVersion"] == api_version(TRAINJOB_CRD)
    assert errors(TRAINJOB_CRD, job) == []


def test_the_check_rejects_unknown_and_mistyped_fields():
    """The strict schemas are not vacuous: a misspelled field, one from another Trainer release, a wrong type."""
    job = trainjob.serialize(trainjob.build_trainjob(request_for(load_config(REPO / "configs/bert-base-lora.yaml"))))
    bad = copy.deepcopy(job)
    bad["spec"]["trainer"]["numProcsPerNode"] = 1  # misspelled
    bad["spec"]["podTemplateOverrides"] = []  # Trainer v2.1's field, gone in v2.3.0
    bad["spec"]["trainer"]["numNodes"] = "2"
    found = errors(TRAINJOB_CRD, bad)
    assert any("numProcsPerNode" in e for e in found)
    assert any("podTemplateOverrides" in e for e in found)
    assert any(e.startswith("spec/trainer/numNodes") for e in found)
    pytorch = jobs.serialize(jobs.build_pytorchjob(request_for(load_config(REPO / "configs/bert-base-lora.yaml"))))
    pytorch["spec"]["runPolicy"]["backoffLimitt"] = 3
    assert any("backoffLimitt" in e for e in errors(PYTORCHJOB_CRD, pytorch))


# ----------------------------------------------------------------------- CEL rules, checked by hand
def cel_rules(node: object, path: str = "") -> list[tuple[str, str]]:
    found = []
    if isinstance(node, dict):
        found += [(path, rule["rule"]) for rule in node.get("x-kubernetes-validations") or []]
        for key, child in node.items():
            found += cel_rules(child, f"{path}.{key}")
    elif isinstance(node, list):
        for child in node:
            found += cel_rules(child, path)
    return found


def test_the_cel_rules_checked_here_are_the_crds():
    """The rules below restate these; if the CRD changes, this says which to look at again."""
    rules = {rule for _, rule in cel_rules(crd(TRAINJOB_CRD))}
    assert "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')" in rules
    assert "size(self.metadata.name) <= 63" in rules
    assert "self in ['trainer.kubeflow.org/trainjob-controller', 'kueue.x-k8s.io/multikueue']" in rules
    # Every other rule either guards an update (`self == oldSelf`), a field kubetune leaves unset
    # (initializer storageUri), or the status that the controller writes.
    others = {rule for path, rule in cel_rules(crd(TRAINJOB_CRD))} - {
        "self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')", "size(self.metadata.name) <= 63",
        "self in ['trainer.kubeflow.org/trainjob-controller', 'kueue.x-k8s.io/multikueue']",
        "self == oldSelf", "self == '' || self.matches('^[A-Za-z][A-Za-z0-9+.-]*://.+$')", "has(self.lastUpdatedTime)",
    }
    assert others == set(), others


@pytest.mark.parametrize("run_id", ["5d0c1f9e-7b1a-4c57-9a3e-2f6f3b8a9c01", "Run_2024/05/01 12:00", "x" * 200, "--", "a"])
def test_trainjob_name_rules(run_id):
    job = trainjob.serialize(trainjob.build_trainjob(request_for(load_config(REPO / "configs/bert-base-lora.yaml"), run_id=run_id)))
    name = job["metadata"]["name"]
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63
    # JobSet names the pods <trainjob>-<replicated job>-<job index>-<pod index>: a DNS label too.
    assert len(f"{name}-launcher-0-0") <= 63
    assert job["spec"].get("managedBy") in (None, "trainer.kubeflow.org/trainjob-controller", "kueue.x-k8s.io/multikueue")
    assert "initializer" not in job["spec"]


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_list_map_keys_are_unique(runtime):
    """`x-kubernetes-list-type: map` lists: the API server refuses two items with the same key."""
    config = load_config(REPO / "configs/qwen2.5-0.5b-lora-zero2.yaml", [f"cluster.runtime={runtime}"])
    job = trainjob.serialize(trainjob.build_trainjob(request_for(config)))
    patches = job["spec"]["runtimePatches"]
    assert len({p["manager"] for p in patches}) == len(patches)
    for patch in patches:
        replicated = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
        assert len({r["name"] for r in replicated}) == len(replicated)
        for item in replicated:
            containers = item["template"]["spec"]["template"]["spec"]["containers"]
            assert len({c["name"] for c in containers}) == len(containers)


# ------------------------------------------------------------------- the runtimes the TrainJob names
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_shipped_runtimes_have_what_the_trainjob_patches(runtime):
    shipped = shipped_runtime(runtime)
    assert errors(RUNTIME_CRD, shipped) == []
    config = load_config(REPO / "configs/qwen2.5-0.5b-lora-zero2.yaml", [f"cluster.runtime={runtime}"])
    job = trainjob.serialize(trainjob.build_trainjob(request_for(config)))
    assert job["spec"]["runtimeRef"]["kind"] == shipped["kind"]
    available = {
        item["name"]: {c["name"] for c in item["template"]["spec"]["template"]["spec"]["containers"]}
        for item in shipped["spec"]["template"]["spec"]["replicatedJobs"]
    }
    (patch,) = job["spec"]["runtimePatches"]
    for item in patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]:
        assert item["name"] in available, f"{runtime} has no replicated job {item['name']}"
        for container in item["template"]["spec"]["template"]["spec"]["containers"]:
            assert container["name"] in available[item["name"]]
    # The runtime's MPI or torch policy is what the trainer's command expects.
    policy = shipped["spec"]["mlPolicy"]
    assert ("mpi" in policy) == (runtime == "deepspeed-distributed") == (job["spec"]["trainer"]["command"][-1] == "kubetune.launchers.mpirun")
    assert ("torch" in policy) == (runtime == "torch-distributed")
    # The lead pod the launcher follows carries the ancestor-step label in this runtime.
    steps = {item["name"] for item in shipped["spec"]["template"]["spec"]["replicatedJobs"]
             if ((item["template"].get("metadata") or {}).get("labels") or {}).get("trainer.kubeflow.org/trainjob-ancestor-step") == "trainer"}
    assert steps == ({"launcher"} if runtime == "deepspeed-distributed" else {"node"})
