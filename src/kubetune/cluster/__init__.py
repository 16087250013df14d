"""Kubernetes side of kubetune: the PyTorchJob spec, API access, and the master's log stream.

Everything here builds typed objects (the kubeflow-training SDK's models and kubernetes.client's)
and lets the SDK serialize them; nothing is written as YAML or JSON text by hand.
"""
