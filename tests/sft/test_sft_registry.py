"""`task: sft` models in MLflow and the registry, against a real `mlflow server`: the evaluate step logs the model as
a pyfunc that generates what `kubetune predict` generates; the champion gate on the test loss (and exact match).

Candidates are made as the pipeline makes them, cheaply: the toy colours task preprocessed once, tokenized per
rendering, a tiny random Qwen2 trained with LoRA for a few steps, evaluated into an MLflow run (which logs the model).
All three share the raw test rows (the same data and split seed), so the champion's figure on a candidate's rows
is the champion's own test loss, which its evaluate step computed through the tokenize stage, the other path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from kubetune import tracking
from kubetune.data.stages import preprocess, tokenize
from kubetune.evaluation import evaluate
from kubetune.promotion import (
    ChampionScore,
    PromotionResult,
    decide,
    promote_run,
    read_sft_evaluation,
    score_sft_champion,
)
from kubetune.train.recipe import train

from ..train.conftest import mlflow_server  # noqa: F401 - the fixture, shared with the trainer's tests
from .conftest import sft_config, toy_rows, write_jsonl

pytestmark = pytest.mark.slow

EXPERIMENT = "sft-registry"
REGISTERED = "colours"


@dataclass
class Candidate:
    run_id: str
    mlflow_run_id: str
    config: object
    model_dir: Path
    evaluation: Path

    @property
    def metrics(self) -> dict[str, float]:
        return json.loads((self.evaluation / "metrics.json").read_text())


def make_candidate(root: Path, model: Path, data: Path, server: str, steps: int, chat: bool, lora: bool,
                   generations: int = 0) -> Candidate:
    config = sft_config(model, data, sft={"use_chat_template": chat, "max_seq_length": 64, "max_new_tokens": 4, "eval_generations": generations},
                        lora={"enable": lora}, training={"learning_rate": 1e-2, "max_steps": steps, "logging_steps": 10},
                        tracking={"enable": True, "tracking_uri": server, "experiment_name": EXPERIMENT},
                        registry={"model_name": REGISTERED}, storage={"runs_uri": str(root / "runs")})
    preprocess(config, str(data.parent / "pre"))  # reused: the same data and split for every candidate
    tokenize(config, str(data.parent / "pre"), str(root / "tok"))
    train(config.model_copy(update={"tracking": config.tracking.model_copy(update={"enable": False})}),
          str(root / "tok"), str(root / "out"))
    client = tracking.client_for(server)
    mlflow_run_id = tracking.create_run(client, tracking.experiment_id_for(client, EXPERIMENT), root.name,
                                        {tracking.RUN_ID_TAG: root.name})
    evaluate(config, str(root / "out" / "model"), str(root / "tok"), str(root / "evaluation"), mlflow_run_id=mlflow_run_id)
    return Candidate(root.name, mlflow_run_id, config, root / "out" / "model", root / "evaluation")


def promote(candidate: Candidate, **settings) -> PromotionResult:
    config = candidate.config
    if settings:
        config = config.model_copy(update={"promote": config.promote.model_copy(update=settings)})
    return promote_run(config, evaluation_uri=str(candidate.evaluation), mlflow_run_id=candidate.mlflow_run_id,
                       run_id=candidate.run_id, tracking_uri=config.tracking.tracking_uri)


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("sft-registry-data") / "colours.jsonl", toy_rows(200, seed=3))


@pytest.fixture(scope="module")
def candidates(tiny_qwen2_lm, toy_data, mlflow_server, tmp_path_factory) -> dict[str, Candidate]:  # noqa: F811
    """The first (full fine-tune, chat template, 20 steps), a worse one (a LoRA adapter, plain prompt/response rendering,
    1 step) and a better one (full fine-tune, chat template, 60 steps, with a generated sample). A random model's
    LoRA adapters learn too slowly for a cheap ordering, so the ordered pair is fully fine-tuned."""
    made = {}
    for name, steps, chat, lora, generations in (("first", 20, True, False, 0), ("worse", 1, False, True, 0),
                                                 ("better", 60, True, False, 6)):
        made[name] = make_candidate(tmp_path_factory.mktemp(name), tiny_qwen2_lm, toy_data, mlflow_server, steps, chat,
                                    lora, generations)
    return made


@pytest.mark.parametrize("name", ["first", "worse"])  # a full model with a chat template; a LoRA adapter, plain
def test_the_logged_model_generates_what_kubetune_predict_generates(candidates, name, tmp_path):
    import mlflow.pyfunc

    from kubetune.generation import generate_file
    from kubetune.serving import COMPLETION, tracking_uri_set

    candidate = candidates[name]
    evaluation = candidate.evaluation
    test_rows = pd.read_parquet(evaluation / "test_rows.parquet")
    assert list(test_rows.columns) == ["prompt", "response"] and len(test_rows) == candidate.metrics["rows"] == 20
    losses = pd.read_parquet(evaluation / "row_losses.parquet")
    assert losses["tokens"].sum() == candidate.metrics["tokens"]
    assert losses["loss"].sum() / losses["tokens"].sum() == pytest.approx(candidate.metrics["loss"])
    assert (candidate.model_dir / "adapter_config.json").is_file() is (name == "worse")

    rows = toy_rows(10, seed=11)
    frame = pd.DataFrame({"prompt": [r["prompt"] for r in rows]})
    new = write_jsonl(tmp_path / "new.jsonl", rows)
    generate_file(str(candidate.model_dir), str(new), str(tmp_path / "predicted.parquet"), candidate.config)
    expected = pd.read_parquet(tmp_path / "predicted.parquet")["completion"].tolist()
    with tracking_uri_set(candidate.config.tracking.tracking_uri):
        model = mlflow.pyfunc.load_model(f"runs:/{candidate.mlflow_run_id}/model")
        generated = model.predict(frame)
        assert model.predict(frame, params={"max_new_tokens": 1})[COMPLETION].str.len().max() <= max(map(len, expected))
    assert list(generated.columns) == [COMPLETION] and generated[COMPLETION].tolist() == expected
    signature = model.metadata.signature
    assert signature.inputs.input_names() == ["prompt", "response"] and not signature.inputs.inputs[1].required
    assert signature.outputs.input_names() == [COMPLETION]
    assert signature.params.to_dict()[0]["default"] == 4  # the run's sft.max_new_tokens
    # The logged folder's tokenizer renders the prompts as training did (the chat template, or not at all).
    loaded = model.unwrap_python_model()
    assert loaded.sft.renders_chat is (name == "first")
    if name == "first":
        assert loaded.tokenizer.chat_template == (candidate.model_dir / "chat_template.jinja").read_text()


def test_first_promoted_then_worse_not_then_better(candidates, tmp_path):
    from mlflow.tracking import MlflowClient

    first, worse, better = candidates["first"], candidates["worse"], candidates["better"]
    client = MlflowClient(first.config.tracking.tracking_uri)

    result = promote(first)
    assert (result.version, result.promoted, result.metric) == ("1", True, "loss")
    assert result.reason == f"the first model: loss per token {first.metrics['loss']:.4f}, task: sft has no TF-IDF baseline"
    assert result.summary_lines() == [f"promotion: {REGISTERED} version 1 promoted to champion: {result.reason}"]
    assert "TF-IDF" not in result.to_markdown().split("| model |")[1]
    assert client.get_model_version_by_alias(REGISTERED, "champion").version == "1"

    # 1 step, and rendered without the chat template: the champion is scored on its rows with its own rendering,
    # which is the champion's own test loss (computed by the tokenize stage's rendering at its evaluate step).
    assert worse.metrics["loss"] > first.metrics["loss"]
    result = promote(worse)
    assert (result.version, result.promoted, result.champion_version) == ("2", False, "1")
    assert result.champion == pytest.approx(first.metrics["loss"], abs=1e-4)
    assert result.candidate == pytest.approx(worse.metrics["loss"], abs=1e-6)
    assert (result.compared_rows, result.excluded_rows, result.test_rows) == (20, 0, 20)
    assert result.reason == f"loss per token {result.candidate:.4f} vs {result.champion:.4f} of version 1"
    assert result.summary_lines() == [f"promotion: {REGISTERED} version 2 not promoted: {result.reason}; champion stays version 1"]
    assert client.get_model_version_by_alias(REGISTERED, "champion").version == "1"
    tags = client.get_model_version(REGISTERED, "2").tags
    assert tags["kubetune.promotion.decision"] == "not promoted" and tags["kubetune.promotion.metric"] == "loss"
    assert float(tags["kubetune.promotion.champion"]) == pytest.approx(result.champion)
    assert float(tags["kubetune.test.loss"]) == pytest.approx(worse.metrics["loss"])
    assert client.get_run(worse.mlflow_run_id).data.tags["kubetune.promotion.decision"] == "not promoted"

    # A margin bigger than the gap keeps the champion; then the better one wins by its loss.
    gap = first.metrics["loss"] - better.metrics["loss"]
    assert gap > 0.05, (first.metrics, better.metrics)
    held = promote(better, margin=round(gap + 0.01, 3))
    assert not held.promoted and f"- margin {round(gap + 0.01, 3):g}" in held.reason
    result = promote(better)
    assert (result.version, result.promoted, result.champion_version) == ("3", True, "1")
    assert result.champion == pytest.approx(first.metrics["loss"], abs=1e-4)
    assert result.reason.startswith(f"loss per token {better.metrics['loss']:.4f} vs {result.champion:.4f} of version 1; ")
    assert client.get_model_version_by_alias(REGISTERED, "champion").version == "3"

    # kubetune predict --model models:/<name>@champion: the champion's completions, as from its folder.
    from kubetune.generation import generate_file

    rows = write_jsonl(tmp_path / "new.jsonl", toy_rows(6, seed=12))
    config = better.config
    generate_file(f"models:/{REGISTERED}@champion", str(rows), str(tmp_path / "registry.parquet"), config)
    generate_file(str(better.model_dir), str(rows), str(tmp_path / "folder.parquet"), config)
    assert (pd.read_parquet(tmp_path / "registry.parquet")["completion"].tolist()
            == pd.read_parquet(tmp_path / "folder.parquet")["completion"].tolist())


def test_exact_match_scores_the_champion_on_the_generated_sample(candidates, tmp_path):
    from kubetune.generation import generate_file

    first, better = candidates["first"], candidates["better"]
    evaluation = read_sft_evaluation(str(better.evaluation), better.config)
    sample = evaluation.generations
    assert len(sample) == 6 and better.metrics["exact_match"] == pytest.approx(sample["exact_match"].mean())
    score = score_sft_champion(f"models:/{REGISTERED}/1", "1", evaluation, "exact_match",
                               first.config.tracking.tracking_uri, better.config)
    # Version 1 (the first candidate's folder) through kubetune predict on the same rows, judged against the same texts.
    rows = evaluation.rows.iloc[sample["row"].to_numpy()]
    data = write_jsonl(tmp_path / "sample.jsonl", rows.to_dict("records"))
    generate_file(str(first.model_dir), str(data), str(tmp_path / "out.parquet"), first.config)
    completions = pd.read_parquet(tmp_path / "out.parquet")["completion"]
    right = [c.strip() == e.strip() for c, e in zip(completions, sample["expected"], strict=True)]
    assert score == ChampionScore("1", champion=sum(right) / 6, candidate=better.metrics["exact_match"], compared_rows=6)


def test_a_champion_that_cannot_be_read_is_not_replaced_by_the_gate(candidates, mlflow_server):  # noqa: F811
    evaluation = read_sft_evaluation(str(candidates["worse"].evaluation), candidates["worse"].config)
    score = score_sft_champion("models:/no-such-model/1", "1", evaluation, "loss", mlflow_server, candidates["worse"].config)
    assert score.champion is None and "has no registered model 'no-such-model'" in score.problem
    promoted, reason = decide("gate", "loss", 0.0, {"loss": 1.0}, {}, score)
    assert not promoted and reason.startswith("version 1 could not be scored on its test rows")


@pytest.mark.parametrize(("candidate", "champion", "margin", "promoted"), [
    (1.0, 1.5, 0.0, True), (1.5, 1.0, 0.0, False), (1.0, 1.0, 0.0, False), (1.0, 1.5, 0.5, False), (1.0, 1.5, 0.4, True)])
def test_a_lower_loss_wins_by_strictly_more_than_the_margin(candidate, champion, margin, promoted):
    score = ChampionScore("1", champion=champion, candidate=candidate, compared_rows=3)
    assert decide("gate", "loss", margin, {"loss": candidate}, {}, score)[0] is promoted
    # exact match is higher-is-better, like the classifier metrics
    assert decide("gate", "exact_match", margin, {"exact_match": champion}, {},
                  ChampionScore("1", champion=candidate, candidate=champion, compared_rows=3))[0] is promoted
