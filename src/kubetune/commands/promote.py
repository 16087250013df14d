from __future__ import annotations

import argparse
import json

from kubetune.commands import add_config_arguments
from kubetune.errors import KubetuneError

HELP = ("Register a finished run's model in the MLflow registry (when the pipeline has not) and apply the champion "
        "gate to it, as the pipeline's promote step does; e.g. `kubetune promote --run-id RUN promote.policy=always` "
        "makes it the champion by hand.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--run-id", required=True, metavar="RUN",
                        help="The pipeline run (its MLflow run is tagged kubetune.run_id=RUN in tracking.experiment_name). "
                        "Without --config, its own config (<storage.runs_uri>/RUN/train/config.yaml) plus the overrides.")
    parser.add_argument("--evaluation", metavar="EVAL",
                        help="The run's evaluate output (local or s3://; on Kubeflow: the evaluate step's `evaluation` "
                        "artifact); unset: the one `kubetune run` recorded in <storage.runs_uri>/RUN/summary.json.")


def run(args: argparse.Namespace) -> int:
    from kubetune import storage, tracking
    from kubetune.commands import config_from_args
    from kubetune.config import config_from_yaml_text, deep_merge, parse_overrides, validate_config
    from kubetune.promotion import promote_run

    given = config_from_args(args)
    run_dir = f"{given.storage.runs_uri.rstrip('/')}/{args.run_id}"
    run_config_uri = f"{run_dir}/train/config.yaml"
    if not storage.exists(run_config_uri, given.storage):
        raise KubetuneError(f"--run-id: no run {args.run_id!r} under storage.runs_uri {given.storage.runs_uri} (no "
                            f"{run_config_uri}); give the run id `kubetune run` or `kubetune submit` printed")
    run_config_yaml = storage.read_text(run_config_uri, given.storage)
    if args.config is None:
        import yaml

        run_config = config_from_yaml_text(run_config_yaml, run_config_uri)
        config = validate_config(deep_merge(yaml.safe_load(run_config.to_yaml()), parse_overrides(args.overrides)),
                                 source=run_config_uri)
    else:
        config = given
    evaluation = args.evaluation or _recorded_evaluation(run_dir, given)
    uri = tracking.tracking_uri_or_local_store(config)
    if not uri:
        raise KubetuneError("tracking.tracking_uri: no MLflow tracking URI (tracking.tracking_uri, $MLFLOW_TRACKING_URI) "
                            f"and no local store at {config.storage.runs_uri}/{tracking.LOCAL_STORE_FILE}")
    try:
        mlflow_run_id = tracking.find_pipeline_run(tracking.client_for(uri), config.tracking.experiment_name, args.run_id)
    except Exception as exc:  # noqa: BLE001 - an unreachable server is the user's to fix: one line
        from kubetune.errors import short_reason

        raise KubetuneError(f"tracking.tracking_uri: cannot reach MLflow at {uri} ({short_reason(exc)})") from None
    if mlflow_run_id is None:
        raise KubetuneError(f"--run-id: no MLflow run tagged kubetune.run_id={args.run_id} in experiment "
                            f"{config.tracking.experiment_name!r} at {uri}")
    result = promote_run(config, evaluation_uri=evaluation, mlflow_run_id=mlflow_run_id, run_id=args.run_id,
                         tracking_uri=uri, run_config_yaml=run_config_yaml, option="--evaluation")
    for line in result.summary_lines():
        print(line)
    return 0


def _recorded_evaluation(run_dir: str, config) -> str:
    """The evaluate output a local `kubetune run` recorded in its summary.json."""
    from kubetune import storage

    summary = f"{run_dir}/summary.json"
    if not storage.exists(summary, config.storage):
        raise KubetuneError(f"--evaluation: not given, and {summary} (what `kubetune run` writes) does not exist; give "
                            "the run's evaluate output")
    recorded = json.loads(storage.read_text(summary, config.storage)).get("evaluation_dir") or ""
    if not recorded:
        raise KubetuneError(f"--evaluation: not given, and {summary} names no evaluate output (the run failed before "
                            "it); give the run's evaluate output")
    return recorded
