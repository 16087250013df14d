"""Kubernetes side of kubetune: the PyTorchJob and TrainJob specs, API access, and the lead pod's log stream.

Everything here builds typed objects (the kubeflow-training SDK's and kubeflow-trainer-api's models,
kubernetes.client's) and lets them serialize themselves; nothing is written as YAML or JSON text by hand.
"""
