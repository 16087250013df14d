"""kubetune: fine-tune transformer classifiers with LoRA and DeepSpeed ZeRO-2 as a Kubeflow pipeline."""

__version__ = "0.1.0"
