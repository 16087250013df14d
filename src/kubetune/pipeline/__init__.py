"""The Kubeflow pipeline: its components, compilation, local execution (`kubetune run`) and the KFP client side."""
