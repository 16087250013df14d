"""The container images of this release: the one place their names and tag are written."""

from __future__ import annotations

from kubetune import __version__

REGISTRY = "ghcr.io/kubetune"
TAG = __version__

# CUDA, torch, DeepSpeed with its ops prebuilt, kubetune: the training pods and the evaluate step.
TRAINER_IMAGE = f"{REGISTRY}/trainer:{TAG}"
# Python, CPU torch, kubetune: validate, preprocess, tokenize and the train step that submits the PyTorchJob.
COMPONENT_IMAGE = f"{REGISTRY}/components:{TAG}"
