"""`kubetune train`: fine-tune the classifier on the tokenize stage's output. Reads top to bottom:

    train(config, data_uri, output_uri)
      setup              logging per rank, seed, process group, inputs staged, every input checked
      instantiate_model  the base model with one output per label slot
      apply_lora         adapters + a fully trained head (or a full fine-tune)
      build_training_arguments
      prepare_resume     the newest complete checkpoint (downloaded first when OUT is remote)
      open_output        OUT/config.yaml, run.json, the MLflow run: nothing of a finished OUT changes before this
      fit                the Trainer with the checkpoint, speed, memory, SIGTERM and MLflow callbacks;
                         its log history (train loss, each evaluation) kept for model/training_history.json
      evaluate           validation with the final model (the test split is the evaluate stage's alone)
      save               rank 0 after a barrier: OUT/model, metadata, metrics, artifacts, OUT/_COMPLETE
      cleanup            MLflow run closed, scratch removed

With `task: sft` the same steps build a causal LM instead (kubetune.train.causal_lm: its data checks,
AutoModelForCausalLM, CAUSAL_LM adapters, its collator, loss and perplexity); the recipe branches on
`config.task` at those points only.

The same code runs under `python -m kubetune train`, `torchrun --nproc_per_node N` and in every pod
of a PyTorchJob (the Training Operator sets the same RANK / WORLD_SIZE / MASTER_* variables).
OUT's layout is described in kubetune.train.outputs.
"""

from __future__ import annotations

import inspect
import json
import logging
import platform
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune import __version__, storage
from kubetune.config import RunConfig
from kubetune.console import print_table
from kubetune.data.sft import format_columns
from kubetune.distributed import barrier, is_local_main_process, is_main_process, print_main, world_size
from kubetune.errors import EXIT_TERMINATED, ConfigError, DataError
from kubetune.inference import INFERENCE_KEY, inference_metadata
from kubetune.train import causal_lm
from kubetune.train.arguments import (
    Precision,
    build_training_arguments,
    init_distributed,
    resolve_optimizer,
    resolve_precision,
)
from kubetune.train.callbacks import (
    MemoryCallback,
    SigtermCheckpointCallback,
    SpeedCallback,
    trainjob_status_callbacks,
)
from kubetune.train.checkpoints import CheckpointCallback, checkpoint_step, prepare_resume
from kubetune.train.history import (
    HEADERS,
    TRAINING_HISTORY_FILE,
    TrainingHistory,
    evaluation_rows,
    history_from_log,
    more_epochs_hint,
    table_rows,
)
from kubetune.train.loss import ClassificationLoss, class_weights_for
from kubetune.train.metrics import build_compute_metrics
from kubetune.train.model import (
    apply_lora,
    base_of,
    head_module_names,
    instantiate_model,
    load_tokenizer,
    lora_description,
    parameter_counts,
    save_trained_model,
)
from kubetune.train.outputs import (
    CONFIG_FILE,
    MODEL_DIR,
    RUN_STATE_FILE,
    OutputPaths,
    clear_scratch,
    stage_remote_dir,
)
from kubetune.train.pooling import pooling_of
from kubetune.train.preflight import (
    METADATA_FILE,
    TRAIN,
    VALIDATION,
    TrainingData,
    check_metric_available,
    check_model,
    check_model_build,
    check_tokenizer,
    check_training_keys,
    check_vocabulary,
    load_training_data,
    resolve_model_name,
    stage_tokenizer,
    zero_stage,
)
from kubetune.train.tracking import Tracker, TrackingCallback
from kubetune.train.trainer import BatchCollator, KubetuneTrainer, LearningRates

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase, Trainer

logger = logging.getLogger(__name__)



class TrainingInterrupted(Exception):
    """SIGTERM stopped training after a checkpoint was saved; the same command resumes from it."""

    exit_code = EXIT_TERMINATED


@dataclass
class TrainingRun:
    """What setup found out, and the parts later steps share."""

    config: RunConfig
    data_uri: str
    paths: OutputPaths
    data: TrainingData
    model_path: str
    tokenizer: PreTrainedTokenizerBase
    precision: Precision
    optimizer: str
    configured_state: bool
    tracker: Tracker = field(default_factory=Tracker.disabled)  # opened with OUT, once the model is built
    speed: SpeedCallback = field(default_factory=SpeedCallback)
    sigterm: SigtermCheckpointCallback = field(default_factory=SigtermCheckpointCallback)
    input_columns: list[str] = field(default_factory=list)
    resumed_from: Path | None = None
    history: dict[str, Any] = field(default_factory=dict)  # training_history.json (kubetune.train.history)


def train(config: RunConfig, data_uri: str, output_uri: str) -> dict[str, float]:
    """Fine-tune on TOKENIZED `data_uri`, write OUT `output_uri`; return the final metrics (all ranks)."""
    run = setup(config, data_uri, output_uri)
    status = "FAILED"
    try:
        if config.task == "sft":
            model = causal_lm.apply_lora(config, causal_lm.instantiate_model(config, run.model_path, run.tokenizer))
        else:
            model = instantiate_model(config, run.data.label_map, run.model_path, run.tokenizer)
            model = apply_lora(config, model)
        args = build_training_arguments(config, run.paths.checkpoints, run.precision, run.optimizer, run.configured_state)
        run.resumed_from = prepare_resume(run.paths, world_size(), config.deepspeed.enable)
        # OUT is opened only now: whatever the model build or the checkpoint check rejects leaves a finished
        # output as it was (prepare_resume only removes checkpoints that were never completed).
        run.tracker = open_output(config, run.paths)
        trainer = causal_lm.build_trainer(run, model, args) if config.task == "sft" else build_trainer(run, model, args)
        train_metrics = fit(trainer, run)
        metrics = evaluate(trainer, run, train_metrics)
        save(trainer, run, metrics)
        status = "FINISHED"
        return metrics
    except TrainingInterrupted:
        status = "KILLED"
        raise
    finally:
        cleanup(run, status)


# --------------------------------------------------------------------------------------------- setup
def configure_logging() -> None:
    """Libraries warn on the main process only; the other ranks report errors alone (the rest repeats rank 0)."""
    import datasets
    import transformers

    if is_main_process():
        transformers.logging.set_verbosity_warning()
        return
    logging.getLogger().setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    warnings.simplefilter("ignore")  # library warnings are the same on every rank


def setup(config: RunConfig, data_uri: str, output_uri: str) -> TrainingRun:
    """Everything before the model is loaded: each bad input stops here with a one-line error."""
    from transformers import set_seed

    configure_logging()
    set_seed(config.training.seed)
    paths = OutputPaths.for_output(output_uri, config.storage)
    sft = config.task == "sft"
    causal_lm.check_training_keys(config) if sft else check_training_keys(config)
    precision = resolve_precision(config)
    optimizer = resolve_optimizer(config)
    causal_lm.check_optimizer_package(optimizer)
    paths.check_is_ours()
    configured_state = init_distributed(config)  # from here on, barriers reach every rank
    data_dir, model_copy = stage_inputs(config, data_uri, paths)
    if sft:
        data = causal_lm.load_training_data(data_dir, data_uri, config)
    else:
        data = load_training_data(data_dir, data_uri, config)
        check_metric_available(config, data.label_map)
    model_path = resolve_model_name(config, model_copy)
    model_config = check_model(config, model_path)
    causal_lm.check_model_build(config, model_config) if sft else check_model_build(config, model_config)
    check_vocabulary(data.splits, getattr(model_config, "vocab_size", None), config)
    tokenizer_path = stage_tokenizer(config, model_path, paths.scratch)  # the data's tokenizer, or an error
    (causal_lm.check_tokenizer if sft else check_tokenizer)(config, data, data_uri, tokenizer_path)
    tokenizer = load_tokenizer(str(tokenizer_path), config.model.trust_remote_code)
    if sft and config.sft.chat_template:
        tokenizer.chat_template = config.sft.chat_template  # as the data was tokenized; saved with the model

    label_map = data.label_map
    what = (f"{config.sft.format} examples" if sft else
            f"rows ({label_map.num_real_labels} classes in {label_map.max_classes} slots)")
    print_main(
        f"training {config.model.name} on {len(data.splits[TRAIN]):,} {what}, {world_size()} rank(s), precision {precision}, "
        f"{f'DeepSpeed ZeRO-{zero_stage(config)}' if config.deepspeed.enable else 'no DeepSpeed'}, output {paths.uri}"
    )
    return TrainingRun(config=config, data_uri=data_uri, paths=paths, data=data, model_path=model_path,
                       tokenizer=tokenizer, precision=precision, optimizer=optimizer,
                       configured_state=configured_state)


def stage_inputs(config: RunConfig, data_uri: str, paths: OutputPaths) -> tuple[Path, Path | None]:
    """Local folders of the data and (when it lives on object storage) the base model; one download per node."""
    uri = storage.normalize_uri(data_uri)
    remote_data, remote_model = storage.is_remote(uri), storage.is_remote(config.model.name)
    if not storage.exists(uri, config.storage):
        raise DataError(f"--data {data_uri} does not exist; pass the output folder of `kubetune tokenize`")
    if remote_model and not storage.exists(config.model.name, config.storage):
        raise ConfigError([f"model.name: {config.model.name} does not exist; give a model folder, a packaged model or a hub id"])
    data_dir = paths.scratch / "data" if remote_data else Path(uri).expanduser().resolve()
    model_dir = paths.scratch / "base-model" if remote_model else None
    if is_local_main_process():
        if remote_data:
            stage_remote_dir(uri, data_dir, config.storage)
        if model_dir is not None:
            stage_remote_dir(config.model.name, model_dir, config.storage)
    barrier()
    return data_dir, model_dir


def open_output(config: RunConfig, paths: OutputPaths) -> Tracker:
    """On rank 0: the MLflow run (continued after a restart), OUT/config.yaml and OUT/run.json."""
    tracker = Tracker.disabled()
    if is_main_process():
        tracker = Tracker.for_training(config, paths, paths.read_json(RUN_STATE_FILE))
        tracker.start(config)
        paths.write_text(CONFIG_FILE, config.to_yaml())
        paths.write_json(RUN_STATE_FILE, run_state(tracker))
        paths.remove(storage.COMPLETE_MARKER)  # OUT is complete again only when this run has finished
    barrier()
    return tracker


def run_state(tracker: Tracker) -> dict[str, Any]:
    return {"mlflow_run_id": tracker.run_id, "tracking_uri": tracker.uri, "updated_at": _now()}


# ------------------------------------------------------------------------------------------- trainer
def model_input_columns(model: nn.Module, dataset_columns: list[str]) -> list[str]:
    """The tokenized columns this model's forward takes (BERT takes token_type_ids, Qwen2 doesn't)."""
    base = base_of(model)
    accepted = inspect.signature(base.forward).parameters
    optional = [c for c in ("token_type_ids",) if c in dataset_columns and c in accepted]
    return ["input_ids", "attention_mask", *optional, "labels"]


def build_trainer(run: TrainingRun, model: nn.Module, args: Any) -> Trainer:
    import torch
    from transformers import EarlyStoppingCallback

    config, data = run.config, run.data
    label_map = data.label_map
    run.input_columns = model_input_columns(model, data.splits[TRAIN].column_names)
    train_split = data.splits[TRAIN].select_columns([*run.input_columns, "length"])
    eval_split = data.splits[VALIDATION].select_columns(run.input_columns)
    weights = None
    if config.loss.class_weights.enable:
        weights = class_weights_for(data.splits[TRAIN].data.column("labels").to_numpy(), label_map.max_classes,
                                    label_map.num_real_labels, config.loss.class_weights)
    callbacks = [
        run.speed, MemoryCallback(), run.sigterm,
        # after the SIGTERM callback: it sees every save request of the step
        CheckpointCallback(run.paths, config.training.save_total_limit, world_size()),
        TrackingCallback(run.tracker),
        *trainjob_status_callbacks(),
    ]
    if config.training.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.training.early_stopping_patience))
    # Rounding batch lengths up pays off on GPU tensor cores only; on a CPU it is padding computed for nothing.
    pad_multiple = config.training.pad_to_multiple_of if torch.cuda.is_available() else None
    trainer = KubetuneTrainer(
        model=model,
        args=args,
        data_collator=BatchCollator(run.tokenizer, run.input_columns, pad_multiple),
        train_dataset=train_split,
        eval_dataset=eval_split,
        processing_class=run.tokenizer,
        compute_loss_func=ClassificationLoss(label_map.num_real_labels, weights, config.loss.label_smoothing),
        compute_metrics=build_compute_metrics(label_map.num_real_labels),
        callbacks=callbacks,
        speed=run.speed,
        learning_rates=LearningRates(config.training.learning_rate, config.training.head_learning_rate,
                                     config.lora.loraplus_lr_ratio if config.lora.enable else None,
                                     tuple(head_module_names(base_of(model), config.lora))),
    )
    # Speed and memory figures go into the logs before the printer and MLflow callbacks read them.
    handler = trainer.callback_handler
    handler.callbacks.sort(key=lambda callback: not isinstance(callback, (SpeedCallback, MemoryCallback)))
    run.tracker.log_metrics(dict(zip(("model/trainable_parameters", "model/total_parameters"),
                                     map(float, parameter_counts(model)), strict=True)), step=0)
    return trainer


def fit(trainer: Trainer, run: TrainingRun) -> dict[str, float]:
    """Train to the end (from the newest complete checkpoint, if any); SIGTERM ends it with a checkpoint."""
    resume = run.resumed_from
    if resume is not None:
        print_main(f"resuming from {resume.name} (step {checkpoint_step(resume)})")
    result = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    # Now, before the final evaluation adds a point of the saved model; a resumed state holds the earlier part.
    run.history = history_from_log(trainer.state.log_history, trainer.args.metric_for_best_model,
                                   trainer.args.greater_is_better)
    if run.sigterm.stopped_at is not None:
        raise TrainingInterrupted(
            f"stopped by SIGTERM at step {run.sigterm.stopped_at} after saving checkpoint-{run.sigterm.stopped_at} "
            f"to {run.paths.uri}/checkpoints; run the same command to resume"
        )
    return {name: float(value) for name, value in result.metrics.items() if isinstance(value, (int, float))}


def evaluate(trainer: Trainer, run: TrainingRun, train_metrics: dict[str, float]) -> dict[str, float]:
    """Final metrics of the model as saved, on the validation split.

    The test split is scored once, by the evaluate stage (`kubetune evaluate`, the pipeline's evaluate
    step), which owns the test/* metrics: scoring it here too cost a second pass and logged them twice.
    """
    metrics = dict(train_metrics)
    metrics.update(trainer.evaluate())
    metrics.update(run.speed.summary)
    trainable, total = parameter_counts(trainer.model)
    metrics.update({"global_step": float(trainer.state.global_step), "trainable_parameters": float(trainable),
                    "total_parameters": float(total)})
    return metrics


# ---------------------------------------------------------------------------------------------- save
def save(trainer: Trainer, run: TrainingRun, metrics: dict[str, float]) -> None:
    """OUT/model (published whole), MLflow artifacts, then OUT/_COMPLETE — on rank 0, after every rank is done."""
    config, paths, label_map = run.config, run.paths, run.data.label_map
    state_dict = _gathered_state_dict(trainer)  # a collective under ZeRO-3: every rank takes part
    barrier()
    if is_main_process():
        model = trainer.model
        metadata = model_metadata(run, model, metrics)
        merge = config.lora.merge_on_save and config.lora.enable
        with storage.atomic_output_dir(paths.child(MODEL_DIR), "model", config.storage) as staging:
            save_trained_model(model, run.tokenizer, label_map, staging, metadata, metrics, merge=merge,  # sft: no label map
                               state_dict=state_dict)
            (staging / TRAINING_HISTORY_FILE).write_text(json.dumps(run.history, indent=2) + "\n")
            files = sorted(p for p in staging.iterdir() if p.is_file())
            # In a pipeline the evaluate step logs the model, as the run's MLflow model: one copy, one owner.
            logged = files if config.tracking.log_model and not run.tracker.in_pipeline_run else [
                p for p in files if p.name in ("label_map.json", "model_metadata.json", "training_metrics.json",
                                            TRAINING_HISTORY_FILE)
            ]
            run.tracker.log_artifacts(logged, "model")
        run.tracker.log_artifacts([run.data.directory / METADATA_FILE])
        paths.write_json(RUN_STATE_FILE, run_state(run.tracker))
        paths.write_text(storage.COMPLETE_MARKER, "train\n")
        shown = [(name, value) for name, value in sorted(metrics.items())
                 if name.startswith(("eval_", "speed/train_")) or name in ("train_loss", "global_step")]
        print_table(["metric", "value"], shown, title=f"training finished: {paths.child(MODEL_DIR)}")
        history = TrainingHistory.from_dict(run.history)
        if history.eval and config.task == "sft":
            print_table(causal_lm.HISTORY_HEADERS, causal_lm.history_table_rows(history), title="validation at each evaluation")
        elif history.eval:
            print_table(HEADERS, table_rows(evaluation_rows(history)), title="validation at each evaluation")
            hint = more_epochs_hint(history)
            if hint:
                print_main(hint)
    barrier()


def _gathered_state_dict(trainer: Trainer) -> dict[str, Any] | None:
    """The full weights when ZeRO-3 shards them across ranks; None when rank 0 already holds them."""
    if not trainer.is_deepspeed_enabled:
        return None
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if not is_deepspeed_zero3_enabled():
        return None
    return trainer.accelerator.get_state_dict(trainer.deepspeed)


def model_metadata(run: TrainingRun, model: nn.Module, metrics: dict[str, float]) -> dict[str, Any]:
    """model_metadata.json: what the model is, what it was trained on, how well it did, with what."""
    import accelerate
    import datasets
    import peft
    import torch
    import transformers

    config, label_map, data_metadata = run.config, run.data.label_map, run.data.metadata
    base = base_of(model)
    versions = {
        "kubetune": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "peft": peft.__version__, "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
    }
    if config.deepspeed.enable:
        import deepspeed

        versions["deepspeed"] = deepspeed.__version__
    trainable, total = parameter_counts(model)
    common = {
        "base_model": config.model.name,
        "base_model_path": run.model_path,
        "architecture": type(base).__name__,
        "model_type": base.config.model_type,
        "attn_implementation": config.model.attn_implementation,
        "dtype": config.model.dtype,
        "trust_remote_code": config.model.trust_remote_code,
        "lora": lora_description(model, config.lora),
        "tokenizer": config.tokenizer_name,
    }
    if config.task == "sft":
        task = {
            "task": "sft",
            "quantization": config.model.quantization,
            "max_length": config.sft.max_seq_length,
            # How `kubetune predict` turns rows into prompts for this model.
            INFERENCE_KEY: {"task": "sft", "format": config.sft.format, "columns": format_columns(config.sft),
                            "chat_template": config.sft.renders_chat, "max_seq_length": config.sft.max_seq_length,
                            "completion_only_loss": config.sft.masks_prompt},
        }
    else:
        task = {
            "pooling": pooling_of(model),
            "label_column": label_map.label_column,
            "label_slots": label_map.max_classes,
            "num_real_labels": label_map.num_real_labels,
            "dummy_slots": "logits masked to the lowest value (kubetune.train.loss.mask_dummy_logits)",
            "max_length": config.tokenize.max_length,
            # How `kubetune predict` and the MLflow model turn raw rows into this model's inputs.
            INFERENCE_KEY: inference_metadata(config, data_metadata),
        }
    return {
        **common,
        **task,
        "data": {
            "uri": run.data_uri,
            "cache_key": data_metadata.get("cache_key"),
            "inputs": data_metadata.get("inputs"),
            "rows": data_metadata.get("rows"),
            "tokenize": data_metadata.get("tokenize"),
        },
        "training": {
            "global_step": int(metrics.get("global_step", 0)),
            "world_size": world_size(),
            "precision": run.precision,
            "deepspeed": config.deepspeed.enable,
            "trainable_parameters": trainable,
            "total_parameters": total,
            "resumed_from": run.resumed_from.name if run.resumed_from is not None else None,
        },
        "metrics": metrics,
        "mlflow_run_id": run.tracker.run_id,
        "mlflow_tracking_uri": run.tracker.uri,
        "versions": versions,
        "created_at": _now(),
    }


# ------------------------------------------------------------------------------------------- cleanup
def cleanup(run: TrainingRun, status: str) -> None:
    run.sigterm.restore()
    run.tracker.finish(status)
    if status == "FINISHED":
        clear_scratch(run.paths)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")

