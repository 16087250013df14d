"""The run config: every shipped config validates, and each validation rule has its own test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubetune.config import RunConfig, load_config, parse_overrides, validate_config
from kubetune.deepspeed_config import build_deepspeed_config
from kubetune.errors import ConfigError

from .conftest import REPO_ROOT

SHIPPED_CONFIGS = sorted((REPO_ROOT / "configs").rglob("*.yaml"))


def problems_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_config(data)
    return info.value.problems


def write(tmp_path: Path, data: dict | str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


# ------------------------------------------------------------------------------ shipped configs
def test_configs_are_found_recursively():
    names = {p.relative_to(REPO_ROOT / "configs").as_posix() for p in SHIPPED_CONFIGS}
    assert {"demo.yaml", "qwen2.5-0.5b-lora-zero2.yaml", "bert-base-lora.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_shipped_config_validates(path: Path):
    config = load_config(path)
    assert isinstance(config, RunConfig)
    # A resolved config round-trips: what we write next to the outputs validates back to the same thing.
    assert validate_config(yaml.safe_load(config.to_yaml())) == config


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_shipped_config_starts_with_the_command_that_runs_it(path: Path):
    first_lines = path.read_text().splitlines()[:6]
    assert first_lines[0].startswith("#")
    assert any("kubetune " in line and line.lstrip().startswith("#") for line in first_lines)


def test_defaults_validate():
    assert RunConfig() == validate_config({})


# ------------------------------------------------------------------------------ unknown keys and types
def test_unknown_key_names_the_closest_valid_key():
    [problem] = problems_of({"training": {"learnign_rate": 1e-4}})
    assert problem == "training.learnign_rate: unknown key; did you mean 'training.learning_rate'?"


def test_unknown_section_names_the_closest_section():
    [problem] = problems_of({"traning": {}})
    assert problem == "traning: unknown key; did you mean 'training'?"


def test_unknown_key_without_close_match_lists_valid_keys():
    [problem] = problems_of({"lora": {"zzz": 1}})
    assert problem.startswith("lora.zzz: unknown key; valid keys of lora: enable, r, lora_alpha")


def test_unknown_nested_key():
    [problem] = problems_of({"loss": {"class_weights": {"alhpa": 0.3}}})
    assert problem == "loss.class_weights.alhpa: unknown key; did you mean 'loss.class_weights.alpha'?"


def test_wrong_type_names_key_and_value():
    [problem] = problems_of({"training": {"batch_size": "large"}})
    assert problem.startswith("training.batch_size:") and "'large'" in problem


def test_all_problems_reported_at_once():
    problems = problems_of({"lora": {"r": 0}, "training": {"epochs": -1}, "split": {"max_classes": 1}, "bogus": 1})
    keys = {p.split(":")[0] for p in problems}
    assert keys == {"lora.r", "training.epochs", "split.max_classes", "bogus"}


# ------------------------------------------------------------------------------ ranges and conflicts
def test_lora_rank_must_be_positive():
    assert any(p.startswith("lora.r:") for p in problems_of({"lora": {"r": 0}}))


def test_max_classes_at_least_two():
    assert any(p.startswith("split.max_classes:") for p in problems_of({"split": {"max_classes": 1}}))


def test_test_and_val_size_leave_rows_for_training():
    [problem] = problems_of({"split": {"test_size": 0.5, "val_size": 0.5}})
    assert "split.test_size + split.val_size must be below 1" in problem


def test_test_size_range():
    assert any(p.startswith("split.test_size:") for p in problems_of({"split": {"test_size": 1.5}}))


def test_group_and_time_split_conflict():
    [problem] = problems_of({"split": {"group_column": "supplier", "time_column": "date"}})
    assert "split.group_column and split.time_column" in problem


def test_group_column_cannot_be_the_label():
    [problem] = problems_of({"split": {"label_column": "code", "group_column": "code"}})
    assert problem.startswith("split.group_column is the label column")


def test_label_column_not_in_text_columns():
    [problem] = problems_of({"split": {"label_column": "code"}, "serialize": {"text_columns": ["supplier", "code"]}})
    assert "serialize.text_columns contains the label column 'code'" in problem


def test_warmup_ratio_and_steps_conflict():
    [problem] = problems_of({"training": {"warmup_ratio": 0.1, "warmup_steps": 100}})
    assert problem.startswith("training.warmup_ratio and training.warmup_steps are both set")


def test_load_best_model_needs_matching_schedules():
    [problem] = problems_of({"training": {"eval_steps": 100, "save_steps": 300}})
    assert "training.load_best_model_at_end needs evaluation and checkpoints on the same schedule" in problem


def test_early_stopping_needs_load_best():
    [problem] = problems_of({"training": {"early_stopping_patience": 2, "load_best_model_at_end": False}})
    assert "training.early_stopping_patience needs training.load_best_model_at_end" in problem


def test_class_weight_bounds_ordered():
    [problem] = problems_of({"loss": {"class_weights": {"min": 5, "max": 1}}})
    assert "loss.class_weights.min (5.0) is above loss.class_weights.max (1.0)" in problem


def test_label_smoothing_must_leave_the_label_some_of_the_target():
    [problem] = problems_of({"loss": {"label_smoothing": 1.0}})
    assert problem.startswith("loss.label_smoothing: ") and "less than 1" in problem


@pytest.mark.parametrize(("value", "words"), [(1.0, "less than 1"), (-0.1, "greater than or equal to 0")])
def test_column_dropout_is_a_probability_below_one(value: float, words: str):
    [problem] = problems_of({"serialize": {"column_dropout": value}})
    assert problem.startswith("serialize.column_dropout: ") and words in problem


@pytest.mark.parametrize("key", ["num_labels", "id2label", "label2id"])
def test_label_fields_are_filled_from_data(key: str):
    [problem] = problems_of({"model": {key: 3 if key == "num_labels" else {"0": "a"}}})
    assert problem.startswith(f"model.{key} is filled from the data")


def test_padding_max_length_needs_truncation():
    [problem] = problems_of({"tokenize": {"padding": "max_length", "truncation": False}})
    assert "tokenize.padding: max_length needs tokenize.truncation: true" in problem


def test_padding_true_is_rejected():
    assert any(p.startswith("tokenize.padding:") for p in problems_of({"tokenize": {"padding": True}}))


def test_registered_model_name_defaults_to_the_experiment_made_valid():
    assert validate_config({"tracking": {"experiment_name": "team/ledger:v2"}}).registered_model_name == "team-ledger-v2"
    assert validate_config({"registry": {"model_name": "ledger-codes"}}).registered_model_name == "ledger-codes"


@pytest.mark.parametrize("name", ["team/ledger", "a:b", "  "])
def test_registry_model_name_must_be_one_mlflow_takes(name: str):
    [problem] = problems_of({"registry": {"model_name": name}})
    assert problem.startswith("registry.model_name: ") and "no / or :" in problem


def test_promote_metric_is_one_evaluate_produces_and_the_gate_can_compare():
    from kubetune.config import PROMOTE_METRICS
    from kubetune.train.metrics import LABEL_METRIC_NAMES

    assert PROMOTE_METRICS == LABEL_METRIC_NAMES
    [problem] = problems_of({"promote": {"metric": "macro_f"}})
    assert problem.startswith("promote.metric: unknown metric 'macro_f'; did you mean 'macro_f1'?")
    [problem] = problems_of({"promote": {"metric": "top5_accuracy"}})
    assert problem.startswith("promote.metric: ") and "needs every label's score" in problem


def test_promote_policy_margin_and_alias():
    assert any(p.startswith("promote.policy:") for p in problems_of({"promote": {"policy": "sometimes"}}))
    assert any(p.startswith("promote.margin:") for p in problems_of({"promote": {"margin": -0.1}}))
    [problem] = problems_of({"promote": {"alias": "v3"}})
    assert problem == "promote.alias: 'v3' is reserved by MLflow (latest, v<number>); choose another alias"
    [problem] = problems_of({"promote": {"alias": "the champion"}})
    assert problem.startswith("promote.alias: 'the champion' is not an alias MLflow takes")


def test_percentiles_in_range():
    assert any(p.startswith("tokenize.diagnostics.percentiles:") for p in problems_of({"tokenize": {"diagnostics": {"percentiles": [50, 120]}}}))


def test_deepspeed_path_and_inline_conflict():
    [problem] = problems_of({"deepspeed": {"config_path": "ds.json", "config": {"zero_optimization": {"stage": 2}}}})
    assert "deepspeed.config_path and deepspeed.config are both set" in problem


def test_deepspeed_config_path_missing(tmp_path: Path):
    path = write(tmp_path, {"deepspeed": {"enable": True, "config_path": "missing.json"}})
    with pytest.raises(ConfigError, match=r"deepspeed\.config_path: file not found: missing.json"):
        load_config(path)


def test_mixed_precision_choices():
    assert any(p.startswith("training.mixed_precision:") for p in problems_of({"training": {"mixed_precision": "fp8"}}))


def test_non_mapping_config(tmp_path: Path):
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_invalid_yaml_reports_line(tmp_path: Path):
    with pytest.raises(ConfigError, match="not valid YAML at line 2"):
        load_config(write(tmp_path, "training:\n  epochs: 1: 2\n"))


def test_missing_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


# ------------------------------------------------------------------------------ overrides
def test_overrides_are_parsed_as_yaml():
    assert parse_overrides(["training.epochs=1", "lora.target_modules=[q_proj, v_proj]", "tracking.run_name=x"]) == {
        "training": {"epochs": 1},
        "lora": {"target_modules": ["q_proj", "v_proj"]},
        "tracking": {"run_name": "x"},
    }


def test_override_applies_over_file(tmp_path: Path):
    path = write(tmp_path, {"training": {"epochs": 5, "batch_size": 4}})
    config = load_config(path, ["training.epochs=1"])
    assert (config.training.epochs, config.training.batch_size) == (1, 4)


def test_override_is_validated_like_the_file():
    with pytest.raises(ConfigError, match=r"lora\.r: Input should be greater than 0"):
        load_config(None, ["lora.r=-1"])


def test_misspelled_override_key():
    with pytest.raises(ConfigError, match=r"training\.epoch: unknown key; did you mean 'training\.epochs'"):
        load_config(None, ["training.epoch=2"])


def test_malformed_override():
    with pytest.raises(ConfigError, match="not of the form key.sub=value"):
        load_config(None, ["training.epochs"])


# ------------------------------------------------------------------------------ DeepSpeed JSON wins
def test_deepspeed_json_wins_with_a_warning(tmp_path: Path):
    (tmp_path / "ds.json").write_text(json.dumps({
        "train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 4, "gradient_clipping": 0.5,
        "optimizer": {"type": "AdamW", "params": {"lr": 3e-5}}, "bf16": {"enabled": True},
        "zero_optimization": {"stage": 2},
    }))
    path = write(tmp_path, {
        "deepspeed": {"enable": True, "config_path": "ds.json"},
        "training": {"batch_size": 32, "learning_rate": 1e-4, "max_grad_norm": 0.5},
    })
    config = load_config(path)
    training = config.training
    assert (training.batch_size, training.gradient_accumulation_steps, training.learning_rate) == (8, 4, 3e-5)
    assert training.mixed_precision == "bf16" and training.max_grad_norm == 0.5
    warnings = "\n".join(config.warnings)
    # Warn only where the YAML said something else: batch size and learning rate, not clipping (equal)
    # nor accumulation (not set in the YAML).
    assert "training.batch_size is 32 in the YAML but train_micro_batch_size_per_gpu is 8" in warnings
    assert "training.learning_rate is 0.0001 in the YAML but optimizer.params.lr is 3e-05" in warnings
    assert "max_grad_norm" not in warnings and "gradient_accumulation_steps" not in warnings
    # The JSON was inlined: the resolved config travels as one self-contained text.
    assert config.deepspeed.config_path is None and config.deepspeed.config["train_micro_batch_size_per_gpu"] == 8


def test_deepspeed_auto_values_follow_the_yaml():
    config = validate_config({"deepspeed": {"enable": True, "config": {"train_micro_batch_size_per_gpu": "auto"}},
                              "training": {"batch_size": 12}})
    assert config.training.batch_size == 12 and config.warnings == []


def test_generated_deepspeed_config_is_consistent():
    config = validate_config({"deepspeed": {"enable": True, "stage": 3, "offload": "cpu"}})
    ds = build_deepspeed_config(config, precision="no")
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["gradient_accumulation_steps"] == "auto"
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False


def test_fingerprint_tracks_only_named_sections():
    a = validate_config({"training": {"epochs": 1}})
    b = validate_config({"training": {"epochs": 2}})
    assert a.fingerprint("split", "serialize") == b.fingerprint("split", "serialize")
    assert a.fingerprint() != b.fingerprint()


# ------------------------------------------------------------------------------ the CLI
def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kubetune", *args], capture_output=True, text=True, timeout=120)


def test_cli_validate_prints_resolved_config():
    result = run_cli("validate", "--config", str(REPO_ROOT / "configs" / "demo.yaml"), "training.epochs=1")
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert resolved["training"]["epochs"] == 1 and resolved["split"]["label_column"] == "account_code"


def test_cli_validate_reports_every_error_one_line_each(tmp_path: Path):
    path = write(tmp_path, {"lora": {"r": 0}, "training": {"learnign_rate": 1}})
    result = run_cli("validate", "--config", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("kubetune: error: ") for line in lines)
    assert "Traceback" not in result.stderr
