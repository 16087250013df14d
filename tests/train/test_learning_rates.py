"""Learning rates by kind of parameter: the head (`training.head_learning_rate`) and LoRA B
(`lora.loraplus_lr_ratio`, LoRA+) apart from the adapters' rate, kept by the schedule."""

from __future__ import annotations

from pathlib import Path

from transformers import TrainingArguments

from kubetune.data.labels import LabelMap
from kubetune.train.callbacks import SpeedCallback
from kubetune.train.model import apply_lora, head_module_names
from kubetune.train.trainer import KubetuneTrainer, LearningRates

from .test_model import build


def optimizer_rates(model, rates: LearningRates, tmp_path: Path) -> dict[str, float]:
    """Each trainable parameter's name → the peak rate of its optimizer group."""
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=rates.base, weight_decay=0.01,
                             report_to=[], use_cpu=True)
    trainer = KubetuneTrainer(model=model, args=args, speed=SpeedCallback(), learning_rates=rates)
    optimizer = trainer.create_optimizer()
    by_id = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    names = {n: by_id[id(p)] for n, p in model.named_parameters() if p.requires_grad}
    assert len(by_id) == len(names)  # every trainable parameter in exactly one group
    return names


def test_head_and_lora_b_get_their_own_rates(tiny_bert: Path, label_map: LabelMap, tmp_path: Path):
    config, _, model = build(tiny_bert, label_map)
    heads = tuple(head_module_names(model, config.lora))
    model = apply_lora(config, model)
    rates = optimizer_rates(model, LearningRates(1e-3, head=5e-3, loraplus_ratio=4.0, head_modules=heads), tmp_path)
    assert {rate for name, rate in rates.items() if ".classifier." in name} == {5e-3}
    assert {rate for name, rate in rates.items() if ".lora_B." in name} == {4e-3}
    assert {rate for name, rate in rates.items() if ".lora_A." in name} == {1e-3}
    assert len(rates) == sum(1 for name in rates if ".classifier." in name or ".lora_" in name)


def test_rates_keep_the_weight_decay_split(tiny_bert: Path, label_map: LabelMap, tmp_path: Path):
    config, _, model = build(tiny_bert, label_map, lora={"enable": False})
    heads = tuple(head_module_names(model, config.lora))
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-4, weight_decay=0.01, report_to=[], use_cpu=True)
    trainer = KubetuneTrainer(model=model, args=args, speed=SpeedCallback(),
                              learning_rates=LearningRates(1e-4, head=1e-3, head_modules=heads))
    groups = trainer.create_optimizer().param_groups
    assert sorted((g["lr"], g["weight_decay"]) for g in groups) == [(1e-4, 0.0), (1e-4, 0.01), (1e-3, 0.0), (1e-3, 0.01)]
    # The schedule scales each group's own peak: halfway through a linear decay, each is at half its rate.
    trainer.create_scheduler(num_training_steps=10)
    for _ in range(5):
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert sorted(round(g["lr"], 12) for g in groups) == [5e-5, 5e-5, 5e-4, 5e-4]


def test_without_separate_rates_the_trainer_groups_as_transformers_does(tiny_bert, label_map, tmp_path: Path):
    config, _, model = build(tiny_bert, label_map)
    model = apply_lora(config, model)
    rates = optimizer_rates(model, LearningRates(1e-3), tmp_path)
    assert set(rates.values()) == {1e-3}
