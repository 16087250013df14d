"""The trainer (`kubetune train`): LoRA + DeepSpeed ZeRO fine-tuning of a sequence classifier.

recipe.py is the entry and reads top to bottom (`train(config, data_uri, output_uri)`); each step
lives in its own module: preflight (bad inputs), model (model, LoRA, saving and loading back),
arguments (TrainingArguments and the process group), loss, metrics, callbacks, checkpoints,
tracking (MLflow) and outputs (OUT's layout). Importing this package loads neither torch nor
transformers.
"""
