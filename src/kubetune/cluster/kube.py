"""Access to the Kubernetes API: the pod's service account on a cluster, else the kubeconfig.

A pipeline step runs in a pod, where the API server and the service-account token are given to it;
anywhere else (a laptop, the tests' loopback server) `$KUBECONFIG` or ~/.kube/config says where the
API server is.
"""

from __future__ import annotations

import os

from kubernetes import client as k8s
from kubernetes import config as k8s_config

from kubetune.errors import KubetuneError, short_reason


def in_cluster() -> bool:
    # The kubelet sets this variable in every container; it is how client-go decides too.
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def configuration() -> k8s.Configuration:
    """A client configuration for this process (a new object: never the library's global default)."""
    configuration = k8s.Configuration()
    try:
        if in_cluster():
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            # Read $KUBECONFIG now: the kubernetes package reads it once, when it is imported.
            k8s_config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration)
    except (k8s_config.ConfigException, OSError) as exc:
        where = "the pod's service account" if in_cluster() else f"the kubeconfig ({os.environ.get('KUBECONFIG', '~/.kube/config')})"
        raise KubetuneError(
            f"cannot reach Kubernetes through {where} ({short_reason(exc)}); set KUBECONFIG to a kubeconfig of the cluster "
            "(cluster.launcher: pytorchjob and trainjob need one)"
        ) from None
    return configuration
