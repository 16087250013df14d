"""k8s/: every kustomization rendered with `kubectl kustomize`, every object validated against the
Kubernetes schemas, the RBAC exactly what the train step uses, and checkov finding nothing unjustified."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from kubetune import images
from kubetune.cluster import job as jobs
from kubetune.config import ClusterConfig, load_config

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
KUBERNETES_VERSION = "1.32.0"
# Every directory that `kubectl apply -k` may be pointed at: the base and each overlay.
KUSTOMIZATIONS = [K8S / "base"] + sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
SECRETS_TEMPLATE = K8S / "secrets" / "secrets.template.yaml"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
SHIPPED_CLUSTER_CONFIGS = [p for p in sorted((REPO / "configs").rglob("*.yaml")) if "launcher: pytorchjob" in p.read_text()]


def render(directory: Path) -> list[dict]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is missing: `make tools` installs it (Debian's kubernetes-client)"
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def by_kind(objects: list[dict], kind: str) -> dict[str, dict]:
    return {obj["metadata"]["name"]: obj for obj in objects if obj["kind"] == kind}


def containers(objects: list[dict]) -> list[tuple[str, dict, dict]]:
    """(owner name, pod spec, container) of every Deployment and Job."""
    found = []
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            pod = obj["spec"]["template"]["spec"]
            found += [(obj["metadata"]["name"], pod, c) for c in pod["containers"] + pod.get("initContainers", [])]
    return found


@pytest.fixture(scope="module")
def dev() -> list[dict]:
    return render(K8S / "overlays" / "dev")


def test_the_dev_overlay_exists():
    assert K8S / "overlays" / "dev" in KUSTOMIZATIONS


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_object_is_valid(directory):
    objects = render(directory)
    kinds = sorted(obj["kind"] for obj in objects)
    assert kinds == sorted([
        "Namespace", "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding",
        "PersistentVolumeClaim", "PersistentVolumeClaim",
        "Deployment", "Deployment", "Service", "Service", "Job",
        "NetworkPolicy", "NetworkPolicy", "NetworkPolicy", "NetworkPolicy",
    ])
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_secrets_template_is_valid_holds_no_value_and_is_never_applied():
    secrets = [doc for doc in yaml.safe_load_all(SECRETS_TEMPLATE.read_text()) if doc]
    for secret in secrets:
        kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)
        assert set(secret["stringData"].values()) == {"REPLACE-ME"}
    for kustomization in K8S.rglob("kustomization.yaml"):
        assert "secrets" not in kustomization.read_text().split("resources:", 1)[-1], kustomization


def test_every_referenced_secret_key_is_in_the_template(dev):
    template = {(s["metadata"]["namespace"], s["metadata"]["name"]): set(s["stringData"])
                for s in yaml.safe_load_all(SECRETS_TEMPLATE.read_text()) if s}
    referenced = set()
    for _owner, _, container in containers(dev):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                referenced.add(("kubetune", ref["name"], ref["key"]))
    # What the pipeline's steps and the PyTorchJob take from cluster.storage_secret.
    default = ClusterConfig()
    referenced |= {(default.namespace, default.storage_secret, key) for key in jobs.STORAGE_SECRET_KEYS}
    assert referenced
    for namespace, name, key in referenced:
        assert key in template.get((namespace, name), set()), f"{namespace}/{name} lacks {key} in the template"


def test_rbac_is_exactly_what_the_pipeline_uses(dev):
    default = ClusterConfig()
    (role,) = by_kind(dev, "Role").values()
    assert role["metadata"]["namespace"] == default.namespace
    rules = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
             for resource in rule["resources"] for verb in rule["verbs"]}
    # Both operator generations: the pytorchjob and the trainjob launchers (one base, see rbac.yaml).
    assert rules == (
        {("kubeflow.org", "pytorchjobs", verb) for verb in ("create", "get", "list", "watch", "delete")}
        | {("trainer.kubeflow.org", "trainjobs", verb) for verb in ("create", "get", "list", "watch", "delete")}
        | {("", resource, verb) for resource in ("pods", "pods/log") for verb in ("get", "list")}
    )
    assert all("resourceNames" not in rule for rule in role["rules"])
    (binding,) = by_kind(dev, "RoleBinding").values()
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    subject = {"kind": "ServiceAccount", "name": default.service_account, "namespace": default.namespace}
    assert binding["subjects"] == [subject]
    assert set(by_kind(dev, "ServiceAccount")) == {default.service_account}
    # The one cluster-wide grant: reading the (cluster-scoped) Trainer runtimes a TrainJob names.
    (cluster_role,) = by_kind(dev, "ClusterRole").values()
    assert [(rule["apiGroups"], rule["resources"], rule["verbs"]) for rule in cluster_role["rules"]] == [
        (["trainer.kubeflow.org"], ["clustertrainingruntimes"], ["get"])]
    (cluster_binding,) = by_kind(dev, "ClusterRoleBinding").values()
    assert cluster_binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                          "name": cluster_role["metadata"]["name"]}
    assert cluster_binding["subjects"] == [subject]


def test_every_pod_runs_unprivileged_with_limits(dev):
    for owner, pod, container in containers(dev):
        assert pod["securityContext"]["runAsNonRoot"] is True, owner
        assert pod["automountServiceAccountToken"] is False, owner
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}, owner
        assert set(container["resources"]["limits"]) == {"cpu", "memory"}, owner
        assert ":" in container["image"] and not container["image"].endswith(":latest"), owner


def test_mlflow_runs_the_component_image_of_this_release(dev):
    (container,) = [c for owner, _, c in containers(dev) if owner == "mlflow"]
    assert container["image"] == images.COMPONENT_IMAGE


@pytest.mark.parametrize("path", SHIPPED_CLUSTER_CONFIGS, ids=lambda p: p.name)
def test_shipped_cluster_configs_use_these_services(path, dev):
    """The shipped cluster configs' endpoint and buckets are the MinIO Service and the buckets the Job creates."""
    config = load_config(path)
    endpoint = urlsplit(config.storage.endpoint_url)
    service = by_kind(dev, "Service")[endpoint.hostname.split(".")[0]]
    assert endpoint.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}"
    assert endpoint.port in [p["port"] for p in service["spec"]["ports"]]
    script = by_kind(dev, "Job")["minio-buckets"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    created = re.search(r"for bucket in ([^;]+);", script).group(1).split()
    assert created == ["kubetune-data", "kubetune-runs", "mlflow"]
    data = config.data.sources or [config.data.uri]  # task: sft configs may name several sources
    for uri in (config.storage.runs_uri, *data):
        assert urlsplit(uri).netloc in created, uri


def test_checkov_finds_nothing_unjustified(tmp_path):
    assert CHECKOV.exists(), "checkov is missing: `make checkov` installs it into .venv-checkov"
    scanned = tmp_path / "scanned"
    scanned.mkdir()
    for directory in KUSTOMIZATIONS:
        objects = render(directory)
        (scanned / f"{directory.relative_to(K8S).as_posix().replace('/', '-')}.yaml").write_text(yaml.safe_dump_all(objects))
    shutil.copy(SECRETS_TEMPLATE, scanned / SECRETS_TEMPLATE.name)
    for dockerfile in (REPO / "docker").glob("*.Dockerfile"):
        shutil.copy(dockerfile, scanned / dockerfile.name)
    result = subprocess.run(
        [str(CHECKOV), "--config-file", str(REPO / ".checkov.yaml"), "-d", str(scanned),
         "--framework", "kubernetes", "dockerfile", "-o", "json"],
        capture_output=True, text=True, timeout=600,
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert sorted(r["check_type"] for r in reports) == ["dockerfile", "kubernetes"]
    failed = [(f["check_id"], f["resource"], f["file_path"]) for r in reports for f in r["results"]["failed_checks"]]
    assert failed == []
    assert all(r["summary"]["parsing_errors"] == 0 and r["summary"]["passed"] > 0 for r in reports)
    assert result.returncode == 0, result.stderr[-2000:]
