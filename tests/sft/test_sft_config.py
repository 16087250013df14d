"""`task: sft` config rules: one rule, one test, each naming its key; every shipped config still validates."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kubetune.config import load_config, validate_config
from kubetune.errors import ConfigError

from ..conftest import REPO_ROOT

SFT = {"task": "sft", "sft": {"prompt_column": "p", "response_column": "r"}}


def with_sft(**sections) -> dict:
    return {**SFT, **sections, "sft": {**SFT["sft"], **sections.get("sft", {})}}


@pytest.mark.parametrize("path", sorted([*REPO_ROOT.glob("configs/**/*.yaml"), REPO_ROOT / "src/kubetune/configs/demo.yaml"]),
                         ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_shipped_config_validates(path: Path):
    config = load_config(path)
    assert config.task in ("classification", "sft")


def test_sft_example_is_a_qwen_lora_conversation():
    config = load_config(REPO_ROOT / "configs/qwen2.5-0.5b-sft-lora.yaml")
    assert (config.task, config.model.name, config.sft.format, config.lora.task_type) == (
        "sft", "Qwen/Qwen2.5-0.5B-Instruct", "conversation", "CAUSAL_LM")
    assert config.lora.enable


def test_task_defaults_to_classification_and_sft_sets_its_own_defaults():
    assert validate_config({}).task == "classification"
    config = validate_config(SFT)
    assert (config.lora.task_type, config.training.metric_for_best_model, config.evaluate.baseline) == ("CAUSAL_LM", "loss", "none")
    assert config.sft.masks_prompt and not config.sft.renders_chat


def test_resolved_sft_config_validates_back_to_itself():
    import yaml

    config = validate_config(with_sft(data={"uri": "x.jsonl", "ops": [{"shuffle": {"seed": 1}}]}))
    assert validate_config(yaml.safe_load(config.to_yaml())) == config


@pytest.mark.parametrize(("sections", "match"), [
    (with_sft(sft={"text_column": "t"}), r"sft.text_column and sft.prompt_column choose two data formats"),
    ({"task": "sft", "sft": {"messages_column": "m", "instruction_column": "i", "output_column": "o"}},
     r"sft.instruction_column and sft.messages_column"),
    ({"task": "sft"}, r"sft: task: sft needs a data format"),
    ({"task": "sft", "sft": {"prompt_column": "p"}}, r"sft.response_column is missing"),
    ({"task": "sft", "sft": {"instruction_column": "i"}}, r"sft.output_column is missing"),
    ({"task": "sft", "sft": {"text_column": "t", "completion_only_loss": True}}, r"sft.completion_only_loss"),
    ({"task": "sft", "sft": {"instruction_column": "i", "output_column": "o", "use_chat_template": True}}, r"sft.use_chat_template"),
    ({"task": "sft", "sft": {"messages_column": "m", "use_chat_template": False}}, r"sft.use_chat_template"),
    (with_sft(split={"max_classes": 8}), r"split.max_classes applies to task: classification only"),
    (with_sft(split={"label_column": "y"}), r"split.label_column applies to task: classification only"),
    (with_sft(serialize={"text_columns": ["a"]}), r"serialize.text_columns applies"),
    (with_sft(tokenize={"max_length": 64}), r"tokenize.max_length applies to task: classification only"),
    (with_sft(loss={"class_weights": {"enable": True}}), r"loss.class_weights.enable applies"),
    (with_sft(loss={"label_smoothing": 0.1}), r"loss.label_smoothing applies to task: classification only"),
    (with_sft(serialize={"column_dropout": 0.2}), r"serialize.column_dropout applies to task: classification only"),
    (with_sft(lora={"task_type": "SEQ_CLS"}), r"lora.task_type: SEQ_CLS is for classifiers"),
    (with_sft(training={"metric_for_best_model": "macro_f1"}), r"training.metric_for_best_model: task: sft is scored by loss"),
    (with_sft(evaluate={"baseline": "tfidf"}), r"evaluate.baseline"),
    (with_sft(model={"quantization": "nf4"}, lora={"enable": False}), r"model.quantization: nf4 freezes the base weights"),
    ({"sft": {"text_column": "t"}}, r"sft.text_column applies to task: sft only"),
    ({"data": {"ops": [{"shuffle": {}}]}}, r"data.ops applies to task: sft only"),
    ({"data": {"sources": ["a.csv"]}}, r"data.sources applies to task: sft only"),
    ({"model": {"quantization": "int8"}}, r"model.quantization applies to task: sft only"),
    ({"lora": {"task_type": "CAUSAL_LM"}}, r"lora.task_type: CAUSAL_LM trains a causal LM; set task: sft"),
    (with_sft(data={"uri": "a.csv", "sources": ["b.csv"]}), r"data.uri and data.sources are both set"),
    (with_sft(data={"ops": [{"shuffle": {}}]}), r"data.ops: there is no data"),
    (with_sft(data={"uri": "a", "ops": [{"selec_columns": ["a"]}]}), r"data.ops.0.selec_columns: unknown key; did you mean 'data.ops.0.select_columns'"),
    (with_sft(data={"uri": "a", "ops": [{"select_columns": ["a"], "shuffle": {}}]}), r"data.ops.0: each data.ops entry is one operation"),
    (with_sft(data={"uri": "a", "ops": [{"filter": {"column": "a", "op": "in", "value": 3}}]}), r"data.ops.0.filter: filter op in needs a list"),
    (with_sft(data={"uri": "a", "ops": [{"filter": {"column": "a", "op": "=="}}]}), r"data.ops.0.filter: filter op '==' needs a value"),
    (with_sft(data={"uri": "a", "ops": [{"select_rows": "1-5"}]}), r"data.ops.0: select_rows '1-5' is not a slice"),
    (with_sft(data={"uri": "a", "ops": [{"fraction": {"share": 1.5}}]}), r"data.ops.0.fraction.share"),
    (with_sft(training={"optim": "adamw_8bitt"}), r"training.optim: unknown optimizer 'adamw_8bitt'; did you mean 'adamw_8bit'\?"),
    (with_sft(training={"lr_scheduler_type": "cosine_min_lr"}), r"training.lr_scheduler_type: unknown scheduler 'cosine_min_lr'; did you mean 'cosine_with_min_lr'\?"),
    ({"training": {"lr_scheduler_type": "cosin"}}, r"training.lr_scheduler_type: unknown scheduler 'cosin'; did you mean 'cosine'\?"),
])
def test_config_error_names_the_key(sections: dict, match: str):
    with pytest.raises(ConfigError, match=match):
        validate_config(sections)


def test_every_scheduler_and_optimizer_of_transformers_is_accepted():
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    for scheduler in SchedulerType:
        assert validate_config({"training": {"lr_scheduler_type": scheduler.value}}).training.lr_scheduler_type == scheduler.value
    for optimizer in ("paged_adamw_8bit", "adamw_8bit", "adafactor", "sgd"):
        assert optimizer in {o.value for o in OptimizerNames}
        assert validate_config({"training": {"optim": optimizer}}).training.optim == optimizer


def test_quantization_without_a_gpu_is_a_one_line_config_error(monkeypatch: pytest.MonkeyPatch):
    import torch

    from kubetune.train.causal_lm import check_quantization

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = validate_config(with_sft(model={"quantization": "nf4"}))
    with pytest.raises(ConfigError, match=r"^model.quantization: nf4 \(bitsandbytes\) needs a CUDA GPU") as error:
        check_quantization(config)
    assert len(error.value.problems) == 1


def test_quantization_checks_bitsandbytes_and_zero3_with_int8(monkeypatch: pytest.MonkeyPatch):
    import importlib.util

    import torch

    from kubetune.train.causal_lm import check_quantization

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "bitsandbytes" else real_find_spec(name))
    with pytest.raises(ConfigError, match=r"model.quantization: int8 needs the bitsandbytes package"):
        check_quantization(validate_config(with_sft(model={"quantization": "int8"})))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "bitsandbytes" else real_find_spec(name))
    zero3 = with_sft(model={"quantization": "int8"}, deepspeed={"enable": True, "stage": 3})
    with pytest.raises(ConfigError, match=r"deepspeed.stage: 3 and model.quantization: int8"):
        check_quantization(validate_config(zero3))
    check_quantization(validate_config(with_sft(model={"quantization": "nf4"}, deepspeed={"enable": True, "stage": 2})))


def test_the_validate_step_rejects_quantization_on_this_machine_before_any_work(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    import torch
    import yaml

    from kubetune.errors import KubetuneError
    from kubetune.pipeline.steps import validate_step

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = with_sft(data={"uri": str(tmp_path / "missing.jsonl")}, model={"quantization": "nf4"})
    with pytest.raises(KubetuneError, match=r"model.quantization: nf4 \(bitsandbytes\) needs a CUDA GPU"):
        validate_step(yaml.safe_dump(config), [], "", "", 0.0, 0.0, 0, 0, "", "run-1")


def test_validate_step_fingerprints_every_source_and_hands_the_data_steps_task_and_sft(tmp_path: Path):
    import yaml

    from kubetune.errors import DataError
    from kubetune.pipeline.steps import validate_step

    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text('{"p": "x", "r": "y"}\n')
    second.write_text('{"p": "z", "r": "w"}\n')
    config = with_sft(data={"sources": [str(first), str(second)]}, tracking={"enable": False})
    outputs = validate_step(yaml.safe_dump(config), [], "", "", 0.0, 0.0, 0, 0, "", "run-1")
    for key in ("preprocess_config", "tokenize_config"):
        step_config = yaml.safe_load(outputs[key])
        assert step_config["task"] == "sft" and step_config["sft"]["prompt_column"] == "p", key
    assert yaml.safe_load(outputs["preprocess_config"])["data"]["sources"] == [str(first), str(second)]
    second.write_text('{"p": "z", "r": "changed"}\n')
    again = validate_step(yaml.safe_dump(config), [], "", "", 0.0, 0.0, 0, 0, "", "run-2")
    assert again["data_fingerprint"] != outputs["data_fingerprint"]
    second.unlink()
    with pytest.raises(DataError, match=r"^data.sources.1: .*b.jsonl not found"):
        validate_step(yaml.safe_dump(config), [], "", "", 0.0, 0.0, 0, 0, "", "run-3")


def test_classification_steps_get_no_task_or_sft_sections():
    import yaml

    from kubetune.pipeline.steps import PREPROCESS_SECTIONS, sections_yaml, tokenize_config_yaml

    config = validate_config({"data": {"uri": "demo://ledger"}})
    assert set(yaml.safe_load(sections_yaml(config, PREPROCESS_SECTIONS))) == set(PREPROCESS_SECTIONS)
    assert "sft" not in yaml.safe_load(tokenize_config_yaml(config))


def test_the_sft_gate_metric_defaults_to_loss_and_survives_the_resolved_config():
    from kubetune.evaluation.sft import GATE_METRIC, GATE_METRICS

    config = validate_config(SFT)
    assert config.promote.metric == GATE_METRIC == "loss"
    assert validate_config(yaml_of(config)).promote.metric == "loss"
    assert validate_config({}).promote.metric == "macro_f1"
    from kubetune.config import SFT_PROMOTE_METRICS

    assert SFT_PROMOTE_METRICS == GATE_METRICS
    assert validate_config(with_sft(promote={"metric": "exact_match"}, sft={"eval_generations": 8})).promote.metric == "exact_match"


@pytest.mark.parametrize(("config", "message"), [
    (with_sft(promote={"metric": "macro_f1"}), r"^promote\.metric: macro_f1 scores classifiers; task: sft is compared on loss or exact_match$"),
    (with_sft(promote={"metric": "exact_match"}), r"^promote\.metric: exact_match is measured on generated test examples; set sft\.eval_generations"),
    ({"promote": {"metric": "loss"}}, r"^promote\.metric: loss scores task: sft models; a classifier is compared on one of accuracy, "),
    ({"promote": {"metric": "exact_match"}}, r"^promote\.metric: exact_match scores task: sft models"),
])
def test_a_gate_metric_of_the_other_task_is_one_line_naming_promote_metric(config, message):
    with pytest.raises(ConfigError) as raised:
        validate_config(config)
    assert len(str(raised.value).splitlines()) == 1
    [problem] = raised.value.problems
    assert re.search(message, problem), problem


def yaml_of(config) -> dict:
    import yaml

    return yaml.safe_load(config.to_yaml())
